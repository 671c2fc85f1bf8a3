"""A real panel: Xvfb, xfce4-panel (whose system tray plugin is a StatusNotifierWatcher and host), and the
real ``sorat`` as a StatusNotifierItem in it. The icon shows in the panel, a left click opens its menu (drawn
by the panel from sorat's dbusmenu), and Quit in that menu ends sorat. Set ``SORAT_SCREENSHOTS=DIR`` to keep
the screenshots (``assets/tray-sni-xfce.png`` is made that way).

Needs Debian's ``xvfb``, ``xfce4-panel`` and ``dbus-daemon``; skips, saying which is missing, without them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

missing = [p for p in ("Xvfb", "xfce4-panel", "dbus-daemon") if shutil.which(p) is None]
pytestmark = [
    pytest.mark.skipif(sys.platform != "linux", reason="Xvfb and xfce4-panel are Linux programs"),
    pytest.mark.skipif(
        bool(missing),
        reason=f"{' and '.join(missing)} not installed (apt-get install xvfb xfce4-panel dbus-daemon)",
    ),
]
Xlib = pytest.importorskip("Xlib", reason="python-xlib (a pystray dependency on Linux) is not installed")
pytest.importorskip("dbus_fast", reason="dbus-fast (a dependency on Linux) is not installed")
from Xlib import X, display  # noqa: E402
from Xlib.ext import xtest  # noqa: E402

from tests.desktop.sni_host import session_bus, stop  # noqa: E402
from tests.desktop.test_sni_tray import poll  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
SCREEN = (480, 320)
PANEL = 32
# one panel along the top with a spacer and the system tray: xfconfd reads it instead of asking, as a
# first start does, which layout to use
PANEL_XML = f"""<?xml version="1.0" encoding="UTF-8"?>
<channel name="xfce4-panel" version="1.0">
  <property name="configver" type="int" value="2"/>
  <property name="panels" type="array">
    <value type="int" value="1"/>
    <property name="panel-1" type="empty">
      <property name="position" type="string" value="p=6;x=0;y=0"/>
      <property name="length" type="uint" value="100"/>
      <property name="position-locked" type="bool" value="true"/>
      <property name="size" type="uint" value="{PANEL}"/>
      <property name="icon-size" type="uint" value="24"/>
      <property name="plugin-ids" type="array">
        <value type="int" value="1"/><value type="int" value="2"/>
      </property>
    </property>
  </property>
  <property name="plugins" type="empty">
    <property name="plugin-1" type="string" value="separator">
      <property name="expand" type="bool" value="true"/><property name="style" type="uint" value="0"/>
    </property>
    <property name="plugin-2" type="string" value="systray">
      <property name="square-icons" type="bool" value="true"/>
    </property>
  </property>
</channel>
"""


@dataclass
class Desktop:
    name: str
    conn: Any
    env: dict[str, str]
    bus: str
    logs: Path
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def start_panel(self) -> None:
        """xfce4-panel, once its StatusNotifierWatcher is on the bus."""
        with open(self.logs / "panel.log", "ab") as log:
            self.procs.append(
                subprocess.Popen(["xfce4-panel", "--disable-wm-check"], env=self.env, stdout=log, stderr=log)
            )
        poll("xfce4-panel's StatusNotifierWatcher", lambda: self.owned("org.kde.StatusNotifierWatcher"))

    def owned(self, name: str) -> bool:
        out = subprocess.run(
            [
                "dbus-send",
                f"--bus={self.bus}",
                "--print-reply",
                "--dest=org.freedesktop.DBus",
                "/org/freedesktop/DBus",
                "org.freedesktop.DBus.NameHasOwner",
                f"string:{name}",
            ],
            capture_output=True,
            text=True,
        )
        return "boolean true" in out.stdout

    def screenshot(self) -> Image.Image:
        w, h = SCREEN
        raw = self.conn.screen().root.get_image(0, 0, w, h, X.ZPixmap, 0xFFFFFFFF)
        return Image.frombytes("RGB", (w, h), raw.data, "raw", "BGRX")

    def click(self, x: int, y: int) -> None:
        xtest.fake_input(self.conn, X.MotionNotify, x=x, y=y)
        xtest.fake_input(self.conn, X.ButtonPress, 1)
        xtest.fake_input(self.conn, X.ButtonRelease, 1)
        self.conn.sync()

    def point(self, x: int, y: int) -> None:
        xtest.fake_input(self.conn, X.MotionNotify, x=x, y=y)
        self.conn.sync()

    def popups(self) -> list[tuple[int, int, int, int]]:
        """The menus open on screen: mapped override-redirect windows taller than a tooltip."""
        found = []
        for window in self.conn.screen().root.query_tree().children:
            try:
                a, g = window.get_attributes(), window.get_geometry()
            except Xlib.error.XError:
                continue
            if a.map_state == X.IsViewable and a.override_redirect and g.height > 40:
                found.append((g.x, g.y, g.width, g.height))
        return sorted(found)


@pytest.fixture
def desktop(tmp_path: Path) -> Iterator[Desktop]:
    config = tmp_path / "config"
    channel = config / "xfce4" / "xfconf" / "xfce-perchannel-xml"
    channel.mkdir(parents=True)
    (channel / "xfce4-panel.xml").write_text(PANEL_XML)
    read, write = os.pipe()
    xvfb = subprocess.Popen(
        ["Xvfb", "-displayfd", str(write), "-screen", "0", f"{SCREEN[0]}x{SCREEN[1]}x24", "-nolisten", "tcp"],
        pass_fds=(write,),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    os.close(write)
    with os.fdopen(read) as f:
        name = f":{f.readline().strip()}"
    runtime = tmp_path / "runtime"
    runtime.mkdir()
    base = {k: v for k, v in os.environ.items() if not k.startswith(("DBUS_", "XDG_", "SORAT_", "OPENAI_"))}
    base.pop("WAYLAND_DISPLAY", None)
    base.pop("PYSTRAY_BACKEND", None)
    base.update(DISPLAY=name, XDG_CONFIG_HOME=str(config), XDG_RUNTIME_DIR=str(runtime))
    try:
        # xfconfd, which the panel reads its layout from, is started by the bus: it gets the bus's environment
        with session_bus(tmp_path / "dbus-daemon.log", base) as bus:
            conn = display.Display(name)
            root = conn.screen().root  # a desktop's colour rather than X's black, for the screenshots
            root.change_attributes(
                background_pixel=conn.screen().default_colormap.alloc_color(0x5A00, 0x6E00, 0x8C00).pixel
            )
            root.clear_area(0, 0, SCREEN[0], SCREEN[1])
            conn.sync()
            desk = Desktop(name, conn, {**base, "DBUS_SESSION_BUS_ADDRESS": bus}, bus, tmp_path)
            try:
                yield desk
            finally:
                for proc in desk.procs:
                    stop(proc)
                conn.close()
    finally:
        stop(xvfb)


def keep(image: Image.Image, name: str) -> None:
    where = os.environ.get("SORAT_SCREENSHOTS")
    if where:
        Path(where).mkdir(parents=True, exist_ok=True)
        image.save(Path(where) / name, optimize=True)


def icon_box(desktop: Desktop) -> tuple[int, int, int, int] | None:
    """Where sorat's indigo-to-teal tile is in the panel, if it is there."""
    shot = desktop.screenshot().crop((0, 0, SCREEN[0], PANEL))
    px = shot.load()
    assert px is not None
    tile = [
        (x, y) for y in range(PANEL) for x in range(SCREEN[0]) if px[x, y][2] > max(px[x, y][0] + 40, 110)
    ]
    if len(tile) < 100:  # a 24 px icon is mostly tile
        return None
    xs, ys = [x for x, _ in tile], [y for _, y in tile]
    return min(xs), min(ys), max(xs) - min(xs) + 1, max(ys) - min(ys) + 1


def start_sorat(desktop: Desktop, tmp_path: Path) -> tuple[subprocess.Popen[bytes], Path]:
    home = tmp_path / "home"
    home.mkdir()
    (home / "config.toml").write_text(
        '[server]\nport = 0\n\n[agent]\nmodel = "qwen2_5-coder"\n\n[[providers]]\nname = "local"\n'
        'base_url = "http://127.0.0.1:9/v1"\nmodels = ["qwen2_5-coder", "gpt-4o-mini"]\n'
    )
    env = {
        **desktop.env,
        "SORAT_HOME": str(home),
        "XDG_CONFIG_HOME": str(tmp_path / "xdg"),
        "PYTHONUNBUFFERED": "1",
    }
    log = tmp_path / "sorat.log"
    with open(log, "wb") as err:
        app = subprocess.Popen(
            [sys.executable, "-m", "sorat_daemon"], env=env, stdout=err, stderr=err, cwd=REPO
        )
    desktop.procs.append(app)
    return app, log


def test_the_icon_in_xfce4_panel_and_its_menu(desktop: Desktop, tmp_path: Path) -> None:
    desktop.start_panel()
    app, log = start_sorat(desktop, tmp_path)
    try:
        poll(
            "sorat to register its item",
            lambda: "registered with the StatusNotifierWatcher" in log.read_text(),
        )
        # the menu says where sorat listens once it does; a menu opened before shows "starting…", and is
        # rebuilt while open when the models arrive (which GTK draws as an empty submenu until reopened)
        poll("sorat to serve", lambda: "sorat serving on" in log.read_text())
        x, y, w, h = poll("the icon in the panel", lambda: icon_box(desktop))
        keep(desktop.screenshot(), "tray-sni-xfce-icon.png")
        last_click = [0.0]

        def open_menu() -> tuple[int, int, int, int] | None:
            # the panel ignores a click that comes before its item is ready: click again, once a second
            found = desktop.popups()
            if not found and time.monotonic() - last_click[0] > 1.0:
                last_click[0] = time.monotonic()
                desktop.click(x + w // 2, y + h // 2)
            return found[0] if found else None

        mx, my, mw, mh = poll("the menu to open on a left click", open_menu)
        assert mh > 150  # all of it: eight items and three separators
        # for the screenshot, the radio items too: the Model item is the fourth row (where this theme draws
        # it; if not, the screenshot shows the menu alone)
        desktop.point(mx + 40, my + mh * 92 // 211)
        try:
            menus = poll(
                "the Model submenu", lambda: (found := desktop.popups()) and len(found) > 1 and found, 3
            )
        except AssertionError:
            menus = [(mx, my, mw, mh)]
        shot = desktop.screenshot()
        left = max(0, min(bx for bx, _, _, _ in menus) - 8)
        right = min(SCREEN[0], max(bx + bw for bx, _, bw, _ in menus) + 8)
        bottom = min(SCREEN[1], max(by + bh for _, by, _, bh in menus) + 8)
        keep(shot.crop((left, 0, right, bottom)), "tray-sni-xfce.png")
        desktop.point(mx + 40, my + 5)  # off the submenu, onto the status line
        desktop.click(mx + 40, my + mh - 14)  # the last item: Quit
        assert app.wait(15) == 0, log.read_text()
    finally:
        if app.poll() is None:
            app.kill()
            app.wait()
    text = log.read_text()
    assert "no tray" not in text and "Traceback" not in text, text


def test_a_panel_that_starts_after_sorat(desktop: Desktop, tmp_path: Path) -> None:
    """At login the panel may come up a moment after sorat: sorat, waiting for a system tray on the display,
    takes the StatusNotifierWatcher that arrives instead, and shows its item there (with its menu), not the
    X11 icon (without one)."""
    app, log = start_sorat(desktop, tmp_path)
    # sorat is on the bus (its item's name) and not serving yet: it waits for a tray to dock in
    poll("sorat's item on the bus", lambda: desktop.owned(f"org.kde.StatusNotifierItem-{app.pid}-1"))
    assert "sorat serving on" not in log.read_text()
    desktop.start_panel()
    poll("sorat to register its item", lambda: "registered with the StatusNotifierWatcher" in log.read_text())
    poll("sorat to serve", lambda: "sorat serving on" in log.read_text())
    poll("the icon in the panel", lambda: icon_box(desktop))
    app.terminate()
    assert app.wait(15) == 0, log.read_text()
    text = log.read_text()
    # (a panel slower than the wait for a system tray finds the item waiting on the bus: "no tray yet")
    assert "no tray:" not in text and "Traceback" not in text, text
