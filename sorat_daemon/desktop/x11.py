"""pystray's X11 backend, made to work: the fixes it needs (see :func:`x11_icon_class`), and the wait for a
system tray to dock in. Only ``pystray_tray`` uses this module, and only when pystray picked that backend."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from sorat_daemon.desktop.images import icon_for

TRAY_HOST_WAIT_S = 5.0  # at login the panel may come up a moment after sorat
X11_WAKE_S = 1.0


def tray_host_missing(icon: Any, give_up: Callable[[], bool] = lambda: False) -> str | None:
    """With the plain X11 backend, an icon with no tray host (system tray) to dock in is invisible and
    unreachable: wait briefly for one, then give up; sooner when ``give_up()`` says so (a
    StatusNotifierWatcher came, which shows more than a system tray)."""
    if type(icon).__module__ != "pystray._xorg":
        return None
    from Xlib import X, display

    conn = display.Display()
    try:
        atom = conn.intern_atom(f"_NET_SYSTEM_TRAY_S{conn.get_default_screen()}")
        deadline = time.monotonic() + TRAY_HOST_WAIT_S
        while conn.get_selection_owner(atom) == X.NONE:
            if time.monotonic() > deadline or give_up():
                return f"no system tray to dock in on display {conn.get_display_name()}"
            time.sleep(0.2)  # polling the X server for the panel to appear; nothing to wait on instead
    finally:
        conn.close()
    return None


def x11_icon_class(base: Any) -> Any:
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
            icon = icon_for(self._icon, side).resize((side, side), Image.Resampling.LANCZOS)
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
