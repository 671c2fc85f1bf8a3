"""The bearer token: ``$SORAT_HOME/token``, created at first start, mode 0600."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

MIN_LENGTH = 32


def _valid(token: str) -> bool:
    return len(token) >= MIN_LENGTH and all(c.isalnum() or c in "-_" for c in token)


def read(path: Path) -> str | None:
    try:
        token = path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return token if _valid(token) else None


def _write(path: Path, token: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, token.encode("ascii") + b"\n")
        os.fsync(fd)
    finally:
        os.close(fd)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def load_or_create(path: Path) -> str:
    token = read(path)
    if token is None:
        token = secrets.token_urlsafe(32)
        _write(path, token)
    elif path.stat().st_mode & 0o077:
        os.chmod(path, 0o600)
    return token


def rotate(path: Path) -> str:
    token = secrets.token_urlsafe(32)
    _write(path, token)
    return token
