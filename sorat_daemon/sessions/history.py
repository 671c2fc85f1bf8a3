"""A session's history: what counts as "the same message" between a request and the stored conversation,
and how a request's messages meet the session's (SPEC, "History" under POST /v1/chat/completions).

``Request`` reads a request's messages once; ``History`` derives, from a session's records, its system
prompt and its *visible conversation* (what its client saw: see ``format.py``) with each message's
canonical form, and plans a request against them: what the model gets, what is new to the session, and
what an edit or a new system prompt supersedes.
"""

from __future__ import annotations

import bisect
import hashlib
import re
from collections.abc import Sequence
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
    key order, null fields, reasoning, list-vs-string content and cache_control don't count, nor how an
    assistant text is spaced (clients join the parts of a streamed answer their own way: pydantic-ai puts
    a blank line of its own between rounds that came apart by one already)."""
    role = message.get("role")
    out: dict[str, Any] = {"role": "system" if role in SYSTEM_ROLES else role}
    content = _content(message.get("content"))
    if role == "assistant" and isinstance(content, str):
        if "<think>" in content:
            content = _THINK.sub("", content)  # chat apps send the reasoning back wrapped in <think>
        content = " ".join(content.split()) or None
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
    """The message without the internal tool calls a client echoed back (the model would choke on calls
    whose results it never gets again): a copy if it has any, else the message itself (messages are never
    changed in place: the session keeps the request's own, and finds it again in the next request)."""
    calls = message.get("tool_calls")
    if message.get("role") != "assistant" or not isinstance(calls, list) or not internal:
        return message
    kept = [c for c in calls if not (isinstance(c, dict) and c.get("id") in internal)]
    if len(kept) == len(calls):
        return message
    out = dict(message)
    if kept:
        out["tool_calls"] = kept
    else:
        out.pop("tool_calls", None)
    return out


def with_results(messages: Sequence[Message]) -> list[Message]:
    """The model's copy with a result for every tool call left without one: a process killed, stopped or
    cancelled between a call and its result leaves it so in the file, and providers refuse such a history.
    (A call at the very end waits for its result: nothing follows it yet.) A new list of the same message
    objects (nothing on the way to the model changes a message in place), and a look at the few messages
    with tool calls: this runs for every turn over the whole history."""
    out = list(messages)
    callers = [i for i, m in enumerate(messages) if "tool_calls" in m]
    n = len(messages)
    for i in reversed(callers):  # from the end: an insertion moves only what comes after it
        calls = messages[i].get("tool_calls")
        if messages[i].get("role") != "assistant" or not isinstance(calls, list):
            continue
        if (  # the usual: one call, its result next
            len(calls) == 1
            and i + 1 < n
            and isinstance(calls[0], dict)
            and messages[i + 1].get("tool_call_id") == calls[0].get("id")
            and messages[i + 1].get("role") == "tool"
        ):
            continue
        waiting = sorted(call_ids(messages[i]))
        j = i + 1
        while j < n and messages[j].get("role") == "tool":
            if messages[j].get("tool_call_id") in waiting:
                waiting.remove(messages[j]["tool_call_id"])
            j += 1
        if waiting and j < n:
            out[j:j] = [{"role": "tool", "tool_call_id": c, "content": NO_RESULT} for c in waiting]
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


class Request:
    """A request's messages, read once: system and developer messages apart from the conversation (each
    with its place in it), where the conversation's new tail starts, its tool results; each
    message's form only when a comparison needs it (a message equal to the stored one as sent, the common
    case of a client resending its history, is never formed), and, only when a lookup in the index needs
    it, the hash of the conversation before that tail."""

    __slots__ = (
        "system",
        "system_keys",
        "conversation",
        "results",
        "split",
        "_keys",
        "_lookup",
    )

    def __init__(self, messages: Sequence[Message]) -> None:
        self.system: list[tuple[int, Message]] = []  # (how many conversation messages come before, it)
        self.system_keys: list[bytes] = []
        self.conversation: list[Message] = []
        self.results: dict[int, Any] = {}  # by conversation index: the tool_call_id of a tool result
        conversation = self.conversation
        for message in messages:
            role = message.get("role")
            if role in SYSTEM_ROLES:
                self.system.append((len(conversation), message))
                self.system_keys.append(form(message))
                continue
            if role == "tool":
                self.results[len(conversation)] = message.get("tool_call_id")
            conversation.append(message)
        self.split = split_tail(conversation)
        self._keys: list[bytes | None] = [None] * len(conversation)  # the conversation's forms, when made
        self._lookup: str | None = None

    def key(self, i: int) -> bytes:
        """The form of conversation message ``i``."""
        key = self._keys[i]
        if key is None:
            key = self._keys[i] = form(self.conversation[i])
        return key

    def lookup(self) -> str:
        """The hash of the conversation before the tail, as ``History.lookup`` makes it of a session's.
        Tool results are left out: before the session is known, so is which of them answer internal calls
        (a client echoing those sends results of its own for them, never stored)."""
        if self._lookup is None:
            h = hashlib.sha256()
            results = self.results
            for i in range(self.split):
                if i not in results:
                    h.update(self.key(i))
                    h.update(b"\n")
            self._lookup = h.hexdigest()
        return self._lookup

    def kept(self, internal: set[str], limit: int) -> Sequence[int]:
        """The indices of the first ``limit`` conversation messages but the tool results answering calls
        in ``internal``: SPEC has them neither stored nor sent to the model."""
        if not internal or not self.results:
            return range(limit)
        dropped = {i for i, call_id in self.results.items() if i < limit and call_id in internal}
        return [i for i in range(limit) if i not in dropped] if dropped else range(limit)


@dataclass(slots=True)
class Shown:
    """One message of the visible conversation, and the records it came from (indices into
    ``History.conversation``)."""

    message: Message
    key: bytes  # form(message)
    calls: tuple[Call, ...] | None
    start: int  # its first record
    stop: int  # after its last record (internal records after it not included)
    turn: int
    by: str
    echo: Message | None = None  # the request message found equal to it last (the same object next time)


@dataclass(slots=True)
class Plan:
    model: list[Message]  # what the model gets
    append: list[Message]  # request messages new to the session's conversation
    system: list[Message]  # system messages new to the session (stored before ``append``)
    system_cut: int | None  # a changed system prompt: supersede its records from this index on
    cut: int | None  # an edit: supersede the conversation's records from this index on


class History:
    """A session's records and what they derive: the active ones, the current system prompt, the
    visible conversation with the forms it is compared by, the ids of the tool calls its client never
    saw, and the conversation's lookup hash, all kept up to date record by record (a turn never recomputes
    the stored side).

    System and developer messages (``system``) are the client's instructions, compared apart from the
    conversation: a request that brings other ones replaces them (stored with its turn, the old ones
    superseded; a shared beginning stays) and never forks or supersedes the conversation for that. The
    model gets the request's own system messages where the request puts them (inline ones included: a
    note before the last user message stays there), or, when a request brings none, the stored ones in
    front."""

    def __init__(self) -> None:
        self.records: list[Record] = []
        self.next_seq = 0
        self.turns = 0
        self.internal: set[str] = set()  # ids of tool calls the client never saw
        self.active: list[Record] = []  # in file order
        self.system: list[Record] = []  # the active system and developer messages
        self._system_keys: list[bytes] = []
        self.conversation: list[Record] = []  # the other active records: what the model is sent
        self.shown: list[Shown] = []  # the visible conversation
        self._prefix = hashlib.sha256()  # over the forms of shown[:-1]
        self._stale = False  # the prefix lost messages (a cut): redone from the forms when next needed
        self._lookup: str | None = None

    @property
    def message_count(self) -> int:
        """The visible messages: the system prompt and the visible conversation."""
        return len(self.system) + len(self.shown)

    def apply(self, record: Record) -> None:
        self.records.append(record)
        self.next_seq = max(self.next_seq, record.seq + 1)
        self.turns = max(self.turns, record.turn)
        self._derive(record)

    def superseded(self, plan: Plan) -> list[int]:
        """The seqs of the records ``plan`` supersedes."""
        seqs = [r.seq for r in self.system[plan.system_cut :]] if plan.system_cut is not None else []
        if plan.cut is not None:
            seqs += [r.seq for r in self.conversation[plan.cut :]]
        return seqs

    def supersede(self, plan: Plan) -> None:
        """Marks what ``plan`` supersedes: the old system prompt, an edit's cut. The visible messages
        before a cut keep their forms: only the hash is redone, from them."""
        if plan.system_cut is not None:
            for record in self.system[plan.system_cut :]:
                record.superseded = True
            del self.system[plan.system_cut :], self._system_keys[plan.system_cut :]
        if plan.cut is not None:
            for record in self.conversation[plan.cut :]:
                record.superseded = True
            del self.conversation[plan.cut :]
            while self.shown and self.shown[-1].start >= plan.cut:
                self.shown.pop()
            self._stale, self._lookup = True, None
        self.active = [r for r in self.active if not r.superseded]

    def _derive(self, record: Record) -> None:
        if record.superseded:
            return
        self.active.append(record)
        message, visible = record.message, record.visible
        role = message.get("role")
        if role in SYSTEM_ROLES:
            self.system.append(record)
            self._system_keys.append(form(message))
            return
        index = len(self.conversation)
        self.conversation.append(record)
        if role == "assistant" and visible is not message:
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
            last.echo = None
            return
        if last is not None and not self._stale and last.message.get("role") != "tool":
            self._prefix.update(last.key)
            self._prefix.update(b"\n")
        self.shown.append(
            Shown(visible, form(visible), calls_of(visible), index, index + 1, record.turn, record.by)
        )

    def lookup(self) -> str:
        """The hash of the visible conversation but its tool results, as ``Request.lookup`` makes it."""
        if self._lookup is None:
            if self._stale:
                self._prefix, self._stale = hashlib.sha256(), False
                for shown in self.shown[:-1]:
                    if shown.message.get("role") != "tool":
                        self._prefix.update(shown.key)
                        self._prefix.update(b"\n")
            h = self._prefix.copy()
            if self.shown and self.shown[-1].message.get("role") != "tool":
                h.update(self.shown[-1].key)
                h.update(b"\n")
            self._lookup = h.hexdigest()
        return self._lookup

    def _common(self, request: Request, order: Sequence[int]) -> int:
        """How many of the request's conversation messages (those at ``order``) are the visible
        conversation's first. The very message the session stored, or found equal last time, is the same
        at the cost of a pointer (a client resending its history sends, parsed once by ``Resent``, the
        same objects every turn); one equal as it came is the same without a look at its form (equal dicts
        have equal forms, and a shown message holds no internal calls to leave out); any other is compared
        by its form and its calls."""
        messages, internal, shown = request.conversation, self.internal, self.shown
        n = min(len(order), len(shown))
        for k in range(n):
            i, s = order[k], shown[k]
            m = messages[i]
            if m is s.echo or m is s.message:  # what was compared already, or stored as it came
                continue
            if m != s.message and (
                request.key(i) != s.key
                or ((s.calls is not None or "tool_calls" in m) and _seen(calls_of(m), internal) != s.calls)
            ):
                return k
            s.echo = m
        return n

    def matches(self, request: Request) -> bool:
        """Whether the request's conversation before its tail is exactly the visible conversation."""
        order = request.kept(self.internal, request.split)
        return len(order) == len(self.shown) and self._common(request, order) == len(order)

    def plan(self, request: Request) -> Plan:
        """SPEC's three cases, for the conversation: the request resends everything (only its new tail is
        added), or shares a beginning and then differs (an edit or a regenerate: from the first difference
        on, the request wins), or shares nothing (a client sending only its new message: the stored
        conversation, internal tool traffic included, goes in front). The system prompt apart."""
        shown = self.shown
        order = request.kept(self.internal, len(request.conversation))
        k = self._common(request, order)  # after ``matches``, a pointer compare per message
        if k == len(shown) or k == 0:
            used, cut, stored = k, None, self.conversation
        else:  # the cut falls after the last shared message: a superseded answer's tool traffic goes too
            used, cut = k, shown[k - 1].stop
            stored = self.conversation[:cut]
        new = [without_internal(request.conversation[i], self.internal) for i in order[used:]]
        model = self._model(request, order, stored, used, new)
        keys, old = request.system_keys, self._system_keys
        if not keys or keys == old:  # none brought (a stateful client), or the same
            return Plan(model, new, [], None, cut)
        # Another system prompt: what it shares with the stored one from the start stays (a prompt that
        # only adds or changes a note at its end is not stored again), the rest is replaced.
        p = 0
        while p < len(keys) and p < len(old) and keys[p] == old[p]:
            p += 1
        return Plan(model, new, [m for _, m in request.system[p:]], p if p < len(old) else None, cut)

    def _model(
        self, request: Request, order: Sequence[int], stored: list[Record], used: int, new: list[Message]
    ) -> list[Message]:
        """The model's messages: the system messages of the request where it put them (or the stored ones
        in front), the stored records standing for the request's first ``used`` conversation messages (or
        all of them in front, when nothing is shared), then the new messages."""
        if not request.system:
            return [r.message for r in self.system] + [r.message for r in stored] + new
        front = [m for before, m in request.system if before == 0]
        inline = [(bisect.bisect_left(order, b), m) for b, m in request.system if b > 0]  # b: among ``order``
        messages = [r.message for r in stored]
        if not inline:
            return front + messages + new
        # before ``used``: ahead of the first record of the stored message it preceded in the request
        in_stored = [(self.shown[b].start, m) for b, m in inline if b < used]
        in_new = [(b - used, m) for b, m in inline if b >= used]
        return front + _spliced(messages, in_stored) + _spliced(new, in_new)


def _spliced(items: list[Message], inserts: list[tuple[int, Message]]) -> list[Message]:
    """``items`` with each insert placed before the item at its index (in order; at the end past it)."""
    out: list[Message] = []
    done = 0
    for at, message in inserts:
        out += items[done:at]
        out.append(message)
        done = max(done, at)
    return out + items[done:]
