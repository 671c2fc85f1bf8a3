"""The Quart app: routes, the auth/Host/Origin guard, and the one place errors become OpenAI JSON.

Long-lived resources (provider pool, session store, tools, title worker) live on ``Runtime``, which
the daemon builds while serving and hangs on ``app.runtime``.
"""

from __future__ import annotations

import functools
import hmac
import importlib.resources
import logging
import time
from typing import TYPE_CHECKING, Any

from quart import Quart, Response, g, request
from werkzeug.exceptions import HTTPException

from sorat_daemon import __version__, wire
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
BODY_TIMEOUT = 60.0  # a client that stops sending its body mid-way
SETTLE_LIMIT = 1024 * 1024  # an early error still reads a body up to this, so the connection stays usable
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


class Guard:
    """What every request must pass (Host, Origin, bearer token, body size) and the CORS headers its
    answer gets: one definition for the Quart routes and the chat endpoint's fast path."""

    def __init__(self, rt: Runtime) -> None:
        self._rt = rt
        server = rt.settings.server
        self.allowed_hosts = LOCAL_HOSTS | set(server.allowed_hosts)
        self.allowed_origins = frozenset(server.allowed_origins)

    def check(
        self,
        method: str,
        path: str,
        target: bytes,
        host: str,
        origins: list[str],
        auths: list[str],
        length: int | None,
    ) -> bool:
        """Raises the request's SoratError; True for a CORS preflight (answered 204 without a token)."""
        if not target.startswith(b"/"):  # absolute-form: the target's authority names the server, not Host
            parts = target.split(b"/", 3)
            host = parts[2].decode("latin-1") if len(parts) > 2 and parts[0].endswith(b":") else ""
        allowed_hosts = self.allowed_hosts
        if host_name(host) not in allowed_hosts and host.strip().lower() not in allowed_hosts:
            raise PermissionDenied(
                "Host header not allowed; add it to [server] allowed_hosts in config.toml to accept it"
            )
        if len(origins) > 1 or (origins and origins[0] not in self.allowed_origins):
            raise PermissionDenied(
                "Origin not allowed; add it to [server] allowed_origins in config.toml to accept it"
            )
        if method == "OPTIONS":  # a CORS preflight, on any path: browsers send it without a token
            return True
        if path == "/health":
            return False
        scheme, _, token = (auths[0] if len(auths) == 1 else "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            token.strip().encode(), self._rt.token.encode()
        ):
            raise AuthError("Invalid or missing bearer token; run `sorat token` to print it")
        if length is not None and length > MAX_BODY:
            raise PayloadTooLarge("Request body larger than 16 MiB")
        return False

    def cors(self, origin: str | None, method: str) -> list[tuple[str, str]]:
        """The CORS headers for an answer to ``origin`` (none unless it is allowed)."""
        if origin is None or origin not in self.allowed_origins:
            return []
        headers = [
            ("Access-Control-Allow-Origin", origin),
            ("Vary", "Origin"),
            ("Access-Control-Expose-Headers", "X-Session-ID"),
        ]
        if method == "OPTIONS":
            headers += [
                ("Access-Control-Allow-Methods", "GET, POST, DELETE, OPTIONS"),
                ("Access-Control-Allow-Headers", CORS_ALLOW_HEADERS),
                ("Access-Control-Max-Age", "600"),
            ]
        return headers


def create_app(rt: Runtime) -> Quart:
    """The app: POST /v1/chat/completions is served by ``chat.ChatEndpoint`` in front of Quart (the hot
    path, without Quart's request and response machinery); Quart serves every other route."""
    from sorat_daemon.chat import PATH, ChatEndpoint

    app = Quart("sorat_daemon")
    app.config.update(
        MAX_CONTENT_LENGTH=MAX_BODY,
        RESPONSE_TIMEOUT=None,
        BODY_TIMEOUT=BODY_TIMEOUT,
        PROVIDE_AUTOMATIC_OPTIONS=False,
    )
    app.runtime = rt  # type: ignore[attr-defined]
    # No redirects: "//" or a trailing slash in a session path is an error, never a 308 to another path.
    app.url_map.merge_slashes = False
    app.url_map.strict_slashes = False
    guard = Guard(rt)
    quart_asgi = app.asgi_app
    chat = ChatEndpoint(rt, guard)

    async def asgi(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] == PATH:
            await chat(scope, receive, send)
        else:
            await quart_asgi(scope, receive, send)

    app.asgi_app = asgi  # type: ignore[method-assign]

    @app.before_request
    async def check() -> Response | None:
        g.start = time.perf_counter()
        headers = request.headers
        preflight = guard.check(
            request.method,
            request.path,
            request.scope.get("raw_path") or b"/",
            headers.get("Host", ""),
            headers.getlist("Origin"),
            headers.getlist("Authorization"),
            request.content_length,
        )
        return Response(b"", status=204) if preflight else None

    @app.after_request
    async def finish(response: Response) -> Response:
        for name, value in guard.cors(request.headers.get("Origin"), request.method):
            response.headers[name] = value
        _access(request.method, request.path, response.status_code, g.get("start"), None)
        return response

    async def settle_body(resp: Response) -> Response:
        """Read an unread small body before answering early (401, 403, 405…), so the connection can be
        reused; a large one is left unread and the connection closed, which the client is told."""
        length = request.content_length
        if length:
            if length <= SETTLE_LIMIT:
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
