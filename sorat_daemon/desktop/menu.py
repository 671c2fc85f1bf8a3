"""The tray's menu as data: a plain tree of items built afresh from the daemon's state, which every tray
backend renders (``pystray_menu`` for pystray, ``dbusmenu`` for a StatusNotifierItem), so that an item is
written once.

An item's ``key`` names it for as long as it exists (``"model:gpt-4o"``), so a backend can tell what changed
between two builds; its ``action`` runs what a click does, with failures told to the user instead of lost
in the backend's loop. Items compare without their actions: two builds of an unchanged state are equal.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol, runtime_checkable

from sorat_daemon.desktop import autostart
from sorat_daemon.desktop.actions import Browser, Opener, Tell, copy_to_clipboard, open_path, open_url

if TYPE_CHECKING:
    from sorat_daemon.paths import Home
    from sorat_daemon.state import StateHub, Status

log = logging.getLogger("sorat.tray")

STATUS_CHARS = 90
Toggle = Literal["", "checkmark", "radio"]


class TrayDaemon(Protocol):
    """What the tray needs of the daemon (``sorat_daemon.daemon.Daemon``)."""

    home: Home
    state: StateHub

    def start_thread(self) -> None: ...

    def stop(self, timeout: float = 10.0) -> None: ...

    def models(self) -> list[str]: ...

    def active_model(self) -> str: ...

    def set_model(self, name: str) -> None: ...


@runtime_checkable
class OpensUI(Protocol):
    """A daemon that serves the web UI: the menu then has *Open sorat*."""

    def open_ui_url(self) -> str | None:
        """The one-time sign-in link to the web UI, or None while there is none to give."""
        ...


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


@dataclass(frozen=True, slots=True)
class Item:
    key: str
    label: str = ""
    action: Callable[[], None] | None = field(default=None, compare=False, repr=False)
    enabled: bool = True
    toggle: Toggle = ""
    checked: bool = False
    children: tuple[Item, ...] = ()  # a submenu when not empty
    separator: bool = False
    default: bool = False  # what a click runs where a backend has no menu (X11 without AppIndicator)


def separator(key: str) -> Item:
    return Item(key, separator=True)


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


class TrayMenu:
    """The menu of one tray icon; :meth:`items` builds it from the daemon's state at each call."""

    def __init__(
        self,
        daemon: TrayDaemon,
        *,
        quit: Callable[[], None],
        opener: Opener = open_path,
        tell: Tell | None = None,
        clipboard: Callable[[str, Tell], None] = copy_to_clipboard,
        login: StartAtLogin | None = None,
        browser: Browser = open_url,
    ) -> None:
        self.daemon = daemon
        self.quit = quit
        self.opener = opener
        self.say: Tell = tell or (lambda message: log.warning("%s", message))
        self.clipboard = clipboard
        self.login = login or _Autostart()
        self.browser = browser

    def items(self) -> tuple[Item, ...]:
        home = self.daemon.home
        top: list[Item] = [
            Item("status", status_line(self.daemon.state.get()), enabled=False),
            separator("sep-top"),
        ]
        if isinstance(self.daemon, OpensUI):
            top.append(Item("open-ui", "Open sorat", self._guarded("open sorat", self._open_ui)))
        return (
            *top,
            Item(
                "sessions",
                "Open session folder",
                self._guarded("open the session folder", partial(self._open_folder, home.sessions)),
                default=True,
            ),
            Item("token", "Copy bearer token", self._guarded("copy the token", self._copy_token)),
            Item("model", "Model", children=self._models()),
            separator("sep-folders"),
            Item(
                "config",
                "Open config folder",
                self._guarded("open the config folder", partial(self._open_folder, home.config.parent)),
            ),
            Item("logs", "Open logs", self._guarded("open the logs", partial(self._open_folder, home.logs))),
            Item(
                "login",
                "Start at login",
                self._guarded("change start at login", self._toggle_login),
                toggle="checkmark",
                checked=self._login_enabled(),
            ),
            separator("sep-quit"),
            Item("quit", "Quit", lambda: self.quit()),
        )

    def _models(self) -> tuple[Item, ...]:
        active = self.daemon.active_model()
        names = list(dict.fromkeys(self.daemon.models()))
        if active and active not in names:  # set by hand, or not offered (yet): still show what is in use
            names.insert(0, active)
        if not names:
            return (Item("no-models", "No models found", enabled=False),)
        return tuple(
            Item(
                f"model:{name}",
                name,
                self._guarded(f"switch to {name}", partial(self._select, name)),
                toggle="radio",
                checked=name == active,
            )
            for name in names
        )

    def _guarded(self, what: str, action: Callable[[], object]) -> Callable[[], None]:
        # an exception in a menu callback is lost in the backend's loop: say it instead
        def run() -> None:
            try:
                action()
            except Exception as e:
                log.exception("%s failed", what)
                self.say(f"Could not {what}: {e}")

        return run

    def _open_folder(self, path: Path) -> None:
        path.mkdir(parents=True, exist_ok=True)
        self.opener(path)

    def _open_ui(self) -> None:
        assert isinstance(self.daemon, OpensUI)
        url = self.daemon.open_ui_url()
        if url is None:
            self.say("The web UI is not ready yet; try again in a moment")
            return
        self.browser(url)

    def _copy_token(self) -> None:
        try:
            token = self.daemon.home.token.read_text(encoding="utf-8").strip()
        except OSError as e:
            self.say(f"No bearer token to copy ({e.strerror}); `sorat token` creates one")
            return
        self.clipboard(token, self.say)

    def _select(self, name: str) -> None:
        if name != self.daemon.active_model():
            self.daemon.set_model(name)

    def _toggle_login(self) -> None:
        if self.login.is_enabled():
            self.login.disable()
        else:
            self.login.enable()

    def _login_enabled(self) -> bool:
        try:
            return self.login.is_enabled()
        except Exception:  # an unreadable entry: show it unchecked rather than break the menu
            log.exception("cannot read the start-at-login state")
            return False
