"""protocols.chat: a client's Chat Completions body checked; sorat's chunks and whole answers; the
renderer of the agent's events (internal calls per tool_events, rounds apart, logprobs)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from sorat_daemon import agent, errors
from sorat_daemon.protocols import chat
from sorat_daemon.providers.sse import Event, SSEDecoder
from tests.conftest import sse

USER = {"role": "user", "content": "hi"}


def body(**fields: Any) -> bytes:
    return orjson.dumps({"messages": [USER], **fields})


# --- parse_chat_request -----------------------------------------------------------------------------


def test_parse_full_request() -> None:
    tools = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]
    req = chat.parse_chat_request(
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
            top_logprobs=3,
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
        "logprobs": True,
        "top_logprobs": 3,
    }


def test_parse_minimal_request_defaults() -> None:
    req = chat.parse_chat_request(body(stream_options={"include_usage": True}, stream=None, model=""))
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
    assert chat.parse_chat_request(orjson.dumps({"messages": messages})).messages == messages


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
        chat.parse_chat_request(raw)
    assert info.value.status == 400
    assert info.value.param == param
    assert info.value.body()["error"]["type"] == "invalid_request_error"


# --- sorat's frames ---------------------------------------------------------------------------------


def decode(*reads: bytes) -> list[Event]:
    d = SSEDecoder()
    return [ev for r in reads for ev in d.feed(r)] + d.close()


def frame_json(frame: bytes) -> dict[str, Any]:
    assert frame.startswith(b"data: ") and frame.endswith(b"\n\n")
    return orjson.loads(frame[6:-2])


def test_chunk_writer_frames() -> None:
    w = chat.ChunkWriter("chatcmpl-1", 123, 'm"odel')
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
    assert chat.DONE == b"data: [DONE]\n\n" and chat.KEEPALIVE.startswith(b":")
    assert [ev.data for ev in decode(*frames)] == [f[6:-2] for f in frames]


def test_completion() -> None:
    msg = {"role": "assistant", "content": "hi", "reasoning_content": "r"}
    c = chat.completion("chatcmpl-x", 5, "m", msg, "stop", None)
    assert c["object"] == "chat.completion" and c["choices"][0]["message"] == msg
    assert c["choices"][0]["finish_reason"] == "stop"
    assert c["usage"] == {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
    calls = [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}]
    c = chat.completion("chatcmpl-x", 5, "m", {"content": None, "tool_calls": calls}, "tool_calls", None)
    assert c["choices"][0]["message"] == {"role": "assistant", "content": None, "tool_calls": calls}
    assert (
        chat.completion("i", 1, "m", {"content": None}, "stop", None)["choices"][0]["message"]["content"]
        == ""
    )
    assert chat.new_id().startswith("chatcmpl-") and chat.new_id() != chat.new_id()


LOGPROBS = {
    "content": [{"token": "hi", "logprob": -0.1, "bytes": [104, 105], "top_logprobs": []}],
    "refusal": None,
}


def test_logprobs_pass_through_and_come_back() -> None:
    req = chat.parse_chat_request(body(logprobs=True, top_logprobs=2))
    assert req.params == {"logprobs": True, "top_logprobs": 2}
    assert chat.parse_chat_request(body(logprobs=None)).params == {}
    w = chat.ChunkWriter("chatcmpl-1", 1, "m")
    with_lp = frame_json(w.content("hi", LOGPROBS))
    assert with_lp["choices"] == [
        {"index": 0, "delta": {"content": "hi"}, "logprobs": LOGPROBS, "finish_reason": None}
    ]
    assert w.content("hi", None) == w.content("hi")  # the fast path, unchanged
    assert frame_json(w.content("hi"))["choices"][0]["logprobs"] is None
    msg = {"role": "assistant", "content": "hi"}
    assert chat.completion("i", 1, "m", msg, "stop", None, LOGPROBS)["choices"][0]["logprobs"] == LOGPROBS
    assert chat.completion("i", 1, "m", msg, "stop", None)["choices"][0]["logprobs"] is None


# --- ChatRenderer -----------------------------------------------------------------------------------


def deltas(renderer: chat.ChatRenderer, events: list[agent.Event]) -> list[dict[str, Any]]:
    frames = renderer.begin() + b"".join(renderer.event(e) for e in events)
    return [c["choices"][0]["delta"] for c in sse(frames.decode()) if c["choices"]]


ROUNDS: list[agent.Event] = [
    agent.Text("Let me look.", 0),
    agent.ToolCall("call_1", "get_current_time", '{"timezone":"UTC"}'),
    agent.Text("It is ", 1),
    agent.Text("noon.", 1),
]


def test_a_later_round_follows_a_blank_line() -> None:
    out = deltas(chat.ChatRenderer("m", "none", False), ROUNDS)
    assert [d.get("content") for d in out] == ["", "Let me look.", "\n\nIt is ", "noon."]


def test_no_blank_line_before_the_first_text() -> None:
    """A silent first round: the answer's text is the first the client sees."""
    events: list[agent.Event] = [agent.ToolCall("c", "t", "{}"), agent.Text("Noon.", 1), agent.Text("!", 1)]
    out = deltas(chat.ChatRenderer("m", "none", False), events)
    assert "".join(d.get("content") or "" for d in out) == "Noon.!"


@pytest.mark.parametrize(
    ("mode", "calls", "reasoning"),
    [
        ("reasoning", [], 'get_current_time {"timezone":"UTC"}\n'),
        ("tool_calls", [(0, "call_1", "get_current_time")], ""),
        ("none", [], ""),
    ],
)
def test_internal_calls_per_mode(mode: str, calls: list[Any], reasoning: str) -> None:
    out = deltas(chat.ChatRenderer("m", mode, False), ROUNDS)
    shown = [(c["index"], c["id"], c["function"]["name"]) for d in out for c in d.get("tool_calls") or []]
    assert shown == calls
    assert "".join(d.get("reasoning_content") or "" for d in out) == reasoning


def test_the_renderer_relays_logprobs_beside_their_text() -> None:
    """Each text chunk carries the provider's logprobs of its tokens, a token with no text yet too."""
    other = {"content": [{"token": "\xe2", "logprob": -1.0, "bytes": [226], "top_logprobs": []}]}
    events: list[agent.Event] = [
        agent.Text("hi", 0, LOGPROBS),
        agent.ToolCall("c", "t", "{}"),
        agent.Text("", 1, other),
        agent.Text("there", 1, LOGPROBS),
        agent.Text("!", 1),
    ]
    renderer = chat.ChatRenderer("m", "none", False)
    frames = renderer.begin() + b"".join(renderer.event(e) for e in events)
    choices = [c["choices"][0] for c in sse(frames.decode())][1:]
    assert [(c["delta"]["content"], c["logprobs"]) for c in choices] == [
        ("hi", LOGPROBS),
        ("", other),
        ("\n\nthere", LOGPROBS),
        ("!", None),
    ]


async def test_a_whole_answer_has_the_final_rounds_logprobs() -> None:
    done = agent.Done("stop", None, {"role": "assistant", "content": "a\n\nhi"}, None, LOGPROBS)

    class FinishedRun:
        async def answer(self) -> agent.Done:
            return done

    body = orjson.loads(await chat.ChatRenderer("m", "none", False).whole(FinishedRun()))  # type: ignore[arg-type]
    assert body["choices"][0]["logprobs"] == LOGPROBS
    assert body["choices"][0]["message"]["content"] == "a\n\nhi"
