"""providers.normalize: each provider's chunk dialect → Delta; finish reasons, usage, errors."""

from __future__ import annotations

import time
from typing import Any

import pytest

from sorat_daemon import errors
from sorat_daemon.protocols.chat import ChunkWriter
from sorat_daemon.providers.completion import ToolCallAccumulator
from sorat_daemon.providers.normalize import DeltaNormalizer, map_finish
from sorat_daemon.providers.sse import Event, SSEDecoder
from sorat_daemon.types import Delta


def chunk(delta: dict[str, Any] | None = None, finish: str | None = None, **top: Any) -> dict[str, Any]:
    choice: dict[str, Any] = {"index": 0, "finish_reason": finish}
    if delta is not None:
        choice["delta"] = delta
    return {"id": "x", "choices": [choice], **top}


def run(chunks: list[dict[str, Any]]) -> tuple[list[Delta], list[dict[str, Any]]]:
    n = DeltaNormalizer()
    out = [d for c in chunks if (d := n.feed(c)) is not None]
    out.append(n.final())
    acc = ToolCallAccumulator()
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
    assert map_finish(raw, False) == mapped
    assert map_finish(raw, True) == with_tools


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
    n = DeltaNormalizer("The provider 'p'")
    assert n.feed(chunk({"content": "partial"})) == Delta("partial")
    with pytest.raises(kind, match=text) as info:
        n.feed(c)
    assert type(info.value) is kind


def test_event_level_errors_and_junk() -> None:
    n = DeltaNormalizer()
    assert n.event(Event(b"not json")) is None and n.junk == b"not json"
    assert n.event(Event(comment=True)) is None
    assert n.event(Event(b"[DONE]")) is None and n.done
    with pytest.raises(errors.ProviderError, match="overloaded"):
        n.event(Event(b'{"message": "overloaded"}', "error"))
    with pytest.raises(errors.ProviderError, match="bad gateway"):
        n.event(Event(b"bad gateway", "error"))


def test_zero_answer_is_visible() -> None:
    n = DeltaNormalizer()
    assert n.feed(chunk({"role": "assistant", "content": ""})) is None
    assert not n.produced and n.finish is None


def test_decoder_and_normalizer_are_fast() -> None:
    w = ChunkWriter("chatcmpl-1", 1, "gpt-4o")
    data = b"".join(w.content(f"tok{i} ") for i in range(30_000))
    reads = [data[i : i + 16384] for i in range(0, len(data), 16384)]
    start = time.perf_counter()
    dec, norm = SSEDecoder(), DeltaNormalizer()
    n = 0
    for r in reads:
        for ev in dec.feed(r):
            if norm.event(ev) is not None:
                n += 1
    elapsed = time.perf_counter() - start
    assert n == 30_000
    assert elapsed < 1.0, f"{30_000 / elapsed:.0f} chunks/s"


LOGPROBS = {
    "content": [{"token": "Hi", "logprob": -0.25, "bytes": [72, 105], "top_logprobs": []}],
    "refusal": None,
}


def lp_chunk(delta: dict[str, Any] | None, logprobs: Any, finish: str | None = None) -> dict[str, Any]:
    c = chunk(delta, finish)
    c["choices"][0]["logprobs"] = logprobs
    return c


def test_logprobs_ride_on_their_delta() -> None:
    n = DeltaNormalizer()
    assert n.feed(lp_chunk({"content": "Hi"}, LOGPROBS)) == Delta("Hi", logprobs=LOGPROBS)
    assert n.feed(lp_chunk({"content": "!"}, None)) == Delta("!")  # OpenAI's null on every chunk
    empty = {"content": None, "refusal": None}
    assert n.feed(lp_chunk({"content": "?"}, empty)) == Delta("?")  # says nothing
    assert n.feed(lp_chunk({"content": "x"}, [1])) == Delta("x")  # not an object
    deep: Any = []
    for _ in range(300):
        deep = [deep]
    assert n.feed(lp_chunk({"content": "y"}, {"content": deep})) == Delta("y")  # could not be sent on
    call = {"index": 0, "id": "c1", "function": {"name": "f", "arguments": "{}"}}
    d = n.feed(lp_chunk({"tool_calls": [call]}, LOGPROBS))
    assert d is not None and d.tool_calls and d.logprobs == LOGPROBS
    assert n.final().logprobs is None


def test_logprobs_of_a_token_without_text_are_kept() -> None:
    n = DeltaNormalizer()
    # half a UTF-8 character: no text yet, but the token had its logprobs
    assert n.feed(lp_chunk({"content": ""}, LOGPROBS)) == Delta(logprobs=LOGPROBS)
    assert n.feed(lp_chunk(None, LOGPROBS)) == Delta(logprobs=LOGPROBS)
    assert not n.produced  # logprobs alone are not an answer
    assert n.feed(lp_chunk({}, None, "stop")) is None
