"""What the provider tests share: a call, a provider on a scripted upstream, and sockets that misbehave."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator
from typing import Any

from sorat_daemon.config import ProviderSettings
from sorat_daemon.providers import Http, Provider
from sorat_daemon.providers.completion import ToolCallAccumulator
from sorat_daemon.types import Delta, ModelCall

KEY = "sk-test-provider-key-0123456789"
USER = {"role": "user", "content": "hi"}
CALL = ModelCall("gpt-4o", [USER], params={"temperature": 0.1})
USAGE = {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}


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
    acc = ToolCallAccumulator()
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
