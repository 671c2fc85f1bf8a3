"""The daemon as the tray sees it, and a callable that records its calls."""

from __future__ import annotations

import threading
from typing import Any

from sorat_daemon.paths import Home
from sorat_daemon.state import StateHub

URL = "http://127.0.0.1:8080"


class FakeDaemon:
    """The tray's side of sorat_daemon.daemon.Daemon, recording what the tray asks of it."""

    def __init__(self, home: Home, models: list[str] | None = None, start_error: str | None = None) -> None:
        self.home = home
        self.state = StateHub()
        self._models = list(models if models is not None else ["gpt-4o", "gpt-4o-mini", "o3"])
        self._active = "gpt-4o"
        self.start_error = start_error
        self.calls: list[str] = []

    def start_thread(self) -> None:
        self.calls.append("start_thread")
        if self.start_error:
            self.state.update(error=self.start_error)
        else:
            self.state.update(url=URL, running=True, model=self._active)

    def stop(self, timeout: float = 10.0) -> None:
        self.calls.append("stop")
        self.state.update(running=False)

    def models(self) -> list[str]:
        return list(self._models)

    def active_model(self) -> str:
        return self._active

    def set_model(self, name: str) -> None:
        self.calls.append(f"set_model {name}")
        if name == "broken":
            raise OSError("config.toml: read-only file system")
        self._active = name
        self.state.update(model=name)


class Recorder:
    def __init__(self) -> None:
        self.calls: list[Any] = []
        self.event = threading.Event()

    def __call__(self, *args: Any) -> None:
        self.calls.append(args[0] if len(args) == 1 else args)
        self.event.set()
