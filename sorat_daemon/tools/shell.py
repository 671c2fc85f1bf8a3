"""run_command and show_allowed_commands: programs run without a shell, in workspace/, on a leash.

What the leash is: no shell ever (``create_subprocess_exec``; pipes, ``;``, ``$()`` and ``>`` are plain
characters); in allowlist mode only listed programs, named (a path to a program is refused), and no
argument that is a path leading outside workspace/; an environment without provider keys or sorat's
token; the whole process group killed at the timeout, on cancellation, and when the command exits
(so nothing it started in the background outlives the call); output capped.

What it is not: a sandbox. An allowed program can still do whatever it does with paths inside
workspace/ (and ``grep -r`` follows what it follows). The README says so.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import signal
import subprocess
import sys
from collections.abc import Collection, Mapping
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

from sorat_daemon.tools.registry import Tool, ToolContext, ToolError, tool
from sorat_daemon.tools.settings import RunCommandSettings

_WINDOWS = sys.platform == "win32"
_READ_CHUNK = 65536
_REAP_TIMEOUT_S = 5.0

# What a program needs to behave (locale, paths, temp dir); nothing else is passed on.
_KEEP_ENV = (
    "PATH", "HOME", "USER", "LOGNAME", "LANG", "LANGUAGE", "TZ", "TMPDIR", "TEMP", "TMP", "SHELL",
    "SYSTEMROOT", "SYSTEMDRIVE", "WINDIR", "COMSPEC", "PATHEXT", "USERPROFILE", "APPDATA",
    "LOCALAPPDATA", "PROGRAMDATA", "PROGRAMFILES", "PROGRAMFILES(X86)", "NUMBER_OF_PROCESSORS",
)  # fmt: skip
_SECRET_SUFFIXES = ("_API_KEY", "_APIKEY", "_KEY", "_TOKEN", "_SECRET", "_PASSWORD", "_PASSWD")


def is_secret_name(name: str, extra: Collection[str] = ()) -> bool:
    upper = name.upper()
    return upper.startswith("SORAT") or upper.endswith(_SECRET_SUFFIXES) or name in extra or upper in extra


def command_env(base: Mapping[str, str], secret_names: Collection[str] = ()) -> dict[str, str]:
    """A minimal environment for a command: locale and paths, never a key, token or secret."""
    env = {k: v for k, v in base.items() if (k.upper() in _KEEP_ENV or k.startswith("LC_"))}
    env = {k: v for k, v in env.items() if not is_secret_name(k, secret_names)}
    env.update(TERM="dumb", NO_COLOR="1", PAGER="cat", GIT_PAGER="cat", GIT_TERMINAL_PROMPT="0")
    return env


def split_command(command: str, args: list[str] | None) -> list[str]:
    try:
        argv = shlex.split(command, posix=True)
    except ValueError as e:
        raise ToolError(
            f"cannot split the command ({e}); pass the program as command and its arguments as args"
        ) from None
    if args is not None:
        argv += args
    if not argv:
        raise ToolError("empty command")
    return argv


def _is_path_like_program(program: str) -> bool:
    return "/" in program or "\\" in program or program in (".", "..")


def _leaves_workspace(value: str, workspace: Path) -> bool:
    """Whether ``value`` read as a path leads outside ``workspace`` (absolute, ``..``, ``~``, a symlink)."""
    if not value:
        return False
    if value.startswith("~"):
        return True
    if PurePosixPath(value).is_absolute():
        return True
    # Backslashes and drives are path syntax on Windows only (elsewhere "\\d" is a regex, "a:b" a word).
    if _WINDOWS and (
        PureWindowsPath(value).is_absolute() or PureWindowsPath(value).drive or value[0] == "\\"
    ):
        return True
    parts = (value.replace("\\", "/") if _WINDOWS else value).split("/")
    if ".." in parts:
        return True
    try:
        resolved = (workspace / value).resolve()
    except (OSError, RuntimeError, ValueError):
        return True
    return not resolved.is_relative_to(workspace.resolve())


def _path_candidates(arg: str) -> list[str]:
    """The parts of an argument that a program may read as a path: the argument, ``--opt=VALUE``'s
    value, and ``-xVALUE``'s value."""
    if not arg.startswith("-") or arg in ("-", "--"):
        return [arg]
    out = []
    if "=" in arg:
        out.append(arg.split("=", 1)[1])
    if not arg.startswith("--") and len(arg) > 2:
        out.append(arg[2:])
    return out


# grep -R (--dereference-recursive) follows every symlink it meets on its way down, so one link in
# the workspace pointing out (at the token, say) would let it read what the path checks refuse;
# -r follows only the links named on the command line, which those checks already see.
_GREP_VALUE_OPTIONS = frozenset("efmABCdD")  # short options whose value may follow in the same word


def _follows_all_symlinks(argv: list[str]) -> bool:
    if argv[0] not in ("grep", "egrep", "fgrep", "rgrep"):
        return False
    for arg in argv[1:]:
        if arg == "--":
            break
        if arg.startswith("--"):
            name = arg[2:].split("=", 1)[0]
            if len(name) >= 3 and "dereference-recursive".startswith(name):
                return True
        elif arg.startswith("-"):
            for flag in arg[1:]:
                if flag == "R":
                    return True
                if flag in _GREP_VALUE_OPTIONS:
                    break
    return False


def check_allowed(argv: list[str], settings: RunCommandSettings, workspace: Path) -> None:
    program = argv[0]
    allowed = ", ".join(settings.allow) or "none"
    if _is_path_like_program(program):
        raise ToolError(
            f"refused: {program!r} is a path; in allowlist mode give a program's name (allowed: {allowed})"
        )
    if program not in settings.allow:
        raise ToolError(f"refused: {program!r} is not an allowed command (allowed: {allowed})")
    for arg in argv[1:]:
        for value in _path_candidates(arg):
            if _leaves_workspace(value, workspace):
                raise ToolError(
                    f"refused: the argument {arg!r} is a path leading outside the workspace; "
                    "use paths relative to the workspace, without .."
                )
    if _follows_all_symlinks(argv):
        raise ToolError(
            "refused: grep -R follows symlinks out of the workspace; use -r, which does not follow them"
        )


class _Capped:
    """Keeps the first ``limit`` characters (as bytes, 4 per char at most) and drains the rest."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.data = bytearray()
        self.truncated = False

    async def read(self, stream: asyncio.StreamReader) -> None:
        while chunk := await stream.read(_READ_CHUNK):
            room = self.limit * 4 - len(self.data)
            if room > 0:
                self.data += chunk[:room]
            if len(chunk) > room:
                self.truncated = True

    def text(self) -> str:
        text = self.data.decode("utf-8", errors="replace")
        if len(text) > self.limit or self.truncated:
            return text[: self.limit] + "\n[truncated]"
        return text


async def _wait_exit(proc: asyncio.subprocess.Process, timeout_s: float) -> bool:
    """Whether the process exited within the timeout.

    Polls ``returncode`` rather than awaiting ``proc.wait()``, which (3.11+) also waits for the pipes
    to close: a background child holding stdout would make a finished command look hung.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    interval = 0.005
    while proc.returncode is None:
        left = deadline - loop.time()
        if left <= 0:
            return False
        await asyncio.sleep(min(interval, left))
        interval = min(interval * 2, 0.1)
    return True


def _kill_group(proc: asyncio.subprocess.Process) -> None:
    if _WINDOWS:  # pragma: no cover - no process groups; take the tree down with taskkill
        with contextlib.suppress(OSError):
            subprocess.run(
                ["taskkill", "/F", "/T", "/PID", str(proc.pid)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                check=False,
            )
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        return
    # The process is its own group leader (start_new_session); its pid is the group id.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


async def run(
    argv: list[str],
    *,
    cwd: Path,
    env: Mapping[str, str],
    timeout_s: float,
    max_output_chars: int,
) -> dict[str, Any]:
    """Run ``argv`` (no shell) and collect its capped output; the group dies with the call."""
    group: dict[str, Any] = {"start_new_session": True}
    if _WINDOWS:  # pragma: no cover
        group = {"creationflags": getattr(subprocess, "CREATE_NEW_PROCESS_GROUP", 0)}
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            cwd=cwd,
            env=dict(env),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            **group,
        )
    except FileNotFoundError:
        raise ToolError(f"command not found: {argv[0]}") from None
    except PermissionError:
        raise ToolError(f"permission denied: {argv[0]}") from None
    except OSError as e:
        raise ToolError(f"cannot run {argv[0]}: {e.strerror or e}") from None

    assert proc.stdout is not None and proc.stderr is not None
    out, err = _Capped(max_output_chars), _Capped(max_output_chars)
    readers = asyncio.gather(out.read(proc.stdout), err.read(proc.stderr))
    timed_out = False
    try:
        timed_out = not await _wait_exit(proc, timeout_s)
    finally:
        # Also after a normal exit: whatever the command left running in its group goes with it.
        _kill_group(proc)
        try:
            await asyncio.wait_for(asyncio.shield(proc.wait()), _REAP_TIMEOUT_S)
        except (TimeoutError, asyncio.CancelledError):
            pass
        try:
            # Pipes close once every holder is dead; a process that left the group may still hold them.
            await asyncio.wait_for(asyncio.shield(readers), _REAP_TIMEOUT_S)
        except (TimeoutError, asyncio.CancelledError):
            readers.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await readers
    result: dict[str, Any] = {
        "command": shlex.join(argv),
        "stdout": out.text(),
        "stderr": err.text(),
        "exit_code": proc.returncode,
    }
    if timed_out:
        result["timed_out"] = True
        result["stderr"] = (result["stderr"] + f"\n[killed after {timeout_s:g} s]").lstrip("\n")
    return result


def make_tools(settings: RunCommandSettings, *, secret_env_names: Collection[str] = ()) -> list[Tool]:
    """The shell tools for these settings (none when disabled)."""
    if settings.mode == "disabled":
        return []
    secrets = frozenset(secret_env_names)

    @tool(timeout_s=settings.timeout_s + 2 * _REAP_TIMEOUT_S + 5)
    async def run_command(command: str, args: list[str] | None = None, *, ctx: ToolContext) -> dict[str, Any]:
        """Run a program in the workspace folder and return its output (stdout, stderr, exit code).

        There is no shell: pipes, redirections, ;, && and $() are not interpreted. Call
        show_allowed_commands to see which programs may run.

        Args:
            command: the program, or a whole command line split like a shell would (quotes respected)
            args: the program's arguments, one per item; when given, no splitting is needed
        """
        argv = split_command(command, args)
        workspace = ctx.home.workspace
        workspace.mkdir(parents=True, exist_ok=True)
        if settings.mode == "allowlist":
            check_allowed(argv, settings, workspace)
        env = command_env(os.environ if ctx.env is None else ctx.env, secrets)
        return await run(
            argv,
            cwd=workspace,
            env=env,
            timeout_s=settings.timeout_s,
            max_output_chars=settings.max_output_chars,
        )

    @tool(timeout_s=10)
    def show_allowed_commands() -> dict[str, Any]:
        """Show which programs run_command may run, and its limits."""
        info: dict[str, Any] = {"mode": settings.mode}
        if settings.mode == "allowlist":
            info["allowed"] = list(settings.allow)
            info["rules"] = (
                "programs by name only; arguments that are paths must stay inside the workspace "
                "(no absolute paths, no ..); no shell"
            )
        else:
            info["allowed"] = "any program"
            info["rules"] = "no shell: run one program per call"
        info["timeout_s"] = settings.timeout_s
        info["max_output_chars"] = settings.max_output_chars
        return info

    return [run_command, show_allowed_commands]
