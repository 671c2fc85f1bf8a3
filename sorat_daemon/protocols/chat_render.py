"""Chat Completions out: the agent's events as ``chat.completion.chunk`` frames, or one
``chat.completion``."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from sorat_daemon import agent, wire
from sorat_daemon.errors import SoratError

if TYPE_CHECKING:
    from sorat_daemon.turn import Run


class ChatRenderer:
    """One response: internal tool calls shown per ``mode`` (``tool_calls`` indices rise across the whole
    response), the client's own calls returned at the end."""

    __slots__ = ("_w", "_mode", "_usage", "_index", "_model", "_round")

    def __init__(self, model: str, mode: str, include_usage: bool) -> None:
        self._w = wire.ChunkWriter(wire.new_id(), int(time.time()), model)
        self._model = model
        self._mode = mode
        self._usage = include_usage
        self._index = 0
        self._round = -1  # the round of the last text sent

    def begin(self) -> bytes:
        return self._w.role()

    def event(self, ev: agent.Event) -> bytes:
        w = self._w
        if isinstance(ev, agent.Text):
            if ev.round != self._round:  # a later round's text follows a blank line, as in whole answers
                first = self._round < 0
                self._round = ev.round
                if not first:
                    return w.content(agent.ROUND_SEPARATOR + ev.text)
            return w.content(ev.text)
        if isinstance(ev, agent.Reasoning):
            return w.reasoning(ev.text)
        if isinstance(ev, agent.ToolCall):
            if self._mode == "tool_calls":
                self._index += 1
                return w.tool_call(self._index - 1, ev.id, ev.name, ev.arguments)
            if self._mode == "reasoning":
                return w.reasoning(f"{ev.name} {ev.arguments}\n")
            return b""
        if isinstance(ev, agent.KeepAlive):
            return wire.KEEPALIVE
        return b""

    def end(self, done: agent.Done) -> bytes:
        w = self._w
        out = []
        for call in done.message.get("tool_calls") or ():
            fn = call["function"]
            out.append(w.tool_call(self._index, call["id"], fn["name"], fn["arguments"]))
            self._index += 1
        out.append(w.finish(done.finish_reason))
        if self._usage:
            out.append(w.usage(done.usage or wire.add_usage(None, None)))
        return b"".join(out)

    def fail(self, err: SoratError) -> bytes:
        return self._w.error(err.body())

    def close(self) -> bytes:
        return wire.DONE

    async def whole(self, run: Run) -> bytes:
        done = await run.answer()
        message = dict(done.message)
        created = int(time.time())
        body = wire.completion(wire.new_id(), created, self._model, message, done.finish_reason, done.usage)
        return wire.dumps(body)
