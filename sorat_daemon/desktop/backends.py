"""Which tray backend this desktop gets, and, when it gets none, the one log line that says why.

On Linux: a StatusNotifierItem (``sni_tray``) when a StatusNotifierWatcher is on the session bus, which is
what KDE, GNOME with the AppIndicator extension, XFCE, Cinnamon, MATE, LXQt and waybar run; else pystray's
backends (X11's system tray, or GTK where PyGObject is installed); else the item waits on the bus for a
panel, and without a bus sorat serves headless. macOS and Windows: pystray. ``PYSTRAY_BACKEND`` set, or an
``icon_class`` given (tests): pystray's, as asked. Each backend imports its libraries only when tried.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
import string
import sys
import threading
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

from sorat_daemon.desktop.menu import TrayMenu

if TYPE_CHECKING:
    from sorat_daemon.desktop.sni_tray import SniTray

log = logging.getLogger("sorat.tray")

PANELS = (
    "KDE, XFCE, Cinnamon, MATE, LXQt and waybar show them; GNOME needs the "
    "AppIndicator and KStatusNotifierItem Support extension"
)
# D-Bus addresses %-escape every byte outside this set
_ADDRESS_SAFE = frozenset((string.ascii_letters + string.digits + "-_/.\\*").encode())


class Backend(Protocol):
    """A tray icon with its menu, made before the daemon starts and run on the main thread."""

    def run(self) -> None:
        """Show the icon and serve its menu until :meth:`stop`; raise if the backend cannot start."""

    def stop(self) -> None:
        """End :meth:`run` (from any thread, once; before it runs too); the icon goes away."""

    def close(self) -> None:
        """Let go of what the backend holds, once :meth:`run` has returned or if it never ran."""

    def refresh(self) -> None:
        """The daemon's state changed: show it (from any thread, without waiting)."""

    def notify(self, message: str) -> None:
        """Tell the user ``message`` where the desktop has notifications."""


def no_display(platform: str, env: Mapping[str, str]) -> str | None:
    if platform in ("win32", "darwin") or env.get("DISPLAY") or env.get("WAYLAND_DISPLAY"):
        return None
    return "no display (neither DISPLAY nor WAYLAND_DISPLAY is set)"


def session_bus_address(env: Mapping[str, str]) -> str | None:
    """The session D-Bus: ``DBUS_SESSION_BUS_ADDRESS``, else systemd's socket at ``$XDG_RUNTIME_DIR/bus``."""
    if address := env.get("DBUS_SESSION_BUS_ADDRESS"):
        return address
    runtime = env.get("XDG_RUNTIME_DIR")
    if runtime:
        path = os.path.join(runtime, "bus")
        with contextlib.suppress(OSError):
            if stat.S_ISSOCK(os.stat(path).st_mode):
                raw = os.fsencode(path)
                return "unix:path=" + "".join(chr(c) if c in _ADDRESS_SAFE else f"%{c:02x}" for c in raw)
    return None


def choose(
    menu: TrayMenu,
    quitting: threading.Event,
    env: Mapping[str, str],
    icon_class: Callable[..., Any] | None = None,
    platform: str = sys.platform,
) -> Backend | None:
    """The backend to run, made and ready; or None, after one log line saying why and what would help."""
    sni, no_sni = None, ""
    if platform not in ("win32", "darwin") and icon_class is None and not env.get("PYSTRAY_BACKEND"):
        sni, no_sni = _sni(menu, env)
        if sni is not None and sni.watcher_seen.is_set():
            return sni
    icon, no_pystray = _pystray(menu, quitting, env, icon_class, platform, sni)
    if icon is not None:
        if sni is not None:
            sni.close()
        return icon
    if sni is not None:
        if not sni.watcher_seen.is_set():  # (else one came while pystray waited for a system tray)
            # an item already on the bus keeps waiting for a panel: at login, one may start after sorat
            log.warning(
                "no tray yet: %s and %s; the icon shows when a panel that hosts StatusNotifierItems starts"
                " (%s)",
                no_sni,
                no_pystray,
                PANELS,
            )
        return sni
    if no_sni:
        log.warning(
            "no tray: %s and %s; serving headless (a tray needs a panel that hosts StatusNotifierItems: %s)",
            no_sni,
            no_pystray,
            PANELS,
        )
    else:
        log.warning("no tray: %s; serving headless", no_pystray)
    return None


def _sni(menu: TrayMenu, env: Mapping[str, str]) -> tuple[SniTray | None, str]:
    """An item connected to the session bus and what it lacks for now (a watcher), or None and why."""
    address = session_bus_address(env)
    if address is None:
        return None, "no session D-Bus (DBUS_SESSION_BUS_ADDRESS is not set, $XDG_RUNTIME_DIR/bus is absent)"
    try:
        from sorat_daemon.desktop.sni_tray import SniTray  # dbus-fast: imported only here

        sni = SniTray(menu, address)
        sni.start()
    except Exception as e:
        return None, f"the session D-Bus at {address} cannot be used ({_words(e)})"
    return sni, "no StatusNotifierWatcher on the session D-Bus"


def _pystray(
    menu: TrayMenu,
    quitting: threading.Event,
    env: Mapping[str, str],
    icon_class: Callable[..., Any] | None,
    platform: str,
    sni: SniTray | None,
) -> tuple[Backend | None, str]:
    reason = no_display(platform, env)
    if reason:
        return None, reason
    try:
        from sorat_daemon.desktop.pystray_tray import PystrayTray

        icon = PystrayTray(menu, quitting, icon_class)
        # a watcher that comes while the X11 backend waits for a system tray wins: it shows the menu
        reason = icon.missing_host(give_up=sni.watcher_seen.is_set if sni else lambda: False)
    except Exception as e:
        return None, f"the tray backend failed to load ({_words(e)})"
    return (None, reason) if reason else (icon, "")


def _words(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}".replace("\n", " ")
