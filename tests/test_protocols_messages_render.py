"""protocols/messages_render.py: the agent's events as Anthropic's named-event stream and whole message."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest

from sorat_daemon import agent
from sorat_daemon.errors import (
    AuthError,
    PayloadTooLarge,
    ProviderError,
    ProviderTimeout,
    RequestError,
    SoratError,
)
from sorat_daemon.protocols.messages import tool_id_in
from sorat_daemon.protocols.messages_render import MessagesRenderer, error_json
from tests.messages_sse import assert_valid_stream, blocks, named_events

USAGE = {"prompt_tokens": 30, "completion_tokens": 12, "total_tokens": 42}
LAST = {"prompt_tokens": 20, "completion_tokens": 4, "total_tokens": 24}


def done(finish: str = "stop", calls: list[Any] | None = None, **kw: Any) -> agent.Done:
    message: dict[str, Any] = {"role": "assistant", "content": "x"}
    if calls:
        message["tool_calls"] = calls
    return agent.Done(finish, kw.get("usage", USAGE), message, kw.get("last", LAST))


def call(call_id: str, name: str, arguments: str) -> dict[str, Any]:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def stream(events: list[agent.Event], mode: str = "reasoning", estimate: int = 0) -> list[tuple[str, Any]]:
    r = MessagesRenderer("gpt-4o", mode, estimate)
    out = [r.begin()]
    for ev in events:
        out.append(r.end(ev) if isinstance(ev, agent.Done) else r.event(ev))
    out.append(r.close())
    return named_events(b"".join(out))


async def whole(events: list[agent.Event], mode: str = "reasoning") -> dict[str, Any]:
    async def run() -> AsyncIterator[agent.Event]:
        for ev in events:
            yield ev

    return orjson.loads(await MessagesRenderer("gpt-4o", mode).whole(run()))  # type: ignore[arg-type]


def test_a_text_answer() -> None:
    evs = stream([agent.Text("Hel"), agent.Text("lo"), done()])
    assert_valid_stream(evs)
    start = evs[0][1]["message"]
    assert start["id"].startswith("msg_") and start["model"] == "gpt-4o" and start["role"] == "assistant"
    assert start["content"] == [] and start["stop_reason"] is None
    assert blocks(evs) == [{"type": "text", "text": "Hello"}]
    assert evs[-2][1] == {
        "type": "message_delta",
        "delta": {"stop_reason": "end_turn", "stop_sequence": None},
        "usage": {"input_tokens": 20, "output_tokens": 12},  # the last call's prompt, the summed output
    }


def test_reasoning_internal_tools_and_rounds_make_contiguous_blocks() -> None:
    evs = stream(
        [
            agent.Reasoning("thinking…"),
            agent.Text("Let me check."),
            agent.ToolCall("call_1", "get_current_time", '{"timezone":"UTC"}'),
            agent.ToolResult("call_1", "get_current_time", "{}", "noon", 1.0),
            agent.KeepAlive(),
            agent.Reasoning("now I know", round=1),
            agent.Text("It is noon.", round=1),
            done(),
        ]
    )
    assert_valid_stream(evs)
    assert blocks(evs) == [
        {"type": "thinking", "thinking": "thinking…", "signature": ""},
        {"type": "text", "text": "Let me check."},
        {"type": "thinking", "thinking": 'get_current_time {"timezone":"UTC"}\nnow I know', "signature": ""},
        {"type": "text", "text": "It is noon."},
    ]
    assert ("ping", {"type": "ping"}) in evs
    assert not any(d.get("content_block", {}).get("type") == "tool_use" for _, d in evs)


def test_a_later_rounds_text_is_a_new_block() -> None:
    evs = stream([agent.Text("one"), agent.Text("two", round=1), done()], mode="none")
    assert blocks(evs) == [{"type": "text", "text": "one"}, {"type": "text", "text": "two"}]


@pytest.mark.parametrize(("mode", "line"), [("reasoning", True), ("tool_calls", True), ("none", False)])
def test_internal_calls_are_never_tool_use(mode: str, line: bool) -> None:
    evs = stream([agent.ToolCall("c", "web_search", '{"q":"x"}'), agent.Text("done", round=1), done()], mode)
    assert_valid_stream(evs)
    kinds = [b["type"] for b in blocks(evs)]
    assert kinds == (["thinking", "text"] if line else ["text"])


def test_client_tool_calls_are_tool_use_blocks_with_input_json_delta() -> None:
    calls = [
        call("call_abc", "Bash", '{"command":"ls"}'),
        call("functions.Read:1", "Read", '{"file_path":"/x"}'),
        call("call_bad", "Edit", "not json"),
        call("call_none", "Glob", ""),
    ]
    evs = stream([agent.Text("Running."), done("tool_calls", calls)])
    assert_valid_stream(evs)
    got = blocks(evs)
    assert got[0] == {"type": "text", "text": "Running."}
    assert [(b["name"], b["input"]) for b in got[1:]] == [
        ("Bash", {"command": "ls"}),
        ("Read", {"file_path": "/x"}),
        ("Edit", {}),
        ("Glob", {}),
    ]
    starts = [d["content_block"] for n, d in evs if n == "content_block_start"][1:]
    assert all(s["input"] == {} for s in starts)  # the input comes as input_json_delta only
    assert starts[0]["id"] == "call_abc"
    assert starts[1]["id"].startswith("toolu_") and tool_id_in(starts[1]["id"]) == "functions.Read:1"
    assert evs[-2][1]["delta"]["stop_reason"] == "tool_use"


@pytest.mark.parametrize(
    ("finish", "reason"),
    [
        ("stop", "end_turn"),
        ("length", "max_tokens"),
        ("tool_calls", "tool_use"),
        ("content_filter", "refusal"),
    ],
)
def test_stop_reasons(finish: str, reason: str) -> None:
    assert stream([done(finish)])[-2][1]["delta"]["stop_reason"] == reason


def test_usage_without_the_providers_figures_uses_the_estimate() -> None:
    evs = stream(
        [agent.Text("x"), agent.Done("stop", None, {"role": "assistant", "content": "x"})], estimate=77
    )
    assert evs[-2][1]["usage"] == {"input_tokens": 77, "output_tokens": 0}


def test_a_failure_after_the_start_is_an_error_event_and_no_message_stop() -> None:
    r = MessagesRenderer("gpt-4o", "reasoning")
    body = r.begin() + r.event(agent.Text("partial")) + r.fail(ProviderError("upstream broke")) + r.close()
    evs = named_events(body)
    assert_valid_stream(evs, failed=True)
    assert evs[-1][1] == {"type": "error", "error": {"type": "api_error", "message": "upstream broke"}}


@pytest.mark.parametrize(
    ("err", "kind"),
    [
        (RequestError("bad"), "invalid_request_error"),
        (AuthError("who"), "authentication_error"),
        (PayloadTooLarge("big"), "request_too_large"),
        (ProviderError("down"), "api_error"),
        (ProviderTimeout("slow"), "timeout_error"),
        (SoratError("bug"), "api_error"),
    ],
)
def test_error_shape(err: SoratError, kind: str) -> None:
    assert error_json(err) == {"type": "error", "error": {"type": kind, "message": err.message}}


async def test_whole_answer_mirrors_the_stream() -> None:
    body = await whole(
        [
            agent.Text("Checking."),  # a whole model answer: text first, then its reasoning
            agent.Reasoning("hmm"),
            agent.ToolCall("c1", "get_current_time", "{}"),
            agent.ToolResult("c1", "get_current_time", "{}", "noon", 1.0),
            agent.Text("Run this.", round=1),
            done("tool_calls", [call("call_x", "Bash", '{"command":"date"}')]),
        ]
    )
    assert body["id"].startswith("msg_") and body["type"] == "message" and body["role"] == "assistant"
    assert body["model"] == "gpt-4o" and body["stop_reason"] == "tool_use" and body["stop_sequence"] is None
    assert body["content"] == [
        {"type": "thinking", "thinking": "hmm", "signature": ""},
        {"type": "text", "text": "Checking."},
        {"type": "thinking", "thinking": "get_current_time {}\n", "signature": ""},
        {"type": "text", "text": "Run this."},
        {"type": "tool_use", "id": "call_x", "name": "Bash", "input": {"command": "date"}},
    ]
    assert body["usage"] == {"input_tokens": 20, "output_tokens": 12}


async def test_whole_answer_without_done_is_an_error() -> None:
    with pytest.raises(SoratError):
        await whole([agent.Text("x")])
