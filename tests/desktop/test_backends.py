"""Which tray run_tray shows, and the headless fallbacks, each with its one log line, when it can show none.
(The StatusNotifierItem's side of the choice, on a real bus, is in test_sni_tray.py.)"""

from __future__ import annotations

import logging
import socket
import subprocess
import sys
import threading
from pathlib import Path
from types import ModuleType

import pytest

from sorat_daemon.desktop import backends, tray
from tests.desktop.fakes import FakeDaemon

# --- headless fallback ----------------------------------------------------------------------------


@pytest.mark.skipif(sys.platform in ("win32", "darwin"), reason="those always have a display")
def test_no_display_and_no_bus_serves_headless(
    daemon: FakeDaemon,
    monkeypatch: pytest.MonkeyPatch,
    tray_log: list[logging.LogRecord],
    no_session_bus: None,
) -> None:
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    monkeypatch.delenv("PYSTRAY_BACKEND", raising=False)
    assert tray.run_tray(daemon) is False
    assert daemon.calls == []
    assert [r.getMessage() for r in tray_log] == [
        "no tray: no session D-Bus (DBUS_SESSION_BUS_ADDRESS is not set, $XDG_RUNTIME_DIR/bus is absent) "
        "and no display (neither DISPLAY nor WAYLAND_DISPLAY is set); serving headless (a tray needs a panel "
        "that hosts StatusNotifierItems: KDE, XFCE, Cinnamon, MATE, LXQt and waybar show them; GNOME needs "
        "the AppIndicator and KStatusNotifierItem Support extension)"
    ]


@pytest.mark.skipif(sys.platform in ("win32", "darwin"), reason="those always have a display")
def test_pystray_asked_for_without_a_display_serves_headless(
    daemon: FakeDaemon, monkeypatch: pytest.MonkeyPatch, tray_log: list[logging.LogRecord]
) -> None:
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    monkeypatch.setenv("PYSTRAY_BACKEND", "xorg")  # no StatusNotifierItem then, bus or not
    assert tray.run_tray(daemon) is False
    assert daemon.calls == []
    assert [r.getMessage() for r in tray_log] == [
        "no tray: no display (neither DISPLAY nor WAYLAND_DISPLAY is set); serving headless"
    ]


@pytest.mark.skipif(sys.platform != "linux", reason="the X11 backend")
# python-xlib leaves the sockets of a failed connection to the garbage collector
@pytest.mark.filterwarnings("ignore::ResourceWarning", "ignore::pytest.PytestUnraisableExceptionWarning")
def test_unreachable_x_server_serves_headless(
    daemon: FakeDaemon, monkeypatch: pytest.MonkeyPatch, tray_log: list[logging.LogRecord]
) -> None:
    pytest.importorskip("Xlib")
    # pystray picks its backend while it is imported, and the X11 one raises Xlib's errors, not ImportError
    monkeypatch.setenv("DISPLAY", ":9876")
    monkeypatch.setenv("PYSTRAY_BACKEND", "xorg")
    monkeypatch.delitem(sys.modules, "pystray", raising=False)
    assert tray.run_tray(daemon) is False
    assert daemon.calls == []
    [record] = tray_log
    assert record.getMessage().startswith(
        "no tray: the tray backend failed to load (DisplayConnectionError: "
    )
    assert record.getMessage().endswith("; serving headless")


def test_unknown_backend_serves_headless(
    daemon: FakeDaemon, monkeypatch: pytest.MonkeyPatch, tray_log: list[logging.LogRecord]
) -> None:
    monkeypatch.setenv("DISPLAY", ":0")
    monkeypatch.setenv("PYSTRAY_BACKEND", "nonesuch")
    monkeypatch.delitem(sys.modules, "pystray", raising=False)
    assert tray.run_tray(daemon) is False
    assert [r.getMessage() for r in tray_log] == [
        "no tray: the tray backend failed to load (ImportError: unknown backend: 'nonesuch'); "
        "serving headless"
    ]


def test_importing_tray_loads_no_gui_library() -> None:
    gui = "{'pystray', 'PIL', 'pyperclip', 'Xlib', 'dbus_fast'}"
    code = f"import sys, sorat_daemon.desktop.tray; print(sorted({gui} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_the_session_bus_address(tmp_path: Path) -> None:
    assert backends.session_bus_address({"DBUS_SESSION_BUS_ADDRESS": "unix:path=/x"}) == "unix:path=/x"
    runtime = tmp_path / "run user"
    runtime.mkdir()
    assert backends.session_bus_address({"XDG_RUNTIME_DIR": str(runtime)}) is None
    (runtime / "bus").write_text("")  # not a socket
    assert backends.session_bus_address({"XDG_RUNTIME_DIR": str(runtime)}) is None
    (runtime / "bus").unlink()
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(str(runtime / "bus"))
        # systemd's user bus; a space in the path is escaped as D-Bus addresses want
        assert backends.session_bus_address({"XDG_RUNTIME_DIR": str(runtime)}) == (
            f"unix:path={str(runtime).replace(' ', '%20')}/bus"
        )
    assert backends.session_bus_address({}) is None


@pytest.mark.skipif(sys.platform in ("win32", "darwin"), reason="the session D-Bus is a Linux thing")
def test_a_bus_that_cannot_be_used_is_said_so(
    daemon: FakeDaemon, tmp_path: Path, tray_log: list[logging.LogRecord]
) -> None:
    pytest.importorskip("dbus_fast")
    nowhere = f"unix:path={tmp_path / 'no-bus-here'}"
    assert tray.run_tray(daemon, env={"DBUS_SESSION_BUS_ADDRESS": nowhere}) is False
    assert daemon.calls == []
    [record] = tray_log
    message = record.getMessage()
    assert message.startswith(f"no tray: the session D-Bus at {nowhere} cannot be used (FileNotFoundError: ")
    assert "and no display (neither DISPLAY nor WAYLAND_DISPLAY is set); serving headless" in message
    # nothing of the failed connection is left behind: no thread, no open socket
    assert not [t for t in threading.enumerate() if t.name == "sorat-sni" and t.is_alive()]


@pytest.mark.parametrize("platform", ["darwin", "win32"])
def test_macos_and_windows_keep_pystray(
    pystray: ModuleType, daemon: FakeDaemon, tmp_path: Path, platform: str
) -> None:
    """A session bus in the environment changes nothing there: no D-Bus is tried."""
    from sorat_daemon.desktop.menu import TrayMenu
    from sorat_daemon.desktop.pystray_tray import PystrayTray

    with socket.socket(socket.AF_UNIX) as bus:  # a "bus" that notes whether anyone connects
        bus.bind(str(tmp_path / "bus"))
        bus.listen()
        bus.setblocking(False)
        env = {"DBUS_SESSION_BUS_ADDRESS": f"unix:path={tmp_path / 'bus'}"}
        backend = backends.choose(
            TrayMenu(daemon, quit=lambda: None), threading.Event(), env, platform=platform
        )
        assert isinstance(backend, PystrayTray)
        with pytest.raises(BlockingIOError):
            bus.accept()
