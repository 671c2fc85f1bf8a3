"""Shared fixtures: a scripted upstream on loopback and the real daemon in a subprocess."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import orjson
import pytest

if TYPE_CHECKING:
    from tests.upstream import Upstream

ROOT = Path(__file__).resolve().parent.parent
ALLOWED_ORIGIN = "http://allowed.example"
DEFAULT_EXTRA = f'[server]\nallowed_origins = ["{ALLOWED_ORIGIN}"]\nallowed_hosts = ["sorat.local"]\n'


def eventually(check: Callable[[], bool], timeout: float = 5.0, step: float = 0.05) -> bool:
    """Poll ``check`` until it holds or ``timeout`` passes; its last answer."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(step)
    return check()


def process_alive(pid: int) -> bool:
    """Whether ``pid`` runs: a zombie not yet reaped counts as gone."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


def sse(body: str) -> list[Any]:
    """The data payloads of an SSE body, as JSON (``[DONE]`` kept as the string)."""
    out: list[Any] = []
    for frame in body.split("\n\n"):
        for line in frame.splitlines():
            if line.startswith("data: "):
                data = line[6:]
                out.append(data if data == "[DONE]" else orjson.loads(data))
    return out


def sessions_holding(d: DaemonProc, marker: str) -> list[dict[str, Any]]:
    """Every session (GET /v1/sessions/{id}, messages included) with a user message containing
    ``marker``: a test's conversation, whatever its client did with the session id."""
    found = []
    with d.client() as c:
        rows = c.get("/v1/sessions", params={"limit": 1000}).json()["data"]
        for row in rows:
            session = c.get(f"/v1/sessions/{row['id']}").json()
            if any(
                m["role"] == "user" and marker in json.dumps(m.get("content")) for m in session["messages"]
            ):
                found.append(session)
    return found


def assert_one_session(d: DaemonProc, marker: str, roles: str | None = None) -> dict[str, Any]:
    """The conversation holding ``marker`` is one session that stores nothing twice (no user message,
    tool call or tool result repeated); ``roles``: its messages' roles, space-separated."""
    found = sessions_holding(d, marker)
    assert len(found) == 1, f"{len(found)} sessions hold {marker!r}: {[s['id'] for s in found]}"
    messages = found[0]["messages"]
    users = [json.dumps(m.get("content")) for m in messages if m["role"] == "user"]
    results = [m["tool_call_id"] for m in messages if m["role"] == "tool"]
    calls = [c["id"] for m in messages if m["role"] == "assistant" for c in m.get("tool_calls") or []]
    for what, items in (("user message", users), ("tool result", results), ("tool call", calls)):
        assert len(items) == len(set(items)), f"a {what} is stored twice: {messages}"
    if roles is not None:
        assert " ".join(m["role"] for m in messages) == roles, messages
    return found[0]


def user_says(content: str) -> list[dict[str, Any]]:
    """A conversation of one user message: with the ``prompt`` fixture, one only this test sends."""
    return [{"role": "user", "content": content}]


def write_config(
    home: Path, upstream_url: str | None, extra: str = "", model: str = "gpt-4o", agent: str = ""
) -> None:
    """``extra``: whole tables (e.g. [server]); ``agent``: more lines for the [agent] table."""
    home.mkdir(parents=True, exist_ok=True)
    text = f'{extra}\n[agent]\nmodel = "{model}"\n{agent}\n'
    if upstream_url:
        text += f'\n[[providers]]\nname = "scripted"\nbase_url = "{upstream_url}"\n'
        text += 'api_key = "sk-upstream-secret"\n'
    (home / "config.toml").write_text(text, encoding="utf-8")


def clean_env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "SORAT_"))}
    env.pop("DISPLAY", None)
    env.pop("WAYLAND_DISPLAY", None)
    env["SORAT_HOME"] = str(home)
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


class DaemonProc:
    """``sorat serve --port 0`` in a subprocess, with its URL and token once it serves."""

    def __init__(self, home: Path, env: dict[str, str] | None = None, args: tuple[str, ...] = ()) -> None:
        self.home = home
        self.env = env or clean_env(home)
        self.args = args
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""
        self.token = ""

    def start(self, timeout: float = 20) -> DaemonProc:
        self.home.mkdir(parents=True, exist_ok=True)
        log = open(self.home / "daemon-stderr.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "sorat_daemon", "serve", "--port", "0", *self.args],
            env=self.env,
            stdout=log,
            stderr=log,
            cwd=ROOT,
        )
        log.close()
        lock = self.home / "sorat.lock"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"daemon exited {self.proc.returncode}: {self.stderr()}")
            text = lock.read_text() if lock.exists() else ""
            if f"pid {self.proc.pid}," in text:  # not a killed daemon's stale line
                self.url = text.strip().split(", ", 1)[1]
                self.token = (self.home / "token").read_text().strip()
                return self
            time.sleep(0.02)
        raise RuntimeError(f"daemon did not start: {self.stderr()}")

    @property
    def base_url(self) -> str:
        return self.url + "/v1"

    def headers(self, **extra: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}", **extra}

    def client(self, **kw: object) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers=self.headers(), timeout=30, **kw)  # type: ignore[arg-type]

    def openai(self, **kw: object):  # type: ignore[no-untyped-def]
        import openai

        return openai.OpenAI(base_url=self.base_url, api_key=self.token, max_retries=0, **kw)  # type: ignore[arg-type]

    def async_openai(self, **kw: object):  # type: ignore[no-untyped-def]
        import openai

        return openai.AsyncOpenAI(base_url=self.base_url, api_key=self.token, max_retries=0, **kw)  # type: ignore[arg-type]

    def stderr(self) -> str:
        path = self.home / "daemon-stderr.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()


@pytest.fixture(scope="module")
def upstream() -> Iterator[Upstream]:
    from tests.upstream import Upstream

    with Upstream() as up:
        yield up


@pytest.fixture
def prompt(request: pytest.FixtureRequest) -> str:
    """A user text no other test sends (it names the test): the test's requests to the module's shared
    upstream are ``upstream.requests_for(prompt)``, whatever an earlier test's session still asks."""
    return f"hi (from {request.node.name})"  # ")": a name may begin another


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


@pytest.fixture(scope="module")
def daemon(upstream: Upstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProc]:
    """One daemon per test module, on the module's upstream; tests reset the upstream's script."""
    home = tmp_path_factory.mktemp("daemon") / "home"
    write_config(home, upstream.base_url, DEFAULT_EXTRA)
    d = DaemonProc(home).start()
    yield d
    d.stop()


@pytest.fixture(autouse=True)
def _reset_upstream(request: pytest.FixtureRequest) -> None:
    if "upstream" in request.fixturenames:
        up: Upstream = request.getfixturevalue("upstream")
        up.reset()


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A sessions directory (the session store's tests)."""
    return tmp_path / "home" / "sessions"


@pytest.fixture
async def store(root: Path) -> AsyncIterator[Any]:
    """An open SessionStore on ``root``."""
    from sorat_daemon.sessions import SessionStore

    async with SessionStore(root) as s:
        yield s
