"""The tray icon as a StatusNotifierItem (``org.kde.StatusNotifierItem``, the interface KDE, GNOME's
AppIndicator extension, XFCE, Cinnamon, MATE, LXQt and waybar host): its properties, and the signals that
tell a host which of them changed.

The icon goes as ARGB32 pixmaps in several sizes, drawn for each (``IconPixmap``); when something is wrong
``Status`` is ``NeedsAttention`` and the icon is the attention one, both as ``IconPixmap`` (hosts that ignore
the status still show the badge) and as ``AttentionIconPixmap`` (hosts that swap icons by status).

Panel quirks handled here: ``ItemIsMenu`` is true and ``Activate`` answers UnknownMethod, which is what
makes GNOME's AppIndicator extension and Plasma before 6.4 open the menu on a left click (ksni does the
same); Plasma 6.4 and later open it without calling ``Activate`` at all.
"""

from __future__ import annotations

from typing import Annotated, Any

from dbus_fast import DBusError, ErrorType
from dbus_fast.annotations import DBusBool, DBusInt32, DBusObjectPath, DBusSignature, DBusStr
from dbus_fast.service import PropertyAccess, ServiceInterface, dbus_method, dbus_property, dbus_signal

from sorat_daemon.desktop.dbusmenu import PATH as MENU_PATH
from sorat_daemon.desktop.images import Pixmap

PATH = "/StatusNotifierItem"
INTERFACE = "org.kde.StatusNotifierItem"

Pixmaps = Annotated[list[Any], DBusSignature("a(iiay)")]
ToolTipValue = Annotated[list[Any], DBusSignature("(sa(iiay)ss)")]


class StatusNotifierItem(ServiceInterface):
    """sorat's item at :data:`PATH`; :meth:`show` applies a new state and signals what changed.

    dbus-fast reads each member's D-Bus signature from its annotations: the members that return nothing
    have no return annotation (dbus-fast would read ``None`` as a signature)."""

    def __init__(self, running: list[Pixmap], attention: list[Pixmap]) -> None:
        super().__init__(INTERFACE)
        self.pixmaps = {"running": [list(p) for p in running], "attention": [list(p) for p in attention]}
        self.state = "running"
        self.description = ""

    def show(self, attention: bool, description: str) -> None:
        state = "attention" if attention else "running"
        if state != self.state:
            self.state = state
            self.NewStatus(self._status())
            self.NewIcon()
        if description != self.description:
            self.description = description
            self.NewToolTip()

    def _status(self) -> str:
        return "NeedsAttention" if self.state == "attention" else "Active"

    @dbus_method()
    def Activate(self, x: DBusInt32, y: DBusInt32):
        raise DBusError(ErrorType.UNKNOWN_METHOD, "ItemIsMenu: the menu is the item")

    @dbus_method()
    def SecondaryActivate(self, x: DBusInt32, y: DBusInt32):
        pass  # a middle click: nothing worth doing by accident

    @dbus_method()
    def ContextMenu(self, x: DBusInt32, y: DBusInt32):
        raise DBusError(ErrorType.UNKNOWN_METHOD, "sorat draws no menu of its own: use the Menu property")

    @dbus_method()
    def Scroll(self, delta: DBusInt32, orientation: DBusStr):
        pass

    @dbus_property(access=PropertyAccess.READ)
    def Category(self) -> DBusStr:
        return "ApplicationStatus"

    @dbus_property(access=PropertyAccess.READ)
    def Id(self) -> DBusStr:
        return "sorat"

    @dbus_property(access=PropertyAccess.READ)
    def Title(self) -> DBusStr:
        return "sorat"

    @dbus_property(access=PropertyAccess.READ)
    def Status(self) -> DBusStr:
        return self._status()

    @dbus_property(access=PropertyAccess.READ)
    def WindowId(self) -> DBusInt32:
        return 0

    @dbus_property(access=PropertyAccess.READ)
    def IconThemePath(self) -> DBusStr:
        return ""

    @dbus_property(access=PropertyAccess.READ)
    def IconName(self) -> DBusStr:
        return ""  # no theme icon: hosts then draw IconPixmap

    @dbus_property(access=PropertyAccess.READ)
    def IconPixmap(self) -> Pixmaps:
        return self.pixmaps[self.state]

    @dbus_property(access=PropertyAccess.READ)
    def OverlayIconName(self) -> DBusStr:
        return ""

    @dbus_property(access=PropertyAccess.READ)
    def OverlayIconPixmap(self) -> Pixmaps:
        return []

    @dbus_property(access=PropertyAccess.READ)
    def AttentionIconName(self) -> DBusStr:
        return ""

    @dbus_property(access=PropertyAccess.READ)
    def AttentionIconPixmap(self) -> Pixmaps:
        return self.pixmaps["attention"]

    @dbus_property(access=PropertyAccess.READ)
    def AttentionMovieName(self) -> DBusStr:
        return ""

    @dbus_property(access=PropertyAccess.READ)
    def ToolTip(self) -> ToolTipValue:
        return ["", [], "sorat", self.description]

    @dbus_property(access=PropertyAccess.READ)
    def ItemIsMenu(self) -> DBusBool:
        return True

    @dbus_property(access=PropertyAccess.READ)
    def Menu(self) -> DBusObjectPath:
        return MENU_PATH

    @dbus_signal()
    def NewIcon(self):
        pass

    @dbus_signal()
    def NewToolTip(self):
        pass

    @dbus_signal()
    def NewStatus(self, status: str) -> DBusStr:
        return status
