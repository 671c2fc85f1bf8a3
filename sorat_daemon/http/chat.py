"""POST /v1/chat/completions: the Chat Completions adapter on the endpoint machinery."""

from __future__ import annotations

from typing import TYPE_CHECKING

from sorat_daemon.http.asgi import Reply
from sorat_daemon.http.endpoint import Head, TurnEndpoint
from sorat_daemon.protocols.chat import ChatRenderer, parse_chat_request
from sorat_daemon.protocols.resent import Resent
from sorat_daemon.turn import Pipeline, Run, TurnRequest

if TYPE_CHECKING:
    from sorat_daemon.http.guard import Guard
    from sorat_daemon.titles import Activity


class ChatEndpoint(TurnEndpoint):
    path = "/v1/chat/completions"

    def __init__(self, guard: Guard, activity: Activity, pipeline: Pipeline) -> None:
        super().__init__(guard, activity, pipeline)
        self._resent = Resent("messages")  # stateless clients resend their history every turn

    async def handle(self, head: Head, body: bytes, reply: Reply) -> None:
        req = parse_chat_request(body, self._resent)
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
