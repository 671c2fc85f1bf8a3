"""The fixtures the provider tests share (``pytest_plugins = ["tests.provider_fixtures"]``): a scripted
upstream per module, reset for each test; an ``Http`` transport; no proxy settings from the outside."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from sorat_daemon.providers import Http
from tests.upstream import Upstream


@pytest.fixture(scope="module")
def _server() -> Iterator[Upstream]:
    with Upstream() as server:
        yield server


@pytest.fixture
def up(_server: Upstream) -> Upstream:
    _server.reset()
    return _server


@pytest.fixture
async def client() -> AsyncIterator[Http]:
    http = Http()
    yield http
    await http.aclose()


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No proxy settings from the outside."""
    for name in ("http_proxy", "https_proxy", "all_proxy", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
    return monkeypatch
