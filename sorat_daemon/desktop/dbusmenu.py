"""The tray's menu on the session bus as ``com.canonical.dbusmenu`` (what every StatusNotifierItem host
draws a menu from), and the one place that diffs two builds of the menu and says what changed.

Ids: each item's id comes from its key and stays with it for the process' life, so a host's cached id
always means the same item; a removed item's id is never reused, so a click on a menu the host has not
refreshed yet either does what its label said or is refused. Panels cache the layout: a change of items
(a model appears) bumps the revision and sends ``LayoutUpdated``; a change of labels, checks or
enabledness sends only ``ItemsPropertiesUpdated`` with the properties that changed.

Panel quirks handled here: labels are escaped for dbusmenu's mnemonics (a ``_`` marks an access key, so
``qwen2_5`` goes as ``qwen2__5``); ``AboutToShow`` rebuilds the menu from state and answers False, with the
changes sent as signals, which is what Qt does and libdbusmenu expects (it ignores the answer).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Annotated, Any

from dbus_fast import DBusError, ErrorType, Variant
from dbus_fast.annotations import DBusBool, DBusInt32, DBusSignature, DBusStr, DBusUInt32, DBusVariant
from dbus_fast.service import PropertyAccess, ServiceInterface, dbus_method, dbus_property, dbus_signal

from sorat_daemon.desktop.menu import Item

log = logging.getLogger("sorat.tray")

PATH = "/MenuBar"
INTERFACE = "com.canonical.dbusmenu"
ROOT = 0
# the properties this menu uses, with their D-Bus types; what a host assumes for each when absent is in
# the spec's defaults (label "", enabled and visible true, no toggle)
SIGNATURES = {
    "type": "s",
    "label": "s",
    "enabled": "b",
    "visible": "b",
    "toggle-type": "s",
    "toggle-state": "i",
    "children-display": "s",
}

Strings = Annotated[list[str], DBusSignature("as")]
Ints = Annotated[list[int], DBusSignature("ai")]
LayoutReply = Annotated[list[Any], DBusSignature("u(ia{sv}av)")]
GroupReply = Annotated[list[Any], DBusSignature("a(ia{sv})")]
PropertiesUpdate = Annotated[list[Any], DBusSignature("a(ia{sv})a(ias)")]
RevisionAndParent = Annotated[list[int], DBusSignature("ui")]
Events = Annotated[list[Any], DBusSignature("a(isvu)")]
ShowGroupReply = Annotated[list[Any], DBusSignature("aiai")]


def escape(label: str) -> str:
    """``label`` as dbusmenu shows it literally: a lone ``_`` would mark the next letter as an access key."""
    return label.replace("_", "__")


def properties(item: Item) -> dict[str, object]:
    if item.separator:
        return {"type": "separator"}
    props: dict[str, object] = {"label": escape(item.label), "enabled": item.enabled, "visible": True}
    if item.toggle:
        props["toggle-type"] = item.toggle
        props["toggle-state"] = 1 if item.checked else 0
    if item.children:
        props["children-display"] = "submenu"
    return props


def variants(props: dict[str, object], wanted: Iterable[str] = ()) -> dict[str, Variant]:
    names = set(wanted)
    return {k: Variant(SIGNATURES[k], v) for k, v in props.items() if not names or k in names}


@dataclass(frozen=True, slots=True)
class Node:
    item: Item | None  # None for the root
    props: dict[str, object]
    children: tuple[int, ...] = ()


@dataclass(slots=True)
class Changes:
    layout: bool = False  # items came or went: the host must fetch the layout again
    updated: list[tuple[int, dict[str, object]]] = field(default_factory=list)
    removed: list[tuple[int, list[str]]] = field(default_factory=list)


class MenuLayout:
    """The last build of the menu as dbusmenu items, by id."""

    def __init__(self) -> None:
        self.revision = 0
        self.nodes: dict[int, Node] = {ROOT: Node(None, {"children-display": "submenu"})}
        self._ids: dict[str, int] = {}

    def _id(self, key: str) -> int:
        if key not in self._ids:
            self._ids[key] = len(self._ids) + 1
        return self._ids[key]

    def update(self, items: tuple[Item, ...]) -> Changes:
        nodes: dict[int, Node] = {}

        def add(item: Item) -> int:
            node_id = self._id(item.key)
            nodes[node_id] = Node(item, properties(item), tuple(add(child) for child in item.children))
            return node_id

        nodes[ROOT] = Node(None, self.nodes[ROOT].props, tuple(add(item) for item in items))
        changes = Changes()
        if {i: n.children for i, n in nodes.items()} != {i: n.children for i, n in self.nodes.items()}:
            changes.layout = True
            self.revision += 1
        else:
            for node_id, node in nodes.items():
                old = self.nodes[node_id].props
                if updated := {k: v for k, v in node.props.items() if old.get(k) != v}:
                    changes.updated.append((node_id, updated))
                if removed := [k for k in old if k not in node.props]:
                    changes.removed.append((node_id, removed))
        self.nodes = nodes
        return changes

    def node(self, node_id: int) -> Node:
        found = self.nodes.get(node_id)
        if found is None:
            raise DBusError(ErrorType.INVALID_ARGS, f"no menu item has the id {node_id}")
        return found

    def tree(self, node_id: int, depth: int, names: Iterable[str]) -> list[Any]:
        """``(ia{sv}av)``: the item and, ``depth`` levels down (-1: all), its children."""
        node = self.node(node_id)
        children = []
        if depth != 0:
            children = [Variant("(ia{sv}av)", self.tree(child, depth - 1, names)) for child in node.children]
        return [node_id, variants(node.props, names), children]


class DBusMenu(ServiceInterface):
    """``com.canonical.dbusmenu`` at :data:`PATH`: answers from :class:`MenuLayout`, runs clicks through
    ``click``, and asks ``refresh`` for a fresh build when a host is about to show the menu."""

    def __init__(
        self, layout: MenuLayout, click: Callable[[Item], None], refresh: Callable[[], None]
    ) -> None:
        super().__init__(INTERFACE)
        self.layout = layout
        self.click = click
        self.refresh = refresh
        self.status = "normal"

    def send(self, changes: Changes) -> None:
        if changes.layout:
            self.LayoutUpdated(self.layout.revision, ROOT)
        elif changes.updated or changes.removed:
            self.ItemsPropertiesUpdated(
                [[node_id, variants(props)] for node_id, props in changes.updated],
                [[node_id, names] for node_id, names in changes.removed],
            )

    def set_status(self, attention: bool) -> None:
        status = "notice" if attention else "normal"
        if status != self.status:
            self.status = status
            self.emit_properties_changed({"Status": status})

    def _event(self, node_id: int, event_id: str) -> None:
        node = self.layout.node(node_id)
        if event_id != "clicked":  # hovered, opened, closed: nothing to do
            return
        if node.item is None:
            raise DBusError(ErrorType.INVALID_ARGS, "the root menu item is not clickable")
        if node.item.enabled and node.item.action is not None:
            self.click(node.item)

    @dbus_method()
    def GetLayout(
        self, parent_id: DBusInt32, recursion_depth: DBusInt32, property_names: Strings
    ) -> LayoutReply:
        return [self.layout.revision, self.layout.tree(parent_id, recursion_depth, property_names)]

    @dbus_method()
    def GetGroupProperties(self, ids: Ints, property_names: Strings) -> GroupReply:
        wanted = ids or list(self.layout.nodes)
        return [
            [i, variants(self.layout.nodes[i].props, property_names)]
            for i in wanted
            if i in self.layout.nodes
        ]

    @dbus_method()
    def GetProperty(self, node_id: DBusInt32, name: DBusStr) -> DBusVariant:
        props = self.layout.node(node_id).props
        if name not in props:
            raise DBusError(ErrorType.INVALID_ARGS, f"menu item {node_id} has no property {name!r}")
        return Variant(SIGNATURES[name], props[name])

    @dbus_method()
    def Event(self, node_id: DBusInt32, event_id: DBusStr, data: DBusVariant, timestamp: DBusUInt32):
        self._event(node_id, event_id)

    @dbus_method()
    def EventGroup(self, events: Events) -> Ints:
        unknown = []
        for node_id, event_id, _data, _timestamp in events:
            if node_id in self.layout.nodes:
                self._event(node_id, event_id)
            else:
                unknown.append(node_id)
        if events and len(unknown) == len(events):
            raise DBusError(ErrorType.INVALID_ARGS, f"no menu item has any of the ids {unknown}")
        return unknown

    @dbus_method()
    def AboutToShow(self, node_id: DBusInt32) -> DBusBool:
        self.layout.node(node_id)
        self.refresh()
        return False

    @dbus_method()
    def AboutToShowGroup(self, ids: Ints) -> ShowGroupReply:
        unknown = [i for i in ids if i not in self.layout.nodes]
        if ids and len(unknown) == len(ids):
            raise DBusError(ErrorType.INVALID_ARGS, f"no menu item has any of the ids {unknown}")
        self.refresh()
        return [[], unknown]

    @dbus_property(access=PropertyAccess.READ)
    def Version(self) -> DBusUInt32:
        return 3

    @dbus_property(access=PropertyAccess.READ)
    def TextDirection(self) -> DBusStr:
        return "ltr"

    @dbus_property(access=PropertyAccess.READ)
    def Status(self) -> DBusStr:
        return self.status

    @dbus_property(access=PropertyAccess.READ)
    def IconThemePath(self) -> Strings:
        return []

    @dbus_signal()
    def ItemsPropertiesUpdated(self, updated: list[Any], removed: list[Any]) -> PropertiesUpdate:
        return [updated, removed]

    @dbus_signal()
    def LayoutUpdated(self, revision: int, parent: int) -> RevisionAndParent:
        return [revision, parent]
