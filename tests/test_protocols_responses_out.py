"""The Responses renderer: the agent's events as the Responses event stream and as one Response object,
held to what openai-python's stream helper, Codex and the Agents SDK require (CLIENTS.md)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from typing import Any

import orjson
import pytest

from sorat_daemon import agent
from sorat_daemon.errors import ContextWindowExceeded, ProviderError, ProviderRejected, SoratError
from sorat_daemon.protocols.responses_items import ClientTool, fc_id, items_of
from sorat_daemon.protocols.responses_out import Head, ResponsesRenderer, error_code, usage_of

USAGE = {
    "prompt_tokens": 30,
    "completion_tokens": 12,
    "total_tokens": 42,
    "prompt_tokens_details": {"cached_tokens": 8},
    "completion_tokens_details": {"reasoning_tokens": 4},
}


def call(call_id: str, name: str, arguments: str) -> dict[str, Any]:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def done(message: dict[str, Any] | None = None, finish: str = "stop", usage: Any = USAGE) -> agent.Done:
    return agent.Done(finish, usage, message or {"role": "assistant", "content": "x"})


def renderer(
    mode: str = "reasoning", tools: dict[str, ClientTool] | None = None, **kw: Any
) -> ResponsesRenderer:
    return ResponsesRenderer(Head("resp_1", 1700000000, "gpt-4o", **kw), mode, tools or {})


def frames(data: bytes) -> list[dict[str, Any]]:
    """Every event of a stream, checked for the ``event:`` line matching its ``type``."""
    out = []
    for block in data.split(b"\n\n"):
        if not block:
            continue
        head, body = block.split(b"\n", 1)
        assert head.startswith(b"event: ") and body.startswith(b"data: "), block
        ev = orjson.loads(body[6:])
        assert ev["type"] == head[7:].decode()
        out.append(ev)
    return out


def stream(r: ResponsesRenderer, events: Iterable[agent.Event], end: agent.Done | SoratError) -> list[dict]:
    data = r.begin() + b"".join(r.event(e) for e in events)
    data += r.fail(end) if isinstance(end, SoratError) else r.end(end)
    return frames(data + r.close())


def check_stream(evs: list[dict[str, Any]]) -> None:
    """The rules of CLIENTS.md, on any stream."""
    assert [e["sequence_number"] for e in evs] == list(range(len(evs)))
    assert evs[0]["type"] == "response.created"
    lifecycle = [e for e in evs if "response" in e]
    assert len({e["response"]["id"] for e in lifecycle}) == 1 and lifecycle[0]["response"]["id"].startswith(
        "resp_"
    )
    added: dict[int, dict[str, Any]] = {}
    parts: set[int] = set()
    finished: set[int] = set()
    for e in evs:
        kind = e["type"]
        if kind == "response.output_item.added":
            assert e["output_index"] not in added, "one added per index"
            assert e["output_index"] == len(added), "indices rise across the whole response"
            added[e["output_index"]] = e["item"]
        elif kind == "response.output_item.done":
            first = added[e["output_index"]]
            assert (first["id"], first["type"]) == (e["item"]["id"], e["item"]["type"])
            assert first.get("call_id") == e["item"].get("call_id")
            finished.add(e["output_index"])
        elif kind == "response.content_part.added":
            assert e["output_index"] in added
            parts.add(e["output_index"])
        elif kind == "response.output_text.delta":
            assert e["output_index"] in parts and e["output_index"] not in finished
        elif "output_index" in e:
            assert e["output_index"] in added and e["output_index"] not in finished, kind
    terminal = evs[-1]
    assert terminal["type"] in ("response.completed", "response.incomplete", "response.failed")
    assert sorted(finished) == sorted(added) == list(range(len(terminal["response"]["output"])))
    for i, item in enumerate(terminal["response"]["output"]):
        assert item["id"] == added[i]["id"]


def text_of_stream(evs: list[dict[str, Any]]) -> str:
    return "".join(e["delta"] for e in evs if e["type"] == "response.output_text.delta")


def test_a_text_answer() -> None:
    evs = stream(renderer(), [agent.Text("Hel"), agent.Text("lo")], done())
    check_stream(evs)
    assert [e["type"] for e in evs] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    final = evs[-1]["response"]
    assert final["status"] == "completed" and final["model"] == "gpt-4o"
    assert final["output"][0]["content"][0]["text"] == "Hello" == text_of_stream(evs)
    assert final["usage"] == {
        "input_tokens": 30,
        "input_tokens_details": {"cached_tokens": 8},
        "output_tokens": 12,
        "output_tokens_details": {"reasoning_tokens": 4},
        "total_tokens": 42,
    }
    assert evs[0]["response"]["status"] == "in_progress" and evs[0]["response"]["output"] == []


def test_rounds_reasoning_and_internal_calls_as_reasoning_lines() -> None:
    evs = stream(
        renderer("reasoning"),
        [
            agent.Reasoning("think", 0),
            agent.Text("Checking.", 0),
            agent.ToolCall("call_a", "get_current_time", '{"timezone":"UTC"}'),
            agent.KeepAlive(),
            agent.ToolResult("call_a", "get_current_time", "{}", '{"iso":"now"}', 3.0),
            agent.Text("It is noon.", 1),
        ],
        done(),
    )
    check_stream(evs)
    output = evs[-1]["response"]["output"]
    assert [i["type"] for i in output] == ["reasoning", "message", "reasoning", "message"]
    assert output[0]["summary"] == [{"type": "summary_text", "text": "think"}]
    assert output[2]["summary"][0]["text"] == 'get_current_time {"timezone":"UTC"}\n'
    assert [o["content"][0]["text"] for o in output if o["type"] == "message"] == ["Checking.", "It is noon."]
    assert [e["type"] for e in evs].count("response.in_progress") == 2  # the KeepAlive too
    assert not any(e.get("item", {}).get("type") == "function_call" for e in evs)


def test_internal_calls_as_mcp_call_items() -> None:
    evs = stream(
        renderer("tool_calls"),
        [
            agent.ToolCall("c1", "web_search", '{"query":"x"}'),
            agent.ToolCall("c2", "get_current_time", "{}"),
            agent.ToolResult("c1", "web_search", '{"query":"x"}', "results", 1.0),
            agent.ToolResult("c2", "get_current_time", "{}", "noon", 1.0),
            agent.Text("Found it.", 1),
        ],
        done(),
    )
    check_stream(evs)
    output = evs[-1]["response"]["output"]
    assert [i["type"] for i in output] == ["mcp_call", "mcp_call", "message"]
    assert output[0] | {"id": "x"} == {
        "id": "x",
        "type": "mcp_call",
        "status": "completed",
        "server_label": "sorat",
        "name": "web_search",
        "arguments": '{"query":"x"}',
        "output": "results",
        "error": None,
    }


def test_internal_calls_shown_as_nothing() -> None:
    evs = stream(renderer("none"), [agent.ToolCall("c1", "f", "{}"), agent.Text("ok", 1)], done())
    check_stream(evs)
    assert [i["type"] for i in evs[-1]["response"]["output"]] == ["message"]


def test_client_calls_keep_id_and_call_id_apart() -> None:
    tools = {
        "exec_command": ClientTool("function", "exec_command"),
        "apply_patch": ClientTool("custom", "apply_patch"),
        "multi_agent_v1__spawn_agent": ClientTool("function", "spawn_agent", "multi_agent_v1"),
    }
    calls = [
        call("call_1", "exec_command", '{"cmd":"ls"}'),
        call("call_2", "apply_patch", '{"input":"P"}'),
        call("call_3", "multi_agent_v1__spawn_agent", "{}"),
    ]
    message = {"role": "assistant", "content": "Running.", "tool_calls": calls}
    evs = stream(renderer(tools=tools), [agent.Text("Running.")], done(message, "tool_calls"))
    check_stream(evs)
    output = evs[-1]["response"]["output"]
    assert evs[-1]["type"] == "response.completed"
    assert [i["type"] for i in output] == ["message", "function_call", "custom_tool_call", "function_call"]
    fc = output[1]
    assert fc == {
        "id": fc_id("call_1"),
        "type": "function_call",
        "status": "completed",
        "call_id": "call_1",
        "name": "exec_command",
        "arguments": '{"cmd":"ls"}',
    }
    assert output[2]["input"] == "P" and output[2]["call_id"] == "call_2" and output[2]["id"] != "call_2"
    assert output[3]["name"] == "spawn_agent" and output[3]["namespace"] == "multi_agent_v1"
    deltas = [e for e in evs if e["type"] == "response.function_call_arguments.delta"]
    assert deltas[0]["item_id"] == fc_id("call_1") and deltas[0]["delta"] == '{"cmd":"ls"}'
    assert any(e["type"] == "response.custom_tool_call_input.done" and e["input"] == "P" for e in evs)


def test_an_empty_answer_is_still_a_message() -> None:
    evs = stream(renderer(), [], done({"role": "assistant", "content": ""}))
    check_stream(evs)
    assert evs[-1]["response"]["output"][0]["content"][0]["text"] == ""


@pytest.mark.parametrize(
    ("finish", "reason"), [("length", "max_output_tokens"), ("content_filter", "content_filter")]
)
def test_cut_short_is_incomplete(finish: str, reason: str) -> None:
    evs = stream(renderer(), [agent.Text("Half")], done(finish=finish))
    check_stream(evs)
    assert evs[-1]["type"] == "response.incomplete"
    assert evs[-1]["response"]["status"] == "incomplete"
    assert evs[-1]["response"]["incomplete_details"] == {"reason": reason}


@pytest.mark.parametrize(
    ("err", "code"),
    [
        (ContextWindowExceeded("too long", code="context_length_exceeded"), "context_length_exceeded"),
        (ProviderRejected("bad prompt"), "invalid_prompt"),
        (ProviderError("upstream broke"), "server_error"),
        (SoratError("bug"), "server_error"),
    ],
)
def test_a_failure_after_the_first_event(err: SoratError, code: str) -> None:
    evs = stream(renderer("tool_calls"), [agent.Text("Part"), agent.ToolCall("c", "f", "{}")], err)
    check_stream(evs)
    final = evs[-1]
    assert final["type"] == "response.failed"
    assert final["response"]["status"] == "failed"
    assert final["response"]["error"] == {"code": code, "message": err.message}
    assert [i["status"] for i in final["response"]["output"]] == ["completed", "failed"]


def test_rate_limit_code() -> None:
    class Limited(ProviderError):
        status = 429

    assert error_code(Limited("slow down")) == "rate_limit_exceeded"


def test_on_end_sees_the_final_response_before_its_frames() -> None:
    seen: list[bytes] = []
    r = ResponsesRenderer(Head("resp_1", 1, "m"), "reasoning", {}, seen.append)
    r.begin()
    r.event(agent.Text("hi"))
    data = r.end(done())
    final = orjson.loads(seen[0])
    assert final["status"] == "completed" and final["output"][0]["content"][0]["text"] == "hi"
    assert frames(data)[-1]["response"] == final


def test_echoed_settings_and_ids() -> None:
    head = Head(
        "resp_1", 1, "m", echo={"instructions": "Be brief", "temperature": 0.2, "metadata": {"k": "v"}},
        previous_response_id="resp_0", conversation="conv_1", store=False,
    )  # fmt: skip
    evs = frames(ResponsesRenderer(head, "none", {}).begin())
    response = evs[0]["response"]
    assert response["instructions"] == "Be brief" and response["temperature"] == 0.2
    assert response["metadata"] == {"k": "v"} and response["store"] is False
    assert response["previous_response_id"] == "resp_0" and response["conversation"] == {"id": "conv_1"}
    assert response["tools"] == [] and response["tool_choice"] == "auto" and response["object"] == "response"


class FakeRun:
    def __init__(self, events: list[agent.Event]) -> None:
        self._events = iter(events)

    def __aiter__(self) -> AsyncIterator[agent.Event]:
        return self

    async def __anext__(self) -> agent.Event:
        try:
            return next(self._events)
        except StopIteration:
            raise StopAsyncIteration from None


async def test_whole_answer_has_every_item_in_order() -> None:
    calls = [call("call_9", "lookup", "{}")]
    events: list[agent.Event] = [
        agent.Reasoning("think"),
        agent.ToolCall("c1", "get_current_time", "{}"),
        agent.ToolResult("c1", "get_current_time", "{}", "noon", 1.0),
        agent.Text("Let me look it up."),
        done({"role": "assistant", "content": "Let me look it up.", "tool_calls": calls}, "tool_calls"),
    ]
    seen: list[bytes] = []
    r = ResponsesRenderer(Head("resp_1", 1, "m"), "tool_calls", {}, seen.append)
    body = orjson.loads(await r.whole(FakeRun(events)))  # type: ignore[arg-type]
    assert [i["type"] for i in body["output"]] == ["reasoning", "mcp_call", "message", "function_call"]
    assert body["status"] == "completed" and body["usage"]["total_tokens"] == 42
    assert body["output"][3]["call_id"] == "call_9" and body == orjson.loads(seen[0])


def test_usage_without_details_or_at_all() -> None:
    assert usage_of(None) == {
        "input_tokens": 0,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": 0,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": 0,
    }
    assert usage_of({"prompt_tokens": 3, "completion_tokens": 4})["total_tokens"] == 7


def test_visible_messages_as_items() -> None:
    messages = [
        {"role": "system", "content": "rules"},
        {"role": "user", "content": [{"type": "text", "text": "see"},
                                     {"type": "image_url", "image_url": {"url": "u"}}]},
        {"role": "assistant", "content": "calling", "tool_calls": [call("call_1", "f", "{}")]},
        {"role": "tool", "tool_call_id": "call_1", "content": "out"},
        {"role": "assistant", "content": "done"},
    ]  # fmt: skip
    items = items_of(messages)
    assert [(i["type"], i.get("role")) for i in items] == [
        ("message", "system"),
        ("message", "user"),
        ("message", "assistant"),
        ("function_call", None),
        ("function_call_output", None),
        ("message", "assistant"),
    ]
    assert items[1]["content"] == [
        {"type": "input_text", "text": "see"},
        {"type": "input_image", "image_url": "u", "detail": "auto"},
    ]
    assert items[3]["id"] == fc_id("call_1") and items[4]["call_id"] == "call_1"
    assert len({i["id"] for i in items}) == len(items)
    assert items_of(messages) == items  # the same ids on every listing
