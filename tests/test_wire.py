from __future__ import annotations

import time
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sorat_daemon import errors, wire
from sorat_daemon.types import Delta, ToolCallDelta
from tests.upstream import Reply, render, stream_error, text, tool_calls

USER = {"role": "user", "content": "hi"}


def body(**fields: Any) -> bytes:
    return orjson.dumps({"messages": [USER], **fields})


# --- parse_chat_request -----------------------------------------------------------------------------


def test_parse_full_request() -> None:
    tools = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]
    req = wire.parse_chat_request(
        body(
            model="gpt-4o-mini",
            stream=True,
            stream_options={"include_usage": True},
            tools=tools,
            tool_choice="auto",
            temperature=0.2,
            top_p=None,
            max_tokens=50,
            max_completion_tokens=60,
            stop=["\n"],
            seed=7,
            presence_penalty=0.1,
            frequency_penalty=0.2,
            response_format={"type": "json_object"},
            user="u1",
            parallel_tool_calls=False,
            n=1,
            logprobs=True,
            store=True,
            metadata={"a": "b"},
        )
    )
    assert req.messages == [USER]
    assert (req.model, req.stream, req.include_usage, req.tool_choice) == ("gpt-4o-mini", True, True, "auto")
    assert req.tools == tools
    assert req.params == {
        "temperature": 0.2,
        "max_tokens": 50,
        "max_completion_tokens": 60,
        "stop": ["\n"],
        "seed": 7,
        "presence_penalty": 0.1,
        "frequency_penalty": 0.2,
        "response_format": {"type": "json_object"},
        "user": "u1",
        "parallel_tool_calls": False,
    }


def test_parse_minimal_request_defaults() -> None:
    req = wire.parse_chat_request(body(stream_options={"include_usage": True}, stream=None, model=""))
    assert (req.model, req.stream, req.include_usage, req.tools, req.tool_choice, req.params) == (
        None,
        False,
        False,  # include_usage means nothing without a stream
        [],
        None,
        {},
    )


def test_parse_accepts_every_message_shape() -> None:
    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "developer", "content": [{"type": "text", "text": "dev"}]},
        {
            "role": "user",
            "content": [{"type": "text", "text": "look"}, {"type": "image_url", "image_url": {}}],
        },
        {"role": "assistant", "content": None, "tool_calls": [{"id": "c", "function": {"name": "f"}}]},
        {"role": "tool", "tool_call_id": "c", "content": "42"},
        {"role": "assistant", "name": "bot"},
    ]
    assert wire.parse_chat_request(orjson.dumps({"messages": messages})).messages == messages


@pytest.mark.parametrize(
    ("raw", "param"),
    [
        (b"{not json", None),
        (b"[1, 2]", None),
        (b"{}", "messages"),
        (orjson.dumps({"messages": []}), "messages"),
        (orjson.dumps({"messages": "hi"}), "messages"),
        (orjson.dumps({"messages": ["hi"]}), "messages[0]"),
        (orjson.dumps({"messages": [{"role": "robot", "content": "x"}]}), "messages[0].role"),
        (orjson.dumps({"messages": [{"content": "x"}]}), "messages[0].role"),
        (orjson.dumps({"messages": [USER, {"role": "user", "content": 3}]}), "messages[1].content"),
        (orjson.dumps({"messages": [{"role": "user"}]}), "messages[0].content"),
        (
            orjson.dumps({"messages": [{"role": "user", "content": [{"text": "x"}]}]}),
            "messages[0].content[0]",
        ),
        (orjson.dumps({"messages": [{"role": "tool", "content": "x"}]}), "messages[0].tool_call_id"),
        (orjson.dumps({"messages": [{"role": "assistant", "tool_calls": {}}]}), "messages[0].tool_calls"),
        (orjson.dumps({"messages": [{"role": "user", "content": "x", "name": 5}]}), "messages[0].name"),
        (body(model=4), "model"),
        (body(stream="yes"), "stream"),
        (body(stream_options=True), "stream_options"),
        (body(stream=True, stream_options={"include_usage": "yes"}), "stream_options.include_usage"),
        (body(tools={}), "tools"),
        (body(tools=[{"type": "code", "function": {"name": "x"}}]), "tools[0]"),
        (body(tools=[{"type": "function"}]), "tools[0]"),
        (body(tools=[{"type": "function", "function": {"name": ""}}]), "tools[0].function.name"),
        (
            body(tools=[{"type": "function", "function": {"name": "f", "parameters": []}}]),
            "tools[0].function.parameters",
        ),
        (body(tool_choice=3), "tool_choice"),
        (body(n=2), "n"),
    ],
)
def test_parse_rejects(raw: bytes, param: str | None) -> None:
    with pytest.raises(errors.RequestError) as info:
        wire.parse_chat_request(raw)
    assert info.value.status == 400
    assert info.value.param == param
    assert info.value.body()["error"]["type"] == "invalid_request_error"


# --- SSEDecoder -------------------------------------------------------------------------------------


def decode(*reads: bytes) -> list[wire.Event]:
    d = wire.SSEDecoder()
    out = [ev for r in reads for ev in d.feed(r)]
    return out + d.close()


def test_sse_framings() -> None:
    E = wire.Event
    assert decode(b'data: {"a":1}\n\ndata: [DONE]\n\n') == [E(b'{"a":1}'), E(b"[DONE]")]
    assert decode(b"data:x\r\n\r\ndata:  y\r\r") == [E(b"x"), E(b" y")]
    assert decode(b"data: a\rdata: b\r\r") == [E(b"a\nb")]
    assert decode(b": OPENROUTER PROCESSING\n\n: keep-alive\n\ndata: x\n\n") == [
        E(comment=True),
        E(comment=True),
        E(b"x"),
    ]
    assert decode(b"event: error\ndata: {}\n\n") == [E(b"{}", "error")]
    assert decode(b'error: {"message":"m"}\n\n') == [E(b'{"message":"m"}', "error")]
    assert decode(b"id: 3\nretry: 10\ndata: x\n\n\n\n") == [E(b"x")]
    assert decode(b"data:\n\nevent: ping\n\n") == []  # empty data and no data dispatch nothing
    assert decode(b"data: last") == [E(b"last")]  # no blank line: flushed on close
    assert decode(b"data: last\n") == [E(b"last")]


def test_sse_crlf_split_across_reads() -> None:
    E = wire.Event
    assert decode(b"data: a\r", b"\n\r", b"\ndata: b\r\n\r\n") == [E(b"a"), E(b"b")]
    assert decode(b"data: a\r", b"\r") == [E(b"a")]
    assert decode(b"data: a\n", b"\n") == [E(b"a")]


CORPUS: list[Reply] = [
    text("Hello world", chunks=5, reasoning="hmm", quirks=q)
    for q in (
        set(),
        {"crlf"},
        {"cr"},
        {"nospace", "comments"},
        {"multiline", "crlf"},
        {"azure", "extras", "cr", "multiline"},
        {"no_done", "no_finish"},
    )
] + [
    tool_calls([("a", {"x": "é\r\n"}), ("b", {})], quirks={"crlf", "comments"}),
    stream_error("boom", style="event", quirks={"crlf"}),
    stream_error("boom", style="field", quirks={"cr"}),
]


@pytest.mark.parametrize("reply", CORPUS, ids=lambda r: "-".join(sorted(r.quirks)) or r.kind)
def test_sse_every_byte_boundary(reply: Reply) -> None:
    data = b"".join(render(reply, True, True, "m"))
    whole = decode(data)
    assert whole and all(ev.comment or ev.data for ev in whole)
    for cut in range(1, len(data)):
        assert decode(data[:cut], data[cut:]) == whole, cut
    assert decode(*[data[i : i + 1] for i in range(len(data))]) == whole


_line = st.text(st.characters(blacklist_characters="\r\n", blacklist_categories=("Cs",)), max_size=12)


@settings(max_examples=150, deadline=None)
@given(
    events=st.lists(
        st.tuples(st.sampled_from(["data", "comment", "event"]), st.lists(_line, min_size=1, max_size=3))
    ),
    eol=st.sampled_from(["\n", "\r", "\r\n"]),
    cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=8),
)
def test_sse_random_streams_and_splits(
    events: list[tuple[str, list[str]]], eol: str, cuts: list[int]
) -> None:
    raw = ""
    for kind, lines in events:
        if kind == "comment":
            raw += "".join(f":{line}{eol}" for line in lines)
        elif kind == "event":
            raw += f"event: e{eol}" + "".join(f"data: {line}{eol}" for line in lines)
        else:
            raw += "".join(f"data:{line}{eol}" for line in lines)
        raw += eol
    data = raw.encode()
    whole = decode(data)
    pieces, last = [], 0
    for c in sorted({min(c, len(data)) for c in cuts}):
        pieces.append(data[last:c])
        last = c
    pieces.append(data[last:])
    assert decode(*pieces) == whole
    assert len([e for e in whole if not e.comment]) <= len(events)


# --- DeltaNormalizer --------------------------------------------------------------------------------


def chunk(delta: dict[str, Any] | None = None, finish: str | None = None, **top: Any) -> dict[str, Any]:
    choice: dict[str, Any] = {"index": 0, "finish_reason": finish}
    if delta is not None:
        choice["delta"] = delta
    return {"id": "x", "choices": [choice], **top}


def run(chunks: list[dict[str, Any]]) -> tuple[list[Delta], list[dict[str, Any]]]:
    n = wire.DeltaNormalizer()
    out = [d for c in chunks if (d := n.feed(c)) is not None]
    out.append(n.final())
    acc = wire.ToolCallAccumulator()
    for d in out:
        if d.tool_calls:
            acc.add(d.tool_calls)
    return out, acc.calls()


def tc(**fields: Any) -> dict[str, Any]:
    return chunk({"tool_calls": [fields]})


def fn(name: str | None = None, arguments: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if name is not None:
        out["name"] = name
    if arguments is not None:
        out["arguments"] = arguments
    return out


def test_normalizer_content_reasoning_finish_usage() -> None:
    out, _ = run(
        [
            {"choices": [], "prompt_filter_results": [{}]},
            chunk({"role": "assistant", "content": ""}),
            chunk({"reasoning": "a", "content": ""}),
            chunk({"reasoning_content": "b"}),
            chunk({"reasoning_details": [{"type": "reasoning.text", "text": "c"}]}),
            chunk({"content": "d", "extra_content": {"google": {"thought": True}}}),
            chunk({"content": "Hi", "refusal": None}, usage={"prompt_tokens": 1, "completion_tokens": 1}),
            chunk({"content": "!"}, "end_turn"),
            {"choices": [{"index": 0, "content_filter_offsets": {}, "finish_reason": None}]},
            {
                "choices": [],
                "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7, "cost": 0.1},
            },
        ]
    )
    assert [(d.content, d.reasoning) for d in out[:-1]] == [
        (None, "a"),
        (None, "b"),
        (None, "c"),
        (None, "d"),
        ("Hi", None),
        ("!", None),
    ]
    assert out[-1] == Delta(
        finish_reason="stop", usage={"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}
    )
    assert all(d.finish_reason is None and d.usage is None for d in out[:-1])


def test_normalizer_usage_in_x_groq_and_last_wins() -> None:
    out, _ = run(
        [
            chunk({"content": "a"}, usage={"prompt_tokens": 2, "completion_tokens": 1, "total_tokens": 3}),
            chunk({"content": "b"}, usage={"prompt_tokens": 2, "completion_tokens": 2, "total_tokens": 4}),
            chunk(
                {}, "stop", x_groq={"usage": {"prompt_tokens": 2, "completion_tokens": 3, "queue_time": 0.1}}
            ),
        ]
    )
    assert out[-1].usage == {"prompt_tokens": 2, "completion_tokens": 3, "total_tokens": 5}


@pytest.mark.parametrize(
    ("raw", "mapped", "with_tools"),
    [
        ("stop", "stop", "tool_calls"),
        ("length", "length", "length"),
        ("tool_calls", "tool_calls", "tool_calls"),
        ("content_filter", "content_filter", "content_filter"),
        ("eos", "stop", "tool_calls"),
        ("eos_token", "stop", "tool_calls"),
        ("end", "stop", "tool_calls"),
        ("end_turn", "stop", "tool_calls"),
        ("tool_call", "tool_calls", "tool_calls"),
        ("tool_use", "tool_calls", "tool_calls"),
        ("function_call", "tool_calls", "tool_calls"),
        ("something_new", "stop", "tool_calls"),
        (None, "stop", "tool_calls"),
    ],
)
def test_finish_mapping(raw: str | None, mapped: str, with_tools: str) -> None:
    assert wire.map_finish(raw, False) == mapped
    assert wire.map_finish(raw, True) == with_tools


def test_tool_calls_by_index_renormalised_and_never_overwritten() -> None:
    out, calls = run(
        [
            tc(index=1, id="toolu_1", type="function", function=fn("read", "")),
            tc(index=1, id="", function=fn("", '{"pa')),
            tc(index=1, id=None, function=fn(None, 'th":1}')),
            tc(index=2, id="toolu_2", function=fn("write", "{}")),
            chunk({}, "stop"),
        ]
    )
    assert [d.tool_calls[0].index for d in out if d.tool_calls] == [0, 0, 0, 1]
    assert calls == [
        {"id": "toolu_1", "type": "function", "function": {"name": "read", "arguments": '{"path":1}'}},
        {"id": "toolu_2", "type": "function", "function": {"name": "write", "arguments": "{}"}},
    ]
    assert out[-1].finish_reason == "tool_calls"


def test_new_id_at_used_index_starts_a_new_call() -> None:
    _, calls = run(
        [
            tc(index=0, id="call_a", function=fn("a", "{}")),
            tc(index=0, id="call_b", function=fn("b", '{"x":1}')),
            tc(index=0, id="call_b", function=fn(None, "")),
        ]
    )
    assert [(c["id"], c["function"]["name"], c["function"]["arguments"]) for c in calls] == [
        ("call_a", "a", "{}"),
        ("call_b", "b", '{"x":1}'),
    ]


def test_indexless_calls_by_id_then_next_call_then_continuation() -> None:
    sig = {"google": {"thought_signature": "s1"}}
    _, calls = run(
        [
            tc(id="g1", type="function", function=fn("a", '{"q":'), extra_content=sig),
            tc(function=fn(None, '"x"}')),  # neither id nor name: continues the last call
            tc(id="", function=fn("b", "{}")),  # a name without id: the next call
            tc(id="g1", function=fn(None, "")),  # a known id: that call, nothing new
            tc(id="m3", function=fn("c", '{"z":1}')),
        ]
    )
    assert [
        (c["id"][:5] if c["id"].startswith("call_") else c["id"], c["function"]["name"]) for c in calls
    ] == [
        ("g1", "a"),
        ("call_", "b"),
        ("m3", "c"),
    ]
    assert calls[0]["function"]["arguments"] == '{"q":"x"}'
    assert calls[0]["extra_content"] == sig


def test_non_string_arguments_are_json_encoded() -> None:
    _, calls = run([tc(index=0, id="c", function={"name": "f", "arguments": {"a": 1}})])
    assert calls[0]["function"]["arguments"] == '{"a":1}'


@pytest.mark.parametrize(
    ("c", "kind", "text"),
    [
        (
            {"error": {"message": "The server had an error", "type": "server_error"}},
            errors.ProviderError,
            "server had",
        ),
        ({"error": "plain words"}, errors.ProviderError, "plain words"),
        (
            chunk({"content": ""}, "error", error={"code": 502, "message": "Provider disconnected"}),
            errors.ProviderError,
            "Provider disconnected",
        ),
        (chunk({"content": ""}, "error"), errors.ProviderError, "error"),
        (
            {
                "error": {
                    "message": "request (9000 tokens) exceeds the available context size (4096 tokens)",
                    "type": "exceed_context_size_error",
                }
            },
            errors.ContextWindowExceeded,
            "context size",
        ),
    ],
)
def test_errors_inside_a_stream(c: dict[str, Any], kind: type[Exception], text: str) -> None:
    n = wire.DeltaNormalizer("The provider 'p'")
    assert n.feed(chunk({"content": "partial"})) == Delta("partial")
    with pytest.raises(kind, match=text) as info:
        n.feed(c)
    assert type(info.value) is kind


def test_event_level_errors_and_junk() -> None:
    n = wire.DeltaNormalizer()
    assert n.event(wire.Event(b"not json")) is None and n.junk == b"not json"
    assert n.event(wire.Event(comment=True)) is None
    assert n.event(wire.Event(b"[DONE]")) is None and n.done
    with pytest.raises(errors.ProviderError, match="overloaded"):
        n.event(wire.Event(b'{"message": "overloaded"}', "error"))
    with pytest.raises(errors.ProviderError, match="bad gateway"):
        n.event(wire.Event(b"bad gateway", "error"))


def test_zero_answer_is_visible() -> None:
    n = wire.DeltaNormalizer()
    assert n.feed(chunk({"role": "assistant", "content": ""})) is None
    assert not n.produced and n.finish is None


# --- whole answers, accumulator ---------------------------------------------------------------------


def test_parse_completion_normalises_message() -> None:
    obj = {
        "choices": [
            {
                "message": {
                    "role": "assistant",
                    "content": None,
                    "reasoning": "thinking",
                    "tool_calls": [
                        {
                            "id": "",
                            "type": "function",
                            "function": {"name": "f", "arguments": ""},
                            "extra_content": {"google": {"thought_signature": "s"}},
                        },
                        {"function": {"name": "g", "arguments": {"a": 1}}},
                    ],
                },
                "finish_reason": "stop",
            }
        ],
        "x_groq": {"usage": {"prompt_tokens": 1, "completion_tokens": 2}},
    }
    result = wire.parse_completion(obj)
    msg = result.message
    assert msg["reasoning_content"] == "thinking" and "reasoning" not in msg
    assert [c["function"] for c in msg["tool_calls"]] == [
        {"name": "f", "arguments": "{}"},
        {"name": "g", "arguments": '{"a":1}'},
    ]
    assert all(c["id"].startswith("call_") for c in msg["tool_calls"])
    assert msg["tool_calls"][0]["extra_content"] == {"google": {"thought_signature": "s"}}
    assert result.finish_reason == "tool_calls"
    assert result.usage == {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}


@pytest.mark.parametrize(
    ("obj", "kind"),
    [
        ({"error": {"message": "boom"}}, errors.ProviderError),
        (
            {"error": {"message": "This model's maximum context length is 8192 tokens", "code": "x"}},
            errors.ContextWindowExceeded,
        ),
        ({"choices": []}, errors.ProviderError),
        ([1], errors.ProviderError),
        ({"choices": [{"message": {"content": "x"}, "finish_reason": "error"}]}, errors.ProviderError),
    ],
)
def test_parse_completion_errors(obj: Any, kind: type[Exception]) -> None:
    with pytest.raises(kind):
        wire.parse_completion(obj)


def test_accumulator_ids_stable_and_extra_kept() -> None:
    acc = wire.ToolCallAccumulator()
    acc.add(
        [ToolCallDelta(0, None, "f", '{"a"'), ToolCallDelta(1, "id2", "g", "", {"extra_content": {"k": 1}})]
    )
    acc.add([ToolCallDelta(0, "", "", ":1}"), ToolCallDelta(1, "other", "other", "")])
    first = acc.calls()
    assert first == acc.calls()
    assert first[0]["id"].startswith("call_") and len(first[0]["id"]) > 10
    assert first[0]["function"] == {"name": "f", "arguments": '{"a":1}'}
    assert first[1] == {
        "id": "id2",
        "type": "function",
        "function": {"name": "g", "arguments": "{}"},
        "extra_content": {"k": 1},
    }
    assert len(acc) == 2


# --- sorat's frames ---------------------------------------------------------------------------------


def frame_json(frame: bytes) -> dict[str, Any]:
    assert frame.startswith(b"data: ") and frame.endswith(b"\n\n")
    return orjson.loads(frame[6:-2])


def test_chunk_writer_frames() -> None:
    w = wire.ChunkWriter("chatcmpl-1", 123, 'm"odel')
    frames = [
        w.role(),
        w.content('he said "hi"\n'),
        w.reasoning("hmm"),
        w.tool_call(2, "call_1", "ls", "{}"),
        w.finish("stop"),
    ]
    objs = [frame_json(f) for f in frames]
    for o in objs:
        assert (o["id"], o["object"], o["created"], o["model"]) == (
            "chatcmpl-1",
            "chat.completion.chunk",
            123,
            'm"odel',
        )
        assert len(o["choices"]) == 1 and o["choices"][0]["index"] == 0
    deltas = [o["choices"][0]["delta"] for o in objs]
    assert deltas[:3] == [
        {"role": "assistant", "content": ""},
        {"content": 'he said "hi"\n'},
        {"reasoning_content": "hmm"},
    ]
    assert deltas[3] == {
        "tool_calls": [
            {"index": 2, "id": "call_1", "type": "function", "function": {"name": "ls", "arguments": "{}"}}
        ]
    }
    assert [o["choices"][0]["finish_reason"] for o in objs] == [None, None, None, None, "stop"]
    usage = frame_json(w.usage({"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}))
    assert usage["choices"] == [] and usage["usage"]["total_tokens"] == 3 and usage["id"] == "chatcmpl-1"
    assert frame_json(w.error({"error": {"message": "x"}})) == {"error": {"message": "x"}}
    assert wire.DONE == b"data: [DONE]\n\n" and wire.KEEPALIVE.startswith(b":")
    assert [ev.data for ev in decode(*frames)] == [f[6:-2] for f in frames]


def test_completion_and_usage_helpers() -> None:
    msg = {"role": "assistant", "content": "hi", "reasoning_content": "r"}
    c = wire.completion("chatcmpl-x", 5, "m", msg, "stop", None)
    assert c["object"] == "chat.completion" and c["choices"][0]["message"] == msg
    assert c["choices"][0]["finish_reason"] == "stop"
    assert c["usage"] == {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
    calls = [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}]
    c = wire.completion("chatcmpl-x", 5, "m", {"content": None, "tool_calls": calls}, "tool_calls", None)
    assert c["choices"][0]["message"] == {"role": "assistant", "content": None, "tool_calls": calls}
    assert (
        wire.completion("i", 1, "m", {"content": None}, "stop", None)["choices"][0]["message"]["content"]
        == ""
    )
    a = {
        "prompt_tokens": 1,
        "completion_tokens": 2,
        "total_tokens": 3,
        "completion_tokens_details": {"reasoning_tokens": 1},
    }
    assert wire.add_usage(a, a) == {
        "prompt_tokens": 2,
        "completion_tokens": 4,
        "total_tokens": 6,
        "completion_tokens_details": {"reasoning_tokens": 2},
    }
    assert wire.add_usage(None, a) == a and wire.add_usage(a, None) is not a
    assert wire.new_id().startswith("chatcmpl-") and wire.new_id() != wire.new_id()
    assert orjson.loads(wire.dumps({"a": [1]})) == wire.loads(b'{"a": [1]}')


def test_decoder_and_normalizer_are_fast() -> None:
    w = wire.ChunkWriter("chatcmpl-1", 1, "gpt-4o")
    data = b"".join(w.content(f"tok{i} ") for i in range(30_000))
    reads = [data[i : i + 16384] for i in range(0, len(data), 16384)]
    start = time.perf_counter()
    dec, norm = wire.SSEDecoder(), wire.DeltaNormalizer()
    n = 0
    for r in reads:
        for ev in dec.feed(r):
            if norm.event(ev) is not None:
                n += 1
    elapsed = time.perf_counter() - start
    assert n == 30_000
    assert elapsed < 1.0, f"{30_000 / elapsed:.0f} chunks/s"


def test_coalesce_merges_only_neighbouring_text_of_one_kind() -> None:
    call = ToolCallDelta(0, "c1", "f", "{}")
    deltas = [
        Delta(reasoning="a"),
        Delta(reasoning="b"),
        Delta(content="c"),
        None,
        Delta(content="d"),
        Delta(tool_calls=[call]),
        Delta(content="e"),
        Delta(content="f", finish_reason="stop"),
        Delta(usage={"total_tokens": 1}),
    ]
    assert wire.coalesce(deltas) == [
        Delta(reasoning="ab"),
        Delta(content="cd"),
        Delta(tool_calls=[call]),
        Delta(content="e"),
        Delta(content="f", finish_reason="stop"),
        Delta(usage={"total_tokens": 1}),
    ]
