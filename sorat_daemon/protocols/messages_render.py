"""Anthropic Messages out: the agent's events as the named-event stream, or one ``message``; errors in
Anthropic's shape. Pure: no I/O.

The stream, as the SDKs need it (CLIENTS.md): ``event:`` lines on every frame; ``message_start`` first;
per block ``content_block_start`` → ``content_block_delta``… → ``content_block_stop``, indices 0, 1, 2…
in start order; ``message_delta`` with ``stop_reason`` and ``usage``; ``message_stop`` last (after the
session is saved, so a client's next request finds it). Text is a ``text`` block, a later model round's
text a new one. The provider's reasoning goes to ``thinking`` blocks, and so does one line per internal
tool call (``tool_events`` reasoning, and tool_calls too; ``none``: nothing): internal calls are never
``tool_use`` blocks, since a client runs every ``tool_use`` it gets. The client's own calls come last, as
``tool_use`` blocks with their input as one ``input_json_delta``. ``ping`` while tools run; an ``error``
event for a failure after the start.

Usage: ``input_tokens`` is the last model call's prompt (what the context holds: Claude Code compacts on
it), ``output_tokens`` the sum over the request's calls; a provider that reports none gets the request's
estimate for the former.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Any

import orjson

from sorat_daemon import agent
from sorat_daemon.errors import SoratError
from sorat_daemon.protocols.messages import tool_id_out
from sorat_daemon.types import JSON

if TYPE_CHECKING:
    from sorat_daemon.turn import Run

STOP_REASONS = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "content_filter": "refusal",
}
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    408: "timeout_error",
    413: "request_too_large",
    429: "rate_limit_error",
    504: "timeout_error",
    529: "overloaded_error",
}
PING = b'event: ping\ndata: {"type":"ping"}\n\n'
_STOP = b'event: message_stop\ndata: {"type":"message_stop"}\n\n'
_ids = random.Random()  # seeded from os.urandom; message ids are labels, not secrets


def new_message_id() -> str:
    return f"msg_{_ids.getrandbits(96):024x}"


def error_type(status: int) -> str:
    return _ERROR_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")


def error_json(err: SoratError) -> JSON:
    """``{"type": "error", "error": {"type", "message"}}``, typed by the error's status."""
    return {"type": "error", "error": {"type": error_type(err.status), "message": err.message}}


def _frame(name: bytes, obj: Any) -> bytes:
    return b"event: " + name + b"\ndata: " + orjson.dumps(obj) + b"\n\n"


def _tool_input(arguments: str) -> tuple[str, JSON]:
    """A call's arguments as Anthropic's ``input`` object (and its JSON): what is not one becomes ``{}``,
    which the client's tool answers with an error the model can read, rather than a broken stream."""
    try:
        value = orjson.loads(arguments) if arguments.strip() else None
    except orjson.JSONDecodeError:
        value = None
    if not isinstance(value, dict):
        return "{}", {}
    return arguments, value


def usage_of(done: agent.Done, estimate: int) -> JSON:
    last = done.last_usage or done.usage or {}
    prompt = last.get("prompt_tokens")
    output = (done.usage or {}).get("completion_tokens")
    return {
        "input_tokens": prompt if isinstance(prompt, int) and prompt > 0 else estimate,
        "output_tokens": output if isinstance(output, int) else 0,
    }


_DELTA_HEAD = b'event: content_block_delta\ndata: {"type":"content_block_delta","index":'
_TEXT = b',"delta":{"type":"text_delta","text":'
_THINKING = b',"delta":{"type":"thinking_delta","thinking":'
_DELTA_TAIL = b"}}\n\n"
_KEYS = {"text": ("text", _TEXT), "thinking": ("thinking", _THINKING)}


class MessagesRenderer:
    """One answer: blocks opened and closed as the events come, in the stream and in the whole answer
    (which alone keeps what the blocks say)."""

    __slots__ = (
        "_id",
        "_model",
        "_mode",
        "_estimate",
        "_index",
        "_open",
        "_head",
        "_round",
        "_failed",
        "_content",
        "_said",
        "_collect",
    )

    def __init__(self, model: str, mode: str, estimate: int = 0) -> None:
        self._id = new_message_id()
        self._model = model
        self._mode = mode
        self._estimate = estimate
        self._index = -1  # of the last block started
        self._open: str | None = None  # "text" | "thinking": the block a delta goes to
        self._head = b""  # the open block's delta frame up to its text
        self._round = -1  # the model call the open text block came from
        self._failed = False
        self._content: list[JSON] = []  # the blocks so far
        self._said: list[str] = []  # the open block's text, for a whole answer
        self._collect = False  # a whole answer: keep what each block says

    def _start(self, block: JSON) -> bytes:
        out = self._close()
        self._index += 1
        self._content.append(block)
        start = {"type": "content_block_start", "index": self._index, "content_block": block}
        kind = block["type"]
        if kind in _KEYS:
            self._open = kind
            self._head = _DELTA_HEAD + str(self._index).encode() + _KEYS[kind][1]
        return out + _frame(b"content_block_start", start)

    def _close(self) -> bytes:
        if self._open is None:
            return b""
        if self._collect:
            self._content[-1][_KEYS[self._open][0]] = "".join(self._said)
            self._said.clear()
        self._open = None
        return _frame(b"content_block_stop", {"type": "content_block_stop", "index": self._index})

    def _delta(self, kind: str, text: str, round: int | None = None) -> bytes:
        out = b""
        if self._open != kind or (round is not None and round != self._round):
            block = (
                {"type": "text", "text": ""}
                if kind == "text"
                else {"type": "thinking", "thinking": "", "signature": ""}
            )
            out = self._start(block)
        if round is not None:
            self._round = round
        if self._collect:
            self._said.append(text)
        return out + self._head + orjson.dumps(text) + _DELTA_TAIL

    def begin(self) -> bytes:
        message: JSON = {
            "id": self._id,
            "type": "message",
            "role": "assistant",
            "model": self._model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": 0, "output_tokens": 0},
        }
        return _frame(b"message_start", {"type": "message_start", "message": message})

    def event(self, ev: agent.Event) -> bytes:
        if isinstance(ev, agent.Text):
            return self._delta("text", ev.text, ev.round) if ev.text else b""
        if isinstance(ev, agent.Reasoning):
            return self._delta("thinking", ev.text) if ev.text else b""
        if isinstance(ev, agent.ToolCall):
            # "tool_calls" too: a client runs every tool_use block it gets, so a line is all it can be
            return b"" if self._mode == "none" else self._delta("thinking", f"{ev.name} {ev.arguments}\n")
        if isinstance(ev, agent.KeepAlive):
            return PING
        return b""

    def _tool_uses(self, done: agent.Done) -> bytes:
        out = []
        for call in done.message.get("tool_calls") or ():
            fn = call["function"]
            raw, value = _tool_input(fn.get("arguments") or "")
            block = {"type": "tool_use", "id": tool_id_out(call["id"]), "name": fn["name"], "input": {}}
            out.append(self._start(block))
            block["input"] = value
            delta = {"type": "input_json_delta", "partial_json": raw}
            out.append(
                _frame(
                    b"content_block_delta",
                    {"type": "content_block_delta", "index": self._index, "delta": delta},
                )
            )
            out.append(_frame(b"content_block_stop", {"type": "content_block_stop", "index": self._index}))
        return b"".join(out)

    def end(self, done: agent.Done) -> bytes:
        out = self._close() + self._tool_uses(done)
        delta = {
            "type": "message_delta",
            "delta": {"stop_reason": STOP_REASONS.get(done.finish_reason, "end_turn"), "stop_sequence": None},
            "usage": usage_of(done, self._estimate),
        }
        return out + _frame(b"message_delta", delta)

    def fail(self, err: SoratError) -> bytes:
        self._failed = True
        return _frame(b"error", error_json(err))

    def close(self) -> bytes:
        return b"" if self._failed else _STOP

    async def whole(self, run: Run) -> bytes:
        self._collect = True
        held: agent.Text | None = None  # a whole model answer gives its text before its reasoning
        async for ev in run:
            if isinstance(ev, agent.Reasoning) and held is not None and held.round == ev.round:
                self.event(ev)
                self.event(held)
                held = None
                continue
            if held is not None:
                self.event(held)
                held = None
            if isinstance(ev, agent.Text):
                held = ev
                continue
            if isinstance(ev, agent.Done):
                self._close()
                self._tool_uses(ev)
                body = {
                    "id": self._id,
                    "type": "message",
                    "role": "assistant",
                    "model": self._model,
                    "content": self._content,
                    "stop_reason": STOP_REASONS.get(ev.finish_reason, "end_turn"),
                    "stop_sequence": None,
                    "usage": usage_of(ev, self._estimate),
                }
                return orjson.dumps(body)
            self.event(ev)
        raise SoratError("the agent ended without an answer")
