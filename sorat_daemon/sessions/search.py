"""Full-text search over the sessions: their titles and the text of their visible messages, answered by
SQLite FTS5 tables beside the index, never by reading the files.

``.search.sqlite3`` (attached to the index's connection as ``fts``; a cache like the index, refilled
from the files)::

    search_sessions (n INTEGER PRIMARY KEY AUTOINCREMENT, key TEXT UNIQUE, title TEXT, upto INTEGER)
    search          FTS5 (text), contentless, detail=none: rowid = n << 24 | seq

A file of its own, not tables in ``.index.sqlite3``: the index is checked (``quick_check``) before the
daemon serves, and the search tables would more than double that wait; this file is checked in the
background (and made anew, then refilled, if it fails).

``n`` numbers a session once and is never reused (AUTOINCREMENT), so a rowid says whose text it is
without a mapping row per message; ``seq`` is the message's record number (``TITLE`` for the title
row). ``upto`` is the seq of the last record indexed, text or not: an append adds only what lies past
it, and a refill after a crash adds what the lost writes missed, never a row twice. The FTS table keeps
no copy of the text (contentless) and no positions (detail=none: a word is a term, never a phrase), so
a session's index is a fraction of its text. The price: a contentless row can only be removed with its
exact text, which is kept for titles only; a deleted session's message rows stay behind as entries no
live ``n`` reaches, until the file is next made anew.

What is indexed: the text of user and assistant messages as the client saw them, superseded versions
included (they stay reachable on the session's page), and the generated title. Tool calls and results
and system prompts are not: they would bury a session's words under every page the agent read.

Results come newest first by ``updated_at``, with the listing's cursor (how, whatever a word's
frequency: ``query``).

Every function taking ``db`` runs on the index's database thread, on its connection.
"""

from __future__ import annotations

import builtins
import contextlib
import json
import logging
import os
import re
import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..wire import text_of
from . import files
from .format import Record, parse_lines

log = logging.getLogger("sorat.sessions")

FILE = ".search.sqlite3"
SCHEMA = 1  # of the search file (its user_version): another value makes it anew
SHIFT = 24  # bits of the seq in a rowid: 16 million records a session
TITLE = (1 << SHIFT) - 1  # the seq of the title row
FEW = 1500  # a query matching at most this many rows is answered from its matching sessions, sorted
BUDGET = 30_000  # rows of matches read on for older sessions before asking about each one instead
_TOKEN = re.compile(r"\w+")
_COLUMNS = "s.id, s.title, s.model, s.created_at, s.updated_at, s.message_count"
_TABLES = """
    DROP TABLE IF EXISTS fts.search;
    DROP TABLE IF EXISTS fts.search_sessions;
    CREATE TABLE fts.search_sessions (
        n INTEGER PRIMARY KEY AUTOINCREMENT, key TEXT NOT NULL UNIQUE, title TEXT,
        upto INTEGER NOT NULL DEFAULT -1);
    CREATE VIRTUAL TABLE fts.search USING fts5(
        text, content='', detail=none, tokenize='porter unicode61 remove_diacritics 2');
"""

Texts = list[tuple[int, str]]  # (seq, text) of one session's new records


def attach(db: sqlite3.Connection, root: Path) -> bool:
    """Attaches the search file as ``fts``, making its tables if they are missing or of another
    version; True when they are new, so the sessions' text must be read in (``fill``)."""
    path = root / FILE
    try:
        return _attach(db, path)
    except sqlite3.DatabaseError as e:
        log.warning("search index unusable (%s): making it anew", e)
        return renew(db, path)


def _attach(db: sqlite3.Connection, path: Path) -> bool:
    db.execute("ATTACH DATABASE ? AS fts", (str(path),))
    db.execute("PRAGMA fts.journal_mode=WAL")
    db.execute("PRAGMA fts.synchronous=NORMAL")
    if db.execute("PRAGMA fts.user_version").fetchone()[0] == SCHEMA:
        return False
    db.executescript(_TABLES + f"PRAGMA fts.user_version = {SCHEMA};")
    return True


def renew(db: sqlite3.Connection, path: Path) -> bool:
    """Deletes the search file and makes it anew (empty: to be filled)."""
    with contextlib.suppress(sqlite3.Error):
        db.execute("DETACH DATABASE fts")
    for suffix in ("", "-wal", "-shm", "-journal"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(f"{path}{suffix}")
    return _attach(db, path)


def check(db: sqlite3.Connection, root: Path) -> bool:
    """The search file's own check, done in the background; True when it failed and was made anew."""
    try:
        ok = db.execute("PRAGMA fts.quick_check").fetchone()[0] == "ok"
    except sqlite3.DatabaseError:
        ok = False
    if ok:
        return False
    log.warning("search index failed its check: making it anew")
    return renew(db, root / FILE)


def texts(records: Iterable[Record]) -> Texts:
    """What of these records is searchable: the visible text of user and assistant messages."""
    out = []
    for r in records:
        shown = r.visible
        if shown is not None and shown.get("role") in ("user", "assistant") and r.seq < TITLE:
            text = text_of(shown.get("content"))
            if text.strip():
                out.append((r.seq, text))
    return out


def match(query: str) -> str | None:
    """The FTS5 expression for a search box's words: every word must occur (as a word, stemmed:
    "sharks" finds "shark"); None when there is no word in it. Not as prefixes: a short prefix makes
    FTS5 merge the rows of every word it begins, on every query."""
    words = _TOKEN.findall(query.lower())[:16]
    if not words:
        return None
    return " AND ".join(f'"{w}"' for w in words)


@dataclass(slots=True)
class Writes:
    """What the flusher has to write, per session key: the texts of new records with the last record's
    seq (``upto`` moves with every record, text or not), and new titles."""

    texts: dict[str, tuple[Texts, int]] = field(default_factory=dict)
    titles: dict[str, str] = field(default_factory=dict)

    def add(self, key: str, records: Sequence[Record]) -> None:
        if not records:
            return
        found, last = self.texts.get(key, ([], -1))
        found.extend(texts(records))
        self.texts[key] = (found, max(last, records[-1].seq))

    def title(self, key: str, title: str) -> None:
        self.titles[key] = title

    def forget(self, key: str) -> None:
        self.texts.pop(key, None)
        self.titles.pop(key, None)

    def take(self) -> Writes:
        taken = Writes(self.texts, self.titles)
        self.texts, self.titles = {}, {}
        return taken

    def restore(self, failed: Writes) -> None:
        """Puts writes that failed back, before those queued since."""
        for key, (found, last) in self.texts.items():
            earlier, upto = failed.texts.get(key, ([], -1))
            failed.texts[key] = (earlier + found, max(upto, last))
        failed.titles.update(self.titles)
        self.texts, self.titles = failed.texts, failed.titles

    def __bool__(self) -> bool:
        return bool(self.texts or self.titles)


def _number(db: sqlite3.Connection, key: str) -> tuple[int, str | None, int]:
    row = db.execute("SELECT n, title, upto FROM fts.search_sessions WHERE key = ?", (key,)).fetchone()
    if row is None:
        n = db.execute("INSERT INTO fts.search_sessions (key) VALUES (?)", (key,)).lastrowid
        assert n is not None
        return n, None, -1
    return row[0], row[1], row[2]


def _remove_title(db: sqlite3.Connection, n: int, title: str) -> None:
    row = n << SHIFT | TITLE
    db.execute("INSERT INTO fts.search (search, rowid, text) VALUES ('delete', ?, ?)", (row, title))


def write(db: sqlite3.Connection, writes: Writes) -> None:
    """Adds the texts past each session's ``upto`` and replaces changed titles, in one transaction."""
    db.execute("BEGIN")
    try:
        for key, (found, last) in writes.texts.items():
            n, _, upto = _number(db, key)
            if last <= upto:
                continue
            new = [(n << SHIFT | seq, text) for seq, text in found if seq > upto]
            db.executemany("INSERT INTO fts.search (rowid, text) VALUES (?, ?)", new)
            db.execute("UPDATE fts.search_sessions SET upto = ? WHERE n = ?", (last, n))
        for key, title in writes.titles.items():
            n, old, _ = _number(db, key)
            if title != old:
                if old:
                    _remove_title(db, n, old)
                db.execute("INSERT INTO fts.search (rowid, text) VALUES (?, ?)", (n << SHIFT | TITLE, title))
                db.execute("UPDATE fts.search_sessions SET title = ? WHERE n = ?", (title, n))
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


def fill(db: sqlite3.Connection, root: Path, keys: Iterable[str]) -> None:
    """Reads these sessions' files and indexes what is missing (a new table, or writes a crash lost).

    The files are read here, on the database's thread, between two of its writes: an append that a file
    already holds is written either before this (and skipped here) or after (and skipped by ``upto``)."""
    writes = Writes()
    for key in keys:
        data = files.read_bytes(root / f"{key}.jsonl")
        if data:
            whole = data[: data.rfind(b"\n") + 1].split(b"\n")  # a torn last line is no record
            writes.add(key, parse_lines(key, whole).records)
        title = (files.read_meta(root / f"{key}.json") or {}).get("title")
        if isinstance(title, str) and title:
            writes.title(key, title)
    write(db, writes)


def forget(db: sqlite3.Connection, key: str) -> None:
    """A deleted session: its title row goes; its message rows stay unreachable (module docstring)."""
    row = db.execute("SELECT n, title FROM fts.search_sessions WHERE key = ?", (key,)).fetchone()
    if row is not None:
        if row[1]:
            _remove_title(db, row[0], row[1])
        db.execute("DELETE FROM fts.search_sessions WHERE n = ?", (row[0],))


def prune(db: sqlite3.Connection) -> None:
    """Forgets the sessions the index no longer has (files removed while sorat was stopped)."""
    gone = db.execute("SELECT key FROM fts.search_sessions WHERE key NOT IN (SELECT key FROM sessions)")
    for (key,) in gone.fetchall():
        forget(db, key)


def _rows(found: Iterable[Sequence[Any]]) -> builtins.list[dict[str, Any]]:
    return [
        {
            "id": sid,
            "title": title,
            "model": model,
            "created_at": int(created),
            "updated_at": int(updated),
            "message_count": count,
        }
        for sid, title, model, created, updated, count in found
    ]


def query(
    db: sqlite3.Connection, expression: str, limit: int, after: str | None
) -> tuple[builtins.list[dict[str, Any]], bool] | None:
    """Sessions matching ``expression``, newest first, after the session ``after`` (a key); None if
    ``after`` names no session.

    The matches are read newest session number first. Few of them (at most ``FEW`` rows): their
    sessions are fetched and sorted (about 5 us a session). Many: the sessions are walked newest first
    (about 2 us a session), each one's number looked up among the matches read so far, until a page is
    full; the more sessions match, the sooner. A session older than what has been read reads on, within
    ``BUDGET`` rows in all, and past that asks the FTS table about its own rows. ``FEW`` is where the
    two cost the same at 100 000 sessions: a few milliseconds either way."""
    since: list[Any] = []
    if after is not None:
        found = db.execute("SELECT updated_at FROM sessions WHERE key = ?", (after,)).fetchone()
        if found is None:
            return None
        since = [found[0], found[0], after]
    older = "(s.updated_at < ? OR (s.updated_at = ? AND s.key < ?))" if since else ""
    newest = "SELECT rowid FROM fts.search WHERE search MATCH ? ORDER BY rowid DESC"
    matches = db.execute(newest, (expression,))
    first = matches.fetchmany(FEW + 1)
    if len(first) <= FEW:
        matches.close()
        numbers = ",".join(str(n) for n in sorted({rowid >> SHIFT for (rowid,) in first}))
        cursor = db.execute(
            f"SELECT {_COLUMNS} FROM fts.search_sessions m JOIN sessions s ON s.key = m.key"
            f" WHERE m.n IN (SELECT value FROM json_each(?)){' AND ' + older if older else ''}"
            " ORDER BY s.updated_at DESC, s.key DESC LIMIT ?",
            (f"[{numbers}]", *since, limit + 1),
        )
        rows = _rows(cursor)
        return rows[:limit], len(rows) > limit
    seen = _Matches(db, expression, matches, first)
    walk = db.execute(  # the sessions as the listing orders them, from two covering indexes
        "SELECT s.key, m.n FROM sessions s CROSS JOIN fts.search_sessions m ON m.key = s.key"
        f"{' WHERE ' + older if older else ''} ORDER BY s.updated_at DESC, s.key DESC",
        since,
    )
    keys = []
    for key, n in walk:
        if seen.has(n):
            keys.append(key)
            if len(keys) > limit:
                break
    walk.close()
    matches.close()
    cursor = db.execute(
        f"SELECT {_COLUMNS} FROM sessions s WHERE s.key IN (SELECT value FROM json_each(?))"
        " ORDER BY s.updated_at DESC, s.key DESC",
        (json.dumps(keys),),
    )
    rows = _rows(cursor)
    return rows[:limit], len(rows) > limit


class _Matches:
    """The session numbers of the matching rows, read from the newest on as far as needed."""

    def __init__(
        self, db: sqlite3.Connection, expression: str, cursor: sqlite3.Cursor, first: list[tuple[int]]
    ) -> None:
        self._db = db
        self._expression = expression
        self._cursor: sqlite3.Cursor | None = cursor
        self._numbers = {rowid >> SHIFT for (rowid,) in first}
        self._floor = first[-1][0] >> SHIFT  # every match of a number above it has been read
        self._budget = BUDGET

    def has(self, n: int) -> bool:
        while n < self._floor and self._cursor is not None and self._budget > 0:
            more = self._cursor.fetchmany(1000)
            self._budget -= len(more)
            if not more:
                self._cursor, self._floor = None, -1
                break
            self._numbers.update(rowid >> SHIFT for (rowid,) in more)
            self._floor = more[-1][0] >> SHIFT
        if n in self._numbers:
            return True
        if n > self._floor:
            return False
        probe = "SELECT 1 FROM fts.search WHERE search MATCH ? AND rowid BETWEEN ? AND ? LIMIT 1"
        found = self._db.execute(probe, (self._expression, n << SHIFT, n << SHIFT | TITLE)).fetchone()
        return found is not None
