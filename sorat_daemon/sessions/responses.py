"""Response records: what each ``resp_…`` id stands for (its session and where its answer ends in that
session's visible conversation), the Response objects and input items of responses made with ``store``,
and the metadata of conversations. They outlive the daemon: a client may continue from any response id
after a restart.

One SQLite file beside the sessions, ``sessions/.responses.sqlite3`` (WAL, ``synchronous=NORMAL``: a
killed process loses nothing committed, an OS crash at most the last transactions, and neither leaves
the file unreadable; the session store's own files and index leave dot-files alone)::

    responses(id TEXT PRIMARY KEY, session TEXT, position INTEGER, created_at REAL,
              body BLOB,    -- the Response object's JSON, only with store: true
              input BLOB)   -- the request's body as sent (its input items), only with store: true
    conversations(key TEXT PRIMARY KEY, metadata BLOB, created_at REAL)   -- key: the session id lower-cased

A record is ``put`` synchronously, in memory, before the response's last frames go out, so a client that
sends the next request at once finds it; a writer task commits what accumulated over ``flush_delay`` in
one transaction on the store's own thread (nothing on the request path waits for the disk, and a burst
of answers costs one thread hop, not one each).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import orjson

log = logging.getLogger("sorat.responses")

T = TypeVar("T")
FILE = ".responses.sqlite3"
_RECENT = 512  # records kept in memory after they are written


@dataclass(slots=True)
class ResponseRecord:
    id: str
    session_id: str | None  # None: stored in no session
    position: int | None  # the visible conversation's length when the response ended
    created_at: float
    body: bytes | None = None  # the Response object, when the client asked to store it
    input: bytes | None = None  # the request's body as sent (for its input items), when stored


class ResponseStore:
    def __init__(self, root: Path, *, flush_delay: float = 0.1) -> None:
        self.path = Path(root) / FILE
        self._flush_delay = flush_delay
        self._db: sqlite3.Connection | None = None
        self._thread: ThreadPoolExecutor | None = None
        self._recent: OrderedDict[str, ResponseRecord | None] = OrderedDict()  # None: deleted
        self._pending: dict[str, ResponseRecord | None] = {}
        self._wake: asyncio.Event | None = None
        self._writer: asyncio.Task[None] | None = None
        self._opening: asyncio.Lock | None = None

    # -- life -----------------------------------------------------------------------------------------

    async def open(self) -> None:
        """Opens the file (at the first use, or on start); a broken file is set aside and a new one made."""
        if self._db is not None:
            return
        if self._opening is None:
            self._opening = asyncio.Lock()
        async with self._opening:
            if self._db is not None:
                return
            thread = ThreadPoolExecutor(1, thread_name_prefix="sorat-responses")
            try:
                self._db = await asyncio.get_running_loop().run_in_executor(thread, self._connect)
            except BaseException:
                thread.shutdown(wait=False)
                raise
            self._thread = thread
            self._wake = asyncio.Event()
            self._writer = asyncio.create_task(self._write_loop(), name="sorat-responses-writer")

    def _connect(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, check_same_thread=False)
        try:
            return self._schema(db)
        except sqlite3.DatabaseError as e:
            db.close()
            broken = self.path.with_name(f"{FILE}.broken-{int(time.time())}")
            log.warning("response records unreadable (%s); kept as %s, starting a new file", e, broken.name)
            for suffix in ("", "-wal", "-shm"):
                with contextlib.suppress(FileNotFoundError):
                    Path(str(self.path) + suffix).rename(str(broken) + suffix)
            return self._schema(sqlite3.connect(self.path, check_same_thread=False))

    @staticmethod
    def _schema(db: sqlite3.Connection) -> sqlite3.Connection:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute(
            "CREATE TABLE IF NOT EXISTS responses (id TEXT PRIMARY KEY, session TEXT, position INTEGER,"
            " created_at REAL NOT NULL, body BLOB, input BLOB)"
        )
        db.execute(
            "CREATE TABLE IF NOT EXISTS conversations (key TEXT PRIMARY KEY, metadata BLOB,"
            " created_at REAL NOT NULL)"
        )
        db.commit()
        return db

    async def close(self) -> None:
        if self._db is None:
            return
        if self._writer is not None:
            self._writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._writer
        try:
            await self.flush()
        except sqlite3.Error:
            log.exception("saving the response records failed")
        db, self._db = self._db, None
        await self._run(db.close)
        assert self._thread is not None
        self._thread.shutdown(wait=True)
        self._thread = None

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        assert self._thread is not None
        return await asyncio.get_running_loop().run_in_executor(self._thread, fn, *args)

    # -- responses ------------------------------------------------------------------------------------

    def put(self, record: ResponseRecord) -> None:
        """Known at once; on disk within moments (call after ``open``)."""
        self._remember(record.id, record)
        self._pending[record.id] = record
        if self._wake is not None:
            self._wake.set()

    async def get(self, response_id: str) -> ResponseRecord | None:
        if response_id in self._recent:
            self._recent.move_to_end(response_id)
            return self._recent[response_id]
        await self.open()
        row = await self._run(self._select, response_id)
        if row is None:
            return None
        record = ResponseRecord(row[0], row[1], row[2], row[3], row[4], row[5])
        self._remember(record.id, record)
        return record

    async def delete(self, response_id: str) -> bool:
        """Forgets a response (its session stays); False if it was unknown."""
        found = await self.get(response_id)
        self._remember(response_id, None)
        self._pending[response_id] = None
        if self._wake is not None:
            self._wake.set()
        return found is not None

    def _remember(self, response_id: str, record: ResponseRecord | None) -> None:
        recent = self._recent
        recent[response_id] = record
        recent.move_to_end(response_id)
        while len(recent) > _RECENT:
            oldest = next(iter(recent))
            if oldest in self._pending:  # not written yet: it must stay findable
                break
            del recent[oldest]

    async def flush(self) -> None:
        """Commits the records put so far."""
        if not self._pending or self._db is None:
            return
        batch, self._pending = self._pending, {}
        try:
            await self._run(self._write, batch)
        except BaseException:
            for key, value in batch.items():  # tried again with the next batch
                self._pending.setdefault(key, value)
            raise

    async def _write_loop(self) -> None:
        assert self._wake is not None
        while True:
            await self._wake.wait()
            await asyncio.sleep(self._flush_delay)  # what else arrives meanwhile goes in the same commit
            self._wake.clear()
            try:
                await self.flush()
            except sqlite3.Error:
                log.exception("writing response records failed; retrying")
                await asyncio.sleep(1)
                self._wake.set()

    # -- conversations --------------------------------------------------------------------------------

    async def set_metadata(self, conversation_id: str, metadata: dict[str, Any], created_at: float) -> None:
        await self.open()
        await self._run(
            self._upsert_conversation, conversation_id.lower(), orjson.dumps(metadata), created_at
        )

    async def metadata(self, conversation_id: str) -> dict[str, Any]:
        await self.open()
        row = await self._run(self._select_conversation, conversation_id.lower())
        if row is None:
            return {}
        value = orjson.loads(row)
        return value if isinstance(value, dict) else {}

    async def forget_conversation(self, conversation_id: str) -> None:
        await self.open()
        await self._run(self._delete_conversation, conversation_id.lower())

    # -- on the store's thread ------------------------------------------------------------------------

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise sqlite3.ProgrammingError("the response store is closed")
        return self._db

    def _select(self, response_id: str) -> tuple[Any, ...] | None:
        query = "SELECT id, session, position, created_at, body, input FROM responses WHERE id = ?"
        row: tuple[Any, ...] | None = self._conn().execute(query, (response_id,)).fetchone()
        return row

    def _write(self, batch: dict[str, ResponseRecord | None]) -> None:
        db = self._conn()
        with db:
            for key, r in batch.items():
                if r is None:
                    db.execute("DELETE FROM responses WHERE id = ?", (key,))
                else:
                    db.execute(
                        "INSERT OR REPLACE INTO responses VALUES (?, ?, ?, ?, ?, ?)",
                        (r.id, r.session_id, r.position, r.created_at, r.body, r.input),
                    )

    def _upsert_conversation(self, key: str, metadata: bytes, created_at: float) -> None:
        db = self._conn()
        with db:
            db.execute(
                "INSERT INTO conversations VALUES (?, ?, ?) ON CONFLICT(key) DO UPDATE SET metadata = ?",
                (key, metadata, created_at, metadata),
            )

    def _select_conversation(self, key: str) -> bytes | None:
        row = self._conn().execute("SELECT metadata FROM conversations WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def _delete_conversation(self, key: str) -> None:
        db = self._conn()
        with db:
            db.execute("DELETE FROM conversations WHERE key = ?", (key,))
