"""POST /v1/chat/completions: the Chat Completions adapter on the endpoint machinery."""

from __future__ import annotations

from sorat_daemon.http.asgi import Reply
from sorat_daemon.http.endpoint import Head, TurnEndpoint
from sorat_daemon.protocols.chat import ChatRenderer, parse_chat_request
from sorat_daemon.turn import Run, TurnRequest


class ChatEndpoint(TurnEndpoint):
    path = "/v1/chat/completions"

    async def handle(self, head: Head, body: bytes, reply: Reply) -> None:
        req = parse_chat_request(body)
        turn = TurnRequest(
            messages=req.messages,
            model=req.model,
            stream=req.stream,
            client_tools=req.tools,
            tool_choice=req.tool_choice,
            params=req.params,
            session_id=head.session_id,
            tool_events=head.tool_events,
        )

        def renderer(run: Run) -> ChatRenderer:
            return ChatRenderer(run.model, run.tool_events, req.include_usage)

        await self.serve_turn(turn, renderer, reply)
