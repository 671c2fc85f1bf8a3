"""The one write sorat makes to config.toml: switching ``[agent] model``, keeping comments and layout."""

from __future__ import annotations

import os
import stat
import tempfile
from collections.abc import MutableMapping
from pathlib import Path

import tomlkit
import tomlkit.exceptions

from sorat_daemon.config import PRIVATE, TEMPLATE, ConfigError


def set_active_model(config_path: Path, model: str) -> None:
    """Make ``model`` the active model in ``config_path``, creating the file (from the template) or the
    ``[agent]`` table when missing. The file is replaced atomically, so a watcher never sees half of it."""
    model = model.strip()
    if not model:
        raise ConfigError(config_path, "agent.model", "must not be empty")
    target = config_path.resolve() if config_path.is_symlink() else config_path
    try:
        text = target.read_text(encoding="utf-8")
    except FileNotFoundError:
        text = TEMPLATE
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(config_path, None, f"cannot be read: {e}") from None
    try:
        doc = tomlkit.parse(text)
    except tomlkit.exceptions.ParseError as e:
        raise ConfigError(config_path, None, f"invalid TOML: {e}") from None

    agent = doc.get("agent")
    if agent is None:
        doc["agent"] = tomlkit.table()
        agent = doc["agent"]
    if not isinstance(agent, MutableMapping):
        raise ConfigError(config_path, "agent", "must be a table")
    agent["model"] = model
    _write_atomic(target, tomlkit.dumps(doc))


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    try:  # the file can hold an api_key: never readable by others, though a stricter mode stays
        mode = stat.S_IMODE(path.stat().st_mode) & PRIVATE
    except FileNotFoundError:
        mode = PRIVATE
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
