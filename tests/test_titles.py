from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from sorat_daemon.sessions import SessionStore
from sorat_daemon.titles import TITLE_SYSTEM_PROMPT, Activity, TitleWorker, clean_title, title_messages
from sorat_daemon.types import Message


@pytest.mark.parametrize(
    ("raw", "title"),
    [
        ("Debugging Python imports", "Debugging Python imports"),
        ('"Debugging Python imports"', "Debugging Python imports"),
        ("Title: Debugging Python imports.", "Debugging Python imports"),
        ("title - Debugging Python imports", "Debugging Python imports"),
        ('**Title:** "Debugging Python imports"', "Debugging Python imports"),
        ("# Debugging *Python* imports!", "Debugging Python imports"),
        ("`Debugging imports`", "Debugging imports"),
        ("  “Rust lifetimes explained”  \n", "Rust lifetimes explained"),
        ("«Bonjour le monde»", "Bonjour le monde"),
        ("'Quoted'!!", "Quoted"),
        (
            "<think>The user asks about X.\nMaybe Y.</think>\n\nPlanning a trip to Oslo",
            "Planning a trip to Oslo",
        ),
        ("so the title is…</think>Planning a trip", "Planning a trip"),
        ("Title:\nReal title here", "Real title here"),
        (
            "one two three four five six seven eight nine ten eleven",
            "one two three four five six seven eight",
        ),
        ("Title-case rules for headlines", "Title-case rules for headlines"),
        ("Sorting 10.5 million rows.", "Sorting 10.5 million rows"),
        ("", None),
        ("   \n  ", None),
        ('"".', None),
        ("Title:", None),
        ("<think>only thinking</think>", None),
        ("<think>never closed", None),
    ],
)
def test_clean_title(raw: str, title: str | None) -> None:
    assert clean_title(raw) == title


def test_title_messages() -> None:
    messages = title_messages("How do I sort a dict?", "Use sorted(d.items()).")
    assert messages[0] == {"role": "system", "content": TITLE_SYSTEM_PROMPT}
    assert TITLE_SYSTEM_PROMPT.startswith("Generate a title")
    assert "How do I sort a dict?" in messages[1]["content"]
    assert "Use sorted(d.items())." in messages[1]["content"]
    assert len(title_messages("x" * 100_000, "y")[1]["content"]) < 5000


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SessionStore]:
    async with SessionStore(tmp_path / "sessions") as store:
        yield store


FIRST: list[Message] = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "How do I read a file line by line in Python and strip the newlines?"},
]


async def first_turn(store: SessionStore) -> tuple[str, list[Message]]:
    async with store.turn(None, FIRST, model="m") as turn:
        answer = {"role": "assistant", "content": "Iterate over the file object."}
        await turn.add(answer)
        assert turn.needs_title
        return turn.id, [*turn.messages, answer]


async def title_of(store: SessionStore, session_id: str) -> str | None:
    row = await store.get(session_id)
    assert row is not None
    return row["title"]


async def test_worker_stores_a_clean_title(store: SessionStore) -> None:
    asked: list[list[Message]] = []

    async def generate(messages: list[Message]) -> str:
        asked.append(messages)
        return 'Title: "Reading files line by line."'

    worker = TitleWorker(store, generate)
    await worker.start()
    session_id, conversation = await first_turn(store)
    worker.submit(session_id, conversation)
    worker.submit(session_id, conversation)  # queued once
    await worker.join()
    await worker.aclose()
    assert len(asked) == 1
    assert asked[0][0]["content"].startswith("Generate a title")
    assert "read a file line by line" in asked[0][1]["content"]
    assert "Iterate over the file object." in asked[0][1]["content"]
    assert await title_of(store, session_id) == "Reading files line by line"
    async with store.turn(session_id, [{"role": "user", "content": "thanks"}], model="m") as turn:
        assert not turn.needs_title


@pytest.mark.parametrize("failure", ["raises", "empty", "hangs"])
async def test_a_failing_model_keeps_the_fallback(store: SessionStore, failure: str) -> None:
    async def generate(messages: list[Message]) -> str:
        if failure == "raises":
            raise RuntimeError("provider down")
        if failure == "hangs":
            await asyncio.Event().wait()
        return '""'

    worker = TitleWorker(store, generate, timeout=0.05)
    await worker.start()
    session_id, conversation = await first_turn(store)
    worker.submit(session_id, conversation)
    await worker.join()
    await worker.aclose()
    assert await title_of(store, session_id) == FIRST[1]["content"][:60]


async def test_submit_never_blocks_or_raises(store: SessionStore) -> None:
    async def generate(messages: list[Message]) -> str:
        return "A title"

    worker = TitleWorker(store, generate, max_queue=1)
    worker.submit("first", [{"role": "user", "content": "q"}])
    worker.submit("second", [{"role": "user", "content": "q"}])  # full: dropped
    worker.submit("third", [])  # nothing to title
    worker.submit("../bad", [{"role": "user", "content": "q"}])
    await worker.aclose()
    worker.submit("late", [{"role": "user", "content": "q"}])  # after close: ignored


async def test_aclose_cancels_pending_work(store: SessionStore) -> None:
    started = asyncio.Event()

    async def generate(messages: list[Message]) -> str:
        started.set()
        await asyncio.Event().wait()
        return "never"

    worker = TitleWorker(store, generate, concurrency=1)
    await worker.start()
    session_id, conversation = await first_turn(store)
    worker.submit(session_id, conversation)
    worker.submit("queued-behind", [{"role": "user", "content": "q"}])
    await started.wait()
    await worker.aclose()
    await worker.join()  # nothing left
    assert await title_of(store, session_id) == FIRST[1]["content"][:60]


async def test_a_title_for_a_deleted_session_is_dropped(store: SessionStore) -> None:
    release = asyncio.Event()

    async def generate(messages: list[Message]) -> str:
        await release.wait()
        return "Too late"

    worker = TitleWorker(store, generate)
    await worker.start()
    session_id, conversation = await first_turn(store)
    worker.submit(session_id, conversation)
    assert await store.delete(session_id)
    release.set()
    await worker.join()
    await worker.aclose()
    assert await store.get(session_id) is None
    assert (store.root / f"{session_id.lower()}.json").exists() is False


async def test_titles_give_way_to_answers_in_flight(store: SessionStore) -> None:
    """No title call while an answer is in flight: it waits for a quiet moment after the last one."""
    asked: list[float] = []

    async def generate(messages: list[Message]) -> str:
        asked.append(time.monotonic())
        return "A title"

    activity = Activity()
    worker = TitleWorker(store, generate, activity=activity, quiet=0.1, max_defer=30)
    await worker.start()
    session_id, conversation = await first_turn(store)
    activity.begin()  # an answer streams
    worker.submit(session_id, conversation)
    await asyncio.sleep(0.3)
    assert asked == []
    activity.end()
    ended = time.monotonic()
    await asyncio.wait_for(worker.join(), 5)
    await worker.aclose()
    assert len(asked) == 1 and asked[0] - ended >= 0.09
    assert await title_of(store, session_id) == "A title"


async def test_a_title_waits_at_most_max_defer(store: SessionStore) -> None:
    """Under endless load a title still comes: after max_defer it stops giving way."""

    async def generate(messages: list[Message]) -> str:
        return "A title"

    activity = Activity()
    activity.begin()  # never ends
    worker = TitleWorker(store, generate, activity=activity, max_defer=0.2)
    await worker.start()
    session_id, conversation = await first_turn(store)
    submitted = time.monotonic()
    worker.submit(session_id, conversation)
    await asyncio.wait_for(worker.join(), 5)
    await worker.aclose()
    assert time.monotonic() - submitted >= 0.19
    assert await title_of(store, session_id) == "A title"
