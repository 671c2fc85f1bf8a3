"""The tray on pystray: macOS, Windows, and Linux where no StatusNotifierWatcher is on the session bus.

pystray's loop owns the main thread and runs the menu callbacks. The daemon's state changes arrive on the
daemon's thread; they only wake the refresher thread, which swaps the icon and rebuilds the menu, so the
server's loop never waits on the GUI. pystray and Pillow are imported only here, when this tray is wanted.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any

from sorat_daemon.desktop.images import load_icon
from sorat_daemon.desktop.menu import Item, TrayDaemon, TrayMenu, title_of

if TYPE_CHECKING:
    import pystray
    from PIL import Image

log = logging.getLogger("sorat.tray")

MODELS_POLL_S = 10.0  # providers may discover models after start; nothing signals that


def pystray_menu(menu: TrayMenu, after: Callable[[], None] = lambda: None) -> pystray.Menu:
    """``menu`` as a pystray menu whose items are read afresh whenever a backend (or a test) asks, so one
    menu object serves for the icon's whole life. ``after`` runs after every click."""
    from pystray import Menu, MenuItem

    def run(action: Callable[[], None]) -> Callable[[], None]:
        def clicked() -> None:
            try:
                action()
            finally:
                after()

        return clicked

    def convert(item: Item) -> Any:
        if item.separator:
            return Menu.SEPARATOR
        if item.children:
            return MenuItem(item.label, Menu(partial(children, item.key)), enabled=item.enabled)
        return MenuItem(
            item.label,
            run(item.action) if item.action else None,
            checked=(lambda _item, checked=item.checked: checked) if item.toggle else None,
            radio=item.toggle == "radio",
            default=item.default,
            enabled=item.enabled,
        )

    def children(key: str) -> tuple[Any, ...]:
        found = next((i for i in menu.items() if i.key == key), None)
        return tuple(convert(i) for i in found.children) if found else ()

    return Menu(lambda: tuple(convert(i) for i in menu.items()))


def build_menu(daemon: TrayDaemon, **kwargs: Any) -> pystray.Menu:
    """The pystray menu of a :class:`TrayMenu` made with these arguments."""
    return pystray_menu(TrayMenu(daemon, **kwargs))


class Refresher:
    """Applies the daemon's state to the icon from a thread of its own (see the module docstring)."""

    def __init__(self, icon: Any, menu: TrayMenu, images: dict[str, Image.Image]) -> None:
        self.icon, self.menu, self.images = icon, menu, images
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
        status = self.menu.daemon.state.get()
        state = "attention" if status.attention else "running"
        shown = (state, status, self.menu.items())
        if shown == self.shown or self.stopped:
            return
        if state != self.state:
            self.icon.icon = self.images[state]
            self.state = state
        self.icon.title = title_of(status)
        self.icon.update_menu()
        self.shown = shown


class PystrayTray:
    """One pystray icon. Made before the daemon starts, so that a backend that cannot load leaves the
    caller free to serve headless; :meth:`run` then shows it and runs pystray's loop until :meth:`stop`."""

    def __init__(
        self, menu: TrayMenu, quitting: threading.Event, icon_class: Callable[..., Any] | None
    ) -> None:
        if icon_class is None:
            import pystray  # raises Xlib's errors, not ImportError, when X is unreachable

            icon_class = pystray.Icon
            if icon_class.__module__ == "pystray._xorg":
                from sorat_daemon.desktop.x11 import x11_icon_class

                icon_class = x11_icon_class(icon_class)
        self.quitting = quitting
        self.images = {state: load_icon(state) for state in ("running", "attention")}
        self.refresher: Refresher | None = None
        self.icon = icon_class(
            "sorat", self.images["running"], "sorat", menu=pystray_menu(menu, self.refresh)
        )
        self.refresher = Refresher(self.icon, menu, self.images)

    def missing_host(self, give_up: Callable[[], bool] = lambda: False) -> str | None:
        """Why the icon would show nowhere (the X11 backend with no system tray), after a short wait."""
        if type(self.icon).__module__ != "pystray._xorg":
            return None
        from sorat_daemon.desktop.x11 import tray_host_missing

        return tray_host_missing(self.icon, give_up)

    def refresh(self) -> None:
        if self.refresher is not None:
            self.refresher.poke()

    def notify(self, message: str) -> None:
        if getattr(self.icon, "HAS_NOTIFICATION", False):
            with contextlib.suppress(Exception):
                self.icon.notify(message, "sorat")

    def run(self) -> None:
        """pystray's loop on this (the main) thread, until :meth:`stop`; raises if the backend fails."""
        assert self.refresher is not None
        refresher = self.refresher

        def show() -> None:
            if self.quitting.is_set():  # a signal came before the loop ran
                self.icon.stop()
                return
            self.icon.visible = True
            refresher.thread.start()

        def setup(icon: Any) -> None:
            # pystray's setup thread is not a daemon thread: if a backend call ever hung in it, the process
            # could not exit. Do the work in one that is.
            threading.Thread(target=show, name="sorat-tray-show", daemon=True).start()

        try:
            self.icon.run(setup)
        except Exception:
            self.quitting.set()  # before the setup thread is released: show() must not touch the icon
            self._release_setup_thread()
            raise

    def stop(self) -> None:
        self.close()
        self.icon.stop()  # does nothing until the loop runs; then setup() sees `quitting`

    def close(self) -> None:
        if self.refresher is not None:
            self.refresher.stop()

    def _release_setup_thread(self) -> None:
        """pystray's setup thread (not a daemon thread) waits for the loop's ready signal, which a backend
        that failed to start never sends: send it, so that the thread ends (setup() sees ``quitting``) and
        the process can exit."""
        ready = getattr(self.icon, "_Icon__queue", None)
        if ready is not None:
            ready.put(True)
