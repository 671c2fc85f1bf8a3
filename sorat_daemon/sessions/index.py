"""The session index: every session's metadata in SQLite, a cache the files can always rebuild (why
SQLite, and the clean-close token that says whether to trust it: ``format.py``).

``Database`` is the SQLite side; every method runs on the store's one database thread. ``Index`` is
what the store uses on the event loop: it owns that thread, holds the rows the flusher has not written
yet, and decides on open whether the index is trusted, checked against the directory, or rebuilt.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import logging
import os
import secrets
import sqlite3
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from . import files, search
from .format import CLEAN, INDEX, META_FORMAT, meta_row

log = logging.getLogger("sorat.sessions")

T = TypeVar("T")

_CANDIDATES = 20  # sessions compared exactly for one hash lookup
_ROW = "key, id, title, model, created_at, updated_at, message_count, lookup, version"
_FILL_BATCH = 64  # sessions read into the search table per step of a refill


class Database:
    SCHEMA = 3  # 2: the lookup hash leaves system messages out; 3: nor the spacing of assistant text

    def __init__(self, root: Path) -> None:
        self.root = root
        self.path = root / INDEX
        self.db: sqlite3.Connection | None = None
        self.search_new = False  # the search table was just made: the sessions' text must be read in

    def open(self) -> tuple[str, bool]:
        """Opens (or recreates) the database; returns the clean-close token it holds ("" if none) and
        whether its tables were just made (a new index, or one of another schema)."""
        try:
            return self._open()
        except sqlite3.DatabaseError as e:
            log.warning("session index unusable (%s): rebuilding it", e)
            self.close()
            for suffix in ("", "-wal", "-shm", "-journal"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(f"{self.path}{suffix}")
            return self._open()

    def _open(self) -> tuple[str, bool]:
        db = self.db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")  # the index is a cache: the files are the truth
        if db.execute("PRAGMA quick_check").fetchone()[0] != "ok":
            raise sqlite3.DatabaseError("quick_check failed")
        created = db.execute("PRAGMA user_version").fetchone()[0] != self.SCHEMA
        if created:
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
        self.search_new = search.attach(db, self.root)  # after the index's check: not in it
        row = db.execute("SELECT value FROM state WHERE name = 'clean'").fetchone()
        return (row[0] if row else ""), created

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
            rows = [r for r in rows if any(p.exists() for p in files.paths(self.root, r[0]))]
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
        search.forget(self._db(), key)

    def keys(self) -> set[str]:
        return {key for (key,) in self._db().execute("SELECT key FROM sessions")}

    def prune(self) -> None:
        """Drops rows whose files are gone."""
        db = self._db()
        for (key,) in db.execute("SELECT key FROM sessions").fetchall():
            if not any(p.exists() for p in files.paths(self.root, key)):
                db.execute("DELETE FROM sessions WHERE key = ?", (key,))
        search.prune(db)

    def check_search(self) -> bool:
        return search.check(self._db(), self.root)

    def write_search(self, writes: search.Writes) -> None:
        search.write(self._db(), writes)

    def fill_search(self, keys: Sequence[str]) -> None:
        search.fill(self._db(), self.root, keys)

    def search_page(
        self, expression: str, limit: int, after: str | None
    ) -> tuple[builtins.list[dict[str, Any]], bool] | None:
        return search.query(self._db(), expression, limit, after)

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


Resave = Callable[[str], Awaitable[None]]  # rebuilds one session's metadata and row from its messages


class Index:
    """The index on the event loop. Rows queued by ``queue`` are written by the next ``flush`` (the
    store's flusher), and every read of the index flushes them first, so it never answers with less than
    the files say. Listing and the hash lookup wait until the index is right (``ready``)."""

    def __init__(self, root: Path, run: str) -> None:
        self.root = root
        self._run = run
        self._db = Database(root)
        self._thread: ThreadPoolExecutor | None = None
        self._ready = asyncio.Event()  # listing may go on: the index is right, or its repair gave up
        self.trusted = False  # the index is complete (trusted on open, or repaired)
        self._rows: dict[str, tuple[Any, ...]] = {}  # not written yet, by session key
        self.texts = search.Writes()  # searchable text and titles not written yet
        self._fill: asyncio.Task[None] | None = None
        self._start: str | None = None  # what open decided the background task does
        self._repair: asyncio.Task[None] | None = None

    async def open(self) -> None:
        self._ready = asyncio.Event()
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="sorat-sessions-index")
        token, created = await self._call(self._db.open)
        clean = await asyncio.to_thread(self._take_clean_token)
        await self._call(self._db.set_clean, "")
        self.trusted = bool(token) and token == clean
        if self.trusted:
            self._start = "verify"
        elif created and not await asyncio.to_thread(files.disk_keys, self.root):
            log.info("new session index in %s", self.root)  # nothing to rebuild it from
            self.trusted = True
            self._start = None
        elif created:
            log.info("session index missing or outdated: rebuilding it from the files in the background")
            self._start = "rebuild"
        else:
            log.info("session index not closed cleanly: rebuilding it in the background")
            self._start = "rebuild"
        if self.trusted:
            self._ready.set()

    def start(self, resave: Resave) -> None:
        """Starts the check or the repair that ``open`` decided on."""
        self._fill = asyncio.create_task(self._check_search(), name="sorat-sessions-search-check")
        if self._start == "verify":
            self._repair = asyncio.create_task(self._verify(resave), name="sorat-sessions-verify")
        elif self._start == "rebuild":
            self._repair = asyncio.create_task(self._rebuild(resave), name="sorat-sessions-repair")

    async def stop(self) -> None:
        """Cancels the check or repair still running: the next open takes it up again."""
        for task in (self._repair, self._fill):
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._repair = self._fill = None

    async def close(self, *, clean: bool) -> None:
        """Closes the database; ``clean`` (nothing in use) and a trusted index leave the token that makes
        the next open trust it."""
        if clean and self.trusted:
            token = secrets.token_hex(16)
            await self._call(self._db.set_clean, token)
            await asyncio.to_thread(files.write_atomic, self.root / CLEAN, token.encode(), self._run)
        await self._call(self._db.close)
        assert self._thread is not None
        self._thread.shutdown(wait=True)
        self._thread = None

    async def ready(self) -> None:
        """Waits until the index is right and checked against the files, its search table filled."""
        await self._ready.wait()
        for task in (self._repair, self._fill):
            if task is not None and not task.done():
                await asyncio.wait([task])

    def queue(self, key: str, row: tuple[Any, ...]) -> None:
        self._rows[key] = row

    def forget(self, key: str) -> None:
        """Drops the row and the text queued for a session that is gone."""
        self._rows.pop(key, None)
        self.texts.forget(key)

    async def save(self, row: tuple[Any, ...]) -> None:
        """Writes a row now, over a newer version if need be (a session rebuilt from its messages)."""
        self._rows.pop(row[0], None)
        await self._call(self._db.upsert, [row], force=True)

    async def flush(self) -> None:
        if self._rows:
            rows, self._rows = self._rows, {}
            try:
                await self._call(self._db.upsert, list(rows.values()))
            except BaseException:  # a full disk, say: the rows wait for the next flush (newer ones win)
                self._rows = {**rows, **self._rows}
                raise
        if self.texts:  # after the rows: a new session's text follows its row
            texts = self.texts.take()
            try:
                await self._call(self._db.write_search, texts)
            except BaseException:
                self.texts.restore(texts)
                raise

    async def delete(self, key: str) -> None:
        self.forget(key)
        await self._call(self._db.delete, key)

    async def find(self, lookup: str) -> builtins.list[str]:
        """The keys of the sessions whose visible conversation has this hash, newest first."""
        await self._ready.wait()
        await self.flush()
        return await self._call(self._db.find, lookup)

    async def page(self, limit: int, after: str | None) -> tuple[builtins.list[dict[str, Any]], bool] | None:
        await self._ready.wait()
        try:
            await self.flush()
        except sqlite3.Error as e:  # the index still reads: list what it has
            log.warning("session index not updated (%s); listing may miss the latest changes", e)
        return await self._call(self._db.page, limit, after)

    async def search_page(
        self, expression: str, limit: int, after: str | None
    ) -> tuple[builtins.list[dict[str, Any]], bool] | None:
        await self._ready.wait()
        try:
            await self.flush()
        except sqlite3.Error as e:  # the index still reads: search what it has
            log.warning("session index not updated (%s); search may miss the latest changes", e)
        return await self._call(self._db.search_page, expression, limit, after)

    async def _check_search(self) -> None:
        """The search file's check (in the background: the daemon serves meanwhile); a new or remade
        file is filled, unless a rebuild of the index does that."""
        try:
            renewed = await self._call(self._db.check_search)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("checking the search index failed")
            return
        if (renewed or self._db.search_new) and self._start != "rebuild":
            await self._fill_search()

    async def _fill_search(self, *, quiet: bool = False) -> None:
        """Reads every session's text into a new or stale search table, a batch at a time (search answers
        meanwhile, from what is in). ``quiet``: part of a rebuild, which says it is done."""
        try:
            keys = sorted(await self._call(self._db.keys))
            for i in range(0, len(keys), _FILL_BATCH):
                await self._call(self._db.fill_search, keys[i : i + _FILL_BATCH])
            if keys and not quiet:
                log.info("search index filled: %d sessions", len(keys))
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("filling the search index failed; search may miss sessions")

    async def _call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._thread, lambda: fn(*args, **kwargs))

    def _take_clean_token(self) -> str:
        path = self.root / CLEAN
        data = files.read_bytes(path)
        path.unlink(missing_ok=True)  # gone until the next clean close: a crash leaves no token
        return data.decode(errors="replace").strip() if data else ""

    async def _rebuild(self, resave: Resave) -> None:
        try:
            entries = await asyncio.to_thread(files.scan, self.root, self._run)
            rows, stale, outdated = [], [], []
            for key, meta, size in entries:
                row = meta_row(key, meta, size)
                if row is None:
                    stale.append(key)
                else:
                    rows.append(row)
                    if (meta or {}).get("format") != META_FORMAT:
                        outdated.append(key)
            await self._call(self._db.upsert, rows, check=True)
            for key in stale:  # a crash mid-turn, or no metadata: rebuilt from the messages
                await resave(key)
            await self._call(self._db.prune)
            self._ready.set()  # outdated rows list right: only their lookup hash waits for the messages
            await self._fill_search(quiet=True)  # what a crash kept of the search table, completed
            for key in outdated:
                await resave(key)
            self.trusted = True
            rebuilt = len(stale) + len(outdated)
            log.info("session index rebuilt: %d sessions (%d from their messages)", len(entries), rebuilt)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("rebuilding the session index failed; listing may be incomplete")
        finally:
            self._ready.set()

    async def _verify(self, resave: Resave) -> None:
        """A trusted index may still miss files added or removed while sorat was not running: one
        directory listing finds out, and a rebuild follows (listing does not wait for it)."""
        try:
            disk = await asyncio.to_thread(files.disk_keys, self.root)
            if disk != await self._call(self._db.keys):
                log.info("session files changed while sorat was stopped: rebuilding the index")
                self.trusted = False
                await self._rebuild(resave)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("checking the session index failed")
