"""The tray on pystray: the menu model rendered as pystray items (on pystray's dummy backend), and run_tray's
life cycle with a fake pystray backend."""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from PIL import Image

from sorat_daemon.desktop import images, pystray_tray, tray
from sorat_daemon.paths import Home
from tests.desktop.fakes import URL, FakeDaemon, Recorder


def items(menu: Any) -> list[Any]:
    return [i for i in menu if i is not type(menu).SEPARATOR]


def item(menu: Any, text: str) -> Any:
    return next(i for i in items(menu) if i.text == text)


def menu_for(daemon: FakeDaemon, **kwargs: Any) -> tuple[Any, dict[str, Recorder]]:
    rec = {name: Recorder() for name in ("quit", "opener", "tell", "clipboard")}
    menu = pystray_tray.build_menu(
        daemon,
        quit=rec["quit"],
        opener=rec["opener"],
        tell=rec["tell"],
        clipboard=rec["clipboard"],
        **kwargs,
    )
    return menu, rec


# --- the model as pystray items ---------------------------------------------------------------------


def test_menu_items_in_order(pystray: ModuleType, daemon: FakeDaemon, xdg: Path) -> None:
    menu, _ = menu_for(daemon)
    daemon.start_thread()
    assert [i.text for i in items(menu)] == [
        f"sorat — {URL}",
        "Open session folder",
        "Copy bearer token",
        "Model",
        "Open config folder",
        "Open logs",
        "Start at login",
        "Quit",
    ]
    status = items(menu)[0]
    assert not status.enabled
    assert item(menu, "Model").submenu is not None
    assert item(menu, "Start at login").checked is False
    assert item(menu, "Quit").checked is None
    assert [i is pystray.Menu.SEPARATOR for i in menu].count(True) == 3


def test_items_are_read_when_shown(pystray: ModuleType, daemon: FakeDaemon, xdg: Path) -> None:
    menu, rec = menu_for(daemon)
    assert items(menu)[0].text == "sorat — starting…"
    daemon.state.update(provider_error="openai: 401 Incorrect API key provided")
    assert items(menu)[0].text == "sorat — openai: 401 Incorrect API key provided"
    # a submenu taken once follows the state too: pystray's backends keep the Menu object
    models = item(menu, "Model").submenu
    assert [(i.text, i.checked, i.radio) for i in items(models)] == [
        ("gpt-4o", True, True),
        ("gpt-4o-mini", False, True),
        ("o3", False, True),
    ]
    item(models, "o3")(None)
    assert daemon.calls == ["set_model o3"]
    assert [i.text for i in items(models) if i.checked] == ["o3"]
    daemon._models = []
    daemon._active = ""
    [only] = items(models)
    assert (only.text, only.enabled) == ("No models found", False)
    check = item(menu, "Start at login")
    check(None)
    assert xdg.is_file()
    assert item(menu, "Start at login").checked is True
    item(menu, "Quit")(None)
    assert len(rec["quit"].calls) == 1


def test_session_folder_is_the_default_action(pystray: ModuleType, daemon: FakeDaemon, xdg: Path) -> None:
    # backends without a menu (plain X11) run the default item on a click
    menu, rec = menu_for(daemon)
    menu(None)
    assert rec["opener"].calls == [daemon.home.sessions]


def test_every_click_refreshes(pystray: ModuleType, daemon: FakeDaemon, xdg: Path) -> None:
    after = Recorder()
    menu = pystray_tray.pystray_menu(pystray_tray.TrayMenu(daemon, quit=Recorder(), tell=Recorder()), after)
    item(item(menu, "Model").submenu, "o3")(None)
    item(menu, "Copy bearer token")(None)
    assert len(after.calls) == 2


# --- run_tray with a fake backend -----------------------------------------------------------------


def fake_backend(pystray: ModuleType, fail_at_start: bool = False) -> type:
    from pystray._base import Icon

    class FakeIcon(Icon):  # type: ignore[misc]
        """A backend whose loop waits for stop(); every call is recorded and wakes the watchers."""

        instances: list[FakeIcon] = []
        HAS_NOTIFICATION = True

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.changed = threading.Condition()
            self.log: list[str] = []
            self.loop_thread: threading.Thread | None = None
            self._stopped = threading.Event()
            FakeIcon.instances.append(self)

        def record(self, what: str) -> None:
            with self.changed:
                self.log.append(what)
                self.changed.notify_all()

        def wait_for(self, predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
            with self.changed:
                return self.changed.wait_for(predicate, timeout)

        def _show(self) -> None:
            self.record("show")

        def _hide(self) -> None:
            self.record("hide")

        def _update_icon(self) -> None:
            self._icon_valid = True
            self.record("icon")

        def _update_title(self) -> None:
            self.record("title")

        def _update_menu(self) -> None:
            self.record("menu")

        def _notify(self, message: str, title: str | None = None) -> None:
            self.record(f"notify {message}")

        def _run(self) -> None:
            self.loop_thread = threading.current_thread()
            if fail_at_start:
                raise RuntimeError("no StatusNotifierWatcher on the session bus")
            self._mark_ready()
            self._stopped.wait()

        def _stop(self) -> None:
            self._stopped.set()
            self.record("stop")

    return FakeIcon


def run_with_user(
    daemon: FakeDaemon, icon_class: Any, user: Callable[[Any], None], **kwargs: Any
) -> tuple[bool, list[BaseException]]:
    """run_tray on this (the main) thread while ``user`` acts on the icon from another; Quit at the end."""
    errors: list[BaseException] = []

    def act() -> None:
        icon = None
        try:
            ready, deadline = threading.Event(), time.monotonic() + 5
            while not icon_class.instances:  # the icon exists before the loop starts
                assert time.monotonic() < deadline, "run_tray made no icon"
                ready.wait(0.01)
            icon = icon_class.instances[0]
            assert icon.wait_for(lambda: "show" in icon.log), "the icon was never shown"
            user(icon)
        except BaseException as e:
            errors.append(e)
        finally:
            if icon is not None and icon.visible:
                item(icon.menu, "Quit")(icon)

    helper = threading.Thread(target=act)
    helper.start()
    result = tray.run_tray(daemon, opener=lambda p: None, icon_class=icon_class, **kwargs)
    helper.join(10)
    return result, errors


def same_image(a: Image.Image, b: Image.Image) -> bool:
    return a.size == b.size and a.tobytes() == b.tobytes()


def test_run_tray_life_cycle(
    pystray: ModuleType, daemon: FakeDaemon, xdg: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pystray_tray, "MODELS_POLL_S", 0.05)
    FakeIcon = fake_backend(pystray)
    seen: dict[str, Any] = {}

    def user(icon: Any) -> None:
        assert threading.current_thread() is not icon.loop_thread
        seen["calls_while_shown"] = list(daemon.calls)
        assert same_image(icon.icon, images.load_icon("running"))
        assert icon.wait_for(lambda: icon.title == f"sorat — {URL} (gpt-4o)")
        # something goes wrong: the icon and the status line say so
        menus = icon.log.count("menu")
        daemon.state.update(provider_error="openai: 429 rate limited")
        assert icon.wait_for(lambda: same_image(icon.icon, images.load_icon("attention")))
        assert icon.wait_for(lambda: icon.log.count("menu") > menus)
        assert items(icon.menu)[0].text == "sorat — openai: 429 rate limited"
        assert icon.title == "sorat: openai: 429 rate limited"
        daemon.state.update(provider_error=None)
        assert icon.wait_for(lambda: same_image(icon.icon, images.load_icon("running")))
        # a model the providers discovered later shows up: the menu is rebuilt without a state change
        menus = icon.log.count("menu")
        daemon._models.append("gpt-5")
        assert icon.wait_for(lambda: icon.log.count("menu") > menus)
        assert [i.text for i in items(item(icon.menu, "Model").submenu)][-1] == "gpt-5"
        # the user switches the model from the menu
        item(item(icon.menu, "Model").submenu, "gpt-5")(icon)
        assert icon.wait_for(lambda: icon.title == f"sorat — {URL} (gpt-5)")
        # what becomes of a copy is told through a notification where the backend has them
        item(icon.menu, "Copy bearer token")(icon)
        assert icon.wait_for(lambda: any(entry.startswith("notify ") for entry in icon.log))

    result, errors = run_with_user(daemon, FakeIcon, user)
    if errors:
        raise errors[0]
    assert result is True
    assert seen["calls_while_shown"] == ["start_thread"]
    assert daemon.calls == ["start_thread", "set_model gpt-5", "stop"]
    icon = FakeIcon.instances[0]
    assert not icon._running


def test_sigterm_quits_gracefully(pystray: ModuleType, daemon: FakeDaemon, xdg: Path) -> None:
    FakeIcon = fake_backend(pystray)
    before = signal.getsignal(signal.SIGTERM)

    def user(icon: Any) -> None:
        os.kill(os.getpid(), signal.SIGTERM)
        assert icon.wait_for(lambda: "stop" in icon.log)

    result, errors = run_with_user(daemon, FakeIcon, user)
    if errors:
        raise errors[0]
    assert result is True
    assert daemon.calls == ["start_thread", "stop"]
    assert signal.getsignal(signal.SIGTERM) is before


def test_backend_failing_at_start_serves_headless(
    pystray: ModuleType, daemon: FakeDaemon, xdg: Path, tray_log: list[logging.LogRecord]
) -> None:
    FakeIcon = fake_backend(pystray, fail_at_start=True)
    threads = set(threading.enumerate())
    assert tray.run_tray(daemon, icon_class=FakeIcon) is False
    # the daemon that had started is stopped again, so that the caller can serve headless
    assert daemon.calls == ["start_thread", "stop"]
    assert [r.getMessage() for r in tray_log] == [
        "no tray: the tray backend failed to start "
        "(RuntimeError: no StatusNotifierWatcher on the session bus); serving headless"
    ]
    # pystray's setup thread is not a daemon thread: it must not be left waiting, or the process never exits
    deadline = time.monotonic() + 5
    while left := [t for t in set(threading.enumerate()) - threads if not t.daemon]:
        assert time.monotonic() < deadline, f"threads left that keep the process alive: {left}"
        threading.Event().wait(0.01)


def test_daemon_that_cannot_start_shows_no_tray(pystray: ModuleType, tmp_path: Path, xdg: Path) -> None:
    daemon = FakeDaemon(
        Home(tmp_path), start_error="sorat already runs here (pid 4242, http://127.0.0.1:8080)"
    )
    FakeIcon = fake_backend(pystray)
    assert tray.run_tray(daemon, icon_class=FakeIcon) is True
    assert daemon.calls == ["start_thread"]
    assert FakeIcon.instances[0].log == []
