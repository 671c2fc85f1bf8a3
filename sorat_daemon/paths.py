"""Where sorat keeps its files: ``$SORAT_HOME``, else ``~/.sorat``."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class Home:
    root: Path

    @classmethod
    def from_env(cls) -> Home:
        env = os.environ.get("SORAT_HOME")
        root = Path(env).expanduser() if env else Path.home() / ".sorat"
        return cls(root.absolute())

    @property
    def config(self) -> Path:
        return self.root / "config.toml"

    @property
    def tools(self) -> Path:
        return self.root / "tools.toml"

    @property
    def token(self) -> Path:
        return self.root / "token"

    @property
    def sessions(self) -> Path:
        return self.root / "sessions"

    @property
    def workspace(self) -> Path:
        return self.root / "workspace"

    @property
    def memory(self) -> Path:
        return self.root / "memory.md"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def lock(self) -> Path:
        """Held (flock) by the running daemon; its text says where it serves."""
        return self.root / "sorat.lock"

    def ensure(self) -> None:
        for path in (self.root, self.sessions, self.workspace, self.logs):
            path.mkdir(parents=True, exist_ok=True)


def write_all(fd: int, data: bytes) -> None:
    """``data`` to ``fd``, however many writes the OS takes."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def create_once(path: Path, text: str, mode: int | None = None) -> bool:
    """Write ``text`` to ``path`` unless the file exists (a template never overwrites the user's file).
    ``mode``: the new file's mode, whatever the umask (and 0600 while it is written); else the umask's."""
    created = 0o600 if mode is not None else 0o666
    try:
        with open(path, "x", encoding="utf-8", opener=lambda p, flags: os.open(p, flags, created)) as f:
            f.write(text)
    except FileExistsError:
        return False
    if mode is not None:
        os.chmod(path, mode)
    return True
