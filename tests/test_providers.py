from __future__ import annotations

import asyncio
import contextlib
import email.utils
import logging
import socket
import ssl
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from multidict import CIMultiDict

from sorat_daemon import errors, wire
from sorat_daemon.config import AgentSettings, ProviderSettings, Settings
from sorat_daemon.providers import Http, Provider, ProviderPool, _retry_after, _tls
from sorat_daemon.types import Delta, ModelCall
from tests.upstream import Reply, Upstream, error, html, raw, stream_error, text, tool_calls

KEY = "sk-test-provider-key-0123456789"
USER = {"role": "user", "content": "hi"}
CALL = ModelCall("gpt-4o", [USER], params={"temperature": 0.1})
USAGE = {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}


@pytest.fixture(scope="module")
def _server() -> Iterator[Upstream]:
    with Upstream() as server:
        yield server


@pytest.fixture(scope="module")
def _server2() -> Iterator[Upstream]:
    with Upstream(models=["llama3", "qwen3"]) as server:
        yield server


@pytest.fixture
def up(_server: Upstream) -> Upstream:
    _server.reset()
    return _server


@pytest.fixture
def up2(_server2: Upstream) -> Upstream:
    _server2.reset()
    _server2.models = ["llama3", "qwen3"]
    return _server2


@pytest.fixture
async def client() -> AsyncIterator[Http]:
    http = Http()
    yield http
    await http.aclose()


def provider(url: str, client: Http, key: str | None = KEY, **kw: Any) -> Provider:
    kw.setdefault("backoff_base", 0.01)
    kw.setdefault("backoff_cap", 0.02)
    return Provider(ProviderSettings("scripted", url, api_key=key), client, **kw)


async def collect(p: Provider, call: ModelCall = CALL) -> list[Delta]:
    return [d async for d in p.stream(call)]


async def collect_until_error(p: Provider, call: ModelCall = CALL) -> tuple[list[Delta], BaseException]:
    out: list[Delta] = []
    try:
        async for d in p.stream(call):
            out.append(d)
    except Exception as e:
        return out, e
    raise AssertionError(f"no error after {out}")


def summary(deltas: list[Delta]) -> tuple[str, str, list[dict[str, Any]], str | None, dict[str, Any] | None]:
    acc = wire.ToolCallAccumulator()
    for d in deltas:
        if d.tool_calls:
            acc.add(d.tool_calls)
    assert all(d.finish_reason is None and d.usage is None for d in deltas[:-1])
    last = deltas[-1]
    return (
        "".join(d.content or "" for d in deltas),
        "".join(d.reasoning or "" for d in deltas),
        acc.calls(),
        last.finish_reason,
        last.usage,
    )


def closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


@contextlib.contextmanager
def slammer() -> Iterator[tuple[str, list[int]]]:
    """A TCP server that accepts connections and closes them at once, counting them."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    accepted: list[int] = []

    def serve() -> None:
        while True:
            try:
                conn, _ = sock.accept()
            except OSError:
                return
            accepted.append(1)
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}/v1", accepted
    finally:
        sock.shutdown(socket.SHUT_RDWR)
        sock.close()
        thread.join(5)


@contextlib.contextmanager
def unanswered() -> Iterator[str]:
    """A listening socket with a full backlog: Linux drops further SYNs, so connecting hangs."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(0)
    port = sock.getsockname()[1]
    fillers = [socket.socket() for _ in range(2)]
    for f in fillers:
        f.setblocking(False)
        f.connect_ex(("127.0.0.1", port))
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        for f in fillers:
            f.close()
        sock.close()


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No proxy settings from the outside."""
    for name in ("http_proxy", "https_proxy", "all_proxy", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
    return monkeypatch


@contextlib.contextmanager
def silent_server() -> Iterator[str]:
    """Accepts TCP connections (the kernel's backlog) but never answers."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}/v1"
    finally:
        sock.close()


# --- streams: the text path and every quirk --------------------------------------------------------


async def test_stream_relays_text_and_sends_the_request(up: Upstream, client: Http) -> None:
    up.api_key = KEY
    up.script(text("Hello world", chunks=3))
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    call = ModelCall("gpt-4o-mini", [USER], tools, "auto", {"temperature": 0.1, "max_tokens": 9})
    deltas = await collect(provider(up.base_url, client), call)
    # what arrives in one read is merged; the text and its order are what the upstream sent
    assert "".join(d.content or "" for d in deltas[:-1]) == "Hello world"
    assert deltas[-1] == Delta(finish_reason="stop", usage=USAGE)
    assert up.requests == [
        {
            "temperature": 0.1,
            "max_tokens": 9,
            "model": "gpt-4o-mini",
            "messages": [USER],
            "tools": tools,
            "tool_choice": "auto",
            "stream": True,
            "stream_options": {"include_usage": True},
        }
    ]
    assert up.headers[0]["authorization"] == f"Bearer {KEY}"


async def test_tool_choice_and_parallel_calls_dropped_without_tools(up: Upstream, client: Http) -> None:
    call = ModelCall("m", [USER], None, "none", {"parallel_tool_calls": True, "n": 3})
    await provider(up.base_url, client, key=None).complete(call)
    assert up.requests == [{"model": "m", "messages": [USER]}]
    assert "authorization" not in up.headers[0]


async def test_stream_relays_before_the_answer_is_whole(up: Upstream, client: Http) -> None:
    up.script(text("Hello world", chunks=4, stall_after=3))  # role + 2 pieces, then silence
    stream = provider(up.base_url, client).stream(CALL)
    said = ""
    while said != "Hello":  # the pieces sent before the silence, however the reads cut them
        said += (await anext(stream)).content or ""
    await stream.aclose()
    assert await up.until(lambda: up.disconnects == 1)


TEXT_QUIRKS: list[tuple[set[str], str | None, str, dict[str, int] | None]] = [
    (set(), None, "stop", USAGE),
    ({"crlf"}, None, "stop", USAGE),
    ({"cr"}, None, "stop", USAGE),
    ({"nospace"}, None, "stop", USAGE),
    ({"comments"}, None, "stop", USAGE),
    ({"multiline"}, None, "stop", USAGE),
    ({"no_done"}, None, "stop", USAGE),
    ({"no_finish", "no_done"}, None, "stop", USAGE),
    ({"azure"}, None, "stop", USAGE),
    ({"extras"}, None, "stop", USAGE),
    ({"role_every_chunk"}, None, "stop", USAGE),
    ({"content_with_finish"}, None, "stop", USAGE),
    ({"groq_usage"}, None, "stop", USAGE),
    ({"usage_on_finish"}, None, "stop", USAGE),
    ({"usage_every_chunk"}, None, "stop", USAGE),
    ({"usage_after_stop"}, None, "stop", USAGE),
    ({"crlf", "nospace", "comments", "azure", "extras", "multiline", "no_done"}, None, "stop", USAGE),
    (set(), "eos", "stop", USAGE),
    (set(), "eos_token", "stop", USAGE),
    (set(), "end", "stop", USAGE),
    (set(), "end_turn", "stop", USAGE),
    (set(), "length", "length", USAGE),
    (set(), "content_filter", "content_filter", USAGE),
    (set(), "weird_new_reason", "stop", USAGE),
]


@pytest.mark.parametrize(("quirks", "finish", "expected", "usage"), TEXT_QUIRKS, ids=lambda v: repr(v))
async def test_text_quirks(
    up: Upstream,
    client: Http,
    quirks: set[str],
    finish: str | None,
    expected: str,
    usage: dict[str, int] | None,
) -> None:
    up.script(text("Hello world", chunks=4, quirks=quirks, finish_reason=finish))
    content, reasoning, calls, got_finish, got_usage = summary(await collect(provider(up.base_url, client)))
    assert (content, reasoning, calls, got_finish, got_usage) == ("Hello world", "", [], expected, usage)


@pytest.mark.parametrize(
    "how", ["reasoning_content", "reasoning", "reasoning_details", "openrouter", "thought"]
)
async def test_reasoning_fields(up: Upstream, client: Http, how: str) -> None:
    p = provider(up.base_url, client)
    up.script(text("Answer.", chunks=2, reasoning="Let me think.", reasoning_as=how))
    content, reasoning, _, finish, _ = summary(await collect(p))
    assert (content, reasoning, finish) == ("Answer.", "Let me think.", "stop")
    if how != "thought":  # Gemini marks thoughts only in streams
        up.script(text("Answer.", reasoning="Let me think.", reasoning_as=how))
        result = await p.complete(CALL)
        assert result.message == {
            "role": "assistant",
            "content": "Answer.",
            "reasoning_content": "Let me think.",
        }


TOOL_QUIRKS: list[tuple[set[str], str | None]] = [
    (set(), None),
    ({"whole_tool_calls"}, None),
    ({"no_index"}, None),
    ({"no_index", "whole_tool_calls"}, None),
    ({"index_from_1"}, None),
    ({"empty_name"}, None),
    ({"empty_name", "no_index"}, None),
    ({"thought_signature", "no_index", "whole_tool_calls"}, "stop"),  # Gemini
    ({"crlf", "comments", "extras", "azure"}, None),
    ({"usage_every_chunk", "role_every_chunk"}, None),
    (set(), "stop"),
    (set(), "tool_use"),
    (set(), "tool_call"),
    (set(), "function_call"),
    (set(), "end_turn"),
]


@pytest.mark.parametrize(("quirks", "finish"), TOOL_QUIRKS, ids=lambda v: repr(v))
async def test_tool_call_quirks(up: Upstream, client: Http, quirks: set[str], finish: str | None) -> None:
    reply = tool_calls(
        [("run_command", {"command": "ls", "args": ["-l"]}), ("read_file", {"path": "a b.txt"})],
        content="Let me look.",
        chunks=3,
        quirks=quirks,
        finish_reason=finish,
    )
    up.script(reply)
    content, _, calls, got_finish, usage = summary(await collect(provider(up.base_url, client)))
    assert content == "Let me look."
    assert got_finish == "tool_calls" and usage == USAGE
    expected = [
        {"id": cid, "type": "function", "function": {"name": name, "arguments": args}}
        for cid, name, args in reply.calls
    ]
    if "thought_signature" in quirks:
        for i, call in enumerate(expected):
            call["extra_content"] = {"google": {"thought_signature": f"sig-{i}"}}
    assert calls == expected


async def test_complete_text_and_tool_calls(up: Upstream, client: Http) -> None:
    p = provider(up.base_url, client)
    reply = tool_calls([("run_command", {"command": "ls"})], finish_reason="stop")
    up.script(text("Hello world", chunks=3, usage={"prompt_tokens": 3, "completion_tokens": 2}), reply)
    result = await p.complete(CALL)
    assert result.message == {"role": "assistant", "content": "Hello world"}
    assert (result.finish_reason, result.usage) == (
        "stop",
        {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
    )
    assert "stream" not in up.requests[0] and "stream_options" not in up.requests[0]
    result = await p.complete(CALL)
    (cid, name, args) = reply.calls[0]
    assert result.message["tool_calls"] == [
        {"id": cid, "type": "function", "function": {"name": name, "arguments": args}}
    ]
    assert result.finish_reason == "tool_calls"


async def test_provider_ignoring_stream_true(up: Upstream, client: Http) -> None:
    whole = {
        "choices": [{"message": {"content": "whole", "reasoning": "r"}, "finish_reason": "stop"}],
        "usage": USAGE,
    }
    up.script(raw(orjson.dumps(whole), content_type="application/json"))
    assert summary(await collect(provider(up.base_url, client))) == ("whole", "r", [], "stop", USAGE)


async def test_empty_answer_with_finish_is_fine(up: Upstream, client: Http) -> None:
    up.script(text(""))
    assert summary(await collect(provider(up.base_url, client))) == ("", "", [], "stop", USAGE)


# --- errors -----------------------------------------------------------------------------------------

CONTEXT_MSG = (
    "This model's maximum context length is 128000 tokens. However, your messages resulted in 130000 tokens."
)
ERRORS: list[tuple[Reply, type[errors.SoratError], int, str]] = [
    (
        error(400, "Invalid value for 'temperature'", code="invalid_value"),
        errors.ProviderRejected,
        400,
        "Invalid value for 'temperature'",
    ),
    (
        error(400, CONTEXT_MSG, code="context_length_exceeded"),
        errors.ContextWindowExceeded,
        400,
        "maximum context",
    ),
    (
        error(400, "request exceeds the available context size", type="exceed_context_size_error"),
        errors.ContextWindowExceeded,
        400,
        "context size",
    ),
    (
        error(400, "prompt is too long: 210000 tokens > 200000 maximum"),
        errors.ContextWindowExceeded,
        400,
        "too long",
    ),
    (
        error(404, "The model `nope` does not exist", code="model_not_found"),
        errors.ProviderRejected,
        400,
        "does not exist",
    ),
    (error(422, "Field required: messages"), errors.ProviderRejected, 400, "Field required"),
    (error(401, f"Incorrect API key provided: {KEY}"), errors.ProviderError, 502, "rejected the API key"),
    (error(403, "Forbidden"), errors.ProviderError, 502, "rejected the API key"),
    (html(), errors.ProviderError, 502, "HTML"),
    (html(404), errors.ProviderRejected, 400, "OpenAI-compatible"),
]


@pytest.mark.parametrize(
    ("reply", "kind", "status", "message"), ERRORS, ids=lambda v: getattr(v, "status", v)
)
@pytest.mark.parametrize("mode", ["complete", "stream"])
async def test_error_mapping(
    up: Upstream,
    client: Http,
    reply: Reply,
    kind: type[errors.SoratError],
    status: int,
    message: str,
    mode: str,
) -> None:
    up.script(reply)
    p = provider(up.base_url, client)
    with pytest.raises(errors.SoratError) as info:
        if mode == "complete":
            await p.complete(CALL)
        else:
            await collect(p)
    assert type(info.value) is kind, info.value
    assert info.value.status == status
    assert message in info.value.message
    assert KEY not in info.value.message and KEY not in str(info.value)
    assert len(up.requests) == 1  # none of these is retried
    if status == 502:
        assert "'scripted'" in info.value.message


async def test_rejection_keeps_provider_param_and_code(up: Upstream, client: Http) -> None:
    body = {
        "error": {
            "message": "bad role",
            "type": "invalid_request_error",
            "param": "messages[0]",
            "code": "x1",
        }
    }
    up.script(raw(orjson.dumps(body), status=400, content_type="application/json"))
    with pytest.raises(errors.ProviderRejected) as info:
        await provider(up.base_url, client).complete(CALL)
    assert (info.value.message, info.value.param, info.value.code) == ("bad role", "messages[0]", "x1")


async def test_complete_non_json_200(up: Upstream, client: Http) -> None:
    up.script(raw(b"Gateway says hello", content_type="text/plain"))
    with pytest.raises(errors.ProviderError, match="not JSON") as info:
        await provider(up.base_url, client).complete(CALL)
    assert info.value.status == 502


@pytest.mark.parametrize("style", ["openai", "openrouter", "event", "field"])
@pytest.mark.parametrize("done", [False, True])
async def test_error_inside_200_stream_after_partial_output(
    up: Upstream, client: Http, style: str, done: bool
) -> None:
    up.script(
        stream_error(
            "Provider disconnected", after=2, style=style, done=done, content="Hello world", chunks=4
        )
    )
    deltas, exc = await collect_until_error(provider(up.base_url, client))
    assert "".join(d.content or "" for d in deltas) == "Hello"
    assert type(exc) is errors.ProviderError and exc.status == 502
    assert "Provider disconnected" in exc.message and "'scripted'" in exc.message
    assert len(up.requests) == 1


async def test_context_window_inside_200_stream(up: Upstream, client: Http) -> None:
    up.script(
        stream_error(
            "the request exceeds the available context size", after=0, type="exceed_context_size_error"
        )
    )
    deltas, exc = await collect_until_error(provider(up.base_url, client))
    assert deltas == [] and type(exc) is errors.ContextWindowExceeded


@pytest.mark.parametrize(
    "reply",
    [
        raw(b""),
        raw(b"data: [DONE]\n\n"),
        raw(b": keep-alive\n\n"),
        raw(b"data: oops\n\n"),
        raw(b"nothing", content_type="text/plain"),
    ],
)
async def test_stream_without_any_answer_is_an_error(up: Upstream, client: Http, reply: Reply) -> None:
    up.script(reply)
    deltas, exc = await collect_until_error(provider(up.base_url, client))
    assert deltas == [] and type(exc) is errors.ProviderError
    assert "without any answer" in exc.message


async def test_stream_dying_halfway(up: Upstream, client: Http) -> None:
    up.script(text("Hello world", chunks=4, drop_after=3))
    deltas, exc = await collect_until_error(provider(up.base_url, client))
    assert "".join(d.content or "" for d in deltas) == "Hello"
    assert type(exc) is errors.ProviderError and exc.status == 502 and "broke off" in exc.message
    assert len(up.requests) == 1  # never retried once something was relayed


async def test_stall_mid_stream_times_out(up: Upstream, client: Http) -> None:
    up.script(text("Hello world", chunks=4, stall_after=3))
    start = time.monotonic()
    deltas, exc = await collect_until_error(provider(up.base_url, client, read_timeout=0.3))
    assert "".join(d.content or "" for d in deltas) == "Hello"
    assert type(exc) is errors.ProviderTimeout and exc.status == 504
    assert "0.3 s" in exc.message and "provider_read_timeout_s" in exc.message
    assert 0.25 < time.monotonic() - start < 3


@pytest.mark.parametrize("mode", ["complete", "stream"])
async def test_silence_before_headers_times_out(up: Upstream, client: Http, mode: str) -> None:
    up.script(text("never", hang=True))
    p = provider(up.base_url, client, read_timeout=0.3)
    with pytest.raises(errors.ProviderTimeout):
        if mode == "complete":
            await p.complete(CALL)
        else:
            await collect(p)
    assert len(up.requests) == 1


async def test_comments_reset_the_read_timeout(up: Upstream, client: Http) -> None:
    w = wire.ChunkWriter("x", 1, "m")
    frames = [
        w.content("slow "),
        *[b": OPENROUTER PROCESSING\n\n"] * 6,
        w.content("answer"),
        w.finish("stop"),
    ]
    up.script(raw(frames, chunk_delay=0.1))  # 0.6 s without data, but a comment every 0.1 s
    deltas = await collect(provider(up.base_url, client, read_timeout=0.35))
    assert summary(deltas)[0] == "slow answer"


async def test_finished_stream_left_open_ends_after_grace(up: Upstream, client: Http) -> None:
    up.script(text("done", stall_after=10))  # finish and usage sent, then neither [DONE] nor EOF
    deltas = await collect(provider(up.base_url, client, read_timeout=30, finish_grace=0.2))
    assert summary(deltas) == ("done", "", [], "stop", USAGE)


# --- retries ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["complete", "stream"])
async def test_retry_500_then_success(up: Upstream, client: Http, mode: str) -> None:
    up.script(error(500, "The server had an error"), error(502, "Bad gateway"), text("ok now"))
    p = provider(up.base_url, client)
    if mode == "complete":
        assert (await p.complete(CALL)).message["content"] == "ok now"
    else:
        assert summary(await collect(p))[0] == "ok now"
    assert len(up.requests) == 3


async def test_retry_after_is_honoured(up: Upstream, client: Http) -> None:
    up.script(error(429, "Rate limit reached", headers={"Retry-After": "1"}), text("patience"))
    start = time.monotonic()
    result = await provider(up.base_url, client).complete(CALL)
    assert time.monotonic() - start >= 0.95
    assert result.message["content"] == "patience" and len(up.requests) == 2


async def test_retry_after_is_capped(up: Upstream, client: Http) -> None:
    up.script(error(503, "busy", headers={"Retry-After": "120"}), text("ok"))
    start = time.monotonic()
    await provider(up.base_url, client, retry_after_cap=0.05).complete(CALL)
    assert time.monotonic() - start < 2


async def test_retries_are_bounded(up: Upstream, client: Http) -> None:
    up.script(*[error(503, "Service overloaded")] * 3, text("too late"))
    with pytest.raises(errors.ProviderError) as info:
        await collect(provider(up.base_url, client))
    assert type(info.value) is errors.ProviderError and info.value.status == 502
    assert "HTTP 503" in info.value.message and "Service overloaded" in info.value.message
    assert len(up.requests) == 3 and up.pending == 1


def test_retry_after_parsing() -> None:
    soon = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert _retry_after(CIMultiDict({"Retry-After": "2"})) == 2
    assert 25 < (_retry_after(CIMultiDict({"retry-after": soon})) or 0) <= 30
    assert _retry_after(CIMultiDict({"Retry-After-Ms": "1500", "Retry-After": "9"})) == 1.5
    assert _retry_after(CIMultiDict({"retry-after": "soon-ish"})) is None
    assert _retry_after(CIMultiDict()) is None


async def test_connection_refused(client: Http) -> None:
    url = f"http://127.0.0.1:{closed_port()}/v1"
    with pytest.raises(errors.ProviderError) as info:
        await provider(url, client).complete(CALL)
    assert type(info.value) is errors.ProviderError and info.value.status == 502
    assert "'scripted'" in info.value.message and url in info.value.message


async def test_connection_errors_are_retried_a_bounded_number_of_times(client: Http) -> None:
    with slammer() as (url, accepted):
        with pytest.raises(errors.ProviderError, match="Cannot connect"):
            await collect(provider(url, client))
        assert len(accepted) == 3


@pytest.mark.skipif(sys.platform != "linux", reason="a full backlog drops SYNs on Linux")
async def test_connect_timeout_is_a_connection_error(client: Http) -> None:
    with unanswered() as url:
        start = time.monotonic()
        with pytest.raises(errors.ProviderError) as info:
            await provider(url, client, connect_timeout=0.1, read_timeout=30).complete(CALL)
        assert "Cannot connect" in info.value.message and "timeout" in info.value.message
        assert 0.25 < time.monotonic() - start < 3  # retried, like any connection error
        probe = Provider(ProviderSettings("ollama", url, probe=True), client, connect_timeout=0.1)
        with pytest.raises(errors.NoProvider):
            await probe.complete(CALL)


async def test_environment_proxies_apply(up: Upstream, client: Http, env: pytest.MonkeyPatch) -> None:
    env.setenv("HTTP_PROXY", up.base_url.removesuffix("/v1"))  # the upstream plays the proxy
    assert (await provider("http://provider.invalid/v1", client).complete(CALL)).message["content"] == "ok"
    assert up.headers[0]["host"] == "provider.invalid"
    env.setenv("HTTP_PROXY", f"http://127.0.0.1:{closed_port()}")
    env.setenv("NO_PROXY", "127.0.0.1")
    assert (await provider(up.base_url, client).complete(CALL)).message["content"] == "ok"


def test_tls_only_for_https_and_verified(env: pytest.MonkeyPatch) -> None:
    assert provider("http://127.0.0.1:11434/v1", Http())._route == {}
    _tls.cache_clear()
    try:
        env.setenv("SSL_CERT_FILE", "/nonexistent/ca.pem")
        with pytest.raises(FileNotFoundError):
            _tls()
        env.delenv("SSL_CERT_FILE")
        env.delenv("SSL_CERT_DIR", raising=False)
        tls = provider("https://api.example.com/v1", Http())._route["ssl"]  # certifi's bundle
        assert isinstance(tls, ssl.SSLContext) and tls.verify_mode == ssl.CERT_REQUIRED and tls.check_hostname
        assert tls.cert_store_stats()["x509_ca"] > 50
    finally:
        _tls.cache_clear()


async def test_stream_options_refused_then_dropped(up: Upstream, client: Http) -> None:
    up.script(error(400, "Unrecognized request argument supplied: stream_options"), text("fine"))
    p = provider(up.base_url, client)
    assert summary(await collect(p))[0] == "fine"
    assert "stream_options" in up.requests[0] and "stream_options" not in up.requests[1]
    await collect(p)
    assert "stream_options" not in up.requests[2]


# --- cancellation -----------------------------------------------------------------------------------


async def test_aclose_drops_the_upstream_request(up: Upstream, client: Http) -> None:
    up.script(text("Hello world", chunks=5, stall_after=3))
    async with contextlib.aclosing(provider(up.base_url, client).stream(CALL)) as stream:
        async for d in stream:
            assert d.content and "Hello".startswith(d.content)
            break
    assert await up.until(lambda: up.disconnects == 1)


async def test_break_without_aclose_still_drops_it(up: Upstream, client: Http) -> None:
    up.script(text("Hello world", chunks=5, stall_after=3))
    async for _ in provider(up.base_url, client).stream(CALL):
        break
    assert await up.until(lambda: up.disconnects == 1)


async def test_cancelling_the_consumer_drops_it(up: Upstream, client: Http) -> None:
    up.script(text("Hello world", chunks=5, stall_after=3))
    first = asyncio.Event()

    async def consume() -> None:
        async for _ in provider(up.base_url, client).stream(CALL):
            first.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(first.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await up.until(lambda: up.disconnects == 1)


async def test_cancelling_while_waiting_for_headers(up: Upstream, client: Http) -> None:
    up.script(text("never", hang=True))
    task = asyncio.create_task(provider(up.base_url, client).complete(CALL))
    assert await up.until(lambda: len(up.requests) == 1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await up.until(lambda: up.disconnects == 1)


# --- models -----------------------------------------------------------------------------------------


async def test_list_models(up: Upstream, client: Http) -> None:
    assert await provider(up.base_url, client).list_models() == ["gpt-4o", "gpt-4o-mini"]
    settings = ProviderSettings("x", up.base_url, models=("a", "b"))
    assert await Provider(settings, client).list_models() == ["a", "b"]
    up.api_key = "another-key-entirely"
    with pytest.raises(errors.ProviderError, match="rejected the API key"):
        await provider(up.base_url, client).list_models()


# --- the pool ---------------------------------------------------------------------------------------


def settings(*providers: ProviderSettings, model: str = "gpt-4o", read_timeout: float = 5.0) -> Settings:
    agent = AgentSettings(model=model, provider_read_timeout_s=read_timeout)
    return Settings(agent=agent, providers=providers, file=Path("/home/u/.sorat/config.toml"))


def pool(s: Settings, statuses: list[str | None] | None = None) -> ProviderPool:
    on_status = statuses.append if statuses is not None else None
    return ProviderPool(s, on_status=on_status, backoff_base=0.01, backoff_cap=0.02)


async def test_pool_resolve_rules(up: Upstream, up2: Upstream) -> None:
    s = settings(
        ProviderSettings("one", up.base_url, api_key=KEY, models=("gpt-4o", "gpt-4o-mini")),
        ProviderSettings("two", up2.base_url, models=("llama3", "gpt-4o")),
    )
    p = pool(s)
    try:
        assert p.models() == [("gpt-4o", "one"), ("gpt-4o-mini", "one"), ("llama3", "two")]
        for requested in ("sorat-agent", "default", None, "", "no-such-model"):
            prov, model = p.resolve(requested, "gpt-4o")
            assert (prov.name, model) == ("one", "gpt-4o")
        assert [
            (x.name, m) for x, m in [p.resolve("llama3", "gpt-4o"), p.resolve("gpt-4o-mini", "llama3")]
        ] == [
            ("two", "llama3"),
            ("one", "gpt-4o-mini"),
        ]
        assert [(x.name, m) for x, m in [p.resolve(None, "llama3"), p.resolve(None, "unknown")]] == [
            ("two", "llama3"),
            ("one", "unknown"),
        ]
        assert p.default_owner() == "one" and p.no_provider() is None
        prov, model = p.resolve("llama3", "gpt-4o")
        await prov.complete(ModelCall(model, [USER]))
        assert up2.requests[0]["model"] == "llama3" and up.requests == []
    finally:
        await p.aclose()


async def test_pool_discovers_models_in_the_background(up: Upstream, up2: Upstream) -> None:
    s = settings(
        ProviderSettings("one", up.base_url), ProviderSettings("two", up2.base_url, models=("fixed",))
    )
    p = pool(s)
    try:
        assert p.models() == [("fixed", "two")]
        await p.start()
        await p.ready()
        assert p.models() == [("gpt-4o", "one"), ("gpt-4o-mini", "one"), ("fixed", "two")]
        assert up.models_requests == 1 and up2.models_requests == 0
        up.models = ["gpt-5"]
        await p.refresh_models()
        assert p.models() == [("gpt-5", "one"), ("fixed", "two")]
        assert p.resolve("gpt-5", "fixed")[0].name == "one"
    finally:
        await p.aclose()


async def test_pool_start_never_blocks() -> None:
    with silent_server() as url:
        p = pool(settings(ProviderSettings("slow", url), read_timeout=30))
        start = time.monotonic()
        await p.start()
        assert time.monotonic() - start < 0.5
        assert p.resolve(None, "gpt-4o")[0].name == "slow"  # usable while its models are unknown
        await p.aclose()


async def test_no_provider_at_all() -> None:
    p = pool(settings())
    try:
        message = p.no_provider()
        assert message and "/home/u/.sorat/config.toml" in message and "OPENAI_API_KEY" in message
        with pytest.raises(errors.NoProvider) as info:
            p.resolve(None, "gpt-4o")
        assert info.value.status == 503 and info.value.message == message
        assert p.models() == [] and p.default_owner() == "sorat"
    finally:
        await p.aclose()


async def test_probe_of_absent_ollama() -> None:
    statuses: list[str | None] = []
    url = f"http://127.0.0.1:{closed_port()}/v1"
    p = pool(settings(ProviderSettings("ollama", url, probe=True)), statuses)
    try:
        with pytest.raises(errors.NoProvider):  # before the probe answered, a call finds out by itself
            await p.resolve(None, "gpt-4o")[0].complete(CALL)
        await p.start()
        await p.ready()
        assert p.no_provider() and statuses and statuses[-1] == p.no_provider()
        with pytest.raises(errors.NoProvider, match="OPENAI_API_KEY"):
            p.resolve(None, "gpt-4o")
        assert p.models() == []
    finally:
        await p.aclose()


async def test_probe_of_running_ollama(up2: Upstream) -> None:
    statuses: list[str | None] = []
    p = pool(settings(ProviderSettings("ollama", up2.base_url, probe=True), model="qwen3"), statuses)
    try:
        await p.start()
        await p.ready()
        assert p.no_provider() is None and statuses == []
        assert p.models() == [("llama3", "ollama"), ("qwen3", "ollama")]
        prov, model = p.resolve(None, "qwen3")
        assert summary(await collect(prov, ModelCall(model, [USER])))[0] == "ok"
    finally:
        await p.aclose()


async def test_pool_reports_status(up: Upstream, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    statuses: list[str | None] = []
    p = pool(settings(ProviderSettings("one", up.base_url, api_key=KEY, models=("gpt-4o",))), statuses)
    try:
        prov, _ = p.resolve(None, "gpt-4o")
        up.script(*[error(500, "meltdown")] * 3)
        with pytest.raises(errors.ProviderError):
            await prov.complete(CALL)
        assert statuses[-1] and "meltdown" in statuses[-1]
        await prov.complete(CALL)
        assert statuses[-1] is None
        up.script(error(400, "your fault"))
        with pytest.raises(errors.ProviderRejected):
            await collect(prov)
        assert statuses[-1] is None  # a rejected request is not a broken provider
        up.script(stream_error("mid-stream trouble"))
        with pytest.raises(errors.ProviderError):
            await collect(prov)
        assert statuses[-1] and "mid-stream trouble" in statuses[-1]
        await collect(prov)
        assert statuses[-1] is None
        up.api_key = "not-what-sorat-sends"
        with pytest.raises(errors.ProviderError):
            await prov.complete(CALL)
    finally:
        await p.aclose()
    assert KEY not in caplog.text and "Bearer" not in caplog.text


async def test_pieces_that_arrive_apart_are_relayed_apart(up: Upstream, client: Http) -> None:
    up.script(text("Hello world", chunks=3, chunk_delay=0.05))
    deltas = await collect(provider(up.base_url, client), ModelCall("gpt-4o", [USER]))
    assert [d.content for d in deltas[:-1]] == ["Hel", "lo w", "orld"]
