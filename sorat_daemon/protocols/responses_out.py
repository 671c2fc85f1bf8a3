"""OpenAI Responses out: the agent's events as the Responses event stream, or one Response object.
Pure: no I/O.

What the clients hold a server to (CLIENTS.md): ``response.created`` first and one response id on every
lifecycle event; ``sequence_number`` rising from 0; per item ``output_item.added`` before its content
events and ``output_item.done`` keeping its identity; ``output_index`` counting items across every model
round (a later round's text is a new message item); ``response.completed`` carrying the full ``output``
and ``usage`` with all three totals and both detail objects; ``response.in_progress`` while tools run
(Codex's idle timer ignores SSE comments). Internal tool calls are never ``function_call`` items: a
client runs every one it gets.

Every Codex turn and every editor keystroke comes through here, so the frames that recur (text deltas,
a message item's start and end, the lifecycle events) are spliced from bytes encoded once per item or
per response, and the Response object's fixed settings are encoded once per response.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson

from sorat_daemon import agent
from sorat_daemon.errors import ContextWindowExceeded, SoratError
from sorat_daemon.protocols.responses_items import ClientTool, call_item, text_part
from sorat_daemon.types import JSON

if TYPE_CHECKING:
    from sorat_daemon.turn import Run

SERVER_LABEL = "sorat"  # the server_label of internal tool calls shown as mcp_call items
_ids = random.Random()  # item and response ids are labels, not secrets


def new_id(prefix: str) -> str:
    return f"{prefix}_{_ids.getrandbits(96):024x}"


def usage_of(u: JSON | None) -> JSON:
    """Chat usage (summed over model calls) in Responses' shape, both detail objects always there."""
    u = u or {}
    inp, out = u.get("prompt_tokens") or 0, u.get("completion_tokens") or 0
    cached = (u.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
    thought = (u.get("completion_tokens_details") or {}).get("reasoning_tokens") or 0
    return {
        "input_tokens": inp,
        "input_tokens_details": {"cached_tokens": cached},
        "output_tokens": out,
        "output_tokens_details": {"reasoning_tokens": thought},
        "total_tokens": u.get("total_tokens") or inp + out,
    }


def error_code(err: SoratError) -> str:
    """``response.failed``'s code: Codex retries ``server_error`` and unknown codes, not the others."""
    if isinstance(err, ContextWindowExceeded) or err.code == "context_length_exceeded":
        return "context_length_exceeded"
    if err.status == 429:
        return "rate_limit_exceeded"
    if err.status == 400:
        return "invalid_prompt"
    return "server_error"


@dataclass(slots=True)
class Head:
    """What every Response object of one request repeats."""

    id: str
    created_at: int
    model: str
    echo: JSON = field(default_factory=dict)  # the request's settings (responses_in.ResponsesRequest.echo)
    previous_response_id: str | None = None
    conversation: str | None = None
    store: bool = True


def _settings(h: Head) -> bytes:
    """The Response object's fields that stay the same through a response, encoded once and without
    their braces: every lifecycle event's object is its status, output and usage, then these."""
    e = h.echo
    fixed: JSON = {
        "id": h.id,
        "object": "response",
        "created_at": h.created_at,
        "background": False,
        "instructions": e.get("instructions"),
        "max_output_tokens": e.get("max_output_tokens"),
        "metadata": e.get("metadata") or {},
        "model": h.model,
        "parallel_tool_calls": e.get("parallel_tool_calls", True),
        "previous_response_id": h.previous_response_id,
        "reasoning": e.get("reasoning") or {"effort": None, "summary": None},
        "store": h.store,
        "temperature": e.get("temperature", 1.0),
        "text": e.get("text") or {"format": {"type": "text"}},
        "tool_choice": e.get("tool_choice", "auto"),
        "tools": e.get("tools") or [],
        "top_p": e.get("top_p", 1.0),
        "truncation": e.get("truncation", "disabled"),
        "user": e.get("user"),
    }
    if h.conversation:
        fixed["conversation"] = {"id": h.conversation}
    return orjson.dumps(fixed)[1:-1]


def _response(settings: bytes, status: str, output: list[JSON], usage: JSON | None, **extra: Any) -> bytes:
    """A Response object's JSON (``extra``: ``error``, ``incomplete_details``)."""
    head = orjson.dumps(
        {
            "status": status,
            "error": extra.get("error"),
            "incomplete_details": extra.get("incomplete_details"),
            "output": output,
            "usage": usage,
        }
    )
    return head[:-1] + b"," + settings + b"}"


@dataclass(slots=True)
class _Open:
    """The text or reasoning item being streamed."""

    kind: str  # message | reasoning
    index: int
    id: str
    round: int
    pieces: list[str] = field(default_factory=list)
    delta_head: bytes = b""  # its delta frames up to the sequence number, encoded once


_TEXT_DONE = (
    b'event: response.output_text.done\ndata: {"type":"response.output_text.done","sequence_number":%d,'
)
_PART_DONE = (
    b'event: response.content_part.done\ndata: {"type":"response.content_part.done","sequence_number":%d,'
)
_ITEM_DONE = (
    b'event: response.output_item.done\ndata: {"type":"response.output_item.done","sequence_number":%d,'
    b'"output_index":%d,"item":'
)
_MESSAGE_ADDED = (
    b'event: response.output_item.added\ndata: {"type":"response.output_item.added","sequence_number":%d,'
    b'"output_index":%d,"item":{"id":"%s","type":"message","status":"in_progress","role":"assistant",'
    b'"content":[]}}\n\nevent: response.content_part.added\ndata: {"type":"response.content_part.added",'
    b'"sequence_number":%d,"item_id":"%s","output_index":%d,"content_index":0,"part":{"type":"output_text",'
    b'"text":"","annotations":[],"logprobs":[]}}\n\n'
)
_CREATED = b'event: response.created\ndata: {"type":"response.created","sequence_number":%d,"response":'
_IN_PROGRESS = (
    b'event: response.in_progress\ndata: {"type":"response.in_progress","sequence_number":%d,"response":'
)
_DELTA = {
    "message": (b"response.output_text.delta", b',"content_index":0,"logprobs":[]'),
    "reasoning": (b"response.reasoning_summary_text.delta", b',"summary_index":0'),
}


class ResponsesRenderer:
    """One response, streamed (``begin``/``event``/``end``/``fail``/``close``) or whole (``whole``).
    ``on_end`` gets the final Response object's JSON before its last frames go out: recorded there, its
    id resolves for a client that sends the next request at once."""

    def __init__(
        self,
        head: Head,
        mode: str,
        tools: dict[str, ClientTool],
        on_end: Callable[[bytes], None] | None = None,
    ) -> None:
        self._head = head
        self._settings = _settings(head)
        self._mode = mode
        self._tools = tools
        self._on_end = on_end
        self._seq = 0
        self._items: list[JSON] = []  # by output_index; an open item's entry is completed when it closes
        self._open: _Open | None = None
        self._mcp: dict[str, int] = {}  # internal call id → its mcp_call item's output_index
        self._stream = True
        self._in_progress = b""
        self._messages = 0  # message items so far

    # -- frames --------------------------------------------------------------------------------------

    def _frame(self, kind: str, body: JSON) -> bytes:
        if not self._stream:
            return b""
        body["type"] = kind
        body["sequence_number"] = self._seq
        self._seq += 1
        return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(body) + b"\n\n"

    def _lifecycle(self, kind: str, response: bytes) -> bytes:
        seq = self._seq
        self._seq += 1
        head = b'event: %s\ndata: {"type":"%s","sequence_number":%d,"response":' % (
            kind.encode(),
            kind.encode(),
            seq,
        )
        return head + response + b"}\n\n"

    def _added(self, item: JSON) -> bytes:
        self._items.append(item)
        return self._frame("response.output_item.added", {"output_index": len(self._items) - 1, "item": item})

    def _done(self, index: int, item: JSON) -> bytes:
        self._items[index] = item
        return self._frame("response.output_item.done", {"output_index": index, "item": item})

    # -- items ---------------------------------------------------------------------------------------

    def _start(self, kind: str, round: int) -> bytes:
        out = self._close()
        index = len(self._items)
        if kind == "message":
            self._messages += 1
            item_id = new_id("msg")
            item: JSON = {"id": item_id, "type": "message", "status": "in_progress", "role": "assistant"}
            item["content"] = []
            self._items.append(item)
            if self._stream:
                seq = self._seq
                self._seq = seq + 2
                out += _MESSAGE_ADDED % (seq, index, item_id.encode(), seq + 1, item_id.encode(), index)
        else:
            item_id = new_id("rs")
            out += self._added({"id": item_id, "type": "reasoning", "summary": []})
            part = {"item_id": item_id, "output_index": index, "summary_index": 0}
            part["part"] = {"type": "summary_text", "text": ""}
            out += self._frame("response.reasoning_summary_part.added", part)
        name, tail = _DELTA[kind]
        head = b'event: %s\ndata: {"type":"%s","item_id":"%s","output_index":%d%s,"sequence_number":' % (
            name, name, item_id.encode(), index, tail,
        )  # fmt: skip
        self._open = _Open(kind, index, item_id, round, delta_head=head)
        return out

    def _delta(self, kind: str, text: str, round: int) -> bytes:
        o = self._open
        if o is None or o.kind != kind or (kind == "message" and o.round != round):
            out = self._start(kind, round)
            o = self._open
            assert o is not None
        else:
            out = b""
        o.pieces.append(text)
        if not self._stream:
            return out
        seq = self._seq
        self._seq += 1
        return out + o.delta_head + b"%d" % seq + b',"delta":' + orjson.dumps(text) + b"}\n\n"

    def _close(self) -> bytes:
        o, self._open = self._open, None
        if o is None:
            return b""
        text = "".join(o.pieces)
        if o.kind == "message":
            part = text_part(text)
            item = {
                "id": o.id,
                "type": "message",
                "status": "completed",
                "role": "assistant",
                "content": [part],
            }
            self._items[o.index] = item
            if not self._stream:
                return b""
            seq = self._seq
            self._seq = seq + 3
            ref = b'"item_id":"%s","output_index":%d,"content_index":0' % (o.id.encode(), o.index)
            dumped = orjson.dumps(part)
            return b"".join(
                (
                    _TEXT_DONE % seq, ref, b',"text":', orjson.dumps(text), b',"logprobs":[]}\n\n',
                    _PART_DONE % (seq + 1), ref, b',"part":', dumped, b"}\n\n",
                    _ITEM_DONE % (seq + 2, o.index), orjson.dumps(item), b"}\n\n",
                )
            )  # fmt: skip
        summary = {"type": "summary_text", "text": text}
        ref2 = {"item_id": o.id, "output_index": o.index, "summary_index": 0}
        out = self._frame("response.reasoning_summary_text.done", {**ref2, "text": text})
        out += self._frame("response.reasoning_summary_part.done", {**ref2, "part": summary})
        return out + self._done(o.index, {"id": o.id, "type": "reasoning", "summary": [summary]})

    def _client_calls(self, calls: list[JSON]) -> bytes:
        out = b""
        for call in calls:
            item = call_item(call, self._tools)
            index = len(self._items)
            ref = {"item_id": item["id"], "output_index": index}
            if item["type"] == "custom_tool_call":
                out += self._added({**item, "status": "in_progress", "input": ""})
                out += self._frame("response.custom_tool_call_input.delta", {**ref, "delta": item["input"]})
                out += self._frame("response.custom_tool_call_input.done", {**ref, "input": item["input"]})
            else:
                out += self._added({**item, "status": "in_progress", "arguments": ""})
                args = item["arguments"]
                out += self._frame("response.function_call_arguments.delta", {**ref, "delta": args})
                out += self._frame("response.function_call_arguments.done", {**ref, "arguments": args})
            out += self._done(index, item)
        return out

    # -- the Renderer protocol (sorat_daemon.http.endpoint) ------------------------------------------

    def begin(self) -> bytes:
        self._in_progress = _response(self._settings, "in_progress", [], None)  # also every in_progress
        seq = self._seq
        self._seq += 1
        return _CREATED % seq + self._in_progress + b"}\n\n" + self._keepalive()

    def _keepalive(self) -> bytes:
        if not self._stream:
            return b""
        seq = self._seq
        self._seq += 1
        return _IN_PROGRESS % seq + self._in_progress + b"}\n\n"

    def event(self, ev: agent.Event) -> bytes:
        if type(ev) is agent.Text:
            o, text = self._open, ev.text
            if o is not None and o.round == ev.round and o.kind == "message" and text and self._stream:
                o.pieces.append(text)  # the hot path: one more delta of the open message
                seq = self._seq
                self._seq = seq + 1
                return o.delta_head + b"%d" % seq + b',"delta":' + orjson.dumps(text) + b"}\n\n"
            return self._delta("message", text, ev.round) if text else b""
        if isinstance(ev, agent.Reasoning):
            return self._delta("reasoning", ev.text, ev.round) if ev.text else b""
        if isinstance(ev, agent.ToolCall):
            if self._mode == "tool_calls":
                out = self._close() + self._end_calls(ev.id, "incomplete", None)  # an id used twice
                item: JSON = {"id": new_id("mcp"), "type": "mcp_call", "status": "in_progress"}
                item.update(server_label=SERVER_LABEL, name=ev.name, arguments=ev.arguments)
                item.update(output=None, error=None)
                self._mcp[ev.id] = len(self._items)
                return out + self._added(item)
            if self._mode == "reasoning":
                o = self._open
                return self._delta("reasoning", f"{ev.name} {ev.arguments}\n", o.round if o else 0)
            return b""
        if isinstance(ev, agent.ToolResult):
            index = self._mcp.pop(ev.id, None)
            if index is None:
                return b""
            return self._done(index, {**self._items[index], "status": "completed", "output": ev.output})
        if isinstance(ev, agent.KeepAlive):
            return self._keepalive()
        return b""

    def _end_calls(self, call_id: str | None, status: str, error: str | None) -> bytes:
        """Closes the open mcp_call items (``call_id``: only that one) that got no result."""
        if not self._mcp:
            return b""
        out = b""
        for key in [call_id] if call_id is not None else list(self._mcp):
            index = self._mcp.pop(key, None)
            if index is not None:
                out += self._done(index, {**self._items[index], "status": status, "error": error})
        return out

    def _finish(self, done: agent.Done) -> tuple[str, bytes, bytes]:
        """(status, the Response object, the frames that close its items)."""
        out = self._close() + self._end_calls(None, "incomplete", None)
        calls = done.message.get("tool_calls") or []
        out += self._client_calls(calls)
        if not calls and not self._messages:
            out += self._start("message", 0) + self._close()  # an empty answer is still an answer
        status, details = "completed", None
        if done.finish_reason in ("length", "content_filter"):
            reason = "max_output_tokens" if done.finish_reason == "length" else "content_filter"
            status, details = "incomplete", {"reason": reason}
        usage = usage_of(done.usage)
        response = _response(self._settings, status, self._items, usage, incomplete_details=details)
        if self._on_end is not None:
            self._on_end(response)
        return status, response, out

    def end(self, done: agent.Done) -> bytes:
        status, response, out = self._finish(done)
        kind = "response.completed" if status == "completed" else "response.incomplete"
        return out + self._lifecycle(kind, response)

    def fail(self, err: SoratError) -> bytes:
        out = self._close() + self._end_calls(None, "failed", err.message)  # calls the failure cut short
        error = {"code": error_code(err), "message": err.message}
        response = _response(self._settings, "failed", self._items, None, error=error)
        if self._on_end is not None:
            self._on_end(response)
        return out + self._lifecycle("response.failed", response)

    def close(self) -> bytes:
        return b""  # no [DONE] in the Responses stream

    async def whole(self, run: Run) -> bytes:
        self._stream = False
        held: list[agent.Text] = []  # a whole model answer gives its text before its reasoning
        async for ev in run:
            if isinstance(ev, agent.Text):
                held.append(ev)
                continue
            if not (isinstance(ev, agent.Reasoning) and held and held[0].round == ev.round):
                for text in held:
                    self.event(text)
                held.clear()
            if isinstance(ev, agent.Done):
                return self._finish(ev)[1]
            self.event(ev)
        raise SoratError("the agent ended without an answer")
