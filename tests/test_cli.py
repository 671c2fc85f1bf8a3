"""The ``sorat`` command and the daemon's life: start, refuse, stop, live token and model changes."""

from __future__ import annotations

import os
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import ROOT, DaemonProc, clean_env, eventually, write_config
from tests.upstream import Upstream, text

USER = [{"role": "user", "content": "hi"}]


def sorat(
    home: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sorat_daemon", *args],
        env=env or clean_env(home),
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )


def test_version_and_help(home: Path) -> None:
    out = sorat(home, "--version")
    assert out.returncode == 0 and out.stdout.startswith("sorat ")
    helped = sorat(home, "--help")
    assert helped.returncode == 0
    for command in ("serve", "token", "model", "autostart"):
        assert command in helped.stdout


def test_token_created_private_and_stable(home: Path) -> None:
    first = sorat(home, "token").stdout.strip()
    assert len(first) >= 32 and all(c.isalnum() or c in "-_" for c in first)
    assert stat.S_IMODE((home / "token").stat().st_mode) == 0o600
    assert sorat(home, "token").stdout.strip() == first
    rotated = sorat(home, "token", "--rotate").stdout.strip()
    assert rotated != first and sorat(home, "token").stdout.strip() == rotated


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("[server]\nport = 'eighty'\n", "server.port"),
        ("[agent\n", "invalid TOML"),
        ("[agent]\ntool_events = 'x'\n", "agent.tool_events"),
    ],
)
def test_broken_config_is_one_line(home: Path, text: str, needle: str) -> None:
    home.mkdir(parents=True)
    (home / "config.toml").write_text(text)
    out = sorat(home, "serve", "--port", "0")
    assert out.returncode == 1
    assert "Traceback" not in out.stderr
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and str(home / "config.toml") in lines[0] and needle in lines[0]


def test_unknown_key_warns(home: Path, upstream: Upstream) -> None:
    write_config(home, upstream.base_url, agent="modle = 'typo'")
    d = DaemonProc(home).start()
    try:
        assert "unknown key agent.modle" in d.stderr()
    finally:
        d.stop()


def test_first_start_writes_templates_and_second_instance_refused(home: Path, upstream: Upstream) -> None:
    d = DaemonProc(home).start()
    try:
        assert (home / "config.toml").read_text().startswith("# sorat configuration")
        assert stat.S_IMODE((home / "config.toml").stat().st_mode) == 0o600  # like the token: an api_key
        assert (home / "tools.toml").exists()
        out = sorat(home, "serve", "--port", "0")
        assert out.returncode == 1 and "already runs" in out.stderr and d.url in out.stderr
        assert "Traceback" not in out.stderr
    finally:
        assert d.stop() == 0


def test_port_taken_is_one_line(home: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        out = sorat(home, "serve", "--port", str(port))
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert f"port {port}" in out.stderr and "--port" in out.stderr


def test_rotated_token_applies_live(home: Path, upstream: Upstream) -> None:
    write_config(home, upstream.base_url)
    d = DaemonProc(home).start()
    try:
        old = d.token
        new = sorat(home, "token", "--rotate").stdout.strip()

        def status(tok: str) -> int:
            return httpx.get(d.url + "/v1/models", headers={"Authorization": f"Bearer {tok}"}).status_code

        assert eventually(lambda: status(new) == 200, 2.5)
        assert status(old) == 401
    finally:
        d.stop()


def test_no_provider_gives_503_that_says_how(home: Path) -> None:
    write_config(home, None)
    d = DaemonProc(home, env=clean_env(home)).start()
    try:
        r = httpx.post(d.url + "/v1/chat/completions", json={"messages": USER}, headers=d.headers())
        assert r.status_code == 503
        err = r.json()["error"]
        assert (
            err["type"] == "api_error"
            and "[[providers]]" in err["message"]
            and "OPENAI_API_KEY" in err["message"]
        )
        assert httpx.get(d.url + "/health").status_code == 200
    finally:
        d.stop()


def test_openai_env_fallback_and_connection_refused(home: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    write_config(home, None)
    env = clean_env(home, OPENAI_API_KEY="sk-env-secret", OPENAI_BASE_URL=f"http://127.0.0.1:{dead}/v1")
    d = DaemonProc(home, env=env).start()
    try:
        r = httpx.post(
            d.url + "/v1/chat/completions", json={"messages": USER}, headers=d.headers(), timeout=30
        )
        assert r.status_code == 502 and r.json()["error"]["type"] == "api_error"
        assert "sk-env-secret" not in r.text
        assert "sk-env-secret" not in (home / "logs" / "sorat.log").read_text()
    finally:
        d.stop()


def test_silent_provider_times_out(home: Path, upstream: Upstream) -> None:
    write_config(home, upstream.base_url, agent="provider_read_timeout_s = 1")
    d = DaemonProc(home).start()
    try:
        upstream.script(text("x", hang=True))
        r = httpx.post(
            d.url + "/v1/chat/completions", json={"messages": USER}, headers=d.headers(), timeout=30
        )
        assert r.status_code == 504 and r.json()["error"]["type"] == "api_error"
        upstream.script(text("a b c d", chunks=4, stall_after=2))
        r = httpx.post(
            d.url + "/v1/chat/completions",
            json={"messages": USER, "stream": True},
            headers=d.headers(),
            timeout=30,
        )
        assert r.status_code == 200 and '"error"' in r.text and r.text.endswith("data: [DONE]\n\n")
    finally:
        d.stop()


def test_model_command_lists_switches_and_the_daemon_follows(home: Path, upstream: Upstream) -> None:
    write_config(home, upstream.base_url)
    (home / "config.toml").write_text("# my notes\n" + (home / "config.toml").read_text())
    listed = sorat(home, "model")
    assert listed.returncode == 0
    assert "* gpt-4o " in listed.stdout and "  gpt-4o-mini " in listed.stdout
    d = DaemonProc(home).start()
    try:
        out = sorat(home, "model", "gpt-4o-mini")
        assert out.returncode == 0
        assert "# my notes" in (home / "config.toml").read_text()

        def first_model() -> str:
            return str(httpx.get(d.url + "/v1/models", headers=d.headers()).json()["data"][0]["id"])

        assert eventually(lambda: first_model() == "gpt-4o-mini", 2.5)
        r = httpx.post(
            d.url + "/v1/chat/completions",
            json={"model": "sorat-agent", "messages": USER},
            headers=d.headers(),
        )
        assert r.json()["model"] == "gpt-4o-mini"
        bad = sorat(home, "model", "no-such-model")
        assert bad.returncode == 1 and "no-such-model" in bad.stderr
    finally:
        d.stop()


def test_sigterm_stops_gracefully_and_saves(home: Path, upstream: Upstream) -> None:
    write_config(home, upstream.base_url)
    d = DaemonProc(home).start()
    upstream.script(text("slow answer in pieces", chunks=5, chunk_delay=0.5))
    with (
        httpx.Client(timeout=30) as c,
        c.stream(
            "POST",
            d.url + "/v1/chat/completions",
            json={"messages": USER, "stream": True},
            headers=d.headers(),
        ) as r,
    ):
        sid = r.headers["x-session-id"]
        t0 = time.monotonic()
        assert d.proc is not None
        os.kill(d.proc.pid, signal.SIGTERM)
        body = "".join(r.iter_text())
    assert d.proc.wait(20) == 0
    assert time.monotonic() - t0 < 15
    assert body.endswith("data: [DONE]\n\n")
    d2 = DaemonProc(home).start()
    try:
        session = httpx.get(f"{d2.url}/v1/sessions/{sid}", headers=d2.headers()).json()
        assert session["messages"][0]["content"] == "hi"
    finally:
        d2.stop()
