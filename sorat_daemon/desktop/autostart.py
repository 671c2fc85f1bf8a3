"""Start at login, per OS, with the standard library only.

- Linux and other XDG desktops: ``$XDG_CONFIG_HOME/autostart/sorat.desktop`` (freedesktop Autostart spec).
- macOS: ``~/Library/LaunchAgents/<LABEL>.plist`` with ``RunAtLoad``; launchd reads it at the next login
  (no ``launchctl load``, and no ``KeepAlive``: a Quit from the menu stays quit).
- Windows: the ``sorat`` value under ``HKCU\\Software\\Microsoft\\Windows\\CurrentVersion\\Run``.

``enable``/``disable`` are idempotent and return whether they changed anything; ``is_enabled`` and ``status``
read what is really on disk or in the registry, so the tray's check item and ``sorat autostart status``
agree with what the OS will do. ``platform`` and ``winreg`` are parameters so that every OS's code runs in
tests anywhere.
"""

from __future__ import annotations

import os
import plistlib
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Protocol

from sorat_daemon.desktop.images import ASSETS

APP = "sorat"
LABEL = "dev.sorat.daemon"
RUN_KEY = r"Software\Microsoft\Windows\CurrentVersion\Run"
# Task Manager's "Disable" on a Run entry writes here instead of deleting the Run value.
APPROVED_KEY = r"Software\Microsoft\Windows\CurrentVersion\Explorer\StartupApproved\Run"
ICON = ASSETS / "sorat-running-256.png"


def launch_command(platform: str | None = None) -> list[str]:
    """The command that starts the sorat that is running now (tray + daemon)."""
    platform = platform or sys.platform
    exe = Path(sys.executable)
    if getattr(sys, "frozen", False):  # a PyInstaller build: the app is the executable
        windowed = exe.with_name("sorat-tray.exe")
        return [str(windowed if platform == "win32" and windowed.is_file() else exe)]
    if platform == "win32":
        # pythonw has no console window to pop up at every login
        pythonw = exe.with_name("pythonw.exe")
        return [str(pythonw if pythonw.is_file() else exe), "-m", "sorat_daemon"]
    beside = exe.parent / APP  # the script of this very environment (a venv, pipx), not another on PATH
    if beside.is_file():
        return [str(beside)]
    found = shutil.which(APP)
    if found:
        return [os.path.abspath(found)]
    return [str(exe), "-m", "sorat_daemon"]


class Backend(Protocol):
    where: str

    def read(self) -> tuple[list[str] | str | None, bool]:
        """(the command found, whether the OS will run it at login); (None, False) when absent."""
        ...

    def write(self, command: list[str]) -> bool: ...

    def remove(self) -> bool: ...


def backend(platform: str | None = None, winreg: Any = None) -> Backend:
    platform = platform or sys.platform
    if platform == "win32":
        if winreg is None:
            import winreg  # Windows only
        return WindowsRun(winreg)
    if platform == "darwin":
        return LaunchAgent(Path.home() / "Library" / "LaunchAgents" / f"{LABEL}.plist")
    return XdgAutostart.from_env()


def enable(command: list[str] | None = None, *, platform: str | None = None, winreg: Any = None) -> bool:
    return backend(platform, winreg).write(command or launch_command(platform))


def disable(*, platform: str | None = None, winreg: Any = None) -> bool:
    return backend(platform, winreg).remove()


def is_enabled(*, platform: str | None = None, winreg: Any = None) -> bool:
    return backend(platform, winreg).read()[1]


def status(*, platform: str | None = None, winreg: Any = None) -> str:
    b = backend(platform, winreg)
    command, enabled = b.read()
    if command is None:
        return f"disabled ({b.where} is absent)"
    if not command:
        return f"disabled ({b.where} is there but names no program it could run)"
    if not enabled:
        return f"disabled ({b.where} is switched off)"
    shown = command if isinstance(command, str) else subprocess.list2cmdline(command)
    program = command if isinstance(command, str) else command[0] if command else ""
    if isinstance(command, list) and program and not Path(program).exists():
        return f"enabled, but {program} no longer exists ({b.where}); run `sorat autostart enable` again"
    return f"enabled: {b.where} runs {shown}"


# --- Linux and other XDG desktops ---------------------------------------------------------------

_RESERVED = frozenset(" \t\n\"'\\><~|&;$*?#()`")
_STRING_ESCAPES = {"s": " ", "n": "\n", "t": "\t", "r": "\r", "\\": "\\"}


def exec_quote(args: list[str]) -> str:
    """``args`` as the value of a desktop entry's ``Exec`` key (Desktop Entry spec, "The Exec key")."""
    out = []
    for arg in args:
        arg = arg.replace("%", "%%")
        if not arg or any(c in _RESERVED for c in arg):
            arg = '"' + "".join("\\" + c if c in '"`$\\' else c for c in arg) + '"'
        out.append(arg)
    # the string type's own escapes apply on top of the quoting rule: a literal backslash becomes four
    return " ".join(out).replace("\\", "\\\\").replace("\n", "\\n").replace("\t", "\\t").replace("\r", "\\r")


def exec_split(value: str) -> list[str]:
    """The inverse of :func:`exec_quote` (field codes other than ``%%`` are kept as they are)."""
    unescaped, i = [], 0
    while i < len(value):
        c = value[i]
        if c == "\\" and i + 1 < len(value) and value[i + 1] in _STRING_ESCAPES:
            unescaped.append(_STRING_ESCAPES[value[i + 1]])
            i += 2
        else:
            unescaped.append(c)
            i += 1
    text = "".join(unescaped)
    args: list[str] = []
    current: list[str] | None = None
    quoted = False
    i = 0
    while i < len(text):
        c = text[i]
        if quoted:
            if c == "\\" and i + 1 < len(text):
                current.append(text[i + 1])  # type: ignore[union-attr]
                i += 1
            elif c == '"':
                quoted = False
            else:
                current.append(c)  # type: ignore[union-attr]
        elif c == " ":
            if current is not None:
                args.append("".join(current))
                current = None
        else:
            current = current if current is not None else []
            if c == '"':
                quoted = True
            else:
                current.append(c)
        i += 1
    if current is not None:
        args.append("".join(current))
    return [a.replace("%%", "%") for a in args]


def _escape_string(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace("\t", "\\t").replace("\r", "\\r")


def _desktop_entry(command: list[str]) -> str:
    return (
        "[Desktop Entry]\n"
        "Type=Application\n"
        f"Name={APP}\n"
        "Comment=Local agent daemon with an OpenAI-compatible API, in the tray\n"
        f"Exec={exec_quote(command)}\n"
        f"Icon={_escape_string(str(ICON)) if ICON.is_file() else APP}\n"
        "Terminal=false\n"
        "Categories=Utility;\n"
        "X-GNOME-Autostart-enabled=true\n"
    )


def _read_entry(path: Path) -> dict[str, str] | None:
    """The ``[Desktop Entry]`` keys of ``path`` (later groups are ignored), or None if unreadable."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    keys: dict[str, str] = {}
    group = None
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            group = line
        elif group == "[Desktop Entry]" and "=" in line:
            key, _, value = line.partition("=")
            keys.setdefault(key.strip(), value.strip())
    return keys


class XdgAutostart:
    def __init__(self, config_home: Path, config_dirs: list[Path]) -> None:
        self.path = config_home / "autostart" / f"{APP}.desktop"
        # system-wide entries (a distribution package may install one) apply unless the user's file hides them
        self.system = [d / "autostart" / f"{APP}.desktop" for d in config_dirs]
        self.where = str(self.path)

    @classmethod
    def from_env(cls) -> XdgAutostart:
        home = os.environ.get("XDG_CONFIG_HOME", "")
        config_home = Path(home) if os.path.isabs(home) else Path.home() / ".config"
        dirs = [Path(d) for d in os.environ.get("XDG_CONFIG_DIRS", "/etc/xdg").split(":") if os.path.isabs(d)]
        return cls(config_home, dirs)

    def _effective(self) -> tuple[Path, dict[str, str]] | None:
        for path in (self.path, *self.system):
            keys = _read_entry(path)
            if keys is not None:
                return path, keys
        return None

    def read(self) -> tuple[list[str] | str | None, bool]:
        found = self._effective()
        if found is None:
            return None, False
        path, keys = found
        self.where = str(path)
        enabled = (
            keys.get("Hidden", "false").lower() != "true"
            and keys.get("X-GNOME-Autostart-enabled", "true").lower() != "false"
            and "Exec" in keys
        )
        return exec_split(keys.get("Exec", "")), enabled

    def write(self, command: list[str]) -> bool:
        text = _desktop_entry(command)
        try:
            if self.path.read_text(encoding="utf-8") == text:
                return False
        except (OSError, UnicodeDecodeError):
            pass
        _write_atomic(self.path, text.encode())
        return True

    def remove(self) -> bool:
        system = any(_read_entry(p) is not None for p in self.system)
        if system:
            # deleting ours would uncover the system entry: hide it instead, as the spec says
            text = f"[Desktop Entry]\nType=Application\nName={APP}\nHidden=true\n"
            try:
                if self.path.read_text(encoding="utf-8") == text:
                    return False
            except (OSError, UnicodeDecodeError):
                pass
            _write_atomic(self.path, text.encode())
            return True
        try:
            self.path.unlink()
        except FileNotFoundError:
            return False
        return True


# --- macOS ----------------------------------------------------------------------------------------


class LaunchAgent:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.where = str(path)

    def read(self) -> tuple[list[str] | str | None, bool]:
        try:
            with open(self.path, "rb") as f:
                plist = plistlib.load(f)
        except FileNotFoundError:
            return None, False
        except (OSError, plistlib.InvalidFileException, ValueError):
            return "", False  # there, but launchd cannot use it either
        if not isinstance(plist, dict):
            return "", False
        args = plist.get("ProgramArguments") or ([plist["Program"]] if "Program" in plist else [])
        command = [str(a) for a in args] if isinstance(args, list) else []
        enabled = plist.get("RunAtLoad") is True and plist.get("Disabled") is not True and bool(command)
        return command, enabled

    def write(self, command: list[str]) -> bool:
        plist = {
            "Label": LABEL,
            "ProgramArguments": command,
            "RunAtLoad": True,
            "ProcessType": "Interactive",  # a GUI app: launchd must not throttle it like a background job
        }
        data = plistlib.dumps(plist)
        try:
            if self.path.read_bytes() == data:
                return False
        except OSError:
            pass
        _write_atomic(self.path, data)
        return True

    def remove(self) -> bool:
        try:
            self.path.unlink()
        except FileNotFoundError:
            return False
        return True


# --- Windows --------------------------------------------------------------------------------------


class WindowsRun:
    def __init__(self, winreg: Any) -> None:
        self.reg = winreg
        self.where = f"HKCU\\{RUN_KEY}\\{APP}"

    def _query(self, key_path: str) -> Any:
        reg = self.reg
        try:
            with reg.OpenKey(reg.HKEY_CURRENT_USER, key_path, 0, reg.KEY_READ) as key:
                return reg.QueryValueEx(key, APP)[0]
        except FileNotFoundError:
            return None

    def _delete(self, key_path: str) -> bool:
        reg = self.reg
        try:
            with reg.OpenKey(reg.HKEY_CURRENT_USER, key_path, 0, reg.KEY_SET_VALUE) as key:
                reg.DeleteValue(key, APP)
        except FileNotFoundError:
            return False
        return True

    def read(self) -> tuple[list[str] | str | None, bool]:
        value = self._query(RUN_KEY)
        if not isinstance(value, str):
            return None, False
        approved = self._query(APPROVED_KEY)
        # the first byte is 2 (or 6) when allowed, 3 (or 7) when switched off in Task Manager
        switched_off = isinstance(approved, bytes) and len(approved) > 0 and approved[0] & 1 == 1
        return value, not switched_off

    def write(self, command: list[str]) -> bool:
        reg = self.reg
        value = subprocess.list2cmdline(command)
        current, enabled = self.read()
        if current == value and enabled:
            return False
        with reg.CreateKeyEx(reg.HKEY_CURRENT_USER, RUN_KEY, 0, reg.KEY_SET_VALUE) as key:
            reg.SetValueEx(key, APP, 0, reg.REG_SZ, value)
        self._delete(APPROVED_KEY)  # an absent StartupApproved value means allowed
        return True

    def remove(self) -> bool:
        removed = self._delete(RUN_KEY)
        self._delete(APPROVED_KEY)
        return removed


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
