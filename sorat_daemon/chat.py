"""POST /v1/chat/completions: the hot path, as a bare ASGI endpoint in front of the Quart app.

Every editor keystroke that asks the model comes through here, so it skips Quart's request and response
objects, contexts and hooks (about a quarter of a millisecond of CPU per request): it reads the scope's
headers itself, passes ``server.Guard`` like every route, and speaks ASGI to Hypercorn directly. What the
client sees is the same as from any route: OpenAI's error JSON, CORS headers, ``X-Session-ID``, one
access-log line.

A client that goes away is noticed by a watcher of ``receive``: it cancels the request, which cancels
the upstream call and running tools, and the session keeps what was said.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

from sorat_daemon import agent, wire
from sorat_daemon.config import TOOL_EVENTS
from sorat_daemon.errors import PayloadTooLarge, RequestError, RequestTimeout, SoratError
from sorat_daemon.protocols import chat as protocol
from sorat_daemon.server import BODY_TIMEOUT, MAX_BODY, SETTLE_LIMIT, Guard, _access

if TYPE_CHECKING:
    from sorat_daemon.daemon import Runtime

log = logging.getLogger("sorat.server")

PATH = "/v1/chat/completions"

Send = Callable[[dict[str, Any]], Awaitable[None]]
Receive = Callable[[], Awaitable[dict[str, Any]]]

_JSON = (b"content-type", b"application/json")
_SSE = [
    (b"content-type", b"text/event-stream"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]


class _ClientGone(Exception):
    """The client closed the connection while its request was being read."""


class ChatEndpoint:
    """The ASGI app of ``PATH`` (every method: only POST is allowed, OPTIONS is a preflight)."""

    def __init__(self, rt: Runtime, guard: Guard) -> None:
        self._rt = rt
        self._guard = guard

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        start = time.perf_counter()
        method: str = scope["method"]
        host = ""
        origins: list[str] = []
        auths: list[str] = []
        length: int | None = None
        session_header = events_header = None
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
                session_header = raw_value.decode("latin-1")
            elif name == b"x-sorat-tool-events":
                events_header = raw_value.decode("latin-1")
        origin = origins[0] if origins else None
        reply = _Reply(send, self._guard.cors(origin, method), method, start)
        try:
            if self._guard.check(method, PATH, scope.get("raw_path") or b"/", host, origins, auths, length):
                await reply.empty(204)
                return
            if method != "POST":
                await _settle(receive, length, reply)
                err = RequestError(f"Method {method} not allowed on {PATH}")
                await reply.error(err, 405, [(b"allow", b"POST")])
                return
        except SoratError as e:
            await _settle(receive, length, reply)
            await reply.error(e)
            return
        try:
            body = await _read_body(receive)
        except _ClientGone:
            return
        except SoratError as e:
            reply.close = True  # the rest of the body is not read
            await reply.error(e)
            return
        await self._serve(body, session_header, events_header, receive, reply)

    async def _serve(
        self,
        body: bytes,
        session_header: str | None,
        events_header: str | None,
        receive: Receive,
        reply: _Reply,
    ) -> None:
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
        activity = self._rt.activity
        activity.begin()
        try:
            await self._answer(body, session_header, events_header, reply)
        except asyncio.CancelledError:
            if gone and task.uncancel() == 0:  # ours: the client left; anything else propagates
                return
            raise
        except SoratError as e:
            if not reply.started:
                await reply.error(e)
        except Exception:
            log.exception("unhandled error on POST %s", PATH)
            if not reply.started:
                await reply.error(SoratError("Internal server error; see sorat's log"))
        finally:
            activity.end()
            watcher.cancel()

    async def _answer(
        self, body: bytes, session_header: str | None, events_header: str | None, reply: _Reply
    ) -> None:
        rt = self._rt
        req = protocol.parse_chat_request(body)
        events_mode = (events_header or rt.agent_settings.tool_events).strip().lower()
        if events_mode not in TOOL_EVENTS:  # the same choices as [agent] tool_events
            raise RequestError(
                "X-Sorat-Tool-Events must be tool_calls, reasoning or none", param="X-Sorat-Tool-Events"
            )
        provider, model = rt.pool.resolve(req.model, rt.active_model)
        toolset = rt.tools.current()
        stack = contextlib.AsyncExitStack()  # the turn: closed (the session saved) before the last byte
        try:
            turn = await stack.enter_async_context(rt.store.turn(session_header, req.messages, model=model))
            reply.session_id = turn.id
            turn.set_model(model)
            opts = agent.RunOptions(
                model=model,
                stream=req.stream,
                params=req.params,
                client_tools=req.tools,
                tool_choice=req.tool_choice,
                max_iterations=rt.agent_settings.max_iterations,
                system_prompt=rt.agent_settings.system_prompt,
            )
            events = agent.run(provider, toolset, rt.tool_context(turn.id), turn.messages, opts, turn.add)
            stack.push_async_callback(events.aclose)
            if not req.stream:
                try:
                    done = await _drain(events)
                finally:
                    await stack.aclose()
                rt.after_answer(turn, model, done.message)
                completion = protocol.completion(
                    protocol.new_id(),
                    int(time.time()),
                    model,
                    dict(done.message),
                    done.finish_reason,
                    done.usage,
                )
                await reply.json(200, wire.dumps(completion))
                return
            first = await anext(events)  # headers go out when the model's first answer begins
        except BaseException:
            await stack.aclose()
            raise
        frames = _frames(rt, first, events, stack, turn, model, req, events_mode, reply.start)
        try:
            await reply.stream(frames)
        finally:
            await frames.aclose()
            await stack.aclose()  # a generator closed before it began never ran its own cleanup


class _Reply:
    """The response of one request: status line, headers, body; and its access-log line."""

    def __init__(self, send: Send, cors: list[tuple[str, str]], method: str, start: float) -> None:
        self._send = send
        self._cors = [(k.lower().encode(), v.encode("latin-1")) for k, v in cors]
        self._method = method
        self.start = start
        self.session_id: str | None = None
        self.close = False  # ask the client to close the connection (its body was left unread)
        self.started = False
        self.finished = False

    def _headers(self, extra: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
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
        _access(self._method, PATH, status, self.start, self.session_id)

    async def empty(self, status: int) -> None:
        await self._whole(status, b"", self._headers([]))

    async def json(self, status: int, body: bytes, extra: Sequence[tuple[bytes, bytes]] = ()) -> None:
        await self._whole(status, body, self._headers([_JSON, *extra]))

    async def error(
        self, err: SoratError, status: int | None = None, extra: Sequence[tuple[bytes, bytes]] = ()
    ) -> None:
        await self.json(status or err.status, wire.dumps(err.body()), extra)

    async def stream(self, frames: AsyncIterator[bytes]) -> None:
        self.started = True
        send = self._send
        await send({"type": "http.response.start", "status": 200, "headers": self._headers(list(_SSE))})
        async for frame in frames:
            await send({"type": "http.response.body", "body": frame, "more_body": True})
        self.finished = True
        await send({"type": "http.response.body", "body": b""})


async def _read_body(receive: Receive) -> bytes:
    parts: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(BODY_TIMEOUT):
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    raise _ClientGone
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > MAX_BODY:
                    raise PayloadTooLarge("Request body larger than 16 MiB")
                parts.append(chunk)
                if not message.get("more_body", False):
                    return b"".join(parts)
    except TimeoutError:
        raise RequestTimeout(f"The request body did not arrive within {BODY_TIMEOUT:g} s") from None


async def _settle(receive: Receive, length: int | None, reply: _Reply) -> None:
    """Reads an unread small body before answering early (401, 403, 405…), so the connection can be
    reused; a large one is left unread and the connection closed, which the client is told."""
    if not length:
        return
    if length > SETTLE_LIMIT:
        reply.close = True
        return
    with contextlib.suppress(_ClientGone, SoratError):
        await _read_body(receive)


async def _drain(events: AsyncGenerator[agent.Event, None]) -> agent.Done:
    async for ev in events:
        if isinstance(ev, agent.Done):
            return ev
    raise SoratError("the agent ended without an answer")


async def _frames(
    rt: Runtime,
    first: agent.Event,
    events: AsyncGenerator[agent.Event, None],
    stack: contextlib.AsyncExitStack,
    turn: Any,
    model: str,
    req: protocol.ChatRequest,
    mode: str,
    start: float,
) -> AsyncGenerator[bytes, None]:
    """The SSE frames of a streamed answer: what the agent's events say, batched per wake-up. The turn
    ends (the session is saved) before ``[DONE]``."""
    w = protocol.ChunkWriter(protocol.new_id(), int(time.time()), model)
    index = 0  # tool-call index, rising across the whole response
    if req.tools and mode == "tool_calls":
        mode = "reasoning"  # a client must never mistake our internal calls for its own
    status = "ok"
    said: list[str] = []  # for the title of a session whose client left before the end
    answered = False
    out = [w.role()]  # frames go out together up to the next wait: one write, not one per frame
    try:
        ev: agent.Event | None = first
        while ev is not None:
            if isinstance(ev, agent.Text):
                said.append(ev.text)
                out.append(w.content(ev.text))
            elif isinstance(ev, agent.Reasoning):
                out.append(w.reasoning(ev.text))
            elif isinstance(ev, agent.ToolCall):
                if mode == "tool_calls":
                    out.append(w.tool_call(index, ev.id, ev.name, ev.arguments))
                    index += 1
                elif mode == "reasoning":
                    out.append(w.reasoning(f"{ev.name} {ev.arguments}\n"))
            elif isinstance(ev, agent.KeepAlive):
                out.append(protocol.KEEPALIVE)
            elif isinstance(ev, agent.Done):
                for call in ev.message.get("tool_calls") or ():
                    fn = call["function"]
                    out.append(w.tool_call(index, call["id"], fn["name"], fn["arguments"]))
                    index += 1
                out.append(w.finish(ev.finish_reason))
                if req.include_usage:
                    out.append(w.usage(ev.usage or wire.add_usage(None, None)))
                answered = True
                rt.after_answer(turn, model, ev.message)
                break
            if out:
                yield b"".join(out)
                out.clear()
            ev = await anext(events, None)
    except SoratError as e:
        status = f"error {e.status}"
        out.append(w.error(e.body()))
    except Exception:
        log.exception("stream failed")
        status = "error 500"
        out.append(w.error(SoratError("Internal server error; see sorat's log").body()))
    except BaseException:
        status = "cancelled"
        raise
    finally:
        if not answered and said:
            rt.after_answer(turn, model, {"role": "assistant", "content": "".join(said)})
        with contextlib.suppress(Exception):
            await events.aclose()
        await stack.aclose()
        _access("POST", PATH, 200, start, turn.id, f" stream={status}")
    out.append(protocol.DONE)
    yield b"".join(out)
