"""remember and recall_memory: facts kept one per line in memory.md.

Each fact is one ``O_APPEND`` write of a whole line followed by ``fsync``, so a crash keeps every fact
already acknowledged and can tear at most the one being written (a torn last line is closed with a
newline before the next fact). The file is plain Markdown the user may edit.
"""

from __future__ import annotations

import os
import threading
from datetime import datetime
from pathlib import Path
from typing import Any

from sorat_daemon.tools.registry import Tool, ToolContext, ToolError, tool

MAX_FACT_CHARS = 2000
MAX_RECALL_CHARS = 50_000
_lock = threading.Lock()  # one writer at a time within the daemon


def append_fact(file: Path, fact: str) -> str:
    line = " ".join(fact.split())
    if not line:
        raise ToolError("the fact is empty")
    if len(line) > MAX_FACT_CHARS:
        raise ToolError(f"the fact is too long ({len(line)} characters; at most {MAX_FACT_CHARS})")
    file.parent.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now().astimezone().strftime("%Y-%m-%d")
    data = f"- {line} ({stamp})\n".encode()
    with _lock:
        fd = os.open(file, os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_BINARY", 0), 0o600)
        try:
            end = os.lseek(fd, 0, os.SEEK_END)
            if end > 0 and _last_byte(file, end) != b"\n":
                data = b"\n" + data  # a torn or hand-edited last line
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
    return line


def _last_byte(file: Path, size: int) -> bytes:
    with open(file, "rb") as f:
        f.seek(size - 1)
        return f.read(1)


def read_facts(file: Path) -> dict[str, Any]:
    try:
        text = file.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return {"facts": [], "note": "nothing remembered yet"}
    facts = [line.removeprefix("- ").strip() for line in text.splitlines() if line.strip()]
    facts = [f for f in facts if f and not f.startswith("#")]
    result: dict[str, Any] = {"facts": facts}
    total = sum(len(f) + 1 for f in facts)
    if total > MAX_RECALL_CHARS:
        kept: list[str] = []
        size = 0
        for fact in reversed(facts):  # the newest facts matter most
            size += len(fact) + 1
            if size > MAX_RECALL_CHARS:
                break
            kept.append(fact)
        result = {"facts": kept[::-1], "truncated": True, "omitted_oldest": len(facts) - len(kept)}
    return result


def make_tools() -> list[Tool]:
    @tool(timeout_s=30)
    def remember(fact: str, *, ctx: ToolContext) -> dict[str, Any]:
        """Remember a fact for later conversations (about the user, their preferences, their work).

        Args:
            fact: one self-contained sentence
        """
        line = append_fact(ctx.home.memory, fact)
        return {"remembered": line}

    @tool(timeout_s=30)
    def recall_memory(*, ctx: ToolContext) -> dict[str, Any]:
        """Recall every fact remembered so far, oldest first."""
        return read_facts(ctx.home.memory)

    return [remember, recall_memory]
