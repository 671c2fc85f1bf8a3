"""The chat page and its turn route: a message in, the agent's events out as they happen.

``POST /ui/turn`` takes ``{"message", "session_id"}`` and drives the same turn pipeline as the API
(``turn.Pipeline``), answering with newline-delimited JSON the page reads with a streaming ``fetch``::

    {"type": "session", "id", "model"}                 first: the session the turn belongs to
    {"type": "text", "text", "round"}                  the answer as it streams (plain text)
    {"type": "html", "round", "html"}                  a round's text complete, as safe markdown HTML
    {"type": "reasoning", "text"}                      the model's own reasoning
    {"type": "tool_call", "id", "name", "arguments"}   an internal tool call starts
    {"type": "tool_result", "id", "output", "error", "duration_ms"}
    {"type": "keepalive"}                              tools still running
    {"type": "done", "finish_reason"} | {"type": "error", "message"}   last

A failure before the answer begins (no provider, say) is an ``error`` line too. *Stop* aborts the
fetch: the connection closes, Quart cancels the response like any client that goes away, and closing
the run saves what was said, as for an API client that disconnects.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator
from typing import Any

from quart import Response, request

from sorat_daemon import agent, wire
from sorat_daemon.errors import NotFound, RequestError, SoratError
from sorat_daemon.sessions import valid_session_id
from sorat_daemon.turn import Pipeline, TurnRequest
from sorat_daemon.ui import view
from sorat_daemon.ui.site import Site

log = logging.getLogger("sorat.ui")

MAX_MESSAGE_CHARS = 1_000_000


async def page(site: Site, session_id: str | None = None) -> Response:
    found: dict[str, Any] | None = None
    if session_id is not None:
        found = await site.rt.store.get(session_id)
        if found is None:
            raise NotFound(f"No session {session_id!r}")
    return site.page(
        "chat.html",
        nav="chat",
        session=found,
        entries=view.conversation(found["messages"]) if found else [],
    )


def _line(obj: dict[str, Any]) -> bytes:
    return wire.dumps(obj) + b"\n"


async def turn(site: Site) -> Response:
    body = await request.get_json(force=True, silent=True)
    if not isinstance(body, dict):
        raise RequestError("The body must be a JSON object with a message")
    message = body.get("message")
    session_id = body.get("session_id") or None
    if not isinstance(message, str) or not message.strip():
        raise RequestError("Write a message first", param="message")
    if len(message) > MAX_MESSAGE_CHARS:
        raise RequestError("The message is too long", param="message")
    if session_id is not None and not (isinstance(session_id, str) and valid_session_id(session_id)):
        raise RequestError("session_id must name a session", param="session_id")
    req = TurnRequest(messages=[{"role": "user", "content": message}], stream=True, session_id=session_id)
    resp = Response(_events(site, req), content_type="application/x-ndjson")
    resp.timeout = None  # an agent run may take many minutes
    return resp


async def _events(site: Site, req: TurnRequest) -> AsyncGenerator[bytes, None]:
    """The turn begins with the body's first read, not before: a response cancelled before its body
    began (the page left at once) holds no run, and so no session lock, that nothing would close."""
    rt = site.rt
    said: list[str] = []  # the current round's text, rendered as markdown once the round ends
    current = 0

    def rendered() -> bytes:
        html = _line({"type": "html", "round": current, "html": site.markdown("".join(said))})
        said.clear()
        return html

    try:
        run = await Pipeline(rt).begin(req)
    except SoratError as e:
        yield _line({"type": "error", "message": e.message})
        return
    except Exception:
        log.exception("the UI's turn could not start")
        yield _line({"type": "error", "message": "Internal server error; see sorat's log"})
        return
    rt.activity.begin()  # titles give way to answers in flight
    try:
        yield _line({"type": "session", "id": run.session_id, "model": run.model})
        async for ev in run:
            if isinstance(ev, agent.Text):
                if ev.round != current and said:
                    yield rendered()
                current = ev.round
                said.append(ev.text)
                yield _line({"type": "text", "text": ev.text, "round": ev.round})
            elif isinstance(ev, agent.Reasoning):
                yield _line({"type": "reasoning", "text": ev.text, "round": ev.round})
            elif isinstance(ev, agent.ToolCall):
                if said:
                    yield rendered()
                args = view.pretty_json(ev.arguments)
                yield _line({"type": "tool_call", "id": ev.id, "name": ev.name, "arguments": args})
            elif isinstance(ev, agent.ToolResult):
                out = view.Output.of(ev.output)
                yield _line(
                    {
                        "type": "tool_result",
                        "id": ev.id,
                        "output": out.text,
                        "long": out.long,
                        "preview": out.preview,
                        "error": view.is_error(ev.output),
                        "duration_ms": round(ev.duration_ms, 1),
                    }
                )
            elif isinstance(ev, agent.KeepAlive):
                yield _line({"type": "keepalive"})
            elif isinstance(ev, agent.Done):
                if said:
                    yield rendered()
                yield _line({"type": "done", "finish_reason": ev.finish_reason})
    except SoratError as e:
        yield _line({"type": "error", "message": e.message})
    except Exception:
        log.exception("the UI's turn failed")
        yield _line({"type": "error", "message": "Internal server error; see sorat's log"})
    finally:
        try:
            await run.aclose()  # saved, also when the page stopped it
        finally:
            rt.activity.end()
