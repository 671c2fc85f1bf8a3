"""The ToolManager: tools.toml (template, hot reload, validation) and the Toolset offered to requests.

``current()`` is the Toolset a request keeps for its whole run: built-in tools per tools.toml plus
the tools of the MCP servers up at that moment. Every change (a saved file, an MCP server coming up
or going down) builds a new immutable Toolset and swaps it in with one assignment, so a running
request never sees a half-applied change.

Reloads: watchfiles watches the home folder (not recursively) for anything named tools.toml, which
catches saves in place and saves through a temp file renamed over it. The whole file is checked
before anything applies; an invalid file keeps the last good tools, logs one line (file, line,
problem) and sets ``StateHub.tools_error`` for the tray until a good version is saved. An absent
file means the defaults.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Collection
from dataclasses import replace
from pathlib import Path

from sorat_daemon.paths import Home
from sorat_daemon.state import StateHub
from sorat_daemon.tools import clock, files, memory, shell, web
from sorat_daemon.tools.mcp import BACKOFF_MIN_S, McpServer
from sorat_daemon.tools.registry import Tool, Toolset
from sorat_daemon.tools.settings import ToolsConfigError, ToolSettings, parse, write_template

log = logging.getLogger("sorat.tools")

_DEBOUNCE_MS = 300  # watchfiles groups an editor's burst of events; the change still applies within 2 s
_RETRY_WATCH_S = 2.0


def builtin_tools(settings: ToolSettings, *, secret_env_names: Collection[str] = ()) -> list[Tool]:
    """The built-in tools these settings enable, in the order they are offered, each tagged with its
    family (what ``[agent] tools_with_client_tools`` names)."""
    families: list[tuple[str, list[Tool]]] = [
        ("clock", list(clock.TOOLS)),
        ("run_command", shell.make_tools(settings.run_command, secret_env_names=secret_env_names)),
        ("files", files.make_tools() if settings.files_enabled else []),
        ("web", web.make_tools(settings.web)),
        ("memory", memory.make_tools() if settings.memory_enabled else []),
    ]
    return [replace(t, family=family) for family, tools in families for t in tools]


class ToolManager:
    def __init__(
        self,
        home: Home,
        state: StateHub | None = None,
        *,
        secret_env_names: Collection[str] = (),
        mcp_backoff_s: float = BACKOFF_MIN_S,
    ) -> None:
        self._home = home
        self._state = state
        self._secrets = frozenset(secret_env_names)
        self._mcp_backoff_s = mcp_backoff_s
        self._settings = ToolSettings()
        self._builtin = builtin_tools(self._settings, secret_env_names=self._secrets)
        self._servers: dict[str, McpServer] = {}
        self._stopping_servers: set[asyncio.Task[None]] = set()
        self._current = Toolset(self._builtin)
        self._error: str | None = None
        self._text: str | None = None  # the file's text last applied or rejected
        self._stop = asyncio.Event()
        self._watcher: asyncio.Task[None] | None = None
        self._closed = False

    @property
    def file(self) -> Path:
        return self._home.tools

    @property
    def error(self) -> str | None:
        """Why tools.toml was rejected (file, line, problem), or None when the tools in use are its own."""
        return self._error

    @property
    def settings(self) -> ToolSettings:
        return self._settings

    def current(self) -> Toolset:
        """The tools for a new request; keep this object for the whole request."""
        return self._current

    async def start(self) -> None:
        """Write the template if there is no tools.toml, load it, start MCP servers and the watcher."""
        try:
            self._home.root.mkdir(parents=True, exist_ok=True)
            if write_template(self.file):
                log.info("wrote %s (a commented template)", self.file)
        except OSError as e:
            log.warning("cannot write %s: %s", self.file, e)
        await self.reload()
        self._watcher = asyncio.create_task(self._watch(), name="sorat-tools-watch")
        # One step of the task sets up the OS watch (watchfiles does it before its first await);
        # a change saved before that moment is caught by reading the file once more.
        await asyncio.sleep(0)
        await self.reload()

    async def reload(self) -> bool:
        """Apply tools.toml as it is now; False if it is invalid (the last good tools stay)."""
        if self._closed:
            return self._error is None
        try:
            text = self.file.read_text(encoding="utf-8")
        except FileNotFoundError:
            text = ""
        except (OSError, UnicodeDecodeError) as e:
            self._reject(ToolsConfigError(self.file, f"cannot be read: {e}"))
            return False
        if text == self._text:
            return self._error is None
        self._text = text
        try:
            settings = parse(text, self.file)
        except ToolsConfigError as e:
            self._reject(e)
            return False
        if self._error is not None:
            log.info("%s is valid again; its tools apply", self.file)
            self._error = None
            if self._state is not None:
                self._state.update(tools_error=None)
        self._apply(settings)
        return True

    def _reject(self, e: ToolsConfigError) -> None:
        message = str(e)
        if message != self._error:
            log.warning("%s (keeping the last good tools)", message)
        self._error = message
        if self._state is not None:
            self._state.update(tools_error=message)

    def _apply(self, settings: ToolSettings) -> None:
        if settings != self._settings:
            self._builtin = builtin_tools(settings, secret_env_names=self._secrets)
            log.info("%s applied: %s", self.file, ", ".join(t.name for t in self._builtin))
        wanted = {s.name: s for s in settings.mcp_servers}
        for name, server in list(self._servers.items()):
            if wanted.get(name) != server.settings:
                del self._servers[name]
                log.info("stopping MCP server %s (%s)", name, "changed" if name in wanted else "removed")
                task = asyncio.create_task(server.aclose(), name=f"sorat-mcp-stop-{name}")
                self._stopping_servers.add(task)
                task.add_done_callback(self._stopping_servers.discard)
        for name, server_settings in wanted.items():
            if name not in self._servers:
                server = McpServer(
                    server_settings,
                    on_change=self._rebuild,
                    log_dir=self._home.logs,
                    backoff_min_s=self._mcp_backoff_s,
                )
                self._servers[name] = server
                server.start()
        self._settings = settings
        self._rebuild()

    def _rebuild(self) -> None:
        if self._closed:
            return
        tools = list(self._builtin)
        names = {t.name for t in tools}
        for server in self._servers.values():
            for t in server.tools:
                if t.name in names:
                    log.warning(
                        "MCP server %s: its tool %s clashes with another; skipped", server.name, t.name
                    )
                    continue
                names.add(t.name)
                tools.append(t)
        self._current = Toolset(tools)

    async def _watch(self) -> None:
        from watchfiles import awatch

        name = self.file.name

        def only_tools_toml(_change: object, path: str) -> bool:
            return Path(path).name == name

        while not self._stop.is_set():
            try:
                async for _ in awatch(
                    self._home.root,
                    watch_filter=only_tools_toml,
                    stop_event=self._stop,
                    debounce=_DEBOUNCE_MS,
                    recursive=False,
                ):
                    await self.reload()
            except asyncio.CancelledError:
                raise
            except Exception as e:
                log.warning("watching %s failed (%s); retrying", self.file, e)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), _RETRY_WATCH_S)
                await self.reload()  # what changed while nothing watched

    async def aclose(self) -> None:
        """Stop the watcher and every MCP server."""
        self._stop.set()
        self._closed = True
        if self._watcher is not None:
            try:
                await asyncio.wait_for(self._watcher, 5)
            except (TimeoutError, asyncio.CancelledError):
                pass
            self._watcher = None
        servers = list(self._servers.values())
        self._servers.clear()
        await asyncio.gather(
            *(s.aclose() for s in servers), *list(self._stopping_servers), return_exceptions=True
        )
        self._current = Toolset(self._builtin)
