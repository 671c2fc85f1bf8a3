"""What the menu's items do on the desktop: the clipboard in the background, the browser, the file manager."""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

import pytest

from sorat_daemon.desktop import actions
from tests.desktop.fakes import Recorder


def test_clipboard_copies_in_the_background() -> None:
    told, copied = Recorder(), Recorder()
    actions.copy_to_clipboard("tok", told, copy_text=copied)
    assert told.event.wait(5)
    assert copied.calls == ["tok"]
    assert told.calls == ["Bearer token copied"]


def test_a_hanging_clipboard_is_abandoned() -> None:
    told, release = Recorder(), threading.Event()
    actions.copy_to_clipboard("tok", told, timeout=0.05, copy_text=lambda text: release.wait(10) and None)
    assert told.event.wait(5)
    release.set()
    assert told.calls == ["The clipboard did not answer within 0.05 s; `sorat token` prints the token"]


def test_no_clipboard_is_told(monkeypatch: pytest.MonkeyPatch) -> None:
    # this machine has no display, so pyperclip finds no mechanism: the real library's own error
    import pyperclip

    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    if sys.platform != "linux":
        pytest.skip("a machine without a clipboard is a Linux thing")

    # set_clipboard() rebinds these module globals: put them back afterwards
    monkeypatch.setattr(pyperclip, "copy", pyperclip.copy)
    monkeypatch.setattr(pyperclip, "paste", pyperclip.paste)

    def copy(text: str) -> None:
        pyperclip.set_clipboard("no")
        pyperclip.copy(text)

    told = Recorder()
    actions.copy_to_clipboard("tok", told, copy_text=copy)
    assert told.event.wait(5)
    [message] = told.calls
    assert message.startswith("No clipboard available (Pyperclip could not find a copy/paste mechanism")
    assert message.endswith("`sorat token` prints the token")


@pytest.mark.skipif(sys.platform in ("win32", "darwin"), reason="xdg-open and $BROWSER are Linux things")
def test_open_path_and_open_url_run_the_desktop_programs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """xdg-open for a folder, $BROWSER for a link: both in the background, both real programs."""
    record = tmp_path / "ran"
    program = tmp_path / "bin" / "record"
    program.parent.mkdir()
    program.write_text(f'#!/bin/sh\necho "$(basename "$0") $*" >> {record}\n')
    program.chmod(0o755)
    (tmp_path / "bin" / "xdg-open").symlink_to(program)
    monkeypatch.setenv("PATH", f"{program.parent}:/usr/bin:/bin")
    monkeypatch.setenv("BROWSER", f"{program} %s")

    actions.open_path(tmp_path / "sessions")
    actions.open_url("http://127.0.0.1:8080/ui")
    deadline, pause = time.monotonic() + 5, threading.Event()
    while not (record.exists() and len(record.read_text().splitlines()) == 2):
        assert time.monotonic() < deadline, "the programs did not run"
        pause.wait(0.02)
    assert sorted(record.read_text().splitlines()) == [
        "record http://127.0.0.1:8080/ui",
        f"xdg-open {tmp_path / 'sessions'}",
    ]
