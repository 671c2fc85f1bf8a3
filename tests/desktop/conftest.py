"""Fixtures shared by the desktop tests: a fake daemon, pystray on its dummy backend, no session bus, a
private XDG_CONFIG_HOME for start at login, and the tray's log records."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from sorat_daemon.paths import Home
from tests.desktop.fakes import FakeDaemon


@pytest.fixture
def no_session_bus(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No session D-Bus, whatever the machine running the tests has: the tray picks pystray."""
    monkeypatch.delenv("DBUS_SESSION_BUS_ADDRESS", raising=False)
    runtime = tmp_path / "runtime"
    runtime.mkdir(exist_ok=True)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))


@pytest.fixture
def pystray(monkeypatch: pytest.MonkeyPatch, no_session_bus: None) -> ModuleType:
    """pystray on its dummy backend, whatever this machine has (and a display to pass run_tray's check)."""
    monkeypatch.setenv("PYSTRAY_BACKEND", "dummy")
    monkeypatch.setenv("DISPLAY", ":0")
    monkeypatch.delitem(sys.modules, "pystray", raising=False)
    import pystray

    return pystray


@pytest.fixture
def daemon(tmp_path: Path) -> FakeDaemon:
    home = Home(tmp_path / "home")
    home.root.mkdir()
    home.token.write_text("sk-sorat-test-token\n")
    return FakeDaemon(home)


@pytest.fixture
def xdg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("XDG_CONFIG_DIRS", str(tmp_path / "xdg-dirs"))
    return tmp_path / "xdg" / "autostart" / "sorat.desktop"


@pytest.fixture
def tray_log() -> Iterator[list[logging.LogRecord]]:
    """The tray's log records (the app's logger may not propagate to pytest's handler)."""
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler, logger = Keep(), logging.getLogger("sorat.tray")
    logger.addHandler(handler)
    old_level = logger.level
    logger.setLevel(logging.INFO)
    yield records
    logger.removeHandler(handler)
    logger.setLevel(old_level)
