"""The tray's menu as data (pystray's dummy backend), run_tray's life cycle with a fake backend, the
headless fallbacks, and the icons."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from PIL import Image

from sorat_daemon import icons, tray
from sorat_daemon.paths import Home
from sorat_daemon.state import StateHub

URL = "http://127.0.0.1:8080"


class FakeDaemon:
    """The tray's side of sorat_daemon.daemon.Daemon, recording what the tray asks of it."""

    def __init__(self, home: Home, models: list[str] | None = None, start_error: str | None = None) -> None:
        self.home = home
        self.state = StateHub()
        self._models = list(models if models is not None else ["gpt-4o", "gpt-4o-mini", "o3"])
        self._active = "gpt-4o"
        self.start_error = start_error
        self.calls: list[str] = []

    def start_thread(self) -> None:
        self.calls.append("start_thread")
        if self.start_error:
            self.state.update(error=self.start_error)
        else:
            self.state.update(url=URL, running=True, model=self._active)

    def stop(self, timeout: float = 10.0) -> None:
        self.calls.append("stop")
        self.state.update(running=False)

    def models(self) -> list[str]:
        return list(self._models)

    def active_model(self) -> str:
        return self._active

    def set_model(self, name: str) -> None:
        self.calls.append(f"set_model {name}")
        if name == "broken":
            raise OSError("config.toml: read-only file system")
        self._active = name
        self.state.update(model=name)


@pytest.fixture
def pystray(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
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


def items(menu: Any) -> list[Any]:
    return [i for i in menu if i is not type(menu).SEPARATOR]


def item(menu: Any, text: str) -> Any:
    return next(i for i in items(menu) if i.text == text)


class Recorder:
    def __init__(self) -> None:
        self.calls: list[Any] = []
        self.event = threading.Event()

    def __call__(self, *args: Any) -> None:
        self.calls.append(args[0] if len(args) == 1 else args)
        self.event.set()


def menu_for(daemon: FakeDaemon, **kwargs: Any) -> tuple[Any, dict[str, Recorder]]:
    rec = {name: Recorder() for name in ("quit", "opener", "tell", "clipboard")}
    menu = tray.build_menu(
        daemon,
        quit=rec["quit"],
        opener=rec["opener"],
        tell=rec["tell"],
        clipboard=rec["clipboard"],
        **kwargs,
    )
    return menu, rec


# --- the menu as data -----------------------------------------------------------------------------


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


def test_status_line_follows_the_state(pystray: ModuleType, daemon: FakeDaemon, xdg: Path) -> None:
    menu, _ = menu_for(daemon)
    assert items(menu)[0].text == "sorat — starting…"
    daemon.start_thread()
    assert items(menu)[0].text == f"sorat — {URL}"
    daemon.state.update(provider_error="openai: 401 Incorrect API key provided")
    assert items(menu)[0].text == "sorat — openai: 401 Incorrect API key provided"
    daemon.state.update(provider_error=None, tools_error="tools.toml line 3: unknown mode 'yolo'\nmore")
    assert items(menu)[0].text == "sorat — tools.toml line 3: unknown mode 'yolo'"
    daemon.state.update(tools_error=None, no_provider="x" * 300)
    text = items(menu)[0].text
    assert len(text) == tray.STATUS_CHARS and text.endswith("…")


def test_model_radio_items_switch_the_model(pystray: ModuleType, daemon: FakeDaemon, xdg: Path) -> None:
    menu, rec = menu_for(daemon)
    models = item(menu, "Model").submenu
    assert [(i.text, i.checked, i.radio) for i in items(models)] == [
        ("gpt-4o", True, True),
        ("gpt-4o-mini", False, True),
        ("o3", False, True),
    ]
    item(models, "o3")(None)
    assert daemon.calls == ["set_model o3"]
    assert [i.text for i in items(models) if i.checked] == ["o3"]
    item(models, "o3")(None)  # already active: nothing to save
    assert daemon.calls == ["set_model o3"]
    assert rec["tell"].calls == []


def test_model_menu_follows_the_providers(pystray: ModuleType, daemon: FakeDaemon, xdg: Path) -> None:
    menu, _ = menu_for(daemon)
    models = item(menu, "Model").submenu
    daemon._models = []
    daemon._active = "my-local-model"
    assert [(i.text, i.checked) for i in items(models)] == [("my-local-model", True)]
    daemon._active = ""
    [only] = items(models)
    assert (only.text, only.enabled) == ("No models found", False)
    daemon._models = ["a", "b"]
    daemon._active = "b"
    assert [(i.text, i.checked) for i in items(models)] == [("a", False), ("b", True)]


def test_a_failed_switch_is_told(pystray: ModuleType, daemon: FakeDaemon, xdg: Path) -> None:
    daemon._models.append("broken")
    menu, rec = menu_for(daemon)
    item(item(menu, "Model").submenu, "broken")(None)
    assert rec["tell"].calls == ["Could not switch to broken: config.toml: read-only file system"]
    assert daemon.active_model() == "gpt-4o"


def test_open_folders(pystray: ModuleType, daemon: FakeDaemon, xdg: Path) -> None:
    menu, rec = menu_for(daemon)
    for text in ("Open session folder", "Open config folder", "Open logs"):
        item(menu, text)(None)
    home = daemon.home
    assert rec["opener"].calls == [home.sessions, home.root, home.logs]
    assert all(p.is_dir() for p in rec["opener"].calls)


def test_session_folder_is_the_default_action(pystray: ModuleType, daemon: FakeDaemon, xdg: Path) -> None:
    # backends without a menu (plain X11) run the default item on a click
    menu, rec = menu_for(daemon)
    menu(None)
    assert rec["opener"].calls == [daemon.home.sessions]


def test_a_failing_opener_is_told(pystray: ModuleType, daemon: FakeDaemon, xdg: Path) -> None:
    told = Recorder()

    def no_xdg_open(path: Path) -> None:
        raise FileNotFoundError(2, "No such file or directory", "xdg-open")

    menu = tray.build_menu(daemon, quit=Recorder(), opener=no_xdg_open, tell=told)
    item(menu, "Open logs")(None)
    assert told.calls == ["Could not open the logs: [Errno 2] No such file or directory: 'xdg-open'"]


def test_copy_token(pystray: ModuleType, daemon: FakeDaemon, xdg: Path) -> None:
    menu, rec = menu_for(daemon)
    item(menu, "Copy bearer token")(None)
    assert rec["clipboard"].calls == [("sk-sorat-test-token", rec["tell"])]

    daemon.home.token.unlink()
    item(menu, "Copy bearer token")(None)
    assert rec["tell"].calls == [
        "No bearer token to copy (No such file or directory); `sorat token` creates one"
    ]


def test_clipboard_copies_in_the_background() -> None:
    told, copied = Recorder(), Recorder()
    tray.copy_to_clipboard("tok", told, copy_text=copied)
    assert told.event.wait(5)
    assert copied.calls == ["tok"]
    assert told.calls == ["Bearer token copied"]


def test_a_hanging_clipboard_is_abandoned() -> None:
    told, release = Recorder(), threading.Event()
    tray.copy_to_clipboard("tok", told, timeout=0.05, copy_text=lambda text: release.wait(10) and None)
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
    tray.copy_to_clipboard("tok", told, copy_text=copy)
    assert told.event.wait(5)
    [message] = told.calls
    assert message.startswith("No clipboard available (Pyperclip could not find a copy/paste mechanism")
    assert message.endswith("`sorat token` prints the token")


def test_start_at_login_toggles_the_real_autostart(
    pystray: ModuleType, daemon: FakeDaemon, xdg: Path
) -> None:
    menu, _ = menu_for(daemon)
    check = item(menu, "Start at login")
    assert check.checked is False
    check(None)
    assert xdg.is_file()
    assert item(menu, "Start at login").checked is True
    item(menu, "Start at login")(None)
    assert not xdg.exists()
    assert item(menu, "Start at login").checked is False


def test_quit_item(pystray: ModuleType, daemon: FakeDaemon, xdg: Path) -> None:
    menu, rec = menu_for(daemon)
    item(menu, "Quit")(None)
    assert len(rec["quit"].calls) == 1


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
    monkeypatch.setattr(tray, "MODELS_POLL_S", 0.05)
    FakeIcon = fake_backend(pystray)
    seen: dict[str, Any] = {}

    def user(icon: Any) -> None:
        assert threading.current_thread() is not icon.loop_thread
        seen["calls_while_shown"] = list(daemon.calls)
        assert same_image(icon.icon, tray.load_icon("running"))
        assert icon.wait_for(lambda: icon.title == f"sorat — {URL} (gpt-4o)")
        # something goes wrong: the icon and the status line say so
        menus = icon.log.count("menu")
        daemon.state.update(provider_error="openai: 429 rate limited")
        assert icon.wait_for(lambda: same_image(icon.icon, tray.load_icon("attention")))
        assert icon.wait_for(lambda: icon.log.count("menu") > menus)
        assert items(icon.menu)[0].text == "sorat — openai: 429 rate limited"
        assert icon.title == "sorat: openai: 429 rate limited"
        daemon.state.update(provider_error=None)
        assert icon.wait_for(lambda: same_image(icon.icon, tray.load_icon("running")))
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


def test_importing_tray_loads_no_gui_library() -> None:
    gui = "{'pystray', 'PIL', 'pyperclip', 'Xlib'}"
    code = f"import sys, sorat_daemon.tray; print(sorted({gui} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# --- icons ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [16, 22, 32, 64, 256])
def test_render_states(size: int) -> None:
    running, attention = icons.render("running", size), icons.render("attention", size)
    assert running.size == attention.size == (size, size)
    assert running.mode == attention.mode == "RGBA"
    assert running.tobytes() != attention.tobytes()
    # the attention badge is amber, where the running icon has none
    assert amber_pixels(attention) > 0
    assert amber_pixels(running) == 0


def amber_pixels(image: Image.Image) -> int:
    data = image.tobytes()
    rgba = (data[i : i + 4] for i in range(0, len(data), 4))
    return sum(1 for r, g, b, a in rgba if r > 200 and 120 < g < 190 and b < 60 and a > 200)


def test_render_refuses_an_unknown_state() -> None:
    with pytest.raises(ValueError, match="unknown icon state 'busy'"):
        icons.render("busy", 32)


def test_shipped_assets_are_complete() -> None:
    for state in icons.STATES:
        for size in icons.SIZES:
            with Image.open(icons.ASSETS / f"sorat-{state}-{size}.png") as image:
                assert image.size == (size, size) and image.mode == "RGBA"
    with Image.open(icons.ASSETS / "sorat.ico") as ico:
        assert {(s, s) for s in icons.ICO_SIZES} <= set(ico.info["sizes"])
    with Image.open(icons.ASSETS / "sorat.icns") as icns:
        assert icns.size == (1024, 1024)


def test_tray_loads_the_shipped_png_not_a_fresh_drawing() -> None:
    shipped = tray.load_icon("attention")
    assert shipped.size == (tray.ICON_SIZE, tray.ICON_SIZE)
    with Image.open(icons.ASSETS / f"sorat-attention-{tray.ICON_SIZE}.png") as image:
        assert same_image(shipped, image.convert("RGBA"))


def test_write_assets(tmp_path: Path) -> None:
    written = icons.write_assets(tmp_path)
    assert len(written) == len(icons.STATES) * len(icons.SIZES) + 2
    assert all(p.is_file() and p.stat().st_size > 0 for p in written)


def test_tray_knows_the_shipped_sizes() -> None:
    assert tray.SHIPPED_SIZES == icons.SIZES


def test_a_slot_gets_the_png_drawn_for_its_size() -> None:
    tray_icon = tray.load_icon("attention")
    for side, drawn_for in ((24, 24), (20, 22), (40, 48), (64, 64)):
        picked = tray._icon_for(tray_icon, side)
        assert same_image(picked, tray.load_icon("attention", drawn_for))
    assert tray._icon_for(tray_icon, 1000) is not tray_icon  # bigger than any PNG: the image itself, as RGBA
    assert same_image(tray._icon_for(tray_icon, 1000), tray_icon)
