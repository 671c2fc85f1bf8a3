"""POST /v1/messages and /v1/messages/count_tokens on the real daemon, over HTTP: answers, the stream,
sessions and Claude Code's headers, client tools, Anthropic-shaped errors on bad input, bad keys, the
guard, oversized bodies and failing providers."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from sorat_daemon.protocols.messages import tool_id_in
from tests.conftest import ALLOWED_ORIGIN, DaemonProc
from tests.messages_sse import assert_valid_stream, blocks, named_events
from tests.upstream import Upstream, error, stream_error, text, tool_calls

CC_SESSION = "X-Claude-Code-Session-Id"
BASH = {
    "name": "Bash",
    "description": "Run a shell command",
    "input_schema": {
        "$schema": "http://json-schema.org/draft-07/schema#",
        "type": "object",
        "properties": {"command": {"type": "string"}},
        "required": ["command"],
        "additionalProperties": False,
    },
}


def body(content: Any = "hi", **extra: Any) -> dict[str, Any]:
    return {
        "model": "claude-sonnet-4-5",
        "max_tokens": 1024,
        "messages": [{"role": "user", "content": content}],
        **extra,
    }


def post(
    daemon: DaemonProc,
    payload: Any,
    path: str = "/v1/messages?beta=true",
    auth: str = "x-api-key",
    **headers: str,
) -> httpx.Response:
    h = {"x-api-key": daemon.token} if auth == "x-api-key" else daemon.headers()
    h.update({"anthropic-version": "2023-06-01", **headers})
    raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return httpx.post(
        daemon.url + path, content=raw, headers={"Content-Type": "application/json", **h}, timeout=30
    )


def assert_anthropic_error(r: httpx.Response, status: int, kind: str) -> str:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json"
    got = r.json()
    assert set(got) == {"type", "error"} and got["type"] == "error", got
    assert got["error"]["type"] == kind and got["error"]["message"], got
    assert "Traceback" not in r.text
    return str(got["error"]["message"])


def requests_with(upstream: Upstream, marker: str) -> list[dict[str, Any]]:
    return [r for r in upstream.requests if marker in json.dumps(r["messages"])]


def sessions(daemon: DaemonProc) -> list[dict[str, Any]]:
    return httpx.get(daemon.url + "/v1/sessions", headers=daemon.headers()).json()["data"]  # type: ignore[no-any-return]


def session(daemon: DaemonProc, sid: str) -> dict[str, Any]:
    r = httpx.get(daemon.url + f"/v1/sessions/{sid}", headers=daemon.headers())
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


# -- answers -------------------------------------------------------------------------------------------------


def test_whole_answer(daemon: DaemonProc, upstream: Upstream) -> None:
    upstream.script(text("Hello from sorat", reasoning="thinking it over"))
    r = post(daemon, body("whole-marker"))
    assert r.status_code == 200, r.text
    got = r.json()
    assert got["type"] == "message" and got["role"] == "assistant" and got["model"] == "gpt-4o"
    assert got["content"] == [
        {"type": "thinking", "thinking": "thinking it over", "signature": ""},
        {"type": "text", "text": "Hello from sorat"},
    ]
    assert got["stop_reason"] == "end_turn" and got["usage"] == {"input_tokens": 10, "output_tokens": 5}
    assert r.headers["x-session-id"]
    (sent,) = requests_with(upstream, "whole-marker")
    assert sent["messages"] == [{"role": "user", "content": "whole-marker"}]
    assert sent["max_tokens"] == 1024 and sent["model"] == "gpt-4o"


def test_streamed_answer(daemon: DaemonProc, upstream: Upstream) -> None:
    upstream.script(text("Hello streaming world", chunks=4, chunk_delay=0.01))
    r = post(daemon, body("stream-marker", stream=True), auth="bearer")
    assert r.status_code == 200 and r.headers["content-type"] == "text/event-stream"
    evs = named_events(r.text)
    assert_valid_stream(evs)
    assert blocks(evs) == [{"type": "text", "text": "Hello streaming world"}]
    assert len([n for n, _ in evs if n == "content_block_delta"]) == 4  # relayed as it streams
    assert evs[-2][1]["usage"] == {"input_tokens": 10, "output_tokens": 5}


def test_internal_tool_rounds_show_as_thinking_and_usage_is_the_last_prompt(
    daemon: DaemonProc, upstream: Upstream
) -> None:
    upstream.script(
        tool_calls(
            [("get_current_time", {"timezone": "UTC"})], usage={"prompt_tokens": 100, "completion_tokens": 7}
        ),
        text("It is noon.", usage={"prompt_tokens": 150, "completion_tokens": 3}),
    )
    evs = named_events(post(daemon, body("time-marker", stream=True)).text)
    assert_valid_stream(evs)
    assert blocks(evs) == [
        {"type": "thinking", "thinking": 'get_current_time {"timezone":"UTC"}\n', "signature": ""},
        {"type": "text", "text": "It is noon."},
    ]
    assert evs[-2][1]["usage"] == {"input_tokens": 150, "output_tokens": 10}


def test_system_blocks_inline_system_and_parameters_reach_the_provider(
    daemon: DaemonProc, upstream: Upstream
) -> None:
    payload = {
        "model": "claude-opus-4-8",
        "max_tokens": 64000,
        "temperature": 0.3,
        "stop_sequences": ["STOP"],
        "thinking": {"type": "adaptive"},
        "system": [
            {"type": "text", "text": "x-anthropic-billing-header: cc_version=2.1.197; cc_entrypoint=cli;"},
            {"type": "text", "text": "You are helpful.", "cache_control": {"type": "ephemeral"}},
        ],
        "messages": [
            {
                "role": "user",
                "content": [{"type": "text", "text": "sys-marker", "cache_control": {"type": "ephemeral"}}],
            },
            {"role": "system", "content": "Agent types: none."},
        ],
    }
    assert post(daemon, payload).status_code == 200
    (sent,) = requests_with(upstream, "sys-marker")
    assert sent["messages"] == [
        {"role": "system", "content": "You are helpful.\n\nAgent types: none."},
        {"role": "user", "content": "sys-marker"},
    ]
    assert sent["max_tokens"] == 16384 and sent["temperature"] == 0.3 and sent["stop"] == ["STOP"]
    assert "thinking" not in sent


# -- client tools --------------------------------------------------------------------------------------------


def test_client_tool_round_trip_maps_ids_and_continues_the_session(
    daemon: DaemonProc, upstream: Upstream
) -> None:
    """A provider id Anthropic's clients refuse goes out as a toolu_ id and comes back as itself; the
    follow-up (the whole history, cache_control moved) continues the same session."""
    upstream.script(tool_calls([("functions.Bash:0", "Bash", {"command": "ls"})], content="Listing."))
    first = [
        {
            "role": "user",
            "content": [{"type": "text", "text": "tool-marker", "cache_control": {"type": "ephemeral"}}],
        }
    ]
    r = post(daemon, {"max_tokens": 100, "tools": [BASH], "messages": first, "stream": True})
    evs = named_events(r.text)
    assert_valid_stream(evs)
    text_block, use = blocks(evs)
    assert text_block == {"type": "text", "text": "Listing."}
    assert use["type"] == "tool_use" and use["name"] == "Bash" and use["input"] == {"command": "ls"}
    assert use["id"].startswith("toolu_") and tool_id_in(use["id"]) == "functions.Bash:0"
    assert evs[-2][1]["delta"]["stop_reason"] == "tool_use"
    sid = r.headers["x-session-id"]
    (sent,) = requests_with(upstream, "tool-marker")
    assert sent["tools"][-1] == {
        "type": "function",
        "function": {
            "name": "Bash",
            "description": "Run a shell command",
            "parameters": BASH["input_schema"],
        },
    }

    upstream.script(text("Two files."))
    history = [
        {"role": "user", "content": [{"type": "text", "text": "tool-marker"}]},
        {
            "role": "assistant",
            "content": [{"type": "thinking", "thinking": "x", "signature": "s"}, text_block, use],
        },
        {
            "role": "user",
            "content": [
                {
                    "type": "tool_result",
                    "tool_use_id": use["id"],
                    "content": "a.txt\nb.txt",
                    "cache_control": {"type": "ephemeral"},
                }
            ],
        },
    ]
    r2 = post(daemon, {"max_tokens": 100, "tools": [BASH], "messages": history})
    assert r2.json()["content"] == [{"type": "text", "text": "Two files."}]
    assert r2.headers["x-session-id"] == sid
    follow = [r for r in requests_with(upstream, "tool-marker") if r is not sent]
    assert follow[0]["messages"][-2:] == [
        {
            "role": "assistant",
            "content": "Listing.",
            "tool_calls": [
                {
                    "id": "functions.Bash:0",
                    "type": "function",
                    "function": {"name": "Bash", "arguments": '{"command":"ls"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "functions.Bash:0", "content": "a.txt\nb.txt"},
    ]
    stored = session(daemon, sid)["messages"]
    assert [m["role"] for m in stored] == ["user", "assistant", "tool", "assistant"]


def test_tool_choice_any_binds_the_first_call(daemon: DaemonProc, upstream: Upstream) -> None:
    post(daemon, body("choice-marker", tools=[BASH], tool_choice={"type": "any"}))
    (sent,) = requests_with(upstream, "choice-marker")
    assert sent["tool_choice"] == "required"


# -- sessions and Claude Code's headers ----------------------------------------------------------------------


def test_claude_code_session_header_names_the_session(daemon: DaemonProc, upstream: Upstream) -> None:
    cc = "6f1c8f38-2b7e-4b8e-9d0a-cc-session-1"
    r = post(daemon, body("cc-marker", tools=[BASH]), **{CC_SESSION: cc})
    assert r.headers["x-session-id"] == cc
    assert session(daemon, cc)["messages"][0]["content"] == "cc-marker"
    # X-Session-ID wins over it
    other = post(
        daemon, body("cc-other", tools=[BASH]), **{CC_SESSION: cc, "X-Session-ID": "chosen-by-client"}
    )
    assert other.headers["x-session-id"] == "chosen-by-client"
    # an invalid one is not a session id: the history matching decides
    bad = post(daemon, body("cc-invalid", tools=[BASH]), **{CC_SESSION: "not a valid id!"})
    assert bad.status_code == 200 and bad.headers["x-session-id"] not in (cc, "chosen-by-client")


def test_claude_code_side_call_is_one_plain_call_stored_nowhere(
    daemon: DaemonProc, upstream: Upstream
) -> None:
    """Claude Code's title request: its session header and no tools."""
    cc = "3a9d2c1e-side-call-session"
    before = {s["id"] for s in sessions(daemon)}
    upstream.script(text("Greeting the user"))
    payload = {
        "max_tokens": 512,
        "system": [{"type": "text", "text": "Generate a concise, sentence-case title for this session."}],
        "messages": [{"role": "user", "content": "<session>side-marker</session>"}],
        "stream": True,
    }
    r = post(daemon, payload, **{CC_SESSION: cc})
    assert_valid_stream(named_events(r.text))
    assert "x-session-id" not in r.headers
    (sent,) = requests_with(upstream, "side-marker")
    assert "tools" not in sent  # no internal tools either
    assert {s["id"] for s in sessions(daemon)} == before
    assert httpx.get(daemon.url + f"/v1/sessions/{cc}", headers=daemon.headers()).status_code == 404


def test_history_matching_ignores_moving_cache_control(daemon: DaemonProc, upstream: Upstream) -> None:
    mark = {"type": "ephemeral"}
    turn1 = [{"role": "user", "content": [{"type": "text", "text": "cache-marker", "cache_control": mark}]}]
    upstream.script(text("first answer"))
    sid = post(daemon, {"max_tokens": 50, "messages": turn1}).headers["x-session-id"]
    turn2 = [
        {"role": "user", "content": [{"type": "text", "text": "cache-marker"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "first answer", "cache_control": mark}]},
        {"role": "user", "content": [{"type": "text", "text": "second", "cache_control": mark}]},
    ]
    upstream.script(text("second answer"))
    r = post(daemon, {"max_tokens": 50, "messages": turn2})
    assert r.headers["x-session-id"] == sid
    stored = session(daemon, sid)
    assert stored["message_count"] == 4
    assert [m["content"] for m in stored["messages"]] == [
        "cache-marker",
        "first answer",
        "second",
        "second answer",
    ]


def test_claude_codes_changing_system_messages_neither_fork_nor_restore(
    daemon: DaemonProc, upstream: Upstream
) -> None:
    """Claude Code's inline system messages change from turn to turn: they are instructions, compared apart
    from the conversation, so the session keeps each message once and superseded none of them (the new
    system prompt is stored with its turn)."""
    cc = "5d0e7c1a-moving-system-prompt"
    system = [{"type": "text", "text": "You are a coding agent.", "cache_control": {"type": "ephemeral"}}]
    history: list[dict[str, Any]] = [
        {"role": "user", "content": [{"type": "text", "text": "sysmove-marker"}]}
    ]
    for turn in range(3):
        inline = {"role": "system", "content": f"Reminder for turn {turn}."}
        upstream.script(text(f"answer {turn}"))
        payload = {
            "max_tokens": 50,
            "system": system,
            "tools": [BASH],
            "messages": [*history[:1], inline, *history[1:]],
        }
        r = post(daemon, payload, **{CC_SESSION: cc})
        assert r.headers["x-session-id"] == cc
        history += [
            {"role": "assistant", "content": [{"type": "text", "text": f"answer {turn}"}]},
            {"role": "user", "content": f"next {turn}"},
        ]
    full = httpx.get(daemon.url + f"/v1/sessions/{cc}?include_superseded=1", headers=daemon.headers()).json()
    said = [(m["role"], m["content"]) for m in full["messages"] if m["role"] in ("user", "assistant")]
    assert said == [
        ("user", "sysmove-marker"),
        ("assistant", "answer 0"),
        ("user", "next 0"),
        ("assistant", "answer 1"),
        ("user", "next 1"),
        ("assistant", "answer 2"),
    ]
    assert not any(m.get("superseded") for m in full["messages"] if m["role"] != "system")
    last = requests_with(upstream, "sysmove-marker")[-1]["messages"]
    assert last[0] == {"role": "system", "content": "You are a coding agent.\n\nReminder for turn 2."}
    assert [m["role"] for m in last].count("system") == 1


def test_a_claude_code_subagent_gets_a_session_of_its_own(daemon: DaemonProc, upstream: Upstream) -> None:
    """Claude Code's subagents send their own conversations under the main one's session header, with a
    system prompt of their own: they go by the history matching, and the main session keeps its messages
    once, nothing superseded."""
    cc = "9b7e3f10-main-and-subagent"
    main_system = [{"type": "text", "text": "You are an interactive agent."}]
    sub_system = [{"type": "text", "text": "You are an agent for Claude Code."}]
    main = [{"role": "user", "content": "subagent-marker main task"}]
    tools = [BASH, {**BASH, "name": "Agent"}]
    upstream.script(tool_calls([("call_agent", "Agent", {"prompt": "look around"})]))
    r = post(
        daemon,
        {"max_tokens": 50, "system": main_system, "tools": tools, "messages": main},
        **{CC_SESSION: cc},
    )
    assert r.headers["x-session-id"] == cc
    use = (
        blocks(named_events(r.text))[-1]
        if r.headers["content-type"] == "text/event-stream"
        else r.json()["content"][-1]
    )

    sub: list[dict[str, Any]] = [{"role": "user", "content": "subagent-marker: look around"}]
    for answer in ("sub one", "sub two"):
        upstream.script(text(answer))
        r = post(
            daemon,
            {"max_tokens": 50, "system": sub_system, "tools": tools, "messages": sub},
            **{CC_SESSION: cc},
        )
        sub_session = r.headers["x-session-id"]
        assert sub_session != cc
        sub += [{"role": "assistant", "content": answer}, {"role": "user", "content": "more"}]
    assert len({s["id"] for s in sessions(daemon) if s["id"] == sub_session}) == 1

    upstream.script(text("main done"))
    main += [
        {"role": "assistant", "content": [use]},
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": use["id"], "content": "sub two"}],
        },
    ]
    r = post(
        daemon,
        {"max_tokens": 50, "system": main_system, "tools": tools, "messages": main},
        **{CC_SESSION: cc},
    )
    assert r.headers["x-session-id"] == cc
    full = httpx.get(daemon.url + f"/v1/sessions/{cc}?include_superseded=1", headers=daemon.headers()).json()
    assert not any(m.get("superseded") for m in full["messages"])
    assert [m["role"] for m in full["messages"]] == ["system", "user", "assistant", "tool", "assistant"]
    assert "look around" not in json.dumps([m for m in full["messages"] if m["role"] == "user"])
    sub_full = session(daemon, sub_session)
    assert [m["content"] for m in sub_full["messages"] if m["role"] == "assistant"] == ["sub one", "sub two"]


# -- count_tokens --------------------------------------------------------------------------------------------


def test_count_tokens_is_local(daemon: DaemonProc, upstream: Upstream) -> None:
    payload = {
        "model": "claude-x",
        "system": "s" * 4000,
        "messages": [{"role": "user", "content": "count-marker"}],
        "tools": [BASH],
    }
    r = post(daemon, payload, path="/v1/messages/count_tokens?beta=true")
    assert r.status_code == 200, r.text
    n = r.json()["input_tokens"]
    assert r.json() == {"input_tokens": n} and 1000 < n < 1200
    assert upstream.requests == []
    assert_anthropic_error(
        post(daemon, {"messages": 5}, path="/v1/messages/count_tokens"), 400, "invalid_request_error"
    )


# -- bad input -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "payload",
    [
        {"messages": [{"role": "user", "content": "hi"}]},  # no max_tokens
        body([{"type": "text"}]),
        body([{"type": "image", "source": "x"}]),
        body(["not a block"]),
        body(3),
        {"max_tokens": 5, "messages": [{"role": "tool", "content": "x"}]},
        {"max_tokens": 5, "messages": [{"role": "user", "content": "x"}], "tools": [{"name": "f"}]},
        {
            "max_tokens": 5,
            "messages": [
                {"role": "user", "content": "x"},
                {"role": "assistant", "content": [{"type": "tool_use", "id": "a", "name": "f", "input": {}}]},
                {
                    "role": "user",
                    "content": [{"type": "tool_result", "tool_use_id": "unknown-id", "content": "?"}],
                },
            ],
        },
        b"{not json",
        b"[]",
    ],
)
def test_bad_input_is_an_anthropic_400(daemon: DaemonProc, upstream: Upstream, payload: Any) -> None:
    assert_anthropic_error(post(daemon, payload), 400, "invalid_request_error")
    assert upstream.requests == []


def test_missing_max_tokens_says_so(daemon: DaemonProc) -> None:
    message = assert_anthropic_error(
        post(daemon, {"messages": [{"role": "user", "content": "x"}]}), 400, "invalid_request_error"
    )
    assert "max_tokens" in message


@pytest.mark.parametrize("path", ["/v1/messages", "/v1/messages/count_tokens"])
def test_wrong_and_missing_keys_in_both_headers(daemon: DaemonProc, upstream: Upstream, path: str) -> None:
    url = daemon.url + path
    payload = json.dumps(body("key-marker")).encode()
    wrong = daemon.token[:-2] + "xx"
    for headers in (
        {},
        {"x-api-key": wrong},
        {"x-api-key": ""},
        {"Authorization": f"Bearer {wrong}"},
        {"Authorization": daemon.token},  # no scheme
        {"Authorization": f"Bearer {wrong}", "x-api-key": daemon.token},  # a bearer header is the one read
    ):
        assert_anthropic_error(httpx.post(url, content=payload, headers=headers), 401, "authentication_error")
    for headers in ({"x-api-key": daemon.token}, {"Authorization": f"Bearer {daemon.token}"}):
        assert httpx.post(url, content=payload, headers=headers).status_code == 200
    assert len(requests_with(upstream, "key-marker")) == (2 if path == "/v1/messages" else 0)


def test_guard_errors_have_anthropics_shape(daemon: DaemonProc) -> None:
    key = {"x-api-key": daemon.token}
    r = httpx.post(daemon.url + "/v1/messages", json=body(), headers={**key, "Host": "evil.example"})
    assert_anthropic_error(r, 403, "permission_error")
    r = httpx.post(
        daemon.url + "/v1/messages", json=body(), headers={**key, "Origin": "https://evil.example"}
    )
    assert_anthropic_error(r, 403, "permission_error")
    r = httpx.get(daemon.url + "/v1/messages", headers=key)
    assert_anthropic_error(r, 405, "invalid_request_error")
    assert r.headers["allow"] == "POST"
    assert_anthropic_error(httpx.get(daemon.url + "/v1/messages/nope", headers=key), 404, "not_found_error")
    assert_anthropic_error(httpx.get(daemon.url + "/v1/messages/nope"), 401, "authentication_error")


def test_oversized_body_is_413_request_too_large(daemon: DaemonProc, upstream: Upstream) -> None:
    big = json.dumps(body("x" * (16 * 1024 * 1024 + 10))).encode()
    for path in ("/v1/messages", "/v1/messages/count_tokens"):
        assert_anthropic_error(post(daemon, big, path=path), 413, "request_too_large")
    assert upstream.requests == []


def test_cors_allows_anthropics_headers(daemon: DaemonProc) -> None:
    for path in ("/v1/messages", "/v1/messages/count_tokens"):
        pre = httpx.options(
            daemon.url + path,
            headers={
                "Origin": ALLOWED_ORIGIN,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "x-api-key, anthropic-version, anthropic-beta",
            },
        )
        assert pre.status_code == 204 and pre.headers["access-control-allow-origin"] == ALLOWED_ORIGIN
        allowed = pre.headers["access-control-allow-headers"].lower()
        for h in (
            "x-api-key",
            "anthropic-version",
            "anthropic-beta",
            "content-type",
            "authorization",
            "x-session-id",
        ):
            assert h in allowed
    r = post(daemon, body("cors-marker"), Origin=ALLOWED_ORIGIN)
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == ALLOWED_ORIGIN
    chat = httpx.options(
        daemon.url + "/v1/chat/completions",
        headers={"Origin": ALLOWED_ORIGIN, "Access-Control-Request-Method": "POST"},
    )
    assert "x-api-key" not in chat.headers["access-control-allow-headers"].lower()


# -- failing providers ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
def test_provider_failing_before_message_start_is_an_http_error(
    daemon: DaemonProc, upstream: Upstream, stream: bool
) -> None:
    upstream.script(*[error(503, "overloaded upstream")] * 5)
    r = post(daemon, body("fail-before", stream=stream))
    assert "overloaded upstream" in assert_anthropic_error(r, 502, "api_error")
    assert "x-should-retry" not in r.headers  # nothing ran: a retry is safe
    upstream.script(error(400, "temperature too hot"))
    assert "too hot" in assert_anthropic_error(
        post(daemon, body("fail-400", stream=stream)), 400, "invalid_request_error"
    )


def test_provider_failing_after_message_start_is_an_error_event(
    daemon: DaemonProc, upstream: Upstream
) -> None:
    upstream.script(stream_error("The server had an error", after=2, content="one two three", chunks=3))
    r = post(daemon, body("fail-after", stream=True))
    assert r.status_code == 200
    evs = named_events(r.text)
    assert_valid_stream(evs, failed=True)
    assert (
        evs[-1][1]["error"]["type"] == "api_error" and "server had an error" in evs[-1][1]["error"]["message"]
    )
    assert blocks(evs)[0]["text"].startswith("one")


def test_failure_after_a_tool_ran_says_do_not_retry(daemon: DaemonProc, upstream: Upstream) -> None:
    upstream.script(tool_calls([("get_current_time", {})]), *[error(503, "down after the tool")] * 5)
    r = post(daemon, body("retry-marker"))
    assert_anthropic_error(r, 502, "api_error")
    assert r.headers["x-should-retry"] == "false"
