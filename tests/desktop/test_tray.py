"""Which tray run_tray shows, and the headless fallbacks when it can show none."""

from __future__ import annotations

import logging
import subprocess
import sys

import pytest

from sorat_daemon.desktop import tray
from tests.desktop.fakes import FakeDaemon

# --- headless fallback ----------------------------------------------------------------------------


@pytest.mark.skipif(sys.platform in ("win32", "darwin"), reason="those always have a display")
def test_no_display_serves_headless(
    daemon: FakeDaemon, monkeypatch: pytest.MonkeyPatch, tray_log: list[logging.LogRecord]
) -> None:
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
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
    gui = "{'pystray', 'PIL', 'pyperclip', 'Xlib'}"
    code = f"import sys, sorat_daemon.desktop.tray; print(sorted({gui} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
