"""The long-lived resources of a running daemon: provider pool, session store, tools, titles, the token
and the active model, and the watcher that applies config and token changes from disk.

It knows no HTTP: the server, the turn pipeline and the desktop all reach the daemon's state through it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sorat_daemon import config, tokens, wire
from sorat_daemon.paths import Home
from sorat_daemon.state import StateHub
from sorat_daemon.types import Message, ModelCall

if TYPE_CHECKING:
    from sorat_daemon.tools.registry import ToolContext

log = logging.getLogger("sorat.daemon")


class Runtime:
    """The long-lived resources of a running daemon, shared by every request."""

    def __init__(self, home: Home, settings: config.Settings, state: StateHub) -> None:
        from sorat_daemon.providers import ProviderPool
        from sorat_daemon.sessions import SessionStore
        from sorat_daemon.sessions.responses import ResponseStore
        from sorat_daemon.titles import Activity, TitleWorker
        from sorat_daemon.tools.manager import ToolManager

        self.home = home
        self.settings = settings
        self.agent_settings = settings.agent
        self.state = state
        self.active_model = settings.agent.model
        self.token = tokens.load_or_create(home.token)
        self.pool = ProviderPool(settings, on_status=lambda msg: state.update(provider_error=msg))
        self.store = SessionStore(home.sessions)
        self.responses = ResponseStore(home.sessions)  # what resp_… ids stand for
        secret_names = {p.api_key_env for p in settings.providers if p.api_key_env}
        self.tools = ToolManager(home, state, secret_env_names=secret_names)
        self.activity = Activity()  # answers in flight: titles give way to them
        self.titles = TitleWorker(self.store, self._generate_title, activity=self.activity)
        self.port = settings.server.port  # the bound port, once the server listens
        self._watch: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.store.open()
        await self.responses.open()
        await self.pool.start()
        await self.tools.start()
        await self.titles.start()
        self._watch = asyncio.create_task(self._watch_files())
        self.state.update(model=self.active_model, no_provider=self.pool.no_provider())

    async def aclose(self) -> None:
        if self._watch:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
        await self.titles.aclose()
        await self.tools.aclose()
        await self.pool.aclose()
        await self.responses.close()
        await self.store.close()

    def tool_context(self, session_id: str | None) -> ToolContext:
        from sorat_daemon.tools.registry import ToolContext

        return ToolContext(home=self.home, session_id=session_id)

    def set_active_model(self, model: str) -> None:
        if model != self.active_model:
            log.info("active model: %s", model)
            self.active_model = model
            self.state.update(model=model)

    def switch_model(self, model: str) -> None:
        """Makes ``model`` active and saves it in config.toml: what the tray, the web UI and `sorat model`
        do. The file watcher sees the write too; applying it here first makes the next request use it."""
        from sorat_daemon.configedit import set_active_model

        set_active_model(self.home.config, model)
        self.set_active_model(model)

    def after_answer(self, session_id: str, needs_title: bool, messages: list[Message]) -> None:
        """A title for a new session, asked in the background once its first answer exists."""
        if needs_title:
            self.titles.submit(session_id, messages)

    async def _generate_title(self, messages: list[Message]) -> str:
        provider, model = self.pool.resolve(None, self.active_model)
        result = await provider.complete(ModelCall(model=model, messages=messages))
        return wire.text_of(result.message.get("content"))

    async def _watch_files(self) -> None:
        """Apply a new token or a new active model from disk: the CLI, the tray and hand edits alike."""
        import watchfiles

        names = {self.home.config.name, self.home.token.name}

        def wanted(change: Any, path: str) -> bool:
            return Path(path).name in names

        async for _ in watchfiles.awatch(
            self.home.root, watch_filter=wanted, debounce=100, step=50, recursive=False
        ):
            token = tokens.read(self.home.token)
            if token and token != self.token:
                log.info("bearer token changed on disk; the old one no longer works")
                self.token = token
            model = config.read_active_model(self.home.config)
            if model:
                self.set_active_model(model)
