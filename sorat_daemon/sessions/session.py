"""One session in memory: its id and metadata, its open file and its ``History``; made new, or read back
from its files (``load``)."""

from __future__ import annotations

import contextlib
import os
import time
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
