"""A panel's side of the StatusNotifierItem protocol, for the tests: a private session bus, watchers that
accept, refuse or vanish (each a process of its own, so that a panel restart is a real one), and a host
that reads an item and its menu, clicks, records the signals and shows notifications."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, TypeVar

from dbus_fast import Message, MessageType, Variant
from dbus_fast.aio import MessageBus
from dbus_fast.annotations import DBusSignature, DBusStr, DBusUInt32
from dbus_fast.service import ServiceInterface, dbus_method

from tests.desktop.procs import stop

DBUS_DAEMON = shutil.which("dbus-daemon")
WATCHER = "org.kde.StatusNotifierWatcher"
DEADLINE_S = 15.0
T = TypeVar("T")

WATCHER_APP = textwrap.dedent(
    """
    import asyncio, os, sys
    from typing import Annotated

    from dbus_fast import DBusError
    from dbus_fast.aio import MessageBus
    from dbus_fast.annotations import DBusBool, DBusInt32, DBusSignature, DBusStr
    from dbus_fast.service import PropertyAccess, ServiceInterface, dbus_method, dbus_property, dbus_signal

    behaviour = sys.argv[1]


    class Watcher(ServiceInterface):
        def __init__(self):
            super().__init__("org.kde.StatusNotifierWatcher")
            self.items = []

        @dbus_method()
        def RegisterStatusNotifierItem(self, service: DBusStr):
            if behaviour == "vanish":  # mid-call: the caller gets no answer, the name goes
                print(f"vanishing {service}", flush=True)
                os._exit(0)
            if behaviour == "refuse":
                print(f"refused {service}", flush=True)
                raise DBusError("org.kde.StatusNotifierWatcher.Error.Refused", "no room in this panel")
            self.items.append(service)
            print(f"registered {service}", flush=True)
            self.StatusNotifierItemRegistered(service)

        @dbus_method()
        def RegisterStatusNotifierHost(self, service: DBusStr):
            pass

        @dbus_property(access=PropertyAccess.READ)
        def RegisteredStatusNotifierItems(self) -> Annotated[list, DBusSignature("as")]:
            return self.items

        @dbus_property(access=PropertyAccess.READ)
        def IsStatusNotifierHostRegistered(self) -> DBusBool:
            return True

        @dbus_property(access=PropertyAccess.READ)
        def ProtocolVersion(self) -> DBusInt32:
            return 0

        @dbus_signal()
        def StatusNotifierItemRegistered(self, service) -> DBusStr:
            return service


    async def main():
        bus = await MessageBus(bus_address=os.environ["DBUS_SESSION_BUS_ADDRESS"]).connect()
        bus.export("/StatusNotifierWatcher", Watcher())
        await bus.request_name("org.kde.StatusNotifierWatcher")
        print("watching", flush=True)
        await bus.wait_for_disconnect()


    asyncio.run(main())
    """
)


class Lines:
    """A subprocess's stdout, to wait on with a deadline. Each line is taken once, by the first
    :meth:`expect` that wants it; lines nobody wanted yet stay for later ones (the order in which two
    processes' events reach two pipes is not theirs)."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.seen: list[str] = []
        self.taken: set[int] = set()
        self.changed = threading.Condition()
        threading.Thread(target=self._read, args=(proc,), daemon=True).start()

    def _read(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            with self.changed:
                self.seen.append(line.rstrip("\n"))
                self.changed.notify_all()

    def expect(self, wanted: str, timeout: float = DEADLINE_S) -> str:
        deadline = time.monotonic() + timeout
        with self.changed:
            while True:
                for i, line in enumerate(self.seen):
                    if i not in self.taken and wanted in line:
                        self.taken.add(i)
                        return line
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no line {wanted!r} within {timeout:g} s in {self.seen}")
                self.changed.wait(left)


@contextlib.contextmanager
def session_bus(log: Path, env: dict[str, str] | None = None) -> Iterator[str]:
    """A private session bus: dbus-daemon with the session configuration, on a socket of its own. The
    services it starts on demand (xfconfd for a panel) get ``env``."""
    assert DBUS_DAEMON is not None
    with open(log, "wb") as err:
        proc = subprocess.Popen(
            [DBUS_DAEMON, "--session", "--print-address", "--nofork"],
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            env=env,
        )
    try:
        assert proc.stdout is not None
        address = proc.stdout.readline().strip()  # printed once it accepts connections
        if not address:
            raise AssertionError(f"dbus-daemon did not start: {log.read_text()}")
        yield address
    finally:
        stop(proc)


@dataclass
class Watching:
    proc: subprocess.Popen[str]
    lines: Lines


def start_watcher(
    address: str, tmp_path: Path, behaviour: str = "accept", ready: str = "watching"
) -> Watching:
    """A watcher process, once it prints ``ready``: that it owns the watcher's name, or (a watcher that
    vanishes at the first call, which may come before it says so) that it went."""
    script = tmp_path / "watcher.py"
    script.write_text(WATCHER_APP)
    proc = subprocess.Popen(
        [sys.executable, str(script), behaviour],
        env={**os.environ, "DBUS_SESSION_BUS_ADDRESS": address},
        stdout=subprocess.PIPE,
        text=True,
    )
    watching = Watching(proc, Lines(proc))
    try:
        watching.lines.expect(ready)
    except BaseException:
        stop(proc)  # the caller never gets it to stop: do not leave the process and its pipe behind
        raise
    return watching


class Notifications(ServiceInterface):
    """org.freedesktop.Notifications as a notification daemon runs it: what sorat tells the user."""

    def __init__(self, host: Host) -> None:
        super().__init__("org.freedesktop.Notifications")
        self.host = host

    @dbus_method()
    def Notify(
        self,
        app_name: DBusStr,
        replaces_id: DBusUInt32,
        app_icon: DBusStr,
        summary: DBusStr,
        body: DBusStr,
        actions: Annotated[list[str], DBusSignature("as")],
        hints: Annotated[dict[str, Any], DBusSignature("a{sv}")],
        expire_timeout: Annotated[int, DBusSignature("i")],
    ) -> DBusUInt32:
        self.host.record(("notify", summary, body))
        return 1


def plain(value: Any) -> Any:
    """A reply's values without their Variant wrappers."""
    if isinstance(value, Variant):
        return plain(value.value)
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value


@dataclass
class Node:
    id: int
    props: dict[str, Any]
    children: list[Node]

    @classmethod
    def of(cls, raw: Any) -> Node:
        node_id, props, children = plain(raw)
        return cls(node_id, props, [cls.of(c) for c in children])

    def find(self, label: str) -> Node:
        for child in self.children:
            if child.props.get("label") == label:
                return child
            try:
                return child.find(label)
            except LookupError:
                continue
        raise LookupError(f"no item {label!r} in {self.labels()}")

    def labels(self) -> list[Any]:
        return [
            c.props.get("label", "---") if not c.children else (c.props["label"], c.labels())
            for c in self.children
        ]


class Host:
    """A panel's connection: reads an item and its menu, clicks, and records the signals it is sent."""

    def __init__(self, address: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="test-host", daemon=True)
        self.thread.start()
        self.changed = threading.Condition()
        self.seen: list[Any] = []
        self.bus: MessageBus = self.run(self._connect(address))
        self.bus.add_message_handler(self._on_message)
        for interface in ("com.canonical.dbusmenu", "org.kde.StatusNotifierItem"):
            self.dbus("AddMatch", "s", [f"type='signal',interface='{interface}'"])

    async def _connect(self, address: str) -> MessageBus:
        return await MessageBus(bus_address=address).connect()  # made on the loop that will run it

    def serve_notifications(self) -> None:
        self.bus.export("/org/freedesktop/Notifications", Notifications(self))
        self.run(self.bus.request_name("org.freedesktop.Notifications"))

    def run(self, coroutine: Coroutine[Any, Any, T], timeout: float = DEADLINE_S) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def close(self) -> None:
        self.bus.disconnect()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()

    def record(self, what: Any) -> None:
        with self.changed:
            self.seen.append(what)
            self.changed.notify_all()

    def _on_message(self, msg: Message) -> None:
        if msg.message_type is MessageType.SIGNAL and msg.interface != "org.freedesktop.DBus":
            self.record((msg.member, plain(msg.body)))

    def wait_for(self, what: str, found: Callable[[Any], bool], since: int = 0) -> Any:
        """The first thing seen (a signal, a notification) from index ``since`` on that ``found`` accepts."""
        deadline = time.monotonic() + DEADLINE_S
        with self.changed:
            while True:
                for seen in self.seen[since:]:
                    if found(seen):
                        return seen
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no {what} within {DEADLINE_S:g} s; seen: {self.seen[since:]}")
                self.changed.wait(left)

    def mark(self) -> int:
        with self.changed:
            return len(self.seen)

    def call(
        self, destination: str, path: str, interface: str, member: str, sig: str = "", body: Any = ()
    ) -> Message:
        message = Message(
            destination=destination,
            path=path,
            interface=interface,
            member=member,
            signature=sig,
            body=list(body),
        )
        return self.run(self.bus.call(message))

    def dbus(self, member: str, sig: str = "", body: Any = ()) -> Any:
        reply = self.call(
            "org.freedesktop.DBus", "/org/freedesktop/DBus", "org.freedesktop.DBus", member, sig, body
        )
        assert reply.message_type is MessageType.METHOD_RETURN, reply.body
        return reply.body

    def properties(self, item: str) -> dict[str, Any]:
        reply = self.call(
            item,
            "/StatusNotifierItem",
            "org.freedesktop.DBus.Properties",
            "GetAll",
            "s",
            ["org.kde.StatusNotifierItem"],
        )
        assert reply.message_type is MessageType.METHOD_RETURN, reply.body
        return plain(reply.body[0])

    def menu(self, item: str, method: str, sig: str = "", body: Any = ()) -> Message:
        menu_path = self.properties(item)["Menu"]
        return self.call(item, menu_path, "com.canonical.dbusmenu", method, sig, body)

    def layout(
        self, item: str, parent: int = 0, depth: int = -1, names: list[str] | None = None
    ) -> tuple[int, Node]:
        reply = self.menu(item, "GetLayout", "iias", [parent, depth, names or []])
        assert reply.message_type is MessageType.METHOD_RETURN, reply.body
        revision, tree = reply.body
        return revision, Node.of(tree)

    def click(self, item: str, node_id: int) -> Message:
        return self.menu(item, "Event", "isvu", [node_id, "clicked", Variant("s", ""), 0])
