"""POST /v1/messages and /v1/messages/count_tokens: the Anthropic Messages adapter on the endpoint
machinery. The token may come as ``x-api-key``; any query string (Claude Code's ``?beta=true``) is fine;
every error on these paths, the guard's included, has Anthropic's shape.

Sessions: ``X-Session-ID``; else Claude Code's ``X-Claude-Code-Session-Id`` (constant per conversation,
kept across ``claude -c``) when it is a valid session id; else the history matching. A Claude Code side call
(that header and no ``tools``: its title and topic requests) is one plain model call, stored nowhere.

Claude Code's subagents (its Agent tool) send their own conversations under the same header, with a system
prompt of their own. The header's session belongs to the conversation that first brought it (by its
top-level system prompt); another one goes by the history matching, so a subagent gets a session of its
own instead of superseding the main conversation's messages, and back again on the next main turn.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from typing import TYPE_CHECKING

from sorat_daemon import wire
from sorat_daemon.errors import SoratError
from sorat_daemon.http.asgi import Reply
from sorat_daemon.http.endpoint import Endpoint, Head, TurnEndpoint
from sorat_daemon.http.guard import Guard
from sorat_daemon.protocols.messages import CHARS_PER_TOKEN, count_tokens, parse_messages_request
from sorat_daemon.protocols.messages_render import MessagesRenderer, error_json
from sorat_daemon.protocols.resent import Resent
from sorat_daemon.sessions import valid_session_id
from sorat_daemon.turn import Pipeline, Run, TurnRequest

if TYPE_CHECKING:
    from sorat_daemon.titles import Activity

log = logging.getLogger("sorat.server")

CLAUDE_CODE_SESSION = b"x-claude-code-session-id"
_skipped_logged: set[str] = set()


class Owners:
    """Which conversation (by its system prompt's hash) owns a Claude Code session id; the most recent
    ``size`` ids, in memory: after a restart, the first conversation to come back claims its id again."""

    def __init__(self, size: int = 4096) -> None:
        self._owners: OrderedDict[str, int] = OrderedDict()
        self._size = size

    def claims(self, session_id: str, system_hash: int) -> bool:
        key = session_id.lower()  # ids that differ only in case are the same session
        owner = self._owners.get(key)
        if owner is not None and owner != system_hash:
            return False
        self.take(key, system_hash)
        return True

    def take(self, session_id: str, system_hash: int) -> None:
        key = session_id.lower()
        self._owners[key] = system_hash
        self._owners.move_to_end(key)
        if len(self._owners) > self._size:
            self._owners.popitem(last=False)


class AnthropicEndpoint(Endpoint):
    """Anthropic's error shape, and no retry of a request whose tools already ran (the SDKs retry 5xx
    unless ``x-should-retry: false``; a retried request would run the tools again)."""

    def error_body(self, err: SoratError) -> bytes:
        return wire.dumps(error_json(err))

    def error_headers(self, err: SoratError, run: Run | None) -> list[tuple[bytes, bytes]]:
        headers = super().error_headers(err, run)
        if run is not None and run.tools_ran:
            headers.append((b"x-should-retry", b"false"))
        return headers


class MessagesEndpoint(AnthropicEndpoint, TurnEndpoint):
    path = "/v1/messages"
    api_key = True
    capture = frozenset({CLAUDE_CODE_SESSION})

    def __init__(self, guard: Guard, activity: Activity, pipeline: Pipeline) -> None:
        super().__init__(guard, activity, pipeline)
        self.owners = Owners()
        self._resent = Resent("messages")  # Claude Code resends its whole conversation every turn

    async def handle(self, head: Head, body: bytes, reply: Reply) -> None:
        req = parse_messages_request(body, self._resent)
        for name in req.skipped_tools:
            if name not in _skipped_logged:
                _skipped_logged.add(name)
                log.info("left out the client's tool %s: an Anthropic server tool without input_schema", name)
        claude_code = head.headers.get(CLAUDE_CODE_SESSION)
        session_id = head.session_id
        side_call = claude_code is not None and not req.declared_tools
        owners = self.owners
        if claude_code is not None and not valid_session_id(claude_code):
            claude_code = None
        matched = False  # the header's session, unless another conversation owns it
        if session_id is None and claude_code is not None and not side_call:
            matched = owners.claims(claude_code, req.system_hash)
            session_id = claude_code if matched else None
        turn = TurnRequest(
            messages=req.messages,
            model=req.model,
            stream=req.stream,
            client_tools=req.tools,
            tool_choice=req.tool_choice,
            params=req.params,
            session_id=None if side_call else session_id,
            tool_events=head.tool_events,
            persist=not side_call,
            use_tools=not side_call,
        )
        estimate = len(body) // CHARS_PER_TOKEN  # when the provider reports no usage

        def renderer(run: Run) -> MessagesRenderer:
            found = run.session_id
            if claude_code and not matched and found and found.lower() == claude_code.lower():
                owners.take(claude_code, req.system_hash)  # its system prompt changed; its history matched
            return MessagesRenderer(run.model, run.tool_events, estimate)

        await self.serve_turn(turn, renderer, reply)


class CountTokensEndpoint(AnthropicEndpoint):
    """A local estimate, never a model call: Claude Code's ``/context`` sends 14 of these at once."""

    path = "/v1/messages/count_tokens"
    api_key = True

    async def handle(self, head: Head, body: bytes, reply: Reply) -> None:
        await reply.json(200, wire.dumps({"input_tokens": count_tokens(body)}))
