"""Helper processes of the desktop tests (Xvfb, panels, bus daemons, the daemon under test)."""

from __future__ import annotations

import subprocess
from typing import Any


def stop(proc: subprocess.Popen[Any]) -> None:
    """Ends ``proc`` (terminate, then kill after 5 s) and closes its pipes."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    for stream in (proc.stdin, proc.stdout, proc.stderr):
        if stream:
            stream.close()
