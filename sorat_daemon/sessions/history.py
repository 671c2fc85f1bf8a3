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


def form(message: Message) -> bytes:
    """The canonical bytes two messages are compared and hashed by, their tool calls apart (``calls``):
    key order, null fields, reasoning, list-vs-string content and cache_control don't count."""
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
    # orjson's bytes (3.12+) hold a 4 KB buffer however short the text: a right-sized copy keeps a cached
    # session's forms near the size of its messages, and a request's forms from churning the heap (holding
    # a few hundred such buffers made forming a long request ten times slower).
    return bytes(memoryview(dumps(out, sort=True)))


Call = tuple[Any, Any, Any]  # id, function name, arguments (parsed)


def calls_of(message: Message) -> tuple[Call, ...] | None:
    """An assistant message's tool calls as compared: arguments parsed, so their spacing doesn't count."""
    raw = message.get("tool_calls")
    if message.get("role") != "assistant" or not isinstance(raw, list):
        return None
    out = []
    for call in raw:
        if isinstance(call, dict):
            function = call.get("function")
            if not isinstance(function, dict):
                function = {}
            out.append((call.get("id"), function.get("name"), _arguments(function.get("arguments"))))
    return tuple(out) or None


def _seen(found: tuple[Call, ...] | None, internal: set[str]) -> tuple[Call, ...] | None:
    """The calls a client could have seen: internal calls it echoes back don't count."""
    if found is None or not internal:
        return found
    return tuple(c for c in found if c[0] not in internal) or None


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


class Request:
    """A request's messages, read once: the form of each, where its new tail starts, and, only when a
    lookup in the index needs it, the hash of the messages before that tail. Everything a turn compares
    is computed here, in one pass over what was sent."""

    __slots__ = ("messages", "roles", "keys", "calls", "split", "_lookup")

    def __init__(self, messages: Sequence[Message]) -> None:
        self.messages = messages
        self.roles: list[Any] = []
        self.keys: list[bytes] = []
        self.calls: dict[int, tuple[Call, ...]] = {}  # by index: assistant messages with tool calls
        for i, message in enumerate(messages):
            role = message.get("role")
            self.roles.append(role)
            self.keys.append(form(message))
            if role == "assistant" and "tool_calls" in message:
                found = calls_of(message)
                if found is not None:
                    self.calls[i] = found
        self.split = split_tail(messages)
        self._lookup: str | None = None

    def lookup(self) -> str:
        """The hash of the messages before the tail, as ``History.lookup`` makes it of a conversation."""
        if self._lookup is None:
            h = hashlib.sha256()
            for key in self.keys[: self.split]:
                h.update(key)
                h.update(b"\n")
            self._lookup = h.hexdigest()
        return self._lookup


@dataclass(slots=True)
class Shown:
    """One message of the visible conversation, and the records it came from (indices into ``active``)."""

    message: Message
    key: bytes  # form(message)
    calls: tuple[Call, ...] | None
    start: int  # its first record
    stop: int  # after its last record (internal records after it not included)
    turn: int
    by: str


@dataclass(slots=True)
class Plan:
    model: list[Message]  # what the model gets
    append: list[Message]  # request messages new to the session
    cut: int | None  # supersede every active record from this index of ``active`` on


class History:
    """A session's records and what they derive: the active ones, the visible conversation with the forms
    it is compared by, the ids of the tool calls its client never saw, and the conversation's lookup
    hash, all kept up to date record by record (a turn never recomputes the stored side)."""

    def __init__(self) -> None:
        self.records: list[Record] = []
        self.next_seq = 0
        self.turns = 0
        self.internal: set[str] = set()  # ids of tool calls the client never saw
        self.active: list[Record] = []
        self.shown: list[Shown] = []
        self._prefix = hashlib.sha256()  # over the forms of shown[:-1]
        self._stale = False  # the prefix lost messages (a cut): redone from the forms when next needed
        self._lookup: str | None = None

    def apply(self, record: Record) -> None:
        self.records.append(record)
        self.next_seq = max(self.next_seq, record.seq + 1)
        self.turns = max(self.turns, record.turn)
        self._derive(record)

    def cut(self, start: int) -> None:
        """Supersedes every active record from index ``start`` on (an edit's cut). The visible messages
        before the cut keep their forms: only the hash is redone, from them."""
        for record in self.active[start:]:
            record.superseded = True
        del self.active[start:]
        while self.shown and self.shown[-1].start >= start:
            self.shown.pop()
        self._stale, self._lookup = True, None

    def _derive(self, record: Record) -> None:
        if record.superseded:
            return
        index = len(self.active)
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
            last.message = _joined(last.message, visible)
            last.key, last.calls, last.stop = form(last.message), calls_of(last.message), index + 1
            return
        if last is not None and not self._stale:
            self._prefix.update(last.key + b"\n")
        self.shown.append(
            Shown(visible, form(visible), calls_of(visible), index, index + 1, record.turn, record.by)
        )

    def lookup(self) -> str:
        """The hash of the visible conversation, as ``Request.lookup`` makes it of a request's messages."""
        if self._lookup is None:
            if self._stale:
                self._prefix, self._stale = hashlib.sha256(), False
                for shown in self.shown[:-1]:
                    self._prefix.update(shown.key)
                    self._prefix.update(b"\n")
            h = self._prefix.copy()
            if self.shown:
                h.update(self.shown[-1].key + b"\n")
            self._lookup = h.hexdigest()
        return self._lookup

    def _same(self, request: Request, i: int, shown: Shown) -> bool:
        return request.keys[i] == shown.key and _seen(request.calls.get(i), self.internal) == shown.calls

    def _common(self, request: Request, limit: int) -> int:
        """How many of the request's first ``limit`` messages are the visible conversation's first (a
        comparison of forms computed already, mostly one memcmp each)."""
        keys, calls, internal, shown = request.keys, request.calls, self.internal, self.shown
        n = min(limit, len(shown))
        for k in range(n):
            s = shown[k]
            if keys[k] != s.key or (
                (s.calls is not None or k in calls) and _seen(calls.get(k), internal) != s.calls
            ):
                return k
        return n

    def matches(self, request: Request) -> bool:
        """Whether the request's messages before its tail are exactly the visible conversation."""
        n = request.split
        if n != len(self.shown):
            return False
        if n and not self._same(request, n - 1, self.shown[n - 1]):  # the last differs most often
            return False
        return self._common(request, n) == n

    def plan(self, request: Request) -> Plan:
        """SPEC's three cases: resend everything, edit/regenerate, only the new message."""
        messages, internal, shown = request.messages, self.internal, self.shown
        k = self._common(request, len(messages))
        history = [r.message for r in self.active]

        def tail(start: int) -> list[Message]:
            return [without_internal(m, internal) for m in messages[start:]]

        if k == len(shown):  # the request begins with the whole visible conversation
            new = tail(k)
            return Plan(history + new, new, None)
        sys_r = _leading_system(request.roles)
        sys_v = _leading_system(s.message.get("role") for s in shown)
        if sys_r < len(messages) and sys_v < len(shown) and not self._same(request, sys_r, shown[sys_v]):
            # Nothing shared but the system prompt: the stored conversation goes in front. A request
            # with another system prompt gets it for this call; the session keeps its own.
            new = tail(sys_r)
            if sys_r and not (sys_r == sys_v and self._common(request, sys_r) == sys_r):
                rest = history[_leading_system(m.get("role") for m in history) :]
                return Plan([dict(m) for m in messages[:sys_r]] + rest + new, new, None)
            return Plan(history + new, new, None)
        # An edit or a regenerate: from the first difference on, the request wins. The cut falls right
        # after the last record of the last shared message, so internal tool traffic of a superseded
        # answer goes with it.
        cut = shown[k - 1].stop if k else 0
        new = tail(k)
        return Plan(history[:cut] + new, new, cut)
