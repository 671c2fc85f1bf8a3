"""The session store: every conversation, kept on disk under ``$SORAT_HOME/sessions/`` (the files and
their format: ``format.py``).

``SessionStore.turn`` is one request on one session: it finds or creates the session, plans the
request's messages against its history (``history.py``), appends what is new, and hands the agent a
``Turn`` to record what it says. Requests on one session are serialized by its lock. Appends go to
disk at once; a background flusher writes the metadata files and index rows and makes everything
durable, at most ``flush_delay`` later.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import logging
import os
import secrets
import sqlite3
import time
from collections.abc import Sequence
from pathlib import Path
from types import EllipsisType, TracebackType
from typing import Any

from .. import errors
from ..types import Message
from . import files, search
from .format import Record, dumps, header_line, key_of, meta_row, new_id, supersede_line, valid_session_id
from .history import Request, with_results
from .index import Index
from .session import Cache, Session, Slot

log = logging.getLogger("sorat.sessions")


class Turn:
    """One request on one session, between ``SessionStore.turn``'s enter and exit."""

    def __init__(
        self, store: SessionStore, session: Session, session_id: str, created: bool,
        messages: list[Message], new: list[Message], number: int, model: str,
    ) -> None:  # fmt: skip
        self._store = store
        self._session = session
        self._number = number
        self._model = model
        self._done = False
        self.id = session_id
        self.created = created
        self.messages = messages  # a snapshot taken on entry: add() does not change it
        # The request's messages new to the conversation; empty when it brought nothing new (say, only
        # results a client sent for internal calls): SPEC has the turn's last answer again, no model call.
        self.new = new

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
        """The length of the visible conversation now (of what ``SessionStore.visible`` returns)."""
        return len(self._session.history.shown)


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
        self._flush_delay = flush_delay  # fsyncs are grouped: at most this (plus the fsync) late
        self._run = secrets.token_hex(4)
        self._index = Index(self.root, self._run)
        self._pending = files.Pending(self.root, self._run)
        self._cache = Cache(self.root, cache_size, self._pending.metas)
        self._flusher: asyncio.Task[None] | None = None
        self._open = False

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
        self._pending.wake = asyncio.Event()
        await self._index.open()
        self._open = True
        self._index.start(self._resave)
        self._flusher = asyncio.create_task(self._flush_loop(), name="sorat-sessions-flusher")

    async def close(self) -> None:
        """Flushes and fsyncs everything; the next open trusts the index only if nothing was in use."""
        if not self._open:
            return
        self._open = False
        await self._index.stop()
        if self._flusher is not None and not self._flusher.done():
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
        for session in self._cache.sessions.values():
            session.close()
        try:
            await self.flush()
        except (OSError, sqlite3.Error):  # the files are the truth: the next open rebuilds the index
            log.exception("saving the sessions on close failed")
            self._index.trusted = False
        await self._index.close(clean=not self._cache.slots)
        self._cache.sessions.clear()

    async def ready(self) -> None:
        """Waits until the index is right and checked against the files."""
        await self._index.ready()

    async def flush(self) -> None:
        """Writes the pending metadata files and index rows, and fsyncs every file written so far."""
        await self._index.flush()
        if not await self._pending.write_metas():
            self._index.trusted = False  # the next start rebuilds the index from the files
        await self._pending.sync()

    # -- the interface --------------------------------------------------------------------------------

    def turn(
        self, session_id: str | None, messages: list[Message], *, model: str
    ) -> contextlib.AbstractAsyncContextManager[Turn]:
        """One request. Holds the session's lock until exit; see ``history.py`` and SPEC."""
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
        key = key_of(session_id)
        with self._pinned(key) as slot:
            session = await self._cache.load(key, slot)
            if session is None:
                return None
            row = session.row()
            messages = []
            history = session.history
            for record in history.records if include_superseded else history.active:
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
        text one message, internal tool traffic left out; the system prompt apart), or None if absent.
        Sent back with new messages after it, it continues the session; cut short, it branches there."""
        if not valid_session_id(session_id):
            return None
        key = key_of(session_id)
        with self._pinned(key) as slot:
            session = await self._cache.load(key, slot)
            return None if session is None else [dict(s.message) for s in session.history.shown]

    async def delete(self, session_id: str) -> bool:
        if not valid_session_id(session_id):
            return False
        key = key_of(session_id)
        with self._pinned(key) as slot:
            async with slot.request, slot.load, slot.meta:
                session = self._cache.sessions.pop(key, None)
                if session is not None:
                    session.deleted = True
                    session.close()
                self._pending.forget(key)
                self._index.forget(key)
                existed = await asyncio.to_thread(files.unlink_all, files.paths(self.root, key))
                await self._index.delete(key)
                return existed

    async def set_title(self, session_id: str, title: str) -> None:
        if not valid_session_id(session_id):
            return
        key = key_of(session_id)
        with self._pinned(key) as slot:
            session = await self._cache.load(key, slot)
            if session is None:
                return  # deleted meanwhile
            session.title = title
            self._index.texts.title(key, title)
            await self._save(session, slot)

    # -- turns ------------------------------------------------------------------------------------------

    async def _enter(self, session_id: str | None, messages: list[Message], model: str) -> Turn:
        self._check_open()
        request = Request(messages)  # the one pass over what was sent
        if session_id is None:
            found = await self._find(request)
            turn = None
            if found is not None:
                turn = await self._begin_on(found, None, request, model, fresh=False)
            while turn is None:  # a new session under a new id
                turn = await self._begin_on(key_of(new := new_id()), new, request, model, fresh=True)
            return turn
        turn = await self._begin_on(key_of(session_id), session_id, request, model, fresh=False)
        assert turn is not None
        return turn

    async def _begin_on(
        self, key: str, shown_id: str | None, request: Request, model: str, *, fresh: bool
    ) -> Turn | None:
        """Takes the session's lock and starts the turn; None when ``fresh`` and the id exists already."""
        slot = self._cache.pin(key)
        try:
            await slot.request.acquire()
            made: Session | None = None  # created here: removed again if the turn cannot start
            try:
                async with slot.load:
                    if fresh:  # a new id is not looked up first: creating its file exclusively tells
                        session = made = None if key in self._cache else self._create(key, shown_id or key)
                    else:
                        session = await self._cache.load_locked(key)
                        if session is None:
                            session = made = self._create(key, shown_id or key)
                            if session is None:  # its file was made meanwhile
                                session = await self._cache.load_locked(key)
                if session is None:  # a fresh id that is taken
                    slot.request.release()
                    self._cache.unpin(key)
                    return None
                created = made is not None
                turn = self._begin(session, shown_id or session.id, created, request, model)
                if created:  # listed at once; the metadata file follows at the turn's end
                    await self._save(session, slot, file=False)
                return turn
            except BaseException:
                if made is not None:
                    self._discard(made)
                slot.request.release()
                raise
        except BaseException:
            self._cache.unpin(key)
            raise

    def _begin(self, session: Session, shown_id: str, created: bool, request: Request, model: str) -> Turn:
        history = session.history
        plan = history.plan(request)
        number = history.turns + 1
        seqs = history.superseded(plan)
        if seqs:
            self._write(session, supersede_line(time.time(), number, seqs))
            history.supersede(plan)
        new = [*plan.system, *plan.append]  # a new system prompt is stored with its turn
        self._append(session, [(m, ...) for m in new], by="client", turn=number)
        return Turn(self, session, shown_id, created, with_results(plan.model), plan.append, number, model)

    async def _exit(self, turn: Turn) -> None:
        session = turn._session
        key = session.key
        slot = self._cache.slots[key]
        try:
            turn._done = True
            if not session.deleted:
                session.model = turn._model
                session.updated_at = time.time()
                await self._save(session, slot)
        finally:
            slot.request.release()
            self._cache.unpin(key)

    async def _find(self, request: Request) -> str | None:
        """The session whose visible conversation is exactly the request's earlier messages: a cached one
        (compared at once: most cost a length check), else one the index finds by hash."""
        if request.split == 0:
            return None  # a first message starts a new conversation
        tried: set[str] = set()
        for key, cached in reversed(self._cache.sessions.items()):
            if cached.history.matches(request):
                return key
            tried.add(key)
        for key in await self._index.find(request.lookup()):
            if key in tried:
                continue
            with self._pinned(key) as slot:
                session = await self._cache.load(key, slot)
                if session is not None and session.history.matches(request):
                    return key
        return None

    def _append(
        self,
        session: Session,
        items: Sequence[tuple[Message, Message | None | EllipsisType]],
        *,
        by: str,
        turn: int,
    ) -> None:
        if not items:
            return
        now = time.time()
        history = session.history
        records = []
        for i, (message, visible) in enumerate(items):
            message = dict(message)
            shown = message if visible is ... else (None if visible is None else dict(visible))
            records.append(Record(history.next_seq + i, now, turn, by, message, shown))
        self._write(session, b"".join(r.line() for r in records))
        for record in records:
            history.apply(record)
        self._index.texts.add(session.key, records)  # searchable with the next flush

    def _write(self, session: Session, data: bytes) -> None:
        """One append, on the event loop: an os.write to an open file costs microseconds."""
        if session.deleted:
            raise RuntimeError(f"session {session.id} was deleted")
        path = os.path.join(self._dir, session.key + ".jsonl")
        try:
            fd, entry = session.fd, session.fd is None
            if fd is None:
                fd = session.fd = files.open_append(path)
            files.append(fd, data, session.size)
        except OSError as e:
            raise self._failed(session.id, e) from e
        session.size += len(data)
        self._pending.written(path, entry=entry)

    def _create(self, key: str, session_id: str) -> Session | None:
        """A new session with its file and header; None if a file of that key exists. On the loop, like
        the appends: creating a file costs ~15 us, a thread hop several context switches and GIL
        handovers (measured under c32 load: 15 switches a request with the store's file work in threads,
        3 without, and a fifth less CPU)."""
        session = Session(key, session_id, time.time())
        data = header_line(session_id, session.created_at)
        try:
            fd = files.create(self.root, key, data)
        except OSError as e:
            raise self._failed(session_id, e) from e
        if fd is None:
            return None
        session.fd = fd
        session.size = len(data)
        self._pending.written(os.path.join(self._dir, key + ".jsonl"), entry=True)
        self._cache.sessions[key] = session
        return session

    def _discard(self, session: Session) -> None:
        """Removes a session whose first turn could not start: no half-made session stays behind."""
        session.deleted = True
        session.close()
        if self._cache.sessions.get(session.key) is session:
            del self._cache.sessions[session.key]
        self._index.forget(session.key)
        self._pending.forget(session.key)
        for path in files.paths(self.root, session.key):
            with contextlib.suppress(OSError):
                path.unlink()

    def _failed(self, session_id: str, e: OSError) -> errors.SoratError:
        """A write the disk refused (full, read-only, gone): the log and the client are told which and why."""
        log.error("cannot save session %s in %s: %s", session_id, self.root, e)
        return errors.SoratError(
            f"sorat could not save session {session_id!r} in {self.root}: {e.strerror or e}"
        )

    async def _save(self, session: Session, slot: Slot, *, force: bool = False, file: bool = True) -> None:
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
            row = meta_row(session.key, meta, meta["size"])
            assert row is not None
            if force:
                await self._index.save(row)
            else:
                self._index.queue(session.key, row)
            self._pending.meta(session.key, dumps(meta) if file else None)

    async def _resave(self, key: str) -> None:
        """Rebuilds a session's metadata and index row from its messages (the index's repair)."""
        with self._pinned(key) as slot:
            session = await self._cache.load(key, slot)
            if session is not None:
                await self._save(session, slot, force=True)

    # -- the flusher ------------------------------------------------------------------------------------

    async def _flush_loop(self) -> None:
        while True:
            await self._pending.wake.wait()
            await asyncio.sleep(self._flush_delay)  # lets a burst of appends share one fsync
            self._pending.wake.clear()
            try:
                await self.flush()
            except (OSError, sqlite3.Error):
                log.exception("saving the session files or the index failed; retrying with the next write")

    # -- locks ------------------------------------------------------------------------------------------

    def _pinned(self, key: str) -> contextlib.AbstractContextManager[Slot]:
        self._check_open()
        return self._cache.pinned(key)

    def _check_open(self) -> None:
        if not self._open:
            raise RuntimeError("the session store is not open")

    # -- listing (last: the name would shadow the builtin in the annotations below it) -----------------

    async def search(
        self, query: str, limit: int = 50, after: str | None = None
    ) -> tuple[builtins.list[dict], bool]:
        """Rows of the sessions whose title or messages hold every word of ``query``, newest first, as
        ``list`` pages them (``search.py``)."""
        if not 1 <= limit <= 1000:
            raise errors.RequestError("limit must be between 1 and 1000", param="limit")
        if after is not None and not valid_session_id(after):
            raise errors.RequestError(f"No session {after!r}", param="after")
        expression = search.match(query)
        if expression is None:
            return [], False
        page = await self._index.search_page(expression, limit, None if after is None else key_of(after))
        if page is None:
            raise errors.RequestError(f"No session {after!r}", param="after")
        return page

    async def list(self, limit: int = 100, after: str | None = None) -> tuple[builtins.list[dict], bool]:
        """Rows newest first (by updated_at) and whether more follow."""
        if not 1 <= limit <= 1000:
            raise errors.RequestError("limit must be between 1 and 1000", param="limit")
        if after is not None and not valid_session_id(after):
            raise errors.RequestError(f"No session {after!r}", param="after")
        page = await self._index.page(limit, None if after is None else key_of(after))
        if page is None:
            raise errors.RequestError(f"No session {after!r}", param="after")
        return page
