"""providers.pool: which provider and model a request gets, discovery, the probe of a local Ollama, status."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sorat_daemon import errors
from sorat_daemon.config import AgentSettings, ProviderSettings, Settings
from sorat_daemon.providers import ProviderPool
from sorat_daemon.types import ModelCall
from tests.provider_helpers import CALL, KEY, USER, closed_port, collect, silent_server, summary
from tests.upstream import Upstream, error, stream_error

pytest_plugins = ["tests.provider_fixtures"]  # _server, up, client, env


@pytest.fixture(scope="module")
def _server2() -> Iterator[Upstream]:
    with Upstream(models=["llama3", "qwen3"]) as server:
        yield server


@pytest.fixture
def up2(_server2: Upstream) -> Upstream:
    _server2.reset()
    _server2.models = ["llama3", "qwen3"]
    return _server2


# --- the pool ---------------------------------------------------------------------------------------


def settings(*providers: ProviderSettings, model: str = "gpt-4o", read_timeout: float = 5.0) -> Settings:
    agent = AgentSettings(model=model, provider_read_timeout_s=read_timeout)
    return Settings(agent=agent, providers=providers, file=Path("/home/u/.sorat/config.toml"))


def pool(s: Settings, statuses: list[str | None] | None = None) -> ProviderPool:
    on_status = statuses.append if statuses is not None else None
    return ProviderPool(s, on_status=on_status, backoff_base=0.01, backoff_cap=0.02)


async def test_pool_resolve_rules(up: Upstream, up2: Upstream) -> None:
    s = settings(
        ProviderSettings("one", up.base_url, api_key=KEY, models=("gpt-4o", "gpt-4o-mini")),
        ProviderSettings("two", up2.base_url, models=("llama3", "gpt-4o")),
    )
    p = pool(s)
    try:
        assert p.models() == [("gpt-4o", "one"), ("gpt-4o-mini", "one"), ("llama3", "two")]
        for requested in ("sorat-agent", "default", None, "", "no-such-model"):
            prov, model = p.resolve(requested, "gpt-4o")
            assert (prov.name, model) == ("one", "gpt-4o")
        assert [
            (x.name, m) for x, m in [p.resolve("llama3", "gpt-4o"), p.resolve("gpt-4o-mini", "llama3")]
        ] == [
            ("two", "llama3"),
            ("one", "gpt-4o-mini"),
        ]
        assert [(x.name, m) for x, m in [p.resolve(None, "llama3"), p.resolve(None, "unknown")]] == [
            ("two", "llama3"),
            ("one", "unknown"),
        ]
        assert p.default_owner() == "one" and p.no_provider() is None
        prov, model = p.resolve("llama3", "gpt-4o")
        await prov.complete(ModelCall(model, [USER]))
        assert up2.requests[0]["model"] == "llama3" and up.requests == []
    finally:
        await p.aclose()


async def test_pool_discovers_models_in_the_background(up: Upstream, up2: Upstream) -> None:
    s = settings(
        ProviderSettings("one", up.base_url), ProviderSettings("two", up2.base_url, models=("fixed",))
    )
    p = pool(s)
    try:
        assert p.models() == [("fixed", "two")]
        await p.start()
        await p.ready()
        assert p.models() == [("gpt-4o", "one"), ("gpt-4o-mini", "one"), ("fixed", "two")]
        assert up.models_requests == 1 and up2.models_requests == 0
        up.models = ["gpt-5"]
        await p.refresh_models()
        assert p.models() == [("gpt-5", "one"), ("fixed", "two")]
        assert p.resolve("gpt-5", "fixed")[0].name == "one"
    finally:
        await p.aclose()


async def test_pool_start_never_blocks() -> None:
    with silent_server() as url:
        p = pool(settings(ProviderSettings("slow", url), read_timeout=30))
        start = time.monotonic()
        await p.start()
        assert time.monotonic() - start < 0.5
        assert p.resolve(None, "gpt-4o")[0].name == "slow"  # usable while its models are unknown
        await p.aclose()


async def test_no_provider_at_all() -> None:
    p = pool(settings())
    try:
        message = p.no_provider()
        assert message and "/home/u/.sorat/config.toml" in message and "OPENAI_API_KEY" in message
        with pytest.raises(errors.NoProvider) as info:
            p.resolve(None, "gpt-4o")
        assert info.value.status == 503 and info.value.message == message
        assert p.models() == [] and p.default_owner() == "sorat"
    finally:
        await p.aclose()


async def test_probe_of_absent_ollama() -> None:
    statuses: list[str | None] = []
    url = f"http://127.0.0.1:{closed_port()}/v1"
    p = pool(settings(ProviderSettings("ollama", url, probe=True)), statuses)
    try:
        with pytest.raises(errors.NoProvider):  # before the probe answered, a call finds out by itself
            await p.resolve(None, "gpt-4o")[0].complete(CALL)
        await p.start()
        await p.ready()
        assert p.no_provider() and statuses and statuses[-1] == p.no_provider()
        with pytest.raises(errors.NoProvider, match="OPENAI_API_KEY"):
            p.resolve(None, "gpt-4o")
        assert p.models() == []
    finally:
        await p.aclose()


async def test_probe_of_running_ollama(up2: Upstream) -> None:
    statuses: list[str | None] = []
    p = pool(settings(ProviderSettings("ollama", up2.base_url, probe=True), model="qwen3"), statuses)
    try:
        await p.start()
        await p.ready()
        assert p.no_provider() is None and statuses == []
        assert p.models() == [("llama3", "ollama"), ("qwen3", "ollama")]
        prov, model = p.resolve(None, "qwen3")
        assert summary(await collect(prov, ModelCall(model, [USER])))[0] == "ok"
    finally:
        await p.aclose()


async def test_pool_reports_status(up: Upstream, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    statuses: list[str | None] = []
    p = pool(settings(ProviderSettings("one", up.base_url, api_key=KEY, models=("gpt-4o",))), statuses)
    try:
        prov, _ = p.resolve(None, "gpt-4o")
        up.script(*[error(500, "meltdown")] * 3)
        with pytest.raises(errors.ProviderError):
            await prov.complete(CALL)
        assert statuses[-1] and "meltdown" in statuses[-1]
        await prov.complete(CALL)
        assert statuses[-1] is None
        up.script(error(400, "your fault"))
        with pytest.raises(errors.ProviderRejected):
            await collect(prov)
        assert statuses[-1] is None  # a rejected request is not a broken provider
        up.script(stream_error("mid-stream trouble"))
        with pytest.raises(errors.ProviderError):
            await collect(prov)
        assert statuses[-1] and "mid-stream trouble" in statuses[-1]
        await collect(prov)
        assert statuses[-1] is None
        up.api_key = "not-what-sorat-sends"
        with pytest.raises(errors.ProviderError):
            await prov.complete(CALL)
    finally:
        await p.aclose()
    assert KEY not in caplog.text and "Bearer" not in caplog.text
