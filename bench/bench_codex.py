"""A Codex-shaped conversation through /v1/responses, for ``bench/bench.py``: what sorat adds per request
as the history Codex resends grows to ~1 MB.

Codex sends, on every request, ``store: false`` and no session header, its ~17 kB developer prompt, its
tools (functions, a namespace, a custom grammar tool, hosted web search) and the whole history, echoing
sorat's own output items verbatim. Here each user prompt takes two requests: the model calls Codex's
``exec_command`` (a ``function_call`` returned to the client), then answers once its ~9 kB output comes
back; 200 requests make ~1 MB of history.

What sorat adds to request *i*: its wall time (request sent → ``response.completed`` read) minus the
upstream's own time for the chat body sorat sent it, replayed directly (both include the upstream
parsing that body); and the CPU time sorat's threads spent on it (Linux ``schedstat``, nanoseconds),
which a busy machine disturbs far less than wall times. Medians over windows of 10 requests. The
client runs in its own process.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from typing import Any

REQUESTS = 200
WINDOW = 10
CHECKPOINTS = (50, 100, 150, 200)

PROMPT = [
    {"type": "message", "role": "developer",
     "content": [{"type": "input_text", "text": "You are a coding agent running in the Codex CLI. " * 340}]},
    {"type": "message", "role": "developer",
     "content": [{"type": "input_text", "text": "<skills_instructions>none</skills_instructions>"}]},
    {"type": "message", "role": "user",
     "content": [{"type": "input_text", "text": "<environment_context><cwd>/w</cwd></environment_context>"}]},
]  # fmt: skip
TOOLS = [
    {"type": "function", "name": "exec_command", "description": "Runs a command in a PTY. " * 20,
     "strict": False, "parameters": {"type": "object", "properties": {
         "cmd": {"type": "string"}, "workdir": {"type": "string"}, "yield_time_ms": {"type": "number"}},
         "required": ["cmd"]}},
    {"type": "function", "name": "write_stdin", "description": "Writes to a session. " * 10,
     "parameters": {"type": "object", "properties": {"chars": {"type": "string"}}}},
    {"type": "namespace", "name": "multi_agent_v1", "description": "Sub-agents",
     "tools": [{"type": "function", "name": "spawn_agent", "parameters": {"type": "object"}},
               {"type": "function", "name": "close_agent", "parameters": {"type": "object"}}]},
    {"type": "custom", "name": "apply_patch", "description": "Edit files",
     "format": {"type": "grammar", "syntax": "lark", "definition": "start: begin_patch hunk+\n" * 30}},
    {"type": "web_search", "external_web_access": False},
]  # fmt: skip
OUTPUT = "def handler(request):\n    return process(request.body)  # a line of a file Codex read\n" * 105


def body(items: list[Any]) -> bytes:
    return json.dumps(
        {
            "model": "sorat-agent",
            "stream": True,
            "store": False,
            "input": items,
            "tools": TOOLS,
            "tool_choice": "auto",
            "parallel_tool_calls": True,
            "reasoning": {"summary": "auto"},
            "include": ["reasoning.encrypted_content"],
            "prompt_cache_key": "bench-thread",
        }
    ).encode()


def _done_items(data: bytes) -> list[dict[str, Any]]:
    """What Codex keeps of a stream: the items of its output_item.done events."""
    out = []
    for block in data.split(b"\n\n"):
        if block.startswith(b"event: response.output_item.done\n"):
            out.append(json.loads(block.split(b"\ndata: ", 1)[1])["item"])
    if b"event: response.completed\n" not in data:
        raise RuntimeError(f"no response.completed: {data[-300:]!r}")
    return out


def cpu_ns(pid: int) -> int:
    """CPU time of every thread of ``pid`` so far, in nanoseconds (0 where schedstat is missing)."""
    total = 0
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/schedstat") as f:
                total += int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            pass  # a thread that ended meanwhile
    return total


CHAT_TOOLS = [
    {"type": "function", "function": {k: t[k] for k in ("name", "description", "parameters")}}
    for t in TOOLS
    if t["type"] == "function"
]


def chat_body(messages: list[Any]) -> bytes:
    """The same conversation as a Chat Completions client would send it (the comparison row)."""
    return json.dumps(
        {
            "model": "sorat-agent",
            "stream": True,
            "messages": messages,
            "tools": CHAT_TOOLS,
            "tool_choice": "auto",
        }
    ).encode()


def _chat_answer(data: bytes) -> dict[str, Any]:
    """A streamed chat answer put together: content and tool calls."""
    content, calls = [], []
    for block in data.split(b"\n\n"):
        if not block.startswith(b"data: {"):
            continue
        chunk = json.loads(block[6:])
        for choice in chunk.get("choices") or ():
            delta = choice.get("delta") or {}
            content.append(delta.get("content") or "")
            for c in delta.get("tool_calls") or ():
                if c.get("id"):
                    calls.append({"id": c["id"], "type": "function", "function": dict(c["function"])})
                elif calls:
                    calls[-1]["function"]["arguments"] += c["function"].get("arguments") or ""
    message: dict[str, Any] = {"role": "assistant", "content": "".join(content) or None}
    if calls:
        message["tool_calls"] = calls
    return message


async def conversation(job: dict[str, Any]) -> dict[str, Any]:
    """The worker: ``REQUESTS`` Codex requests in order (``protocol: chat``: the same conversation as a
    chat client sends it), each timed, and sorat's CPU time for each."""
    import aiohttp

    headers = {"Authorization": f"Bearer {job['token']}", "Content-Type": "application/json"}
    chat = job.get("protocol") == "chat"
    items: list[Any] = list(PROMPT)
    system = "\n\n".join(i["content"][0]["text"] for i in PROMPT if i["role"] == "developer")
    messages: list[Any] = [{"role": "system", "content": system}]
    messages += [{"role": "user", "content": i["content"][0]["text"]} for i in PROMPT if i["role"] == "user"]
    times, sizes, cpu = [], [], []
    pid = job["pid"]
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as session:
        for i in range(job.get("requests", REQUESTS)):
            if i % 2 == 0:
                text = f"prompt {i // 2}: look at file {i}"
                items.append(
                    {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}
                )
                messages.append({"role": "user", "content": text})
            data = chat_body(messages) if chat else body(items)
            c0, t0 = cpu_ns(pid), time.perf_counter()
            async with session.post(job["url"], data=data, headers=headers) as resp:
                raw = await resp.read()
                if resp.status != 200:
                    raise RuntimeError(f"HTTP {resp.status}: {raw[:300]!r}")
            times.append(time.perf_counter() - t0)
            cpu.append(cpu_ns(pid) - c0)
            sizes.append(len(data))
            if chat:
                answer = _chat_answer(raw)
                messages.append(answer)
                for call in answer.get("tool_calls") or ():
                    messages.append({"role": "tool", "tool_call_id": call["id"], "content": OUTPUT})
                continue
            for item in _done_items(raw):
                items.append(item)
                if item["type"] == "function_call":  # Codex runs it and sends the output next
                    items.append(
                        {"type": "function_call_output", "call_id": item["call_id"], "output": OUTPUT}
                    )
    return {"times": times, "sizes": sizes, "cpu": cpu}


async def replay(job: dict[str, Any]) -> dict[str, Any]:
    """The chat bodies sorat sent, straight to the upstream: its own time for each."""
    import aiohttp

    times = []
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as session:
        for data in job["bodies"]:
            t0 = time.perf_counter()
            async with session.post(job["url"], data=data, headers={"Content-Type": "application/json"}) as r:
                await r.read()
            times.append(time.perf_counter() - t0)
    return {"times": times}


def reply(i: int) -> Any:
    """The upstream's answer to request ``i``: a call of Codex's shell tool, then a text answer."""
    from tests.upstream import text, tool_calls

    if i % 2 == 0:
        return tool_calls([("exec_command", {"cmd": f"cat src/file{i}.py"})])
    return text(f"File {i} handles requests by passing their bodies on. " * 4, chunks=8)


def added_per_request(up: Any, url: str, token: str, pid: int, run_job: Any) -> dict[str, Any]:
    """Runs the conversation against sorat at ``url`` (``pid``) and the replays; the report's figures.
    ``run_job(**job)`` runs a job in a worker process and returns its result."""
    up.script(*(reply(i) for i in range(REQUESTS)))  # the same conversation through chat completions
    chat_url = url.replace("/v1/responses", "/v1/chat/completions")
    chat = run_job(kind="codex", url=chat_url, token=token, pid=pid, protocol="chat")
    first = len(up.requests)
    up.script(*(reply(i) for i in range(REQUESTS)))
    out = run_job(kind="codex", url=url, token=token, pid=pid)
    sent = [json.dumps(r).encode() for r in up.requests[first:]]
    if len(sent) != REQUESTS:
        raise RuntimeError(f"sorat made {len(sent)} upstream calls for {REQUESTS} requests")
    windows: dict[str, Any] = {}
    for end in CHECKPOINTS:
        picked = range(end - WINDOW, end)
        up.script(*(reply(i) for i in picked))  # the same replies, in the same order
        direct = run_job(
            kind="replay", url=up.base_url + "/chat/completions", bodies=[sent[i] for i in picked]
        )
        added = [(out["times"][i] - direct["times"][k]) * 1000 for k, i in enumerate(picked)]
        windows[str(end)] = {
            "added_ms": statistics.median(added),
            "sorat_cpu_ms": statistics.median(out["cpu"][i] / 1e6 for i in picked),
            "chat_cpu_ms": statistics.median(chat["cpu"][i] / 1e6 for i in picked),
            "sorat_ms": statistics.median(out["times"][i] * 1000 for i in picked),
            "upstream_ms": statistics.median(d * 1000 for d in direct["times"]),
            "body_kb": statistics.median(out["sizes"][i] for i in picked) / 1024,
        }
    return {"windows": windows}
