"""Every configured provider and the choice of provider and model per request: ``ProviderPool``.

It holds one ``Provider`` per ``[[providers]]`` block (all on one ``transport.Http``), their models
(configured at once, discovered in the background), which guessed local Ollama answers, and the status the
tray shows (``ReportingProvider`` tells the pool how each call went).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator, Callable
from typing import Any

from sorat_daemon import errors
from sorat_daemon.config import Settings
from sorat_daemon.providers.client import Provider
from sorat_daemon.providers.transport import Http
from sorat_daemon.types import Delta, ModelCall, ModelResult

log = logging.getLogger("sorat.providers")

AGENT_MODELS = ("sorat-agent", "default")


class ReportingProvider(Provider):
    """A Provider that tells its pool how each call went (the tray shows the last failure)."""

    def __init__(
        self, *args: Any, report: Callable[[Provider, errors.SoratError | None], None], **kw: Any
    ) -> None:
        super().__init__(*args, **kw)
        self._report = report

    async def complete(self, call: ModelCall) -> ModelResult:
        try:
            result = await super().complete(call)
        except errors.ProviderRejected:
            raise
        except (errors.ProviderError, errors.NoProvider) as e:
            self._report(self, e)
            raise
        self._report(self, None)
        return result

    async def stream(self, call: ModelCall) -> AsyncGenerator[Delta, None]:
        inner = super().stream(call)
        try:
            async for delta in inner:
                yield delta
        except errors.ProviderRejected:
            raise
        except (errors.ProviderError, errors.NoProvider) as e:
            self._report(self, e)
            raise
        finally:
            await inner.aclose()
        self._report(self, None)


class ProviderPool:
    """Every configured provider, their models (configured at once, discovered in the background), and
    the choice of provider and model for each request."""

    def __init__(
        self,
        settings: Settings,
        *,
        on_status: Callable[[str | None], None] | None = None,
        attempts: int = 3,
        backoff_base: float = 0.5,
        backoff_cap: float = 8.0,
        retry_after_cap: float = 30.0,
        connect_timeout: float = 10.0,
        finish_grace: float = 5.0,
    ) -> None:
        self.settings = settings
        self._on_status = on_status
        self._http = Http()
        where = str(settings.file) if settings.file else "config.toml"
        self._no_provider_message = (
            f"No LLM provider is configured. Add a [[providers]] block (name, base_url, api_key) to {where}, "
            "or set OPENAI_API_KEY (and OPENAI_BASE_URL for another OpenAI-compatible API); a local Ollama "
            "at http://127.0.0.1:11434/v1 is used when it runs."
        )
        self.providers = [
            ReportingProvider(
                p,
                self._http,
                report=self._reported,
                read_timeout=settings.agent.provider_read_timeout_s,
                connect_timeout=min(connect_timeout, 2.0) if p.probe else connect_timeout,
                attempts=attempts,
                backoff_base=backoff_base,
                backoff_cap=backoff_cap,
                retry_after_cap=retry_after_cap,
                finish_grace=finish_grace,
                no_provider_message=self._no_provider_message,
            )
            for p in settings.providers
        ]
        self._models: dict[str, list[str]] = {p.name: list(p.settings.models) for p in self.providers}
        self._down: dict[str, float] = {}  # probe providers found not answering → when (monotonic)
        self._discovered_at: dict[str, float] = {}
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Start discovering models (and probing a guessed Ollama) in the background; returns at once."""
        self._spawn_discovery()

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._http.aclose()

    async def ready(self) -> None:
        """Wait for the discovery in progress, if any (tests, `sorat model`)."""
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(self._task)

    async def refresh_models(self) -> None:
        await asyncio.gather(*(self._discover(p) for p in self.providers))

    def models(self) -> list[tuple[str, str]]:
        """(model id, provider name) known so far, each model once (the first provider offering it)."""
        seen: dict[str, str] = {}
        for p in self.providers:
            if p.name in self._down:
                continue
            for m in self._models.get(p.name, ()):
                seen.setdefault(m, p.name)
        return list(seen.items())

    def default_owner(self) -> str:
        """The provider that serves the active model when no list names it."""
        usable = self._usable()
        return usable[0].name if usable else "sorat"

    def no_provider(self) -> str | None:
        """Why no provider can be used, or None."""
        return None if self._usable() else self._no_provider_message

    def resolve(self, requested: str | None, active: str) -> tuple[Provider, str]:
        """The provider and model for a request: a model some provider offers is used as asked; anything
        else ("sorat-agent", "default", None, an unknown name) means the active model."""
        usable = self._usable()
        if not usable:
            self._spawn_discovery(stale_after=1.0)  # a local Ollama started since may answer next time
            raise errors.NoProvider(self._no_provider_message)
        model = active
        if requested and requested not in AGENT_MODELS:
            for p in usable:
                if requested in self._models.get(p.name, ()):
                    return p, requested
        for p in usable:
            if model in self._models.get(p.name, ()):
                return p, model
        return usable[0], model

    # --- internals ---

    def _usable(self) -> list[Provider]:
        return [p for p in self.providers if p.name not in self._down]

    def _spawn_discovery(self, stale_after: float | None = None) -> None:
        if self._task is not None and not self._task.done():
            return
        if stale_after is not None:
            now = time.monotonic()
            if all(now - self._discovered_at.get(p.name, 0.0) < stale_after for p in self.providers):
                return
        with contextlib.suppress(RuntimeError):  # no running loop: nothing to do in the background
            self._task = asyncio.get_running_loop().create_task(self.refresh_models())

    async def _discover(self, p: Provider) -> None:
        try:
            models = await p.list_models()
        except (errors.ProviderError, errors.NoProvider) as e:
            self._discovered_at[p.name] = time.monotonic()
            if p.probe:
                log.info("no local Ollama at %s", p.base_url)
                self._mark_down(p)
            else:
                log.warning("%s: cannot list models: %s", p.name, e.message)
            return
        except Exception:  # a bug must not kill discovery of the other providers
            log.exception("%s: model discovery failed", p.name)
            return
        self._discovered_at[p.name] = time.monotonic()
        if models or not self._models.get(p.name):
            self._models[p.name] = models
        if p.probe:
            log.info("using the local Ollama at %s (%d models)", p.base_url, len(models))
            self._mark_up(p)

    def _mark_down(self, p: Provider) -> None:
        self._down[p.name] = time.monotonic()
        if self._on_status is not None and not self._usable():
            self._on_status(self._no_provider_message)

    def _mark_up(self, p: Provider) -> None:
        was_down = self._down.pop(p.name, None) is not None
        if was_down and self._on_status is not None:
            self._on_status(None)

    def _reported(self, p: Provider, failure: errors.SoratError | None) -> None:
        if failure is None:
            if p.probe and p.name in self._down:
                self._mark_up(p)
                self._spawn_discovery()
            if self._on_status is not None:
                self._on_status(None)
            return
        if isinstance(failure, errors.NoProvider):
            self._mark_down(p)
            return
        if self._on_status is not None:
            self._on_status(failure.message)
