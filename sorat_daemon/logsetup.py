"""Logging: a rotated file under ``$SORAT_HOME/logs`` and, in the foreground, stderr."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from pathlib import Path

from sorat_daemon.paths import write_all

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
MAX_BYTES = 5 * 1024 * 1024
BACKUPS = 3
_FLAGS = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_BINARY", 0)


class LogFile(logging.Handler):
    """``sorat.log``, rotated to ``sorat.log.1``… ``.N`` past ``max_bytes``, with one ``os.write`` a record.

    The stdlib's RotatingFileHandler stats the file twice, seeks and flushes for every record: on the
    request path (one access-log line a request) that cost more than the rest of the logging."""

    def __init__(self, path: Path, max_bytes: int = MAX_BYTES, backups: int = BACKUPS) -> None:
        super().__init__()
        self.path = path
        self.max_bytes = max_bytes
        self.backups = backups
        self._fd: int | None = None
        self._size = 0

    def emit(self, record: logging.LogRecord) -> None:
        try:
            data = (self.format(record) + "\n").encode("utf-8", "replace")
            if self._fd is None:
                self._open()
            elif self._size + len(data) > self.max_bytes:
                self._rotate()
            assert self._fd is not None
            write_all(self._fd, data)
            self._size += len(data)
        except Exception:
            self.handleError(record)

    def close(self) -> None:
        with self.lock:  # type: ignore[union-attr]
            self._close()
        super().close()

    def _open(self) -> None:
        self._fd = os.open(self.path, _FLAGS, 0o600)
        self._size = os.fstat(self._fd).st_size

    def _close(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None

    def _rotate(self) -> None:
        self._close()  # Windows renames no open file
        for n in range(self.backups - 1, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{n}")
            if older.exists():
                os.replace(older, self.path.with_name(f"{self.path.name}.{n + 1}"))
        if self.backups > 0:
            os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))
        else:
            self.path.unlink(missing_ok=True)
        self._open()


def configure(logs: Path, *, stderr: bool = True, level: int = logging.INFO) -> Path:
    logs.mkdir(parents=True, exist_ok=True)
    file = logs / "sorat.log"
    root = logging.getLogger("sorat")
    root.setLevel(level)
    root.propagate = False
    for h in list(root.handlers):
        root.removeHandler(h)
        h.close()
    handler = LogFile(file)
    handler.setFormatter(logging.Formatter(FORMAT))
    root.addHandler(handler)
    if stderr:
        console = logging.StreamHandler(sys.stderr)
        console.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
        root.addHandler(console)
    # Hypercorn and the libraries below it log through their own loggers: keep their warnings.
    for name in ("hypercorn.error", "mcp", "httpx"):
        logging.getLogger(name).setLevel(logging.WARNING)
    return file
