from __future__ import annotations

import asyncio
import logging
import os
import time
import tomllib
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from sorat_daemon import config
from sorat_daemon.paths import Home
from sorat_daemon.state import StateHub
from sorat_daemon.tools.manager import ToolManager, builtin_tools
from sorat_daemon.tools.registry import Toolset
from sorat_daemon.tools.settings import (
    TEMPLATE,
    RunCommandSettings,
    ToolsConfigError,
    ToolSettings,
    WebSettings,
    parse,
)

ALL_DEFAULT_TOOLS = [
    "get_current_time",
    "get_system_info",
    "run_command",
    "show_allowed_commands",
    "read_file",
    "write_file",
    "list_dir",
    "create_dir",
    "delete_file",
    "web_search",
    "read_webpage",
    "remember",
    "recall_memory",
]


@pytest.fixture
def home(tmp_path: Path) -> Home:
    h = Home(tmp_path / "home")
    h.ensure()
    return h


@pytest.fixture
async def manager(home: Home) -> AsyncIterator[ToolManager]:
    m = ToolManager(home, StateHub(), secret_env_names={"MY_KEY"})
    await m.start()
    try:
        yield m
    finally:
        await m.aclose()


async def wait_for(predicate: Callable[[], bool], deadline_s: float = 2.0) -> float:
    """Seconds until ``predicate()`` held; fails after the deadline."""
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > deadline_s:
            raise AssertionError(f"not true within {deadline_s} s")
        await asyncio.sleep(0.01)
    return time.monotonic() - started


def save_in_place(file: Path, text: str) -> None:
    with open(file, "w", encoding="utf-8") as f:
        f.write(text)


def save_by_rename(file: Path, text: str) -> None:
    tmp = file.with_name(".tools.toml.swp-tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, file)


# --- the file ----------------------------------------------------------------------------------


def test_template_has_every_key_and_parses_to_the_defaults() -> None:
    assert parse(TEMPLATE, Path("tools.toml")) == ToolSettings()
    data = tomllib.loads(TEMPLATE)
    assert set(data) == {"run_command", "files", "web", "memory"}  # mcp is commented out
    assert set(data["run_command"]) == {"mode", "allow", "timeout_s", "max_output_chars"}
    assert set(data["web"]) == {"enabled", "search_backend", "searxng_url"}
    assert "# [mcp.servers.NAME]" in TEMPLATE
    uncommented = "\n".join(line.removeprefix("# ") for line in TEMPLATE.splitlines())
    assert "[mcp.servers.NAME]" in uncommented


def test_full_file_parses() -> None:
    text = """
[run_command]
mode = "unrestricted"
allow = ["git"]
timeout_s = 5
max_output_chars = 100
[files]
enabled = false
[web]
search_backend = "searxng"
searxng_url = "http://127.0.0.1:8888"
[memory]
enabled = false
[mcp.servers.notes]
command = "npx"
args = ["-y", "server"]
env = { TOKEN = "x" }
timeout_s = 30
"""
    s = parse(text, Path("tools.toml"))
    assert s.run_command == RunCommandSettings("unrestricted", ("git",), 5.0, 100)
    assert not s.files_enabled and not s.memory_enabled
    assert s.web == WebSettings(True, "searxng", "http://127.0.0.1:8888")
    (server,) = s.mcp_servers
    assert (server.name, server.command, server.args, server.env, server.timeout_s) == (
        "notes",
        "npx",
        ("-y", "server"),
        (("TOKEN", "x"),),
        30.0,
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[run_command]\nmode = 'yolo'\n", "tools.toml, line 2: run_command.mode: must be one of"),
        ("[run_command]\n\ntimeout_s = 'x'\n", "line 3: run_command.timeout_s: must be a number above 0"),
        ("[run_command]\nmax_output_chars = 0\n", "run_command.max_output_chars"),
        ("[run_command]\nallow = ['/bin/ls']\n", "run_command.allow: lists program names"),
        ("[run_command]\nallow = 'ls'\n", "run_command.allow: must be a list of strings"),
        ("[files]\nenabled = 'yes'\n", "line 2: files.enabled: must be true or false"),
        ("[web]\nsearch_backend = 'searxng'\n", "web.searxng_url: is required"),
        ("[web]\nsearxng_url = 'ftp://x'\n", "web.searxng_url: must start with http"),
        ("[mcp.servers.x]\nargs = []\n", "mcp.servers.x.command: is required"),
        ("[mcp.servers.x]\ncommand = 'a'\nenv = { A = 1 }\n", "line 3: mcp.servers.x.env"),
        ("[mcp.servers.'a b']\ncommand = 'a'\n", "a server name may hold only"),
        ("run_command = 3\n", "run_command: must be a table"),
        ("[run_command\nmode = 1\n", "invalid TOML"),
    ],
)
def test_invalid_files_name_line_key_and_problem(text: str, expected: str) -> None:
    with pytest.raises(ToolsConfigError) as info:
        parse(text, Path("tools.toml"))
    assert expected in str(info.value)


def test_toml_syntax_errors_carry_the_line() -> None:
    with pytest.raises(ToolsConfigError) as info:
        parse("[web]\nenabled = \n", Path("/h/tools.toml"))
    assert str(info.value).startswith("/h/tools.toml: invalid TOML:")
    assert "line 2" in str(info.value)


def test_unknown_keys_warn(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="sorat.tools"):
        settings = parse("colour = 1\n[web]\nenabeld = false\n", Path("tools.toml"))
    assert settings == ToolSettings()
    messages = [r.getMessage() for r in caplog.records]
    assert any("unknown key colour" in m for m in messages)
    assert any("unknown key web.enabeld" in m for m in messages)


def test_builtin_tools_follow_the_settings() -> None:
    assert [t.name for t in builtin_tools(ToolSettings())] == ALL_DEFAULT_TOOLS
    off = ToolSettings(
        run_command=RunCommandSettings(mode="disabled"),
        files_enabled=False,
        web=WebSettings(enabled=False),
        memory_enabled=False,
    )
    assert [t.name for t in builtin_tools(off)] == ["get_current_time", "get_system_info"]


def test_builtin_tools_carry_their_family() -> None:
    """Each built-in tool names its family, and the families are the ones [agent]
    tools_with_client_tools accepts (MCP servers' tools are the last one)."""
    families = {t.name: t.family for t in builtin_tools(ToolSettings())}
    assert families == {
        "get_current_time": "clock", "get_system_info": "clock",
        "run_command": "run_command", "show_allowed_commands": "run_command",
        "read_file": "files", "write_file": "files", "list_dir": "files", "create_dir": "files",
        "delete_file": "files",
        "web_search": "web", "read_webpage": "web",
        "remember": "memory", "recall_memory": "memory",
    }  # fmt: skip
    assert {*families.values(), "mcp"} == set(config.TOOL_FAMILIES)


# --- the manager -------------------------------------------------------------------------------


async def test_first_start_writes_the_template(manager: ToolManager, home: Home) -> None:
    assert home.tools.read_text(encoding="utf-8") == TEMPLATE
    assert manager.current().names() == ALL_DEFAULT_TOOLS
    assert manager.error is None


async def test_existing_file_is_kept_and_applied(home: Home) -> None:
    home.tools.write_text("[memory]\nenabled = false\n")
    m = ToolManager(home)
    await m.start()
    try:
        assert home.tools.read_text() == "[memory]\nenabled = false\n"
        assert "remember" not in m.current()
    finally:
        await m.aclose()


@pytest.mark.parametrize("save", [save_in_place, save_by_rename])
async def test_hot_reload(manager: ToolManager, home: Home, save: Callable[[Path, str], None]) -> None:
    before = manager.current()
    save(home.tools, "[files]\nenabled = false\n[run_command]\nmode = 'disabled'\n")
    elapsed = await wait_for(lambda: "read_file" not in manager.current())
    assert elapsed <= 2.0
    now = manager.current()
    assert "run_command" not in now and "web_search" in now
    # a request that started before keeps its tools
    assert "read_file" in before and "run_command" in before
    save(home.tools, "[files]\nenabled = true\n")
    await wait_for(lambda: "read_file" in manager.current() and "run_command" in manager.current())


async def test_invalid_file_keeps_the_last_good_tools(
    manager: ToolManager, home: Home, caplog: pytest.LogCaptureFixture
) -> None:
    state = manager._state
    assert state is not None
    save_by_rename(home.tools, "[memory]\nenabled = false\n")
    await wait_for(lambda: "remember" not in manager.current())
    good = manager.current()
    with caplog.at_level(logging.WARNING, logger="sorat.tools"):
        save_in_place(home.tools, "[memory]\nenabled = false\n[web]\nenabled = 'nope'\n")
        await wait_for(lambda: manager.error is not None)
    assert manager.current() is good
    assert manager.error is not None
    assert str(home.tools) in manager.error and "line 4" in manager.error and "web.enabled" in manager.error
    assert state.get().tools_error == manager.error
    assert state.get().attention == manager.error
    lines = [r.getMessage() for r in caplog.records if "web.enabled" in r.getMessage()]
    assert len(lines) == 1 and "keeping the last good tools" in lines[0]
    # broken TOML: still the same tools, the error now says where the syntax broke
    save_in_place(home.tools, "[memory\n")
    await wait_for(lambda: manager.error is not None and "invalid TOML" in manager.error)
    assert manager.current() is good
    assert "line 1" in (state.get().tools_error or "")
    # fixed: applied, error cleared
    save_by_rename(home.tools, "[web]\nenabled = false\n")
    await wait_for(lambda: manager.error is None)
    assert state.get().tools_error is None
    assert "web_search" not in manager.current() and "remember" in manager.current()


async def test_deleted_file_means_the_defaults(manager: ToolManager, home: Home) -> None:
    save_in_place(home.tools, "[web]\nenabled = false\n")
    await wait_for(lambda: "web_search" not in manager.current())
    home.tools.unlink()
    await wait_for(lambda: "web_search" in manager.current())
    assert manager.error is None


async def test_invalid_file_at_start_gives_defaults_and_the_error(home: Home) -> None:
    home.tools.write_text("[run_command]\nmode = 'sometimes'\n")
    state = StateHub()
    m = ToolManager(home, state)
    await m.start()
    try:
        assert m.current().names() == ALL_DEFAULT_TOOLS
        assert m.error is not None and "run_command.mode" in m.error
        assert state.get().tools_error == m.error
    finally:
        await m.aclose()


async def test_current_before_start_and_after_close(home: Home) -> None:
    m = ToolManager(home)
    assert isinstance(m.current(), Toolset) and "run_command" in m.current()
    await m.start()
    await m.aclose()
    assert "run_command" in m.current()
    await m.aclose()  # twice is fine


async def test_secret_env_names_reach_run_command(manager: ToolManager, home: Home) -> None:
    from sorat_daemon.tools.registry import ToolContext

    save_in_place(home.tools, "[run_command]\nmode = 'unrestricted'\n")
    await wait_for(lambda: manager.settings.run_command.mode == "unrestricted")
    ctx = ToolContext(home=home, env={"PATH": os.environ["PATH"], "MY_KEY": "hidden", "LANG": "C"})
    out = await manager.current().call("run_command", '{"command": "env"}', ctx)
    assert "hidden" not in out and "LANG=C" in out
