"""Session store benchmarks: appending to a long session against a new one, and listing many sessions.

    python bench/bench_sessions.py [--messages 10000] [--sessions 10000] [--json]

Targets (issue 3): an append to a 10 000-message session costs at most 1.5x one to a new session, and a
page of the listing of 10 000 sessions takes at most 100 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sorat_daemon.sessions import SessionStore  # noqa: E402
from sorat_daemon.types import Message  # noqa: E402


def round_messages(i: int) -> list[tuple[Message, Message | None]]:
    """One internal tool round as the agent stores it: the call, then its result, both unseen."""
    call = {
        "id": f"call_{i}",
        "type": "function",
        "function": {"name": "run_command", "arguments": '{"command":"ls"}'},
    }
    return [
        ({"role": "assistant", "content": None, "tool_calls": [call]}, None),
        ({"role": "tool", "tool_call_id": f"call_{i}", "content": "a.txt\nb.txt\n" * 20}, None),
    ]


async def median_us(fn: Callable[[], Awaitable[Any]], runs: int) -> float:
    samples = []
    for _ in range(runs):
        start = time.perf_counter_ns()
        await fn()
        samples.append(time.perf_counter_ns() - start)
    return statistics.median(samples) / 1000


async def bench_append(root: Path, messages: int, appends: int) -> dict[str, Any]:
    async with SessionStore(root) as store:
        history: list[Message] = []
        for i in range(messages // 2):
            history += [
                {"role": "user", "content": f"question {i} " * 10},
                {"role": "assistant", "content": f"answer {i} " * 30},
            ]
        async with store.turn("long", history, model="m"):
            pass
        await store.flush()
        # Both turns open at once, appends interleaved, so that noise hits both alike.
        long_samples, new_samples = [], []
        async with store.turn(
            "long", [*history, {"role": "user", "content": "next"}], model="m"
        ) as long_turn:
            async with store.turn("new", [{"role": "user", "content": "next"}], model="m") as new_turn:
                for i in range(appends // 2):
                    for message, visible in round_messages(i):
                        for turn, samples in ((long_turn, long_samples), (new_turn, new_samples)):
                            start = time.perf_counter_ns()
                            await turn.add(message, visible=visible)
                            samples.append(time.perf_counter_ns() - start)
        long_us = statistics.median(long_samples) / 1000
        new_us = statistics.median(new_samples) / 1000

        # A whole turn (enter, one answer, exit with its metadata write), for scale.
        async def turn_on(session_id: str, request: list[Message]) -> None:
            async with store.turn(session_id, request, model="m") as turn:
                await turn.add({"role": "assistant", "content": "ok"})

        turn_long = await median_us(lambda: turn_on("long", [{"role": "user", "content": "more"}]), 20)
        turn_new = await median_us(
            lambda: turn_on(f"fresh{time.perf_counter_ns()}", [{"role": "user", "content": "hi"}]), 20
        )
        return {
            "messages": messages,
            "append_long_us": round(long_us, 1),
            "append_new_us": round(new_us, 1),
            "append_ratio": round(long_us / new_us, 2),
            "turn_long_ms": round(turn_long / 1000, 2),
            "turn_new_ms": round(turn_new / 1000, 2),
        }


async def bench_list(root: Path, sessions: int) -> dict[str, Any]:
    async with SessionStore(root) as store:
        start = time.perf_counter()
        batch = 64

        async def one(i: int) -> None:
            async with store.turn(
                f"s{i:06d}", [{"role": "user", "content": f"question number {i}"}], model="m"
            ) as turn:
                await turn.add({"role": "assistant", "content": f"answer {i}"})

        for first in range(0, sessions, batch):
            await asyncio.gather(*(one(i) for i in range(first, min(first + batch, sessions))))
        created_s = time.perf_counter() - start
        rows, _ = await store.list(limit=1000)
        middle = rows[-1]["id"]
        first_page = await median_us(lambda: store.list(limit=100), 50)
        deep_page = await median_us(lambda: store.list(limit=100, after=middle), 50)
        big_page = await median_us(lambda: store.list(limit=1000), 20)
    for path in root.glob(".index.sqlite3*"):
        path.unlink()
    async with SessionStore(root) as store:
        start = time.perf_counter()
        await store.ready()
        rebuild_s = time.perf_counter() - start
        rows, _ = await store.list(limit=1000)
        assert len(rows) == min(sessions, 1000)
    return {
        "sessions": sessions,
        "create_all_s": round(created_s, 2),
        "list_page_100_ms": round(first_page / 1000, 3),
        "list_page_100_after_ms": round(deep_page / 1000, 3),
        "list_page_1000_ms": round(big_page / 1000, 3),
        "index_rebuild_s": round(rebuild_s, 2),
    }


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--appends", type=int, default=2000)
    parser.add_argument("--sessions", type=int, default=10_000)
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument(
        "--dir", type=Path, help="work here instead of a temporary directory (on the disk to measure)"
    )
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="sorat-bench-", dir=args.dir))
    try:
        results = {
            "append": await bench_append(work / "append", args.messages, args.appends),
            "list": await bench_list(work / "list", args.sessions),
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)
    results["targets"] = {
        "append_ratio<=1.5": results["append"]["append_ratio"] <= 1.5,
        "list_page_100_ms<=100": results["list"]["list_page_100_ms"] <= 100,
    }
    if args.json:
        print(json.dumps(results, indent=2))
        return
    for section, values in results.items():
        print(section)
        for name, value in values.items():
            print(f"  {name:<28} {value}")


if __name__ == "__main__":
    asyncio.run(main())
