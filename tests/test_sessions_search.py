"""sessions/search.py: words in titles and messages, found by the index, in step with every append and
rebuilt with the index."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from sorat_daemon import errors
from sorat_daemon.sessions import SessionStore, search
from tests.sessions_support import answer, assistant, call, remove_index, result, user


async def ids(store: SessionStore, query: str, **kw: object) -> list[str]:
    rows, _ = await store.search(query, **kw)  # type: ignore[arg-type]
    return [r["id"] for r in rows]


def test_the_expression_of_a_search_box() -> None:
    assert search.match("Quetzal  birds") == '"quetzal" AND "birds"'
    assert search.match('say "hi" OR NOT x*') == '"say" AND "hi" AND "or" AND "not" AND "x"'
    assert search.match("  ... !!") is None
    assert search.match("foo-bar") == '"foo" AND "bar"'


async def test_words_in_messages_and_titles(root: Path) -> None:
    async with SessionStore(root) as store:
        birds = await answer(store, None, [user("tell me of birds")], "The quetzalcoatlus was a pterosaur.")
        fish = await answer(store, None, [user("and fish?")], "Sharks are fish; so are rays.")
        assert await ids(store, "quetzalcoatlus") == [birds]  # the answer's text, right after the append
        assert await ids(store, "quetz") == []  # words, not prefixes
        assert await ids(store, "birds") == [birds]  # the user's text
        assert await ids(store, "shark") == [fish]  # stemmed: sharks, shark
        assert await ids(store, "sharks birds") == []  # every word must be there
        assert await ids(store, "FISH") == [fish]
        assert await ids(store, "") == []
        await store.set_title(fish, "Élasmobranches and friends")
        assert await ids(store, "elasmobranches") == [fish]  # titles too, without their accents
        await store.set_title(fish, "Cartilage")
        assert await ids(store, "elasmobranches") == []  # a replaced title no longer matches
        assert await ids(store, "cartilage") == [fish]


async def test_tool_traffic_and_system_prompts_are_not_indexed(root: Path) -> None:
    async with SessionStore(root) as store:
        system = {"role": "system", "content": "zebra rules"}
        async with store.turn(None, [system, user("go")], model="m") as t:
            await t.add(assistant(None, [call("c1")]), visible=None)
            await t.add(result("c1", "giraffe.txt"), visible=None)
            await t.add(assistant("done"))
        assert await ids(store, "giraffe") == []
        assert await ids(store, "zebra") == []
        assert await ids(store, "done") == [t.id]


async def test_newest_first_with_the_listing_cursor(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async with SessionStore(root) as store:
        made = [await answer(store, f"s{i}", [user(f"common word {i}")], "ok") for i in range(7)]
        await answer(store, "other", [user("nothing alike")], "ok")
        newest = list(reversed(made))
        for few, budget in ((search.FEW, 0), (3, 1000), (3, 0)):  # from the matches; walking; probing
            monkeypatch.setattr(search, "FEW", few)
            monkeypatch.setattr(search, "BUDGET", budget)
            rows, more = await store.search("common", limit=3)
            assert [r["id"] for r in rows] == newest[:3] and more
            assert set(rows[0]) == {"id", "title", "model", "created_at", "updated_at", "message_count"}
            rows, more = await store.search("common", limit=3, after=rows[-1]["id"])
            assert [r["id"] for r in rows] == newest[3:6] and more
            rows, more = await store.search("common", limit=3, after=rows[-1]["id"])
            assert [r["id"] for r in rows] == newest[6:] and not more
        await answer(store, "s0", [user("common word 0"), assistant("ok"), user("more")], "ok")
        assert (await ids(store, "common"))[0] == "s0"  # a new message makes it the newest
        with pytest.raises(errors.RequestError):
            await store.search("common", after="no-such-session")


async def test_a_deleted_session_is_not_found(root: Path) -> None:
    async with SessionStore(root) as store:
        sid = await answer(store, None, [user("ephemeral words")], "gone soon")
        await store.set_title(sid, "Ephemeral title")
        assert await ids(store, "ephemeral") == [sid]
        assert await store.delete(sid)
        assert await ids(store, "ephemeral") == []
        again = await answer(store, sid, [user("ephemeral again")], "back")  # the same id, new session
        assert await ids(store, "gone") == []  # the old one's words stay gone
        assert await ids(store, "ephemeral") == [again]


async def test_rebuilt_with_the_index(root: Path) -> None:
    async with SessionStore(root) as store:
        sid = await answer(store, None, [user("persistent words")], "still here")
        await store.set_title(sid, "Kept title")
    remove_index(root)
    async with SessionStore(root) as store:
        await store.ready()
        assert await ids(store, "persistent") == [sid]
        assert await ids(store, "kept") == [sid]


async def test_a_crash_loses_no_searchable_text(root: Path) -> None:
    """Text whose write a crash lost (the index not closed cleanly) is read in again from the files."""
    async with SessionStore(root) as store:
        first = await answer(store, None, [user("before the crash")], "saved")
    db = sqlite3.connect(root / search.FILE)
    db.execute("DELETE FROM search_sessions")  # as if the last writes never reached the file
    db.execute("INSERT INTO search(search) VALUES ('delete-all')")
    db.commit()
    db.close()
    (root / ".clean").unlink()  # and the index was not closed cleanly
    async with SessionStore(root) as store:
        await store.ready()
        assert await ids(store, "crash") == [first]
        history = [user("before the crash"), assistant("saved"), user("after")]
        second = await answer(store, first, history, "x")
        assert second == first
        assert await ids(store, "crash") == [first]
    db = sqlite3.connect(root / search.FILE)
    rows = db.execute("SELECT count(*) FROM search WHERE search MATCH 'crash'").fetchone()[0]
    db.close()
    assert rows == 1  # read in once, never twice


async def test_a_missing_search_file_is_filled(root: Path) -> None:
    async with SessionStore(root) as store:
        sid = await answer(store, None, [user("older index words")], "fine")
    for path in root.glob(search.FILE + "*"):
        path.unlink()
    async with SessionStore(root) as store:  # the index is trusted (closed cleanly); the search file new
        await store.ready()
        assert await ids(store, "older") == [sid]


async def test_a_broken_search_file_is_made_anew(root: Path) -> None:
    async with SessionStore(root) as store:
        sid = await answer(store, None, [user("words kept safe")], "fine")
    for path in root.glob(search.FILE + "*"):
        path.unlink()
    (root / search.FILE).write_bytes(b"this is not a database" * 100)
    async with SessionStore(root) as store:
        await store.ready()
        assert await ids(store, "safe") == [sid]
        rows, _ = await store.list()
        assert [r["id"] for r in rows] == [sid]


async def test_the_index_check_leaves_the_search_file_out(root: Path) -> None:
    """The index is checked before the daemon serves; the search file, in the background."""
    async with SessionStore(root) as store:
        await answer(store, None, [user("x")], "y")
    db = sqlite3.connect(root / ".index.sqlite3")
    tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master")}
    db.close()
    assert not {t for t in tables if t.startswith("search")}
