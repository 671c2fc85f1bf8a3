from __future__ import annotations

import asyncio
import json
import os
import shutil
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sorat_daemon import errors, sessions
from sorat_daemon.sessions import SessionStore, valid_session_id
from sorat_daemon.types import Message

SYSTEM: Message = {"role": "system", "content": "You are terse."}


def user(text: str) -> Message:
    return {"role": "user", "content": text}


def assistant(text: str | None, calls: list[dict] | None = None) -> Message:
    message: Message = {"role": "assistant", "content": text}
    if calls:
        message["tool_calls"] = calls
    return message


def call(call_id: str, name: str = "run_command", arguments: str = '{"command": "ls"}') -> dict:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def result(call_id: str, content: str) -> Message:
    return {"role": "tool", "tool_call_id": call_id, "content": content}


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def message_lines(path: Path) -> list[dict]:
    return [doc for doc in lines(path) if "message" in doc]


def snapshot(directory: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()
    }


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "home" / "sessions"


@pytest.fixture
async def store(root: Path) -> AsyncIterator[SessionStore]:
    async with SessionStore(root) as store:
        yield store


async def answer(store: SessionStore, session_id: str | None, messages: list[Message], text: str) -> str:
    """One request answered with plain text; returns the session id."""
    async with store.turn(session_id, messages, model="test-model") as turn:
        await turn.add(assistant(text))
        return turn.id


# --- ids -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value", ["a", "A1", "chat-2024.01_x", "sess_abc", "x" * 128, "console", "com10", "a.b"]
)
def test_valid_ids(value: str) -> None:
    assert valid_session_id(value)


BAD_IDS = [
    "",
    ".",
    "..",
    "../x",
    "..\\x",
    "a/b",
    "a\\b",
    "%2e%2e%2f",
    "/etc/passwd",
    "C:\\Windows",
    "x" * 129,
    "x" * 300,
    "CON",
    "con",
    "Nul",
    "con.txt",
    "COM1",
    "lpt9.log",
    "abc.",
    "-abc",
    "_abc",
    ".hidden",
    "abc\n",
    "ab c",
    "é",
]


@pytest.mark.parametrize("value", BAD_IDS)
def test_invalid_ids(value: str) -> None:
    assert not valid_session_id(value)


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


# --- storage ---------------------------------------------------------------------------------------


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


# --- history -----------------------------------------------------------------------------------------


async def test_resend_everything_adds_only_the_new_tail(root: Path, store: SessionStore) -> None:
    history = [SYSTEM, user("q1")]
    await answer(store, "h", history, "a1")
    history += [assistant("a1"), user("q2")]
    async with store.turn("h", history, model="m") as turn:
        assert turn.messages == history
        await turn.add(assistant("a2"))
    contents = [d["message"]["content"] for d in message_lines(root / "h.jsonl")]
    assert contents == ["You are terse.", "q1", "a1", "q2", "a2"]


async def test_edit_supersedes_and_the_request_wins(root: Path, store: SessionStore) -> None:
    await answer(store, "e", [SYSTEM, user("q1")], "a1")
    await answer(store, "e", [SYSTEM, user("q1"), assistant("a1"), user("q2")], "a2")
    edited = [SYSTEM, user("q1"), assistant("a1"), user("q2 edited")]
    async with store.turn("e", edited, model="m") as turn:
        assert turn.messages == edited
        await turn.add(assistant("a2 new"))
    row = await store.get("e")
    assert row is not None
    assert [m["content"] for m in row["messages"]] == ["You are terse.", "q1", "a1", "q2 edited", "a2 new"]
    assert row["message_count"] == 5
    everything = await store.get("e", include_superseded=True)
    assert everything is not None
    superseded = [m["content"] for m in everything["messages"] if m.get("superseded")]
    assert superseded == ["q2", "a2"]
    docs = lines(root / "e.jsonl")
    marks = [d for d in docs if "supersede" in d]
    assert len(marks) == 1 and len(marks[0]["supersede"]) == 2
    # the superseded branch never reaches the model again
    async with store.turn("e", [user("q3")], model="m") as turn:
        assert [m["content"] for m in turn.messages] == [
            "You are terse.",
            "q1",
            "a1",
            "q2 edited",
            "a2 new",
            "q3",
        ]


async def test_regenerate_drops_the_old_answer_and_its_tool_traffic(root: Path, store: SessionStore) -> None:
    await answer(store, "r", [SYSTEM, user("q1")], "a1")
    async with store.turn("r", [SYSTEM, user("q1"), assistant("a1"), user("q2")], model="m") as turn:
        await turn.add(assistant(None, [call("int_1")]), visible=None)
        await turn.add(result("int_1", "files"), visible=None)
        await turn.add(assistant("a2"))
    before = len(message_lines(root / "r.jsonl"))
    regenerate = [SYSTEM, user("q1"), assistant("a1"), user("q2")]
    async with store.turn("r", regenerate, model="m") as turn:
        assert turn.messages == regenerate  # no old answer, no old tool calls
        await turn.add(assistant("a2 again"))
    assert len(message_lines(root / "r.jsonl")) == before + 1  # nothing re-stored
    row = await store.get("r", include_superseded=True)
    assert row is not None
    assert sum(1 for m in row["messages"] if m.get("superseded")) == 3


async def test_stateful_client_gets_the_stored_conversation_in_front(root: Path, store: SessionStore) -> None:
    async with store.turn("sf", [SYSTEM, user("list files")], model="m") as turn:
        await turn.add(assistant("Let me look. ", [call("call_int")]), visible=assistant("Let me look. "))
        await turn.add(result("call_int", "a.txt b.txt"), visible=None)
        await turn.add(assistant("There are two files."))
    async with store.turn("sf", [SYSTEM, user("and their sizes?")], model="m") as turn:
        assert turn.messages == [
            SYSTEM,
            user("list files"),
            assistant("Let me look. ", [call("call_int")]),
            result("call_int", "a.txt b.txt"),
            assistant("There are two files."),
            user("and their sizes?"),
        ]
        await turn.add(assistant("Small."))
    docs = message_lines(root / "sf.jsonl")
    assert [d["message"]["role"] for d in docs].count("tool") == 1  # stored once
    assert [d["message"] for d in docs].count(SYSTEM) == 1
    row = await store.get("sf")
    assert row is not None
    assert row["message_count"] == 5  # system, user, one streamed answer, user, answer
    assert [m.get("internal", False) for m in row["messages"]] == [
        False,
        False,
        False,
        True,
        False,
        False,
        False,
    ]
    # a client without a system prompt, sending only its message, gets the same
    async with store.turn("sf", [user("thanks")], model="m") as turn:
        assert turn.messages[0] == SYSTEM and turn.messages[3]["role"] == "tool"
        assert turn.messages[-1] == user("thanks")


async def test_stateful_client_with_another_system_prompt(store: SessionStore) -> None:
    await answer(store, "sp", [SYSTEM, user("q1")], "a1")
    other = {"role": "system", "content": "Be verbose."}
    async with store.turn("sp", [other, user("q2")], model="m") as turn:
        assert turn.messages == [other, user("q1"), assistant("a1"), user("q2")]


async def test_stateless_resend_continues_without_header(root: Path, store: SessionStore) -> None:
    history: list[Message] = [SYSTEM, user("q1")]
    async with store.turn(None, history, model="m") as turn:
        first = turn.id
        assert turn.created
        await turn.add(assistant("Checking. ", [call("call_int1")]), visible=assistant("Checking. "))
        await turn.add(result("call_int1", "ok"), visible=None)
        await turn.add(assistant("Done."))
    for n in range(2, 6):
        # what a client echoes: the streamed text as one message, internal tool_calls it accumulated,
        # content as text parts, other key order, null fields
        history += [
            {
                "tool_calls": [call("call_int1")] if n == 2 else None,
                "content": [{"type": "text", "text": "Checking. Done."}] if n == 2 else f"a{n - 1}",
                "role": "assistant",
                "refusal": None,
            },
            user(f"q{n}"),
        ]
        async with store.turn(None, history, model="m") as turn:
            assert turn.id == first and not turn.created
            assert turn.messages[3] == result("call_int1", "ok")  # internal traffic kept for the model
            assert turn.messages[-1] == user(f"q{n}")
            assert len(turn.messages) == 6 + 2 * (n - 2)
            await turn.add(assistant(f"a{n}"))
    rows, _ = await store.list()
    assert [r["id"] for r in rows] == [first]
    assert rows[0]["message_count"] == 3 + 2 * 4
    contents = [d["message"]["content"] for d in message_lines(root / f"{first}.jsonl")]
    assert contents.count("q1") == 1 and contents.count("q5") == 1 and contents.count("a4") == 1


async def test_stateless_new_conversations_get_new_sessions(store: SessionStore) -> None:
    one = await answer(store, None, [SYSTEM, user("hi")], "hello")
    two = await answer(store, None, [SYSTEM, user("hi")], "hello")  # a first message starts a new chat
    three = await answer(store, None, [SYSTEM, user("hi"), assistant("other"), user("x")], "y")
    assert len({one, two, three}) == 3


async def test_client_tool_calls_round_trip(store: SessionStore) -> None:
    client_tools_call = call("call_client", "get_weather", '{"city": "Oslo"}')
    async with store.turn(None, [user("weather?")], model="m") as turn:
        sid = turn.id
        full = assistant("Looking. ", [call("call_int"), client_tools_call])
        await turn.add(full, visible=assistant("Looking. ", [client_tools_call]))
        await turn.add(result("call_int", "internal result"), visible=None)
    # the client runs its tool and sends the result; arguments re-serialized with other spacing
    echoed = assistant("Looking. ", [call("call_client", "get_weather", '{ "city":"Oslo" }')])
    request = [user("weather?"), echoed, result("call_client", "sunny")]
    async with store.turn(None, request, model="m") as turn:
        assert turn.id == sid
        assert turn.messages == [
            user("weather?"),
            full,
            result("call_int", "internal result"),
            result("call_client", "sunny"),
        ]
        await turn.add(assistant("Sunny in Oslo."))
    row = await store.get(sid)
    assert row is not None and row["message_count"] == 4


# --- concurrency ------------------------------------------------------------------------------------


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


async def test_parallel_new_sessions_are_all_listed(root: Path) -> None:
    async with SessionStore(root) as store:
        ids = await asyncio.gather(*(answer(store, None, [user(f"question {i}")], "ok") for i in range(128)))
        assert len(set(ids)) == 128
        rows, more = await store.list(limit=1000)
        assert not more and {r["id"] for r in rows} == set(ids)
    async with SessionStore(root) as store:
        rows, _ = await store.list(limit=1000)
        assert {r["id"] for r in rows} == set(ids)


# --- the index --------------------------------------------------------------------------------------


async def make_sessions(root: Path, n: int) -> list[str]:
    async with SessionStore(root) as store:
        return [await answer(store, f"s{i:03d}", [user(f"q{i}")], f"a{i}") for i in range(n)]


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


def remove_index(root: Path) -> None:
    for path in root.glob(".index.sqlite3*"):
        path.unlink()


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


async def test_flush_and_format(root: Path, store: SessionStore) -> None:
    await answer(store, "fmt", [user("hi")], "hello")
    await store.flush()
    header, *records = lines(root / "fmt.jsonl")
    assert header["sorat_session"] == 1 and header["id"] == "fmt"
    assert [r["by"] for r in records] == ["client", "agent"]
    meta = json.loads((root / "fmt.json").read_text())
    assert meta["message_count"] == 2 and meta["fallback_title"] == "hi" and meta["title"] is None
    assert not list(root.glob(".*.tmp"))


# --- a property: whatever a client does with its history, the model sees exactly that history -------

Op = tuple[str, int, bool]  # (new | regenerate | edit, which user message to edit, use an internal tool)


def client_ops() -> st.SearchStrategy[list[Op]]:
    op = st.tuples(st.sampled_from(["new", "new", "regenerate", "edit"]), st.integers(0, 20), st.booleans())
    return st.lists(op, min_size=1, max_size=12)


def without_internal(messages: list[Message]) -> list[Message]:
    """The client's view of what the model got: internal calls and results dropped."""
    out = []
    for message in messages:
        if message["role"] == "tool" and message["tool_call_id"].startswith("int_"):
            continue
        if message["role"] == "assistant" and message.get("tool_calls"):
            continue
        out.append(message)
    return out


async def play(root: Path, ops: list[Op]) -> None:
    history: list[Message] = [SYSTEM]
    async with SessionStore(root) as store:
        for n, (kind, which, tool) in enumerate(ops):
            users = [i for i, m in enumerate(history) if m["role"] == "user"]
            if kind == "regenerate" and users:
                history = history[: users[-1] + 1]
            elif (
                kind == "edit" and len(users) > 1
            ):  # an edit of the first message means a new message (case 3)
                at = users[1:][which % (len(users) - 1)]
                history = [*history[:at], user(f"edited {n}")]
            else:
                history = [*history, user(f"q{n}")]
            async with store.turn("prop", history, model="m") as turn:
                assert without_internal(turn.messages) == history
                if tool:
                    await turn.add(assistant(None, [call(f"int_{n}")]), visible=None)
                    await turn.add(result(f"int_{n}", "out"), visible=None)
                await turn.add(assistant(f"a{n}"))
            history.append(assistant(f"a{n}"))
            row = await store.get("prop")
            assert row is not None and row["message_count"] == len(history)
            assert (
                without_internal([{k: v for k, v in m.items() if k != "timestamp"} for m in row["messages"]])
                == history
            )
    async with SessionStore(root) as store:  # and so it stays after a restart
        row = await store.get("prop")
        assert row is not None
        assert (
            without_internal([{k: v for k, v in m.items() if k != "timestamp"} for m in row["messages"]])
            == history
        )


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=client_ops())
def test_history_property(tmp_path: Path, ops: list[Op]) -> None:
    root = Path(tempfile.mkdtemp(dir=tmp_path)) / "sessions"
    asyncio.run(play(root, ops))


async def test_reasoning_echoed_in_think_tags_is_not_an_edit(root: Path, store: SessionStore) -> None:
    """Open WebUI and other chat apps send the streamed reasoning back inside <think> tags."""
    history = [SYSTEM, user("q1")]
    await answer(store, "t", history, "a1")
    echoed = [SYSTEM, user("q1"), assistant("<think>get_current_time {}\n</think>\na1"), user("q2")]
    async with store.turn(None, echoed, model="m") as turn:
        assert turn.id == "t" and not turn.created
        assert [m["content"] for m in turn.messages] == ["You are terse.", "q1", "a1", "q2"]


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
    sessions._rewrite(path, json.dumps({"title": "a long first title", "n": 1}).encode())
    inode, size = path.stat().st_ino, path.stat().st_size
    sessions._rewrite(path, json.dumps({"title": "short", "n": 2}).encode())
    assert path.stat().st_ino == inode and path.stat().st_size == size
    assert json.loads(path.read_bytes()) == {"title": "short", "n": 2}
    sessions._rewrite(path, json.dumps({"title": "x" * 100, "n": 3}).encode())
    assert json.loads(path.read_bytes()) == {"title": "x" * 100, "n": 3}


def test_big_metadata_is_replaced_whole(tmp_path: Path) -> None:
    """Past one page, one write could tear: a temp file and a rename instead."""
    path = tmp_path / "m.json"
    sessions._rewrite(path, json.dumps({"title": "short"}).encode(), "run1")
    big = {"title": "t" * 5000}
    sessions._rewrite(path, json.dumps(big).encode(), "run1")
    assert json.loads(path.read_bytes()) == big
    assert [p.name for p in tmp_path.iterdir()] == ["m.json"]
