"""What the daemon reports about itself (for the tray and the logs): a small thread-safe hub."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, replace


@dataclass(frozen=True, slots=True)
class Status:
    url: str = ""  # set once the server listens
    running: bool = False
    error: str | None = None  # could not start (port taken…)
    no_provider: str | None = None  # why no provider is usable, with how to configure one
    provider_error: str | None = None  # the last provider call failed: its message
    tools_error: str | None = None  # tools.toml is invalid: file, line, problem
    model: str = ""  # the active model

    @property
    def attention(self) -> str | None:
        """The one thing the user should look at, or None when all is well."""
        return self.error or self.no_provider or self.provider_error or self.tools_error


class StateHub:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._status = Status()
        self._listeners: list[Callable[[Status], None]] = []

    def get(self) -> Status:
        return self._status

    def update(self, **changes: object) -> None:
        with self._lock:
            new = replace(self._status, **changes)  # type: ignore[arg-type]
            if new == self._status:
                return
            self._status = new
            listeners = list(self._listeners)
        for listener in listeners:
            listener(new)

    def subscribe(self, listener: Callable[[Status], None]) -> None:
        """``listener`` is called (from any thread) after every change."""
        with self._lock:
            self._listeners.append(listener)
