"""The on-disk format of the session store: the files in ``$SORAT_HOME/sessions/``, their records and ids.

Files in the store's root (``<key>`` is the session id lower-cased: ids that differ only in case are one
session, and one file on every filesystem; ids are checked by ``valid_session_id`` before any path is
built, and no name the store makes can leave the root):

``<key>.jsonl``: the messages. Append-only JSON Lines, one record a line, each written with one
``os.write`` as soon as it exists; a background flusher fsyncs at most ``flush_delay`` later, so a
killed process loses at most the line being written and an OS crash about the last second::

    {"sorat_session": 1, "id": "My-Chat", "created_at": 1712345678.123}              first line
    {"seq": 0, "ts": 1712345678.2, "turn": 1, "by": "client", "message": {...}}
    {"seq": 1, "ts": 1712345679.0, "turn": 1, "by": "agent", "message": {...}, "visible": {...}}
    {"seq": 2, "ts": 1712345679.4, "turn": 1, "by": "agent", "message": {...}, "visible": null}
    {"ts": 1712345801.5, "turn": 2, "supersede": [1, 2]}

  ``message`` is the model-facing OpenAI message; ``by`` says whether the client sent it or the agent
  produced it during turn ``turn``. ``visible`` is what the client saw of it: absent = the message
  itself, ``null`` = nothing (an internal tool result), an object = a projection (an assistant message
  without its internal ``tool_calls``). A ``supersede`` record marks earlier messages (by ``seq``) as
  replaced by an edit, a regenerate or a new system prompt: they stay in the file but are never sent to
  the model again. The active ``system`` and ``developer`` messages are the session's system prompt,
  kept apart from the conversation: a request bringing another one appends it with its turn and
  supersedes the old one. The *visible conversation* (compared with requests, and but for its tool
  results hashed for the lookup) is the sequence of ``visible`` projections of the other active records,
  where consecutive assistant projections of one turn make one message: the client saw one streamed
  message.
  A torn last line is skipped on read and cut off before the next append; unknown records are skipped.

``<key>.json``: the metadata, rewritten by the flusher after a turn ends or a title is set (the newest
version of each file, at most ``flush_delay`` late), in place with one write padded with spaces, so a
killed process leaves the old version or the new one; a file that is missing, unreadable or behind its
``.jsonl`` is rebuilt from the messages::

    {"format": 3, "id", "title", "fallback_title", "model", "created_at", "updated_at",
     "message_count", "lookup", "size", "version"}

  ``title`` is the generated title (null until one exists), ``fallback_title`` the first user message
  cut to 60 characters, ``message_count`` the system prompt's and the visible conversation's messages,
  ``lookup`` the hash of the visible conversation, ``size`` the length of the ``.jsonl`` it describes
  (another length on start means a crash mid-turn: the metadata is rebuilt from the messages),
  ``version`` rises with every write. Format 1 hashed the system prompt and tool results too, format 2
  assistant text with its spacing: such a file is listed as it is and rebuilt from its messages in the
  background.

``.index.sqlite3``: the index, a cache of every session's metadata that the files can always rebuild.
SQLite (stdlib) rather than one JSON file: a page of 10 000 sessions newest first, a lookup by
conversation hash and an update of one row are each an indexed query, where a JSON index would be
rewritten whole on every turn and sorted on every listing.
``.clean``: a random token also written into the index on a clean close. On open, a missing or
different token (a crash, or an index deleted or restored from elsewhere) makes a background task
rebuild the index from the files; listing and the hash lookup wait for it, nothing else does. A
trusted index is still compared with the directory listing in the background (files copied in or
removed while sorat was stopped).
``.<name>.<run>.<random>.tmp``: a replace in flight (``.clean``, or metadata of 4 KiB or more, which one write
cannot update safely in place); a crash's leftovers go at the next rebuild.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import orjson

from ..types import Message

log = logging.getLogger("sorat.sessions")

FORMAT = 1  # of the .jsonl files
META_FORMAT = 3  # of the .json files
# Formats whose lookup hashed otherwise (1: the system prompt and tool results too; 2: assistant text
# with its spacing): listed as they are, rebuilt from the messages in the background.
OUTDATED_META = frozenset({1, 2})
INDEX = ".index.sqlite3"
CLEAN = ".clean"

_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_DEVICES = frozenset(
    {"CON", "PRN", "AUX", "NUL", *(f"COM{i}" for i in range(1, 10)), *(f"LPT{i}" for i in range(1, 10))}
)


def valid_session_id(value: str) -> bool:
    """SPEC's pattern, no trailing dot, no Windows device name (``CON``, ``con.txt``…)."""
    if not isinstance(value, str) or _ID.fullmatch(value) is None or value.endswith("."):
        return False
    return value.split(".", 1)[0].upper() not in _DEVICES


def key_of(session_id: str) -> str:
    """The session's name on disk and in the store."""
    return session_id.lower()


def new_id() -> str:
    return "sess_" + secrets.token_hex(12)


def dumps(obj: Any, *, sort: bool = False) -> bytes:
    try:
        return orjson.dumps(obj, option=orjson.OPT_SORT_KEYS if sort else 0)
    except TypeError:  # an integer beyond 64 bits, say: the slow path copes
        return json.dumps(obj, sort_keys=sort, ensure_ascii=False, separators=(",", ":")).encode()


@dataclass(slots=True)
class Record:
    """One message line of a ``.jsonl``."""

    seq: int
    ts: float
    turn: int
    by: str  # "client" | "agent"
    message: Message
    visible: Message | None  # ``message`` itself when the client saw all of it
    superseded: bool = False

    def line(self) -> bytes:
        doc: dict[str, Any] = {
            "seq": self.seq,
            "ts": round(self.ts, 3),
            "turn": self.turn,
            "by": self.by,
            "message": self.message,
        }
        if self.visible is not self.message:
            doc["visible"] = self.visible
        return dumps(doc) + b"\n"


def header_line(session_id: str, created_at: float) -> bytes:
    return dumps({"sorat_session": FORMAT, "id": session_id, "created_at": round(created_at, 3)}) + b"\n"


def supersede_line(ts: float, turn: int, seqs: Iterable[int]) -> bytes:
    return dumps({"ts": round(ts, 3), "turn": turn, "supersede": sorted(seqs)}) + b"\n"


@dataclass(slots=True)
class Lines:
    """What the lines of a ``.jsonl`` say."""

    header: dict[str, Any]
    records: list[Record]  # each marked if a supersede line names it


def parse_lines(key: str, lines: Iterable[bytes]) -> Lines:
    """Reads whole lines (the torn last one already cut off); unreadable and unknown lines are skipped."""
    header: dict[str, Any] = {}
    records: list[Record] = []
    superseded: set[int] = set()
    for n, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            doc = orjson.loads(line)
        except orjson.JSONDecodeError:
            log.warning("session %s: skipping unreadable line %d", key, n + 1)
            continue
        if not isinstance(doc, dict):
            continue
        if isinstance(doc.get("message"), dict):
            message = doc["message"]
            visible = doc.get("visible", message)
            seq = doc.get("seq")
            records.append(
                Record(
                    seq=seq if isinstance(seq, int) else (records[-1].seq + 1 if records else 0),
                    ts=float(doc.get("ts") or 0),
                    turn=int(doc.get("turn") or 0),
                    by="agent" if doc.get("by") == "agent" else "client",
                    message=message,
                    visible=visible if visible is None or isinstance(visible, dict) else message,
                )
            )
        elif isinstance(doc.get("supersede"), list):
            superseded.update(s for s in doc["supersede"] if isinstance(s, int))
        elif "sorat_session" in doc:
            header = doc
    for record in records:
        record.superseded = record.seq in superseded
    return Lines(header, records)


def number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def meta_row(key: str, meta: dict[str, Any] | None, size: int | None) -> tuple[Any, ...] | None:
    """The index row a metadata file gives, or None when it must be rebuilt from the messages (``size``:
    the length of its ``.jsonl``)."""
    if (
        meta is None
        or (meta.get("format") != META_FORMAT and meta.get("format") not in OUTDATED_META)
        or meta.get("size") != (size or 0)
    ):
        return None
    sid, title, fallback = meta.get("id"), meta.get("title"), meta.get("fallback_title")
    created, updated = number(meta.get("created_at")), number(meta.get("updated_at"))
    count, lookup, version = meta.get("message_count"), meta.get("lookup"), meta.get("version")
    if not (isinstance(sid, str) and valid_session_id(sid) and key_of(sid) == key):
        return None
    if created is None or updated is None or not isinstance(count, int) or not isinstance(version, int):
        return None
    if not isinstance(lookup, str) or not isinstance(meta.get("model"), str):
        return None
    shown = title if isinstance(title, str) and title else fallback if isinstance(fallback, str) else None
    return (key, sid, shown, meta["model"], created, updated, count, lookup, version)
