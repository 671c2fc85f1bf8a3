"""The machinery of every protocol endpoint, written once: headers read from the ASGI scope, the guard,
the method check, the body, the disconnect watch, errors in the protocol's shape, and a turn served whole
or streamed through the protocol's ``Renderer``.

These endpoints are bare ASGI apps in front of Quart: every editor keystroke that asks the model comes
through them, and Quart's request and response objects, contexts and hooks cost about a quarter of a
millisecond of CPU per request. What the client sees is the same as from any route: the guard, CORS
headers, ``X-Session-ID``, one access-log line.

A client that goes away is noticed by a watcher of ``receive``: it cancels the request, which cancels the
upstream call and running tools, and the session keeps what was said.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from sorat_daemon import agent, wire
from sorat_daemon.errors import RequestError, SoratError
from sorat_daemon.http.asgi import ClientGone, Receive, Reply, Send, access, read_body, settle
from sorat_daemon.http.guard import Guard
from sorat_daemon.turn import Pipeline, Run, TurnRequest

if TYPE_CHECKING:
    from sorat_daemon.titles import Activity

log = logging.getLogger("sorat.server")

INTERNAL = "Internal server error; see sorat's log"


class Renderer(Protocol):
    """A protocol's view of one turn's events (``sorat_daemon.protocols``: pure, no I/O)."""

    def begin(self) -> bytes:
        """The first frames of a stream."""

    def event(self, ev: agent.Event) -> bytes:
        """The frames for one event (b"" for none); ``KeepAlive`` included."""

    def end(self, done: agent.Done) -> bytes:
        """The frames that finish a stream, before the session is saved."""

    def fail(self, err: SoratError) -> bytes:
        """The frames that end a stream with an error."""

    def close(self) -> bytes:
        """The very last frames, after the session is saved (``data: [DONE]``)."""

    async def whole(self, run: Run) -> bytes:
        """A whole answer's JSON body: runs ``run`` to its end."""


@dataclass(slots=True)
class Head:
    """What an endpoint reads of a request before its body."""

    method: str
    path: str
    query: bytes
    session_id: str | None = None
    tool_events: str | None = None
    headers: dict[bytes, str] = field(default_factory=dict)  # the endpoint's ``capture`` headers


class Endpoint:
    """The ASGI app of one path. Subclasses set ``path`` and implement ``handle``; ``error_body`` and
    ``error_headers`` give errors their protocol's shape."""

    path = ""
    methods: tuple[str, ...] = ("POST",)
    api_key = False  # the token may come as ``x-api-key`` (Anthropic's clients)
    capture: frozenset[bytes] = frozenset()

    def __init__(self, guard: Guard, activity: Activity) -> None:
        self._guard = guard
        self._activity = activity

    async def handle(self, head: Head, body: bytes, reply: Reply) -> None:
        raise NotImplementedError

    def error_body(self, err: SoratError) -> bytes:
        return wire.dumps(err.body())

    def error_headers(self, err: SoratError, run: Run | None) -> list[tuple[bytes, bytes]]:
        retry_after = getattr(err, "retry_after", None)
        if retry_after is not None:
            return [(b"retry-after", str(max(0, round(retry_after))).encode())]
        return []

    async def error(self, reply: Reply, err: SoratError, run: Run | None = None, status: int = 0) -> None:
        headers = self.error_headers(err, run)
        await reply.json(status or err.status, self.error_body(err), headers)

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        start = time.perf_counter()
        method: str = scope["method"]
        host = ""
        origins: list[str] = []
        auths: list[str] = []
        api_key: str | None = None
        length: int | None = None
        head = Head(method, scope["path"], scope.get("query_string") or b"")
        capture = self.capture
        for raw_name, raw_value in scope["headers"]:
            name = raw_name.lower()
            if name == b"host":
                host = raw_value.decode("latin-1")
            elif name == b"authorization":
                auths.append(raw_value.decode("latin-1"))
            elif name == b"origin":
                origins.append(raw_value.decode("latin-1"))
            elif name == b"content-length":
                with contextlib.suppress(ValueError):
                    length = int(raw_value)
            elif name == b"x-session-id":
                head.session_id = raw_value.decode("latin-1")
            elif name == b"x-sorat-tool-events":
                head.tool_events = raw_value.decode("latin-1")
            elif name == b"x-api-key":
                api_key = raw_value.decode("latin-1")
            elif name in capture:
                head.headers[name] = raw_value.decode("latin-1")
        origin = origins[0] if origins else None
        path = head.path
        reply = Reply(send, self._guard.cors(origin, method, path), method, path, start)
        try:
            target = scope.get("raw_path") or b"/"
            key = api_key if self.api_key else None
            if self._guard.check(method, path, target, host, origins, auths, length, key):
                await reply.empty(204)
                return
            if method not in self.methods:
                await settle(receive, length, reply)
                err = RequestError(f"Method {method} not allowed on {path}")
                allow = ", ".join(self.methods).encode()
                await reply.json(405, self.error_body(err), [(b"allow", allow)])
                return
        except SoratError as e:
            await settle(receive, length, reply)
            await self.error(reply, e)
            return
        try:
            body = await read_body(receive)
        except ClientGone:
            return
        except SoratError as e:
            reply.close = True  # the rest of the body is not read
            await self.error(reply, e)
            return
        await self._serve(head, body, receive, reply)

    async def _serve(self, head: Head, body: bytes, receive: Receive, reply: Reply) -> None:
        task = asyncio.current_task()
        assert task is not None
        gone = False

        async def watch() -> None:
            nonlocal gone
            while (await receive())["type"] != "http.disconnect":
                pass
            if not reply.finished:
                gone = True
                task.cancel()

        watcher = asyncio.create_task(watch())
        self._activity.begin()
        try:
            await self.handle(head, body, reply)
        except asyncio.CancelledError:
            if gone and task.uncancel() == 0:  # ours: the client left; anything else propagates
                return
            raise
        except SoratError as e:
            if not reply.started:
                await self.error(reply, e)
        except Exception:
            log.exception("unhandled error on %s %s", head.method, head.path)
            if not reply.started:
                await self.error(reply, SoratError(INTERNAL))
        finally:
            self._activity.end()
            watcher.cancel()


class TurnEndpoint(Endpoint):
    """An endpoint whose requests are agent turns."""

    def __init__(self, guard: Guard, activity: Activity, pipeline: Pipeline) -> None:
        super().__init__(guard, activity)
        self._pipeline = pipeline

    async def serve_turn(
        self, req: TurnRequest, renderer_for: Callable[[Run], Renderer], reply: Reply
    ) -> None:
        """Runs ``req`` and answers it whole, or streamed once the model's first answer begins (so a
        failure before that gets a real HTTP status)."""
        run = await self._pipeline.begin(req)
        reply.session_id = run.session_id
        try:
            renderer = renderer_for(run)
            if not req.stream:
                try:
                    body = await renderer.whole(run)
                finally:
                    await run.aclose()
                await reply.json(200, body)
                return
            first = await anext(run)  # headers go out when the model's first answer begins
        except SoratError as e:
            await run.aclose()
            if not reply.started:
                await self.error(reply, e, run)
                return
            raise
        except BaseException:
            await run.aclose()
            raise
        frames = _frames(run, first, renderer, reply)
        try:
            await reply.stream(frames)
        finally:
            await frames.aclose()
            await run.aclose()  # a generator closed before it began never ran its own cleanup


async def _frames(run: Run, first: agent.Event, r: Renderer, reply: Reply) -> AsyncGenerator[bytes, None]:
    """The frames of a streamed answer, batched per wake-up: what one upstream read brought goes out in
    one write. The turn ends (the session is saved) before the last frames."""
    status = "ok"
    out = [r.begin()]
    try:
        ev: agent.Event | None = first
        while ev is not None:
            if isinstance(ev, agent.Done):
                out.append(r.end(ev))
                break
            out.append(r.event(ev))
            data = b"".join(out)
            out.clear()
            if data:
                yield data
            ev = await anext(run, None)
    except SoratError as e:
        status = f"error {e.status}"
        out.append(r.fail(e))
    except Exception:
        log.exception("stream failed")
        status = "error 500"
        out.append(r.fail(SoratError(INTERNAL)))
    except BaseException:
        status = "cancelled"
        raise
    finally:
        await run.aclose()
        access(reply.method, reply.path, 200, reply.start, run.session_id, f" stream={status}")
    out.append(r.close())
    yield b"".join(out)
