"""sessions/format.py: session ids and the lines of a session's files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sorat_daemon.sessions import SessionStore, valid_session_id
from tests.sessions_support import (
    BAD_IDS,
    answer,
    lines,
    user,
)


@pytest.mark.parametrize(
    "value", ["a", "A1", "chat-2024.01_x", "sess_abc", "x" * 128, "console", "com10", "a.b"]
)
def test_valid_ids(value: str) -> None:
    assert valid_session_id(value)


@pytest.mark.parametrize("value", BAD_IDS)
def test_invalid_ids(value: str) -> None:
    assert not valid_session_id(value)


async def test_flush_and_format(root: Path, store: SessionStore) -> None:
    await answer(store, "fmt", [user("hi")], "hello")
    await store.flush()
    header, *records = lines(root / "fmt.jsonl")
    assert header["sorat_session"] == 1 and header["id"] == "fmt"
    assert [r["by"] for r in records] == ["client", "agent"]
    meta = json.loads((root / "fmt.json").read_text())
    assert meta["message_count"] == 2 and meta["fallback_title"] == "hi" and meta["title"] is None
    assert not list(root.glob(".*.tmp"))
