"""The real thing: ``sorat`` (tray mode, no display) as a StatusNotifierItem on a private session bus, with a
StatusNotifierWatcher and a host written here (``sni_host``), as a panel would run them.

Checked from outside, on the bus: registration (and again when the watcher comes late or restarts), the
item's properties and icon pixmaps, the menu's layout, clicks that switch the model (config.toml and
``/v1/models`` follow), toggle Start at login and Quit (exit 0, sessions intact), the signals that follow a
change of state, and what sorat does with a watcher that refuses or vanishes, an unknown item id, and a
menu rebuilt while open. Needs Debian's ``dbus-daemon``; skips, saying so, without it.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import httpx
import pytest
from PIL import Image

pytestmark = [
    pytest.mark.skipif(sys.platform != "linux", reason="the session D-Bus of a Linux desktop"),
    pytest.mark.skipif(
        not shutil.which("dbus-daemon"),
        reason="dbus-daemon is not installed (apt-get install dbus-daemon)",
    ),
]
pytest.importorskip("dbus_fast", reason="dbus-fast (a dependency on Linux) is not installed")

from dbus_fast import MessageType, Variant  # noqa: E402

from tests.conftest import write_config  # noqa: E402
from tests.desktop.sni_host import DEADLINE_S, Host, Node, Watching, session_bus, start_watcher, stop  # noqa: E402
from tests.upstream import Upstream, text  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
ASSETS = REPO / "sorat_daemon" / "assets"
REGISTER_WITHIN_S = 5.0  # the spec's promise once a watcher appears
T = TypeVar("T")


def poll(what: str, probe: Callable[[], T | None], timeout: float = DEADLINE_S) -> T:
    """``probe`` until it returns something, within a deadline (files and processes signal nothing)."""
    deadline = time.monotonic() + timeout
    pause = threading.Event()
    while True:
        value = probe()
        if value is not None and value is not False:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        pause.wait(0.05)


@dataclass
class Sorat:
    proc: subprocess.Popen[bytes]
    home: Path
    log: Path
    url: str = ""
    token: str = ""

    def logged(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_logged(self, needle: str, timeout: float = DEADLINE_S) -> str:
        return poll(
            f"{needle!r} in sorat's log",
            lambda: next((line for line in self.logged().splitlines() if needle in line), None),
            timeout,
        )

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {self.token}"}, timeout=10)


@pytest.fixture
def bus(tmp_path: Path) -> Iterator[str]:
    with session_bus(tmp_path / "dbus-daemon.log") as address:
        yield address


@pytest.fixture
def host(bus: str) -> Iterator[Host]:
    h = Host(bus)
    yield h
    h.close()


@pytest.fixture
def watchers() -> Iterator[list[Watching]]:
    running: list[Watching] = []
    yield running
    for w in running:
        stop(w.proc)


@pytest.fixture
def fake_bin(tmp_path: Path) -> Path:
    """xdg-open that records what it was asked to open, instead of starting a file manager."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    opener = bin_dir / "xdg-open"
    opener.write_text(f'#!/bin/sh\necho "$*" >> {tmp_path / "opened"}\n')
    opener.chmod(0o755)
    browser = bin_dir / "fake-browser"  # $BROWSER, which webbrowser honours: the web UI's sign-in link
    browser.write_text(f'#!/bin/sh\necho "$*" >> {tmp_path / "browsed"}\n')
    browser.chmod(0o755)
    return bin_dir


def start_sorat(tmp_path: Path, bus: str | None, fake_bin: Path, upstream: Upstream | None = None) -> Sorat:
    home = tmp_path / "home"
    if upstream is not None:
        write_config(home, upstream.base_url, "[server]\nport = 0\n")
    else:
        home.mkdir(parents=True, exist_ok=True)
        (home / "config.toml").write_text(
            '[server]\nport = 0\n\n[agent]\nmodel = "tiny-model"\n\n[[providers]]\nname = "local"\n'
            'base_url = "http://127.0.0.1:9/v1"\nmodels = ["tiny-model", "other-model"]\n'
        )
    runtime = tmp_path / "runtime"  # no $XDG_RUNTIME_DIR/bus: only the bus given here
    runtime.mkdir(exist_ok=True)
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("OPENAI_", "SORAT_", "DBUS_", "XDG_"))
        and k not in ("DISPLAY", "WAYLAND_DISPLAY", "PYSTRAY_BACKEND")
    }
    env.update(
        SORAT_HOME=str(home),
        XDG_CONFIG_HOME=str(tmp_path / "xdg"),
        XDG_CONFIG_DIRS=str(tmp_path / "xdg-dirs"),
        XDG_RUNTIME_DIR=str(runtime),
        PATH=f"{fake_bin}{os.pathsep}{env.get('PATH', '')}",
        BROWSER=str(fake_bin / "fake-browser"),
        PYTHONUNBUFFERED="1",
    )
    if bus:
        env["DBUS_SESSION_BUS_ADDRESS"] = bus
    log = tmp_path / "sorat.log"
    with open(log, "wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "sorat_daemon"], env=env, stdout=err, stderr=err, cwd=REPO
        )
    sorat = Sorat(proc, home, log)
    lock = home / "sorat.lock"

    def listening() -> str | None:
        if proc.poll() is not None:
            raise AssertionError(f"sorat exited {proc.returncode}: {sorat.logged()}")
        found = lock.read_text() if lock.exists() else ""
        return found.strip().split(", ", 1)[1] if f"pid {proc.pid}," in found else None

    try:
        sorat.url = poll("sorat to listen", listening)
    except BaseException:
        proc.kill()  # the caller never gets it to stop
        proc.wait()
        raise
    sorat.token = (home / "token").read_text().strip()
    return sorat


@pytest.fixture
def sorats() -> Iterator[list[Sorat]]:
    running: list[Sorat] = []
    yield running
    for s in running:
        if s.proc.poll() is None:
            s.proc.send_signal(signal.SIGTERM)
            try:
                s.proc.wait(10)
            except subprocess.TimeoutExpired:
                s.proc.kill()
                s.proc.wait()
    for s in running:  # whatever a test did, sorat said nothing it did not mean to
        for trouble in ("Traceback", "Task was destroyed", "never awaited", "ERROR"):
            assert trouble not in s.logged(), s.logged()


def registered_item(watching: Watching, timeout: float = REGISTER_WITHIN_S) -> str:
    return watching.lines.expect("registered ", timeout).split(" ", 1)[1]


def argb(png: Path) -> bytes:
    with Image.open(png) as image:
        r, g, b, a = image.convert("RGBA").split()
        return Image.merge("RGBA", (a, r, g, b)).tobytes()


# --- the item and its menu ----------------------------------------------------------------------------


def test_item_properties_icon_and_menu(
    bus: str, host: Host, watchers: list[Watching], sorats: list[Sorat], tmp_path: Path, fake_bin: Path
) -> None:
    watchers.append(start_watcher(bus, tmp_path))
    sorat = start_sorat(tmp_path, bus, fake_bin)
    sorats.append(sorat)
    item = registered_item(watchers[0])
    assert item == f"org.kde.StatusNotifierItem-{sorat.proc.pid}-1"

    props = host.properties(item)
    assert {k: v for k, v in props.items() if "Pixmap" not in k} == {
        "Category": "ApplicationStatus",
        "Id": "sorat",
        "Title": "sorat",
        "Status": "Active",
        "WindowId": 0,
        "IconThemePath": "",
        "IconName": "",
        "OverlayIconName": "",
        "AttentionIconName": "",
        "AttentionMovieName": "",
        "ToolTip": ["", [], "sorat", f"sorat — {sorat.url} (tiny-model)"],
        "ItemIsMenu": True,
        "Menu": "/MenuBar",
    }
    # ARGB32 in network byte order, one pixmap per size, each the PNG drawn for that size
    sizes = [w for w, h, _ in props["IconPixmap"]]
    assert {16, 22, 24, 32, 48, 64} <= set(sizes)
    for width, height, data in props["IconPixmap"]:
        assert width == height and bytes(data) == argb(ASSETS / f"sorat-running-{width}.png")
    for width, _, data in props["AttentionIconPixmap"]:
        assert bytes(data) == argb(ASSETS / f"sorat-attention-{width}.png")
    assert props["OverlayIconPixmap"] == []

    # a left click opens the menu: Activate is refused, as GNOME's extension and older Plasma need
    activate = host.call(
        item, "/StatusNotifierItem", "org.kde.StatusNotifierItem", "Activate", "ii", [10, 10]
    )
    assert (activate.message_type, activate.error_name) == (
        MessageType.ERROR,
        "org.freedesktop.DBus.Error.UnknownMethod",
    )
    introspection = host.call(item, "/MenuBar", "org.freedesktop.DBus.Introspectable", "Introspect").body[0]
    assert '<interface name="com.canonical.dbusmenu">' in introspection

    version = host.call(
        item,
        "/MenuBar",
        "org.freedesktop.DBus.Properties",
        "Get",
        "ss",
        ["com.canonical.dbusmenu", "Version"],
    )
    assert version.body[0].value == 3
    revision, root = host.layout(item)
    assert root.props == {"children-display": "submenu"}
    assert root.labels() == [
        f"sorat — {sorat.url}",
        "---",
        "Open sorat",
        "Open session folder",
        "Copy bearer token",
        ("Model", ["tiny-model", "other-model"]),
        "---",
        "Open config folder",
        "Open logs",
        "Start at login",
        "---",
        "Quit",
    ]
    assert root.find(f"sorat — {sorat.url}").props["enabled"] is False
    assert [c.props["type"] for c in root.children if "type" in c.props] == ["separator"] * 3
    models = root.find("Model")
    assert models.props["children-display"] == "submenu"
    assert [(c.props["toggle-type"], c.props["toggle-state"]) for c in models.children] == [
        ("radio", 1),
        ("radio", 0),
    ]
    login = root.find("Start at login")
    assert (login.props["toggle-type"], login.props["toggle-state"]) == ("checkmark", 0)
    assert "toggle-type" not in root.find("Quit").props

    # what a host asks for, it gets: one level, some properties, one item
    _, shallow = host.layout(item, depth=1, names=["label"])
    assert shallow.find("Model").children == [] and set(shallow.find("Model").props) == {"label"}
    _, sub = host.layout(item, parent=models.id)
    assert [c.props["label"] for c in sub.children] == ["tiny-model", "other-model"]
    group = host.menu(item, "GetGroupProperties", "aias", [[login.id, 999], ["toggle-state"]])
    assert [[i, {k: v.value for k, v in p.items()}] for i, p in group.body[0]] == [
        [login.id, {"toggle-state": 0}]
    ]
    prop = host.menu(item, "GetProperty", "is", [login.id, "label"])
    assert prop.body[0].value == "Start at login"
    assert revision == host.layout(item)[0]  # nothing changed: the same revision


def test_clicks_switch_the_model_toggle_login_and_quit(
    bus: str, host: Host, watchers: list[Watching], sorats: list[Sorat], tmp_path: Path, fake_bin: Path
) -> None:
    upstream = Upstream(models=["gpt-4o", "qwen2_5-coder"])
    with upstream:
        host.serve_notifications()
        watchers.append(start_watcher(bus, tmp_path))
        sorat = start_sorat(tmp_path, bus, fake_bin, upstream)
        sorats.append(sorat)
        item = registered_item(watchers[0])
        with sorat.client() as client:
            upstream.script(text("Hello from the scripted model"))
            answer = client.post(
                "/v1/chat/completions",
                json={"model": "sorat-agent", "messages": [{"role": "user", "content": "hi"}]},
            )
            assert answer.status_code == 200, answer.text
            session = answer.headers["x-session-id"]

            _, root = poll("the models in the menu", lambda: _with_models(host, item, 2))
            models = root.find("Model")
            # a model whose name has an underscore shows as itself: escaped for dbusmenu's mnemonics
            assert [c.props["label"] for c in models.children] == ["gpt-4o", "qwen2__5-coder"]
            qwen = models.find("qwen2__5-coder")

            mark = host.mark()
            assert host.click(item, qwen.id).message_type is MessageType.METHOD_RETURN
            updated = host.wait_for(
                "the radio items to follow",
                lambda s: s[0] == "ItemsPropertiesUpdated" and [qwen.id, {"toggle-state": 1}] in s[1][0],
                mark,
            )
            assert [models.find("gpt-4o").id, {"toggle-state": 0}] in updated[1][0]
            poll(
                "config.toml to name the model",
                lambda: 'model = "qwen2_5-coder"' in (sorat.home / "config.toml").read_text(),
            )
            assert poll(
                "/v1/models to follow",
                lambda: client.get("/v1/models").json()["data"][0]["id"] == "qwen2_5-coder",
            )
            host.wait_for("the tooltip to follow", lambda s: s[0] == "NewToolTip", mark)
            assert host.properties(item)["ToolTip"][3] == f"sorat — {sorat.url} (qwen2_5-coder)"

            login = root.find("Start at login")
            mark = host.mark()
            host.click(item, login.id)
            host.wait_for(
                "the checkmark",
                lambda s: s[0] == "ItemsPropertiesUpdated" and [login.id, {"toggle-state": 1}] in s[1][0],
                mark,
            )
            entry = tmp_path / "xdg" / "autostart" / "sorat.desktop"
            assert entry.is_file() and "Exec=" in entry.read_text()
            host.click(item, login.id)
            host.wait_for(
                "the checkmark to go",
                lambda s: s[0] == "ItemsPropertiesUpdated" and [login.id, {"toggle-state": 0}] in s[1][0],
                mark,
            )
            assert not entry.exists()

            host.click(item, root.find("Open session folder").id)
            assert poll(
                "xdg-open", lambda: (tmp_path / "opened").exists() and (tmp_path / "opened").read_text()
            )
            assert (tmp_path / "opened").read_text() == f"{sorat.home / 'sessions'}\n"
            # Open sorat: the browser gets a one-time sign-in link to the web UI, which signs in once
            host.click(item, root.find("Open sorat").id)
            browsed = tmp_path / "browsed"
            assert poll("the browser", lambda: browsed.exists() and browsed.read_text().strip())
            link = browsed.read_text().strip()
            assert link.startswith(f"{sorat.url}/ui/login?nonce=")
            first, again = httpx.get(link), httpx.get(link)
            assert first.status_code in (302, 303) and first.cookies, first.text
            assert not again.cookies  # used once
            # no display, so no clipboard: sorat says so, in the log and as a notification
            host.click(item, root.find("Copy bearer token").id)
            told = host.wait_for("a notification", lambda s: s[0] == "notify")
            assert told[2].startswith("No clipboard available") and told[2].endswith(
                "`sorat token` prints the token"
            )

        host.click(item, root.find("Quit").id)
        assert sorat.proc.wait(DEADLINE_S) == 0, sorat.logged()
        # gone from the bus, so the watcher drops it
        assert host.dbus("NameHasOwner", "s", [item]) == [False]
        # the session is there for the next sorat
        sorat2 = start_sorat(tmp_path, None, fake_bin, upstream)
        sorats.append(sorat2)
        with sorat2.client() as client:
            kept = client.get(f"/v1/sessions/{session}")
            assert kept.status_code == 200, kept.text
            assert "Hello from the scripted model" in kept.text


def _with_models(host: Host, item: str, count: int) -> tuple[int, Node] | None:
    """The layout once the providers' models are in it; asking as a host opening the menu does."""
    host.menu(item, "AboutToShow", "i", [0])
    revision, root = host.layout(item)
    return (revision, root) if len(root.find("Model").children) == count else None


def test_attention_and_a_menu_rebuilt_while_open(
    bus: str, host: Host, watchers: list[Watching], sorats: list[Sorat], tmp_path: Path, fake_bin: Path
) -> None:
    watchers.append(start_watcher(bus, tmp_path))
    sorat = start_sorat(tmp_path, bus, fake_bin)
    sorats.append(sorat)
    item = registered_item(watchers[0])

    # something goes wrong: the status, the icon and the status line say so
    mark = host.mark()
    (sorat.home / "tools.toml").write_text("[[nonsense\n")
    host.wait_for("NeedsAttention", lambda s: s == ("NewStatus", ["NeedsAttention"]), mark)
    host.wait_for("the new icon", lambda s: s[0] == "NewIcon", mark)
    props = host.properties(item)
    assert props["Status"] == "NeedsAttention"
    assert props["IconPixmap"] == props["AttentionIconPixmap"]
    assert "tools.toml" in props["ToolTip"][3]
    status_line = host.layout(item)[1].children[0]
    assert "tools.toml" in status_line.props["label"]
    (sorat.home / "tools.toml").write_text("")
    host.wait_for("Active again", lambda s: s == ("NewStatus", ["Active"]), mark)

    # a host opens the menu, and the items change under it (the active model set by hand, not offered)
    assert host.menu(item, "AboutToShow", "i", [0]).body == [False]
    revision, before = host.layout(item)
    tiny = before.find("tiny-model")
    mark = host.mark()
    config = sorat.home / "config.toml"
    config.write_text(config.read_text().replace('model = "tiny-model"', 'model = "hand-set-model"'))
    changed = host.wait_for("LayoutUpdated", lambda s: s[0] == "LayoutUpdated", mark)
    assert changed[1][0] > revision
    new_revision, after = host.layout(item)
    assert new_revision == changed[1][0]
    assert [c.props["label"] for c in after.find("Model").children] == [
        "hand-set-model",
        "tiny-model",
        "other-model",
    ]
    # an id from the stale layout still means the same item: clicking it does what its label said
    assert after.find("tiny-model").id == tiny.id
    host.click(item, tiny.id)
    poll("config.toml to name the model", lambda: 'model = "tiny-model"' in config.read_text())

    # bad input: an id no layout ever had, the root, an empty group
    unknown = host.click(item, 4242)
    assert (unknown.message_type, unknown.error_name) == (
        MessageType.ERROR,
        "org.freedesktop.DBus.Error.InvalidArgs",
    )
    root_click = host.click(item, 0)
    assert root_click.error_name == "org.freedesktop.DBus.Error.InvalidArgs"
    assert host.menu(item, "AboutToShow", "i", [4242]).error_name == "org.freedesktop.DBus.Error.InvalidArgs"
    assert host.layout(item, parent=tiny.id)[1].children == []
    assert (
        host.menu(item, "GetLayout", "iias", [4242, -1, []]).error_name
        == "org.freedesktop.DBus.Error.InvalidArgs"
    )
    group = host.menu(item, "EventGroup", "a(isvu)", [[[4242, "clicked", Variant("s", ""), 0]]])
    assert group.error_name == "org.freedesktop.DBus.Error.InvalidArgs"
    with sorat.client() as client:
        assert client.get("/health").status_code == 200  # none of it hurt


# --- life on the bus --------------------------------------------------------------------------------


def test_watcher_appearing_late_and_restarting(
    bus: str, host: Host, watchers: list[Watching], sorats: list[Sorat], tmp_path: Path, fake_bin: Path
) -> None:
    sorat = start_sorat(tmp_path, bus, fake_bin)
    sorats.append(sorat)
    waiting = sorat.wait_logged("no tray yet")
    assert "no StatusNotifierWatcher on the session D-Bus and no display" in waiting
    assert "GNOME needs the AppIndicator and KStatusNotifierItem Support extension" in waiting
    item = f"org.kde.StatusNotifierItem-{sorat.proc.pid}-1"
    assert host.dbus("NameHasOwner", "s", [item]) == [True]  # on the bus, waiting

    for _ in range(2):  # the panel starts after sorat; then it restarts
        watching = start_watcher(bus, tmp_path)
        watchers.append(watching)
        assert registered_item(watching) == item
        stop(watching.proc)
        poll(
            "the watcher to leave",
            lambda: host.dbus("NameHasOwner", "s", ["org.kde.StatusNotifierWatcher"]) == [False],
        )
    sorat.wait_logged("the StatusNotifierWatcher left the session bus")
    assert sorat.logged().count("no tray") == 1, sorat.logged()


def test_a_watcher_that_refuses_or_vanishes(
    bus: str, host: Host, watchers: list[Watching], sorats: list[Sorat], tmp_path: Path, fake_bin: Path
) -> None:
    sorat = start_sorat(tmp_path, bus, fake_bin)
    sorats.append(sorat)
    sorat.wait_logged("no tray yet")

    refusing = start_watcher(bus, tmp_path, "refuse")
    watchers.append(refusing)
    refusing.lines.expect("refused ")
    refusing.lines.expect("refused ")  # asked again: a watcher that just started may not be ready
    line = sorat.wait_logged("refused sorat's tray icon")
    assert "org.kde.StatusNotifierWatcher.Error.Refused: no room in this panel" in line
    stop(refusing.proc)

    vanishing = start_watcher(bus, tmp_path, "vanish", ready="vanishing ")
    watchers.append(vanishing)
    assert vanishing.proc.wait(DEADLINE_S) == 0

    good = start_watcher(bus, tmp_path)
    watchers.append(good)
    assert registered_item(good) == f"org.kde.StatusNotifierItem-{sorat.proc.pid}-1"
    with sorat.client() as client:
        assert client.get("/health").status_code == 200
    sorat.proc.send_signal(signal.SIGTERM)
    assert sorat.proc.wait(DEADLINE_S) == 0, sorat.logged()


def test_no_bus_and_no_display_serves_headless(tmp_path: Path, sorats: list[Sorat], fake_bin: Path) -> None:
    sorat = start_sorat(tmp_path, None, fake_bin)
    sorats.append(sorat)
    line = sorat.wait_logged("no tray:")
    assert "no session D-Bus" in line and "no display" in line and "serving headless" in line
    assert "AppIndicator and KStatusNotifierItem Support extension" in line
    with sorat.client() as client:
        assert client.get("/health").status_code == 200
    sorat.proc.send_signal(signal.SIGTERM)
    assert sorat.proc.wait(DEADLINE_S) == 0, sorat.logged()
