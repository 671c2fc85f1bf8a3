"""A real tray: Xvfb, the trayer system tray, and sorat's icon docked in it through pystray's X11 backend.

Each test starts Xvfb on a display it picks (``-displayfd``), trayer on it, then the app in a subprocess,
and looks at the X server from outside with python-xlib: the icon window is reparented into the tray
(docked), mapped, and drawn with sorat's colours; a click runs the default action; SIGTERM quits
gracefully. ``APPS`` holds what is run: a small script around ``run_tray`` with a fake daemon, and the real
``sorat`` command. Set ``SORAT_SCREENSHOTS=DIR`` to keep the screenshots (``assets/tray-screenshot.png``
is made that way).

Needs Debian's ``xvfb`` and ``trayer``; skips, saying which is missing, without them.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import pytest
from PIL import Image

missing = [program for program in ("Xvfb", "trayer") if shutil.which(program) is None]
pytestmark = [
    pytest.mark.skipif(sys.platform != "linux", reason="Xvfb and trayer are X11 on Linux"),
    pytest.mark.skipif(
        bool(missing), reason=f"{' and '.join(missing)} not installed (apt-get install xvfb trayer)"
    ),
]
Xlib = pytest.importorskip("Xlib", reason="python-xlib (a pystray dependency on Linux) is not installed")
from Xlib import X, display  # noqa: E402
from Xlib.ext import xtest  # noqa: E402
from Xlib.xobject.drawable import Window  # noqa: E402

from tests.desktop.procs import stop  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
SCREEN = (480, 320)  # room for a menu below the tray
PANEL_HEIGHT = 40
DEADLINE_S = 15.0
T = TypeVar("T")

FAKE_APP = textwrap.dedent(
    """
    import faulthandler, logging, os, signal, sys, threading
    from pathlib import Path

    if os.environ.get("SORAT_TEST_SYS_PATH"):  # the system's PyGObject, for pystray's GTK backend
        sys.path.append(os.environ["SORAT_TEST_SYS_PATH"])

    from sorat_daemon.desktop import tray
    from sorat_daemon.paths import Home
    from sorat_daemon.state import StateHub

    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    faulthandler.register(signal.SIGUSR2, all_threads=True)  # the test asks for the stacks if it hangs


    class FakeDaemon:
        def __init__(self, home):
            self.home, self.state = home, StateHub()

        def start_thread(self):
            self.state.update(url="http://127.0.0.1:8080", running=True, model="gpt-4o")

        def stop(self, timeout=10.0):
            self.state.update(running=False)
            print("daemon stopped", flush=True)

        def models(self):
            return ["gpt-4o", "gpt-4o-mini"]

        def active_model(self):
            return "gpt-4o"

        def set_model(self, name):
            pass


    daemon = FakeDaemon(Home(Path(sys.argv[1])))


    def commands():  # the test drives the daemon's state through stdin
        for line in sys.stdin:
            if line.strip() == "attention":
                daemon.state.update(provider_error="openai: 401 Incorrect API key provided")
            elif line.strip() == "ok":
                daemon.state.update(provider_error=None)


    threading.Thread(target=commands, daemon=True).start()
    result = tray.run_tray(daemon, opener=lambda path: print(f"opened {path}", flush=True))
    print(f"run_tray returned {result}", flush=True)
    """
)

REAL_CONFIG = """\
[server]
port = 0

[[providers]]
name = "local"
base_url = "http://127.0.0.1:9/v1"
models = ["tiny-model", "other-model"]
"""


def log_to(path: Path) -> int:
    """A file descriptor for a child's stderr; the child keeps its own copy once started."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    _fds.append(fd)
    return fd


_fds: list[int] = []


@pytest.fixture(autouse=True)
def _close_log_fds() -> Iterator[None]:
    yield
    while _fds:
        os.close(_fds.pop())


def wait_for(
    what: str, probe: Callable[[], T | None], timeout: float = DEADLINE_S, logs: Path | None = None
) -> T:
    """Poll ``probe`` until it returns something, within a deadline (the X server has no event for it)."""
    deadline = time.monotonic() + timeout
    pause = threading.Event()
    while True:
        value = probe()
        if value is not None and value is not False:
            return value
        if time.monotonic() > deadline:
            found = ""
            if logs and Desktop.last:
                for proc in Desktop.last.procs:  # the fake app dumps its threads' stacks on SIGUSR2
                    proc.send_signal(signal.SIGUSR2)
                pause.wait(1)
                Desktop.last.screenshot().save(logs / "timeout.png")
                found += f"\n--- windows:\n{Desktop.last.tree()}"
            if logs:
                found += "".join(f"\n--- {p.name}:\n{p.read_text()}" for p in sorted(logs.glob("*.log")))
            raise AssertionError(f"timed out waiting for {what}{found}")
        pause.wait(0.05)


@dataclass
class Desktop:
    name: str  # ":N"
    conn: Any
    trayer: subprocess.Popen[Any]
    procs: list[subprocess.Popen[Any]] = field(default_factory=list)
    last: ClassVar[Desktop | None] = None

    @property
    def root(self) -> Window:
        return self.conn.screen().root

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in ("WAYLAND_DISPLAY", "PYSTRAY_BACKEND")}
        # trayer is an XEMBED tray: pystray's X11 backend docks there (AppIndicator needs an SNI host)
        env.update(DISPLAY=self.name, PYSTRAY_BACKEND="xorg", PYTHONUNBUFFERED="1")
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        return env

    def screenshot(self) -> Image.Image:
        w, h = SCREEN
        raw = self.root.get_image(0, 0, w, h, X.ZPixmap, 0xFFFFFFFF)
        return Image.frombytes("RGB", (w, h), raw.data, "raw", "BGRX")

    def tree(self) -> str:
        lines: list[str] = []

        def walk(window: Window, depth: int) -> None:
            try:
                g, a = window.get_geometry(), window.get_attributes()
                lines.append(
                    f"{'  ' * depth}{window.id:#x} {window.get_wm_class()} {g.width}x{g.height}+{g.x}+{g.y}"
                    f" map_state={a.map_state}"
                )
                for child in window.query_tree().children:
                    walk(child, depth + 1)
            except Xlib.error.XError as e:
                lines.append(f"{'  ' * depth}{window.id:#x} {e}")

        walk(self.root, 0)
        return "\n".join(lines)

    def icon_window(self) -> Window | None:
        def walk(window: Window) -> Iterator[Window]:
            try:
                children = window.query_tree().children
            except Xlib.error.XError:
                return
            for child in children:
                yield child
                yield from walk(child)

        for window in walk(self.root):
            try:
                if window.get_wm_class() == ("soratSystemTrayIcon", "sorat"):
                    return window
            except Xlib.error.XError:
                continue
        return None

    def docked_icon(self) -> tuple[int, int, int, int] | None:
        """The icon's box on screen once the tray has embedded it: reparented away from the root, mapped."""
        window = self.icon_window()
        if window is None:
            return None
        try:
            parent = window.query_tree().parent
            viewable = window.get_attributes().map_state == X.IsViewable
            geometry = window.get_geometry()
            origin = window.translate_coords(self.root, 0, 0)
        except Xlib.error.XError:
            return None
        if parent.id == self.root.id or not viewable or geometry.width < 8:
            return None
        return (-origin.x, -origin.y, geometry.width, geometry.height)

    def click(self, x: int, y: int) -> None:
        xtest.fake_input(self.conn, X.MotionNotify, x=x, y=y)
        xtest.fake_input(self.conn, X.ButtonPress, 1)
        xtest.fake_input(self.conn, X.ButtonRelease, 1)
        self.conn.sync()


@pytest.fixture
def desktop(tmp_path: Path) -> Iterator[Desktop]:
    read, write = os.pipe()
    xvfb = subprocess.Popen(
        ["Xvfb", "-displayfd", str(write), "-screen", "0", f"{SCREEN[0]}x{SCREEN[1]}x24", "-nolisten", "tcp"],
        pass_fds=(write,),
        stdout=subprocess.DEVNULL,
        stderr=log_to(tmp_path / "xvfb.log"),
    )
    os.close(write)
    with os.fdopen(read) as f:
        number = f.readline().strip()  # Xvfb writes the display it took once it accepts clients
    if not number:
        stop(xvfb)
        pytest.fail(f"Xvfb did not start: {(tmp_path / 'xvfb.log').read_text()}")
    name = f":{number}"
    conn = display.Display(name)
    trayer = subprocess.Popen(
        ["trayer", "--edge", "top", "--align", "right", "--widthtype", "pixel", "--width", "200"]
        + ["--heighttype", "pixel", "--height", str(PANEL_HEIGHT), "--transparent", "false"]
        + ["--SetDockType", "true", "--SetPartialStrut", "true", "--expand", "true", "--padding", "4"],
        env={**os.environ, "DISPLAY": name},
        stdout=subprocess.DEVNULL,
        stderr=log_to(tmp_path / "trayer.log"),
    )
    tray_atom = conn.intern_atom("_NET_SYSTEM_TRAY_S0")
    desk = Desktop.last = Desktop(name, conn, trayer)
    try:
        wait_for("trayer to own the system tray", lambda: conn.get_selection_owner(tray_atom) != X.NONE)
        # and to show its panel: a dock request that comes before trayer is realized goes unanswered
        corner = (SCREEN[0] - 10, PANEL_HEIGHT // 2)
        wait_for("trayer's panel", lambda: desk.screenshot().getpixel(corner) != (0, 0, 0))
        yield desk
    finally:
        for proc in desk.procs:
            stop(proc)
        stop(trayer)
        conn.close()
        stop(xvfb)


class Lines:
    """A subprocess's stdout as a queue of lines, to wait on with a deadline."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.seen: list[str] = []
        self.queue: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, args=(proc,), daemon=True).start()

    def _read(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            self.queue.put(line.rstrip("\n"))

    def expect(self, wanted: str, timeout: float = DEADLINE_S) -> str:
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no line {wanted!r} in {self.seen}") from None
            self.seen.append(line)
            if wanted in line:
                return line


def run_fake(desktop: Desktop, tmp_path: Path, **env: str) -> subprocess.Popen[str]:
    script = tmp_path / "fake_tray.py"
    script.write_text(FAKE_APP)
    return subprocess.Popen(
        [sys.executable, str(script), str(tmp_path / "home")],
        env=desktop.env() | env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=log_to(tmp_path / "app.log"),
        text=True,
        cwd=tmp_path,
    )


def run_sorat(desktop: Desktop, tmp_path: Path, **extra: str) -> subprocess.Popen[str]:
    home = tmp_path / "home"
    home.mkdir()
    (home / "config.toml").write_text(REAL_CONFIG)
    env = desktop.env() | {"SORAT_HOME": str(home)} | extra
    env.pop("OPENAI_API_KEY", None)
    return subprocess.Popen(
        [sys.executable, "-m", "sorat_daemon"],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=log_to(tmp_path / "app.log"),
        text=True,
        cwd=tmp_path,
    )


APPS: dict[str, Callable[[Desktop, Path], subprocess.Popen[str]]] = {"fake": run_fake, "sorat": run_sorat}


def colours(image: Image.Image) -> dict[str, int]:
    data = image.convert("RGB").tobytes()
    pixels = [tuple(data[i : i + 3]) for i in range(0, len(data), 3)]
    return {
        "tile": sum(1 for r, g, b in pixels if b > r + 40 and b > 110),  # the indigo-to-teal tile
        "white": sum(1 for r, g, b in pixels if min(r, g, b) > 225),  # the mark
        "amber": sum(1 for r, g, b in pixels if r > 200 and 120 < g < 190 and b < 60),  # the badge
    }


def keep(image: Image.Image, name: str) -> None:
    where = os.environ.get("SORAT_SCREENSHOTS")
    if where:
        Path(where).mkdir(parents=True, exist_ok=True)
        image.save(Path(where) / name, optimize=True)


def panel(shot: Image.Image, box: tuple[int, int, int, int]) -> Image.Image:
    """The strip of the screen around the tray, as the README shows it."""
    x, y, w, h = box
    return shot.crop((max(0, x - 120), 0, min(SCREEN[0], x + w + 40), PANEL_HEIGHT))


def test_icon_docks_changes_state_answers_clicks_and_quits(desktop: Desktop, tmp_path: Path) -> None:
    app = run_fake(desktop, tmp_path)
    desktop.procs.append(app)
    out = Lines(app)

    box = wait_for("the icon to dock in trayer", desktop.docked_icon, logs=tmp_path)

    def icon() -> Image.Image:
        # the tray may still move or resize the icon after it docked
        x, y, w, h = wait_for("the icon to be docked", desktop.docked_icon, logs=tmp_path)
        return desktop.screenshot().crop((x, y, x + w, y + h))

    def drawn() -> dict[str, int] | None:
        image = icon()
        found = colours(image)
        return found if found["tile"] > image.width * image.height // 4 else None

    seen = wait_for("the icon to be drawn", drawn, logs=tmp_path)
    assert seen["white"] > 0 and seen["amber"] == 0, seen
    running = desktop.screenshot()
    keep(running, "tray-running-full.png")

    assert app.stdin is not None
    app.stdin.write("attention\n")
    app.stdin.flush()
    wait_for("the attention badge", lambda: colours(icon())["amber"] > 4, logs=tmp_path)
    attention = desktop.screenshot()
    keep(attention, "tray-attention-full.png")
    keep(
        side_by_side(panel(running, box), panel(attention, desktop.docked_icon() or box)),
        "tray-screenshot.png",
    )
    app.stdin.write("ok\n")
    app.stdin.flush()
    wait_for("the badge to go", lambda: colours(icon())["amber"] == 0)

    # X11 trays have no menus in pystray: a left click runs the default item, Open session folder
    x, y, w, h = wait_for("the icon to be docked", desktop.docked_icon)
    desktop.click(x + w // 2, y + h // 2)
    assert out.expect("opened ") == f"opened {tmp_path / 'home' / 'sessions'}"

    app.send_signal(signal.SIGTERM)
    assert exit_code(app, tmp_path / "app.log") == 0, (tmp_path / "app.log").read_text()
    out.expect("daemon stopped")
    out.expect("run_tray returned True")
    wait_for("the icon to leave the tray", lambda: desktop.icon_window() is None)


def exit_code(app: subprocess.Popen[str], log: Path) -> int:
    try:
        return app.wait(DEADLINE_S)
    except subprocess.TimeoutExpired:
        app.send_signal(signal.SIGUSR2)
        try:
            app.wait(2)
        except subprocess.TimeoutExpired:
            pass
        raise AssertionError(f"the app did not quit; its threads:\n{log.read_text()}") from None


def side_by_side(left: Image.Image, right: Image.Image) -> Image.Image:
    gap = 12
    sheet = Image.new(
        "RGB", (left.width + gap + right.width, max(left.height, right.height)), (255, 255, 255)
    )
    sheet.paste(left, (0, 0))
    sheet.paste(right, (left.width + gap, 0))
    return sheet.resize((sheet.width * 2, sheet.height * 2), Image.Resampling.NEAREST)


def test_real_sorat_in_the_tray(desktop: Desktop, tmp_path: Path) -> None:
    app = run_sorat(desktop, tmp_path)
    desktop.procs.append(app)
    lock = tmp_path / "home" / "sorat.lock"

    def url() -> str | None:
        text = lock.read_text() if lock.exists() else ""
        return next((w.rstrip(",") for w in text.split() if w.startswith("http://")), None)

    base = wait_for("sorat to listen", url)
    with urllib.request.urlopen(f"{base}/health", timeout=5) as response:
        assert json.load(response)["status"] == "ok"
    box = wait_for("the icon to dock in trayer", desktop.docked_icon, logs=tmp_path)
    x, y, w, h = box
    wait_for(
        "the icon to be drawn", lambda: colours(desktop.screenshot().crop((x, y, x + w, y + h)))["tile"] > 0
    )
    keep(desktop.screenshot(), "tray-sorat-full.png")

    app.send_signal(signal.SIGTERM)
    assert app.wait(DEADLINE_S) == 0, (tmp_path / "app.log").read_text()
    log = (tmp_path / "app.log").read_text()
    assert "stopped" in log, log
    assert "no tray" not in log, log


@pytest.mark.skipif(shutil.which("dbus-daemon") is None, reason="dbus-daemon is not installed")
def test_an_x11_tray_wins_over_a_bus_without_a_panel(desktop: Desktop, tmp_path: Path) -> None:
    """A session bus with no StatusNotifierWatcher on it, and an X11 system tray: the icon docks there (as
    pystray's X11 icon), and sorat leaves the bus rather than keep an item there that no panel shows."""
    pytest.importorskip("dbus_fast")
    from tests.desktop.sni_host import Host, session_bus

    with session_bus(tmp_path / "dbus-daemon.log") as bus:
        # PYSTRAY_BACKEND empty: no backend asked for, so sorat chooses (pystray then picks X11 here)
        app = run_sorat(desktop, tmp_path, DBUS_SESSION_BUS_ADDRESS=bus, PYSTRAY_BACKEND="")
        desktop.procs.append(app)
        wait_for("the icon to dock in trayer", desktop.docked_icon, logs=tmp_path)
        host = Host(bus)
        try:
            item = f"org.kde.StatusNotifierItem-{app.pid}-1"
            wait_for("sorat to leave the bus", lambda: host.dbus("NameHasOwner", "s", [item]) == [False])
        finally:
            host.close()
        app.send_signal(signal.SIGTERM)
        assert app.wait(DEADLINE_S) == 0, (tmp_path / "app.log").read_text()
        assert "no tray" not in (tmp_path / "app.log").read_text()


SYSTEM_PYTHON = "/usr/lib/python3/dist-packages"


def system_gi() -> str | None:
    """Why the GTK backend cannot run here, or None: it needs PyGObject (Debian's python3-gi, usable from
    this Python when the ABI matches), a session bus (dbus-x11) and, for pystray, a notification daemon."""
    probe = "import sys; sys.path.append(sys.argv[1]); import gi; gi.require_version('Gtk', '3.0')"
    probe += "; from gi.repository import Gtk"
    if subprocess.run([sys.executable, "-c", probe, SYSTEM_PYTHON], capture_output=True).returncode:
        return "PyGObject with GTK 3 is not importable (apt-get install python3-gi gir1.2-gtk-3.0)"
    if shutil.which("dbus-launch") is None:
        return "dbus-launch is not installed (apt-get install dbus-x11)"
    if shutil.which("dunst") is None:
        return "no notification daemon, which pystray's GTK backend needs (apt-get install dunst)"
    return None


@pytest.fixture
def session_bus(desktop: Desktop) -> Iterator[dict[str, str]]:
    out = subprocess.run(["dbus-launch", "--sh-syntax"], env=desktop.env(), capture_output=True, text=True)
    env = {}
    for line in out.stdout.splitlines():
        key, _, value = line.partition("=")
        if key.startswith("DBUS_"):
            env[key] = value.strip().rstrip(";").strip("'")
    yield env
    if "DBUS_SESSION_BUS_PID" in env:
        os.kill(int(env["DBUS_SESSION_BUS_PID"]), signal.SIGTERM)


def test_gtk_menu_quits(desktop: Desktop, session_bus: dict[str, str], tmp_path: Path) -> None:
    reason = system_gi()
    if reason:
        pytest.skip(reason)
    app = run_fake(desktop, tmp_path, PYSTRAY_BACKEND="gtk", SORAT_TEST_SYS_PATH=SYSTEM_PYTHON, **session_bus)
    desktop.procs.append(app)
    out = Lines(app)

    def app_windows() -> list[Window]:
        found = []
        for window in desktop.root.query_tree().children:
            try:
                if window.get_wm_class() == ("fake_tray.py", "Fake_tray.py"):
                    found.append(window)
            except Xlib.error.XError:
                continue
        return found

    def status_icon() -> tuple[int, int, int, int] | None:
        def walk(window: Window) -> Iterator[Window]:
            for child in window.query_tree().children:
                yield child
                yield from walk(child)

        for window in walk(desktop.root):
            try:
                if window.get_wm_class() == ("fake_tray.py", "Fake_tray.py"):
                    if window.query_tree().parent.id != desktop.root.id:  # embedded in the tray
                        g, o = window.get_geometry(), window.translate_coords(desktop.root, 0, 0)
                        return (-o.x, -o.y, g.width, g.height)
            except Xlib.error.XError:
                continue
        return None

    x0, y0, w0, h0 = wait_for("GTK's status icon to dock", status_icon, logs=tmp_path)
    last_click = [0.0]

    def right_click_until_open() -> tuple[int, int, int, int] | None:
        # GTK ignores a click that comes before its icon is ready: click again, once a second
        found = menu()
        if found is None and time.monotonic() - last_click[0] > 1.0:
            last_click[0] = time.monotonic()
            # where the icon is now: the tray may lay its slots out again after the icon docked
            x, y, w, h = status_icon() or (x0, y0, w0, h0)
            xtest.fake_input(desktop.conn, X.MotionNotify, x=x + w // 2, y=y + h // 2)
            xtest.fake_input(desktop.conn, X.ButtonPress, 3)
            xtest.fake_input(desktop.conn, X.ButtonRelease, 3)
            desktop.conn.sync()
        return found

    def menu() -> tuple[int, int, int, int] | None:
        for window in app_windows():
            try:
                g = window.get_geometry()
                if window.get_attributes().map_state == X.IsViewable and g.height > 100:
                    return (g.x, g.y, g.width, g.height)
            except Xlib.error.XError:
                continue
        return None

    mx, my, mw, mh = wait_for("the menu to open", right_click_until_open, logs=tmp_path)
    keep(desktop.screenshot(), "tray-menu-full.png")
    desktop.click(mx + 40, my + mh - 14)  # the last item: Quit
    assert exit_code(app, tmp_path / "app.log") == 0, (tmp_path / "app.log").read_text()
    out.expect("daemon stopped")
    out.expect("run_tray returned True")
