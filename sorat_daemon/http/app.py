"""The app: the protocol endpoints as bare ASGI apps in front of Quart, which serves every other route;
the guard on every request, and the one place Quart's errors become OpenAI JSON.

Long-lived resources live on ``Runtime``, which the daemon builds while serving and hangs on
``app.runtime``.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from quart import Quart, Response, g, request
from werkzeug.exceptions import HTTPException

from sorat_daemon import wire
from sorat_daemon.errors import (
    AuthError,
    NotFound,
    PayloadTooLarge,
    PermissionDenied,
    RequestError,
    SoratError,
)
from sorat_daemon.http import admin, conversations, responses
from sorat_daemon.http.asgi import BODY_TIMEOUT, SETTLE_LIMIT, access
from sorat_daemon.http.chat import ChatEndpoint
from sorat_daemon.http.endpoint import Endpoint
from sorat_daemon.http.guard import MAX_BODY, Guard
from sorat_daemon.http.messages import CountTokensEndpoint, MessagesEndpoint
from sorat_daemon.protocols.messages_render import error_json as anthropic_error
from sorat_daemon.turn import Pipeline
from sorat_daemon.ui.entry import is_ui_path
from sorat_daemon.ui.entry import register as register_ui

if TYPE_CHECKING:
    from sorat_daemon.runtime import Runtime

log = logging.getLogger("sorat.server")

ANTHROPIC_PATHS = "/v1/messages/"
_HTTP_TYPES = {404: NotFound, 403: PermissionDenied, 401: AuthError, 413: PayloadTooLarge}


def json_response(body: Any, status: int = 200) -> Response:
    return Response(wire.dumps(body), status=status, content_type="application/json")


def error_body(err: SoratError) -> Any:
    """OpenAI's error JSON; Anthropic's on the paths under /v1/messages/ that Quart serves (unknown ones)."""
    return anthropic_error(err) if request.path.startswith(ANTHROPIC_PATHS) else err.body()


def error_response(err: SoratError) -> Response:
    return json_response(error_body(err), err.status)


def make_guard(rt: Runtime) -> Guard:
    server = rt.settings.server
    return Guard(lambda: rt.token, server.allowed_hosts, server.allowed_origins)


def create_app(rt: Runtime) -> Quart:
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
    guard = make_guard(rt)
    pipeline = Pipeline(rt)
    endpoints: dict[str, Endpoint] = {}
    for endpoint in (
        ChatEndpoint(guard, rt.activity, pipeline),
        MessagesEndpoint(guard, rt.activity, pipeline),
        CountTokensEndpoint(guard, rt.activity),
        responses.ResponsesEndpoint(guard, rt.activity, pipeline, rt),
    ):
        endpoints[endpoint.path] = endpoint
    app.endpoints = endpoints  # type: ignore[attr-defined]
    quart_asgi = app.asgi_app

    async def asgi(scope: Any, receive: Any, send: Any) -> None:
        endpoint = endpoints.get(scope["path"]) if scope["type"] == "http" else None
        if endpoint is not None:
            await endpoint(scope, receive, send)
        else:
            await quart_asgi(scope, receive, send)

    app.asgi_app = asgi  # type: ignore[method-assign]

    web_ui = register_ui(app, rt, guard, json_response)
    app.web_ui = web_ui  # type: ignore[attr-defined]

    @app.before_request
    async def check() -> Response | None:
        g.start = time.perf_counter()
        if is_ui_path(request.path):  # the UI's own checks: its cookie, never the bearer token
            return await web_ui.check()
        headers = request.headers
        preflight = guard.check(
            request.method,
            request.path,
            request.scope.get("raw_path") or b"/",
            headers.get("Host", ""),
            headers.getlist("Origin"),
            headers.getlist("Authorization"),
            request.content_length,
            headers.get("x-api-key") if request.path.startswith(ANTHROPIC_PATHS) else None,
        )
        return Response(b"", status=204) if preflight else None

    @app.after_request
    async def finish(response: Response) -> Response:
        if is_ui_path(request.path):
            web_ui.secure(response)  # and no CORS headers: no other origin reads the UI
        else:
            for name, value in guard.cors(request.headers.get("Origin"), request.method, request.path):
                response.headers[name] = value
        access(request.method, request.path, response.status_code, g.get("start"), None)
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
        resp = json_response(error_body(out), status)
        if status == 405 and err.valid_methods:  # type: ignore[attr-defined]
            resp.headers["Allow"] = ", ".join(err.valid_methods)  # type: ignore[attr-defined]
        return await settle_body(resp)

    @app.errorhandler(Exception)
    async def bug(err: Exception) -> Response:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return error_response(SoratError("Internal server error; see sorat's log"))

    admin.register(app, rt, json_response)
    responses.register(app, rt, json_response)
    conversations.register(app, rt, json_response)
    return app
