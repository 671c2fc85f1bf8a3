"""Runs the server: in the foreground (``sorat serve``) or on its own loop in a worker thread (the
tray), with the watchers that apply config and token changes live, and a graceful stop."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import gc
import logging
import os
import signal
import socket
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from sorat_daemon import config
from sorat_daemon.paths import Home
from sorat_daemon.runtime import Runtime
from sorat_daemon.state import StateHub

if TYPE_CHECKING:
    from sorat_daemon.titles import Activity
    from sorat_daemon.ui.entry import WebUI

log = logging.getLogger("sorat.daemon")

GRACEFUL_S = 5.0
SWITCH_INTERVAL = 0.0005


class StartError(Exception):
    """The daemon cannot start; ``str()`` is the one line for the user."""


class InstanceLock:
    """One sorat per home: an exclusive lock on ``sorat.lock``, whose text says where it serves."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: IO[str] | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        f = open(self.path, "a+", encoding="utf-8")  # noqa: SIM115 - held for the process' life
        try:
            _lock_file(f)
        except OSError:
            f.seek(0)
            where = f.read().strip() or "an unknown address"
            f.close()
            raise StartError(f"sorat already runs for {self.path.parent} ({where})") from None
        self._file = f

    def describe(self, text: str) -> None:
        if self._file:
            self._file.seek(0)
            self._file.truncate()
            self._file.write(text + "\n")
            self._file.flush()

    def release(self) -> None:
        if self._file:
            with contextlib.suppress(OSError):
                self._file.seek(0)
                self._file.truncate()
            self._file.close()
            self._file = None


def _lock_file(f: IO[str]) -> None:
    if sys.platform == "win32":
        import msvcrt

        msvcrt.locking(f.fileno(), msvcrt.LK_NBLCK, 1)
    else:
        import fcntl

        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)


def bind(host: str, port: int) -> socket.socket:
    """Bind the listening socket ourselves, so a taken port is one clear line, not a traceback."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    if sys.platform != "win32":
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        if e.errno in (errno.EADDRINUSE, getattr(errno, "WSAEADDRINUSE", -1)):
            raise StartError(
                f"port {port} on {host} is taken by another program; choose another with "
                f"`sorat serve --port N` or [server] port in config.toml"
            ) from None
        raise StartError(f"cannot listen on {host}:{port}: {e.strerror}") from None
    sock.listen(1024)
    sock.setblocking(False)
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


_closing_on_eof = False


def _close_on_eof() -> None:
    """hypercorn 0.18 keeps a connection its client closed (CLOSE-WAIT: an open fd) until the keep-alive
    timer (75 s here) ends, because the connection's task group waits for that timer: a client opening a
    connection per request would run the daemon out of fds. Stop the timer once the client is gone."""
    global _closing_on_eof
    if _closing_on_eof:
        return
    from hypercorn.asyncio.tcp_server import TCPServer

    read_data = getattr(TCPServer, "_read_data", None)
    if read_data is None:  # another hypercorn: its own behaviour stands (the keep-alive timer still ends it)
        return

    async def _read_data(self: TCPServer) -> None:
        await read_data(self)  # returns when the client closed or the connection broke
        await self.idle_task.stop()

    TCPServer._read_data = _read_data  # type: ignore[method-assign]
    _closing_on_eof = True


# glibc's malloc gives freed memory back to the system once more than twice the largest freed mmap (at
# least 128 kB) is free at the top of its heap: a turn that resends a long history (a megabyte of JSON,
# its parse, the model's copy) frees a few megabytes, and the next one faults every page back in (on
# this VM, with free-page reporting, a third of the turn: 0.9 of 2.2 ms of CPU at 800 kB). While
# requests come, up to 8 MiB stays free in the heap (and only allocations from 16 MiB, the largest body,
# are mmapped); once none has come for a few seconds, what is free goes back (idle memory is what a
# desktop daemon is judged by).
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
TRIM_THRESHOLD, MMAP_THRESHOLD = 8 << 20, 16 << 20
TRIM_WHEN_QUIET_S = 3.0


class FreedMemory:
    """glibc's malloc, tuned as above; a no-op on other systems and libcs (``tuned`` is False)."""

    def __init__(self) -> None:
        self.tuned = False
        self._trim: Any = None
        self._pending: asyncio.TimerHandle | None = None
        try:
            glibc = os.confstr("CS_GNU_LIBC_VERSION")
        except (AttributeError, ValueError, OSError):  # not a POSIX system, or it doesn't say
            glibc = None
        if not glibc or "GLIBC_TUNABLES" in os.environ:  # another libc, or the user tuned it already
            return
        import ctypes

        try:
            libc = ctypes.CDLL(None)  # the process's own symbols: glibc's among them
            mallopt, self._trim = libc.mallopt, libc.malloc_trim
        except (OSError, AttributeError):
            return
        self.tuned = bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)) & bool(
            mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)
        )

    def watch(self, activity: Activity) -> None:
        """Gives the free memory back once ``activity`` has been quiet for ``TRIM_WHEN_QUIET_S``."""
        if not self.tuned:
            return
        loop = asyncio.get_running_loop()

        def check() -> None:
            quiet = activity.quiet_for()
            if quiet < TRIM_WHEN_QUIET_S:  # a request came meanwhile (or runs): look again later
                self._pending = loop.call_later(TRIM_WHEN_QUIET_S - quiet, check)
                return
            self._pending = None
            self._trim(0)  # ctypes lets go of the GIL; a few ms at most

        def ended() -> None:
            if self._pending is None:
                self._pending = loop.call_later(TRIM_WHEN_QUIET_S, check)

        activity.on_end = ended

    def close(self) -> None:
        if self._pending is not None:
            self._pending.cancel()
            self._pending = None


def _new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


class Daemon:
    """The daemon as the CLI and the tray see it."""

    def __init__(self, home: Home, settings: config.Settings, state: StateHub | None = None) -> None:
        self.home = home
        self.settings = settings
        self.state = state or StateHub()
        self.runtime: Runtime | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._shutdown: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self._lock = InstanceLock(home.lock)
        self._web_ui: WebUI | None = None  # while serving
        self._memory = FreedMemory()

    # -- foreground -------------------------------------------------------------------------------
    def run(self, on_ready: Callable[[str], None] | None = None, *, signals: bool = True) -> None:
        """Serve until SIGINT/SIGTERM (or ``stop()``). Raises StartError when it cannot start."""
        # The loop shares the GIL with the session store's threads: after a syscall of the loop released
        # it, a thread running Python may keep it for the whole switch interval (5 ms by default) before
        # the loop gets it back. 0.5 ms bounds that stall (+16-30 % streamed req/s at c32 here).
        sys.setswitchinterval(SWITCH_INTERVAL)
        with asyncio.Runner(loop_factory=_new_loop) as runner:
            runner.run(self._serve(on_ready, signals))

    async def _serve(self, on_ready: Callable[[str], None] | None, signals: bool) -> None:
        from hypercorn.asyncio import serve
        from hypercorn.config import Config

        from sorat_daemon.http.app import create_app

        self._loop = asyncio.get_running_loop()
        self._shutdown = asyncio.Event()
        self.home.ensure()
        self._lock.acquire()
        try:
            sock = bind(self.settings.server.host, self.settings.server.port)
            url = url_of(sock)
            port = sock.getsockname()[1]
            config.write_template(self.home.config)
            rt = Runtime(self.home, self.settings, self.state)
            rt.port = port
            self.runtime = rt
            await rt.start()
            self._memory.watch(rt.activity)
            app = create_app(rt)
            self._web_ui = app.web_ui  # type: ignore[attr-defined]
            # What start-up made (modules, classes, the runtime) lives as long as the process: out of the
            # collector's sight, a full collection walks only what requests made since.
            gc.freeze()
            hc = Config()
            hc.bind = [f"fd://{sock.detach()}"]  # hypercorn owns the socket from here
            hc.graceful_timeout = GRACEFUL_S
            hc.keep_alive_timeout = 75
            _close_on_eof()
            hc.accesslog = None
            hc.errorlog = logging.getLogger("hypercorn.error")
            if signals and threading.current_thread() is threading.main_thread():
                for sig in (signal.SIGINT, signal.SIGTERM):
                    with contextlib.suppress(NotImplementedError):
                        self._loop.add_signal_handler(sig, self._shutdown.set)
            self._lock.describe(f"pid {os.getpid()}, {url}")
            self.state.update(url=url, running=True, error=None)
            log.info("sorat serving on %s/v1 (home %s)", url, self.home.root)
            if on_ready:
                on_ready(url)
            try:
                await serve(app, hc, shutdown_trigger=self._shutdown.wait)
            finally:
                log.info("stopping: saving sessions")
                self._web_ui = None
                self._memory.close()
                await rt.aclose()
                self.state.update(running=False)
                log.info("stopped")
        finally:
            self._lock.release()

    # -- worker thread (the tray) ----------------------------------------------------------------
    def start_thread(self) -> None:
        ready = threading.Event()

        def target() -> None:
            try:
                self.run(lambda url: ready.set(), signals=False)
            except StartError as e:
                self.state.update(error=str(e))
                log.error("%s", e)
            except Exception as e:  # the tray stays up and says what went wrong
                self.state.update(error=f"sorat stopped: {e}")
                log.exception("daemon thread failed")
            finally:
                ready.set()

        self._thread = threading.Thread(target=target, name="sorat-daemon", daemon=True)
        self._thread.start()
        ready.wait()

    def stop(self, timeout: float = 10.0) -> None:
        loop, shutdown = self._loop, self._shutdown
        if loop and shutdown and not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(shutdown.set)
        if self._thread and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    # -- what the tray shows ---------------------------------------------------------------------
    def models(self) -> list[str]:
        if self.runtime is None:
            return []
        return [m for m, _ in self.runtime.pool.models()]

    def active_model(self) -> str:
        return self.runtime.active_model if self.runtime else self.settings.agent.model

    def set_model(self, name: str) -> None:
        from sorat_daemon.configedit import set_active_model

        set_active_model(self.home.config, name)
        rt, loop = self.runtime, self._loop
        if rt and loop and not loop.is_closed():
            loop.call_soon_threadsafe(rt.set_active_model, name)

    def open_ui_url(self) -> str | None:
        """A fresh one-time sign-in link to the web UI (the tray's *Open sorat*); None until it serves."""
        web_ui = self._web_ui
        return web_ui.login_url() if web_ui is not None else None
