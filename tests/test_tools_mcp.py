from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from sorat_daemon.paths import Home
from sorat_daemon.state import StateHub
from sorat_daemon.tools.manager import ToolManager
from sorat_daemon.tools.mcp import McpServer, tool_name
from sorat_daemon.tools.registry import ToolContext, ToolError
from sorat_daemon.tools.settings import McpServerSettings
from tests.conftest import process_alive

FIXTURE = Path(__file__).with_name("mcp_server_fixture.py")
pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="process checks use POSIX signals")


def server_toml(name: str = "fix", *extra_args: str, env: str = "{}") -> str:
    args = json.dumps([str(FIXTURE), name, *extra_args])
    return f'[mcp.servers.{name}]\ncommand = "{sys.executable}"\nargs = {args}\nenv = {env}\ntimeout_s = 20\n'


async def wait_for(predicate: Callable[[], bool], deadline_s: float = 15.0) -> None:
    end = time.monotonic() + deadline_s
    while not predicate():
        assert time.monotonic() < end, "not true before the deadline"
        await asyncio.sleep(0.02)


@pytest.fixture
def home(tmp_path: Path) -> Home:
    h = Home(tmp_path / "home")
    h.ensure()
    return h


@pytest.fixture
def ctx(home: Home) -> ToolContext:
    return ToolContext(home=home, session_id="mcp")


@pytest.fixture
async def manager(home: Home) -> AsyncIterator[ToolManager]:
    home.tools.write_text(server_toml(env='{ FIXTURE_FLAG = "on" }'))
    m = ToolManager(home, StateHub(), mcp_backoff_s=0.1)
    await m.start()
    try:
        yield m
    finally:
        await m.aclose()


def test_tool_names_fit_openai() -> None:
    assert tool_name("notes", "read") == "notes__read"
    assert tool_name("my-srv", "do.thing/now") == "my-srv__do_thing_now"
    assert len(tool_name("s", "x" * 100)) == 64


async def test_tools_appear_and_calls_work(manager: ToolManager, ctx: ToolContext, home: Home) -> None:
    started = time.monotonic()
    await wait_for(lambda: "fix__add" in manager.current())
    ts = manager.current()
    assert {"fix__add", "fix__pid", "fix__echo_env", "fix__fail", "fix__nap", "fix__crash"} <= set(ts.names())
    assert "run_command" in ts  # built-ins stay
    spec = next(s for s in ts.specs() if s["function"]["name"] == "fix__add")["function"]
    assert spec["description"] == "Add two integers."
    assert spec["parameters"]["required"] == ["a", "b"]
    assert await ts.call("fix__add", '{"a": 2, "b": 40}', ctx) == "42"
    # arguments are checked against the server's schema before the call
    assert "missing required argument 'b'" in json.loads(await ts.call("fix__add", '{"a": 1}', ctx))["error"]
    # the server's tool errors come back as error results
    assert "error" in json.loads(await ts.call("fix__fail", '{"message": "boom"}', ctx))
    # env from tools.toml reaches the server; the daemon's secrets do not
    assert await ts.call("fix__echo_env", '{"name": "FIXTURE_FLAG"}', ctx) == "on"
    assert time.monotonic() - started < 15
    # stderr goes to the server's log file
    assert (home.logs / "mcp-fix.log").exists()


async def test_secrets_do_not_reach_the_server(
    home: Home, ctx: ToolContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-never-leak")
    server = McpServer(McpServerSettings("s", sys.executable, (str(FIXTURE), "s")), backoff_min_s=0.1)
    server.start()
    try:
        await wait_for(lambda: bool(server.tools))
        assert await server.call("echo_env", {"name": "OPENAI_API_KEY"}) == "<unset>"
    finally:
        await server.aclose()
    assert server.tools == ()


async def test_a_crashed_server_comes_back(manager: ToolManager, ctx: ToolContext) -> None:
    await wait_for(lambda: "fix__pid" in manager.current())
    ts = manager.current()
    first_pid = int(await ts.call("fix__pid", "{}", ctx))
    out = json.loads(await ts.call("fix__crash", "{}", ctx))
    assert "error" in out
    await wait_for(lambda: not process_alive(first_pid))
    await wait_for(lambda: "fix__pid" in manager.current() and manager._servers["fix"].starts >= 2)
    second_pid = int(await manager.current().call("fix__pid", "{}", ctx))
    assert second_pid != first_pid
    # a Toolset taken before the crash reaches the restarted server
    assert await ts.call("fix__add", '{"a": 1, "b": 1}', ctx) == "2"


async def test_tools_are_withdrawn_while_the_server_is_down(ctx: ToolContext) -> None:
    counts: list[int] = []
    server = McpServer(
        McpServerSettings("s", sys.executable, (str(FIXTURE), "s")),
        on_change=lambda: counts.append(len(server.tools)),
        backoff_min_s=0.1,
    )
    server.start()
    try:
        await wait_for(lambda: bool(server.tools))
        with pytest.raises(ToolError, match="Connection closed"):
            await server.call("crash", {})
        await wait_for(lambda: server.starts >= 2 and bool(server.tools))
    finally:
        await server.aclose()
    assert counts[:3] == [6, 0, 6]  # offered, withdrawn, offered again
    assert counts[-1] == 0


async def test_calls_time_out(ctx: ToolContext) -> None:
    server = McpServer(McpServerSettings("s", sys.executable, (str(FIXTURE), "s"), timeout_s=0.3))
    server.start()
    try:
        await wait_for(lambda: bool(server.tools))
        started = time.monotonic()
        with pytest.raises(ToolError, match="timed out"):
            await server.call("nap", {"seconds": 30})
        assert time.monotonic() - started < 5
        assert await server.call("nap", {"seconds": 0}) == "awake"  # the server is still usable
    finally:
        await server.aclose()


async def test_removing_the_server_withdraws_tools_and_stops_it(
    manager: ToolManager, ctx: ToolContext, home: Home
) -> None:
    await wait_for(lambda: "fix__pid" in manager.current())
    pid = int(await manager.current().call("fix__pid", "{}", ctx))
    home.tools.write_text("[memory]\nenabled = true\n")
    await wait_for(lambda: "fix__pid" not in manager.current(), deadline_s=2)
    await wait_for(lambda: not process_alive(pid), deadline_s=10)
    assert "remember" in manager.current()


async def test_changing_the_server_restarts_it(manager: ToolManager, ctx: ToolContext, home: Home) -> None:
    await wait_for(lambda: "fix__pid" in manager.current())
    pid = int(await manager.current().call("fix__pid", "{}", ctx))
    home.tools.write_text(server_toml(env='{ FIXTURE_FLAG = "changed" }'))
    await wait_for(lambda: not process_alive(pid))
    await wait_for(lambda: "fix__echo_env" in manager.current())
    assert await manager.current().call("fix__echo_env", '{"name": "FIXTURE_FLAG"}', ctx) == "changed"


async def test_shutdown_stops_every_server(home: Home, ctx: ToolContext) -> None:
    home.tools.write_text(server_toml("one") + server_toml("two"))
    m = ToolManager(home, mcp_backoff_s=0.1)
    await m.start()
    try:
        await wait_for(lambda: "one__pid" in m.current() and "two__pid" in m.current())
        pids = [int(await m.current().call(f"{n}__pid", "{}", ctx)) for n in ("one", "two")]
    finally:
        await m.aclose()
    assert not any(process_alive(p) for p in pids)
    assert not [n for n in m.current().names() if "__" in n]


async def test_a_failing_server_never_takes_the_daemon_down(
    home: Home, caplog: pytest.LogCaptureFixture
) -> None:
    home.tools.write_text('[mcp.servers.ghost]\ncommand = "/no/such/program"\n' + server_toml("ok"))
    m = ToolManager(home, mcp_backoff_s=0.05)
    await m.start()  # returns at once; the servers start in the background
    try:
        await wait_for(lambda: "ok__pid" in m.current())
        await wait_for(lambda: m._servers["ghost"].starts >= 3)  # retried with backoff
        assert not [n for n in m.current().names() if n.startswith("ghost__")]
        assert "run_command" in m.current()
        assert any("MCP server ghost failed" in r.getMessage() for r in caplog.records)
    finally:
        await m.aclose()


def test_results_become_text_for_the_model() -> None:
    import mcp_types as types

    from sorat_daemon.tools.mcp import MAX_RESULT_CHARS, result_value

    def result(*content: object, is_error: bool = False, structured: object = None) -> object:
        return types.CallToolResult(content=list(content), is_error=is_error, structured_content=structured)  # type: ignore[arg-type]

    text = types.TextContent(type="text", text="hello")
    image = types.ImageContent(type="image", data="AAAA", mime_type="image/png")
    assert result_value(result(text, image)) == "hello\n[image (image/png) not shown]"
    assert result_value(result(structured={"a": 1})) == {"a": 1}
    with pytest.raises(ToolError, match="hello"):
        result_value(result(text, is_error=True))
    big = types.TextContent(type="text", text="x" * (MAX_RESULT_CHARS + 10))
    assert result_value(result(big)).endswith("[truncated]")


async def test_state_and_last_error_for_the_status_page(home: Home) -> None:
    home.tools.write_text('[mcp.servers.ghost]\ncommand = "/no/such/program"\n' + server_toml("ok"))
    m = ToolManager(home, mcp_backoff_s=0.05)
    await m.start()
    try:
        servers = {s.name: s for s in m.servers()}
        assert list(servers) == ["ghost", "ok"]
        await wait_for(lambda: servers["ok"].state == "running")
        assert servers["ok"].last_error is None
        await wait_for(lambda: servers["ghost"].state == "restarting")
        assert "command not found" in (servers["ghost"].last_error or "")
    finally:
        await m.aclose()
    assert servers["ok"].state == "stopped"
