from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from pathlib import Path

import pytest

from sorat_daemon.paths import Home
from sorat_daemon.tools.registry import ToolContext, Toolset
from sorat_daemon.tools.settings import RunCommandSettings
from sorat_daemon.tools.shell import command_env, make_tools
from tests.conftest import process_alive

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX process groups and programs")

SECRET_ENV = {
    "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
    "HOME": "/home/someone",
    "LANG": "C.UTF-8",
    "OPENAI_API_KEY": "sk-openai-secret",
    "GROQ_API_KEY": "gsk-secret",
    "MY_PROVIDER_CREDENTIAL": "named-in-config",
    "SORAT_TOKEN": "sorat-secret",
    "SORAT_HOME": "/somewhere",
    "GITHUB_TOKEN": "ghp-secret",
    "AWS_SECRET": "aws",
}


@pytest.fixture
def home(tmp_path: Path) -> Home:
    h = Home(tmp_path / "home")
    h.ensure()
    h.token.write_text("the-sorat-token\n")
    (tmp_path / "outside.txt").write_text("outside secret\n")
    return h


@pytest.fixture
def ctx(home: Home) -> ToolContext:
    return ToolContext(home=home, session_id="t", env=SECRET_ENV)


def toolset(**settings: object) -> Toolset:
    return Toolset(make_tools(RunCommandSettings(**settings), secret_env_names={"MY_PROVIDER_CREDENTIAL"}))  # type: ignore[arg-type]


async def run(ts: Toolset, ctx: ToolContext, **arguments: object) -> dict[str, object]:
    return json.loads(await ts.call("run_command", json.dumps(arguments), ctx))  # type: ignore[no-any-return]


async def test_runs_in_the_workspace_without_a_shell(ctx: ToolContext, home: Home) -> None:
    ts = toolset()
    (home.workspace / "a.txt").write_text("alpha\nbeta\n")
    out = await run(ts, ctx, command="pwd")
    assert out["exit_code"] == 0
    assert Path(str(out["stdout"]).strip()).resolve() == home.workspace.resolve()
    out = await run(ts, ctx, command="cat a.txt")
    assert out == {"command": "cat a.txt", "stdout": "alpha\nbeta\n", "stderr": "", "exit_code": 0}
    # shell syntax is plain text: echo prints it instead of a shell running it
    out = await run(ts, ctx, command="echo hi; cat a.txt && $(id) `id` | wc > x")
    assert out["exit_code"] == 0
    assert out["stdout"] == "hi; cat a.txt && $(id) `id` | wc > x\n"
    assert not (home.workspace / "x").exists()
    out = await run(ts, ctx, command="echo", args=["a b", "$HOME"])
    assert out["stdout"] == "a b $HOME\n"
    out = await run(ts, ctx, command="grep 'two words' a.txt")
    assert out["exit_code"] == 1
    # words that only look like paths elsewhere are fine: a regex escape, a colon, dots
    out = await run(ts, ctx, command="grep", args=["\\balpha", "a.txt"])
    assert out["stdout"] == "alpha\n"
    out = await run(ts, ctx, command="echo key:value wait... --color=auto")
    assert out["stdout"] == "key:value wait... --color=auto\n"


@pytest.mark.parametrize(
    ("arguments", "reason"),
    [
        ({"command": "ls; cat /etc/passwd"}, "refused: 'ls;'"),  # ";" is no separator: "ls;" is the program
        ({"command": "ls", "args": [";", "cat", "/etc/passwd"]}, "outside"),
        ({"command": "cat ../token"}, "outside"),
        ({"command": "cat ../../token"}, "outside"),
        ({"command": "cat /etc/passwd"}, "outside"),
        ({"command": "cat", "args": ["/etc/passwd"]}, "outside"),
        ({"command": "cat ~/.bashrc"}, "outside"),
        ({"command": "grep --file=/etc/passwd x"}, "outside"),
        ({"command": "grep -f/etc/passwd x"}, "outside"),
        ({"command": "cat a/../../token"}, "outside"),
        ({"command": "/bin/sh -c id"}, "is a path"),
        ({"command": "/bin/ls"}, "is a path"),
        ({"command": "./ls"}, "is a path"),
        ({"command": "sh -c id"}, "not an allowed command"),
        ({"command": "python3"}, "not an allowed command"),
        ({"command": "'unbalanced"}, "cannot split"),
        ({"command": ""}, "empty command"),
    ],
)
async def test_allowlist_refusals(ctx: ToolContext, arguments: dict[str, object], reason: str) -> None:
    out = await run(toolset(), ctx, **arguments)
    assert "error" in out, out
    assert reason in str(out["error"])


async def test_symlink_out_of_the_workspace_is_refused(ctx: ToolContext, home: Home, tmp_path: Path) -> None:
    (home.workspace / "link").symlink_to(home.token)
    (home.workspace / "dirlink").symlink_to(tmp_path)
    (home.workspace / "inside.txt").write_text("fine\n")
    (home.workspace / "good").symlink_to(home.workspace / "inside.txt")
    ts = toolset()
    for command in ("cat link", "cat dirlink/outside.txt", "ls dirlink"):
        out = await run(ts, ctx, command=command)
        assert "outside" in str(out.get("error")), (command, out)
    out = await run(ts, ctx, command="cat good")
    assert out["stdout"] == "fine\n"


async def test_unrestricted_allows_paths_and_any_program(ctx: ToolContext) -> None:
    ts = toolset(mode="unrestricted")
    out = await run(ts, ctx, command="/bin/sh", args=["-c", "echo $((1+2))"])
    assert out["stdout"] == "3\n"
    out = await run(ts, ctx, command="sh -c 'exit 7'")
    assert out["exit_code"] == 7


async def test_disabled_offers_nothing(ctx: ToolContext) -> None:
    assert make_tools(RunCommandSettings(mode="disabled")) == []


async def test_show_allowed_commands(ctx: ToolContext) -> None:
    out = json.loads(await toolset(allow=("ls", "git")).call("show_allowed_commands", "{}", ctx))
    assert out["mode"] == "allowlist"
    assert out["allowed"] == ["ls", "git"]
    out = json.loads(await toolset(mode="unrestricted").call("show_allowed_commands", "", ctx))
    assert out["mode"] == "unrestricted"


async def test_env_has_no_keys_or_token(ctx: ToolContext) -> None:
    out = await run(toolset(mode="unrestricted"), ctx, command="env")
    env = dict(line.split("=", 1) for line in str(out["stdout"]).splitlines() if "=" in line)
    for name in ("OPENAI_API_KEY", "GROQ_API_KEY", "MY_PROVIDER_CREDENTIAL", "SORAT_TOKEN", "SORAT_HOME"):
        assert name not in env
    assert "sk-openai-secret" not in str(out["stdout"])
    assert "the-sorat-token" not in str(out["stdout"])
    assert env["PATH"] == SECRET_ENV["PATH"]
    assert env["LANG"] == "C.UTF-8"


def test_command_env_uses_the_process_environment_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-x")
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-y")
    env = command_env(os.environ)
    assert "OPENAI_API_KEY" not in env and "ANTHROPIC_API_KEY" not in env
    assert "PATH" in env


async def test_output_is_capped(ctx: ToolContext, home: Home) -> None:
    (home.workspace / "big.txt").write_text("x" * 100_000)
    out = await run(toolset(max_output_chars=1000), ctx, command="cat big.txt")
    assert str(out["stdout"]).startswith("x" * 1000)
    assert str(out["stdout"]).endswith("[truncated]")
    assert len(str(out["stdout"])) < 1100


async def _wait_gone(pids: list[int], deadline_s: float = 5.0) -> None:
    end = time.monotonic() + deadline_s
    while any(process_alive(p) for p in pids):
        assert time.monotonic() < end, f"still alive: {[p for p in pids if process_alive(p)]}"
        await asyncio.sleep(0.02)


async def test_timeout_kills_the_whole_process_group(ctx: ToolContext, home: Home) -> None:
    ts = toolset(mode="unrestricted", timeout_s=0.5)
    script = "sleep 100 & echo $! > bg.pid; echo $$ > sh.pid; sleep 100"
    started = time.monotonic()
    out = await run(ts, ctx, command="sh", args=["-c", script])
    assert time.monotonic() - started < 5
    assert out["timed_out"] is True
    assert out["exit_code"] == -9
    pids = [int((home.workspace / n).read_text()) for n in ("bg.pid", "sh.pid")]
    await _wait_gone(pids)


async def test_background_children_die_with_the_command(ctx: ToolContext, home: Home) -> None:
    ts = toolset(mode="unrestricted", timeout_s=30)
    started = time.monotonic()
    out = await run(ts, ctx, command="sh", args=["-c", "sleep 100 & echo $! > bg.pid; echo done"])
    assert time.monotonic() - started < 5  # does not wait for the background sleep holding stdout
    assert out["stdout"] == "done\n" and out["exit_code"] == 0
    await _wait_gone([int((home.workspace / "bg.pid").read_text())])


async def test_cancellation_kills_the_command(ctx: ToolContext, home: Home) -> None:
    ts = toolset(mode="unrestricted", timeout_s=60)
    task = asyncio.create_task(run(ts, ctx, command="sh", args=["-c", "echo $$ > sh.pid; exec sleep 100"]))
    pid_file = home.workspace / "sh.pid"
    end = time.monotonic() + 10
    while not (pid_file.exists() and pid_file.read_text().strip()):
        assert time.monotonic() < end
        await asyncio.sleep(0.02)
    pid = int(pid_file.read_text())
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await _wait_gone([pid])


async def test_missing_program(ctx: ToolContext) -> None:
    out = await run(toolset(mode="unrestricted"), ctx, command="no-such-program-xyz")
    assert "command not found" in str(out["error"])
    out = await run(toolset(allow=("no-such-program-xyz",)), ctx, command="no-such-program-xyz")
    assert "command not found" in str(out["error"])
