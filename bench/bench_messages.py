"""``/v1/messages`` in the benchmark: beside ``/v1/chat/completions`` (first-token latency and streamed
requests per second at concurrency 32, the two protocols in alternating slices of the same run, so the
machine's drift and the session store's growth weigh on both alike), and a Claude-Code-shaped conversation:
what sorat adds per turn as the history grows.

The first request is shaped like Claude Code 2.1's (about 76 kB: three system blocks, the first its billing
line; 25 tools whose schemas carry ``$schema`` and ``additionalProperties``; a first user message with a
long ``<system-reminder>``; an inline ``role: "system"`` message), streamed, with
``X-Claude-Code-Session-Id``. Each turn the client echoes the answer verbatim and adds the next message:
a ``tool_result`` (2 kB) after a ``tool_use``, else a new instruction; ``cache_control`` moves to the newest
block, as Claude Code does.

Per turn: the time of the request through sorat, and of the very chat request sorat sent the upstream
replayed to the upstream directly (the same scripted replies); the difference is what sorat adds (HTTP in
and out, parsing, the session, translating both ways). Medians over ``runs`` conversations.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import random
import statistics
import time
import uuid
from pathlib import Path
from typing import Any

from tests.upstream import Reply, Upstream, text, tool_calls

TOOL_NAMES = (
    "Agent Bash Glob Grep LS Read Edit MultiEdit Write NotebookEdit WebFetch WebSearch TodoWrite TaskCreate "
    "TaskGet TaskList TaskOutput TaskStop TaskUpdate Skill CronCreate CronDelete CronList EnterWorktree "
    "ExitWorktree"
).split()
CACHE = {"type": "ephemeral"}


def _filler(rng: random.Random, chars: int) -> str:
    words = (
        "the file tool command when you must not should use run read edit path line output user agent".split()
    )
    out: list[str] = []
    size = 0
    while size < chars:
        w = rng.choice(words)
        out.append(w)
        size += len(w) + 1
    return " ".join(out)[:chars]


def first_request(seed: int = 0) -> dict[str, Any]:
    rng = random.Random(seed)
    tools = []
    for name in TOOL_NAMES:
        props = {f"p{i}": {"type": "string", "description": _filler(rng, 120)} for i in range(4)}
        tools.append(
            {
                "name": name,
                "description": _filler(rng, 1460),
                "input_schema": {
                    "$schema": "http://json-schema.org/draft-07/schema#",
                    "type": "object",
                    "properties": props,
                    "required": ["p0"],
                    "additionalProperties": False,
                },
            }
        )
    return {
        "model": "claude-opus-4-8",
        "max_tokens": 64000,
        "stream": True,
        "thinking": {"type": "adaptive"},
        "metadata": {"user_id": json.dumps({"device_id": "0" * 64, "session_id": str(uuid.uuid4())})},
        "system": [
            {
                "type": "text",
                "text": "x-anthropic-billing-header: cc_version=2.1.197.abc; cc_entrypoint=cli;",
            },
            {"type": "text", "text": "You are a coding agent.", "cache_control": CACHE},
            {"type": "text", "text": _filler(rng, 12000), "cache_control": CACHE},
        ],
        "tools": tools,
        "messages": [
            {
                "role": "user",
                "content": [
                    {
                        "type": "text",
                        "text": "<system-reminder>\n" + _filler(rng, 3000) + "\n</system-reminder>",
                    },
                    {"type": "text", "text": "Find the bug in the parser.", "cache_control": CACHE},
                ],
            },
            {"role": "system", "content": "Available agent types: " + _filler(rng, 2500)},
        ],
    }


def replies(turns: int) -> list[Reply]:
    """Odd turns: a call to the client's Bash tool; even ones: a streamed answer of about 600 chars."""
    out = []
    for t in range(1, turns + 1):
        if t % 2:
            out.append(
                tool_calls(
                    [("Bash", {"command": f"grep -rn parse src/{t}", "description": "Search"})],
                    content="Let me look.",
                )
            )
        else:
            out.append(text(_filler(random.Random(t), 600), chunks=8))
    return out


def _events(raw: bytes) -> list[dict[str, Any]]:
    return [json.loads(line[6:]) for line in raw.decode().split("\n") if line.startswith("data: ")]


def _echo(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The assistant message as Claude Code echoes it: the blocks as streamed."""
    blocks: list[dict[str, Any]] = []
    partial: dict[int, str] = {}
    for ev in events:
        if ev["type"] == "content_block_start":
            blocks.append(dict(ev["content_block"]))
        elif ev["type"] == "content_block_delta":
            d, b = ev["delta"], blocks[ev["index"]]
            if d["type"] == "text_delta":
                b["text"] += d["text"]
            elif d["type"] == "input_json_delta":
                partial[ev["index"]] = partial.get(ev["index"], "") + d["partial_json"]
                b["input"] = json.loads(partial[ev["index"]])
    return blocks


def _move_cache_control(messages: list[dict[str, Any]]) -> None:
    for m in messages:
        if isinstance(m["content"], list):
            for b in m["content"]:
                b.pop("cache_control", None)
    messages[-1]["content"][-1]["cache_control"] = CACHE


def cpu_ns(pid: int) -> int:
    """CPU time of every thread of ``pid`` so far, in ns (schedstat: finer than the 10 ms of /proc/stat)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            pass
    return total


def _conversation(conn: Any, job: dict[str, Any]) -> None:
    import httpx

    body = first_request(job["seed"])
    headers = {"Authorization": f"Bearer {job['token']}", "X-Claude-Code-Session-Id": str(uuid.uuid4())}
    times, sizes, cpu = [], [], []
    pid = job["pid"]
    with httpx.Client(base_url=job["url"], headers=headers, timeout=60) as c:
        for t in range(1, job["turns"] + 1):
            raw = json.dumps(body).encode()
            c0 = cpu_ns(pid)
            t0 = time.perf_counter()
            r = c.post("/v1/messages?beta=true", content=raw, headers={"Content-Type": "application/json"})
            times.append(time.perf_counter() - t0)
            cpu.append((cpu_ns(pid) - c0) / 1e6)
            sizes.append(len(raw))
            assert r.status_code == 200, r.text[:300]
            blocks = _echo(_events(r.content))
            body["messages"].append({"role": "assistant", "content": blocks})
            uses = [b for b in blocks if b["type"] == "tool_use"]
            if uses:
                result = {
                    "type": "tool_result",
                    "tool_use_id": uses[0]["id"],
                    "content": _filler(random.Random(-t), 2000),
                }
                body["messages"].append({"role": "user", "content": [result]})
            else:
                body["messages"].append(
                    {"role": "user", "content": [{"type": "text", "text": f"Now step {t}."}]}
                )
            _move_cache_control(body["messages"])
    conn.send({"times": times, "sizes": sizes, "cpu_ms": cpu, "session": headers["X-Claude-Code-Session-Id"]})


def _direct(conn: Any, job: dict[str, Any]) -> None:
    import httpx

    times = []
    with httpx.Client(base_url=job["url"], timeout=60) as c:
        for raw in job["bodies"]:
            t0 = time.perf_counter()
            r = c.post("/chat/completions", content=raw, headers={"Content-Type": "application/json"})
            times.append(time.perf_counter() - t0)
            assert r.status_code == 200
    conn.send({"times": times})


def _run(target: Any, job: dict[str, Any]) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe(duplex=False)
    p = ctx.Process(target=target, args=(child, job))
    p.start()
    out = parent.recv()
    p.join()
    return out  # type: ignore[no-any-return]


def versus_chat(
    run_job: Any,
    chat: str,
    messages: str,
    token: str,
    n_lat: int,
    n_load: int,
    pid: int,
    cpu: Any,
    slices: int = 4,
) -> dict[str, dict[str, float]]:
    """First token (sequential requests) and streamed req/s at c32 through both routes, slice by slice;
    ``run_job`` and ``cpu`` are bench.py's load generator and process CPU clock."""
    firsts: dict[str, list[float]] = {"chat": [], "messages": []}
    done = {"chat": 0, "messages": 0}
    wall = {"chat": 0.0, "messages": 0.0}
    spent = {"chat": 0.0, "messages": 0.0}
    errors = {"chat": 0, "messages": 0}
    for _ in range(slices):
        for proto, url in (("chat", chat), ("messages", messages)):
            out = run_job(url=url, token=token, stream=True, count=n_lat // slices, warmup=10, protocol=proto)
            firsts[proto] += [r[0] * 1000 for r in out["results"]]
            errors[proto] += len(out["errors"])
            before = cpu(pid)
            count = n_load // slices
            out = run_job(
                url=url, token=token, stream=True, count=count, concurrency=32, warmup=32, protocol=proto
            )
            spent[proto] += cpu(pid) - before
            done[proto] += len(out["results"])
            wall[proto] += out["wall"]
            errors[proto] += len(out["errors"])
    result = {}
    for proto in ("chat", "messages"):
        f = sorted(firsts[proto])
        result[proto] = {
            "first_token_p50_ms": f[len(f) // 2],
            "first_token_p99_ms": f[min(len(f) - 1, round(0.99 * (len(f) - 1)))],
            "req_per_s": done[proto] / wall[proto],
            "cpu_ms_per_request": spent[proto] / (done[proto] + 32 * slices) * 1000,
            "errors": errors[proto],
        }
    return result


def conversation(
    up: Upstream, url: str, token: str, pid: int, turns: int = 100, runs: int = 3
) -> dict[str, Any]:
    """Per turn, the median over ``runs`` of (time through sorat − the same upstream call direct), and of
    sorat's own CPU time for the turn (a figure a busy machine disturbs much less)."""
    added: list[list[float]] = [[] for _ in range(turns)]
    cpu: list[list[float]] = [[] for _ in range(turns)]
    sizes: list[int] = []
    for run in range(runs):
        script = replies(turns)
        before = len(up.requests)
        up.script(*script)
        through = _run(_conversation, {"url": url, "token": token, "turns": turns, "seed": run, "pid": pid})
        sent = up.requests[before:]
        assert len(sent) == turns, f"{len(sent)} upstream calls for {turns} turns"
        up.script(*script)
        bodies = [json.dumps(b).encode() for b in sent]
        direct = _run(_direct, {"url": up.base_url, "bodies": bodies})
        for t in range(turns):
            added[t].append(through["times"][t] - direct["times"][t])
            cpu[t].append(through["cpu_ms"][t])
        sizes = through["sizes"]
    per_turn = [statistics.median(a) * 1000 for a in added]
    cpu_turn = [statistics.median(c) for c in cpu]
    first, last = statistics.median(per_turn[:10]), statistics.median(per_turn[-10:])
    cpu_first, cpu_last = statistics.median(cpu_turn[1:11]), statistics.median(cpu_turn[-10:])
    return {
        "turns": turns,
        "runs": runs,
        "first_request_kb": sizes[0] / 1000,
        "last_request_kb": sizes[-1] / 1000,
        "added_ms_turns_1_10": first,
        "added_ms_turns_91_100": last,
        "added_growth": last / first if first > 0 else float("nan"),
        "cpu_ms_turns_2_11": cpu_first,
        "cpu_ms_turns_91_100": cpu_last,
        "cpu_growth": cpu_last / cpu_first if cpu_first > 0 else float("nan"),
        "body_growth": sizes[-1] / sizes[0],
        "added_ms_per_turn": per_turn,
        "cpu_ms_per_turn": cpu_turn,
    }
