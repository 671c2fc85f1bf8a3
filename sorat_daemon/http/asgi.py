"""ASGI plumbing shared by every endpoint that bypasses Quart: the reply (status, headers, body, stream,
and its access-log line), reading a body within the size and time limits, settling an unread body before
an early answer."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

from sorat_daemon.errors import PayloadTooLarge, RequestTimeout, SoratError
from sorat_daemon.http.guard import MAX_BODY

access_log = logging.getLogger("sorat.access")

BODY_TIMEOUT = 60.0  # a client that stops sending its body mid-way
SETTLE_LIMIT = 1024 * 1024  # an early error still reads a body up to this, so the connection stays usable

Send = Callable[[dict[str, Any]], Awaitable[None]]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Headers = Sequence[tuple[bytes, bytes]]

JSON_TYPE = (b"content-type", b"application/json")
SSE_HEADERS = (
    (b"content-type", b"text/event-stream"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
)


class ClientGone(Exception):
    """The client closed the connection while its request was being read."""


def access(method: str, path: str, status: int, start: float | None, sid: str | None, note: str = "") -> None:
    """The one access-log line of a request."""
    ms = (time.perf_counter() - start) * 1000 if start else 0.0
    access_log.info("%s %s %d %.1fms session=%s%s", method, path, status, ms, sid or "-", note)


class Reply:
    """The response of one request: status line, headers, body; and its access-log line."""

    def __init__(self, send: Send, cors: list[tuple[str, str]], method: str, path: str, start: float) -> None:
        self._send = send
        self._cors = [(k.lower().encode(), v.encode("latin-1")) for k, v in cors]
        self.method = method
        self.path = path
        self.start = start
        self.session_id: str | None = None
        self.close = False  # ask the client to close the connection (its body was left unread)
        self.started = False
        self.finished = False

    def _headers(self, extra: Headers) -> list[tuple[bytes, bytes]]:
        headers = [*extra, *self._cors]
        if self.session_id:
            headers.append((b"x-session-id", self.session_id.encode("latin-1")))
        if self.close:
            headers.append((b"connection", b"close"))
        return headers

    async def _whole(self, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
        self.started = True
        headers.append((b"content-length", str(len(body)).encode()))
        await self._send({"type": "http.response.start", "status": status, "headers": headers})
        self.finished = True
        await self._send({"type": "http.response.body", "body": body})
        access(self.method, self.path, status, self.start, self.session_id)

    async def empty(self, status: int, extra: Headers = ()) -> None:
        await self._whole(status, b"", self._headers(extra))

    async def json(self, status: int, body: bytes, extra: Headers = ()) -> None:
        await self._whole(status, body, self._headers([JSON_TYPE, *extra]))

    async def stream(self, frames: AsyncIterator[bytes], extra: Headers = ()) -> None:
        self.started = True
        send = self._send
        headers = self._headers([*SSE_HEADERS, *extra])
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        async for frame in frames:
            await send({"type": "http.response.body", "body": frame, "more_body": True})
        self.finished = True
        await send({"type": "http.response.body", "body": b""})


async def read_body(receive: Receive) -> bytes:
    parts: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(BODY_TIMEOUT):
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    raise ClientGone
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > MAX_BODY:
                    raise PayloadTooLarge("Request body larger than 16 MiB")
                parts.append(chunk)
                if not message.get("more_body", False):
                    return b"".join(parts)
    except TimeoutError:
        raise RequestTimeout(f"The request body did not arrive within {BODY_TIMEOUT:g} s") from None


async def settle(receive: Receive, length: int | None, reply: Reply) -> None:
    """Reads an unread small body before answering early (401, 403, 405…), so the connection can be
    reused; a large one is left unread and the connection closed, which the client is told."""
    if not length:
        return
    if length > SETTLE_LIMIT:
        reply.close = True
        return
    with contextlib.suppress(ClientGone, SoratError):
        await read_body(receive)
