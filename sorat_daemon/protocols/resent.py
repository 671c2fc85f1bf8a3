"""Bodies that resend a conversation, parsed once. Pure: no I/O.

Codex, Claude Code and every stateless chat client send, on each turn, the body of the turn before with
new elements at the end of one array (``input``, ``messages``): the same bytes up to that array's end,
then ``,`` and the new elements, then the same bytes again. ``Resent`` keeps the last few such bodies
with their parse and the offset of that array's closing bracket, and parses a body that continues one of
them from there: two memcmps over the whole body, then a parse of only what is new. A body that changes
the last elements too (Claude Code moves ``cache_control`` to its newest block) goes on from where an
earlier body of the conversation ended (a mark), and only what follows it is parsed. Anything else (another
conversation, an edit, other spacing) is parsed whole, and becomes a body the next one may continue.

Why the splice is exact. For a kept body ``prev``, ``end`` is the offset of a ``]`` that, parsed as the
continuation of ``{"<field>":[``, completes a JSON object whose keys are ``field`` and those after it in
``prev``'s parse. Both parses of those same bytes succeed, so at ``end`` ``prev`` is outside any string
(a string state that differed would differ at every later quote, leaving one of them in a string at the
end; a backslash would be out of a string in one of them) and inside exactly an object and an array (the
closers the bytes hold unmatched are the same in both): ``end`` closes the top-level array, and the keys
name it ``field`` (a duplicate key fails the comparison). A body ``prev[:end] + "," + new + prev[end:]``
where ``"[" + new + "]"`` parses as an array is then ``prev`` with that array's elements appended; a
mark is such a splice point of an earlier body, so ``prev[:mark] + new + prev[end:]`` is ``prev``'s
first elements up to it followed by ``new``'s.
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from typing import Any

import orjson

from sorat_daemon import wire
from sorat_daemon.types import JSON

MIN_BODY = 32 << 10  # below this a parse costs less than keeping the body
MARKS = 3  # earlier ends kept per body


@dataclasses.dataclass(slots=True)
class Parsed:
    """A body's parse. ``reused``: how many leading elements of the array came from a kept body (0 for
    a body parsed whole); ``prior``: what the protocol kept with that body (``keep``), if any: its work
    on that body's elements, which may be more than ``reused`` (the protocol goes back, or starts over)."""

    data: JSON
    reused: int = 0
    prior: Any = None
    _entry: _Entry | None = dataclasses.field(default=None, repr=False)

    def keep(self, state: Any) -> None:
        """Keeps ``state`` (the protocol's work on this body's elements) for the body that continues it."""
        if self._entry is not None:
            self._entry.state = state


@dataclasses.dataclass(slots=True)
class _Entry:
    body: bytes
    end: int  # the offset of the array's closing bracket
    data: JSON  # the parse, with its own copy of the array (the caller's may grow)
    count: int  # the array's length
    state: Any = None
    # Places where elements begin, as (the offset after the "," before one, how many come before it):
    # where earlier bodies ended, and where the last element begins. A body may change the last elements
    # (Claude Code moves ``cache_control`` to its newest block every turn) and share all before a mark.
    marks: tuple[tuple[int, int], ...] = ()


class Resent:
    """The last ``size`` bodies of one protocol whose ``field`` array was found, most recent last: one
    per conversation (a body that continues another takes its place)."""

    def __init__(self, field: str, size: int = 4, min_body: int = MIN_BODY) -> None:
        self.field = field
        self._size = size
        self._min_body = min_body
        self._open = b"{" + orjson.dumps(field) + b":["  # the probe of where the array ends
        self._kept: OrderedDict[int, _Entry] = OrderedDict()
        self._next = 0

    def object(self, body: bytes) -> Parsed:
        """A request body that must be a JSON object, as ``wire.json_object`` checks it."""
        try:
            parsed = self.loads(body)
        except orjson.JSONDecodeError as e:
            raise wire.not_json(e) from None
        wire.must_be_object(parsed.data)
        return parsed

    def loads(self, body: bytes) -> Parsed:
        """``body`` parsed, as ``orjson.loads`` would (``orjson.JSONDecodeError`` for what it refuses)."""
        if len(body) < self._min_body:
            return Parsed(orjson.loads(body))
        for key, prev in reversed(self._kept.items()):
            found = self._continued(body, prev)
            if found is not None:
                del self._kept[key]  # taken over by the body that continues it
                count, at, new, marks = found
                data = dict(prev.data)
                items = data[self.field] = prev.data[self.field][:count] + new
                end = len(body) - (len(prev.body) - prev.end)
                last = _last_start(body, at, end, len(items))
                entry = self._add(body, end, data, items, (*marks, *last)[-MARKS:])
                return Parsed(data, count, prev.state, entry)
        data = orjson.loads(body)
        return Parsed(data, _entry=self._keep(body, data))

    def _continued(
        self, body: bytes, prev: _Entry
    ) -> tuple[int, int, list[Any], tuple[tuple[int, int], ...]] | None:
        """How ``body`` goes on from ``prev``: (the elements kept, the offset of the first new one, the new
        elements, the marks that still hold), if it only adds elements to the array, or replaces those
        after a mark."""
        end, tail = prev.end, len(prev.body) - prev.end
        if len(body) <= tail + 1 or not body.endswith(memoryview(prev.body)[end:]):
            return None
        stop = len(body) - tail
        if stop > end and body[end] == 0x2C and body.startswith(memoryview(prev.body)[:end]):  # ","
            new = _elements(body[end + 1 : stop])
            if new is not None:
                return prev.count, end + 1, new, (*prev.marks, (end + 1, prev.count))
        for k in range(len(prev.marks) - 1, -1, -1):
            at, count = prev.marks[k]
            if stop > at and body.startswith(memoryview(prev.body)[:at]):
                new = _elements(body[at:stop])
                return None if new is None else (count, at, new, prev.marks[: k + 1])
        return None

    def _keep(self, body: bytes, data: Any) -> _Entry | None:
        """Finds where ``field`` ends in a body parsed whole, and keeps the body if it does."""
        if not isinstance(data, dict):
            return None
        items = data.get(self.field)
        if not isinstance(items, list) or not items:
            return None
        keys = list(data)
        after = keys[keys.index(self.field) + 1 :]
        if after:  # the bracket is followed by the next key (in either common spacing)
            name = orjson.dumps(after[0])
            candidates = [body.rfind(b"]," + name), body.rfind(b"], " + name)]
        else:  # the array is the last value: "]}" at the end
            stripped = body.rstrip()
            candidates = [len(stripped) - 2] if stripped.endswith(b"]}") else []
        for end in sorted({c for c in candidates if c > 0}, reverse=True):
            try:
                rest = orjson.loads(self._open + body[end:])
            except orjson.JSONDecodeError:
                continue
            if isinstance(rest, dict) and list(rest) == [self.field, *after] and rest[self.field] == []:
                return self._add(body, end, data, items, _last_start(body, 0, end, len(items)))
        return None

    def _add(
        self, body: bytes, end: int, data: JSON, items: list[Any], marks: tuple[tuple[int, int], ...]
    ) -> _Entry:
        kept = dict(data)
        kept[self.field] = list(items)  # the caller's list may grow (an agent appends its rounds)
        entry = _Entry(body, end, kept, len(items), marks=marks)
        self._kept[self._next] = entry
        self._next += 1
        while len(self._kept) > self._size:
            self._kept.popitem(last=False)
        return entry


def parse_object(body: bytes, resent: Resent | None) -> Parsed:
    """A request body that must be a JSON object (``wire.json_object``), through ``resent`` if given."""
    return resent.object(body) if resent is not None else Parsed(wire.json_object(body))


def _elements(raw: bytes) -> list[Any] | None:
    """``raw`` as a non-empty run of array elements, or None."""
    try:
        new = orjson.loads(b"[" + raw + b"]")
    except orjson.JSONDecodeError:
        return None
    return new if isinstance(new, list) and new else None


def _last_start(body: bytes, lo: int, end: int, count: int) -> tuple[tuple[int, int], ...]:
    """A mark where the array's last object element begins, looked for in ``body[lo:end]``: after a
    ``,{`` whose rest up to ``end`` parses as elements (a ``,{`` inside the element leaves an unbalanced
    rest, one inside a string ends with the probe in a string: neither parses). () if none is found."""
    hi = end
    for _ in range(4):
        c = max(body.rfind(b",{", lo, hi), body.rfind(b", {", lo, hi))
        if c < 0:
            return ()
        new = _elements(body[c + 1 : end])
        if new is not None:
            return ((c + 1, count - len(new)),) if len(new) < count else ()
        hi = c
    return ()
