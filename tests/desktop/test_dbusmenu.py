"""The menu as dbusmenu items, without a bus: ids, properties, the diff between two builds, and the layout a
host asks for. (The same on a real bus, with a real sorat: test_sni_tray.py.)"""

from __future__ import annotations

import pytest

pytest.importorskip("dbus_fast", reason="dbus-fast (a dependency on Linux) is not installed")

from dbus_fast import DBusError  # noqa: E402

from sorat_daemon.desktop.dbusmenu import MenuLayout, escape, properties  # noqa: E402
from sorat_daemon.desktop.menu import Item, separator  # noqa: E402


def build(
    *models: str, active: str = "", status: str = "sorat — starting…", login: bool = False
) -> tuple[Item, ...]:
    return (
        Item("status", status, enabled=False),
        separator("sep"),
        Item(
            "model",
            "Model",
            children=tuple(
                Item(f"model:{m}", m, lambda: None, toggle="radio", checked=m == active) for m in models
            ),
        ),
        Item("login", "Start at login", lambda: None, toggle="checkmark", checked=login),
        Item("quit", "Quit", lambda: None),
    )


def test_labels_are_escaped_for_mnemonics() -> None:
    assert escape("qwen2_5") == "qwen2__5"
    assert escape("a__b") == "a____b"
    assert properties(Item("m", "qwen2_5", toggle="radio", checked=True)) == {
        "label": "qwen2__5",
        "enabled": True,
        "visible": True,
        "toggle-type": "radio",
        "toggle-state": 1,
    }
    assert properties(separator("s")) == {"type": "separator"}
    assert properties(Item("model", "Model", children=(Item("x", "x"),)))["children-display"] == "submenu"


def test_a_change_of_items_is_a_new_layout_and_ids_stay_with_their_items() -> None:
    layout = MenuLayout()
    first = layout.update(build("a", "b", active="a"))
    assert first.layout and layout.revision == 1
    ids = {n.item.key: i for i, n in layout.nodes.items() if n.item}
    again = layout.update(build("a", "b", active="a"))
    assert not again.layout and not again.updated and not again.removed and layout.revision == 1

    grown = layout.update(build("new", "a", "b", active="a"))
    assert grown.layout and layout.revision == 2 and not grown.updated
    assert {n.item.key: i for i, n in layout.nodes.items() if n.item and n.item.key in ids} == ids
    shrunk = layout.update(build("a", active="a"))
    assert shrunk.layout and layout.revision == 3
    assert ids["model:b"] not in layout.nodes  # gone, and its id is not given to another item
    assert layout.update(build("a", "c", active="a")).layout
    assert {i for i, n in layout.nodes.items() if n.item and n.item.key == "model:c"}.isdisjoint(ids.values())


def test_a_change_of_state_sends_only_what_changed() -> None:
    layout = MenuLayout()
    layout.update(build("a", "b", active="a"))
    ids = {n.item.key: i for i, n in layout.nodes.items() if n.item}
    changes = layout.update(build("a", "b", active="b", status="sorat — http://127.0.0.1:8080", login=True))
    assert not changes.layout
    assert sorted(changes.updated) == sorted(
        [
            (ids["status"], {"label": "sorat — http://127.0.0.1:8080"}),
            (ids["model:a"], {"toggle-state": 0}),
            (ids["model:b"], {"toggle-state": 1}),
            (ids["login"], {"toggle-state": 1}),
        ]
    )
    assert changes.removed == []


def test_the_layout_a_host_asks_for() -> None:
    layout = MenuLayout()
    layout.update(build("a_1", active="a_1"))
    node_id, props, children = layout.tree(0, -1, [])
    assert node_id == 0 and props["children-display"].value == "submenu"
    labels = [c.value[1].get("label") for c in children]
    assert [getattr(label, "value", None) for label in labels] == [
        "sorat — starting…",
        None,
        "Model",
        "Start at login",
        "Quit",
    ]
    model = children[2].value
    assert [c.value[1]["label"].value for c in model[2]] == ["a__1"]
    assert layout.tree(0, 1, [])[2][2].value[2] == []  # one level down: the submenu's items are not there
    assert set(layout.tree(0, 0, ["label", "enabled"])[1]) == set()  # the root has neither
    assert layout.tree(0, 0, [])[2] == []
    assert set(layout.tree(model[0], -1, ["label"])[1]) == {"label"}
    with pytest.raises(DBusError, match="no menu item has the id 999"):
        layout.tree(999, -1, [])
