"""/v1/conversations (OpenAI's Conversations API) on Quart. A conversation is a session: its id is a
session id, its items are the session's visible conversation as Responses items, and deleting it
deletes the session. Only the metadata lives apart, in the response store.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from quart import Quart, Response, request

from sorat_daemon import wire
from sorat_daemon.errors import NotFound, RequestError
from sorat_daemon.http.responses import page
from sorat_daemon.protocols.responses_items import items_of, parse_items, with_system
from sorat_daemon.protocols.responses_out import new_id
from sorat_daemon.types import JSON, Message

if TYPE_CHECKING:
    from sorat_daemon.runtime import Runtime


async def _body() -> JSON:
    raw = await request.get_data()
    if not raw.strip():
        return {}
    return wire.json_object(raw)


def _metadata(value: Any) -> dict[str, str] | None:
    """OpenAI's metadata: at most 16 string pairs (keys ≤ 64 chars, values ≤ 512)."""
    if value is None:
        return None
    if (
        not isinstance(value, dict)
        or len(value) > 16
        or not all(isinstance(k, str) and len(k) <= 64 for k in value)
        or not all(isinstance(v, str) and len(v) <= 512 for v in value.values())
    ):
        raise RequestError(
            "metadata must be an object of at most 16 strings (keys up to 64 characters, values up to 512)",
            param="metadata",
        )
    return value


def _new_messages(items: Any, where: str) -> list[Message]:
    if items is None:
        return []
    if not isinstance(items, list):
        raise RequestError(f"'{where}' must be an array of items", param=where)
    if len(items) > 20:  # OpenAI's limit per call
        raise RequestError(f"'{where}' may hold at most 20 items", param=where)
    system, messages, _ = parse_items(items, where)
    return with_system(system, messages)


def register(app: Quart, rt: Runtime, json: Callable[..., Response]) -> None:
    async def conversation(conversation_id: str) -> JSON:
        found = await rt.store.get(conversation_id)
        if found is None:
            raise NotFound(f"Conversation with id '{conversation_id}' not found.")
        return found

    async def shape(found: JSON) -> JSON:
        metadata = await rt.responses.metadata(found["id"])
        return {
            "id": found["id"],
            "object": "conversation",
            "created_at": found["created_at"],
            "metadata": metadata,
        }

    @app.post("/v1/conversations")
    async def create_conversation() -> Response:
        data = await _body()
        metadata = _metadata(data.get("metadata")) or {}
        messages = _new_messages(data.get("items"), "items")
        conversation_id = new_id("conv")
        created = time.time()
        async with rt.store.turn(conversation_id, messages, model=""):
            pass  # the items are written as the turn begins; no model call
        if metadata:
            await rt.responses.set_metadata(conversation_id, metadata, created)
        return json(
            {
                "id": conversation_id,
                "object": "conversation",
                "created_at": int(created),
                "metadata": metadata,
            }
        )

    @app.get("/v1/conversations/<conversation_id>")
    async def get_conversation(conversation_id: str) -> Response:
        return json(await shape(await conversation(conversation_id)))

    @app.post("/v1/conversations/<conversation_id>")
    async def update_conversation(conversation_id: str) -> Response:
        data = await _body()
        found = await conversation(conversation_id)
        metadata = _metadata(data.get("metadata"))
        if metadata is None:
            raise RequestError("Missing required parameter: 'metadata'", param="metadata")
        await rt.responses.set_metadata(found["id"], metadata, found["created_at"])
        return json(await shape(found))

    @app.delete("/v1/conversations/<conversation_id>")
    async def delete_conversation(conversation_id: str) -> Response:
        if not await rt.store.delete(conversation_id):
            raise NotFound(f"Conversation with id '{conversation_id}' not found.")
        await rt.responses.forget_conversation(conversation_id)
        return json({"id": conversation_id, "object": "conversation.deleted", "deleted": True})

    async def visible(conversation_id: str) -> list[Message]:
        history = await rt.store.visible(conversation_id)
        if history is None:
            raise NotFound(f"Conversation with id '{conversation_id}' not found.")
        return history

    @app.get("/v1/conversations/<conversation_id>/items")
    async def list_items(conversation_id: str) -> Response:
        return json(page(items_of(await visible(conversation_id)), request.args))

    @app.get("/v1/conversations/<conversation_id>/items/<item_id>")
    async def get_item(conversation_id: str, item_id: str) -> Response:
        for item in items_of(await visible(conversation_id)):
            if item["id"] == item_id:
                return json(item)
        raise NotFound(f"Item with id '{item_id}' not found.")

    @app.post("/v1/conversations/<conversation_id>/items")
    async def add_items(conversation_id: str) -> Response:
        data = await _body()
        if "items" not in data:
            raise RequestError("Missing required parameter: 'items'", param="items")
        messages = _new_messages(data["items"], "items")
        found = await conversation(conversation_id)
        history = await visible(conversation_id)
        # The whole conversation and the new items after it: the store adds exactly the new ones.
        async with rt.store.turn(found["id"], history + messages, model=found["model"]):
            pass
        added = items_of(history + messages)[len(items_of(history)) :]
        return json({"object": "list", "data": added, "first_id": added[0]["id"] if added else None,
                     "last_id": added[-1]["id"] if added else None, "has_more": False})  # fmt: skip
