"""sessions/index.py: listing, the clean-close token, and rebuilding the index from the files."""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from sorat_daemon import errors
from sorat_daemon.sessions import SessionStore
from tests.sessions_support import (
    SYSTEM,
    answer,
    assistant,
    make_sessions,
    remove_index,
    user,
)


@pytest.fixture
def logged() -> Iterator[list[str]]:
    """What the store logs, whatever the logging setup of the tests before (it may stop propagation)."""
    messages: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            messages.append(record.getMessage())

    logger, handler = logging.getLogger("sorat.sessions"), Collect(logging.INFO)
    level = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    yield messages
    logger.removeHandler(handler)
    logger.setLevel(level)


async def test_a_first_open_has_nothing_to_rebuild(root: Path, logged: list[str]) -> None:
    """A brand-new home: a new index, and no word of a rebuild (issue 11)."""
    async with SessionStore(root) as store:
        await store.ready()
        await answer(store, "first", [user("hi")], "hello")
    assert logged == [f"new session index in {root}"]
    logged.clear()
    async with SessionStore(root) as store:  # closed cleanly: trusted as it is
        await store.ready()
        rows, _ = await store.list()
        assert [r["id"] for r in rows] == ["first"]
    assert logged == []


async def test_an_unclean_close_still_rebuilds(root: Path, logged: list[str]) -> None:
    await make_sessions(root, 2)
    (root / ".clean").unlink()  # what a crash leaves: no token
    logged.clear()
    async with SessionStore(root) as store:
        await store.ready()
        rows, _ = await store.list()
        assert len(rows) == 2
    assert logged == [
        "session index not closed cleanly: rebuilding it in the background",
        "session index rebuilt: 2 sessions (0 from their messages)",
    ]


async def test_a_missing_index_is_rebuilt_from_the_files(root: Path, logged: list[str]) -> None:
    await make_sessions(root, 2)
    remove_index(root)
    logged.clear()
    async with SessionStore(root) as store:
        await store.ready()
    assert logged == [
        "session index missing or outdated: rebuilding it from the files in the background",
        "session index rebuilt: 2 sessions (0 from their messages)",
    ]


async def test_parallel_new_sessions_are_all_listed(root: Path) -> None:
    async with SessionStore(root) as store:
        ids = await asyncio.gather(*(answer(store, None, [user(f"question {i}")], "ok") for i in range(128)))
        assert len(set(ids)) == 128
        rows, more = await store.list(limit=1000)
        assert not more and {r["id"] for r in rows} == set(ids)
    async with SessionStore(root) as store:
        rows, _ = await store.list(limit=1000)
        assert {r["id"] for r in rows} == set(ids)


async def test_paging(root: Path) -> None:
    ids = await make_sessions(root, 25)
    async with SessionStore(root) as store:
        pages, after, more = [], None, True
        while more:
            rows, more = await store.list(limit=10, after=after)
            pages.append([r["id"] for r in rows])
            after = rows[-1]["id"]
        assert [len(p) for p in pages] == [10, 10, 5]
        assert [i for p in pages for i in p] == ids[::-1]  # newest first
        rows, more = await store.list(limit=25)
        assert len(rows) == 25 and not more
        rows, more = await store.list(limit=1, after=ids[0])
        assert rows == [] and not more
        for bad in (0, 1001):
            with pytest.raises(errors.RequestError):
                await store.list(limit=bad)
        with pytest.raises(errors.RequestError):
            await store.list(after="no-such-session")
        with pytest.raises(errors.RequestError):
            await store.list(after="../x")


async def test_deleted_index_is_rebuilt(root: Path) -> None:
    ids = await make_sessions(root, 30)
    async with SessionStore(root) as store:
        await store.set_title("s003", "Titled")
    remove_index(root)
    async with SessionStore(root) as store:
        row = await store.get("s007")  # reads don't wait for the rebuild
        assert row is not None and row["message_count"] == 2
        rows, _ = await store.list(limit=100)
        assert [r["id"] for r in rows] == ids[::-1]
        assert next(r for r in rows if r["id"] == "s003")["title"] == "Titled"


async def test_index_from_before_is_rebuilt(root: Path) -> None:
    await make_sessions(root, 3)
    saved = {p.name: p.read_bytes() for p in root.glob(".index.sqlite3*")}
    async with SessionStore(root) as store:
        await answer(store, "late", [user("later")], "yes")
        assert await store.delete("s000")
    remove_index(root)
    for name, data in saved.items():
        (root / name).write_bytes(data)
    async with SessionStore(root) as store:
        rows, _ = await store.list()
        assert [r["id"] for r in rows] == ["late", "s002", "s001"]


async def test_close_during_the_rebuild_leaves_it_to_the_next_open(root: Path) -> None:
    ids = await make_sessions(root, 40)
    remove_index(root)
    async with SessionStore(root):
        pass  # closed before the background rebuild could finish
    async with SessionStore(root) as store:
        rows, _ = await store.list()
        assert [r["id"] for r in rows] == ids[::-1]


async def test_files_changed_while_stopped_are_noticed(tmp_path: Path, root: Path) -> None:
    await make_sessions(root, 3)
    elsewhere = tmp_path / "elsewhere"
    async with SessionStore(elsewhere) as store:
        await answer(store, "a.json", [user("copied in")], "yes")  # a name that tests the suffixes
    for name in ("a.json.json", "a.json.jsonl"):
        shutil.copy(elsewhere / name, root / name)
    (root / "s001.json").unlink()
    (root / "s001.jsonl").unlink()
    async with SessionStore(root) as store:
        await store.ready()
        rows, _ = await store.list()
        assert sorted(r["id"] for r in rows) == ["a.json", "s000", "s002"]


async def test_corrupt_index_is_rebuilt(root: Path) -> None:
    await make_sessions(root, 3)
    remove_index(root)
    (root / ".index.sqlite3").write_bytes(b"this is not a database" * 100)
    async with SessionStore(root) as store:
        rows, _ = await store.list()
        assert len(rows) == 3


async def test_crash_mid_turn_is_repaired(tmp_path: Path, root: Path) -> None:
    """A copy of the files taken mid-turn is what a kill -9 leaves behind."""
    crashed = tmp_path / "crashed"
    async with SessionStore(root) as store:
        await answer(store, "c", [user("q1")], "a1")
        async with store.turn("c", [user("q2")], model="m") as turn:
            await turn.add(assistant("a2 part one"))
            shutil.copytree(root, crashed)
            with (crashed / "c.jsonl").open("ab") as f:
                f.write(b'{"seq": 99, "ts": 1.0, "turn": 2, "by": "agent", "mess')  # killed mid-write
    async with SessionStore(crashed) as store:
        rows, _ = await store.list()
        assert rows[0]["id"] == "c" and rows[0]["message_count"] == 4
        row = await store.get("c")
        assert row is not None
        assert [m["content"] for m in row["messages"]] == ["q1", "a1", "q2", "a2 part one"]
    meta = json.loads((crashed / "c.json").read_text())  # rewritten by the store
    assert meta["size"] == (crashed / "c.jsonl").stat().st_size and meta["message_count"] == 4


async def test_session_without_metadata_is_recovered(root: Path) -> None:
    await make_sessions(root, 2)
    (root / "s001.json").unlink()
    remove_index(root)
    async with SessionStore(root) as store:
        rows, _ = await store.list()
        assert {r["id"] for r in rows} == {"s000", "s001"}
        row = await store.get("s001")
        assert row is not None and row["title"] == "q1" and row["message_count"] == 2


@pytest.mark.parametrize(
    ("old_format", "old_schema"),
    [(1, 1), (2, 2)],  # 1 hashed the system prompt too, 2 the spacing of assistant text
)
async def test_metadata_of_an_older_format_is_listed_and_rehashed(
    root: Path, old_format: int, old_schema: int
) -> None:
    """An older format hashed otherwise: an upgraded index lists such a session at once and rebuilds its
    hash from the messages."""
    async with SessionStore(root) as store:
        await answer(store, "old", [SYSTEM, user("q1")], "a1")
    meta = json.loads((root / "old.json").read_text())
    (root / "old.json").write_text(
        json.dumps({**meta, "format": old_format, "lookup": "a hash made otherwise"})
    )
    db = sqlite3.connect(root / ".index.sqlite3")
    db.execute(f"PRAGMA user_version = {old_schema}")
    db.close()
    async with SessionStore(root) as store:
        rows, _ = await store.list()
        assert [r["id"] for r in rows] == ["old"]
        await store.ready()
    assert json.loads((root / "old.json").read_text())["format"] == 3
    async with SessionStore(root) as store:  # found through the index, by its new hash
        async with store.turn(None, [SYSTEM, user("q1"), assistant("a1"), user("q2")], model="m") as turn:
            assert turn.id == "old" and not turn.created
