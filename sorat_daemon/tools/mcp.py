"""MCP servers (stdio) through the official ``mcp`` SDK, each watched by its own supervisor task.

A supervisor starts its server in the background, lists its tools and offers them as
``<server>__<tool>``; when the server exits or fails it withdraws them, logs why, and starts it again
after a backoff (1 s doubling to 60 s, reset once a run lasted a minute). ``aclose()`` stops the
server: stdin closed, then SIGTERM, then SIGKILL of its process group (the SDK's shutdown sequence).
Nothing here raises into the daemon: a server that cannot start is a log line and no tools.

Each server runs with the SDK's minimal environment (PATH, HOME, USER, ...) plus its ``env`` table,
so provider keys and the sorat token do not reach it. Its stderr goes to ``logs/mcp-<name>.log``.
The SDK is imported on first use: most users run no MCP server.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, TextIO

from sorat_daemon import __version__
from sorat_daemon.tools.registry import Tool, ToolError
from sorat_daemon.tools.settings import McpServerSettings

log = logging.getLogger("sorat.tools.mcp")

START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0
BACKOFF_MIN_S = 1.0
BACKOFF_MAX_S = 60.0
HEALTHY_AFTER_S = 60.0
MAX_DESCRIPTION_CHARS = 1024
MAX_RESULT_CHARS = 50_000  # what one call may add to the conversation
_NAME_BAD = re.compile(r"[^A-Za-z0-9_-]")


def tool_name(server: str, tool: str) -> str:
    """``server__tool`` in OpenAI's alphabet, at most 64 characters."""
    return _NAME_BAD.sub("_", f"{server}__{tool}")[:64]


def _schema(input_schema: dict[str, Any] | None) -> dict[str, Any]:
    schema = dict(input_schema or {})
    schema.pop("title", None)
    schema.setdefault("type", "object")
    schema.setdefault("properties", {})
    return schema


def result_value(result: Any) -> Any:
    """A CallToolResult as what the model reads: its text, else its structured content."""
    parts: list[str] = []
    for block in result.content or ():
        kind = getattr(block, "type", "")
        if kind == "text":
            parts.append(block.text)
        elif kind in ("image", "audio"):
            parts.append(f"[{kind} ({block.mime_type}) not shown]")
        elif kind == "resource":
            text = getattr(block.resource, "text", None)
            parts.append(text if text is not None else f"[resource {block.resource.uri}]")
        elif kind == "resource_link":
            parts.append(f"[resource {block.uri}]")
    text = "\n".join(parts)
    if len(text) > MAX_RESULT_CHARS:
        text = text[:MAX_RESULT_CHARS] + "\n[truncated]"
    if result.is_error:
        raise ToolError(text or "the tool reported an error")
    if not parts and result.structured_content is not None:
        return result.structured_content
    return text


class McpServer:
    """Supervises one stdio MCP server; ``tools`` are those offered right now (empty while down)."""

    def __init__(
        self,
        settings: McpServerSettings,
        *,
        on_change: Callable[[], None] = lambda: None,
        log_dir: Path | None = None,
        backoff_min_s: float = BACKOFF_MIN_S,
        backoff_max_s: float = BACKOFF_MAX_S,
    ) -> None:
        self.settings = settings
        self._on_change = on_change
        self._log_dir = log_dir
        self._backoff = (backoff_min_s, backoff_max_s)
        self._client: Any = None
        self._tools: tuple[Tool, ...] = ()
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._wake = asyncio.Event()  # the server's output ended, or we are stopping
        self.starts = 0  # how many times the process was started (for tests and logs)

    @property
    def name(self) -> str:
        return self.settings.name

    @property
    def tools(self) -> tuple[Tool, ...]:
        return self._tools

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._supervise(), name=f"sorat-mcp-{self.name}")

    async def aclose(self) -> None:
        self._stopping.set()
        self._wake.set()
        task, self._task = self._task, None
        if task is None:
            return
        try:
            await asyncio.wait_for(asyncio.shield(task), STOP_TIMEOUT_S)
        except TimeoutError:
            log.warning("MCP server %s did not stop in %.0f s; abandoning it", self.name, STOP_TIMEOUT_S)
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
        self._set_tools(())

    def _set_tools(self, tools: tuple[Tool, ...]) -> None:
        if tools != self._tools:
            self._tools = tools
            self._on_change()

    async def _supervise(self) -> None:
        loop = asyncio.get_running_loop()
        backoff = self._backoff[0]
        while not self._stopping.is_set():
            began = loop.time()
            problem = "exited"
            try:
                await self._run_once()
            except asyncio.CancelledError:
                raise
            except BaseException as e:  # an ExceptionGroup from the SDK's task groups, an OSError...
                problem = f"failed: {_describe(e)}"
            finally:
                self._client = None
                self._set_tools(())
            if self._stopping.is_set():
                break
            if loop.time() - began >= HEALTHY_AFTER_S:
                backoff = self._backoff[0]
            log.warning("MCP server %s %s; restarting in %g s", self.name, problem, round(backoff, 1))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), backoff)
            backoff = min(backoff * 2, self._backoff[1])

    async def _run_once(self) -> None:
        from mcp.client.client import Client
        from mcp_types import Implementation

        self._wake.clear()
        self.starts += 1
        with self._errlog() as errlog:
            transport = _watched_stdio(self.settings, errlog, self._wake.set)
            client = Client(
                transport,
                read_timeout_seconds=START_TIMEOUT_S,
                client_info=Implementation(name="sorat", version=__version__),
                cache=None,
            )
            async with client:
                listed = await _list_tools(client)
                if self._stopping.is_set():
                    return
                self._client = client
                tools = self._make_tools(listed)
                log.info(
                    "MCP server %s started with %d tools: %s",
                    self.name,
                    len(tools),
                    ", ".join(t.name for t in tools) or "none",
                )
                self._set_tools(tools)
                await self._wake.wait()
                self._client = None
                self._set_tools(())

    @contextlib.contextmanager
    def _errlog(self) -> Any:
        f: TextIO | None = None
        if self._log_dir is not None:
            with contextlib.suppress(OSError):
                self._log_dir.mkdir(parents=True, exist_ok=True)
                f = open(self._log_dir / f"mcp-{self.name}.log", "a", encoding="utf-8")
        if f is None:
            f = open(os.devnull, "w", encoding="utf-8")
        try:
            yield f
        finally:
            f.close()

    def _make_tools(self, listed: list[Any]) -> tuple[Tool, ...]:
        tools: list[Tool] = []
        seen: set[str] = set()
        for t in listed:
            name = tool_name(self.name, t.name)
            if name in seen:
                log.warning(
                    "MCP server %s: tool %s clashes with another as %s; skipped", self.name, t.name, name
                )
                continue
            seen.add(name)
            description = (t.description or getattr(t, "title", None) or t.name).strip()
            tools.append(
                Tool(
                    name=name,
                    description=description[:MAX_DESCRIPTION_CHARS],
                    parameters=_schema(t.input_schema),
                    fn=self._caller(t.name),
                    timeout_s=self.settings.timeout_s + 5,
                    family="mcp",
                )
            )
        return tuple(tools)

    def _caller(self, tool: str) -> Callable[..., Any]:
        async def call(**arguments: Any) -> Any:
            return await self.call(tool, arguments)

        return call

    async def call(self, tool: str, arguments: dict[str, Any]) -> Any:
        from mcp.shared.exceptions import MCPError

        client = self._client
        if client is None:
            raise ToolError(f"the MCP server {self.name} is not running (it is being restarted)")
        try:
            result = await client.call_tool(tool, arguments, read_timeout_seconds=self.settings.timeout_s)
        except MCPError as e:
            raise ToolError(f"MCP server {self.name}: {e.message}") from None
        return result_value(result)


async def _list_tools(client: Any) -> list[Any]:
    tools: list[Any] = []
    cursor: str | None = None
    for _ in range(100):  # a server whose pages never end cannot hang the start
        page = await client.list_tools(cursor=cursor)
        tools.extend(page.tools)
        cursor = page.next_cursor
        if not cursor:
            break
    return tools


@contextlib.asynccontextmanager
async def _watched_stdio(
    settings: McpServerSettings, errlog: TextIO, on_eof: Callable[[], None]
) -> AsyncIterator[Any]:
    """The SDK's stdio transport, with ``on_eof`` called when the server's output ends (it died)."""
    import anyio
    from mcp.client.stdio import StdioServerParameters, stdio_client

    params = StdioServerParameters(command=settings.command, args=list(settings.args), env=dict(settings.env))
    async with stdio_client(params, errlog=errlog) as (read, write):
        send, receive = anyio.create_memory_object_stream[Any](0)

        async def pump() -> None:
            try:
                async with send:
                    async for item in read:
                        await send.send(item)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                pass
            finally:
                on_eof()

        async with anyio.create_task_group() as tg:
            tg.start_soon(pump)
            try:
                yield receive, write
            finally:
                tg.cancel_scope.cancel()
                receive.close()


def _describe(e: BaseException) -> str:
    while isinstance(e, BaseExceptionGroup) and len(e.exceptions) == 1:
        e = e.exceptions[0]
    if isinstance(e, BaseExceptionGroup):
        return "; ".join(_describe(x) for x in e.exceptions)
    if isinstance(e, FileNotFoundError):
        return f"command not found ({e.filename or e})"
    text = str(e)
    return f"{type(e).__name__}: {text}" if text else type(e).__name__
