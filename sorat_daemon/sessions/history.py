"""A session's history: what counts as "the same message" between a request and the stored conversation,
and how a request's messages meet the session's (SPEC, "History" under POST /v1/chat/completions).

``History`` derives, from a session's records, the *visible conversation* (what its client saw: see
``format.py``) with each message's canonical form, and plans a request against it: what the model gets,
what is new to the session, and what an edit supersedes.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from ..types import Message
from ..wire import text_of
from .format import Record, dumps

SYSTEM_ROLES = frozenset({"system", "developer"})  # SPEC: developer messages count as system messages
NO_RESULT = '{"error": "no result: the request ended before this tool call finished"}'

_THINK = re.compile(r"^\s*(?:<think>.*?</think>\s*)+", re.DOTALL)


def _content(content: Any) -> Any:
    """A list of text parts equals its joined string; empty equals absent."""
    if isinstance(content, list):
        if all(isinstance(p, dict) and p.get("type") == "text" for p in content):
            content = "".join(str(p.get("text") or "") for p in content)
        else:
            content = [_part(p) for p in content]
    return None if content in ("", []) else content


def _part(part: Any) -> Any:
    """A content part as compared: Anthropic clients move ``cache_control`` from part to part every turn."""
    if isinstance(part, dict):
        return {k: _no_nulls(v) for k, v in part.items() if v is not None and k != "cache_control"}
    return part


def _no_nulls(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _no_nulls(v) for k, v in value.items() if v is not None}
    return value


def _arguments(raw: Any) -> Any:
    if isinstance(raw, str):
        if not raw.strip():
            return {}
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            return raw
    return raw


def call_ids(message: Message | None) -> set[str]:
    if not message:
        return set()
    calls = message.get("tool_calls")
    if not isinstance(calls, list):
        return set()
    return {c["id"] for c in calls if isinstance(c, dict) and isinstance(c.get("id"), str)}


def form(message: Message, internal: Iterable[str] | set[str] = (), *, coarse: bool = False) -> bytes:
    """The canonical bytes two messages are compared by. Key order, null fields, reasoning, list-vs-string
    content and internal tool calls a client echoes back don't count. ``coarse`` also drops tool calls:
    the form hashed for the lookup, before it is known which session (and so which calls are internal)."""
    role = message.get("role")
    out: dict[str, Any] = {"role": "system" if role in SYSTEM_ROLES else role}
    content = _content(message.get("content"))
    if role == "assistant" and isinstance(content, str) and "<think>" in content:
        content = _THINK.sub("", content) or None  # chat apps send the reasoning back wrapped in <think>
    if content is not None:
        out["content"] = content
    if message.get("name"):
        out["name"] = message["name"]
    if role == "tool":
        out["tool_call_id"] = message.get("tool_call_id")
    elif role == "assistant" and not coarse and isinstance(message.get("tool_calls"), list):
        calls = []
        for call in message["tool_calls"]:
            if not isinstance(call, dict) or call.get("id") in internal:
                continue
            function = call.get("function")
            if not isinstance(function, dict):
                function = {}
            calls.append(
                {
                    "id": call.get("id"),
                    "name": function.get("name"),
                    "arguments": _arguments(function.get("arguments")),
                }
            )
        if calls:
            out["tool_calls"] = calls
    # Forms are kept for every message of a cached session, and orjson's bytes (3.12+) hold a 4 KB buffer
    # however short the text: a right-sized copy keeps a session's memory near the size of its messages.
    return bytes(memoryview(dumps(out, sort=True)))


def lookup_hash(messages: Sequence[Message]) -> str:
    h = hashlib.sha256()
    for message in messages:
        h.update(form(message, coarse=True) + b"\n")
    return h.hexdigest()


def split_tail(messages: Sequence[Message]) -> int:
    """Where the request's new messages start: its trailing user message, and the tool results right
    before it that answer the last assistant message (either may be missing: pydantic-ai sends both)."""
    j = len(messages)
    if j > 0 and messages[j - 1].get("role") == "user":
        j -= 1
    while j > 0 and messages[j - 1].get("role") == "tool":
        j -= 1
    return j


def without_internal(message: Message, internal: set[str]) -> Message:
    """A copy without the internal tool calls a client echoed back: the model would choke on calls whose
    results it never gets again."""
    calls = message.get("tool_calls")
    if message.get("role") != "assistant" or not isinstance(calls, list) or not internal:
        return dict(message)
    kept = [c for c in calls if not (isinstance(c, dict) and c.get("id") in internal)]
    out = dict(message)
    if kept:
        out["tool_calls"] = kept
    else:
        out.pop("tool_calls", None)
    return out


def with_results(messages: Sequence[Message]) -> list[Message]:
    """The model's copy with a result for every tool call left without one: a process killed, stopped or
    cancelled between a call and its result leaves it so in the file, and providers refuse such a history."""
    out: list[Message] = []
    waiting: list[str] = []  # ids of the last assistant message's calls that no result answered yet
    for message in messages:
        role = message.get("role")
        if role == "tool":
            if message.get("tool_call_id") in waiting:
                waiting.remove(message["tool_call_id"])
        elif waiting:
            out += [{"role": "tool", "tool_call_id": i, "content": NO_RESULT} for i in waiting]
            waiting = []
        out.append(dict(message))
        if role == "assistant" and isinstance(message.get("tool_calls"), list):
            waiting = sorted(call_ids(message))
    return out


def _joined(first: Message, second: Message) -> Message:
    """Two assistant projections of one turn, as the client saw them: one streamed message."""
    a, b = first.get("content"), second.get("content")
    if isinstance(a, list) or isinstance(b, list):
        content: Any = text_of(a) + text_of(b)
    else:
        content = (a or "") + (b or "") if (a or b) else None
    out: Message = {"role": "assistant", "content": content}
    calls = [*(first.get("tool_calls") or []), *(second.get("tool_calls") or [])]
    if calls:
        out["tool_calls"] = calls
    return out


def _leading_system(roles: Iterable[Any]) -> int:
    n = 0
    for role in roles:
        if role not in SYSTEM_ROLES:
            break
        n += 1
    return n


@dataclass(slots=True)
class Shown:
    """One message of the visible conversation, and the records it came from."""

    message: Message
    form: bytes
    coarse: bytes
    first_seq: int
    last_seq: int
    turn: int
    by: str


@dataclass(slots=True)
class Plan:
    model: list[Message]  # what the model gets
    append: list[Message]  # request messages new to the session
    cut: int | None  # supersede every active record from this seq on


class History:
    """A session's records and what they derive: the active ones, the visible conversation, the ids of
    the tool calls its client never saw, and the conversation's lookup hash, kept up to date record by
    record."""

    def __init__(self) -> None:
        self.records: list[Record] = []
        self.next_seq = 0
        self.turns = 0
        self.internal: set[str] = set()  # ids of tool calls the client never saw
        self.active: list[Record] = []
        self.shown: list[Shown] = []
        self._prefix = hashlib.sha256()  # over the coarse forms of shown[:-1]
        self._lookup: str | None = None

    def apply(self, record: Record) -> None:
        self.records.append(record)
        self.next_seq = max(self.next_seq, record.seq + 1)
        self.turns = max(self.turns, record.turn)
        self._derive(record)

    def supersede(self, seqs: set[int]) -> None:
        for record in self.records:
            if record.seq in seqs:
                record.superseded = True
        self.active, self.shown, self._prefix, self._lookup = [], [], hashlib.sha256(), None
        for record in self.records:
            self._derive(record)

    def _derive(self, record: Record) -> None:
        if record.superseded:
            return
        self.active.append(record)
        message, visible = record.message, record.visible
        if message.get("role") == "assistant" and visible is not message:
            shown_ids = call_ids(visible)
            self.internal.update(i for i in call_ids(message) if i not in shown_ids)
        if visible is None:
            return
        self._lookup = None
        last = self.shown[-1] if self.shown else None
        if (
            last is not None
            and record.by == last.by == "agent"
            and record.turn == last.turn
            and visible.get("role") == last.message.get("role") == "assistant"
        ):
            merged = _joined(last.message, visible)
            self.shown[-1] = Shown(
                merged, form(merged, self.internal), form(merged, coarse=True),
                last.first_seq, record.seq, record.turn, "agent",
            )  # fmt: skip
            return
        if last is not None:
            self._prefix.update(last.coarse + b"\n")
        self.shown.append(
            Shown(
                visible, form(visible, self.internal), form(visible, coarse=True),
                record.seq, record.seq, record.turn, record.by,
            )
        )  # fmt: skip

    def lookup(self) -> str:
        """The hash of the visible conversation, as ``lookup_hash`` makes it of a request's messages."""
        if self._lookup is None:
            h = self._prefix.copy()
            if self.shown:
                h.update(self.shown[-1].coarse + b"\n")
            self._lookup = h.hexdigest()
        return self._lookup

    def matches(self, messages: Sequence[Message]) -> bool:
        if len(messages) != len(self.shown):
            return False
        return all(form(m, self.internal) == s.form for m, s in zip(messages, self.shown, strict=True))

    def plan(self, messages: Sequence[Message]) -> Plan:
        """SPEC's three cases: resend everything, edit/regenerate, only the new message."""
        forms = [form(m, self.internal) for m in messages]
        messages = [without_internal(m, self.internal) for m in messages]
        shown = self.shown
        k = 0
        while k < len(forms) and k < len(shown) and forms[k] == shown[k].form:
            k += 1
        history = [r.message for r in self.active]
        if k == len(shown):  # the request begins with the whole visible conversation
            return Plan(history + list(messages[k:]), list(messages[k:]), None)
        sys_r = _leading_system(m.get("role") for m in messages)
        sys_v = _leading_system(s.message.get("role") for s in shown)
        if sys_r < len(messages) and sys_v < len(shown) and forms[sys_r] != shown[sys_v].form:
            # Nothing shared but the system prompt: the stored conversation goes in front. A request
            # with another system prompt gets it for this call; the session keeps its own.
            tail = list(messages[sys_r:])
            if sys_r and forms[:sys_r] != [s.form for s in shown[:sys_v]]:
                rest = history[_leading_system(m.get("role") for m in history) :]
                return Plan(list(messages[:sys_r]) + rest + tail, tail, None)
            return Plan(history + tail, tail, None)
        # An edit or a regenerate: from the first difference on, the request wins. The cut falls right
        # after the last record of the last shared message, so internal tool traffic of a superseded
        # answer goes with it.
        cut = shown[k - 1].last_seq + 1 if k else 0
        kept = [r.message for r in self.active if r.seq < cut]
        return Plan(kept + list(messages[k:]), list(messages[k:]), cut)
