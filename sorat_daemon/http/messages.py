"""POST /v1/messages and /v1/messages/count_tokens: the Anthropic Messages adapter on the endpoint
machinery. The token may come as ``x-api-key``; any query string (Claude Code's ``?beta=true``) is fine;
every error on these paths, the guard's included, has Anthropic's shape.

Sessions: ``X-Session-ID``; else Claude Code's ``X-Claude-Code-Session-Id`` (constant per conversation,
kept across ``claude -c``) when it is a valid session id; else the history matching. A Claude Code side call
(that header and no ``tools``: its title and topic requests) is one plain model call, stored nowhere.
"""

from __future__ import annotations

import logging

from sorat_daemon import wire
from sorat_daemon.errors import SoratError
from sorat_daemon.http.asgi import Reply
from sorat_daemon.http.endpoint import Endpoint, Head, TurnEndpoint
from sorat_daemon.protocols.messages import CHARS_PER_TOKEN, count_tokens, parse_messages_request
from sorat_daemon.protocols.messages_render import MessagesRenderer, error_json
from sorat_daemon.sessions import valid_session_id
from sorat_daemon.turn import Run, TurnRequest

log = logging.getLogger("sorat.server")

CLAUDE_CODE_SESSION = b"x-claude-code-session-id"
_skipped_logged: set[str] = set()


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

    async def handle(self, head: Head, body: bytes, reply: Reply) -> None:
        req = parse_messages_request(body)
        for name in req.skipped_tools:
            if name not in _skipped_logged:
                _skipped_logged.add(name)
                log.info("left out the client's tool %s: an Anthropic server tool without input_schema", name)
        claude_code = head.headers.get(CLAUDE_CODE_SESSION)
        session_id = head.session_id
        if session_id is None and claude_code is not None and valid_session_id(claude_code):
            session_id = claude_code
        side_call = claude_code is not None and not req.declared_tools
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
            return MessagesRenderer(run.model, run.tool_events, estimate)

        await self.serve_turn(turn, renderer, reply)


class CountTokensEndpoint(AnthropicEndpoint):
    """A local estimate, never a model call: Claude Code's ``/context`` sends 14 of these at once."""

    path = "/v1/messages/count_tokens"
    api_key = True

    async def handle(self, head: Head, body: bytes, reply: Reply) -> None:
        await reply.json(200, wire.dumps({"input_tokens": count_tokens(body)}))
