"""Helpers of the web UI's tests: signing in, seeding sessions through the API, and the browser."""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import httpx
import pytest

if TYPE_CHECKING:
    from tests.conftest import DaemonProc
    from tests.upstream import Reply, Upstream

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def login_link(d: DaemonProc) -> str:
    resp = httpx.post(d.url + "/v1/ui/login-link", headers=d.headers(), timeout=10)
    resp.raise_for_status()
    return str(resp.json()["url"])


def cookie_name(d: DaemonProc) -> str:
    return f"sorat_ui_{d.url.rsplit(':', 1)[1]}"


@contextlib.contextmanager
def signed_in(d: DaemonProc) -> Iterator[httpx.Client]:
    """An HTTP client holding a browser session, as a browser that followed the link would."""
    with httpx.Client(base_url=d.url, timeout=30, follow_redirects=False) as client:
        resp = client.get(login_link(d).removeprefix(d.url))
        assert resp.status_code == 303, resp.text
        assert cookie_name(d) in client.cookies
        yield client


def seed(d: DaemonProc, up: Upstream, message: str, *replies: Reply, session: str | None = None) -> str:
    """One turn through the API with the upstream's scripted ``replies``; the session's id."""
    up.script(*replies)
    headers = d.headers(**({"X-Session-ID": session} if session else {}))
    resp = httpx.post(
        d.url + "/v1/chat/completions",
        headers=headers,
        json={"model": "gpt-4o", "messages": [{"role": "user", "content": message}]},
        timeout=30,
    )
    assert resp.status_code == 200, resp.text
    return resp.headers["x-session-id"]


def session(d: DaemonProc, session_id: str) -> dict[str, Any]:
    resp = httpx.get(f"{d.url}/v1/sessions/{session_id}", headers=d.headers(), timeout=10)
    resp.raise_for_status()
    return dict(resp.json())


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Debian's Chromium under Playwright (Playwright cannot fetch its own browser here)."""
    if shutil.which(CHROMIUM) is None:
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is in the [test] extra")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()
