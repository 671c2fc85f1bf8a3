"""The routes that are not agent turns, on Quart: health, the OpenAPI document, models (the list and
one by id), sessions."""

from __future__ import annotations

import functools
import importlib.resources
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from quart import Quart, Response, request

from sorat_daemon import __version__, wire
from sorat_daemon.errors import NotFound, RequestError
from sorat_daemon.types import JSON

if TYPE_CHECKING:
    from sorat_daemon.runtime import Runtime

CREATED = 1700000000


@functools.cache
def openapi_doc() -> bytes:
    """The API's description (``openapi.json`` in the package), read on first use."""
    doc = wire.loads((importlib.resources.files("sorat_daemon") / "openapi.json").read_bytes())
    doc["info"]["version"] = __version__
    return wire.dumps(doc)


def page_limit(args: Any, default: int = 100) -> int:
    try:
        limit = int(args.get("limit", str(default)))
    except ValueError:
        raise RequestError("limit must be an integer from 1 to 1000", param="limit") from None
    if not 1 <= limit <= 1000:
        raise RequestError("limit must be an integer from 1 to 1000", param="limit")
    return limit


def model_list(rt: Runtime) -> list[JSON]:
    """GET /v1/models' entries: the active model, ``sorat-agent``, then every model a provider offers."""
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
    return data


def register(app: Quart, rt: Runtime, json: Callable[..., Response]) -> None:
    @app.get("/health")
    async def health() -> Response:
        return json({"status": "ok", "version": __version__})

    @app.get("/openapi.json")
    async def openapi() -> Response:
        return Response(openapi_doc(), content_type="application/json")

    @app.get("/v1/models")
    async def models() -> Response:
        return json({"object": "list", "data": model_list(rt)})

    # <path:…>: OpenRouter's ids hold a slash (openai/gpt-4o), and OpenAI's SDKs send it unescaped
    @app.get("/v1/models/<path:model_id>")
    async def model(model_id: str) -> Response:
        found = next((m for m in model_list(rt) if m["id"] == model_id), None)
        if found is None:
            raise NotFound(f"The model {model_id!r} does not exist", param="model", code="model_not_found")
        return json(found)

    @app.get("/v1/sessions")
    async def list_sessions() -> Response:
        args = request.args
        rows, has_more = await rt.store.list(page_limit(args), args.get("after"))
        return json(
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
        return json(found)

    @app.delete("/v1/sessions/<path:session_id>")
    async def delete_session(session_id: str) -> Response:
        if not await rt.store.delete(session_id):
            raise NotFound(f"No session {session_id!r}")
        return Response(b"", status=204)
