"""The web UI's benchmark: its pages and search at 100 000 sessions, the index's size, and what the UI
costs a daemon that never opens it.

    python bench/bench_ui.py [--sessions 100000] [--home DIR] [--base ROOT] [--json]

Targets (issue 15): with 100 000 sessions in the store, the sessions page and a search each answer in
at most 50 ms at the server (the access log's time: routing, the index, the template); start-up stays
at most 1 s; the index with its search table stays under 2 KB a session on disk; idle RSS and start-up
are unchanged until the UI is first opened (``--base``: a checkout without the UI, compared on an
empty home).

The sessions are made through ``SessionStore`` (so their files, metadata, index rows and search text are
what the daemon makes), with words drawn from a Zipf-like vocabulary: a common word is in nearly every
session, a rare one in a few. ``--home`` keeps them for the next run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import free_port, rss_mb  # noqa: E402  (bench/bench.py: the same daemon measures)

SYLLABLES = ["ka", "lo", "mi", "ne", "ru", "sa", "to", "vi", "ze", "po", "da", "fe", "gu", "hi", "jo", "qu"]
VOCABULARY = 8000
RUNS = 30


def words(n: int) -> list[str]:
    rng = random.Random(15)
    out: list[str] = []
    seen: set[str] = set()
    while len(out) < n:
        w = "".join(rng.choice(SYLLABLES) for _ in range(rng.randint(2, 4)))
        if w not in seen:
            seen.add(w)
            out.append(w)
    return out


VOCAB = words(VOCABULARY)
WEIGHTS = [1 / (rank + 1) for rank in range(VOCABULARY)]


def sentence(rng: random.Random, n: int) -> str:
    return " ".join(rng.choices(VOCAB, WEIGHTS, k=n)).capitalize() + "."


async def generate(sessions_dir: Path, n: int) -> float:
    """``n`` sessions: a question and an answer, a third with an internal tool round, a third with a
    second turn. Returns the seconds it took."""
    from sorat_daemon.sessions import SessionStore

    rng = random.Random(7)
    start = time.perf_counter()
    async with SessionStore(sessions_dir) as store:

        async def one(i: int) -> None:
            question = sentence(rng, rng.randint(6, 18))
            async with store.turn(None, [{"role": "user", "content": question}], model="gpt-4o") as turn:
                if i % 3 == 0:
                    call = {"id": f"c{i}", "type": "function",
                            "function": {"name": "web_search", "arguments": '{"query": "x"}'}}  # fmt: skip
                    await turn.add({"role": "assistant", "content": None, "tool_calls": [call]}, visible=None)
                    found = {"role": "tool", "tool_call_id": f"c{i}", "content": "r" * 400}
                    await turn.add(found, visible=None)
                answer = " ".join(sentence(rng, rng.randint(8, 20)) for _ in range(rng.randint(2, 5)))
                await turn.add({"role": "assistant", "content": answer})
                sid = turn.id
            if i % 3 == 1:
                history = [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
                follow = {"role": "user", "content": sentence(rng, rng.randint(4, 10))}
                async with store.turn(sid, [*history, follow], model="gpt-4o") as turn:
                    await turn.add({"role": "assistant", "content": sentence(rng, rng.randint(10, 30))})
            if i % 2 == 0:
                await store.set_title(sid, " ".join(rng.choices(VOCAB, WEIGHTS, k=4)).title())

        batch = 64
        for first in range(0, n, batch):
            await asyncio.gather(*(one(i) for i in range(first, min(first + batch, n))))
            if first % 10_000 < batch:
                print(f"  {first + batch} sessions", file=sys.stderr)
    return time.perf_counter() - start


class Daemon:
    """``sorat serve`` of the checkout at ``root`` on ``home``."""

    def __init__(self, home: Path, root: Path = ROOT) -> None:
        self.home = home
        self.root = root
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""
        self.token = ""

    def start(self) -> float:
        """The seconds from launch to a served /health."""
        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "SORAT_"))}
        env.pop("DISPLAY", None)
        env["SORAT_HOME"] = str(self.home)
        env["PYTHONPATH"] = str(self.root)
        log = open(self.home.with_name(self.home.name + "-stderr.log"), "ab")  # noqa: SIM115
        t0 = time.perf_counter()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "sorat_daemon", "serve", "--port", str(port)],
            env=env, cwd=self.root, stdout=subprocess.DEVNULL, stderr=log,
        )  # fmt: skip
        log.close()
        self.url = f"http://127.0.0.1:{port}"
        while True:
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if self.proc.poll() is not None:
                raise RuntimeError(f"sorat exited {self.proc.returncode}")
            time.sleep(0.005)
        took = time.perf_counter() - t0
        self.token = (self.home / "token").read_text().strip()
        return took

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(60)

    def rss(self) -> float:
        assert self.proc is not None
        return rss_mb(self.proc.pid)


def write_config(home: Path) -> None:
    home.mkdir(parents=True, exist_ok=True)
    # a provider that is never called: the pages need none, and nothing probes the network
    (home / "config.toml").write_text(
        '[agent]\nmodel = "gpt-4o"\n\n[[providers]]\nname = "none"\nbase_url = "http://127.0.0.1:9/v1"\n'
        'api_key = "sk-bench"\nmodels = ["gpt-4o"]\n'
    )


def server_ms(home: Path, method: str, path: str) -> list[float]:
    """The access log's times of ``method path`` (query strings are not logged: one path per query)."""
    pattern = re.compile(rf" {method} {re.escape(path)} 200 ([\d.]+)ms")
    text = (home / "logs" / "sorat.log").read_text(errors="replace")
    return [float(m.group(1)) for m in pattern.finditer(text)]


def measure_pages(d: Daemon, queries: dict[str, str], runs: int) -> dict[str, Any]:
    link = httpx.post(d.url + "/v1/ui/login-link", headers={"Authorization": f"Bearer {d.token}"}).json()
    out: dict[str, Any] = {}
    with httpx.Client(base_url=d.url, follow_redirects=False, timeout=60) as c:
        assert c.get(link["url"].removeprefix(d.url)).status_code == 303
        first = time.perf_counter()
        assert c.get("/ui/sessions").status_code == 200
        out["first_page_ms"] = round((time.perf_counter() - first) * 1000, 1)  # the UI's modules load
        out["rss_after_first_page_mb"] = round(d.rss(), 1)
        cases = {"sessions page": ("/ui/sessions", {})}
        cases |= {f"search {name}": ("/ui/sessions", {"q": q}) for name, q in queries.items()}
        page = c.get("/ui/sessions").text
        older = re.search(r'after=([\w.-]+)"', page)
        if older:
            cases["sessions page 2"] = ("/ui/sessions", {"after": older.group(1)})
        for name, (path, params) in cases.items():
            before = len(server_ms(d.home, "GET", path))
            client = []
            for _ in range(runs):
                t0 = time.perf_counter()
                resp = c.get(path, params=params)
                client.append((time.perf_counter() - t0) * 1000)
                assert resp.status_code == 200, (name, resp.status_code)
            time.sleep(0.3)  # the log line of the last request
            server = server_ms(d.home, "GET", path)[before:]
            results = resp.text.count('<td class="title">')
            out[name] = {
                "server_p50_ms": round(statistics.median(server), 2),
                "server_max_ms": round(max(server), 2),
                "client_p50_ms": round(statistics.median(client), 2),
                "rows": results,
            }
    return out


def refill(home: Path, word: str) -> float | None:
    """Seconds until a search file made anew (deleted here) answers as before: its background refill."""
    d = Daemon(home)
    d.start()
    try:
        link = httpx.post(d.url + "/v1/ui/login-link", headers={"Authorization": f"Bearer {d.token}"})
        with httpx.Client(base_url=d.url, timeout=60) as c:
            c.get(link.json()["url"].removeprefix(d.url))
            want = c.get("/ui/sessions", params={"q": word}).text.count('<td class="title">')
    finally:
        d.stop()
    for path in (home / "sessions").glob(".search.sqlite3*"):
        path.unlink()
    d = Daemon(home)
    t0 = time.perf_counter()
    d.start()
    try:
        with httpx.Client(base_url=d.url, timeout=60) as c:
            link = httpx.post(d.url + "/v1/ui/login-link", headers={"Authorization": f"Bearer {d.token}"})
            c.get(link.json()["url"].removeprefix(d.url))
            while time.perf_counter() - t0 < 600:
                if c.get("/ui/sessions", params={"q": word}).text.count('<td class="title">') == want:
                    return round(time.perf_counter() - t0, 1)
                time.sleep(0.5)
    finally:
        d.stop()
    return None


def startup(home: Path, root: Path, times: int = 5) -> dict[str, float]:
    took, rss = [], []
    for _ in range(times):
        d = Daemon(home, root)
        try:
            took.append(d.start())
            time.sleep(1.0)  # background start-up work (discovery, the index's check) settles
            rss.append(d.rss())
        finally:
            d.stop()
    return {"startup_s": round(statistics.median(took), 3), "idle_rss_mb": round(statistics.median(rss), 1)}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sessions", type=int, default=100_000)
    parser.add_argument("--home", type=Path, help="keep the generated home here (reused when present)")
    parser.add_argument("--base", type=Path, help="a checkout without the web UI, for the before/after")
    parser.add_argument("--runs", type=int, default=RUNS)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="sorat-bench-ui-"))
    home = args.home or work / "home"
    results: dict[str, Any] = {"sessions": args.sessions}
    try:
        sessions_dir = home / "sessions"
        if not (sessions_dir / ".index.sqlite3").exists():
            write_config(home)
            print(f"making {args.sessions} sessions in {sessions_dir}", file=sys.stderr)
            results["generate_s"] = round(asyncio.run(generate(sessions_dir, args.sessions)), 1)
        index = sum(p.stat().st_size for p in sessions_dir.glob(".index.sqlite3*"))
        searching = sum(p.stat().st_size for p in sessions_dir.glob(".search.sqlite3*"))
        files = sum(1 for _ in sessions_dir.glob("*.jsonl"))
        results["index_bytes_per_session"] = round((index + searching) / files)
        results["of_which_search_bytes_per_session"] = round(searching / files)
        results["jsonl_bytes_per_session"] = round(
            sum(p.stat().st_size for p in sessions_dir.glob("*.jsonl")) / files
        )

        results["startup_100k"] = startup(home, ROOT)
        d = Daemon(home)
        d.start()
        try:
            time.sleep(1.0)
            results["idle_rss_100k_mb"] = round(d.rss(), 1)
            queries = {  # by rank: the most common word is in nearly every session
                "rare word": VOCAB[VOCABULARY - 10],
                "middling word": VOCAB[300],
                "frequent word": VOCAB[20],
                "common word": VOCAB[0],
                "two words": f"{VOCAB[5]} {VOCAB[120]}",
                "three common words": f"{VOCAB[0]} {VOCAB[1]} {VOCAB[2]}",
                "no match": "zzzqqq",
            }
            results["pages"] = measure_pages(d, queries, args.runs)
            results["rss_after_pages_mb"] = round(d.rss(), 1)
        finally:
            d.stop()
        results["search_refill_s"] = refill(home, VOCAB[VOCABULARY - 10])

        empty = work / "empty"
        write_config(empty)
        results["empty_home"] = {"this": startup(empty, ROOT)}
        if args.base:
            base_home = work / "empty-base"
            write_config(base_home)
            results["empty_home"]["base"] = startup(base_home, args.base.resolve())
    finally:
        shutil.rmtree(work, ignore_errors=True)  # a --home stays

    pages = results["pages"]
    slowest = max(v["server_p50_ms"] for k, v in pages.items() if isinstance(v, dict))
    results["targets"] = {
        "pages_and_search_server_p50<=50ms": slowest <= 50,
        "startup_100k<=1s": results["startup_100k"]["startup_s"] <= 1.0,
        "index<2KB/session": results["index_bytes_per_session"] < 2048,
    }
    if args.json:
        print(json.dumps(results, indent=2))
        return
    for key, value in results.items():
        if isinstance(value, dict):
            print(key)
            for name, v in value.items():
                print(f"  {name:<24} {v}")
        else:
            print(f"{key:<26} {value}")


if __name__ == "__main__":
    main()
