"""sessions/session.py: one session's row and metadata, and the cache of sessions in memory."""

from __future__ import annotations

from pathlib import Path

from sorat_daemon.sessions import SessionStore
from sorat_daemon.sessions.session import Cache, Session
from tests.sessions_support import SYSTEM, answer, assistant, user


async def test_the_cache_evicts_the_least_recent_session_nobody_uses(tmp_path: Path) -> None:
    cache = Cache(tmp_path, 2, {})
    for key in "abc":
        cache.sessions[key] = Session(key, key, 0.0)
    with cache.pinned("a"):
        with cache.pinned("b"):
            assert len(cache) == 3  # all in use or newer: nothing goes yet
        assert list(cache.sessions) == ["a", "c"]  # "a" is older, but in use
    assert "b" not in cache and await cache.load("b", cache.pin("b")) is None  # no files: nothing to read
    cache.unpin("b")


async def test_evicted_sessions_reload_from_disk(root: Path) -> None:
    async with SessionStore(root, cache_size=2) as store:
        for i in range(6):
            await answer(store, f"s{i}", [user(f"q{i}")], f"a{i}")
        async with store.turn("s0", [user("q0"), assistant("a0"), user("again")], model="m") as turn:
            assert not turn.created
            assert [m["content"] for m in turn.messages] == ["q0", "a0", "again"]
            await turn.add(assistant("done"))
        assert len(store._cache) <= 2
        row = await store.get("s0")
        assert row is not None and row["message_count"] == 4


async def test_the_row_counts_the_system_prompt_and_the_visible_conversation(root: Path) -> None:
    async with SessionStore(root) as store:
        async with store.turn("r", [SYSTEM, user("q")], model="m") as turn:
            await turn.add(
                assistant("Looking. ", [{"id": "int", "type": "function", "function": {}}]),
                visible=assistant("Looking. "),
            )
            await turn.add({"role": "tool", "tool_call_id": "int", "content": "x"}, visible=None)
            await turn.add(assistant("Done."))
        row = await store.get("r")
    assert row is not None and row["message_count"] == 3 and row["title"] == "q"
