"""What the session store's tests share: message builders, file readers, the helpers."""

from __future__ import annotations

import json
from pathlib import Path

from sorat_daemon.sessions import SessionStore
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
    """Every file's bytes but SQLite's shared-memory index of the search database's write-ahead log,
    which its readers change (read marks) whenever they read: the background search fill included."""
    return {
        str(p.relative_to(directory)): p.read_bytes()
        for p in sorted(directory.rglob("*"))
        if p.is_file() and not p.name.endswith("-shm")
    }


async def answer(store: SessionStore, session_id: str | None, messages: list[Message], text: str) -> str:
    """One request answered with plain text; returns the session id."""
    async with store.turn(session_id, messages, model="test-model") as turn:
        await turn.add(assistant(text))
        return turn.id


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


async def make_sessions(root: Path, n: int) -> list[str]:
    async with SessionStore(root) as store:
        return [await answer(store, f"s{i:03d}", [user(f"q{i}")], f"a{i}") for i in range(n)]


def remove_index(root: Path) -> None:
    for path in root.glob(".index.sqlite3*"):
        path.unlink()
