"""Sessions in memory: one session's id and metadata, its open file and its ``History``, made new or
read back from its files (``load``); and ``Cache``, the sessions kept in memory with the locks of those
in use."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..wire import text_of
from . import files
from .format import META_FORMAT, key_of, number, parse_lines, valid_session_id
from .history import History

_TITLE_CHARS = 60


class Session:
    def __init__(self, key: str, session_id: str, created_at: float) -> None:
        self.key = key
        self.id = session_id
        self.created_at = created_at
        self.updated_at = created_at
        self.title: str | None = None  # generated
        self.model = ""
        self.version = 0
        self.size = 0  # bytes of the .jsonl
        self.fd: int | None = None
        self.deleted = False
        self.history = History()

    def close(self) -> None:
        if self.fd is not None:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = None

    def fallback_title(self) -> str | None:
        for record in self.history.active:
            if record.message.get("role") == "user":
                text = " ".join(text_of(record.message.get("content")).split())
                return text[:_TITLE_CHARS] or None
        return None

    def row(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "title": self.title or self.fallback_title(),
            "model": self.model,
            "created_at": int(self.created_at),
            "updated_at": int(self.updated_at),
            "message_count": self.history.message_count,
        }

    def meta(self) -> dict[str, Any]:
        """The metadata file's content (``format.py``)."""
        return {
            "format": META_FORMAT,
            "id": self.id,
            "title": self.title,
            "fallback_title": self.fallback_title(),
            "model": self.model,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "message_count": self.history.message_count,
            "lookup": self.history.lookup(),
            "size": self.size,
            "version": self.version,
        }


def load(root: Path, key: str, pending: bytes | None = None) -> Session | None:
    """The session from its files (``pending``: its metadata not written yet), or None if it has none.
    Runs in a worker thread."""
    found = files.read_session(root, key, pending)
    if found is None:
        return None
    meta = found.meta
    parsed = parse_lines(key, found.lines)
    records, header = parsed.records, parsed.header
    session_id = key
    for candidate in ((meta or {}).get("id"), header.get("id")):
        if isinstance(candidate, str) and valid_session_id(candidate) and key_of(candidate) == key:
            session_id = candidate
            break
    created = number((meta or {}).get("created_at")) or number(header.get("created_at"))
    if created is None:
        created = records[0].ts if records else time.time()
    session = Session(key, session_id, created)
    for record in records:
        session.history.apply(record)
    session.size = found.size
    if meta is not None:
        title = meta.get("title")
        session.title = title if isinstance(title, str) and title else None
        model, version = meta.get("model"), meta.get("version")
        session.model = model if isinstance(model, str) else ""
        session.version = version if isinstance(version, int) else 0
        session.updated_at = number(meta.get("updated_at")) or created
    if records and (meta is None or meta.get("size") != found.size):  # metadata behind its messages
        # (metadata that describes the whole file keeps its exact time: a record's ts, rounded to the
        # millisecond, may lie just after it and reorder sessions saved in the same millisecond)
        session.updated_at = max(session.updated_at, records[-1].ts)
    return session


class Slot:
    """The locks of one session, alive while anyone uses it. Taken in this order: request, load, meta."""

    __slots__ = ("request", "load", "meta", "users")

    def __init__(self) -> None:
        self.request = asyncio.Lock()  # held for a whole request: requests on one session are serialized
        self.load = asyncio.Lock()  # one reader of the files at a time, and only one cached copy
        self.meta = asyncio.Lock()  # metadata writes
        self.users = 0


class Cache:
    """The sessions in memory, least recently used first, and the locks (``Slot``) of those in use: a
    session nobody uses goes when more than ``size`` are cached (every byte of it is on disk already)."""

    def __init__(self, root: Path, size: int, pending: dict[str, bytes]) -> None:
        self.root = root
        self._size = size
        self._pending = pending  # metadata files not written yet, by key: what a reload must see
        self.sessions: OrderedDict[str, Session] = OrderedDict()
        self.slots: dict[str, Slot] = {}

    def __len__(self) -> int:
        return len(self.sessions)

    def __contains__(self, key: object) -> bool:
        return key in self.sessions

    def pin(self, key: str) -> Slot:
        slot = self.slots.get(key)
        if slot is None:
            slot = self.slots[key] = Slot()
        slot.users += 1
        return slot

    def unpin(self, key: str) -> None:
        slot = self.slots[key]
        slot.users -= 1
        if slot.users == 0:
            del self.slots[key]
            self._trim()

    @contextlib.contextmanager
    def pinned(self, key: str) -> Iterator[Slot]:
        slot = self.pin(key)
        try:
            yield slot
        finally:
            self.unpin(key)

    async def load(self, key: str, slot: Slot) -> Session | None:
        async with slot.load:
            return await self.load_locked(key)

    async def load_locked(self, key: str) -> Session | None:
        """The session, read from its files unless cached; None if it has none. Holds ``slot.load``."""
        session = self.sessions.get(key)
        if session is None:
            pending = self._pending.get(key)
            if pending is None and not any(os.path.lexists(p) for p in files.paths(self.root, key)):
                return None  # a new session: no thread hop to learn that nothing is there
            session = await asyncio.to_thread(load, self.root, key, pending)
            if session is None:
                return None
            self.sessions[key] = session
        self.sessions.move_to_end(key)
        return session

    def _trim(self) -> None:
        """Evicts the least recently used sessions nobody uses."""
        excess = len(self.sessions) - self._size
        if excess <= 0:
            return
        idle = []  # the oldest first: usually the first key or two, not a pass over the whole cache
        for key in self.sessions:
            if key not in self.slots:
                idle.append(key)
                if len(idle) == excess:
                    break
        for key in idle:
            self.sessions.pop(key).close()
