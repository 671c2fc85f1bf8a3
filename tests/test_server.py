"""The real daemon in a subprocess, driven through the official openai SDK and raw HTTP, with a scripted
upstream on loopback standing in for the provider."""

from __future__ import annotations

import json
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import ALLOWED_ORIGIN, DaemonProc, sse, user_says
from tests.upstream import Upstream, error, html, stream_error, text, tool_calls

USER = [{"role": "user", "content": "hi"}]


def post(daemon: DaemonProc, body: Any, **headers: str) -> httpx.Response:
    with daemon.client() as c:
        return c.post("/v1/chat/completions", json=body, headers=headers)


def assert_openai_error(r: httpx.Response, status: int, kind: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["type"] == kind and err["message"]
    assert "Traceback" not in r.text
    return err  # type: ignore[no-any-return]


# -- answers ------------------------------------------------------------------------------------------


def test_whole_answer_through_the_sdk(daemon: DaemonProc, upstream: Upstream, prompt: str) -> None:
    upstream.script(text("Hello there"))
    r = daemon.openai().chat.completions.with_raw_response.create(
        model="sorat-agent", messages=user_says(prompt)
    )  # type: ignore[call-overload]
    completion = r.parse()
    assert completion.object == "chat.completion" and completion.id.startswith("chatcmpl-")
    assert completion.choices[0].message.role == "assistant"
    assert completion.choices[0].message.content == "Hello there"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.model == "gpt-4o"
    assert completion.usage is not None and completion.usage.total_tokens == 15
    assert r.headers["x-session-id"]
    assert upstream.requests_for(prompt)[0]["model"] == "gpt-4o"
    assert upstream.headers_for(prompt)[0]["authorization"] == "Bearer sk-upstream-secret"


def test_streamed_answer_through_the_sdk(daemon: DaemonProc, upstream: Upstream, prompt: str) -> None:
    upstream.script(text("Hello streaming world", chunks=4))
    chunks = list(
        daemon.openai().chat.completions.create(
            model="sorat-agent",
            messages=user_says(prompt),
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    assert len({c.id for c in chunks}) == 1 and all(c.object == "chat.completion.chunk" for c in chunks)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hello streaming world"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None and chunks[-1].usage.total_tokens == 15
    assert upstream.requests_for(prompt)[0]["stream"] is True


def test_stream_helper_accepts_a_tool_round(daemon: DaemonProc, upstream: Upstream, prompt: str) -> None:
    upstream.script(tool_calls([("get_current_time", {"timezone": "UTC"})]), text("It is noon."))
    with daemon.openai().chat.completions.stream(model="sorat-agent", messages=user_says(prompt)) as stream:
        for _ in stream:
            pass
        final = stream.get_final_completion()
    assert final.choices[0].message.content == "It is noon."
    assert final.choices[0].finish_reason == "stop"
    second = upstream.requests_for(prompt)[1]["messages"]
    assert second[-1]["role"] == "tool" and "UTC" in second[-1]["content"]
    assert second[-2]["tool_calls"][0]["function"]["name"] == "get_current_time"


@pytest.mark.parametrize("mode", ["tool_calls", "reasoning", "none"])
def test_tool_events_modes(daemon: DaemonProc, upstream: Upstream, mode: str) -> None:
    upstream.script(
        tool_calls([("get_current_time", {}), ("get_current_time", {"timezone": "Asia/Tokyo"})]),
        tool_calls([("get_current_time", {"timezone": "UTC"})]),
        text("done"),
    )
    r = post(daemon, {"messages": USER, "stream": True}, **{"X-Sorat-Tool-Events": mode})
    events = sse(r.text)
    assert events[-1] == "[DONE]"
    deltas = [e["choices"][0]["delta"] for e in events[:-1] if e["choices"]]
    calls = [tc for d in deltas for tc in d.get("tool_calls", [])]
    reasoning = "".join(d.get("reasoning_content") or "" for d in deltas)
    if mode == "tool_calls":
        assert [c["index"] for c in calls] == [0, 1, 2]
        assert all(
            c["id"] and c["type"] == "function" and c["function"]["name"] == "get_current_time" for c in calls
        )
        assert json.loads(calls[1]["function"]["arguments"]) == {"timezone": "Asia/Tokyo"}
    else:
        assert calls == []
    if mode == "reasoning":
        assert reasoning.count("get_current_time {") == 3
    if mode == "none":
        assert reasoning == ""
    assert events[-2]["choices"][0]["finish_reason"] == "stop"


def test_bad_tool_events_header(daemon: DaemonProc) -> None:
    r = post(daemon, {"messages": USER}, **{"X-Sorat-Tool-Events": "all"})
    assert_openai_error(r, 400, "invalid_request_error")


def test_client_declared_tools_are_returned_and_continued(
    daemon: DaemonProc, upstream: Upstream, prompt: str
) -> None:
    weather = {
        "type": "function",
        "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {}}},
    }
    reply = tool_calls([("get_current_time", {}), ("get_weather", {"city": "Oslo"})])
    upstream.script(reply)
    client = daemon.openai()
    r = client.chat.completions.with_raw_response.create(
        model="x", messages=user_says(prompt), tools=[weather]
    )  # type: ignore[call-overload]
    first = r.parse()
    sid = r.headers["x-session-id"]
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert [c.function.name for c in choice.message.tool_calls] == ["get_weather"]
    call = choice.message.tool_calls[0]
    upstream.script(text("Sunny in Oslo."))
    follow = [
        *user_says(prompt),
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
        {"role": "tool", "tool_call_id": call.id, "content": '{"sky": "sunny"}'},
    ]
    second = client.chat.completions.create(
        model="x", messages=follow, tools=[weather], extra_headers={"X-Session-ID": sid}
    )
    assert second.choices[0].message.content == "Sunny in Oslo."
    sent = upstream.requests_for(prompt)[-1]["messages"]
    roles = [m["role"] for m in sent]
    assert roles == ["user", "assistant", "tool", "tool"]  # both calls answered once: internal + the client's
    assert sent[-1]["content"] == '{"sky": "sunny"}'


def test_streamed_client_tool_call_and_internal_calls_as_reasoning(
    daemon: DaemonProc, upstream: Upstream
) -> None:
    weather = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}
    upstream.script(tool_calls([("get_current_time", {})]), tool_calls([("get_weather", {"city": "Oslo"})]))
    with daemon.openai().chat.completions.stream(model="x", messages=USER, tools=[weather]) as stream:
        events = list(stream)
        final = stream.get_final_completion()
    assert final.choices[0].finish_reason == "tool_calls"
    assert [c.function.name for c in final.choices[0].message.tool_calls or []] == ["get_weather"]
    raw_reasoning = "".join(
        getattr(e.chunk.choices[0].delta, "reasoning_content", None) or ""
        for e in events
        if e.type == "chunk" and e.chunk.choices
    )
    assert "get_current_time" in raw_reasoning


def test_reasoning_is_relayed_apart_from_content(daemon: DaemonProc, upstream: Upstream) -> None:
    upstream.script(text("Answer.", reasoning="Let me think.", reasoning_as="reasoning"))
    r = post(daemon, {"messages": USER, "stream": True})
    deltas = [e["choices"][0]["delta"] for e in sse(r.text)[:-1] if e["choices"]]
    assert "".join(d.get("reasoning_content") or "" for d in deltas) == "Let me think."
    assert "".join(d.get("content") or "" for d in deltas) == "Answer."
    upstream.script(text("Answer.", reasoning="Hmm.", reasoning_as="reasoning"))
    whole = post(daemon, {"messages": USER}).json()
    assert whole["choices"][0]["message"]["reasoning_content"] == "Hmm."
    assert whole["choices"][0]["message"]["content"] == "Answer."


@pytest.mark.parametrize(
    "quirks",
    [
        {"crlf", "nospace", "comments", "no_done"},
        {"azure", "extras", "content_with_finish"},
        {"groq_usage", "role_every_chunk"},
        {"usage_every_chunk", "multiline"},
        {"usage_after_stop", "cr"},
    ],
)
def test_quirky_upstreams_become_the_standard_stream(
    daemon: DaemonProc, upstream: Upstream, quirks: set[str]
) -> None:
    upstream.script(text("Quirky but fine", chunks=3, quirks=quirks))
    chunks = list(
        daemon.openai().chat.completions.create(
            model="x", messages=USER, stream=True, stream_options={"include_usage": True}
        )
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Quirky but fine"
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens == 15


@pytest.mark.parametrize(
    "quirks", [{"whole_tool_calls"}, {"no_index"}, {"index_from_1", "empty_name"}, {"thought_signature"}]
)
def test_quirky_tool_calls_run(daemon: DaemonProc, upstream: Upstream, prompt: str, quirks: set[str]) -> None:
    upstream.script(
        tool_calls(
            [("get_current_time", {"timezone": "UTC"}), ("get_current_time", {})],
            quirks=quirks,
            finish_reason="stop",
        ),
        text("ok"),
    )
    r = post(daemon, {"messages": user_says(prompt), "stream": True})
    assert sse(r.text)[-1] == "[DONE]"
    second = upstream.requests_for(prompt)[1]["messages"]
    results = [m for m in second if m["role"] == "tool"]
    assert len(results) == 2 and all("error" not in json.loads(m["content"]) for m in results)
    if "thought_signature" in quirks:
        sent = second[-3]["tool_calls"][0]
        assert sent["extra_content"]["google"]["thought_signature"]


# -- model routing and parameters -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("asked", "ran"),
    [("sorat-agent", "gpt-4o"), ("default", "gpt-4o"), ("nope", "gpt-4o"), ("gpt-4o-mini", "gpt-4o-mini")],
)
def test_model_routing(daemon: DaemonProc, upstream: Upstream, prompt: str, asked: str, ran: str) -> None:
    body = post(daemon, {"model": asked, "messages": user_says(prompt)}).json()
    assert body["model"] == ran and upstream.requests_for(prompt)[-1]["model"] == ran


def test_models_list(daemon: DaemonProc) -> None:
    models = daemon.openai().models.list()
    ids = [m.id for m in models.data]
    assert ids[:2] == ["gpt-4o", "sorat-agent"] and "gpt-4o-mini" in ids
    assert models.data[0].owned_by == "scripted"


def test_parameters_pass_through(daemon: DaemonProc, upstream: Upstream, prompt: str) -> None:
    post(
        daemon,
        {
            "messages": user_says(prompt),
            "temperature": 0.3,
            "top_p": 0.9,
            "max_tokens": 77,
            "stop": ["\n\n"],
            "seed": 7,
            "response_format": {"type": "text"},
            "user": "u1",
            "some_unknown_field": {"x": 1},
        },
    )
    sent = upstream.requests_for(prompt)[-1]
    assert (
        sent["temperature"],
        sent["top_p"],
        sent["max_tokens"],
        sent["stop"],
        sent["seed"],
        sent["user"],
    ) == (
        0.3,
        0.9,
        77,
        ["\n\n"],
        7,
        "u1",
    )
    assert "some_unknown_field" not in sent


# -- the guard ------------------------------------------------------------------------------------------


def test_health_needs_no_token(daemon: DaemonProc) -> None:
    r = httpx.get(daemon.url + "/health")
    assert r.status_code == 200 and r.json()["status"] == "ok" and r.json()["version"]


@pytest.mark.parametrize("auth", [None, "Bearer wrong-token-wrong-token-wrong-token", "Basic abc", "Bearer"])
def test_bad_token(daemon: DaemonProc, auth: str | None) -> None:
    headers = {"Authorization": auth} if auth else {}
    r = httpx.get(daemon.url + "/v1/models", headers=headers)
    err = assert_openai_error(r, 401, "authentication_error")
    assert err["code"] == "invalid_api_key"


def test_wrong_token_through_the_sdk(daemon: DaemonProc) -> None:
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=daemon.base_url, api_key="x" * 43, max_retries=0).models.list()


@pytest.mark.parametrize(
    "host", ["evil.com", "localhost.evil.com", "127.0.0.1.nip.io", ":8080", "", "sorat.local.evil"]
)
def test_foreign_host_refused(daemon: DaemonProc, host: str) -> None:
    r = httpx.get(daemon.url + "/v1/models", headers={**daemon.headers(), "Host": host})
    assert_openai_error(r, 403, "permission_error")


@pytest.mark.parametrize(
    "host", ["localhost", "localhost:8080", "127.0.0.1:1", "[::1]:8080", "sorat.local", "LOCALHOST"]
)
def test_local_hosts_accepted(daemon: DaemonProc, host: str) -> None:
    r = httpx.get(daemon.url + "/v1/models", headers={**daemon.headers(), "Host": host})
    assert r.status_code == 200


@pytest.mark.parametrize("origin", ["https://evil.example", "null", "http://allowed.example.evil"])
def test_foreign_origin_refused(daemon: DaemonProc, origin: str) -> None:
    r = httpx.get(daemon.url + "/v1/models", headers={**daemon.headers(), "Origin": origin})
    assert_openai_error(r, 403, "permission_error")
    assert "access-control-allow-origin" not in r.headers


def test_text_plain_form_post_from_a_page_refused(
    daemon: DaemonProc, upstream: Upstream, prompt: str
) -> None:
    body = json.dumps({"messages": user_says(prompt)})
    r = httpx.post(
        daemon.url + "/v1/chat/completions",
        content=body,
        headers={"Content-Type": "text/plain", "Origin": "https://evil.example"},
    )
    assert_openai_error(r, 403, "permission_error")
    assert upstream.requests_for(prompt) == []


def test_allowed_origin_gets_cors_and_preflight(daemon: DaemonProc) -> None:
    pre = httpx.options(
        daemon.url + "/v1/chat/completions",
        headers={
            "Origin": ALLOWED_ORIGIN,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type, x-session-id",
        },
    )
    assert pre.status_code == 204
    assert pre.headers["access-control-allow-origin"] == ALLOWED_ORIGIN
    allowed = pre.headers["access-control-allow-headers"].lower()
    for h in ("authorization", "content-type", "x-session-id", "x-sorat-tool-events"):
        assert h in allowed
    r = httpx.post(
        daemon.url + "/v1/chat/completions",
        json={"messages": USER},
        headers={**daemon.headers(), "Origin": ALLOWED_ORIGIN},
    )
    assert r.status_code == 200
    assert r.headers["access-control-allow-origin"] == ALLOWED_ORIGIN
    assert "x-session-id" in r.headers["access-control-expose-headers"].lower()


def test_duplicate_authorization_refused(daemon: DaemonProc) -> None:
    headers = [("Authorization", f"Bearer {daemon.token}"), ("Authorization", f"Bearer {daemon.token}")]
    r = httpx.get(daemon.url + "/v1/models", headers=headers)
    assert_openai_error(r, 401, "authentication_error")


def test_oversized_body(daemon: DaemonProc, upstream: Upstream, prompt: str) -> None:
    big = b'{"messages": [{"role": "user", "content": "' + prompt.encode() + b"x" * (16 * 1024 * 1024 + 10)
    big += b'"}]}'
    with daemon.client() as c:
        r = c.post("/v1/chat/completions", content=big, headers={"Content-Type": "application/json"})
    assert_openai_error(r, 413, "invalid_request_error")
    assert upstream.requests_for(prompt) == []


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (b"{not json", None),
        (b"[]", None),
        (b"{}", "messages"),
        (b'{"messages": "hi"}', "messages"),
        (b'{"messages": []}', "messages"),
        (b'{"messages": [{"role": "wizard", "content": "x"}]}', "messages"),
        (b'{"messages": [{"role": "user", "content": 5}]}', "messages"),
        (b'{"messages": [{"role": "user", "content": "x"}], "stream": "yes"}', "stream"),
        (b'{"messages": [{"role": "user", "content": "x"}], "model": 5}', "model"),
        (b'{"messages": [{"role": "user", "content": "x"}], "tools": "x"}', "tools"),
    ],
)
def test_malformed_requests(daemon: DaemonProc, upstream: Upstream, body: bytes, param: str | None) -> None:
    with daemon.client() as c:
        r = c.post("/v1/chat/completions", content=body, headers={"Content-Type": "application/json"})
    err = assert_openai_error(r, 400, "invalid_request_error")
    if param:
        assert (err["param"] or "").startswith(param)
    # Most of these bodies have no user text to mark, so all requests: only titles come late, and they
    # are kept apart (title_requests).
    assert upstream.requests == []


def test_unknown_route_and_method_are_openai_errors(daemon: DaemonProc) -> None:
    with daemon.client() as c:
        assert_openai_error(c.get("/v1/nope"), 404, "not_found_error")
        assert_openai_error(c.put("/v1/chat/completions", json={}), 405, "invalid_request_error")
        assert_openai_error(c.get("/v1/sessions/does-not-exist"), 404, "not_found_error")


# -- upstream faults -----------------------------------------------------------------------------------


def test_upstream_500_is_retried(daemon: DaemonProc, upstream: Upstream, prompt: str) -> None:
    upstream.script(error(500, "hiccup"), text("recovered"))
    body = post(daemon, {"messages": user_says(prompt)}).json()
    assert body["choices"][0]["message"]["content"] == "recovered"
    assert len(upstream.requests_for(prompt)) == 2


def test_upstream_429_retry_after_is_honoured(daemon: DaemonProc, upstream: Upstream) -> None:
    import time

    upstream.script(error(429, "slow down", headers={"Retry-After": "1"}), text("after the wait"))
    t0 = time.monotonic()
    r = post(daemon, {"messages": USER, "stream": True})
    assert time.monotonic() - t0 >= 0.9
    assert "after the wait" in r.text


def test_upstream_400_carries_its_message(daemon: DaemonProc, upstream: Upstream) -> None:
    upstream.script(error(400, "temperature too hot for this model"))
    err = assert_openai_error(post(daemon, {"messages": USER}), 400, "invalid_request_error")
    assert "temperature too hot" in err["message"]


def test_upstream_persistent_500_is_502(daemon: DaemonProc, upstream: Upstream) -> None:
    upstream.script(*[error(503, "overloaded")] * 5)
    err = assert_openai_error(post(daemon, {"messages": USER, "stream": True}), 502, "api_error")
    assert "overloaded" in err["message"]


def test_upstream_html_200_is_502(daemon: DaemonProc, upstream: Upstream) -> None:
    upstream.script(html())
    assert_openai_error(post(daemon, {"messages": USER}), 502, "api_error")


def test_stream_dying_halfway_ends_with_an_error_event(daemon: DaemonProc, upstream: Upstream) -> None:
    upstream.script(text("one two three four five six", chunks=6, drop_after=3))
    events = sse(post(daemon, {"messages": USER, "stream": True}).text)
    assert events[-1] == "[DONE]"
    assert "error" in events[-2] and events[-2]["error"]["type"] == "api_error"
    said = "".join(e["choices"][0]["delta"].get("content") or "" for e in events[:-2] if e.get("choices"))
    assert said.startswith("one")


def test_error_inside_a_200_stream(daemon: DaemonProc, upstream: Upstream) -> None:
    upstream.script(stream_error("The server had an error", after=2, style="openrouter"))
    events = sse(post(daemon, {"messages": USER, "stream": True}).text)
    assert (
        events[-2]["error"]["message"].endswith("The server had an error")
        or "The server had an error" in events[-2]["error"]["message"]
    )
    assert events[-1] == "[DONE]"


def test_error_before_the_first_token_is_a_real_status(daemon: DaemonProc, upstream: Upstream) -> None:
    upstream.script(error(401, "bad key upstream"))
    err = assert_openai_error(post(daemon, {"messages": USER, "stream": True}), 502, "api_error")
    assert "sk-upstream-secret" not in err["message"]


def test_client_disconnect_cancels_the_upstream(daemon: DaemonProc, upstream: Upstream) -> None:
    upstream.script(text("a b c d e f g h i j", chunks=10, chunk_delay=0.3))
    with (
        daemon.client() as c,
        c.stream("POST", "/v1/chat/completions", json={"messages": USER, "stream": True}) as r,
    ):
        for line in r.iter_lines():
            if '"content":"a' in line.replace(" ", ""):
                break
    assert upstream.wait_for(lambda: upstream.disconnects >= 1, timeout=5)


def test_log_has_request_lines_without_secrets(daemon: DaemonProc, upstream: Upstream) -> None:
    post(daemon, {"messages": USER})
    log = (daemon.home / "logs" / "sorat.log").read_text()
    assert "POST /v1/chat/completions 200" in log
    assert daemon.token not in log and "sk-upstream-secret" not in log
