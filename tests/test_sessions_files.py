"""sessions/files.py: crash-safe appends and rewrites, reading a session back, symlinks."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from sorat_daemon.sessions import SessionStore, files
from tests.sessions_support import (
    SYSTEM,
    answer,
    assistant,
    lines,
    message_lines,
    remove_index,
    user,
)


@pytest.mark.skipif(os.name == "nt", reason="symlinks need privileges on Windows")
async def test_a_symlink_in_sessions_does_not_lead_outside(
    tmp_path: Path, root: Path, store: SessionStore
) -> None:
    outside = tmp_path / "secret.txt"
    outside.write_text("secret\n")
    (root / "evil.jsonl").symlink_to(outside)
    with pytest.raises(OSError):
        await answer(store, "evil", [user("hi")], "hello")
    assert outside.read_text() == "secret\n"


async def test_messages_are_on_disk_as_soon_as_they_exist(root: Path, store: SessionStore) -> None:
    async with store.turn("s1", [SYSTEM, user("hi")], model="m") as turn:
        path = root / "s1.jsonl"
        assert [d["message"] for d in message_lines(path)] == [SYSTEM, user("hi")]
        await turn.add(assistant("hel"))
        assert message_lines(path)[-1]["message"] == assistant("hel")
        assert all(isinstance(d["ts"], float) for d in message_lines(path))


async def test_torn_last_line_is_skipped_and_repaired(root: Path) -> None:
    async with SessionStore(root) as store:
        await answer(store, "torn", [user("one")], "two")
    path = root / "torn.jsonl"
    with path.open("ab") as f:
        f.write(b'{"seq": 2, "ts": 1.0, "turn": 2, "by": "client", "message": {"role": "user", "cont')
    async with SessionStore(root) as store:
        row = await store.get("torn")
        assert row is not None
        assert [m["content"] for m in row["messages"]] == ["one", "two"]
        async with store.turn("torn", [user("one"), assistant("two"), user("three")], model="m") as turn:
            assert [m["content"] for m in turn.messages] == ["one", "two", "three"]
            await turn.add(assistant("four"))
    docs = lines(path)  # every line parses again
    assert [d["message"]["content"] for d in docs if "message" in d] == ["one", "two", "three", "four"]


async def test_last_line_missing_only_its_newline_is_kept(root: Path) -> None:
    async with SessionStore(root) as store:
        await answer(store, "nl", [user("one")], "two")
    path = root / "nl.jsonl"
    path.write_bytes(path.read_bytes().rstrip(b"\n"))
    async with SessionStore(root) as store:
        await answer(store, "nl", [user("three")], "four")
        row = await store.get("nl")
    assert row is not None
    assert [m["content"] for m in row["messages"]] == ["one", "two", "three", "four"]
    assert len(lines(path)) == 5


async def test_a_corrupt_middle_line_is_skipped(root: Path) -> None:
    async with SessionStore(root) as store:
        await answer(store, "mid", [user("one")], "two")
    path = root / "mid.jsonl"
    header, *rest = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(header + b"garbage\n" + b"".join(rest))
    async with SessionStore(root) as store:
        row = await store.get("mid")
    assert row is not None and [m["content"] for m in row["messages"]] == ["one", "two"]


async def test_metadata_waiting_for_the_flusher_is_what_a_reload_sees(root: Path) -> None:
    """A session evicted before the flusher wrote its metadata reloads with that metadata, not the old
    file; the next open finds it written."""
    async with SessionStore(root, cache_size=1, flush_delay=60) as store:
        await store.ready()  # the first open's index build is done: it loads no session meanwhile
        await answer(store, "a", [user("q")], "r")
        await store.set_title("a", "The Title")
        await answer(store, "b", [user("q")], "r")  # evicts "a"
        await answer(store, "c", [user("q")], "r")
        assert "a" not in store._cache and not (root / "a.json").exists()
        row = await store.get("a")
        assert row is not None and row["title"] == "The Title" and row["message_count"] == 2
    remove_index(root)
    async with SessionStore(root) as store:
        rows, _ = await store.list()
        assert {r["id"]: r["title"] for r in rows} == {"a": "The Title", "b": "q", "c": "q"}


async def test_a_deleted_session_leaves_no_late_metadata(root: Path) -> None:
    async with SessionStore(root, flush_delay=60) as store:
        await store.ready()
        await answer(store, "gone", [user("q")], "r")
        await store.set_title("gone", "Title")
        assert await store.delete("gone")
        await store.flush()
        assert sorted(p.name for p in root.iterdir() if not p.name.startswith(".")) == []
        assert await store.get("gone") is None


def test_metadata_is_rewritten_in_place(tmp_path: Path) -> None:
    """One write, padded to the old length: never a truncate, never a new file (inode) per turn."""
    path = tmp_path / "m.json"
    files.rewrite(path, json.dumps({"title": "a long first title", "n": 1}).encode())
    inode, size = path.stat().st_ino, path.stat().st_size
    files.rewrite(path, json.dumps({"title": "short", "n": 2}).encode())
    assert path.stat().st_ino == inode and path.stat().st_size == size
    assert json.loads(path.read_bytes()) == {"title": "short", "n": 2}
    files.rewrite(path, json.dumps({"title": "x" * 100, "n": 3}).encode())
    assert json.loads(path.read_bytes()) == {"title": "x" * 100, "n": 3}


def test_big_metadata_is_replaced_whole(tmp_path: Path) -> None:
    """Past one page, one write could tear: a temp file and a rename instead."""
    path = tmp_path / "m.json"
    files.rewrite(path, json.dumps({"title": "short"}).encode(), "run1")
    big = {"title": "t" * 5000}
    files.rewrite(path, json.dumps(big).encode(), "run1")
    assert json.loads(path.read_bytes()) == big
    assert [p.name for p in tmp_path.iterdir()] == ["m.json"]
