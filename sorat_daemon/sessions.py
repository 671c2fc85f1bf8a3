"""The session store: every conversation, kept on disk under ``$SORAT_HOME/sessions/``.

Files in ``root`` (``<key>`` is the session id lower-cased: ids that differ only in case are one
session, and one file on every filesystem; ids are checked by ``valid_session_id`` before any path is
built, and no name the store makes can leave ``root``):

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
  replaced by an edit or a regenerate: they stay in the file but are never sent to the model again.
  The *visible conversation* (compared with requests, hashed for the lookup, counted in
  ``message_count``) is the sequence of ``visible`` projections of active records, where consecutive
  assistant projections of one turn make one message: the client saw one streamed message.
  A torn last line is skipped on read and cut off before the next append; unknown records are skipped.

``<key>.json``: the metadata, rewritten by the flusher after a turn ends or a title is set (the newest
version of each file, at most ``flush_delay`` late), in place with one write padded with spaces, so a
killed process leaves the old version or the new one; a file that is missing, unreadable or behind its
``.jsonl`` is rebuilt from the messages::

    {"format": 1, "id", "title", "fallback_title", "model", "created_at", "updated_at",
     "message_count", "lookup", "size", "version"}

  ``title`` is the generated title (null until one exists), ``fallback_title`` the first user message
  cut to 60 characters, ``lookup`` the hash of the visible conversation, ``size`` the length of the
  ``.jsonl`` it describes (another length on start means a crash mid-turn: the metadata is rebuilt
  from the messages), ``version`` rises with every write.

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

import asyncio
import builtins
import contextlib
import errno
import functools
import hashlib
import json
import logging
import os
import re
import secrets
import sqlite3
import sys
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import EllipsisType, TracebackType
from typing import Any, TypeVar

import orjson

from . import errors
from .paths import write_all
from .types import Message
from .wire import text_of

log = logging.getLogger("sorat.sessions")

T = TypeVar("T")

FORMAT = 1
_INDEX = ".index.sqlite3"
_CLEAN = ".clean"
_TITLE_CHARS = 60
_CANDIDATES = 20  # sessions compared exactly for one hash lookup
_NO_RESULT = '{"error": "no result: the request ended before this tool call finished"}'
_O_BINARY = getattr(os, "O_BINARY", 0)
_O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)  # a symlink planted in sessions/ must not lead outside it
_CREATE = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL | _O_BINARY | _O_NOFOLLOW

_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_DEVICES = frozenset(
    {"CON", "PRN", "AUX", "NUL", *(f"COM{i}" for i in range(1, 10)), *(f"LPT{i}" for i in range(1, 10))}
)


def valid_session_id(value: str) -> bool:
    """SPEC's pattern, no trailing dot, no Windows device name (``CON``, ``con.txt``…)."""
    if not isinstance(value, str) or _ID.fullmatch(value) is None or value.endswith("."):
        return False
    return value.split(".", 1)[0].upper() not in _DEVICES


def _key(session_id: str) -> str:
    return session_id.lower()


def _new_id() -> str:
    return "sess_" + secrets.token_hex(12)


# ---------------------------------------------------------------------------------------------------
# Comparing messages: what counts as "the same message" between a request and the stored conversation


def _dumps(obj: Any, *, sort: bool = False) -> bytes:
    try:
        return orjson.dumps(obj, option=orjson.OPT_SORT_KEYS if sort else 0)
    except TypeError:  # an integer beyond 64 bits, say: the slow path copes
        return json.dumps(obj, sort_keys=sort, ensure_ascii=False, separators=(",", ":")).encode()


def _content(content: Any) -> Any:
    """A list of text parts equals its joined string; empty equals absent."""
    if isinstance(content, list):
        if all(isinstance(p, dict) and p.get("type") == "text" for p in content):
            content = "".join(str(p.get("text") or "") for p in content)
        else:
            content = [_no_nulls(p) for p in content]
    return None if content in ("", []) else content


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


def _call_ids(message: Message | None) -> set[str]:
    if not message:
        return set()
    calls = message.get("tool_calls")
    if not isinstance(calls, list):
        return set()
    return {c["id"] for c in calls if isinstance(c, dict) and isinstance(c.get("id"), str)}


_THINK = re.compile(r"^\s*(?:<think>.*?</think>\s*)+", re.DOTALL)


def _form(message: Message, internal: Iterable[str] | set[str] = (), *, coarse: bool = False) -> bytes:
    """The canonical bytes two messages are compared by. Key order, null fields, reasoning, list-vs-string
    content and internal tool calls a client echoes back don't count. ``coarse`` also drops tool calls:
    the form hashed for the lookup, before it is known which session (and so which calls are internal)."""
    role = message.get("role")
    out: dict[str, Any] = {"role": role}
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
    return bytes(memoryview(_dumps(out, sort=True)))


def _lookup_hash(messages: Sequence[Message]) -> str:
    h = hashlib.sha256()
    for message in messages:
        h.update(_form(message, coarse=True) + b"\n")
    return h.hexdigest()


def _split_tail(messages: Sequence[Message]) -> int:
    """Where the request's new messages start: the tool results answering the last assistant message,
    else the last user message."""
    j = len(messages)
    while j > 0 and messages[j - 1].get("role") == "tool":
        j -= 1
    if j == len(messages) and j > 0 and messages[-1].get("role") == "user":
        j -= 1
    return j


def _without_internal(message: Message, internal: set[str]) -> Message:
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


def _with_results(messages: Sequence[Message]) -> list[Message]:
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
            out += [{"role": "tool", "tool_call_id": i, "content": _NO_RESULT} for i in waiting]
            waiting = []
        out.append(dict(message))
        if role == "assistant" and isinstance(message.get("tool_calls"), list):
            waiting = sorted(_call_ids(message))
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


# ---------------------------------------------------------------------------------------------------
# One session in memory


@dataclass(slots=True)
class _Record:
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
        return _dumps(doc) + b"\n"


@dataclass(slots=True)
class _Shown:
    """One message of the visible conversation, and the records it came from."""

    message: Message
    form: bytes
    coarse: bytes
    first_seq: int
    last_seq: int
    turn: int
    by: str


@dataclass(slots=True)
class _Plan:
    model: list[Message]  # what the model gets
    append: list[Message]  # request messages new to the session
    cut: int | None  # supersede every active record from this seq on


class _Session:
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
        self.records: list[_Record] = []
        self.next_seq = 0
        self.turns = 0
        self.internal: set[str] = set()  # ids of tool calls the client never saw
        self.active: list[_Record] = []
        self.shown: list[_Shown] = []
        self._prefix = hashlib.sha256()  # over the coarse forms of shown[:-1]
        self._lookup: str | None = None

    def apply(self, record: _Record) -> None:
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

    def _derive(self, record: _Record) -> None:
        if record.superseded:
            return
        self.active.append(record)
        message, visible = record.message, record.visible
        if message.get("role") == "assistant" and visible is not message:
            shown_ids = _call_ids(visible)
            self.internal.update(i for i in _call_ids(message) if i not in shown_ids)
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
            self.shown[-1] = _Shown(
                merged, _form(merged, self.internal), _form(merged, coarse=True),
                last.first_seq, record.seq, record.turn, "agent",
            )  # fmt: skip
            return
        if last is not None:
            self._prefix.update(last.coarse + b"\n")
        self.shown.append(
            _Shown(
                visible, _form(visible, self.internal), _form(visible, coarse=True),
                record.seq, record.seq, record.turn, record.by,
            )
        )  # fmt: skip

    def lookup(self) -> str:
        if self._lookup is None:
            h = self._prefix.copy()
            if self.shown:
                h.update(self.shown[-1].coarse + b"\n")
            self._lookup = h.hexdigest()
        return self._lookup

    def matches(self, messages: Sequence[Message]) -> bool:
        if len(messages) != len(self.shown):
            return False
        return all(_form(m, self.internal) == s.form for m, s in zip(messages, self.shown, strict=True))

    def plan(self, messages: Sequence[Message]) -> _Plan:
        """SPEC's three cases: resend everything, edit/regenerate, only the new message."""
        forms = [_form(m, self.internal) for m in messages]
        messages = [_without_internal(m, self.internal) for m in messages]
        shown = self.shown
        k = 0
        while k < len(forms) and k < len(shown) and forms[k] == shown[k].form:
            k += 1
        history = [r.message for r in self.active]
        if k == len(shown):  # the request begins with the whole visible conversation
            return _Plan(history + list(messages[k:]), list(messages[k:]), None)
        sys_r = _leading_system(m.get("role") for m in messages)
        sys_v = _leading_system(s.message.get("role") for s in shown)
        if sys_r < len(messages) and sys_v < len(shown) and forms[sys_r] != shown[sys_v].form:
            # Nothing shared but the system prompt: the stored conversation goes in front. A request
            # with another system prompt gets it for this call; the session keeps its own.
            tail = list(messages[sys_r:])
            if sys_r and forms[:sys_r] != [s.form for s in shown[:sys_v]]:
                rest = history[_leading_system(m.get("role") for m in history) :]
                return _Plan(list(messages[:sys_r]) + rest + tail, tail, None)
            return _Plan(history + tail, tail, None)
        # An edit or a regenerate: from the first difference on, the request wins. The cut falls right
        # after the last record of the last shared message, so internal tool traffic of a superseded
        # answer goes with it.
        cut = shown[k - 1].last_seq + 1 if k else 0
        kept = [r.message for r in self.active if r.seq < cut]
        return _Plan(kept + list(messages[k:]), list(messages[k:]), cut)

    def fallback_title(self) -> str | None:
        for record in self.active:
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
            "message_count": len(self.shown),
        }

    def meta(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "id": self.id,
            "title": self.title,
            "fallback_title": self.fallback_title(),
            "model": self.model,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "message_count": len(self.shown),
            "lookup": self.lookup(),
            "size": self.size,
            "version": self.version,
        }


def _leading_system(roles: Iterable[Any]) -> int:
    n = 0
    for role in roles:
        if role != "system":
            break
        n += 1
    return n


# ---------------------------------------------------------------------------------------------------
# Files (these run in worker threads)


def _paths(root: Path, key: str) -> tuple[Path, Path]:
    return root / f"{key}.jsonl", root / f"{key}.json"


def _read_bytes(path: Path) -> bytes | None:
    try:
        fd = os.open(path, os.O_RDONLY | _O_BINARY | _O_NOFOLLOW)
    except FileNotFoundError:
        return None
    with open(fd, "rb") as f:
        return f.read()


def _read_meta(path: Path) -> dict[str, Any] | None:
    try:
        data = _read_bytes(path)
        meta = orjson.loads(data) if data is not None else None
    except (OSError, orjson.JSONDecodeError) as e:
        log.warning("unreadable session metadata %s: %s", path.name, e)
        return None
    return meta if isinstance(meta, dict) else None


def _write_atomic(path: Path, data: bytes, run: str, *, sync: bool = True) -> None:
    """``run`` names the store instance in the temp file's name: the repair removes only other runs' temps.
    ``sync=False`` leaves the fsync to the caller's grouped flush (the metadata of a turn)."""
    tmp = path.with_name(f".{path.name}.{run}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_BINARY | _O_NOFOLLOW, 0o600)
    try:
        write_all(fd, data)
        if sync:
            os.fsync(fd)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)  # a full disk leaves no half-written temp file
        raise
    os.close(fd)
    try:
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)
        raise


def _create_file(root: Path, key: str, header: bytes) -> int | None:
    """Creates ``<key>.jsonl`` exclusively with its header line; its fd (open for appends), or None if
    the file exists already."""
    path = _paths(root, key)[0]
    try:
        fd = os.open(path, _CREATE, 0o600)
    except FileExistsError:
        return None
    try:
        write_all(fd, header)
    except BaseException:
        os.close(fd)
        path.unlink(missing_ok=True)
        raise
    return fd


def _rewrite(path: Path | str, data: bytes, run: str = "") -> None:
    """Replaces a small file's content in place with one write: padded with spaces (JSON ignores them)
    to at least the old length, so it never needs truncating, and a process killed at any moment leaves
    the old content or the new, never a mix (one write of less than a page is not split). A temp file and
    a rename would make a new inode and free the old one on every turn: ext4 then has to search past
    the recently freed ones for each new file, which made creating a session's file cost ~0.4 ms here."""
    if len(data) >= 4096:  # more than one page could tear: the temp file and rename
        _write_atomic(Path(path), data, run, sync=False)
        return
    fd = os.open(path, os.O_RDWR | os.O_CREAT | _O_BINARY | _O_NOFOLLOW, 0o600)
    try:
        old = os.fstat(fd).st_size
        if old > len(data):
            data += b" " * (old - len(data))
        if hasattr(os, "pwrite"):
            written = os.pwrite(fd, data, 0)
        else:  # Windows
            os.lseek(fd, 0, os.SEEK_SET)
            written = os.write(fd, data)
        if written != len(data):  # a full disk: the flush retries it (the file is rebuilt if read now)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
    finally:
        os.close(fd)


@functools.cache
def _syncfs() -> Callable[[int], int] | None:
    """Linux's syncfs(2), or None: one call makes every file of the filesystem durable, where an fsync
    per file costs a journal commit each (and its thread the GIL after each)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        fn = ctypes.CDLL(None, use_errno=True).syncfs
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int]
    fn.restype = ctypes.c_int
    return fn


def _sync(root: Path, paths: Iterable[str], directory: bool) -> None:
    """Makes the written ``paths`` (and with ``directory``, the folder's entries) durable."""
    syncfs = _syncfs()
    if syncfs is not None:
        fd = os.open(root, os.O_RDONLY)
        try:
            if syncfs(fd) == 0:
                return
        finally:
            os.close(fd)
    _fsync_paths(paths, root if directory else None)


def _fsync_paths(paths: Iterable[str], directory: Path | None) -> None:
    for path in paths:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | _O_BINARY | _O_NOFOLLOW)
        except FileNotFoundError:  # deleted meanwhile
            continue
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    if directory is not None and os.name != "nt":  # a new or renamed file survives only with its directory
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _read_session(root: Path, key: str, pending: bytes | None = None) -> _Session | None:
    """The session from its files (``pending``: its metadata not written yet), or None. A torn last line
    is cut off here: only the cached session, made by this call, ever appends, so nothing is writing the
    file now."""
    path, meta_path = _paths(root, key)
    meta = orjson.loads(pending) if pending is not None else _read_meta(meta_path)
    data = _read_bytes(path)
    if data is None and meta is None:
        return None
    data = data or b""
    lines = data.split(b"\n")
    tail = lines.pop()
    size = len(data) - len(tail)
    if tail:
        try:
            orjson.loads(tail)
        except orjson.JSONDecodeError:
            log.warning("session %s: dropping a torn last line (%d bytes)", key, len(tail))
            os.truncate(path, size)
        else:  # whole but for its newline
            with open(os.open(path, os.O_WRONLY | os.O_APPEND | _O_BINARY | _O_NOFOLLOW), "ab") as f:
                f.write(b"\n")
            lines.append(tail)
            size = len(data) + 1

    header: dict[str, Any] = {}
    records: list[_Record] = []
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
                _Record(
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

    session_id = key
    for candidate in ((meta or {}).get("id"), header.get("id")):
        if isinstance(candidate, str) and valid_session_id(candidate) and _key(candidate) == key:
            session_id = candidate
            break
    created = _number((meta or {}).get("created_at")) or _number(header.get("created_at"))
    if created is None:
        created = records[0].ts if records else time.time()
    session = _Session(key, session_id, created)
    for record in records:
        record.superseded = record.seq in superseded
        session.apply(record)
    session.size = size
    if meta is not None:
        title = meta.get("title")
        session.title = title if isinstance(title, str) and title else None
        model, version = meta.get("model"), meta.get("version")
        session.model = model if isinstance(model, str) else ""
        session.version = version if isinstance(version, int) else 0
        session.updated_at = _number(meta.get("updated_at")) or created
    if records and (meta is None or meta.get("size") != size):  # metadata behind its messages (a crash)
        # (metadata that describes the whole file keeps its exact time: a record's ts, rounded to the
        # millisecond, may lie just after it and reorder sessions saved in the same millisecond)
        session.updated_at = max(session.updated_at, records[-1].ts)
    return session


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _row_from_meta(key: str, meta: dict[str, Any] | None, size: int | None) -> tuple[Any, ...] | None:
    """The index row a metadata file gives, or None when it must be rebuilt from the messages."""
    if meta is None or meta.get("format") != FORMAT or meta.get("size") != (size or 0):
        return None
    sid, title, fallback = meta.get("id"), meta.get("title"), meta.get("fallback_title")
    created, updated = _number(meta.get("created_at")), _number(meta.get("updated_at"))
    count, lookup, version = meta.get("message_count"), meta.get("lookup"), meta.get("version")
    if not (isinstance(sid, str) and valid_session_id(sid) and _key(sid) == key):
        return None
    if created is None or updated is None or not isinstance(count, int) or not isinstance(version, int):
        return None
    if not isinstance(lookup, str) or not isinstance(meta.get("model"), str):
        return None
    shown = title if isinstance(title, str) and title else fallback if isinstance(fallback, str) else None
    return (key, sid, shown, meta["model"], created, updated, count, lookup, version)


def _scan(root: Path, run: str) -> list[tuple[str, dict[str, Any] | None, int | None]]:
    metas: set[str] = set()
    sizes: dict[str, int] = {}
    with os.scandir(root) as entries:
        for entry in entries:
            name = entry.name
            if name.startswith("."):
                if name.endswith(".tmp") and f".{run}." not in name:  # a crash between write and rename
                    with contextlib.suppress(OSError):
                        os.unlink(entry.path)
                continue
            if name.endswith(".jsonl") and entry.is_file(follow_symlinks=False):
                sizes[name[: -len(".jsonl")]] = entry.stat(follow_symlinks=False).st_size
            elif name.endswith(".json") and entry.is_file(follow_symlinks=False):
                metas.add(name[: -len(".json")])
    out = []
    for key in sorted(metas | sizes.keys()):
        if valid_session_id(key) and key == _key(key):
            meta = _read_meta(root / f"{key}.json") if key in metas else None
            out.append((key, meta, sizes.get(key)))
    return out


def _disk_keys(root: Path) -> set[str]:
    keys = set()
    with os.scandir(root) as entries:
        for entry in entries:
            name = entry.name
            key = name[: -len(".jsonl")] if name.endswith(".jsonl") else name.removesuffix(".json")
            if key != name and valid_session_id(key) and key == _key(key):
                keys.add(key)
    return keys


# ---------------------------------------------------------------------------------------------------
# The index (every method runs on the store's one database thread)

_ROW = "key, id, title, model, created_at, updated_at, message_count, lookup, version"


class _Index:
    SCHEMA = 1

    def __init__(self, root: Path) -> None:
        self.root = root
        self.path = root / _INDEX
        self.db: sqlite3.Connection | None = None

    def open(self) -> str:
        """Opens (or recreates) the database; returns the clean-close token it holds, "" if none."""
        try:
            return self._open()
        except sqlite3.DatabaseError as e:
            log.warning("session index unusable (%s): rebuilding it", e)
            self.close()
            for suffix in ("", "-wal", "-shm", "-journal"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(f"{self.path}{suffix}")
            return self._open()

    def _open(self) -> str:
        db = self.db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")  # the index is a cache: the files are the truth
        if db.execute("PRAGMA quick_check").fetchone()[0] != "ok":
            raise sqlite3.DatabaseError("quick_check failed")
        if db.execute("PRAGMA user_version").fetchone()[0] != self.SCHEMA:
            db.executescript(
                f"""
                DROP TABLE IF EXISTS sessions;
                DROP TABLE IF EXISTS state;
                CREATE TABLE sessions (
                    key TEXT PRIMARY KEY, id TEXT NOT NULL, title TEXT, model TEXT NOT NULL,
                    created_at REAL NOT NULL, updated_at REAL NOT NULL, message_count INTEGER NOT NULL,
                    lookup TEXT NOT NULL, version INTEGER NOT NULL);
                CREATE INDEX sessions_by_time ON sessions (updated_at, key);
                CREATE INDEX sessions_by_lookup ON sessions (lookup);
                CREATE TABLE state (name TEXT PRIMARY KEY, value TEXT NOT NULL);
                PRAGMA user_version = {self.SCHEMA};
                """
            )
        row = db.execute("SELECT value FROM state WHERE name = 'clean'").fetchone()
        return row[0] if row else ""

    def _db(self) -> sqlite3.Connection:
        if self.db is None:
            raise RuntimeError("the session index is closed")
        return self.db

    def set_clean(self, token: str) -> None:
        self._db().execute("INSERT OR REPLACE INTO state (name, value) VALUES ('clean', ?)", (token,))

    def upsert(self, rows: Sequence[tuple[Any, ...]], *, force: bool = False, check: bool = False) -> None:
        """``force`` overwrites a newer version (a rebuild); ``check`` skips rows whose files are gone
        (the repair read them before a delete)."""
        if check:
            rows = [r for r in rows if any(p.exists() for p in _paths(self.root, r[0]))]
        condition = "" if force else " WHERE excluded.version >= sessions.version"
        db = self._db()
        db.execute("BEGIN")
        try:
            db.executemany(
                f"INSERT INTO sessions ({_ROW}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (key) DO UPDATE SET id = excluded.id, title = excluded.title,"
                " model = excluded.model,"
                " created_at = excluded.created_at, updated_at = excluded.updated_at,"
                " message_count = excluded.message_count, lookup = excluded.lookup,"
                " version = excluded.version" + condition,
                rows,
            )
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    def delete(self, key: str) -> None:
        self._db().execute("DELETE FROM sessions WHERE key = ?", (key,))

    def keys(self) -> set[str]:
        return {key for (key,) in self._db().execute("SELECT key FROM sessions")}

    def prune(self) -> None:
        """Drops rows whose files are gone."""
        db = self._db()
        for (key,) in db.execute("SELECT key FROM sessions").fetchall():
            if not any(p.exists() for p in _paths(self.root, key)):
                db.execute("DELETE FROM sessions WHERE key = ?", (key,))

    def find(self, lookup: str) -> builtins.list[str]:
        cursor = self._db().execute(
            "SELECT key FROM sessions WHERE lookup = ? ORDER BY updated_at DESC, key DESC LIMIT ?",
            (lookup, _CANDIDATES),
        )
        return [key for (key,) in cursor]

    def page(self, limit: int, after: str | None) -> tuple[builtins.list[dict[str, Any]], bool] | None:
        """Rows newest first; None if ``after`` names no session."""
        db = self._db()
        columns = "id, title, model, created_at, updated_at, message_count"
        if after is None:
            cursor = db.execute(
                f"SELECT {columns} FROM sessions ORDER BY updated_at DESC, key DESC LIMIT ?", (limit + 1,)
            )
        else:
            found = db.execute("SELECT updated_at FROM sessions WHERE key = ?", (after,)).fetchone()
            if found is None:
                return None
            cursor = db.execute(
                f"SELECT {columns} FROM sessions WHERE updated_at < ? OR (updated_at = ? AND key < ?)"
                " ORDER BY updated_at DESC, key DESC LIMIT ?",
                (found[0], found[0], after, limit + 1),
            )
        rows = [
            {
                "id": sid,
                "title": title,
                "model": model,
                "created_at": int(created),
                "updated_at": int(updated),
                "message_count": count,
            }
            for sid, title, model, created, updated, count in cursor
        ]
        return rows[:limit], len(rows) > limit

    def close(self) -> None:
        if self.db is not None:
            self.db.close()
            self.db = None


# ---------------------------------------------------------------------------------------------------
# The store


class _Slot:
    """The locks of one session, alive while anyone uses it. Taken in this order: request, load, meta."""

    __slots__ = ("request", "load", "meta", "users")

    def __init__(self) -> None:
        self.request = asyncio.Lock()  # held for a whole request: requests on one session are serialized
        self.load = asyncio.Lock()  # one reader of the files at a time, and only one cached copy
        self.meta = asyncio.Lock()  # metadata writes
        self.users = 0


class Turn:
    """One request on one session, between ``SessionStore.turn``'s enter and exit."""

    def __init__(
        self, store: SessionStore, session: _Session, session_id: str, created: bool,
        messages: list[Message], number: int, model: str,
    ) -> None:  # fmt: skip
        self._store = store
        self._session = session
        self._number = number
        self._model = model
        self._done = False
        self.id = session_id
        self.created = created
        self.messages = messages  # a snapshot taken on entry: add() does not change it

    @property
    def needs_title(self) -> bool:
        return self._session.title is None

    async def add(self, message: Message, *, visible: Message | None | EllipsisType = ...) -> None:
        """Writes one model-facing message now. ``visible``: what the client saw of it (default: all)."""
        if self._done:
            raise RuntimeError("this turn has ended")
        self._store._append(self._session, [(message, visible)], by="agent", turn=self._number)

    def set_model(self, model: str) -> None:
        self._model = model

    @property
    def visible_count(self) -> int:
        """The length of the session's visible conversation now (what ``SessionStore.visible`` returns)."""
        return len(self._session.shown)


class _TurnContext(contextlib.AbstractAsyncContextManager["Turn"]):
    def __init__(
        self, store: SessionStore, session_id: str | None, messages: list[Message], model: str
    ) -> None:
        self._store = store
        self._session_id = session_id
        self._messages = messages
        self._model = model
        self._turn: Turn | None = None

    async def __aenter__(self) -> Turn:
        self._turn = await self._store._enter(self._session_id, self._messages, self._model)
        return self._turn

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._turn is not None:
            # Shielded: a cancelled request (the client went away) still saves what was said.
            await asyncio.shield(asyncio.ensure_future(self._store._exit(self._turn)))


class SessionStore:
    def __init__(self, root: Path, *, cache_size: int = 64, flush_delay: float = 0.2) -> None:
        self.root = Path(root)
        self._dir = str(self.root)  # paths on the request path are plain strings: Path costs microseconds
        self._cache_size = cache_size
        self._flush_delay = flush_delay  # fsyncs are grouped: at most this (plus the fsync) late
        self._cache: OrderedDict[str, _Session] = OrderedDict()  # hot sessions, least recent first
        self._slots: dict[str, _Slot] = {}
        self._index = _Index(self.root)
        self._db_thread: ThreadPoolExecutor | None = None
        self._ready = asyncio.Event()  # listing may go on: the index is right, or its repair gave up
        self._trusted = False  # the index is complete (trusted on open, or repaired)
        self._wake = asyncio.Event()  # something to fsync
        self._dirty: set[str] = set()  # appended to, not yet fsynced
        self._dir_dirty = False
        # Index rows not written yet: the flusher writes them in one transaction, and every read of the
        # index writes them first, so the index never answers with less than the files say.
        self._rows: dict[str, tuple[Any, ...]] = {}
        # Metadata files not written yet (newest version per session): the flusher writes them.
        self._metas: dict[str, bytes] = {}
        self._repair: asyncio.Task[None] | None = None
        self._flusher: asyncio.Task[None] | None = None
        self._open = False
        self._run = secrets.token_hex(4)

    async def __aenter__(self) -> SessionStore:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- life ---------------------------------------------------------------------------------------

    async def open(self) -> None:
        if self._open:
            return
        self.root.mkdir(parents=True, exist_ok=True)
        self._ready, self._wake = asyncio.Event(), asyncio.Event()
        self._db_thread = ThreadPoolExecutor(1, thread_name_prefix="sorat-sessions-index")
        token = await self._db(self._index.open)
        clean = await asyncio.to_thread(self._take_clean_token)
        await self._db(self._index.set_clean, "")
        self._open = True
        self._trusted = bool(token) and token == clean
        if self._trusted:
            self._ready.set()
            self._repair = asyncio.create_task(self._verify_index(), name="sorat-sessions-verify")
        else:
            log.info("session index not closed cleanly: rebuilding it in the background")
            self._repair = asyncio.create_task(self._rebuild_index(), name="sorat-sessions-repair")
        self._flusher = asyncio.create_task(self._flush_loop(), name="sorat-sessions-flusher")

    async def close(self) -> None:
        """Flushes and fsyncs everything; the next open trusts the index only if nothing was in use."""
        if not self._open:
            return
        self._open = False
        for task in (self._repair, self._flusher):
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        for session in self._cache.values():
            _close_fd(session)
        try:
            await self.flush()
        except (OSError, sqlite3.Error):  # the files are the truth: the next open rebuilds the index
            log.exception("saving the sessions on close failed")
            self._trusted = False
        if self._trusted and not self._slots:
            token = secrets.token_hex(16)
            await self._db(self._index.set_clean, token)
            await asyncio.to_thread(_write_atomic, self.root / _CLEAN, token.encode(), self._run)
        await self._db(self._index.close)
        assert self._db_thread is not None
        self._db_thread.shutdown(wait=True)
        self._db_thread = None
        self._cache.clear()

    async def ready(self) -> None:
        """Waits until the index is right and checked against the files."""
        await self._ready.wait()
        if self._repair is not None and not self._repair.done():
            await asyncio.wait([self._repair])

    async def flush(self) -> None:
        """Writes the pending metadata files and index rows, and fsyncs every file written so far."""
        await self._flush_rows()
        await self._flush_metas()
        paths, self._dirty = self._dirty, set()
        directory, self._dir_dirty = self._dir_dirty, False
        if paths or directory:
            await asyncio.to_thread(_sync, self.root, paths, directory)

    # -- the interface --------------------------------------------------------------------------------

    def turn(
        self, session_id: str | None, messages: list[Message], *, model: str
    ) -> contextlib.AbstractAsyncContextManager[Turn]:
        """One request. Holds the session's lock until exit; see the module docstring and SPEC."""
        if session_id is not None and not valid_session_id(session_id):
            raise errors.RequestError(
                "X-Session-ID must match ^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$, must not end in a dot and"
                " must not be a Windows device name",
                param="X-Session-ID",
            )
        return _TurnContext(self, session_id, messages, model)

    async def get(self, session_id: str, *, include_superseded: bool = False) -> dict[str, Any] | None:
        """The row plus ``messages`` (each with a ``timestamp``); None if absent."""
        if not valid_session_id(session_id):
            return None
        key = _key(session_id)
        with self._pinned(key) as slot:
            session = await self._load(key, slot)
            if session is None:
                return None
            row = session.row()
            messages = []
            for record in session.records if include_superseded else session.active:
                message = {**record.message, "timestamp": round(record.ts, 3)}
                if record.visible is None:
                    message["internal"] = True
                if record.superseded:
                    message["superseded"] = True
                messages.append(message)
            row["messages"] = messages
            return row

    async def visible(self, session_id: str) -> list[Message] | None:
        """The session's visible conversation (SPEC "History": what its client saw, each turn's assistant
        text one message, internal tool traffic left out); None if absent. Sent back with new messages
        after it, it continues the session; cut short, it branches there."""
        if not valid_session_id(session_id):
            return None
        key = _key(session_id)
        with self._pinned(key) as slot:
            session = await self._load(key, slot)
            return None if session is None else [dict(s.message) for s in session.shown]

    async def delete(self, session_id: str) -> bool:
        if not valid_session_id(session_id):
            return False
        key = _key(session_id)
        with self._pinned(key) as slot:
            async with slot.request, slot.load, slot.meta:
                session = self._cache.pop(key, None)
                if session is not None:
                    session.deleted = True
                    _close_fd(session)
                paths = _paths(self.root, key)
                self._dirty.difference_update(str(p) for p in paths)
                self._rows.pop(key, None)
                self._metas.pop(key, None)
                existed = await asyncio.to_thread(_unlink_all, paths)
                await self._db(self._index.delete, key)
                return existed

    async def set_title(self, session_id: str, title: str) -> None:
        if not valid_session_id(session_id):
            return
        key = _key(session_id)
        with self._pinned(key) as slot:
            session = await self._load(key, slot)
            if session is None:
                return  # deleted meanwhile
            session.title = title
            await self._save(session, slot)

    # -- turns ------------------------------------------------------------------------------------------

    async def _enter(self, session_id: str | None, messages: list[Message], model: str) -> Turn:
        self._check_open()
        if session_id is None:
            found = await self._find(messages)
            turn = None
            if found is not None:
                turn = await self._begin_on(found, None, messages, model, fresh=False)
            while turn is None:  # a new session under a new id
                turn = await self._begin_on(_key(new := _new_id()), new, messages, model, fresh=True)
            return turn
        turn = await self._begin_on(_key(session_id), session_id, messages, model, fresh=False)
        assert turn is not None
        return turn

    async def _begin_on(
        self, key: str, shown_id: str | None, messages: list[Message], model: str, *, fresh: bool
    ) -> Turn | None:
        """Takes the session's lock and starts the turn; None when ``fresh`` and the id exists already."""
        slot = self._pin(key)
        try:
            await slot.request.acquire()
            made: _Session | None = None  # created here: removed again if the turn cannot start
            try:
                async with slot.load:
                    if fresh:  # a new id is not looked up first: creating its file exclusively tells
                        session = made = None if key in self._cache else self._create(key, shown_id or key)
                    else:
                        session = await self._load_locked(key)
                        if session is None:
                            session = made = self._create(key, shown_id or key)
                            if session is None:  # its file was made meanwhile
                                session = await self._load_locked(key)
                if session is None:  # a fresh id that is taken
                    slot.request.release()
                    self._unpin(key)
                    return None
                created = made is not None
                turn = self._begin(session, shown_id or session.id, created, messages, model)
                if created:  # listed at once; the metadata file follows at the turn's end
                    await self._save(session, slot, file=False)
                return turn
            except BaseException:
                if made is not None:
                    self._discard(made)
                slot.request.release()
                raise
        except BaseException:
            self._unpin(key)
            raise

    def _begin(
        self, session: _Session, shown_id: str, created: bool, messages: list[Message], model: str
    ) -> Turn:
        plan = session.plan(messages)
        number = session.turns + 1
        if plan.cut is not None:
            seqs = {r.seq for r in session.active if r.seq >= plan.cut}
            if seqs:
                line = _dumps({"ts": round(time.time(), 3), "turn": number, "supersede": sorted(seqs)})
                self._write(session, line + b"\n")
                session.supersede(seqs)
        self._append(session, [(m, ...) for m in plan.append], by="client", turn=number)
        return Turn(self, session, shown_id, created, _with_results(plan.model), number, model)

    async def _exit(self, turn: Turn) -> None:
        session = turn._session
        key = session.key
        slot = self._slots[key]
        try:
            turn._done = True
            if not session.deleted:
                session.model = turn._model
                session.updated_at = time.time()
                await self._save(session, slot)
        finally:
            slot.request.release()
            self._unpin(key)

    async def _find(self, messages: Sequence[Message]) -> str | None:
        """The session whose visible conversation is exactly the request's earlier messages."""
        earlier = messages[: _split_tail(messages)]
        if all(m.get("role") == "system" for m in earlier):
            return None  # a first message starts a new conversation
        lookup = _lookup_hash(earlier)
        keys = [key for key, session in reversed(self._cache.items()) if session.lookup() == lookup]
        for key in keys:
            if self._cache[key].matches(earlier):
                return key
        await self._ready.wait()
        await self._flush_rows()
        for key in await self._db(self._index.find, lookup):
            if key in keys:
                continue
            with self._pinned(key) as slot:
                session = await self._load(key, slot)
                if session is not None and session.matches(earlier):
                    return key
        return None

    def _append(
        self,
        session: _Session,
        items: Sequence[tuple[Message, Message | None | EllipsisType]],
        *,
        by: str,
        turn: int,
    ) -> None:
        if not items:
            return
        now = time.time()
        records = []
        for i, (message, visible) in enumerate(items):
            message = dict(message)
            shown = message if visible is ... else (None if visible is None else dict(visible))
            records.append(_Record(session.next_seq + i, now, turn, by, message, shown))
        self._write(session, b"".join(r.line() for r in records))
        for record in records:
            session.apply(record)

    def _write(self, session: _Session, data: bytes) -> None:
        """One append, on the event loop: an os.write to an open file costs microseconds."""
        if session.deleted:
            raise RuntimeError(f"session {session.id} was deleted")
        path = os.path.join(self._dir, session.key + ".jsonl")
        try:
            if session.fd is None:
                session.fd = os.open(
                    path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | _O_BINARY | _O_NOFOLLOW, 0o600
                )
                self._dir_dirty = True
            try:
                write_all(session.fd, data)
            except OSError:
                with contextlib.suppress(OSError):
                    os.ftruncate(session.fd, session.size)  # no half line for the next append to follow
                raise
        except OSError as e:
            raise self._failed(session.id, e) from e
        session.size += len(data)
        self._dirty.add(path)
        self._wake.set()

    def _create(self, key: str, session_id: str) -> _Session | None:
        """A new session with its file and header; None if a file of that key exists. On the loop, like
        the appends: creating a file costs ~15 us, a thread hop several context switches and GIL
        handovers (measured under c32 load: 15 switches a request with the store's file work in threads,
        3 without, and a fifth less CPU)."""
        session = _Session(key, session_id, time.time())
        header = {"sorat_session": FORMAT, "id": session_id, "created_at": round(session.created_at, 3)}
        data = _dumps(header) + b"\n"
        try:
            fd = _create_file(self.root, key, data)
        except OSError as e:
            raise self._failed(session_id, e) from e
        if fd is None:
            return None
        session.fd = fd
        session.size = len(data)
        self._dirty.add(os.path.join(self._dir, key + ".jsonl"))
        self._dir_dirty = True
        self._wake.set()
        self._cache[key] = session
        return session

    def _discard(self, session: _Session) -> None:
        """Removes a session whose first turn could not start: no half-made session stays behind."""
        session.deleted = True
        _close_fd(session)
        if self._cache.get(session.key) is session:
            del self._cache[session.key]
        self._rows.pop(session.key, None)
        self._metas.pop(session.key, None)
        for path in _paths(self.root, session.key):
            self._dirty.discard(str(path))
            with contextlib.suppress(OSError):
                path.unlink()

    def _failed(self, session_id: str, e: OSError) -> errors.SoratError:
        """A write the disk refused (full, read-only, gone): the log and the client are told which and why."""
        log.error("cannot save session %s in %s: %s", session_id, self.root, e)
        return errors.SoratError(
            f"sorat could not save session {session_id!r} in {self.root}: {e.strerror or e}"
        )

    async def _save(self, session: _Session, slot: _Slot, *, force: bool = False, file: bool = True) -> None:
        """Queues the metadata file and the index row for the flusher.

        Nothing touches the disk here: the flusher writes every queued file (only the newest version of
        each: a turn's end and its title often make one write) and the index rows in one transaction, then
        fsyncs them with the session's appends. A killed process or an OS crash loses at most that last
        moment, and a metadata file that did not survive is rebuilt from the messages on the next read."""
        async with slot.meta:
            if session.deleted:
                return
            session.version += 1
            meta = session.meta()
            if file:
                self._metas[session.key] = _dumps(meta)
            self._dir_dirty = True
            row = _row_from_meta(session.key, meta, meta["size"])
            assert row is not None
            if force:
                self._rows.pop(session.key, None)
                await self._db(self._index.upsert, [row], force=True)
            else:
                self._rows[session.key] = row
            self._wake.set()

    async def _flush_rows(self) -> None:
        if self._rows:
            rows, self._rows = self._rows, {}
            try:
                await self._db(self._index.upsert, list(rows.values()))
            except BaseException:  # a full disk, say: the rows wait for the next flush (newer ones win)
                self._rows = {**rows, **self._rows}
                raise

    async def _flush_metas(self) -> None:
        """Writes the queued metadata files, on the loop: a few microseconds each, where a thread trades
        the GIL back and forth around each of its syscalls. A delete drops its session's entry first,
        so no write here can revive a deleted file."""
        done = 0
        while self._metas:
            key, data = next(iter(self._metas.items()))
            path = os.path.join(self._dir, key + ".json")
            try:
                _rewrite(path, data, self._run)
            except OSError as e:  # a full disk, say: it stays queued for the next flush
                log.error("cannot save the metadata of session %s in %s: %s", key, self.root, e)
                self._trusted = False  # the next start rebuilds the index from the files
                return
            del self._metas[key]
            self._dirty.add(path)
            done += 1
            if done % 32 == 0:
                await asyncio.sleep(0)  # requests go on between batches

    # -- cache and locks --------------------------------------------------------------------------------

    def _pin(self, key: str) -> _Slot:
        slot = self._slots.get(key)
        if slot is None:
            slot = self._slots[key] = _Slot()
        slot.users += 1
        return slot

    def _unpin(self, key: str) -> None:
        slot = self._slots[key]
        slot.users -= 1
        if slot.users == 0:
            del self._slots[key]
            self._trim()

    @contextlib.contextmanager
    def _pinned(self, key: str) -> Iterator[_Slot]:
        self._check_open()
        slot = self._pin(key)
        try:
            yield slot
        finally:
            self._unpin(key)

    async def _load(self, key: str, slot: _Slot) -> _Session | None:
        async with slot.load:
            return await self._load_locked(key)

    async def _load_locked(self, key: str) -> _Session | None:
        session = self._cache.get(key)
        if session is None:
            pending = self._metas.get(key)
            if pending is None and not any(os.path.lexists(p) for p in _paths(self.root, key)):
                return None  # a new session: no thread hop to learn that nothing is there
            session = await asyncio.to_thread(_read_session, self.root, key, pending)
            if session is None:
                return None
            self._cache[key] = session
        self._cache.move_to_end(key)
        return session

    def _trim(self) -> None:
        """Evicts the least recently used sessions nobody uses: every byte of theirs is on disk already."""
        excess = len(self._cache) - self._cache_size
        if excess <= 0:
            return
        idle = []  # the oldest first: usually the first key or two, not a pass over the whole cache
        for key in self._cache:
            if key not in self._slots:
                idle.append(key)
                if len(idle) == excess:
                    break
        for key in idle:
            _close_fd(self._cache.pop(key))

    def _check_open(self) -> None:
        if not self._open:
            raise RuntimeError("the session store is not open")

    # -- background -------------------------------------------------------------------------------------

    async def _db(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._db_thread, lambda: fn(*args, **kwargs))

    def _take_clean_token(self) -> str:
        path = self.root / _CLEAN
        data = _read_bytes(path)
        path.unlink(missing_ok=True)  # gone until the next clean close: a crash leaves no token
        return data.decode(errors="replace").strip() if data else ""

    async def _rebuild_index(self) -> None:
        try:
            entries = await asyncio.to_thread(_scan, self.root, self._run)
            rows, stale = [], []
            for key, meta, size in entries:
                row = _row_from_meta(key, meta, size)
                if row is None:
                    stale.append(key)
                else:
                    rows.append(row)
            await self._db(self._index.upsert, rows, check=True)
            for key in stale:  # a crash mid-turn, or no metadata: rebuilt from the messages
                with self._pinned(key) as slot:
                    session = await self._load(key, slot)
                    if session is not None:
                        await self._save(session, slot, force=True)
            await self._db(self._index.prune)
            self._trusted = True
            log.info("session index rebuilt: %d sessions (%d from their messages)", len(entries), len(stale))
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("rebuilding the session index failed; listing may be incomplete")
        finally:
            self._ready.set()

    async def _verify_index(self) -> None:
        """A trusted index may still miss files added or removed while sorat was not running: one
        directory listing finds out, and a rebuild follows (listing does not wait for it)."""
        try:
            disk = await asyncio.to_thread(_disk_keys, self.root)
            if disk != await self._db(self._index.keys):
                log.info("session files changed while sorat was stopped: rebuilding the index")
                self._trusted = False
                await self._rebuild_index()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("checking the session index failed")

    async def _flush_loop(self) -> None:
        while True:
            await self._wake.wait()
            await asyncio.sleep(self._flush_delay)  # lets a burst of appends share one fsync
            self._wake.clear()
            try:
                await self.flush()
            except (OSError, sqlite3.Error):
                log.exception("saving the session files or the index failed; retrying with the next write")

    async def list(self, limit: int = 100, after: str | None = None) -> tuple[builtins.list[dict], bool]:
        """Rows newest first (by updated_at) and whether more follow."""
        if not 1 <= limit <= 1000:
            raise errors.RequestError("limit must be between 1 and 1000", param="limit")
        if after is not None and not valid_session_id(after):
            raise errors.RequestError(f"No session {after!r}", param="after")
        await self._ready.wait()
        try:
            await self._flush_rows()
        except sqlite3.Error as e:  # the index still reads: list what it has
            log.warning("session index not updated (%s); listing may miss the latest changes", e)
        page = await self._db(self._index.page, limit, None if after is None else _key(after))
        if page is None:
            raise errors.RequestError(f"No session {after!r}", param="after")
        return page


def _close_fd(session: _Session) -> None:
    if session.fd is not None:
        with contextlib.suppress(OSError):
            os.close(session.fd)
        session.fd = None


def _unlink_all(paths: Iterable[Path]) -> bool:
    existed = False
    for path in paths:
        try:
            path.unlink()
            existed = True
        except FileNotFoundError:
            pass
    return existed
