from __future__ import annotations

import plistlib
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sorat_daemon.desktop import autostart

CMD = ["/opt/sorat app/bin/sorat"]


@pytest.fixture
def xdg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private XDG_CONFIG_HOME, and no system-wide entries from the machine running the tests."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.setenv("XDG_CONFIG_DIRS", str(tmp_path / "etc-xdg"))
    return tmp_path / "config" / "autostart" / "sorat.desktop"


# --- Linux ----------------------------------------------------------------------------------------


def test_linux_enable_disable_are_idempotent(xdg: Path) -> None:
    assert not autostart.is_enabled(platform="linux")
    assert autostart.status(platform="linux") == f"disabled ({xdg} is absent)"

    assert autostart.enable(CMD, platform="linux") is True
    first = xdg.read_bytes()
    assert autostart.enable(CMD, platform="linux") is False
    assert xdg.read_bytes() == first
    assert autostart.is_enabled(platform="linux")

    assert autostart.disable(platform="linux") is True
    assert not xdg.exists()
    assert autostart.disable(platform="linux") is False
    assert not autostart.is_enabled(platform="linux")


def test_linux_entry_quotes_exec(xdg: Path) -> None:
    autostart.enable(["/opt/sorat app/bin/sorat", "--flag=100%"], platform="linux")
    text = xdg.read_text()
    assert text.startswith("[Desktop Entry]\nType=Application\nName=sorat\n")
    assert 'Exec="/opt/sorat app/bin/sorat" --flag=100%%\n' in text
    assert "Terminal=false\n" in text
    assert autostart.backend("linux").read() == (["/opt/sorat app/bin/sorat", "--flag=100%"], True)


def test_linux_default_config_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    monkeypatch.setenv("XDG_CONFIG_DIRS", str(tmp_path / "etc-xdg"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    autostart.enable(CMD, platform="linux")
    assert (tmp_path / "home" / ".config" / "autostart" / "sorat.desktop").is_file()


def test_linux_status_reads_what_is_there(xdg: Path) -> None:
    autostart.enable([sys.executable, "-m", "sorat_daemon"], platform="linux")
    assert autostart.status(platform="linux") == f"enabled: {xdg} runs {sys.executable} -m sorat_daemon"

    xdg.write_text(
        xdg.read_text().replace("X-GNOME-Autostart-enabled=true", "X-GNOME-Autostart-enabled=false")
    )
    assert not autostart.is_enabled(platform="linux")
    assert autostart.status(platform="linux") == f"disabled ({xdg} is switched off)"
    assert autostart.enable([sys.executable, "-m", "sorat_daemon"], platform="linux") is True
    assert autostart.is_enabled(platform="linux")

    autostart.enable(["/nowhere/sorat"], platform="linux")
    assert autostart.status(platform="linux").startswith("enabled, but /nowhere/sorat no longer exists")


def test_linux_hidden_entry_is_disabled(xdg: Path) -> None:
    xdg.parent.mkdir(parents=True)
    xdg.write_text("[Desktop Entry]\nType=Application\nName=sorat\nExec=sorat\nHidden=true\n")
    assert not autostart.is_enabled(platform="linux")


def test_linux_system_entry_is_hidden_not_uncovered(xdg: Path, tmp_path: Path) -> None:
    system = tmp_path / "etc-xdg" / "autostart" / "sorat.desktop"
    system.parent.mkdir(parents=True)
    system.write_text(f"[Desktop Entry]\nType=Application\nName=sorat\nExec={sys.executable}\n")
    assert autostart.is_enabled(platform="linux")
    assert autostart.status(platform="linux") == f"enabled: {system} runs {sys.executable}"

    assert autostart.disable(platform="linux") is True
    assert "Hidden=true" in xdg.read_text()
    assert not autostart.is_enabled(platform="linux")
    assert autostart.disable(platform="linux") is False
    assert system.is_file()

    autostart.enable(CMD, platform="linux")
    assert autostart.is_enabled(platform="linux")


@pytest.mark.skipif(
    shutil.which("desktop-file-validate") is None, reason="desktop-file-utils is not installed"
)
def test_linux_entry_passes_desktop_file_validate(xdg: Path) -> None:
    autostart.enable(["/opt/sorat app/bin/sorat", "$HOME", 'a"b'], platform="linux")
    out = subprocess.run(["desktop-file-validate", str(xdg)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "error" not in out.stdout.lower()


@settings(deadline=None)  # a loaded CI machine is slow, not wrong
@given(st.lists(st.text(st.characters(exclude_characters="\x00", exclude_categories=("Cs",))), min_size=1))
def test_exec_quote_round_trips(args: list[str]) -> None:
    value = autostart.exec_quote(args)
    assert "\n" not in value
    assert autostart.exec_split(value) == args


def test_exec_quote_follows_the_spec_examples() -> None:
    assert autostart.exec_quote(["/usr/bin/sorat"]) == "/usr/bin/sorat"
    assert autostart.exec_quote(["/a b/sorat"]) == '"/a b/sorat"'
    # a literal backslash inside a quoted argument is four backslashes in the file
    assert autostart.exec_quote(["C:\\x y"]) == '"C:\\\\\\\\x y"'
    assert autostart.exec_quote(["$HOME"]) == '"\\\\$HOME"'
    assert autostart.exec_quote([""]) == '""'


# --- macOS ----------------------------------------------------------------------------------------


@pytest.fixture
def mac_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("HOME", str(tmp_path))
    return tmp_path / "Library" / "LaunchAgents" / f"{autostart.LABEL}.plist"


def test_macos_launch_agent(mac_home: Path) -> None:
    assert not autostart.is_enabled(platform="darwin")
    assert autostart.enable(["/Applications/sorat.app/Contents/MacOS/sorat"], platform="darwin") is True
    plist = plistlib.loads(mac_home.read_bytes())
    assert plist == {
        "Label": autostart.LABEL,
        "ProgramArguments": ["/Applications/sorat.app/Contents/MacOS/sorat"],
        "RunAtLoad": True,
        "ProcessType": "Interactive",
    }
    assert "KeepAlive" not in plist
    assert autostart.is_enabled(platform="darwin")
    assert autostart.enable(["/Applications/sorat.app/Contents/MacOS/sorat"], platform="darwin") is False

    assert autostart.disable(platform="darwin") is True
    assert not mac_home.exists()
    assert autostart.disable(platform="darwin") is False


def test_macos_status_reads_the_plist(mac_home: Path) -> None:
    autostart.enable([sys.executable, "-m", "sorat_daemon"], platform="darwin")
    assert autostart.status(platform="darwin") == f"enabled: {mac_home} runs {sys.executable} -m sorat_daemon"

    plist = plistlib.loads(mac_home.read_bytes())
    mac_home.write_bytes(plistlib.dumps(plist | {"Disabled": True}))
    assert not autostart.is_enabled(platform="darwin")
    assert autostart.status(platform="darwin") == f"disabled ({mac_home} is switched off)"

    mac_home.write_bytes(b"not a plist")
    assert not autostart.is_enabled(platform="darwin")
    assert "names no program" in autostart.status(platform="darwin")
    assert autostart.enable([sys.executable], platform="darwin") is True
    assert autostart.is_enabled(platform="darwin")


def test_launchctl_is_never_called(mac_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError(f"ran {args}")

    monkeypatch.setattr(subprocess, "run", refuse)
    monkeypatch.setattr(subprocess, "Popen", refuse)
    autostart.enable(["/x"], platform="darwin")
    autostart.disable(platform="darwin")


# --- Windows --------------------------------------------------------------------------------------


class FakeKey:
    def __init__(self, values: dict[str, tuple[Any, int]]) -> None:
        self.values = values

    def __enter__(self) -> FakeKey:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


class FakeWinreg:
    """The few calls of the winreg module that autostart makes, over a dict of keys."""

    HKEY_CURRENT_USER = "HKCU"
    KEY_READ, KEY_SET_VALUE = 0x20019, 0x0002
    REG_SZ, REG_BINARY = 1, 3

    def __init__(self) -> None:
        self.keys: dict[str, dict[str, tuple[Any, int]]] = {}

    def OpenKey(self, root: str, path: str, reserved: int = 0, access: int = 0) -> FakeKey:
        assert root == "HKCU"
        if path not in self.keys:
            raise FileNotFoundError(2, "The system cannot find the file specified")
        return FakeKey(self.keys[path])

    def CreateKeyEx(self, root: str, path: str, reserved: int = 0, access: int = 0) -> FakeKey:
        assert root == "HKCU"
        return FakeKey(self.keys.setdefault(path, {}))

    def QueryValueEx(self, key: FakeKey, name: str) -> tuple[Any, int]:
        if name not in key.values:
            raise FileNotFoundError(2, "The system cannot find the file specified")
        return key.values[name]

    def SetValueEx(self, key: FakeKey, name: str, reserved: int, kind: int, value: Any) -> None:
        key.values[name] = (value, kind)

    def DeleteValue(self, key: FakeKey, name: str) -> None:
        if name not in key.values:
            raise FileNotFoundError(2, "The system cannot find the file specified")
        del key.values[name]


def test_windows_run_value() -> None:
    reg = FakeWinreg()
    win = {"platform": "win32", "winreg": reg}
    assert not autostart.is_enabled(**win)
    assert autostart.status(**win) == f"disabled (HKCU\\{autostart.RUN_KEY}\\sorat is absent)"

    exe = ["C:\\Program Files\\sorat\\sorat-tray.exe"]
    assert autostart.enable(exe, **win) is True
    assert reg.keys[autostart.RUN_KEY] == {
        "sorat": ('"C:\\Program Files\\sorat\\sorat-tray.exe"', reg.REG_SZ)
    }
    assert autostart.is_enabled(**win)
    assert autostart.enable(exe, **win) is False
    assert autostart.status(**win) == (
        f'enabled: HKCU\\{autostart.RUN_KEY}\\sorat runs "C:\\Program Files\\sorat\\sorat-tray.exe"'
    )

    assert autostart.disable(**win) is True
    assert reg.keys[autostart.RUN_KEY] == {}
    assert autostart.disable(**win) is False
    assert not autostart.is_enabled(**win)


def test_windows_switched_off_in_task_manager() -> None:
    reg = FakeWinreg()
    win = {"platform": "win32", "winreg": reg}
    autostart.enable(["C:\\sorat\\sorat.exe"], **win)
    reg.keys[autostart.APPROVED_KEY] = {"sorat": (b"\x03" + bytes(11), reg.REG_BINARY)}
    assert not autostart.is_enabled(**win)
    assert "switched off" in autostart.status(**win)

    assert autostart.enable(["C:\\sorat\\sorat.exe"], **win) is True  # allowed again
    assert autostart.is_enabled(**win)
    assert reg.keys[autostart.APPROVED_KEY] == {}


# --- the command that autostart runs --------------------------------------------------------------


def test_launch_command_prefers_this_environments_script(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    python = tmp_path / "venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.touch()
    monkeypatch.setattr(sys, "executable", str(python))
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert autostart.launch_command("linux") == [str(python), "-m", "sorat_daemon"]
    (python.parent / "sorat").touch()
    assert autostart.launch_command("linux") == [str(python.parent / "sorat")]


def test_launch_command_of_a_frozen_app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    exe = tmp_path / "sorat" / "sorat.exe"
    exe.parent.mkdir()
    exe.touch()
    monkeypatch.setattr(sys, "executable", str(exe))
    monkeypatch.setattr(sys, "frozen", True, raising=False)
    assert autostart.launch_command("linux") == [str(exe)]
    assert autostart.launch_command("win32") == [str(exe)]
    (exe.parent / "sorat-tray.exe").touch()  # the windowed build: no console at login
    assert autostart.launch_command("win32") == [str(exe.parent / "sorat-tray.exe")]
