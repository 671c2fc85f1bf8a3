"""The status page: the providers, each tool family and MCP server with its state and last error, the
tools.toml error (file, line, problem), and the last lines of sorat's log."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from quart import Response

from sorat_daemon.ui.site import Site

LOG_LINES = 60
LOG_TAIL_BYTES = 64 * 1024


def log_tail(path: Path, lines: int = LOG_LINES) -> list[str]:
    """The last ``lines`` lines of the log, read from its end (it may be megabytes long)."""
    try:
        with open(path, "rb") as f:
            size = f.seek(0, os.SEEK_END)
            f.seek(max(0, size - LOG_TAIL_BYTES))
            data = f.read()
    except OSError:
        return []
    text = data.decode("utf-8", "replace").splitlines()
    if len(data) == LOG_TAIL_BYTES and text:
        text = text[1:]  # the first line is cut
    return text[-lines:]


async def page(site: Site) -> Response:
    rt = site.rt
    status = rt.state.get()
    offered: dict[str, list[str]] = {}
    for model, owner in rt.pool.models():
        offered.setdefault(owner, []).append(model)
    providers = [
        {"name": p.name, "base_url": p.base_url, "models": offered.get(p.name, [])}
        for p in rt.settings.providers
    ]
    logs = await asyncio.to_thread(log_tail, rt.home.logs / "sorat.log")
    return site.page(
        "status.html",
        nav="status",
        daemon=status,
        providers=providers,
        no_provider=rt.pool.no_provider(),
        families=rt.tools.families(),
        servers=rt.tools.servers(),
        tools_error=rt.tools.error,
        tools_file=str(rt.tools.file),
        logs=logs,
        log_file=str(rt.home.logs / "sorat.log"),
    )
