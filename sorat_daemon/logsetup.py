"""Logging: a rotated file under ``$SORAT_HOME/logs`` and, in the foreground, stderr."""

from __future__ import annotations

import logging
import logging.handlers
import sys
from pathlib import Path

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure(logs: Path, *, stderr: bool = True, level: int = logging.INFO) -> Path:
    logs.mkdir(parents=True, exist_ok=True)
    file = logs / "sorat.log"
    root = logging.getLogger("sorat")
    root.setLevel(level)
    root.propagate = False
    for h in list(root.handlers):
        root.removeHandler(h)
    handler = logging.handlers.RotatingFileHandler(
        file, maxBytes=5 * 1024 * 1024, backupCount=3, encoding="utf-8"
    )
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
