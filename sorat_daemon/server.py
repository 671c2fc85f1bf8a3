"""The Quart app: routes, the auth/Host/Origin guard, and the one place errors become OpenAI JSON.

Long-lived resources (provider pool, session store, tools, title worker) live on ``Runtime``, which
the daemon builds while serving and hangs on ``app.runtime``.
"""

from __future__ import annotations

import contextlib
import functools
import hmac
import importlib.resources
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator
from typing import TYPE_CHECKING, Any

from quart import Quart, Response, g, request
from werkzeug.exceptions import HTTPException

from sorat_daemon import __version__, agent, wire
from sorat_daemon.config import TOOL_EVENTS
from sorat_daemon.errors import (
    AuthError,
    NotFound,
    PayloadTooLarge,
    PermissionDenied,
    RequestError,
    SoratError,
)

if TYPE_CHECKING:
    from sorat_daemon.daemon import Runtime

log = logging.getLogger("sorat.server")
access_log = logging.getLogger("sorat.access")

MAX_BODY = 16 * 1024 * 1024
LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "[::1]"})
CORS_ALLOW_HEADERS = "Authorization, Content-Type, X-Session-ID, X-Sorat-Tool-Events"
CREATED = 1700000000
_HTTP_TYPES = {404: NotFound, 403: PermissionDenied, 401: AuthError, 413: PayloadTooLarge}


def _json(body: Any, status: int = 200) -> Response:
    return Response(wire.dumps(body), status=status, content_type="application/json")


def error_response(err: SoratError) -> Response:
    return _json(err.body(), err.status)


def host_name(host: str) -> str:
    """``Host`` without its port, lower-cased: ``[::1]:8080`` → ``[::1]``."""
    host = host.strip().lower()
    if host.startswith("["):
        end = host.find("]")
        port = host[end + 1 :] if end > 0 else "x"
        if port and not (port[0] == ":" and port[1:].isdigit()):
            return ""  # "[::1]evil.com" is not [::1]
        return host[: end + 1]
    name, sep, port = host.rpartition(":")
    return name if sep and port.isdigit() else host


def create_app(rt: Runtime) -> Quart:
    app = Quart("sorat_daemon")
    app.config.update(
        MAX_CONTENT_LENGTH=MAX_BODY, RESPONSE_TIMEOUT=None, BODY_TIMEOUT=60, PROVIDE_AUTOMATIC_OPTIONS=False
    )
    app.runtime = rt  # type: ignore[attr-defined]
    # No redirects: "//" or a trailing slash in a session path is an error, never a 308 to another path.
    app.url_map.merge_slashes = False
    app.url_map.strict_slashes = False
    server = rt.settings.server
    allowed_hosts = LOCAL_HOSTS | set(server.allowed_hosts)
    allowed_origins = frozenset(server.allowed_origins)

    def origin_allowed(origin: str | None) -> bool:
        return origin is None or origin in allowed_origins

    @app.before_request
    async def guard() -> Response | None:
        g.start = time.perf_counter()
        headers = request.headers
        host = headers.get("Host", "")
        target = request.scope.get("raw_path") or b"/"
        if not target.startswith(b"/"):  # absolute-form: the target's authority names the server, not Host
            parts = target.split(b"/", 3)
            host = parts[2].decode("latin-1") if len(parts) > 2 and parts[0].endswith(b":") else ""
        if host_name(host) not in allowed_hosts and host.strip().lower() not in allowed_hosts:
            raise PermissionDenied(
                "Host header not allowed; add it to [server] allowed_hosts in config.toml to accept it"
            )
        origins = headers.getlist("Origin")
        origin = origins[0] if origins else None
        if len(origins) > 1 or not origin_allowed(origin):
            raise PermissionDenied(
                "Origin not allowed; add it to [server] allowed_origins in config.toml to accept it"
            )
        if request.method == "OPTIONS":  # a CORS preflight, on any path: browsers send it without a token
            return Response(b"", status=204)
        if request.path == "/health":
            return None
        auth = headers.getlist("Authorization")
        scheme, _, token = (auth[0] if len(auth) == 1 else "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), rt.token.encode()):
            raise AuthError("Invalid or missing bearer token; run `sorat token` to print it")
        length = request.content_length
        if length is not None and length > MAX_BODY:
            raise PayloadTooLarge("Request body larger than 16 MiB")
        return None

    @app.after_request
    async def finish(response: Response) -> Response:
        origin = request.headers.get("Origin")
        if origin is not None and origin in allowed_origins:
            response.headers["Access-Control-Allow-Origin"] = origin
            response.headers["Vary"] = "Origin"
            response.headers["Access-Control-Expose-Headers"] = "X-Session-ID"
            if request.method == "OPTIONS":
                response.headers["Access-Control-Allow-Methods"] = "GET, POST, DELETE, OPTIONS"
                response.headers["Access-Control-Allow-Headers"] = CORS_ALLOW_HEADERS
                response.headers["Access-Control-Max-Age"] = "600"
        sid = g.get("session_id")
        if sid:
            response.headers["X-Session-ID"] = sid
        if not g.get("streaming"):
            _access(request.method, request.path, response.status_code, g.get("start"), sid)
        return response

    async def settle_body(resp: Response) -> Response:
        """Read an unread small body before answering early (401, 403, 405…), so the connection can be
        reused; a large one is left unread and the connection closed, which the client is told."""
        length = request.content_length
        if length:
            if length <= 1024 * 1024:
                await request.get_data(cache=False)
            else:
                resp.headers["Connection"] = "close"
        return resp

    @app.errorhandler(SoratError)
    async def sorat_error(err: SoratError) -> Response:
        return await settle_body(error_response(err))

    @app.errorhandler(HTTPException)
    async def http_error(err: HTTPException) -> Response:
        status = err.code or 500
        kind = _HTTP_TYPES.get(status, RequestError if status < 500 else SoratError)
        message = {
            404: f"No route {request.path}",
            405: f"Method {request.method} not allowed on {request.path}",
        }
        out = kind(message.get(status, err.description or err.name))
        resp = _json(out.body(), status)
        if status == 405 and err.valid_methods:  # type: ignore[attr-defined]
            resp.headers["Allow"] = ", ".join(err.valid_methods)  # type: ignore[attr-defined]
        return await settle_body(resp)

    @app.errorhandler(Exception)
    async def bug(err: Exception) -> Response:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return error_response(SoratError("Internal server error; see sorat's log"))

    @app.get("/health")
    async def health() -> Response:
        return _json({"status": "ok", "version": __version__})

    @app.get("/openapi.json")
    async def openapi() -> Response:
        return Response(openapi_doc(), content_type="application/json")

    @app.get("/v1/models")
    async def models() -> Response:
        active = rt.active_model
        owners = dict(rt.pool.models())
        data = [
            {
                "id": active,
                "object": "model",
                "created": CREATED,
                "owned_by": owners.get(active, rt.pool.default_owner()),
            },
            {"id": "sorat-agent", "object": "model", "created": CREATED, "owned_by": "sorat"},
        ]
        data += [
            {"id": m, "object": "model", "created": CREATED, "owned_by": owner}
            for m, owner in owners.items()
            if m not in (active, "sorat-agent")
        ]
        return _json({"object": "list", "data": data})

    @app.get("/v1/sessions")
    async def list_sessions() -> Response:
        args = request.args
        try:
            limit = int(args.get("limit", "100"))
        except ValueError:
            raise RequestError("limit must be an integer from 1 to 1000", param="limit") from None
        if not 1 <= limit <= 1000:
            raise RequestError("limit must be an integer from 1 to 1000", param="limit")
        rows, has_more = await rt.store.list(limit, args.get("after"))
        return _json(
            {
                "object": "list",
                "data": rows,
                "first_id": rows[0]["id"] if rows else None,
                "last_id": rows[-1]["id"] if rows else None,
                "has_more": has_more,
            }
        )

    @app.get("/v1/sessions/<path:session_id>")
    async def get_session(session_id: str) -> Response:
        superseded = request.args.get("include_superseded", "").lower() in ("1", "true")
        found = await rt.store.get(session_id, include_superseded=superseded)
        if found is None:
            raise NotFound(f"No session {session_id!r}")
        return _json(found)

    @app.delete("/v1/sessions/<path:session_id>")
    async def delete_session(session_id: str) -> Response:
        if not await rt.store.delete(session_id):
            raise NotFound(f"No session {session_id!r}")
        return Response(b"", status=204)

    @app.post("/v1/chat/completions")
    async def chat() -> Response:
        body: bytes = await request.get_data(cache=False, as_text=False)  # type: ignore[assignment]
        if len(body) > MAX_BODY:
            raise PayloadTooLarge("Request body larger than 16 MiB")
        req = wire.parse_chat_request(body)
        events_mode = (
            request.headers.get("X-Sorat-Tool-Events", rt.agent_settings.tool_events).strip().lower()
        )
        if events_mode not in TOOL_EVENTS:  # the same choices as [agent] tool_events
            raise RequestError(
                "X-Sorat-Tool-Events must be tool_calls, reasoning or none", param="X-Sorat-Tool-Events"
            )
        provider, model = rt.pool.resolve(req.model, rt.active_model)
        toolset = rt.tools.current()
        stack = contextlib.AsyncExitStack()
        turn = await stack.enter_async_context(
            rt.store.turn(request.headers.get("X-Session-ID"), req.messages, model=model)
        )
        g.session_id = turn.id
        try:
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
            if not req.stream:
                try:
                    done = await _drain(events)
                finally:
                    await events.aclose()
                    await stack.aclose()
                rt.after_answer(turn, model, done.message)
                cid = wire.new_id()
                message = dict(done.message)
                return _json(
                    wire.completion(cid, int(time.time()), model, message, done.finish_reason, done.usage)
                )
            try:
                first = await anext(events)  # headers go out when the model's first answer begins
            except BaseException:
                await events.aclose()
                await stack.aclose()
                raise
        except BaseException:
            await stack.aclose()
            raise
        g.streaming = True
        frames = _frames(rt, first, events, stack, turn, model, req, events_mode, g.start)
        response = Response(frames, content_type="text/event-stream")
        response.headers["Cache-Control"] = "no-cache"
        response.headers["X-Accel-Buffering"] = "no"
        response.timeout = None
        return response

    return app


@functools.cache
def openapi_doc() -> bytes:
    """The API's description (``openapi.json`` beside this module), read on first use."""
    doc = wire.loads((importlib.resources.files("sorat_daemon") / "openapi.json").read_bytes())
    doc["info"]["version"] = __version__
    return wire.dumps(doc)


def _access(
    method: str, path: str, status: int, start: float | None, sid: str | None, note: str = ""
) -> None:
    ms = (time.perf_counter() - start) * 1000 if start else 0.0
    access_log.info("%s %s %d %.1fms session=%s%s", method, path, status, ms, sid or "-", note)


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
    req: wire.ChatRequest,
    mode: str,
    start: float,
) -> AsyncIterator[bytes]:
    w = wire.ChunkWriter(wire.new_id(), int(time.time()), model)
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
                out.append(wire.KEEPALIVE)
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
        _access("POST", "/v1/chat/completions", 200, start, turn.id, f" stream={status}")
    out.append(wire.DONE)
    yield b"".join(out)
