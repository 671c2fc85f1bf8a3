"""providers.client: how each failure of a provider reaches sorat, and what is retried."""

from __future__ import annotations

import sys
import time

import orjson
import pytest

from sorat_daemon import errors
from sorat_daemon.config import ProviderSettings
from sorat_daemon.protocols.chat import ChunkWriter
from sorat_daemon.providers import Http, Provider
from tests.provider_helpers import (
    CALL,
    KEY,
    USAGE,
    closed_port,
    collect,
    collect_until_error,
    provider,
    slammer,
    summary,
    unanswered,
)
from tests.upstream import Reply, Upstream, error, html, raw, stream_error, text

pytest_plugins = ["tests.provider_fixtures"]  # _server, up, client, env


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
    w = ChunkWriter("x", 1, "m")
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


@pytest.mark.parametrize("mode", ["complete", "stream"])
async def test_a_rate_limit_that_outlasts_the_retries(up: Upstream, client: Http, mode: str) -> None:
    limited = error(429, "Rate limit reached for requests", headers={"Retry-After": "7"})
    up.script(*[limited] * 3, text("too late"))
    p = provider(up.base_url, client, retry_after_cap=0.01)
    with pytest.raises(errors.RateLimited) as info:
        if mode == "complete":
            await p.complete(CALL)
        else:
            await collect(p)
    e = info.value
    assert (e.status, e.type, e.code, e.retry_after) == (429, "rate_limit_error", "rate_limit_exceeded", 7.0)
    assert isinstance(e, errors.ProviderError)
    assert "'scripted'" in e.message and "HTTP 429" in e.message and "Rate limit reached" in e.message
    assert e.body()["error"]["type"] == "rate_limit_error"
    assert len(up.requests) == 3 and up.pending == 1


async def test_a_rate_limit_without_retry_after(up: Upstream, client: Http) -> None:
    up.script(*[error(429, "slow down")] * 3)
    with pytest.raises(errors.RateLimited) as info:
        await provider(up.base_url, client).complete(CALL)
    assert info.value.retry_after is None and len(up.requests) == 3
    up.script(error(429, "slow down", headers={"Retry-After-Ms": "1500"}))
    with pytest.raises(errors.RateLimited) as info:
        await provider(up.base_url, client, attempts=1).complete(CALL)
    assert info.value.retry_after == 1.5


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


async def test_stream_options_refused_then_dropped(up: Upstream, client: Http) -> None:
    up.script(error(400, "Unrecognized request argument supplied: stream_options"), text("fine"))
    p = provider(up.base_url, client)
    assert summary(await collect(p))[0] == "fine"
    assert "stream_options" in up.requests[0] and "stream_options" not in up.requests[1]
    await collect(p)
    assert "stream_options" not in up.requests[2]
