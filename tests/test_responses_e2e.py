"""/v1/responses end to end: a real daemon on the scripted upstream, driven by openai-python and by raw
HTTP (the stream's framing, bad input, provider failures before and after the first event)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import DaemonProc
from tests.test_protocols_responses_out import check_stream, frames
from tests.upstream import Upstream, error, stream_error, text, tool_calls

WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


@pytest.fixture
def client(daemon: DaemonProc) -> Iterator[openai.OpenAI]:
    with daemon.openai() as c:
        yield c


def sent_with(upstream: Upstream, marker: str) -> list[dict[str, Any]]:
    """The upstream requests whose conversation holds ``marker``."""
    return [r for r in upstream.requests if any(marker in str(m.get("content")) for m in r["messages"])]


def post(daemon: DaemonProc, body: dict[str, Any] | bytes, **headers: str) -> httpx.Response:
    with daemon.client() as c:
        if isinstance(body, bytes):
            return c.post(
                "/v1/responses", content=body, headers={"Content-Type": "application/json", **headers}
            )
        return c.post("/v1/responses", json=body, headers=headers)


def openai_error(r: httpx.Response, status: int, param: str | None = None) -> dict[str, Any]:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    if param is not None:
        assert err["param"] == param, err
    return err  # type: ignore[no-any-return]


# --- answers -------------------------------------------------------------------------------------------


def test_whole_answer_through_the_sdk(daemon: DaemonProc, client: openai.OpenAI, upstream: Upstream) -> None:
    upstream.script(text("Hello from sorat", reasoning="Thinking it over"))
    raw = client.responses.with_raw_response.create(
        model="sorat-agent",
        instructions="Be brief.",
        input="whole-1 hi",
        temperature=0.2,
        max_output_tokens=50,
    )
    r = raw.parse()
    assert r.id.startswith("resp_") and r.status == "completed" and r.model == "gpt-4o"
    assert r.output_text == "Hello from sorat"
    assert [o.type for o in r.output] == ["reasoning", "message"]
    assert (
        r.usage is not None and r.usage.total_tokens == 15 and r.usage.input_tokens_details.cached_tokens == 0
    )
    assert raw.headers["x-session-id"]
    (sent,) = sent_with(upstream, "whole-1")
    assert sent["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "whole-1 hi"},
    ]
    assert sent["temperature"] == 0.2 and sent["max_tokens"] == 50 and not sent.get("stream")


def test_streamed_answer_through_the_stream_helper(
    daemon: DaemonProc, client: openai.OpenAI, upstream: Upstream
) -> None:
    upstream.script(
        tool_calls([("get_current_time", {"timezone": "UTC"})]), text("It is noon, really.", chunks=4)
    )
    reasoning = {"X-Sorat-Tool-Events": "reasoning"}
    with client.responses.stream(model="x", input="stream-1 what time?", extra_headers=reasoning) as s:
        deltas = [e.delta for e in s if e.type == "response.output_text.delta"]
        final = s.get_final_response()
    assert "".join(deltas) == "It is noon, really." == final.output_text
    assert [o.type for o in final.output] == ["reasoning", "message"]  # the internal call as a reasoning line
    assert "get_current_time" in final.output[0].summary[0].text  # type: ignore[union-attr]
    assert len(sent_with(upstream, "stream-1")) == 2


def test_the_raw_stream_keeps_every_rule(daemon: DaemonProc, upstream: Upstream) -> None:
    upstream.script(text("Let me think.", reasoning="hmm", chunks=2))
    r = post(daemon, {"input": "raw-1", "stream": True})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    assert r.headers["x-session-id"]
    evs = frames(r.content)
    check_stream(evs)
    assert [o["type"] for o in evs[-1]["response"]["output"]] == ["reasoning", "message"]
    upstream.script(tool_calls([("get_current_time", {})], content="Checking."), text("Done.", chunks=2))
    evs = frames(
        post(daemon, {"input": "raw-2", "stream": True}, **{"X-Sorat-Tool-Events": "tool_calls"}).content
    )
    check_stream(evs)
    output = evs[-1]["response"]["output"]
    assert [o["type"] for o in output] == ["message", "mcp_call", "message"]
    assert output[1]["server_label"] == "sorat" and output[1]["output"]
    assert evs[-1]["response"]["usage"]["total_tokens"] == 30  # both model calls


def test_client_tool_round_trip_continues_the_session(
    daemon: DaemonProc, client: openai.OpenAI, upstream: Upstream
) -> None:
    upstream.script(tool_calls([("get_weather", {"city": "Oslo"})]))
    first = client.responses.with_raw_response.create(model="x", input="tool-1 weather?", tools=[WEATHER])
    r = first.parse()
    sid = first.headers["x-session-id"]
    (call,) = r.output
    assert call.type == "function_call" and call.name == "get_weather"
    assert call.id != call.call_id and call.id.startswith("fc_")  # type: ignore[union-attr]
    upstream.script(text("Sunny in Oslo."))
    history: list[Any] = [
        {"role": "user", "content": "tool-1 weather?"},
        call.model_dump(exclude_none=True),
        {"type": "function_call_output", "call_id": call.call_id, "output": '{"sky":"sunny"}'},
    ]
    second = client.responses.with_raw_response.create(model="x", input=history, tools=[WEATHER])
    assert second.parse().output_text == "Sunny in Oslo."
    assert second.headers["x-session-id"] == sid  # no header sent: the history matched
    last = sent_with(upstream, "tool-1")[-1]["messages"]
    assert [m["role"] for m in last] == ["user", "assistant", "tool"]
    with daemon.client() as c:
        session = c.get(f"/v1/sessions/{sid}").json()
    assert [m["role"] for m in session["messages"]] == ["user", "assistant", "tool", "assistant"]


def test_reasoning_effort_and_json_format_pass_through(daemon: DaemonProc, upstream: Upstream) -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    upstream.script(text('{"a": 1}'))
    post(
        daemon,
        {
            "input": "fmt-1",
            "reasoning": {"effort": "low"},
            "text": {"format": {"type": "json_schema", "name": "out", "schema": schema}},
            "parallel_tool_calls": False,
            "top_p": 0.5,
        },
    )
    (sent,) = sent_with(upstream, "fmt-1")
    assert sent["reasoning_effort"] == "low" and sent["top_p"] == 0.5 and sent["parallel_tool_calls"] is False
    assert sent["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "out", "schema": schema},
    }


def test_max_output_tokens_is_incomplete(
    daemon: DaemonProc, client: openai.OpenAI, upstream: Upstream
) -> None:
    upstream.script(text("cut sh", finish_reason="length"))
    r = client.responses.create(model="x", input="len-1", max_output_tokens=3)
    assert r.status == "incomplete" and r.incomplete_details is not None
    assert r.incomplete_details.reason == "max_output_tokens"


# --- bad input -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (b"{nope", None),
        (b"[1]", None),
        (b'{"input": 3}', "input"),
        (b'{"input": [7]}', "input[0]"),
        (b'{"input": [{"role": "user"}]}', "input[0].content"),
        (b'{"input": [{"type": "function_call", "name": "f"}]}', "input[0].call_id"),
        (b'{"input": "x", "tools": [{"type": "function"}]}', "tools[0].name"),
        (b'{"input": "x", "background": true}', "background"),
        (b'{"input": "x", "previous_response_id": "resp_1", "conversation": "conv_1"}', "conversation"),
        (b'{"input": []}', "input"),
        (b'{"input": [{"type": "reasoning", "summary": []}]}', "input"),
    ],
)
def test_malformed_requests(daemon: DaemonProc, upstream: Upstream, body: bytes, param: str | None) -> None:
    openai_error(post(daemon, body), 400, param)
    assert upstream.requests == []


def test_unknown_items_and_tool_types_are_skipped(daemon: DaemonProc, upstream: Upstream) -> None:
    upstream.script(text("fine"))
    body = {
        "input": [
            {"type": "item_reference", "id": "msg_x"},
            {"type": "brand_new_item", "payload": {"x": 1}},
            {"role": "user", "content": "skip-1"},
        ],
        "tools": [{"type": "web_search"}, {"type": "image_generation"}, {"type": "future_tool"}, WEATHER],
    }
    r = post(daemon, body)
    assert r.status_code == 200, r.text
    (sent,) = sent_with(upstream, "skip-1")
    assert sent["messages"] == [{"role": "user", "content": "skip-1"}]
    assert "get_weather" in [t["function"]["name"] for t in sent["tools"]]
    assert "left out tool types" in (daemon.home / "logs" / "sorat.log").read_text()


def test_an_output_for_a_call_that_does_not_exist(daemon: DaemonProc, upstream: Upstream) -> None:
    body = {
        "input": [
            {"role": "user", "content": "x"},
            {"type": "function_call_output", "call_id": "ghost", "output": "1"},
        ]
    }
    err = openai_error(post(daemon, body), 400, "input")
    assert "ghost" in err["message"]
    assert upstream.requests == []


def test_unknown_previous_response_and_conversation(
    daemon: DaemonProc, client: openai.OpenAI, upstream: Upstream
) -> None:
    err = openai_error(
        post(daemon, {"input": "x", "previous_response_id": "resp_nope"}), 400, "previous_response_id"
    )
    assert "resp_nope" in err["message"]
    openai_error(post(daemon, {"input": "x", "conversation": "conv_nope"}), 400, "conversation")
    openai_error(post(daemon, {"input": "x", "conversation": "../etc"}), 400, "conversation")
    with pytest.raises(openai.BadRequestError):
        client.responses.create(model="x", input="x", previous_response_id="resp_gone")
    assert upstream.requests == []


def test_oversized_body(daemon: DaemonProc, upstream: Upstream) -> None:
    big = b'{"input": "' + b"x" * (16 * 1024 * 1024 + 10) + b'"}'
    openai_error(post(daemon, big), 413)
    assert upstream.requests == []


def test_other_methods(daemon: DaemonProc) -> None:
    with daemon.client() as c:
        r = c.get("/v1/responses")
    openai_error(r, 405)
    assert r.headers["allow"] == "POST"


# --- provider failures ---------------------------------------------------------------------------------


def test_a_provider_failing_before_the_first_event_is_an_http_error(
    daemon: DaemonProc, client: openai.OpenAI, upstream: Upstream
) -> None:
    upstream.script(error(400, "temperature too hot for this model"))
    err = openai_error(post(daemon, {"input": "fail-1", "stream": True}), 400)
    assert err["type"] == "invalid_request_error" and "temperature too hot" in err["message"]
    upstream.script(*[error(503, "overloaded")] * 5)
    with pytest.raises(openai.APIStatusError) as e:
        client.responses.create(model="x", input="fail-2", stream=True)
    assert e.value.status_code == 502


def test_a_provider_failing_after_the_first_event_is_response_failed(
    daemon: DaemonProc, client: openai.OpenAI, upstream: Upstream
) -> None:
    upstream.script(text("one two three four five six", chunks=6, drop_after=3))
    evs = frames(post(daemon, {"input": "fail-3", "stream": True}).content)
    check_stream(evs)
    failed = evs[-1]
    assert failed["type"] == "response.failed" and failed["response"]["status"] == "failed"
    assert failed["response"]["error"]["code"] == "server_error"
    assert failed["response"]["output"][0]["content"][0]["text"].startswith("one")
    upstream.script(
        stream_error("maximum context length is 8192 tokens", after=1, code="context_length_exceeded")
    )
    evs = frames(post(daemon, {"input": "fail-4", "stream": True}).content)
    assert evs[-1]["response"]["error"]["code"] == "context_length_exceeded"
    upstream.script(text("one two three", chunks=3, drop_after=2))
    with client.responses.stream(model="x", input="fail-5") as s:
        kinds = [e.type for e in s]
    assert kinds[-1] == "response.failed"
