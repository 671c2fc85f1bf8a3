"""Crash-safe file I/O for the session store: creating, appending, rewriting in place, making durable,
reading a session's files back and listing the directory (the format itself: ``format.py``).

Nothing here follows a symlink (one planted in ``sessions/`` must not lead outside it). Appends,
creates and metadata rewrites run on the event loop (an ``os.write`` to an open file costs
microseconds, a thread hop more); reads, listings and syncs run in worker threads. ``Pending`` is what
the store's flusher still has to write and make durable.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import logging
import os
import secrets
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from ..paths import write_all
from .format import key_of, valid_session_id

log = logging.getLogger("sorat.sessions")

_O_BINARY = getattr(os, "O_BINARY", 0)
_O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_CREATE = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL | _O_BINARY | _O_NOFOLLOW
_APPEND = os.O_WRONLY | os.O_APPEND | os.O_CREAT | _O_BINARY | _O_NOFOLLOW


def paths(root: Path, key: str) -> tuple[Path, Path]:
    """The session's messages and metadata."""
    return root / f"{key}.jsonl", root / f"{key}.json"


def create(root: Path, key: str, header: bytes) -> int | None:
    """Creates ``<key>.jsonl`` exclusively with its header line; its fd (open for appends), or None if
    the file exists already."""
    path = paths(root, key)[0]
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


def open_append(path: str) -> int:
    return os.open(path, _APPEND, 0o600)


def append(fd: int, data: bytes, size: int) -> None:
    """Appends ``data`` to a file of ``size`` bytes; a failed write is cut off again, so no half line is
    left for the next append to follow."""
    try:
        write_all(fd, data)
    except OSError:
        with contextlib.suppress(OSError):
            os.ftruncate(fd, size)
        raise


def read_bytes(path: Path) -> bytes | None:
    try:
        fd = os.open(path, os.O_RDONLY | _O_BINARY | _O_NOFOLLOW)
    except FileNotFoundError:
        return None
    with open(fd, "rb") as f:
        return f.read()


def read_meta(path: Path) -> dict[str, Any] | None:
    try:
        data = read_bytes(path)
        meta = orjson.loads(data) if data is not None else None
    except (OSError, orjson.JSONDecodeError) as e:
        log.warning("unreadable session metadata %s: %s", path.name, e)
        return None
    return meta if isinstance(meta, dict) else None


def write_atomic(path: Path, data: bytes, run: str, *, sync: bool = True) -> None:
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


def rewrite(path: Path | str, data: bytes, run: str = "") -> None:
    """Replaces a small file's content in place with one write: padded with spaces (JSON ignores them)
    to at least the old length, so it never needs truncating, and a process killed at any moment leaves
    the old content or the new, never a mix (one write of less than a page is not split). A temp file and
    a rename would make a new inode and free the old one on every turn: ext4 then has to search past
    the recently freed ones for each new file, which made creating a session's file cost ~0.4 ms here."""
    if len(data) >= 4096:  # more than one page could tear: the temp file and rename
        write_atomic(Path(path), data, run, sync=False)
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


def sync(root: Path, written: Iterable[str], directory: bool) -> None:
    """Makes the ``written`` paths (and with ``directory``, the folder's entries) durable."""
    syncfs = _syncfs()
    if syncfs is not None:
        fd = os.open(root, os.O_RDONLY)
        try:
            if syncfs(fd) == 0:
                return
        finally:
            os.close(fd)
    _fsync_paths(written, root if directory else None)


def _fsync_paths(written: Iterable[str], directory: Path | None) -> None:
    for path in written:
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


@dataclass(slots=True)
class SessionFiles:
    """A session's two files as read: its metadata (parsed) and the whole lines of its messages."""

    meta: dict[str, Any] | None
    lines: list[bytes]
    size: int  # of the .jsonl, once a torn last line is cut off


def read_session(root: Path, key: str, pending: bytes | None = None) -> SessionFiles | None:
    """The session's files (``pending``: its metadata not written yet), or None if it has none. A torn last
    line is cut off here: only the cached session, made from this read, ever appends, so nothing is
    writing the file now."""
    path, meta_path = paths(root, key)
    meta = orjson.loads(pending) if pending is not None else read_meta(meta_path)
    data = read_bytes(path)
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
    return SessionFiles(meta, lines, size)


def scan(root: Path, run: str) -> list[tuple[str, dict[str, Any] | None, int | None]]:
    """Every session in ``root``: its key, metadata and the size of its messages (None if absent). Temp
    files of other runs (a crash between write and rename) go."""
    metas: set[str] = set()
    sizes: dict[str, int] = {}
    with os.scandir(root) as entries:
        for entry in entries:
            name = entry.name
            if name.startswith("."):
                if name.endswith(".tmp") and f".{run}." not in name:
                    with contextlib.suppress(OSError):
                        os.unlink(entry.path)
                continue
            if name.endswith(".jsonl") and entry.is_file(follow_symlinks=False):
                sizes[name[: -len(".jsonl")]] = entry.stat(follow_symlinks=False).st_size
            elif name.endswith(".json") and entry.is_file(follow_symlinks=False):
                metas.add(name[: -len(".json")])
    out = []
    for key in sorted(metas | sizes.keys()):
        if valid_session_id(key) and key == key_of(key):
            meta = read_meta(root / f"{key}.json") if key in metas else None
            out.append((key, meta, sizes.get(key)))
    return out


def disk_keys(root: Path) -> set[str]:
    """The keys of the sessions with a file in ``root``."""
    keys = set()
    with os.scandir(root) as entries:
        for entry in entries:
            name = entry.name
            key = name[: -len(".jsonl")] if name.endswith(".jsonl") else name.removesuffix(".json")
            if key != name and valid_session_id(key) and key == key_of(key):
                keys.add(key)
    return keys


def unlink_all(files: Iterable[Path]) -> bool:
    """Removes the files; whether any existed."""
    existed = False
    for path in files:
        try:
            path.unlink()
            existed = True
        except FileNotFoundError:
            pass
    return existed


class Pending:
    """The flusher's work: metadata files to write (only the newest version of each) and the files
    written since the last sync. ``wake`` is set whenever there is some."""

    def __init__(self, root: Path, run: str) -> None:
        self.root = root
        self._dir = str(root)
        self._run = run
        self.metas: dict[str, bytes] = {}  # by session key
        self._written: set[str] = set()
        self._entries = False  # files created, renamed or removed: the directory needs syncing too
        self.wake = asyncio.Event()

    def written(self, path: str, *, entry: bool = False) -> None:
        self._written.add(path)
        self._entries = self._entries or entry
        self.wake.set()

    def meta(self, key: str, data: bytes | None) -> None:
        """Queues a session's metadata file (None: the index row alone changed)."""
        if data is not None:
            self.metas[key] = data
        self._entries = True
        self.wake.set()

    def forget(self, key: str) -> None:
        """A deleted session: nothing of its may be written again."""
        self.metas.pop(key, None)
        for path in paths(self.root, key):
            self._written.discard(str(path))

    async def write_metas(self) -> bool:
        """Writes the queued metadata files, on the loop: a few microseconds each, where a thread trades
        the GIL back and forth around each of its syscalls. False if one failed (it stays queued)."""
        done = 0
        while self.metas:
            key, data = next(iter(self.metas.items()))
            path = os.path.join(self._dir, key + ".json")
            try:
                rewrite(path, data, self._run)
            except OSError as e:  # a full disk, say: it stays queued for the next flush
                log.error("cannot save the metadata of session %s in %s: %s", key, self.root, e)
                return False
            del self.metas[key]
            self._written.add(path)
            done += 1
            if done % 32 == 0:
                await asyncio.sleep(0)  # requests go on between batches
        return True

    async def sync(self) -> None:
        """Makes every file written so far durable."""
        written, self._written = self._written, set()
        entries, self._entries = self._entries, False
        if written or entries:
            await asyncio.to_thread(sync, self.root, written, entries)
