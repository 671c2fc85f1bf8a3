"""The turn pipeline every protocol shares: one internal request in, the agent's events out.

A protocol adapter parses its JSON into a ``TurnRequest``; ``Pipeline.begin`` resolves the model and the
session (history merging happens in the session store), picks the tools, starts the agent and returns a
``Run``, whose events the adapter renders back into its protocol. Closing the run saves the session and
queues its title. Nothing here knows HTTP or any protocol's JSON.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sorat_daemon import agent, wire
from sorat_daemon.config import TOOL_EVENTS
from sorat_daemon.errors import RequestError, SoratError
from sorat_daemon.tools.registry import Toolset
from sorat_daemon.types import JSON, Message

if TYPE_CHECKING:
    from sorat_daemon.runtime import Runtime


@dataclass(slots=True)
class TurnRequest:
    """What a client asked, whatever its protocol: OpenAI chat messages and tools."""

    messages: list[Message]
    model: str | None = None  # None or "" → the active model
    stream: bool = False
    client_tools: list[JSON] = field(default_factory=list)  # OpenAI function tools the client runs itself
    tool_choice: Any = None
    params: JSON = field(default_factory=dict)  # passed to the provider as given
    session_id: str | None = None  # the client named its session
    tool_events: str | None = None  # a per-request override of [agent] tool_events
    persist: bool = True  # False: a side call, stored in no session
    use_tools: bool = True  # False: one plain model call, no internal tools


def tool_events_mode(override: str | None, default: str, client_tools: bool) -> str:
    """How internal tool calls show: ``tool_calls``, ``reasoning`` or ``none``. A client with tools of its
    own never sees ours as calls: it would mistake them for its own."""
    mode = (override or default).strip().lower()
    if mode not in TOOL_EVENTS:  # the same choices as [agent] tool_events
        raise RequestError(
            "X-Sorat-Tool-Events must be tool_calls, reasoning or none", param="X-Sorat-Tool-Events"
        )
    return "reasoning" if client_tools and mode == "tool_calls" else mode


class Run:
    """One running turn: iterate it for the agent's events; ``aclose`` ends it (the session saved)."""

    def __init__(
        self,
        rt: Runtime,
        events: AsyncGenerator[agent.Event, None],
        stack: contextlib.AsyncExitStack,
        turn: Any,
        model: str,
        tool_events: str,
    ) -> None:
        self._rt = rt
        self._events = events
        self._stack = stack
        self._turn = turn
        self.model = model
        self.tool_events = tool_events
        self.session_id: str | None = turn.id if turn is not None else None
        self.tools_ran = False  # a retried request would run them again
        self.done: agent.Done | None = None
        self._said: list[str] = []  # for the title of a session whose client left before the end
        self._round = 0
        self._closed = False

    def __aiter__(self) -> Run:
        return self

    async def __anext__(self) -> agent.Event:
        if self.done is not None:
            raise StopAsyncIteration
        ev = await anext(self._events)
        if isinstance(ev, agent.Text):
            if ev.round != self._round and self._said:
                self._said.append(agent.ROUND_SEPARATOR)
            self._round = ev.round
            self._said.append(ev.text)
        elif isinstance(ev, agent.ToolCall):
            self.tools_ran = True
        elif isinstance(ev, agent.Done):
            self.done = ev
            self._answered(ev.message)
        return ev

    @property
    def visible_count(self) -> int | None:
        """How many messages the session's visible conversation holds now (None: stored nowhere); read at
        the end of a turn, it is where that turn's answer ends."""
        return self._turn.visible_count if self._turn is not None else None

    async def answer(self) -> agent.Done:
        """Runs to the end: the final event (a whole answer)."""
        async for ev in self:
            if isinstance(ev, agent.Done):
                return ev
        raise SoratError("the agent ended without an answer")

    def _answered(self, message: Message) -> None:
        turn = self._turn
        if turn is not None:
            self._rt.after_answer(turn.id, turn.needs_title, [*turn.messages, message])

    async def aclose(self) -> None:
        """Stops the agent if it still runs and ends the turn (saved, also when cancelled)."""
        if self._closed:
            return
        self._closed = True
        if self.done is None and self._said:
            self._answered({"role": "assistant", "content": "".join(self._said)})
        try:
            with contextlib.suppress(Exception):
                await self._events.aclose()
        finally:
            await self._stack.aclose()


class Pipeline:
    def __init__(self, rt: Runtime) -> None:
        self._rt = rt

    async def begin(self, req: TurnRequest) -> Run:
        """Resolves model and session and starts the agent (or, for a request that brings nothing new to
        its session, gives the last answer again); raises the request's SoratError."""
        rt = self._rt
        settings = rt.agent_settings
        mode = tool_events_mode(req.tool_events, settings.tool_events, bool(req.client_tools))
        provider, model = rt.pool.resolve(req.model, rt.active_model)
        toolset = rt.tools.current() if req.use_tools else Toolset()
        if req.client_tools:  # the client is an agent in its own project: our workspace tools would shadow
            toolset = toolset.only(settings.tools_with_client_tools)
        stack = contextlib.AsyncExitStack()  # the turn: closed (the session saved) before the last byte
        try:
            turn = None
            messages = req.messages
            record = _discard
            if req.persist:
                turn = await stack.enter_async_context(rt.store.turn(req.session_id, messages, model=model))
                turn.set_model(model)
                messages, record = turn.messages, turn.add
            opts = agent.RunOptions(
                model=model,
                stream=req.stream,
                params=req.params,
                client_tools=req.client_tools,
                tool_choice=req.tool_choice,
                max_iterations=settings.max_iterations if req.use_tools else 0,
                system_prompt=settings.system_prompt,
            )
            ctx = rt.tool_context(turn.id if turn is not None else None)
            again = last_answer(messages) if turn is not None and not turn.new else None
            if again is not None:  # nothing new (say, only results echoed for internal calls): no model call
                events = _replay(again)
            else:
                events = agent.run(provider, toolset, ctx, messages, opts, record)
        except BaseException:
            await stack.aclose()
            raise
        return Run(rt, events, stack, turn, model, mode)


async def _discard(message: Message, *, visible: Any = ...) -> None:
    return None


def last_answer(messages: list[Message]) -> Message | None:
    """The last turn's answer as its client saw it: each round's text, a blank line between, and the
    calls of the client's tools if it ended with them. None when the conversation does not end with an
    answer (a user message or a tool result still waits for the model)."""
    start = len(messages)
    while start and messages[start - 1].get("role") in ("assistant", "tool"):
        start -= 1
    answered = messages[start:]
    if not answered or answered[-1].get("role") != "assistant":
        return None
    texts = [wire.text_of(m.get("content")) for m in answered if m.get("role") == "assistant"]
    answer: Message = {"role": "assistant", "content": agent.ROUND_SEPARATOR.join(t for t in texts if t)}
    if answered[-1].get("tool_calls"):  # unanswered, so the client's own: it has still to run them
        answer["tool_calls"] = answered[-1]["tool_calls"]
    return answer


async def _replay(answer: Message) -> AsyncGenerator[agent.Event, None]:
    """The events of an answer given again: its text, then the end (no usage: no model call)."""
    if answer["content"]:
        yield agent.Text(answer["content"])
    yield agent.Done("tool_calls" if answer.get("tool_calls") else "stop", None, answer)
