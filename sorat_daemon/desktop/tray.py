"""The tray's life: pick a backend, start the daemon on its own loop in a worker thread, serve until Quit.

``run_tray`` returns False, after one log line saying why, when there is no tray to show (no panel, no
display, or the backend fails to import or start); the caller then serves headless. The backends import
their GUI and D-Bus libraries only when chosen: a headless sorat never loads them.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import threading
from collections.abc import Callable, Mapping
from typing import Any

from sorat_daemon.desktop.actions import Opener, open_path
from sorat_daemon.desktop.backends import Backend, choose
from sorat_daemon.desktop.menu import TrayDaemon, TrayMenu

log = logging.getLogger("sorat.tray")


def run_tray(
    daemon: TrayDaemon,
    *,
    opener: Opener = open_path,
    icon_class: Callable[..., Any] | None = None,
    env: Mapping[str, str] | None = None,
) -> bool:
    """Show the tray and serve until Quit (True), or return False at once when no tray can be shown
    (``backends`` picks the tray, and says why when there is none).

    False comes before the daemon starts, or after it is stopped again if the backend fails while
    starting, so the caller can serve headless in either case."""
    quitting, quit_lock = threading.Event(), threading.Lock()
    backend: Backend | None = None

    def quit() -> None:
        with quit_lock:  # the menu and a signal (seen twice: handler and wakeup fd) may all ask
            if quitting.is_set():
                return
            quitting.set()
        if backend is not None:
            backend.stop()

    def tell(message: str) -> None:
        log.warning("%s", message)
        if backend is not None:
            backend.notify(message)

    menu = TrayMenu(daemon, quit=quit, opener=opener, tell=tell)
    backend = choose(menu, quitting, os.environ if env is None else env, icon_class)
    if backend is None:
        return False
    return _serve(daemon, backend, quit)


def _serve(daemon: TrayDaemon, backend: Backend, quit: Callable[[], None]) -> bool:
    daemon.state.subscribe(lambda status: backend.refresh())
    restore_signals = on_signals(
        lambda: threading.Thread(target=quit, name="sorat-quit", daemon=True).start()
    )
    try:
        daemon.start_thread()
        started = daemon.state.get()
        if started.error and not started.running:
            return True  # one sorat per home, port taken…: the daemon has logged why; no tray to show
        try:
            backend.run()
        except Exception as e:
            log.warning(
                "no tray: the tray backend failed to start (%s: %s); serving headless", type(e).__name__, e
            )
            backend.close()
            daemon.stop()
            return False
        backend.close()  # before the daemon's last state changes, which no icon is left to show
        daemon.stop()
        return True
    finally:
        backend.close()
        restore_signals()


def on_signals(handler: Callable[[], None]) -> Callable[[], None]:
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
