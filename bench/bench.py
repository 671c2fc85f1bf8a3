"""sorat's benchmark: a scripted upstream, ``sorat serve`` (and LiteLLM's proxy when given), side by side.

    python bench/bench.py [--quick] [--json results.json] [--litellm /path/to/venv/bin/litellm] [--responses]

What it reports (medians and ratios, since machines are noisy):
- start-up: launch to a served ``/health`` (median of 3); idle RSS headless (and with the tray when Xvfb
  is installed);
- added latency against calling the upstream directly: p50/p99 of whole answers and of the first
  streamed token, sequential requests;
- streamed requests per second at concurrency 32, every request a new session whose title is generated,
  and the ratio to the upstream alone (and to LiteLLM);
- relay rate: chunks per second through one 5 000-chunk stream, and the ratio to the upstream alone;
- agent overhead per tool round (beyond model and tool time);
- the same latency and c32 rows through ``/v1/messages`` (Anthropic Messages), and a Claude-Code-shaped
  100-turn conversation: what sorat adds per turn as the history grows (``bench/bench_messages.py``);
- a long stateless history: a 200-turn conversation resent whole on every turn (a 17 kB system prompt,
  ~800 kB by the end, no session header, as Codex and Claude Code send it): sorat's own cost per turn
  (its time minus the upstream's for the same body) near turn 1 and near turn 200;
- the session store figures of ``bench/bench_sessions.py``;
- the same latency and load through ``/v1/responses`` beside chat's, and a Codex-shaped conversation of
  200 requests growing to ~1 MB (``bench/bench_codex.py``): what sorat adds per request, wall and CPU.
  ``--responses`` runs only these, chat and responses in turns (two rounds, averaged).

The upstream runs in this process (its own thread and loop); every load generator runs in its own
process, so neither steals the other's interpreter. The load generator's ceiling is the "upstream alone"
column: sorat's numbers can't exceed it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import bench_codex  # noqa: E402
import bench_messages  # noqa: E402

from tests.upstream import Upstream, text, tool_calls  # noqa: E402

ANSWER = "The quick brown fox jumps over the lazy dog and keeps on running far away."
FIRST_CONTENT = {  # the first text, per protocol (content_block_start's "text":"" is not one)
    "chat": b'"content":"',
    "responses": b'"delta":"',
    "messages": b'"text":"',
}


# -- load generators (each in its own process) -------------------------------------------------------


def _first_token_at(buf: bytes, marker: bytes) -> bool:
    """A chunk with non-empty content (chat) or a text delta (responses) has arrived."""
    i = buf.find(marker)
    while i != -1:
        j = i + len(marker)
        if j < len(buf) and buf[j : j + 1] != b'"':
            return True
        i = buf.find(marker, j)
    return False


async def _one(
    session: Any, url: str, headers: dict[str, str], body: bytes, stream: bool, marker: bytes
) -> tuple[float, float, int]:
    """(time to first content, total time, chunks) of one request."""
    t0 = time.perf_counter()
    first = 0.0
    chunks = 0
    async with session.post(url, data=body, headers=headers) as resp:
        if resp.status != 200:
            raise RuntimeError(f"HTTP {resp.status}: {(await resp.read())[:300]!r}")
        if not stream:
            await resp.read()
            t = time.perf_counter() - t0
            return t, t, 1
        tail = b""
        async for data in resp.content.iter_any():
            if not first:
                if _first_token_at(tail + data, marker):
                    first = time.perf_counter() - t0
                tail = data[-32:]
            chunks += data.count(b"data: ")
    return first, time.perf_counter() - t0, chunks


def _worker(conn: Any, job: dict[str, Any]) -> None:
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    kind = job.get("kind")
    if kind == "long_history":
        result = asyncio.run(_long_history(job))
    elif kind == "codex":
        result = asyncio.run(bench_codex.conversation(job))
    elif kind == "replay":
        result = asyncio.run(bench_codex.replay(job))
    else:
        result = asyncio.run(_job(job))
    conn.send(result)
    conn.close()


SYSTEM_PROMPT = ("You are a careful coding agent. Follow the repository's conventions. " * 250)[:17_000]


async def _long_history(job: dict[str, Any]) -> dict[str, Any]:
    """One conversation of ``turns`` turns, resent whole on every turn without a session header: each
    turn's body goes to sorat and, alternately first, to the upstream alone; (sorat, upstream, sorat's
    CPU) seconds per turn."""
    import aiohttp

    sorat = {"Content-Type": "application/json", "Authorization": f"Bearer {job['token']}"}
    plain = {"Content-Type": "application/json"}
    history: list[dict[str, Any]] = [{"role": "system", "content": SYSTEM_PROMPT}]
    times: list[tuple[float, float, float]] = []
    pid = job["pid"]
    filler = "Please look at this part of the code as well and tell me what you think of it. " * 25
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as session:

        async def timed(url: str, headers: dict[str, str], body: bytes) -> tuple[float, Any]:
            t0 = time.perf_counter()
            async with session.post(url, data=body, headers=headers) as resp:
                data = await resp.read()
                if resp.status != 200:
                    raise RuntimeError(f"HTTP {resp.status}: {data[:300]!r}")
            return time.perf_counter() - t0, data

        for turn in range(job["turns"]):
            history.append({"role": "user", "content": f"{job['tag']} turn {turn}: {filler}"})
            body = json.dumps({"model": "gpt-4o", "messages": history}).encode()
            if turn % 2:
                direct, _ = await timed(job["direct"], plain, body)
            cpu = cpu_seconds(pid)
            took, answer = await timed(job["url"], sorat, body)
            cpu = cpu_seconds(pid) - cpu
            if not turn % 2:
                direct, _ = await timed(job["direct"], plain, body)
            times.append((took, direct, cpu))
            history.append(
                {"role": "assistant", "content": json.loads(answer)["choices"][0]["message"]["content"]}
            )
    return {"times": times, "bytes": len(body)}


async def _job(job: dict[str, Any]) -> dict[str, Any]:
    import aiohttp

    url, token, stream = job["url"], job["token"], job["stream"]
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    body_obj: dict[str, Any] = {"model": job.get("model", "gpt-4o"), "stream": stream, **job.get("extra", {})}
    protocol = job.get("protocol", "chat")
    field = "input" if protocol == "responses" else "messages"  # the same user message either way
    marker = FIRST_CONTENT[protocol]
    if protocol == "messages":
        body_obj["max_tokens"] = 1024
    conc = job.get("concurrency", 1)
    connector = aiohttp.TCPConnector(limit=conc, force_close=False)
    timeout = aiohttp.ClientTimeout(total=600)
    results: list[tuple[float, float, int]] = []
    errors: list[str] = []
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        counter = iter(range(job["count"]))

        async def loop() -> None:
            for i in counter:
                body_obj[field] = [{"role": "user", "content": f"request {i} {job.get('tag', '')}"}]
                try:
                    data = json.dumps(body_obj).encode()
                    results.append(await _one(session, url, headers, data, stream, marker))
                except Exception as e:  # counted, reported
                    errors.append(str(e)[:200])

        # a few unmeasured requests warm the connection pool and the daemon's caches
        for _ in range(min(job.get("warmup", 0), job["count"])):
            body_obj[field] = [{"role": "user", "content": "warm-up"}]
            await _one(session, url, headers, json.dumps(body_obj).encode(), stream, marker)
        t0 = time.perf_counter()
        await asyncio.gather(*(loop() for _ in range(conc)))
        wall = time.perf_counter() - t0
    return {"results": results, "errors": errors, "wall": wall}


def run_job(**job: Any) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe(duplex=False)
    p = ctx.Process(target=_worker, args=(child, job))
    p.start()
    out = parent.recv()
    p.join()
    return out  # type: ignore[no-any-return]


# -- targets -------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class Sorat:
    def __init__(
        self, upstream_url: str, env_extra: dict[str, str] | None = None, tray: bool = False
    ) -> None:
        self.home = Path(tempfile.mkdtemp(prefix="sorat-bench-"))
        # beside the home, not in it: sorat watches its home folder, and a line a request there would
        # wake its watchers for every request
        self.stderr = self.home.with_name(self.home.name + "-stderr.log")
        (self.home / "config.toml").write_text(
            f'[agent]\nmodel = "gpt-4o"\n\n[[providers]]\nname = "scripted"\nbase_url = "{upstream_url}"\n'
            'api_key = "sk-bench"\nmodels = ["gpt-4o"]\n'
        )
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "SORAT_"))}
        self.env["SORAT_HOME"] = str(self.home)
        if not tray:
            self.env.pop("DISPLAY", None)
            self.env.pop("WAYLAND_DISPLAY", None)
        self.env.update(env_extra or {})
        self.tray = tray
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""
        self.token = ""

    def start(self) -> float:
        """Start it; the seconds from launch to a served /health."""
        import httpx

        port = free_port()
        args = [] if self.tray else ["serve", "--port", str(port)]
        t0 = time.perf_counter()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "sorat_daemon", *args],
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=open(self.stderr, "ab"),  # noqa: SIM115
        )
        url = f"http://127.0.0.1:{8080 if self.tray else port}"
        while True:
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if self.proc.poll() is not None:
                raise RuntimeError(self.stderr.read_text()[-2000:])
            time.sleep(0.005)
        took = time.perf_counter() - t0
        self.url = url
        self.token = (self.home / "token").read_text().strip()
        return took

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(30)

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.home, ignore_errors=True)
        self.stderr.unlink(missing_ok=True)


class LiteLLM:
    def __init__(self, binary: str, upstream_url: str) -> None:
        self.binary = binary
        self.key = "sk-" + os.urandom(16).hex()
        self.dir = Path(tempfile.mkdtemp(prefix="litellm-bench-"))
        (self.dir / "config.yaml").write_text(
            "model_list:\n  - model_name: gpt-4o\n    litellm_params:\n      model: openai/gpt-4o\n"
            f"      api_base: {upstream_url}\n      api_key: sk-bench\n"
            f"general_settings:\n  master_key: {self.key}\n"  # it refuses to start without one
        )
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""

    def start(self) -> float:
        import httpx

        port = free_port()
        t0 = time.perf_counter()
        self.proc = subprocess.Popen(
            [
                self.binary,
                "--config",
                str(self.dir / "config.yaml"),
                "--port",
                str(port),
                "--num_workers",
                "1",
            ],
            stdout=subprocess.DEVNULL,
            stderr=open(self.dir / "stderr.log", "ab"),  # noqa: SIM115
        )
        self.url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.url + "/health/liveliness", timeout=1).status_code == 200:
                    return time.perf_counter() - t0
            except httpx.HTTPError:
                time.sleep(0.1)
        raise RuntimeError("LiteLLM did not start: " + (self.dir / "stderr.log").read_text()[-2000:])

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()


# -- measurements ----------------------------------------------------------------------------------------


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(round(q / 100 * (len(s) - 1))))]


def latency(url: str, token: str | None, n: int, protocol: str = "chat") -> dict[str, float]:
    whole = run_job(url=url, token=token, stream=False, count=n, warmup=20, protocol=protocol)
    streamed = run_job(url=url, token=token, stream=True, count=n, warmup=20, protocol=protocol)
    w = [r[1] * 1000 for r in whole["results"]]
    f = [r[0] * 1000 for r in streamed["results"]]
    return {
        "whole_p50_ms": pct(w, 50),
        "whole_p99_ms": pct(w, 99),
        "first_token_p50_ms": pct(f, 50),
        "first_token_p99_ms": pct(f, 99),
        "errors": len(whole["errors"]) + len(streamed["errors"]),
    }


def cpu_seconds(pid: int) -> float:
    """The CPU time of ``pid``'s threads: from schedstat, in nanoseconds, where the kernel has it (clock
    ticks of 10 ms blur a single request's few milliseconds), else from ``stat``."""
    ns = bench_codex.cpu_ns(pid)
    if ns:
        return ns / 1e9
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def load(
    url: str,
    token: str | None,
    n: int,
    concurrency: int = 32,
    pid: int | None = None,
    protocol: str = "chat",
    extra: dict[str, Any] | None = None,
) -> dict[str, float]:
    """Streamed requests at ``concurrency``; with ``pid``, also that process' CPU time per request, a
    figure that a busy machine disturbs much less than a rate."""
    before = cpu_seconds(pid) if pid else 0.0
    warmup = 50
    out = run_job(
        url=url,
        token=token,
        stream=True,
        count=n,
        concurrency=concurrency,
        warmup=warmup,
        tag="load",
        protocol=protocol,
        extra=extra or {},
    )
    result = {"req_per_s": len(out["results"]) / out["wall"], "errors": len(out["errors"])}
    if pid:
        result["cpu_ms_per_request"] = (cpu_seconds(pid) - before) / (n + warmup) * 1000
    return result


def relay(up: Upstream, url: str, token: str | None, chunks: int) -> dict[str, float]:
    """A ``chunks``-chunk stream, three times: the upstream's chunks per second through it."""
    up.default = text("x" * chunks, chunks=chunks)
    try:
        out = run_job(url=url, token=token, stream=True, count=3, warmup=1)
    finally:
        up.default = text(ANSWER, chunks=16)
    # the upstream's chunks over the stream's time: sorat merges what arrives in one read, so its client
    # sees fewer (larger) frames carrying the same tokens
    rates = [chunks / r[1] for r in out["results"]]
    frames = statistics.median(r[2] for r in out["results"])
    return {"chunks_per_s": statistics.median(rates), "client_frames": frames, "errors": len(out["errors"])}


def tool_round_overhead(up: Upstream, url: str, token: str, rounds: int, reps: int) -> dict[str, float]:
    """(time of a request with ``rounds`` tool rounds − time of a plain one) / rounds − the upstream's own
    time for one more call: what sorat adds per round beyond the model and the tool."""
    direct = run_job(url=up.base_url + "/chat/completions", token=None, stream=True, count=reps, warmup=5)
    upstream_call = statistics.median(r[1] for r in direct["results"])
    plain = run_job(url=url, token=token, stream=True, count=reps, warmup=5)
    base = statistics.median(r[1] for r in plain["results"])
    times = []
    for _ in range(reps):
        up.script(*[tool_calls([("get_current_time", {"timezone": "UTC"})]) for _ in range(rounds)])
        out = run_job(url=url, token=token, stream=True, count=1)
        times.append(out["results"][0][1])
    per_round = (statistics.median(times) - base) / rounds - upstream_call
    return {"per_round_ms": per_round * 1000, "upstream_call_ms": upstream_call * 1000}


def long_history(
    up: Upstream, s: Sorat, turns: int, runs: int, window: int = 5, cpu_window: int = 20
) -> dict[str, float]:
    """sorat's own cost per turn of a long conversation resent whole (``_long_history``): its time minus
    the upstream's, the median over ``runs`` conversations of the first and the last ``window`` turns;
    and its CPU time per turn, the mean over the first and the last ``cpu_window`` turns (a figure that a
    busy machine disturbs much less)."""
    assert s.proc is not None
    up.default = text("Here is what I think of it, with the details you asked for. " * 33)  # ~2 kB
    try:
        api, direct = s.url + "/v1/chat/completions", up.base_url + "/chat/completions"
        job = {"kind": "long_history", "url": api, "direct": direct, "token": s.token, "pid": s.proc.pid}
        outs = [run_job(**job, turns=turns, tag=f"run {i}") for i in range(runs)]
    finally:
        up.default = text(ANSWER, chunks=16)

    def cost(turn_slice: slice) -> float:
        return statistics.median((a - b) * 1000 for out in outs for a, b, _ in out["times"][turn_slice])

    def cpu(turn_slice: slice) -> float:
        return statistics.mean(c * 1000 for out in outs for _, _, c in out["times"][turn_slice])

    return {
        "turns": turns,
        "body_kb_at_end": outs[0]["bytes"] / 1000,
        "turn1_ms": cost(slice(0, window)),
        "last_turn_ms": cost(slice(turns - window, turns)),
        "upstream_last_turn_ms": statistics.median(
            b * 1000 for out in outs for _, b, _ in out["times"][-window:]
        ),
        "cpu_first_turns_ms": cpu(slice(0, cpu_window)),
        "cpu_last_turns_ms": cpu(slice(turns - cpu_window, turns)),
    }


def wait_titles(s: Sorat, timeout: float = 60) -> dict[str, float]:
    import httpx

    t0 = time.monotonic()
    headers = {"Authorization": f"Bearer {s.token}"}
    while True:
        total = titled = 0
        after = None
        with httpx.Client(base_url=s.url, headers=headers, timeout=30) as c:
            while True:
                params: dict[str, Any] = {"limit": 1000}
                if after:
                    params["after"] = after
                page = c.get("/v1/sessions", params=params).json()
                total += len(page["data"])
                titled += sum(1 for row in page["data"] if row["title"] == "A Scripted Title")
                if not page["has_more"]:
                    break
                after = page["last_id"]
        if titled == total or time.monotonic() - t0 > timeout:
            return {"sessions": total, "titled": titled, "seconds": time.monotonic() - t0}
        time.sleep(0.5)


def startup(upstream_url: str, times: int = 3) -> dict[str, float]:
    took, rss = [], []
    for _ in range(times):
        s = Sorat(upstream_url)
        try:
            took.append(s.start())
            time.sleep(1.0)  # let background start-up work (discovery, index check) settle
            assert s.proc is not None
            rss.append(rss_mb(s.proc.pid))
        finally:
            s.cleanup()
    return {"startup_s": statistics.median(took), "idle_rss_mb": statistics.median(rss)}


def tray_rss(upstream_url: str) -> float | None:
    xvfb = shutil.which("Xvfb")
    if not xvfb:
        return None
    display = ":97"
    x = subprocess.Popen(
        [xvfb, display, "-screen", "0", "640x480x24", "-nolisten", "tcp"], stderr=subprocess.DEVNULL
    )
    try:
        time.sleep(1.0)
        s = Sorat(upstream_url, {"DISPLAY": display}, tray=True)
        try:
            s.start()
            time.sleep(1.5)
            assert s.proc is not None
            return rss_mb(s.proc.pid)
        except Exception:
            return None
        finally:
            s.cleanup()
    finally:
        x.terminate()
        x.wait()


def session_store_figures(quick: bool) -> dict[str, Any]:
    n = "2000" if quick else "10000"
    out = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "bench_sessions.py"),
            "--messages",
            n,
            "--sessions",
            n,
            "--json",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout)  # type: ignore[no-any-return]


# -- the report --------------------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer requests (a smoke run)")
    ap.add_argument("--json", type=Path, help="also write the results here")
    ap.add_argument(
        "--litellm", default=os.environ.get("LITELLM_BIN"), help="LiteLLM's proxy binary, if installed"
    )
    ap.add_argument("--skip-store", action="store_true", help="leave out the session store figures")
    ap.add_argument(
        "--responses",
        action="store_true",
        help="only /v1/responses beside /v1/chat/completions (latency, load; alternated) and the Codex rows",
    )
    ap.add_argument(
        "--only-history", action="store_true", help="only the long-history row (its own daemon and upstream)"
    )
    args = ap.parse_args()
    n_lat = 200 if args.quick else 1000
    n_load = 1000 if args.quick else 4000
    chunks = 5000

    results: dict[str, Any] = {}
    if args.only_history:
        with Upstream(models=["gpt-4o"]) as up:
            s = Sorat(up.base_url)
            s.start()
            try:
                results["long_history"] = long_history(up, s, turns=200, runs=1 if args.quick else 3)
            finally:
                s.cleanup()
        print(history_line(results["long_history"]))
        if args.json:
            args.json.write_text(json.dumps(results, indent=2))
        return 0
    if args.responses:
        with Upstream(models=["gpt-4o"]) as up:
            up.default = text(ANSWER, chunks=16)
            results = responses_figures(up, n_lat, n_load)
        report_responses(results)
        if args.json:
            args.json.write_text(json.dumps(results, indent=2))
        return 0
    with Upstream(models=["gpt-4o"]) as up:
        up.default = text(ANSWER, chunks=16)
        direct = up.base_url + "/chat/completions"

        results["startup"] = startup(up.base_url)
        results["startup"]["tray_rss_mb"] = tray_rss(up.base_url)

        s = Sorat(up.base_url)
        s.start()
        api = s.url + "/v1/chat/completions"
        responses_api = s.url + "/v1/responses"
        try:
            results["latency"] = {
                "upstream": latency(direct, None, n_lat),
                "sorat": latency(api, s.token, n_lat),
                "sorat_responses": latency(responses_api, s.token, n_lat, protocol="responses"),
            }
            results["load_c32"] = {
                "upstream": load(direct, None, n_load),
                "sorat": load(api, s.token, n_load, pid=s.proc.pid),
            }
            wait_titles(s)  # the chat load's titles, generated before the responses load begins
            results["load_c32"]["sorat_responses"] = load(
                responses_api, s.token, n_load, pid=s.proc.pid, protocol="responses"
            )
            results["titles_after_load"] = wait_titles(s)
            results["messages_vs_chat"] = bench_messages.versus_chat(
                run_job, api, s.url + "/v1/messages", s.token, n_lat, n_load, s.proc.pid, cpu_seconds
            )
            wait_titles(s)
            results["relay"] = {
                "upstream": relay(up, direct, None, chunks),
                "sorat": relay(up, api, s.token, chunks),
            }
            results["tool_round"] = tool_round_overhead(
                up, api, s.token, rounds=5, reps=5 if args.quick else 15
            )
            assert s.proc is not None
            results["rss_after_mb"] = rss_mb(s.proc.pid)
        finally:
            s.cleanup()
        s = Sorat(up.base_url)  # a fresh daemon: the load's thousands of sessions are not this row's
        s.start()
        try:
            results["long_history"] = long_history(up, s, turns=200, runs=1 if args.quick else 3)
        finally:
            s.cleanup()
        results["codex"] = codex_figures(up)

        fresh = Sorat(up.base_url)  # the conversation's cost, not that of the thousands of sessions above
        fresh.start()
        try:
            assert fresh.proc is not None
            results["claude_code_conversation"] = bench_messages.conversation(
                up, fresh.url, fresh.token, fresh.proc.pid, turns=100, runs=3
            )
        finally:
            fresh.cleanup()

        if args.litellm:
            lite = LiteLLM(args.litellm, up.base_url)
            try:
                lite.start()
                lurl = lite.url + "/v1/chat/completions"
                results["latency"]["litellm"] = latency(lurl, lite.key, n_lat // 2)
                results["load_c32"]["litellm"] = load(lurl, lite.key, n_load // 4)
                results["relay"]["litellm"] = relay(up, lurl, lite.key, chunks)
                if lite.proc:
                    results["litellm_rss_mb"] = rss_mb(lite.proc.pid)
            finally:
                lite.stop()

    if not args.skip_store:
        results["session_store"] = session_store_figures(args.quick)
    report(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


def responses_figures(up: Upstream, n_lat: int, n_load: int, rounds: int = 2) -> dict[str, Any]:
    """Chat and responses measured in turns (``rounds`` each, averaged: a machine's drift hits both),
    then the Codex conversation; one daemon."""
    direct = up.base_url + "/chat/completions"
    s = Sorat(up.base_url)
    s.start()
    assert s.proc is not None
    urls = {"sorat": s.url + "/v1/chat/completions", "sorat_responses": s.url + "/v1/responses"}
    protocols = {"sorat": "chat", "sorat_responses": "responses"}
    lat: dict[str, list[dict[str, float]]] = {"upstream": [], "sorat": [], "sorat_responses": []}
    ld: dict[str, list[dict[str, float]]] = {"upstream": [], "sorat": [], "sorat_responses": []}
    try:
        for _ in range(rounds):
            lat["upstream"].append(latency(direct, None, n_lat))
            ld["upstream"].append(load(direct, None, n_load))
            for name, url in urls.items():
                wait_titles(s)  # each starts without the titles the one before left to generate
                lat[name].append(latency(url, s.token, n_lat, protocol=protocols[name]))
                wait_titles(s)
                ld[name].append(load(url, s.token, n_load, pid=s.proc.pid, protocol=protocols[name]))
    finally:
        s.cleanup()
    codex = codex_figures(up)

    def mean(runs: list[dict[str, float]]) -> dict[str, float]:
        return {k: statistics.fmean(r[k] for r in runs) for k in runs[0]}

    return {
        "latency": {k: mean(v) for k, v in lat.items()},
        "load_c32": {k: mean(v) for k, v in ld.items()},
        "codex": codex,
    }


def codex_figures(up: Upstream) -> dict[str, Any]:
    """The Codex-shaped conversation, on a fresh daemon (a load's thousands of sessions are not its)."""
    s = Sorat(up.base_url)
    s.start()
    assert s.proc is not None
    try:
        return bench_codex.added_per_request(up, s.url + "/v1/responses", s.token, s.proc.pid, run_job)
    finally:
        s.cleanup()


def report_responses(r: dict[str, Any]) -> None:
    lat, load_ = r["latency"], r["load_c32"]
    up = lat["upstream"]
    print(f"{'':34}{'chat':>12}{'responses':>12}{'ratio':>8}")
    rows = (
        ("first_token_p50_ms", "added first token p50 (ms)"),
        ("first_token_p99_ms", "added first token p99 (ms)"),
        ("whole_p50_ms", "added whole answer p50 (ms)"),
    )
    for key, name in rows:
        a, b = lat["sorat"][key] - up[key], lat["sorat_responses"][key] - up[key]
        print(f"{name:34}{a:12.2f}{b:12.2f}{b / a if a else float('nan'):8.2f}")
    a, b = load_["sorat"]["req_per_s"], load_["sorat_responses"]["req_per_s"]
    alone = load_["upstream"]["req_per_s"]
    print(f"{'streamed req/s at c32':34}{a:12.1f}{b:12.1f}{b / a:8.2f}   (upstream alone {alone:.0f})")
    a, b = load_["sorat"]["cpu_ms_per_request"], load_["sorat_responses"]["cpu_ms_per_request"]
    print(f"{'sorat CPU per request at c32 (ms)':34}{a:12.2f}{b:12.2f}{b / a:8.2f}")
    errors = sum(lat[k]["errors"] + load_[k]["errors"] for k in ("sorat", "sorat_responses"))
    print(f"errors: {errors:g}")
    codex = r["codex"]
    print(f"Codex-shaped conversation ({bench_codex.REQUESTS} requests, medians of {bench_codex.WINDOW}):")
    head = f"  {'request':>8}{'body kB':>10}{'upstream ms':>13}{'sorat ms':>10}{'added ms':>10}"
    print(head + f"{'sorat CPU ms':>14}{'(chat CPU ms)':>15}")
    for end, w in codex["windows"].items():
        kb, upstream_ms, sorat_ms, added = w["body_kb"], w["upstream_ms"], w["sorat_ms"], w["added_ms"]
        cpu = f"{w['sorat_cpu_ms']:14.2f}{w['chat_cpu_ms']:15.2f}"
        print(f"  {end:>8}{kb:10.0f}{upstream_ms:13.2f}{sorat_ms:10.2f}{added:10.2f}{cpu}")


def history_line(h: dict[str, Any]) -> str:
    return (
        f"long stateless history ({h['turns']} turns, {h['body_kb_at_end']:.0f} kB at the end): sorat's own "
        f"cost per turn {h['turn1_ms']:.2f} ms at turn 1, {h['last_turn_ms']:.2f} ms at turn {h['turns']} "
        f"(the upstream alone {h['upstream_last_turn_ms']:.2f} ms there); its CPU per turn "
        f"{h['cpu_first_turns_ms']:.2f} ms over the first 20 turns, "
        f"{h['cpu_last_turns_ms']:.2f} ms over the last 20"
    )


def report(r: dict[str, Any]) -> None:
    lat, load_, rel = r["latency"], r["load_c32"], r["relay"]
    up, so = lat["upstream"], lat["sorat"]
    lite = lat.get("litellm")
    rows = [
        (
            "first token p50 (ms)",
            up["first_token_p50_ms"],
            so["first_token_p50_ms"],
            lite and lite["first_token_p50_ms"],
        ),
        (
            "first token p99 (ms)",
            up["first_token_p99_ms"],
            so["first_token_p99_ms"],
            lite and lite["first_token_p99_ms"],
        ),
        ("whole answer p50 (ms)", up["whole_p50_ms"], so["whole_p50_ms"], lite and lite["whole_p50_ms"]),
        ("whole answer p99 (ms)", up["whole_p99_ms"], so["whole_p99_ms"], lite and lite["whole_p99_ms"]),
        (
            "streamed req/s at c32",
            load_["upstream"]["req_per_s"],
            load_["sorat"]["req_per_s"],
            load_.get("litellm", {}).get("req_per_s"),
        ),
        (
            "relayed chunks/s",
            rel["upstream"]["chunks_per_s"],
            rel["sorat"]["chunks_per_s"],
            rel.get("litellm", {}).get("chunks_per_s"),
        ),
    ]
    print(f"{'':28}{'upstream':>12}{'sorat':>12}{'litellm':>12}")
    for name, a, b, c in rows:
        print(f"{name:28}{a:12.2f}{b:12.2f}{(c if c is not None else float('nan')):12.2f}")
    print()
    print(
        f"added first-token latency: p50 {so['first_token_p50_ms'] - up['first_token_p50_ms']:+.2f} ms, "
        f"p99 {so['first_token_p99_ms'] - up['first_token_p99_ms']:+.2f} ms"
    )
    ratio = load_["sorat"]["req_per_s"] / load_["upstream"]["req_per_s"]
    vs_lite = load_["sorat"]["req_per_s"] / load_["litellm"]["req_per_s"] if "litellm" in load_ else None
    print(
        f"streamed req/s: {ratio:.3f}x the upstream alone"
        + (f", {vs_lite:.1f}x LiteLLM" if vs_lite else "")
        + f"; sorat's CPU per request {load_['sorat'].get('cpu_ms_per_request', float('nan')):.2f} ms"
    )
    print(f"relay: {rel['sorat']['chunks_per_s'] / rel['upstream']['chunks_per_s']:.3f}x the upstream alone")
    print(f"errors: sorat {so['errors'] + load_['sorat']['errors'] + rel['sorat']['errors']}")
    report_messages(r)
    t = r["titles_after_load"]
    print(f"titles after the load: {t['titled']}/{t['sessions']} titled, {t['seconds']:.1f} s after it ended")
    print(f"agent overhead per tool round: {r['tool_round']['per_round_ms']:.2f} ms")
    if "long_history" in r:
        print(history_line(r["long_history"]))
    st = r["startup"]
    tray = st.get("tray_rss_mb")
    print(
        f"start-up to /health: {st['startup_s'] * 1000:.0f} ms (median of 3); "
        f"idle RSS headless {st['idle_rss_mb']:.1f} MB"
        + (f", with the tray {tray:.1f} MB" if tray else ", tray: no Xvfb here")
    )
    print(
        f"RSS after the run: {r['rss_after_mb']:.1f} MB"
        + (f"; LiteLLM {r['litellm_rss_mb']:.0f} MB" if "litellm_rss_mb" in r else "")
    )
    if "session_store" in r:
        print("session store:", json.dumps(r["session_store"]))
    if "sorat_responses" in lat and "codex" in r:
        print("\n/v1/responses beside /v1/chat/completions (the same daemon, one after the other):")
        report_responses(r)


def report_messages(r: dict[str, Any]) -> None:
    """/v1/messages beside /v1/chat/completions, measured in alternating slices of the same run."""
    v = r.get("messages_vs_chat")
    if v:
        up = r["latency"]["upstream"]
        chat, msgs = v["chat"], v["messages"]
        for q in ("p50", "p99"):
            key = f"first_token_{q}_ms"
            print(
                f"/v1/messages added first-token latency {q}: {msgs[key] - up[key]:+.2f} ms "
                f"(chat {chat[key] - up[key]:+.2f} ms, alternating slices)"
            )
        ratio = msgs["req_per_s"] / chat["req_per_s"]
        print(
            f"/v1/messages streamed req/s at c32: {msgs['req_per_s']:.1f} = {ratio:.3f}x chat "
            f"({chat['req_per_s']:.1f}); CPU per request {msgs['cpu_ms_per_request']:.2f} ms "
            f"(chat {chat['cpu_ms_per_request']:.2f} ms); errors {msgs['errors']}"
        )
    c = r.get("claude_code_conversation")
    if c:
        print(
            f"Claude-Code-shaped conversation ({c['turns']} turns, {c['first_request_kb']:.0f} kB -> "
            f"{c['last_request_kb']:.0f} kB): sorat adds {c['added_ms_turns_1_10']:.2f} ms per turn at turns "
            f"1-10, {c['added_ms_turns_91_100']:.2f} ms at 91-100 (x{c['added_growth']:.2f}; the body "
            f"x{c['body_growth']:.2f}); its CPU per turn {c['cpu_ms_turns_2_11']:.2f} -> "
            f"{c['cpu_ms_turns_91_100']:.2f} ms"
        )


if __name__ == "__main__":
    raise SystemExit(main())
