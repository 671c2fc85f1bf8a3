"""tools.toml: the template, frozen settings, and a whole-file check whose errors name the line and key."""

from __future__ import annotations

import logging
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sorat_daemon.paths import create_once

log = logging.getLogger("sorat.tools")

RUN_MODES = ("allowlist", "unrestricted", "disabled")
SEARCH_BACKENDS = ("duckduckgo", "searxng")
DEFAULT_ALLOW = ("ls", "cat", "echo", "pwd", "date", "grep", "head", "tail", "wc")

TEMPLATE = """\
# sorat tools. Every key is optional; the values shown are the defaults.
# Saved changes apply to the next request within 2 s; requests already running keep their tools.
# An invalid file is reported (log and tray) and the last good settings stay.

[run_command]
mode = "allowlist"          # allowlist | unrestricted | disabled
allow = ["ls", "cat", "echo", "pwd", "date", "grep", "head", "tail", "wc"]
timeout_s = 60              # the command's whole process group is killed after this
max_output_chars = 20000    # stdout and stderr are each cut at this length
# In allowlist mode only the programs listed run (by name, not by path), and an argument that is a
# path leading outside workspace/ is refused. This limits what the model can do; it is not a sandbox.
# Commands never run through a shell, and never see provider API keys or sorat's token.

[files]
enabled = true              # read_file write_file list_dir create_dir delete_file, inside workspace/

[web]
enabled = true              # web_search, read_webpage
search_backend = "duckduckgo"   # duckduckgo | searxng
searxng_url = ""            # base URL of a SearXNG instance (GET /search?q=...&format=json)

[memory]
enabled = true              # remember, recall_memory (memory.md)

# MCP servers (stdio). Each one's tools join the agent's tools as NAME__tool.
# [mcp.servers.NAME]
# command = "npx"
# args = ["-y", "@modelcontextprotocol/server-filesystem", "/home/me/notes"]
# env = {}                  # added to a minimal environment (PATH, HOME, ...)
# timeout_s = 120           # per tool call
"""


class ToolsConfigError(Exception):
    """tools.toml cannot be used; ``str()`` is the one line for the log and the tray."""

    def __init__(self, file: Path, problem: str, *, key: str | None = None, line: int | None = None) -> None:
        where = str(file)
        if line is not None:
            where += f", line {line}"
        if key:
            where += f": {key}"
        super().__init__(f"{where}: {problem}")
        self.file, self.key, self.line, self.problem = file, key, line, problem


@dataclass(frozen=True, slots=True)
class RunCommandSettings:
    mode: str = "allowlist"
    allow: tuple[str, ...] = DEFAULT_ALLOW
    timeout_s: float = 60.0
    max_output_chars: int = 20000


@dataclass(frozen=True, slots=True)
class WebSettings:
    enabled: bool = True
    search_backend: str = "duckduckgo"
    searxng_url: str = ""


@dataclass(frozen=True, slots=True)
class McpServerSettings:
    name: str
    command: str
    args: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()  # a tuple so that settings compare and hash
    timeout_s: float = 120.0


@dataclass(frozen=True, slots=True)
class ToolSettings:
    run_command: RunCommandSettings = RunCommandSettings()
    files_enabled: bool = True
    web: WebSettings = WebSettings()
    memory_enabled: bool = True
    mcp_servers: tuple[McpServerSettings, ...] = field(default=())


# --- checking ----------------------------------------------------------------------------------

_NAME_OK = re.compile(r"^[A-Za-z0-9_-]{1,40}$")


class _Checker:
    def __init__(self, file: Path, text: str) -> None:
        self.file = file
        self.lines = text.splitlines()

    def line_of(self, key: str) -> int | None:
        """The line where a dotted key is set, found by reading the tables as written (best effort)."""
        *tables, last = key.split(".")
        table = ".".join(tables)
        current = ""
        for i, raw in enumerate(self.lines, 1):
            line = raw.strip()
            if line.startswith("[") and not line.startswith("[["):
                current = line.strip("[] ").replace('"', "").replace("'", "")
                if current == key:
                    return i
                continue
            name, eq, _ = line.partition("=")
            if eq and current == table and name.strip().strip("\"'") == last:
                return i
        return None

    def error(self, key: str, problem: str) -> ToolsConfigError:
        return ToolsConfigError(self.file, problem, key=key, line=self.line_of(key))

    def table(
        self, data: Mapping[str, Any], name: str, keys: Mapping[str, Callable[[str, Any], Any]]
    ) -> dict[str, Any]:
        value = data.get(name, {})
        if not isinstance(value, dict):
            raise self.error(name, "must be a table")
        out: dict[str, Any] = {}
        for key, v in value.items():
            full = f"{name}.{key}"
            if key not in keys:
                log.warning("%s: unknown key %s (ignored)", self.file, full)
                continue
            out[key] = keys[key](full, v)
        return out

    # value checkers: (key, value) -> value, raising an error that names the key

    def string(self, key: str, v: Any) -> str:
        if not isinstance(v, str):
            raise self.error(key, f"must be a string, not {_show(v)}")
        return v

    def boolean(self, key: str, v: Any) -> bool:
        if not isinstance(v, bool):
            raise self.error(key, f"must be true or false, not {_show(v)}")
        return v

    def positive(self, key: str, v: Any) -> float:
        if isinstance(v, bool) or not isinstance(v, int | float) or v <= 0:
            raise self.error(key, f"must be a number above 0, not {_show(v)}")
        return float(v)

    def count(self, key: str, v: Any) -> int:
        if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
            raise self.error(key, f"must be a whole number above 0, not {_show(v)}")
        return v

    def strings(self, key: str, v: Any) -> tuple[str, ...]:
        if not isinstance(v, list) or not all(isinstance(s, str) for s in v):
            raise self.error(key, f"must be a list of strings, not {_show(v)}")
        return tuple(v)

    def one_of(self, choices: tuple[str, ...]) -> Callable[[str, Any], str]:
        def check(key: str, v: Any) -> str:
            if v not in choices:
                raise self.error(key, f"must be one of {', '.join(choices)}, not {_show(v)}")
            return str(v)

        return check

    def str_table(self, key: str, v: Any) -> tuple[tuple[str, str], ...]:
        if not isinstance(v, dict) or not all(isinstance(x, str) for x in v.values()):
            raise self.error(key, f'must be a table of strings (env = {{ NAME = "value" }}), not {_show(v)}')
        return tuple(sorted(v.items()))


def _show(v: Any) -> str:
    kind = {bool: "boolean", int: "integer", float: "number", str: "string", list: "list", dict: "table"}
    return f"{kind.get(type(v), type(v).__name__)} {v!r}" if not isinstance(v, dict) else "a table"


def parse(text: str, file: Path) -> ToolSettings:
    """Check the whole file; the first problem raises ``ToolsConfigError``; unknown keys only warn."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        # tomllib's message ends with "(at line L, column C)"
        raise ToolsConfigError(file, f"invalid TOML: {e}") from None
    c = _Checker(file, text)
    for key in data:
        if key not in ("run_command", "files", "web", "memory", "mcp"):
            log.warning("%s: unknown key %s (ignored)", file, key)

    rc = c.table(
        data,
        "run_command",
        {
            "mode": c.one_of(RUN_MODES),
            "allow": c.strings,
            "timeout_s": c.positive,
            "max_output_chars": c.count,
        },
    )
    for program in rc.get("allow", ()):
        if not program.strip() or "/" in program or "\\" in program:
            raise c.error("run_command.allow", f"lists program names, not paths or blanks: {program!r}")
    run_command = RunCommandSettings(**rc)

    files = c.table(data, "files", {"enabled": c.boolean})
    w = c.table(
        data,
        "web",
        {"enabled": c.boolean, "search_backend": c.one_of(SEARCH_BACKENDS), "searxng_url": c.string},
    )
    web = WebSettings(**w)
    if web.searxng_url and not web.searxng_url.startswith(("http://", "https://")):
        raise c.error("web.searxng_url", f"must start with http:// or https://, not {web.searxng_url!r}")
    if web.enabled and web.search_backend == "searxng" and not web.searxng_url:
        raise c.error("web.searxng_url", 'is required when search_backend = "searxng"')
    memory = c.table(data, "memory", {"enabled": c.boolean})

    servers: list[McpServerSettings] = []
    mcp = data.get("mcp", {})
    if not isinstance(mcp, dict):
        raise c.error("mcp", "must be a table")
    for key in mcp:
        if key != "servers":
            log.warning("%s: unknown key mcp.%s (ignored)", file, key)
    raw_servers = mcp.get("servers", {})
    if not isinstance(raw_servers, dict):
        raise c.error("mcp.servers", "must be a table of [mcp.servers.NAME] tables")
    for name, table in raw_servers.items():
        prefix = f"mcp.servers.{name}"
        if not _NAME_OK.match(name):
            raise c.error(prefix, "a server name may hold only letters, digits, _ and - (at most 40)")
        if not isinstance(table, dict):
            raise c.error(prefix, "must be a table")
        s = c.table(
            {prefix: table},
            prefix,
            {"command": c.string, "args": c.strings, "env": c.str_table, "timeout_s": c.positive},
        )
        if not s.get("command", "").strip():
            raise c.error(f"{prefix}.command", "is required")
        servers.append(McpServerSettings(name=name, **s))

    return ToolSettings(
        run_command=run_command,
        files_enabled=files.get("enabled", True),
        web=web,
        memory_enabled=memory.get("enabled", True),
        mcp_servers=tuple(servers),
    )


def load(file: Path) -> tuple[ToolSettings, str]:
    """Read and check ``file`` (absent: the defaults); also returns the text read."""
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        return ToolSettings(), ""
    except (OSError, UnicodeDecodeError) as e:
        raise ToolsConfigError(file, f"cannot be read: {e}") from None
    return parse(text, file), text


def write_template(file: Path) -> bool:
    """Write the commented template if no tools.toml exists yet."""
    return create_once(file, TEMPLATE)
