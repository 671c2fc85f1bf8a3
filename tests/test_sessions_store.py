"""sessions/store.py: turns, ids, the cache, deleting and titles."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from sorat_daemon import errors
from sorat_daemon.sessions import SessionStore
from tests.sessions_support import (
    BAD_IDS,
    SYSTEM,
    answer,
    assistant,
    snapshot,
    user,
)


async def test_bad_ids_touch_nothing(tmp_path: Path, root: Path, store: SessionStore) -> None:
    home = root.parent
    (home / "x.jsonl").write_text("outside\n")
    (tmp_path / "x.jsonl").write_text("outside\n")
    before = snapshot(tmp_path)
    for value in BAD_IDS:
        with pytest.raises(errors.RequestError) as caught:
            store.turn(value, [user("hi")], model="m")
        assert caught.value.param == "X-Session-ID"
        assert caught.value.status == 400
        assert await store.get(value) is None
        assert await store.delete(value) is False
        await store.set_title(value, "nope")
    assert snapshot(tmp_path) == before


async def test_ids_differing_in_case_are_one_session(root: Path, store: SessionStore) -> None:
    async with store.turn("MyChat", [user("hi")], model="m") as turn:
        assert turn.created and turn.id == "MyChat"
        await turn.add(assistant("hello"))
    async with store.turn("mychat", [user("again")], model="m") as turn:
        assert not turn.created and turn.id == "mychat"
        assert [m["content"] for m in turn.messages] == ["hi", "hello", "again"]
        await turn.add(assistant("yes"))
    row = await store.get("MYCHAT")
    assert row is not None and row["id"] == "MyChat" and row["message_count"] == 4
    await store.flush()  # the metadata file is the flusher's
    assert sorted(p.name for p in root.iterdir() if not p.name.startswith(".")) == [
        "mychat.json",
        "mychat.jsonl",
    ]


async def test_persistence_across_close_and_reopen(root: Path) -> None:
    async with SessionStore(root) as store:
        first = await answer(store, None, [SYSTEM, user("first question")], "first answer")
        async with store.turn("other", [user("other question")], model="requested") as turn:
            turn.set_model("actual-model")
            await turn.add(assistant("other answer"))
        await store.set_title(first, "A generated title")
    async with SessionStore(root) as store:
        rows, more = await store.list()
        assert not more
        assert [r["id"] for r in rows] == ["other", first]
        assert rows[0]["model"] == "actual-model" and rows[0]["title"] == "other question"
        assert rows[1]["title"] == "A generated title" and rows[1]["message_count"] == 3
        row = await store.get(first)
        assert row is not None
        assert [m["role"] for m in row["messages"]] == ["system", "user", "assistant"]
        assert all("timestamp" in m for m in row["messages"])
        # the stateless client continues after the restart, found through the index
        async with store.turn(
            None, [SYSTEM, user("first question"), assistant("first answer"), user("q2")], model="m"
        ) as turn:
            assert turn.id == first and not turn.created and not turn.needs_title


async def test_cancelled_turn_keeps_what_was_said(store: SessionStore) -> None:
    inside = asyncio.Event()

    async def request() -> None:
        async with store.turn("cancel", [user("long task")], model="m") as turn:
            await turn.add(assistant("partial"))
            inside.set()
            await asyncio.Event().wait()  # the client goes away here

    task = asyncio.create_task(request())
    await inside.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    row = await store.get("cancel")
    assert row is not None and [m["content"] for m in row["messages"]] == ["long task", "partial"]
    rows, _ = await store.list()
    assert rows[0]["id"] == "cancel" and rows[0]["message_count"] == 2
    async with store.turn("cancel", [user("next")], model="m"):
        pass  # the lock was released


async def test_delete(root: Path, store: SessionStore) -> None:
    await answer(store, "gone", [user("hi")], "hello")
    await answer(store, "kept", [user("hi")], "hello")
    assert await store.delete("GONE") is True
    assert await store.get("gone") is None
    assert await store.delete("gone") is False
    assert not (root / "gone.jsonl").exists() and not (root / "gone.json").exists()
    rows, _ = await store.list()
    assert [r["id"] for r in rows] == ["kept"]
    async with store.turn("gone", [user("again")], model="m") as turn:
        assert turn.created and turn.messages == [user("again")]


async def test_fallback_title_and_set_title(store: SessionStore) -> None:
    long = "word " * 40
    async with store.turn(
        "t", [SYSTEM, {"role": "user", "content": [{"type": "text", "text": long}]}], model="m"
    ) as turn:
        assert turn.needs_title
        await turn.add(assistant("ok"))
    row = await store.get("t")
    assert row is not None and row["title"] == " ".join(long.split())[:60]
    await store.set_title("T", "Short title")
    rows, _ = await store.list()
    assert rows[0]["title"] == "Short title"
    async with store.turn("t", [user("more")], model="m") as turn:
        assert not turn.needs_title


async def test_concurrent_turns_on_one_session_are_serialized(store: SessionStore) -> None:
    active = 0
    seen: list[int] = []

    async def request(i: int) -> None:
        nonlocal active
        async with store.turn("busy", [user(f"q{i}")], model="m") as turn:
            active += 1
            assert active == 1
            seen.append(len(turn.messages))
            await asyncio.sleep(0)  # let the others pile up on the lock
            await turn.add(assistant(f"a{i}"))
            active -= 1

    await asyncio.gather(*(request(i) for i in range(32)))
    assert sorted(seen) == list(range(1, 64, 2))
    row = await store.get("busy")
    assert row is not None and len(row["messages"]) == 64
    contents = [m["content"] for m in row["messages"]]
    assert sorted(contents) == sorted([f"q{i}" for i in range(32)] + [f"a{i}" for i in range(32)])
    for q, a in zip(contents[::2], contents[1::2], strict=True):
        assert q[1:] == a[1:]  # each answer right after its question
