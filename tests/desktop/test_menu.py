"""The tray's menu as data: what it holds for each state, and what its items do."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sorat_daemon.desktop import menu as tray_menu
from sorat_daemon.desktop.menu import Item, TrayMenu
from tests.desktop.fakes import URL, FakeDaemon, Recorder


def entries(items: tuple[Item, ...]) -> list[Item]:
    return [i for i in items if not i.separator]


def item(items: tuple[Item, ...], label: str) -> Item:
    return next(i for i in entries(items) if i.label == label)


def click(found: Item) -> None:
    assert found.action is not None, f"{found.label} does nothing"
    found.action()


def menu_for(daemon: Any, **kwargs: Any) -> tuple[TrayMenu, dict[str, Recorder]]:
    rec = {name: Recorder() for name in ("quit", "opener", "tell", "clipboard", "browser")}
    menu = TrayMenu(
        daemon,
        quit=rec["quit"],
        opener=rec["opener"],
        tell=rec["tell"],
        clipboard=rec["clipboard"],
        browser=rec["browser"],
        **kwargs,
    )
    return menu, rec


def test_menu_items_in_order(daemon: FakeDaemon, xdg: Path) -> None:
    menu, _ = menu_for(daemon)
    daemon.start_thread()
    items = menu.items()
    assert [i.label for i in entries(items)] == [
        f"sorat — {URL}",
        "Open session folder",
        "Copy bearer token",
        "Model",
        "Open config folder",
        "Open logs",
        "Start at login",
        "Quit",
    ]
    status = entries(items)[0]
    assert not status.enabled
    assert item(items, "Model").children
    login = item(items, "Start at login")
    assert (login.toggle, login.checked) == ("checkmark", False)
    assert item(items, "Quit").toggle == ""
    # separators set the status line, the folders and Quit apart
    assert [i.key for i in items if i.separator] == ["sep-top", "sep-folders", "sep-quit"]


def test_keys_are_unique_and_builds_compare_equal(daemon: FakeDaemon, xdg: Path) -> None:
    menu, _ = menu_for(daemon)

    def keys(items: tuple[Item, ...]) -> list[str]:
        return [k for i in items for k in [i.key, *keys(i.children)]]

    found = keys(menu.items())
    assert len(found) == len(set(found))
    before = menu.items()
    assert menu.items() == before  # actions are new closures each time; they do not count
    daemon.state.update(provider_error="boom")
    assert menu.items() != before


def test_status_line_follows_the_state(daemon: FakeDaemon, xdg: Path) -> None:
    menu, _ = menu_for(daemon)
    assert menu.items()[0].label == "sorat — starting…"
    daemon.start_thread()
    assert menu.items()[0].label == f"sorat — {URL}"
    daemon.state.update(provider_error="openai: 401 Incorrect API key provided")
    assert menu.items()[0].label == "sorat — openai: 401 Incorrect API key provided"
    daemon.state.update(provider_error=None, tools_error="tools.toml line 3: unknown mode 'yolo'\nmore")
    assert menu.items()[0].label == "sorat — tools.toml line 3: unknown mode 'yolo'"
    daemon.state.update(tools_error=None, no_provider="x" * 300)
    text = menu.items()[0].label
    assert len(text) == tray_menu.STATUS_CHARS and text.endswith("…")


def test_title_says_the_whole_problem(daemon: FakeDaemon) -> None:
    assert tray_menu.title_of(daemon.state.get()) == "sorat"
    daemon.start_thread()
    assert tray_menu.title_of(daemon.state.get()) == f"sorat — {URL} (gpt-4o)"
    daemon.state.update(provider_error="openai: 429\nrate limited")
    assert tray_menu.title_of(daemon.state.get()) == "sorat: openai: 429\nrate limited"


def model_items(menu: TrayMenu) -> tuple[Item, ...]:
    return item(menu.items(), "Model").children


def test_model_radio_items_switch_the_model(daemon: FakeDaemon, xdg: Path) -> None:
    menu, rec = menu_for(daemon)
    assert [(i.label, i.checked, i.toggle) for i in model_items(menu)] == [
        ("gpt-4o", True, "radio"),
        ("gpt-4o-mini", False, "radio"),
        ("o3", False, "radio"),
    ]
    click(item(model_items(menu), "o3"))
    assert daemon.calls == ["set_model o3"]
    assert [i.label for i in model_items(menu) if i.checked] == ["o3"]
    click(item(model_items(menu), "o3"))  # already active: nothing to save
    assert daemon.calls == ["set_model o3"]
    assert rec["tell"].calls == []


def test_model_menu_follows_the_providers(daemon: FakeDaemon, xdg: Path) -> None:
    menu, _ = menu_for(daemon)
    daemon._models = []
    daemon._active = "my-local-model"
    assert [(i.label, i.checked) for i in model_items(menu)] == [("my-local-model", True)]
    daemon._active = ""
    [only] = model_items(menu)
    assert (only.label, only.enabled) == ("No models found", False)
    daemon._models = ["a", "b"]
    daemon._active = "b"
    assert [(i.label, i.checked) for i in model_items(menu)] == [("a", False), ("b", True)]
    assert [i.key for i in model_items(menu)] == ["model:a", "model:b"]


def test_a_failed_switch_is_told(daemon: FakeDaemon, xdg: Path) -> None:
    daemon._models.append("broken")
    menu, rec = menu_for(daemon)
    click(item(model_items(menu), "broken"))
    assert rec["tell"].calls == ["Could not switch to broken: config.toml: read-only file system"]
    assert daemon.active_model() == "gpt-4o"


def test_open_folders(daemon: FakeDaemon, xdg: Path) -> None:
    menu, rec = menu_for(daemon)
    for text in ("Open session folder", "Open config folder", "Open logs"):
        click(item(menu.items(), text))
    home = daemon.home
    assert rec["opener"].calls == [home.sessions, home.root, home.logs]
    assert all(p.is_dir() for p in rec["opener"].calls)


def test_session_folder_is_the_default_item(daemon: FakeDaemon, xdg: Path) -> None:
    # backends without a menu (plain X11) run the default item on a click
    menu, rec = menu_for(daemon)
    [default] = [i for i in menu.items() if i.default]
    click(default)
    assert rec["opener"].calls == [daemon.home.sessions]


def test_a_failing_opener_is_told(daemon: FakeDaemon, xdg: Path) -> None:
    told = Recorder()

    def no_xdg_open(path: Path) -> None:
        raise FileNotFoundError(2, "No such file or directory", "xdg-open")

    menu = TrayMenu(daemon, quit=Recorder(), opener=no_xdg_open, tell=told)
    click(item(menu.items(), "Open logs"))
    assert told.calls == ["Could not open the logs: [Errno 2] No such file or directory: 'xdg-open'"]


def test_copy_token(daemon: FakeDaemon, xdg: Path) -> None:
    menu, rec = menu_for(daemon)
    click(item(menu.items(), "Copy bearer token"))
    assert rec["clipboard"].calls == [("sk-sorat-test-token", rec["tell"])]

    daemon.home.token.unlink()
    click(item(menu.items(), "Copy bearer token"))
    assert rec["tell"].calls == [
        "No bearer token to copy (No such file or directory); `sorat token` creates one"
    ]


def test_start_at_login_toggles_the_real_autostart(daemon: FakeDaemon, xdg: Path) -> None:
    menu, _ = menu_for(daemon)
    check = item(menu.items(), "Start at login")
    assert check.checked is False
    click(check)
    assert xdg.is_file()
    assert item(menu.items(), "Start at login").checked is True
    click(item(menu.items(), "Start at login"))
    assert not xdg.exists()
    assert item(menu.items(), "Start at login").checked is False


def test_an_unreadable_login_state_shows_unchecked(daemon: FakeDaemon) -> None:
    class Broken:
        def is_enabled(self) -> bool:
            raise PermissionError("autostart/sorat.desktop")

        def enable(self) -> object:
            return True

        def disable(self) -> object:
            return True

    menu, _ = menu_for(daemon, login=Broken())
    assert item(menu.items(), "Start at login").checked is False


def test_quit_item(daemon: FakeDaemon, xdg: Path) -> None:
    menu, rec = menu_for(daemon)
    click(item(menu.items(), "Quit"))
    assert len(rec["quit"].calls) == 1


class UIDaemon(FakeDaemon):
    """A daemon that serves the web UI: it hands out a sign-in link once the server listens."""

    def open_ui_url(self) -> str | None:
        status = self.state.get()
        return f"{status.url}/ui/login?code=one-time" if status.running else None


def test_open_sorat_where_the_daemon_serves_a_web_ui(daemon: FakeDaemon, xdg: Path) -> None:
    daemon = UIDaemon(daemon.home)
    menu, rec = menu_for(daemon)
    assert [i.label for i in entries(menu.items())][:3] == [
        "sorat — starting…",
        "Open sorat",
        "Open session folder",
    ]
    click(item(menu.items(), "Open sorat"))
    assert rec["browser"].calls == []
    assert rec["tell"].calls == ["The web UI is not ready yet; try again in a moment"]
    daemon.start_thread()
    click(item(menu.items(), "Open sorat"))
    assert rec["browser"].calls == [f"{URL}/ui/login?code=one-time"]
