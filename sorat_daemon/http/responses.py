"""/v1/responses: the OpenAI Responses adapter on the endpoint machinery (``POST``, the hot path), and
the Quart routes that read and delete stored responses.

The session of a request: ``X-Session-ID``; else ``previous_response_id`` (that response's session, its
visible conversation up to that response in front of the new input: answering an older response
branches there, and the store supersedes what followed, as an edit would); else ``conversation`` (a
session id; its visible conversation in front); else the store's history matching, which a client
resending everything with ``store: false`` (Codex) continues.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import orjson
from quart import Quart, Response, request

from sorat_daemon.errors import NotFound, RequestError
from sorat_daemon.http.asgi import Reply
from sorat_daemon.http.endpoint import Head, TurnEndpoint
from sorat_daemon.protocols import responses_in, responses_out
from sorat_daemon.protocols.resent import Resent
from sorat_daemon.protocols.responses_in import ResponsesRequest
from sorat_daemon.protocols.responses_items import with_system
from sorat_daemon.sessions import valid_session_id
from sorat_daemon.sessions.responses import ResponseRecord
from sorat_daemon.turn import Pipeline, Run, TurnRequest
from sorat_daemon.types import JSON, Message

if TYPE_CHECKING:
    from sorat_daemon.http.guard import Guard
    from sorat_daemon.runtime import Runtime
    from sorat_daemon.titles import Activity

log = logging.getLogger("sorat.server")


def continued(
    history: list[Message], system: list[str], messages: list[Message]
) -> tuple[list[str], list[Message]]:
    """A stored visible conversation with a request's instructions and new messages after it. Without
    instructions of its own, the request keeps the session's (the store puts them in front)."""
    rest = [m for m in history if m.get("role") not in ("system", "developer")]
    return system, rest + messages


def _orphans(messages: list[Message]) -> list[str]:
    """call_ids of tool results that answer no call before them."""
    calls: set[Any] = set()
    out: list[str] = []
    for m in messages:
        if m.get("role") == "assistant":
            calls.update(c.get("id") for c in m.get("tool_calls") or () if isinstance(c, dict))
        elif m.get("role") == "tool" and m.get("tool_call_id") not in calls:
            out.append(str(m.get("tool_call_id")))
    return out


def _no_call(call_id: str) -> RequestError:
    return RequestError(f"No tool call found for function call output with call_id {call_id}.", param="input")


def input_items(response_id: str, request: bytes) -> list[JSON]:
    """A stored response's input items, as ``input_items`` lists them, from the request that made it
    (kept as sent: nothing is re-encoded on the request path). Each an object with a ``type`` and an
    ``id``: the client's, else one made from the response's and the item's place, the same every time."""
    try:
        raw = orjson.loads(request).get("input")
    except (orjson.JSONDecodeError, AttributeError):
        return []
    if isinstance(raw, str):
        raw = [{"type": "message", "role": "user", "content": raw}]
    out = []
    tail = response_id.removeprefix("resp_")
    for i, item in enumerate(raw if isinstance(raw, list) else ()):
        if not isinstance(item, dict):
            continue
        item = dict(item)
        kind = item.setdefault("type", "message")
        if kind == "message" and isinstance(item.get("content"), str):
            part = "output_text" if item.get("role") == "assistant" else "input_text"
            item["content"] = [{"type": part, "text": item["content"]}]
        if "id" not in item:
            prefix = {"message": "msg", "function_call_output": "fco", "function_call": "fc"}.get(
                kind, "item"
            )
            item["id"] = f"{prefix}_{tail}{i:04d}"
        try:
            orjson.dumps(item)
        except TypeError:  # nested deeper than orjson writes: an item sorat skipped anyway
            continue
        out.append(item)
    return out


class ResponsesEndpoint(TurnEndpoint):
    path = "/v1/responses"

    def __init__(self, guard: Guard, activity: Activity, pipeline: Pipeline, rt: Runtime) -> None:
        super().__init__(guard, activity, pipeline)
        self._rt = rt
        self._skipped: set[str] = set()  # tool types already logged as left out
        self._resent = Resent("input")  # Codex resends its whole thread every turn

    async def handle(self, head: Head, body: bytes, reply: Reply) -> None:
        req = responses_in.parse_request(body, self._resent)
        self._log_skipped(req.skipped_tools)
        session_id, system, messages = await self._history(req, head.session_id)
        if not messages:
            raise RequestError("'input' must hold at least one item", param="input")
        turn = TurnRequest(
            messages=with_system(system, messages),
            model=req.model,
            stream=req.stream,
            client_tools=req.tools,
            tool_choice=req.tool_choice,
            params=req.params,
            session_id=session_id,
            tool_events=head.tool_events,
        )
        response_id = responses_out.new_id("resp")
        created = int(time.time())
        records = self._rt.responses

        def renderer(run: Run) -> responses_out.ResponsesRenderer:
            h = responses_out.Head(
                response_id,
                created,
                run.model,
                req.echo,
                req.previous_response_id,
                req.conversation,
                req.store,
            )

            def on_end(response: bytes) -> None:
                stored, sent = (response, body) if req.store else (None, None)
                position = run.visible_count
                records.put(ResponseRecord(response_id, run.session_id, position, time.time(), stored, sent))

            return responses_out.ResponsesRenderer(h, run.tool_events, req.client_tools, on_end)

        await self.serve_turn(turn, renderer, reply)

    async def _history(
        self, req: ResponsesRequest, session_id: str | None
    ) -> tuple[str | None, list[str], list[Message]]:
        """(the session to use, system texts, messages): the stored conversation in front when the
        request continues a response or a conversation."""
        store = self._rt.store
        if req.previous_response_id:
            prev = await self._rt.responses.get(req.previous_response_id)
            history = None
            if prev is not None and prev.session_id is not None:
                history = await store.visible(prev.session_id)
            if prev is None or history is None:
                raise RequestError(
                    f"Previous response with id '{req.previous_response_id}' not found.",
                    param="previous_response_id",
                )
            assert prev.session_id is not None
            history = history[: prev.position] if prev.position is not None else history
            system, messages = continued(history, req.system, req.messages)
            session_id = session_id or prev.session_id
        elif req.conversation:
            history = await store.visible(req.conversation) if valid_session_id(req.conversation) else None
            if history is None:
                raise RequestError(
                    f"Conversation with id '{req.conversation}' not found.", param="conversation"
                )
            system, messages = continued(history, req.system, req.messages)
            session_id = session_id or req.conversation
        else:
            # Without a session named, an output must answer a call in the same input: the provider would
            # refuse it anyway, with a message that names neither the item nor the call.
            if req.orphans and session_id is None:
                raise _no_call(req.orphans[0])
            return session_id, req.system, req.messages
        orphans = _orphans(messages)
        if orphans:
            raise _no_call(orphans[0])
        return session_id, system, messages

    def _log_skipped(self, kinds: list[str]) -> None:
        new = sorted(set(kinds) - self._skipped)
        if new:
            self._skipped.update(new)
            hosted = [k for k in new if k in responses_in.HOSTED_TOOLS]
            other = [k for k in new if k not in responses_in.HOSTED_TOOLS]
            log.info(
                "responses: left out tool types a chat provider cannot take: %s%s (sorat's own tools serve"
                " the model; logged once per type)",
                ", ".join(hosted) or "-",
                f"; unknown: {', '.join(other)}" if other else "",
            )


# --- GET/DELETE /v1/responses/{id}, input_items -------------------------------------------------------


def page(items: list[JSON], args: Any) -> JSON:
    """One page of a list of items (``limit`` 1-100, default 20; ``order`` asc|desc, default desc;
    ``after`` an item id), in OpenAI's list shape."""
    raw = args.get("limit", "20")
    try:
        limit = int(raw)
    except ValueError:
        limit = 0
    if not 1 <= limit <= 100:
        raise RequestError("limit must be an integer from 1 to 100", param="limit")
    order = args.get("order", "desc")
    if order not in ("asc", "desc"):
        raise RequestError("order must be asc or desc", param="order")
    ordered = items if order == "asc" else items[::-1]
    start = 0
    after = args.get("after")
    if after is not None:
        ids = [i.get("id") for i in ordered]
        if after not in ids:
            raise RequestError(f"No item with id {after!r} in this list", param="after")
        start = ids.index(after) + 1
    data = ordered[start : start + limit]
    return {
        "object": "list",
        "data": data,
        "first_id": data[0].get("id") if data else None,
        "last_id": data[-1].get("id") if data else None,
        "has_more": start + limit < len(ordered),
    }


def register(app: Quart, rt: Runtime, json: Callable[..., Response]) -> None:
    async def stored(response_id: str) -> ResponseRecord:
        record = await rt.responses.get(response_id)
        if record is None or record.body is None:
            raise NotFound(
                f"No response found with id '{response_id}' (responses made with store: false are not kept)"
            )
        return record

    @app.get("/v1/responses/<response_id>")
    async def get_response(response_id: str) -> Response:
        record = await stored(response_id)
        return Response(record.body, content_type="application/json")

    @app.get("/v1/responses/<response_id>/input_items")
    async def list_input_items(response_id: str) -> Response:
        record = await stored(response_id)
        return json(page(input_items(response_id, record.input or b"{}"), request.args))

    @app.delete("/v1/responses/<response_id>")
    async def delete_response(response_id: str) -> Response:
        await stored(response_id)
        await rt.responses.delete(response_id)
        return json({"id": response_id, "object": "response", "deleted": True})
