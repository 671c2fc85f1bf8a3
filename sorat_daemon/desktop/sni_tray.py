"""The tray as a StatusNotifierItem on the session D-Bus, spoken by sorat itself (dbus-fast, no PyGObject).

Life on the bus: the connection, the item (``sni``) and its menu (``dbusmenu``) live on an asyncio loop in
a thread of their own; the main thread only waits for Quit. The item registers with the
``org.kde.StatusNotifierWatcher`` whenever one appears on the bus or comes back (panels start after
autostarted apps, and restart), watching ``NameOwnerChanged`` for it; a watcher that refuses or does not
answer is asked again a few times, then sorat waits for the next one. Without a watcher the item waits on
the bus, unseen.

What changes reaches the panel through one place, :meth:`SniTray._update`: it builds the menu from the
daemon's state, and sends what differs from the last build (see ``dbusmenu``) and the icon's new state. It
runs when the daemon's state changes, after every click, when a host is about to show the menu, and every
``MODELS_POLL_S`` (providers discover models without telling anyone).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
from typing import Any

from dbus_fast import Message, MessageType, NameFlag
from dbus_fast.aio import MessageBus

from sorat_daemon.desktop.dbusmenu import PATH as MENU_PATH
from sorat_daemon.desktop.dbusmenu import DBusMenu, MenuLayout
from sorat_daemon.desktop.images import pixmaps
from sorat_daemon.desktop.menu import Item, TrayMenu, title_of
from sorat_daemon.desktop.sni import PATH as ITEM_PATH
from sorat_daemon.desktop.sni import StatusNotifierItem

log = logging.getLogger("sorat.tray")

WATCHER = "org.kde.StatusNotifierWatcher"
WATCHER_PATH = "/StatusNotifierWatcher"
NOTIFICATIONS = "org.freedesktop.Notifications"
CONNECT_TIMEOUT_S = 3.0
CALL_TIMEOUT_S = 5.0  # a watcher that does not answer within this is asked again
REGISTER_RETRIES_S = (0.5, 1.0, 2.0)  # a watcher that just took its name may not answer yet
MODELS_POLL_S = 10.0


class SniTray:
    """A StatusNotifierItem for the daemon: :meth:`start` connects (and raises if it cannot), then the
    tray protocol of ``desktop.tray`` (run, stop, close, refresh, notify)."""

    def __init__(self, menu: TrayMenu, address: str) -> None:
        self.menu, self.address = menu, address
        self.name = f"org.kde.StatusNotifierItem-{os.getpid()}-1"
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="sorat-sni", daemon=True)
        self.bus: MessageBus | None = None
        self.layout = MenuLayout()
        self.dbusmenu = DBusMenu(self.layout, self._click, self._update)
        self.item: StatusNotifierItem | None = None
        self.watcher: str | None = None  # the watcher's unique name while one is on the bus
        self.watcher_seen = threading.Event()
        self._stopped = threading.Event()
        self._closed = False
        self._pending = False
        self._tasks: set[asyncio.Future[Any]] = set()
        self._registering: asyncio.Task[None] | None = None

    # -- from other threads ----------------------------------------------------------------------
    def start(self) -> None:
        """Connect and take a name on the bus, and learn whether a watcher is there; raise if the bus
        cannot be used."""
        self.thread.start()
        future = asyncio.run_coroutine_threadsafe(self._connect(), self.loop)
        try:
            future.result(CONNECT_TIMEOUT_S)
        except BaseException:
            future.cancel()
            self.close()
            raise

    def run(self) -> None:
        self._stopped.wait()

    def stop(self) -> None:
        self._stopped.set()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._stopped.set()
        if self.thread.is_alive():
            try:
                asyncio.run_coroutine_threadsafe(self._disconnect(), self.loop).result(CONNECT_TIMEOUT_S)
            except Exception:
                log.debug("leaving the session bus failed", exc_info=True)
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(CONNECT_TIMEOUT_S)
        if not self.thread.is_alive():
            self.loop.close()

    def refresh(self) -> None:
        if not self._closed:
            try:
                self.loop.call_soon_threadsafe(self._update_soon)
            except RuntimeError:  # closed meanwhile
                pass

    def notify(self, message: str) -> None:
        if not self._closed:
            try:
                self.loop.call_soon_threadsafe(lambda: self._spawn(self._notify(message)))
            except RuntimeError:  # closed meanwhile: the message is in the log anyway
                pass

    # -- on the loop -----------------------------------------------------------------------------
    async def _connect(self) -> None:
        bus = await MessageBus(bus_address=self.address).connect()
        self.bus = bus
        bus.add_message_handler(self._on_message)
        self._update()  # the menu is there before any host asks for it
        bus.export(MENU_PATH, self.dbusmenu)
        await bus.request_name(self.name, NameFlag.DO_NOT_QUEUE)
        rule = f"type='signal',sender='org.freedesktop.DBus',member='NameOwnerChanged',arg0='{WATCHER}'"
        await self._call(_dbus_call("AddMatch", "s", [rule]))
        owner = await self._call(_dbus_call("GetNameOwner", "s", [WATCHER]))
        if owner.message_type is MessageType.METHOD_RETURN:  # else NameHasNoOwner: no panel yet
            self._watcher_came(owner.body[0])
        self._spawn(self._poll())
        self._spawn(self._watch_connection(bus))

    def _ensure_item(self) -> StatusNotifierItem:
        """The item, made when a watcher first wants it: its icons load then, not before the daemon starts
        (and never while no panel is there)."""
        if self.item is None:
            self.item = StatusNotifierItem(pixmaps("running"), pixmaps("attention"))
            self._update()
            assert self.bus is not None
            self.bus.export(ITEM_PATH, self.item)
        return self.item

    def _on_message(self, msg: Message) -> None:
        if (
            msg.message_type is MessageType.SIGNAL
            and msg.member == "NameOwnerChanged"
            and msg.sender == "org.freedesktop.DBus"
            and msg.body[0] == WATCHER
        ):
            _, _old, new = msg.body
            if new:
                self._watcher_came(new)
            else:
                self.watcher = None
                log.info("the StatusNotifierWatcher left the session bus; waiting for it to come back")

    def _watcher_came(self, owner: str) -> None:
        self.watcher = owner
        self.watcher_seen.set()
        if self._registering is not None:
            self._registering.cancel()
        self._registering = self.loop.create_task(self._register(owner))

    async def _register(self, owner: str) -> None:
        self._ensure_item()
        why = ""
        for pause in (0.0, *REGISTER_RETRIES_S):
            await asyncio.sleep(pause)
            if self.watcher != owner:
                return  # gone, or replaced: the new one gets its own registration
            try:
                reply = await asyncio.wait_for(
                    self._call(
                        _call(WATCHER, WATCHER_PATH, WATCHER, "RegisterStatusNotifierItem", "s", [self.name])
                    ),
                    CALL_TIMEOUT_S,
                )
            except TimeoutError:
                why = f"no answer within {CALL_TIMEOUT_S:g} s"
                continue
            except Exception as e:  # the connection broke: _watch_connection says so
                why = str(e) or type(e).__name__
                continue
            if reply.message_type is MessageType.METHOD_RETURN:
                log.info("tray icon registered with the StatusNotifierWatcher (%s)", owner)
                return
            why = f"{reply.error_name}: {reply.body[0] if reply.body else ''}".rstrip(": ")
        if self.watcher == owner:
            log.warning(
                "the StatusNotifierWatcher (%s) refused sorat's tray icon (%s); waiting for the next one",
                owner,
                why,
            )

    async def _call(self, msg: Message) -> Message:
        assert self.bus is not None
        return await self.bus.call(msg)

    def _update_soon(self) -> None:
        if not self._pending:
            self._pending = True
            self.loop.call_soon(self._update)

    def _update(self) -> None:
        """Build the menu from state and send what changed: the one place that signals (see above)."""
        self._pending = False
        if self.bus is None or not self.bus.connected:
            return
        status = self.menu.daemon.state.get()
        try:
            items = self.menu.items()
        except Exception:
            log.exception("cannot build the tray menu")
            return
        self.dbusmenu.send(self.layout.update(items))
        self.dbusmenu.set_status(bool(status.attention))
        if self.item is not None:
            self.item.show(bool(status.attention), title_of(status))

    def _click(self, item: Item) -> None:
        assert item.action is not None
        action = item.action  # a click can take its time (a file write, a process): off the loop

        async def run() -> None:
            await asyncio.to_thread(action)
            self._update_soon()

        self._spawn(run())

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(MODELS_POLL_S)
            self._update_soon()

    async def _watch_connection(self, bus: MessageBus) -> None:
        try:
            await bus.wait_for_disconnect()
        except Exception as e:  # the bus went away (EOFError), or the connection broke
            why = str(e) or type(e).__name__
            log.warning("the session D-Bus closed sorat's connection (%s); no tray icon from now on", why)
        else:
            if not self._closed:
                log.warning("the session D-Bus closed sorat's connection; no tray icon from now on")

    async def _notify(self, message: str) -> None:
        try:
            reply = await self._call(_dbus_call("NameHasOwner", "s", [NOTIFICATIONS]))
            if reply.body and reply.body[0]:
                notify = _call(
                    NOTIFICATIONS, "/org/freedesktop/Notifications", NOTIFICATIONS, "Notify", "susssasa{sv}i"
                )
                notify.body = ["sorat", 0, "", "sorat", message, [], {}, -1]
                await asyncio.wait_for(self._call(notify), CALL_TIMEOUT_S)
        except Exception:
            log.debug("no notification", exc_info=True)

    async def _disconnect(self) -> None:
        tasks = [*self._tasks, *([self._registering] if self._registering else [])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)  # let them end before the loop stops
        if self.bus is not None and self.bus.connected:
            self.bus.disconnect()  # the watcher sees the name go and drops the item
            with contextlib.suppress(Exception):
                await self.bus.wait_for_disconnect()

    def _spawn(self, coroutine: Any) -> None:
        task = self.loop.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def _call(
    destination: str,
    path: str,
    interface: str,
    member: str,
    signature: str = "",
    body: list[Any] | None = None,
) -> Message:
    return Message(
        destination=destination,
        path=path,
        interface=interface,
        member=member,
        signature=signature,
        body=body or [],
    )


def _dbus_call(member: str, signature: str, body: list[Any]) -> Message:
    return _call(
        "org.freedesktop.DBus", "/org/freedesktop/DBus", "org.freedesktop.DBus", member, signature, body
    )
