"""The tray icon and its menu: pystray on the main thread, the daemon on its own loop in a worker thread.

``run_tray`` returns False, after one log line saying why, when there is no tray to show (no display, no
tray host, or the pystray backend fails to import or start); the caller then serves headless. pystray and
Pillow are imported only here, when a tray is wanted: a headless sorat never loads them.

Threads: the backend's loop owns the main thread and runs the menu callbacks. The daemon's state changes
arrive on the daemon's thread; they only wake the refresher thread, which swaps the icon and rebuilds the
menu, so the server's loop never waits on the GUI.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from sorat_daemon import autostart

if TYPE_CHECKING:
    import pystray
    from PIL import Image

    from sorat_daemon.paths import Home
    from sorat_daemon.state import StateHub, Status

log = logging.getLogger("sorat.tray")

ASSETS = Path(__file__).parent / "assets"
ICON_SIZE = 64  # backends scale it to the slot: 16–24 px on Linux and Windows, 22 pt (44 px) on macOS
TRAY_HOST_WAIT_S = 5.0  # at login the panel may come up a moment after sorat
MODELS_POLL_S = 10.0  # providers may discover models after start; nothing signals that
CLIPBOARD_TIMEOUT_S = 3.0
STATUS_CHARS = 90
X11_WAKE_S = 1.0


class TrayDaemon(Protocol):
    """What the tray needs of the daemon (``sorat_daemon.daemon.Daemon``)."""

    home: Home
    state: StateHub

    def start_thread(self) -> None: ...

    def stop(self, timeout: float = 10.0) -> None: ...

    def models(self) -> list[str]: ...

    def active_model(self) -> str: ...

    def set_model(self, name: str) -> None: ...


class StartAtLogin(Protocol):
    def is_enabled(self) -> bool: ...

    def enable(self) -> object: ...

    def disable(self) -> object: ...


class _Autostart:
    """The real autostart module, seen through the :class:`StartAtLogin` protocol."""

    def is_enabled(self) -> bool:
        return autostart.is_enabled()

    def enable(self) -> object:
        return autostart.enable()

    def disable(self) -> object:
        return autostart.disable()


Opener = Callable[[Path], None]
Tell = Callable[[str], None]


def open_path(path: Path) -> None:
    """Show ``path`` in the desktop's file manager, without waiting for it."""
    if sys.platform == "win32":
        os.startfile(path)  # type: ignore[attr-defined]  # Windows only
        return
    program = "open" if sys.platform == "darwin" else "xdg-open"
    proc = subprocess.Popen(
        [program, str(path)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    threading.Thread(target=proc.wait, name="sorat-opener", daemon=True).start()  # reap it


def copy_to_clipboard(
    text: str,
    tell: Tell,
    timeout: float = CLIPBOARD_TIMEOUT_S,
    copy_text: Callable[[str], None] | None = None,
) -> None:
    """Copy with pyperclip in a thread of its own: xclip and xsel can hang (no X selection owner, a stuck
    clipboard manager), and the menu must not. Failure or silence is told to the user."""
    done = threading.Event()
    failure: list[str] = []

    def copy() -> None:
        try:
            if copy_text is None:
                import pyperclip

                pyperclip.copy(text)
            else:
                copy_text(text)
        except Exception as e:  # PyperclipException when no mechanism exists, OSError from its programs
            failure.append(str(e) or type(e).__name__)
        finally:
            done.set()

    def watch() -> None:
        threading.Thread(target=copy, name="sorat-clipboard", daemon=True).start()
        if not done.wait(timeout):
            tell(f"The clipboard did not answer within {timeout:g} s; `sorat token` prints the token")
        elif failure:
            tell(f"No clipboard available ({failure[0].splitlines()[0]}); `sorat token` prints the token")
        else:
            tell("Bearer token copied")

    threading.Thread(target=watch, name="sorat-clipboard-watch", daemon=True).start()


def status_line(status: Status) -> str:
    if status.attention:
        text = f"sorat — {status.attention.splitlines()[0]}"
        return text if len(text) <= STATUS_CHARS else text[: STATUS_CHARS - 1] + "…"
    if status.running and status.url:
        return f"sorat — {status.url}"
    return "sorat — running" if status.running else "sorat — starting…"


def title_of(status: Status) -> str:
    """The tooltip: the whole message when something is wrong."""
    if status.attention:
        return f"sorat: {status.attention}"
    model = f" ({status.model})" if status.model else ""
    return f"sorat — {status.url}{model}" if status.url else "sorat"


def build_menu(
    daemon: TrayDaemon,
    *,
    quit: Callable[[], None],
    opener: Opener = open_path,
    tell: Tell | None = None,
    clipboard: Callable[[str, Tell], None] = copy_to_clipboard,
    login: StartAtLogin | None = None,
) -> pystray.Menu:
    """The tray's menu. Texts and checks are read when the menu is shown (or ``update_menu`` called), so one
    menu object serves for the icon's whole life."""
    from pystray import Menu, MenuItem

    say: Tell = tell or (lambda message: log.warning("%s", message))
    start_at_login = login or _Autostart()
    home = daemon.home

    def guarded(what: str, action: Callable[[], object]) -> Callable[[], None]:
        # an exception in a pystray callback is lost in the backend's loop: say it instead
        def run() -> None:
            try:
                action()
            except Exception as e:
                log.exception("%s failed", what)
                say(f"Could not {what}: {e}")

        return run

    def open_folder(path: Path) -> None:
        path.mkdir(parents=True, exist_ok=True)
        opener(path)

    def copy_token() -> None:
        try:
            token = home.token.read_text(encoding="utf-8").strip()
        except OSError as e:
            say(f"No bearer token to copy ({e.strerror}); `sorat token` creates one")
            return
        clipboard(token, say)

    def select(name: str) -> None:
        if name != daemon.active_model():
            daemon.set_model(name)

    def toggle_login() -> None:
        if start_at_login.is_enabled():
            start_at_login.disable()
        else:
            start_at_login.enable()

    def models() -> Iterator[pystray.MenuItem]:
        active = daemon.active_model()
        names = list(dict.fromkeys(daemon.models()))
        if active and active not in names:  # set by hand, or not offered (yet): still show what is in use
            names.insert(0, active)
        if not names:
            yield MenuItem("No models found", None, enabled=False)
        for name in names:
            yield MenuItem(
                name,
                guarded(f"switch to {name}", partial(select, name)),
                checked=lambda item, name=name: daemon.active_model() == name,
                radio=True,
            )

    return Menu(
        MenuItem(lambda item: status_line(daemon.state.get()), None, enabled=False),
        Menu.SEPARATOR,
        # the default item is what a left click runs where a backend has no menu (X11 without AppIndicator)
        MenuItem(
            "Open session folder",
            guarded("open the session folder", lambda: open_folder(home.sessions)),
            default=True,
        ),
        MenuItem("Copy bearer token", guarded("copy the token", copy_token)),
        MenuItem("Model", Menu(models)),
        Menu.SEPARATOR,
        MenuItem(
            "Open config folder", guarded("open the config folder", lambda: open_folder(home.config.parent))
        ),
        MenuItem("Open logs", guarded("open the logs", lambda: open_folder(home.logs))),
        MenuItem(
            "Start at login",
            guarded("change start at login", toggle_login),
            checked=lambda item: _safe_is_enabled(start_at_login),
        ),
        Menu.SEPARATOR,
        MenuItem("Quit", lambda: quit()),
    )


def _safe_is_enabled(login: StartAtLogin) -> bool:
    try:
        return login.is_enabled()
    except Exception:  # an unreadable entry: show it unchecked rather than break the menu
        log.exception("cannot read the start-at-login state")
        return False


SHIPPED_SIZES = (16, 22, 24, 32, 48, 64, 128, 256, 512)  # sorat_daemon.icons.SIZES, without importing Pillow


def load_icon(state: str, size: int = ICON_SIZE) -> Image.Image:
    """The shipped PNG for ``state``; drawn afresh only if the file is missing."""
    from PIL import Image

    try:
        with Image.open(ASSETS / f"sorat-{state}-{size}.png") as image:
            loaded = image.convert("RGBA")
    except OSError:
        from sorat_daemon.icons import render

        log.warning("icon file for %s is missing; drawing it", state)
        loaded = render(state, size)
    loaded.info["sorat_state"] = state  # lets a backend that knows its slot size pick the PNG drawn for it
    return loaded


def _icon_for(image: Image.Image, side: int) -> Image.Image:
    """The shipped PNG drawn for ``side`` pixels (small sizes have bolder strokes, no sparkle), else
    ``image`` itself."""
    state = image.info.get("sorat_state")
    best = min((s for s in SHIPPED_SIZES if s >= side), default=None)
    if state is None or best is None or best == image.width:
        return image.convert("RGBA")
    return load_icon(state, best)


class _Refresher:
    """Applies the daemon's state to the icon from a thread of its own (see the module docstring)."""

    def __init__(self, icon: Any, daemon: TrayDaemon, images: dict[str, Image.Image]) -> None:
        self.icon, self.daemon, self.images = icon, daemon, images
        self.wake = threading.Event()
        self.stopped = False
        self.thread = threading.Thread(target=self._run, name="sorat-tray-refresh", daemon=True)
        self.shown: tuple[object, ...] = ()
        self.state = "running"  # the image the icon was created with

    def poke(self, _status: object = None) -> None:
        self.wake.set()

    def stop(self) -> None:
        self.stopped = True
        self.wake.set()

    def _run(self) -> None:
        while not self.stopped:
            try:
                self.apply()
            except Exception:
                log.exception("tray refresh failed")
            self.wake.wait(MODELS_POLL_S)
            self.wake.clear()

    def apply(self) -> None:
        status = self.daemon.state.get()
        models = tuple(self.daemon.models())
        state = "attention" if status.attention else "running"
        shown = (state, status, models)
        if shown == self.shown or self.stopped:
            return
        if state != self.state:
            self.icon.icon = self.images[state]
            self.state = state
        self.icon.title = title_of(status)
        self.icon.update_menu()
        self.shown = shown


def _no_display(platform: str, env: dict[str, str] | os._Environ[str]) -> str | None:
    if platform in ("win32", "darwin") or env.get("DISPLAY") or env.get("WAYLAND_DISPLAY"):
        return None
    return "no display (neither DISPLAY nor WAYLAND_DISPLAY is set)"


def _tray_host_missing(icon: Any) -> str | None:
    """With the plain X11 backend, an icon with no tray host (system tray) to dock in is invisible and
    unreachable: wait briefly for one, then give up."""
    if type(icon).__module__ != "pystray._xorg":
        return None
    from Xlib import X, display

    conn = display.Display()
    try:
        atom = conn.intern_atom(f"_NET_SYSTEM_TRAY_S{conn.get_default_screen()}")
        deadline = time.monotonic() + TRAY_HOST_WAIT_S
        while conn.get_selection_owner(atom) == X.NONE:
            if time.monotonic() > deadline:
                return f"no system tray to dock in on display {conn.get_display_name()}"
            time.sleep(0.2)  # polling the X server for the panel to appear; nothing to wait on instead
    finally:
        conn.close()
    return None


def _x11_icon_class(base: Any) -> Any:
    """pystray's X11 backend with seven fixes, kept here because they need its internals:

    - its window selects no ButtonPress events, so a click never reached the default action (pystray
      issue #151);
    - its loop blocks in python-xlib's next_event(), which can sleep on with an event already queued when
      another thread (pystray's own cross-thread calls) read it off the socket: the icon stayed blank, or
      Quit never ended the loop. Waiting in select() with a timeout bounds that to a second;
    - it sent the tray a dock request on every show and icon change; trayer answers two quick ones by
      embedding twice and can leave the icon unmapped on the root window: dock once per tray host;
    - it stretched the icon to the slot the tray gives (often taller than wide), on black;
    - WM_NAME is Latin-1: a title with "—" or any other character raised;
    - it set the loop thread after waking the setup thread, whose first call to the icon reads it;
    - a call from another thread (show, a new icon or title) sent a wake-up message and flushed the loop's
      own X connection, while the loop could be waiting for a reply to a request of its own: python-xlib
      then never woke that wait (seen in CI: the loop stuck in get_geometry or get_image, the icon never
      drawn). Other threads now queue their call and wake the loop through a socket pair; only the
      loop's thread touches the connection."""
    import functools
    import queue
    import select

    from Xlib import X

    class X11Icon(base):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            self._calls: queue.SimpleQueue[tuple[Callable[[], None], queue.SimpleQueue[Any]]] = (
                queue.SimpleQueue()
            )
            self._wake_r, self._wake_w = socket.socketpair()
            self._wake_r.setblocking(False)
            self._wake_w.setblocking(False)
            self._loop_done = False
            super().__init__(*args, **kwargs)
            self._window.change_attributes(
                event_mask=X.ExposureMask | X.StructureNotifyMask | X.ButtonPressMask
            )
            self._display.flush()

        def _rewrite_implementation(self, *originals: Callable[[], None]) -> None:
            for original in originals:
                setattr(self, original.__name__, self._on_loop(original))

        def _on_loop(self, original: Callable[[], None]) -> Callable[[], None]:
            """``original`` as a call that runs on the loop's thread, whichever thread makes it."""

            @functools.wraps(original)
            def call() -> None:
                loop = getattr(self, "_thread", None)
                if loop is None or threading.current_thread() is loop:
                    original()  # before the loop runs, only the thread that made the icon uses it
                    return
                if self._loop_done:
                    raise RuntimeError("the tray icon's loop has ended")
                done: queue.SimpleQueue[BaseException | None] = queue.SimpleQueue()
                self._calls.put((original, done))
                with contextlib.suppress(OSError):  # full: a wake-up is pending anyway
                    self._wake_w.send(b"\0")
                error = done.get()
                if error is not None:
                    raise error

            return call

        def _run_calls(self) -> None:
            with contextlib.suppress(OSError):
                while self._wake_r.recv(4096):
                    pass
            while True:
                try:
                    original, done = self._calls.get_nowait()
                except queue.Empty:
                    break
                try:
                    original()
                    done.put(None)
                except BaseException as e:  # handed to the calling thread
                    done.put(e)
            self._display.flush()

        def _run(self) -> None:
            # pystray set _thread after _mark_ready(), which wakes the setup thread, whose first call
            # to the icon reads _thread: set it first
            self._thread = threading.current_thread()
            self._mark_ready()
            try:
                self._mainloop()
            finally:
                self._loop_done = True
                while True:  # calls queued as the loop ended: their threads must not wait for ever
                    try:
                        _, done = self._calls.get_nowait()
                    except queue.Empty:
                        break
                    done.put(RuntimeError("the tray icon's loop has ended"))
                self._wake_r.close()
                self._wake_w.close()

        def _events(self) -> Iterator[Any]:
            conn = self._display
            redraws = 3
            while True:
                while conn.pending_events():
                    redraws = 3
                    yield conn.next_event()
                readable = select.select([conn, self._wake_r], [], [], X11_WAKE_S)[0]
                if self._wake_r in readable:
                    self._run_calls()
                elif not readable and redraws and self._systray_manager:
                    # a tray that maps or resizes the icon before its final size may leave it blank: the
                    # first quiet seconds after docking, and after every later event, paint it again
                    redraws -= 1
                    self._draw()

        def _assert_icon_data(self, width: int, height: int) -> None:
            cached = getattr(self, "_icon_data", None)
            if cached and cached.size == (width, height):
                return
            from PIL import Image

            # pystray stretched the square icon to the slot (trays hand out tall ones) on black; keep its
            # shape, centred, over the tray's own background
            canvas = self._tray_background(width, height)
            side = min(width, height)
            icon = _icon_for(self._icon, side).resize((side, side), Image.Resampling.LANCZOS)
            canvas.paste(icon, ((width - side) // 2, (height - side) // 2), icon)
            canvas.tostring = canvas.tobytes  # what python-xlib's put_pil_image calls on old Pillows
            self._icon_data = canvas

        def _tray_background(self, width: int, height: int) -> Any:
            """What the tray shows behind the icon: the window, cleared to its parent's background
            (ParentRelative), read back. Black when that is not possible (another depth)."""
            from PIL import Image
            from Xlib.error import XError

            try:
                if self._window.get_geometry().depth == 24:
                    self._window.change_attributes(background_pixmap=X.ParentRelative)
                    self._window.clear_area(0, 0, width, height)
                    raw = self._window.get_image(0, 0, width, height, X.ZPixmap, 0xFFFFFFFF)
                    if len(raw.data) == width * height * 4:
                        return Image.frombytes("RGB", (width, height), raw.data, "raw", "BGRX")
            except XError:
                pass
            return Image.new("RGB", (width, height))

        def _assert_docked(self) -> None:
            if self._systray_manager is None:  # pystray asked again on every show and icon change
                self._dock_window()
            assert self._systray_manager

        def _update_title(self) -> None:
            self._window.set_wm_name(
                self.title.replace("—", "-").encode("latin-1", "replace").decode("latin-1")
            )

    X11Icon.__module__ = base.__module__  # still "the X11 backend" to whoever asks
    return X11Icon


def run_tray(
    daemon: TrayDaemon,
    *,
    opener: Opener = open_path,
    icon_class: Callable[..., Any] | None = None,
) -> bool:
    """Show the tray and serve until Quit (True), or return False at once when no tray can be shown.

    False comes before the daemon starts, or after it is stopped again if the backend fails while
    starting, so the caller can serve headless in either case."""
    reason = _no_display(sys.platform, os.environ)
    if reason:
        log.warning("no tray: %s; serving headless", reason)
        return False
    quitting, quit_lock = threading.Event(), threading.Lock()
    icon: Any = None

    def quit() -> None:
        with quit_lock:  # the menu and a signal (seen twice: handler and wakeup fd) may all ask
            if quitting.is_set():
                return
            quitting.set()
        refresher.stop()
        icon.stop()  # does nothing until the loop runs; then setup() sees `quitting`

    def tell(message: str) -> None:
        log.warning("%s", message)
        if getattr(icon, "HAS_NOTIFICATION", False):
            with contextlib.suppress(Exception):
                icon.notify(message, "sorat")

    try:
        if icon_class is None:
            import pystray  # raises Xlib's errors, not ImportError, when X is unreachable

            icon_class = pystray.Icon
            if icon_class.__module__ == "pystray._xorg":
                icon_class = _x11_icon_class(icon_class)
        images = {state: load_icon(state) for state in ("running", "attention")}
        menu = build_menu(daemon, quit=quit, opener=opener, tell=tell)
        icon = icon_class("sorat", images["running"], "sorat", menu=menu)
        reason = _tray_host_missing(icon)
    except Exception as e:
        reason = f"the tray backend failed to load ({type(e).__name__}: {e})".replace("\n", " ")
    if reason:
        log.warning("no tray: %s; serving headless", reason)
        return False

    refresher = _Refresher(icon, daemon, images)
    daemon.state.subscribe(refresher.poke)

    def show() -> None:
        if quitting.is_set():  # a signal came before the loop ran
            icon.stop()
            return
        icon.visible = True
        refresher.thread.start()

    def setup(icon: Any) -> None:
        # pystray's setup thread is not a daemon thread: if a backend call ever hung in it, the process
        # could not exit. Do the work in one that is.
        threading.Thread(target=show, name="sorat-tray-show", daemon=True).start()

    restore_signals = _on_signals(
        lambda: threading.Thread(target=quit, name="sorat-quit", daemon=True).start()
    )
    try:
        daemon.start_thread()
        started = daemon.state.get()
        if started.error and not started.running:
            return True  # one sorat per home, port taken…: the daemon has logged why; no tray to show
        try:
            icon.run(setup)
        except Exception as e:
            log.warning(
                "no tray: the tray backend failed to start (%s: %s); serving headless", type(e).__name__, e
            )
            quitting.set()
            _release_setup_thread(icon)
            daemon.stop()
            return False
        refresher.stop()
        daemon.stop()
        return True
    finally:
        refresher.stop()
        restore_signals()


def _release_setup_thread(icon: Any) -> None:
    """pystray's setup thread (not a daemon thread) waits for the loop's ready signal, which a backend that
    failed to start never sends: send it, so that the thread ends (setup() sees ``quitting``) and the
    process can exit."""
    ready = getattr(icon, "_Icon__queue", None)
    if ready is not None:
        ready.put(True)


def _on_signals(handler: Callable[[], None]) -> Callable[[], None]:
    """SIGINT and SIGTERM (logout, ``kill``) quit like the menu does; returns the function that undoes this.

    Python runs signal handlers on the main thread between bytecodes, but the GUI loop may sit blocked in C
    (a select on the X socket) while the OS delivers the signal to another thread: then the handler waits
    for the next GUI event. The wakeup fd is written at once from any thread, so a watcher thread reads it
    and quits without waiting."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    previous: dict[int, Any] = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(ValueError, OSError):
            previous[sig] = signal.signal(sig, lambda signum, frame: handler())
    reader, writer = socket.socketpair()
    writer.setblocking(False)
    try:
        old_fd = signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
    except (ValueError, OSError):
        old_fd = None

    def watch() -> None:
        with contextlib.suppress(OSError):
            if reader.recv(1):
                handler()

    if old_fd is not None:
        threading.Thread(target=watch, name="sorat-signals", daemon=True).start()

    def restore() -> None:
        if old_fd is not None:
            with contextlib.suppress(ValueError, OSError):
                signal.set_wakeup_fd(old_fd)
        for sig, old in previous.items():
            with contextlib.suppress(ValueError, OSError, TypeError):
                signal.signal(sig, old)
        with contextlib.suppress(OSError):
            reader.shutdown(socket.SHUT_RDWR)  # ends the watcher's recv
        reader.close()
        writer.close()

    return restore
