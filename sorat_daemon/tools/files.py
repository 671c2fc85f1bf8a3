"""File tools, confined to workspace/: read_file, write_file, list_dir, create_dir, delete_file.

Paths are relative to workspace/. Absolute paths, ``~``, any ``..`` component, and paths that resolve
(through symlinks) outside workspace/ are refused; operations act on the resolved path, so a symlink
inside the workspace is followed only when its target is inside too. Writes go to a temporary file
in the same folder, are flushed to disk, then replace the target in one step (``os.replace``), so a
crash leaves the old file or the new one, never half of one. delete_file removes files, symlinks
whose target is inside the workspace, and empty folders; it refuses a folder that still holds
something (deleting trees is one call too easy to regret).
"""

from __future__ import annotations

import codecs
import contextlib
import os
import stat
import sys
import tempfile
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

from sorat_daemon.tools.registry import Tool, ToolContext, ToolError, tool

MAX_READ_CHARS = 200_000
MAX_LIST_ENTRIES = 1000
_SNIFF_BYTES = 8192


def resolve(workspace: Path, path: str) -> Path:
    """The real path of ``path`` inside ``workspace``, or ToolError saying why it is refused."""
    raw = (path or ".").strip()
    if "\x00" in raw:
        raise ToolError("refused: the path contains a NUL character")
    if raw.startswith("~"):
        raise ToolError(f"refused: {path!r}: paths are relative to the workspace; ~ is not expanded")
    windows = sys.platform == "win32"
    if PurePosixPath(raw).is_absolute() or (
        windows and (PureWindowsPath(raw).is_absolute() or PureWindowsPath(raw).drive)
    ):
        raise ToolError(f"refused: {path!r} is absolute; paths are relative to the workspace")
    if ".." in (raw.replace("\\", "/") if windows else raw).split("/"):
        raise ToolError(f"refused: {path!r} contains ..; paths must stay inside the workspace")
    workspace.mkdir(parents=True, exist_ok=True)
    root = workspace.resolve()
    try:
        target = (root / raw).resolve()
    except (OSError, RuntimeError) as e:  # a symlink loop
        raise ToolError(f"cannot resolve {path!r}: {e}") from None
    if not target.is_relative_to(root):
        raise ToolError(f"refused: {path!r} leads outside the workspace (through a symlink)")
    return target


def _rel(workspace: Path, target: Path) -> str:
    rel = target.relative_to(workspace.resolve()).as_posix()
    return rel or "."


def _looks_binary(head: bytes) -> bool:
    if b"\x00" in head:
        return True
    if not head:
        return False
    controls = sum(1 for b in head if b < 32 and b not in (9, 10, 12, 13, 27))
    return controls / len(head) > 0.1


def _decode(data: bytes, final: bool) -> str:
    try:
        return codecs.getincrementaldecoder("utf-8-sig")(errors="strict").decode(data, final=final)
    except UnicodeDecodeError:
        # Not UTF-8 but not binary either: a legacy 8-bit encoding. cp1252 reads most of it right.
        return data.decode("cp1252", errors="replace")


def read_text(target: Path, display: str, max_chars: int = MAX_READ_CHARS) -> dict[str, Any]:
    if target.is_dir():
        raise ToolError(f"{display} is a folder; use list_dir")
    try:
        size = target.stat().st_size
        with open(target, "rb") as f:
            data = f.read(max_chars * 4 + 1)  # enough bytes for max_chars of UTF-8
    except FileNotFoundError:
        raise ToolError(f"{display} does not exist") from None
    except OSError as e:
        raise ToolError(f"cannot read {display}: {e.strerror or e}") from None
    if _looks_binary(data[:_SNIFF_BYTES]):
        raise ToolError(f"{display} is a binary file ({size} bytes); read_file reads text files only")
    complete = len(data) <= max_chars * 4
    text = _decode(data, final=complete)
    result: dict[str, Any] = {"path": display, "size": size}
    if len(text) > max_chars or not complete:
        result["content"] = text[:max_chars]
        result["truncated"] = True
        result["note"] = f"the file is {size} bytes; only its first {max_chars} characters are shown"
    else:
        result["content"] = text
    return result


def write_atomic(target: Path, data: bytes) -> None:
    """Replace ``target`` with ``data`` in one step (temp file in the same folder, fsync, rename)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    mode = None
    try:
        mode = stat.S_IMODE(target.stat().st_mode)
    except FileNotFoundError:
        pass
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if mode is not None:
            os.chmod(tmp, mode)
        else:
            os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if hasattr(os, "O_DIRECTORY"):  # make the rename itself durable
        with contextlib.suppress(OSError):
            dfd = os.open(target.parent, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)


def _read_umask() -> int:
    # os.umask can only be read by setting it, so it is read once, at import (before tools run in
    # threads); mkstemp's 0600 would be too strict for the user's new files.
    current = os.umask(0o022)
    os.umask(current)
    return current


_UMASK = _read_umask()


def make_tools() -> list[Tool]:
    @tool(timeout_s=30)
    def read_file(path: str, *, ctx: ToolContext) -> dict[str, Any]:
        """Read a text file from the workspace.

        Args:
            path: the file's path, relative to the workspace
        """
        target = resolve(ctx.home.workspace, path)
        return read_text(target, _rel(ctx.home.workspace, target))

    @tool(timeout_s=30)
    def write_file(path: str, content: str, *, ctx: ToolContext) -> dict[str, Any]:
        """Create or overwrite a text file in the workspace (folders on the way are created).

        Args:
            path: the file's path, relative to the workspace
            content: the whole new content of the file
        """
        target = resolve(ctx.home.workspace, path)
        display = _rel(ctx.home.workspace, target)
        if target.is_dir():
            raise ToolError(f"{display} is a folder")
        existed = target.exists()
        data = content.encode("utf-8")
        try:
            write_atomic(target, data)
        except OSError as e:
            raise ToolError(f"cannot write {display}: {e.strerror or e}") from None
        return {"path": display, "bytes": len(data), "created": not existed}

    @tool(timeout_s=30)
    def list_dir(path: str = ".", *, ctx: ToolContext) -> dict[str, Any]:
        """List a folder of the workspace: each entry's name, type (file, dir, symlink) and size.

        Args:
            path: the folder, relative to the workspace; the workspace itself if omitted
        """
        target = resolve(ctx.home.workspace, path)
        display = _rel(ctx.home.workspace, target)
        if not target.is_dir():
            raise ToolError(f"{display} is not a folder" if target.exists() else f"{display} does not exist")
        entries: list[dict[str, Any]] = []
        try:
            names = sorted(os.listdir(target))
        except OSError as e:
            raise ToolError(f"cannot list {display}: {e.strerror or e}") from None
        for name in names[:MAX_LIST_ENTRIES]:
            p = target / name
            try:
                st = p.lstat()
            except OSError:
                continue
            if stat.S_ISLNK(st.st_mode):
                entries.append({"name": name, "type": "symlink"})
            elif stat.S_ISDIR(st.st_mode):
                entries.append({"name": name, "type": "dir"})
            else:
                entries.append({"name": name, "type": "file", "size": st.st_size})
        result: dict[str, Any] = {"path": display, "entries": entries}
        if len(names) > MAX_LIST_ENTRIES:
            result["truncated"] = True
            result["total"] = len(names)
        return result

    @tool(timeout_s=30)
    def create_dir(path: str, *, ctx: ToolContext) -> dict[str, Any]:
        """Create a folder in the workspace (with any missing parents).

        Args:
            path: the folder, relative to the workspace
        """
        target = resolve(ctx.home.workspace, path)
        display = _rel(ctx.home.workspace, target)
        if target.exists() and not target.is_dir():
            raise ToolError(f"{display} exists and is not a folder")
        existed = target.exists()
        try:
            target.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ToolError(f"cannot create {display}: {e.strerror or e}") from None
        return {"path": display, "created": not existed}

    @tool(timeout_s=30)
    def delete_file(path: str, *, ctx: ToolContext) -> dict[str, Any]:
        """Delete a file (or an empty folder) in the workspace.

        Args:
            path: the file's path, relative to the workspace
        """
        workspace = ctx.home.workspace
        resolve(workspace, path)  # refuses what leads outside
        # Act on the entry itself, not its target: deleting a symlink removes the link.
        entry = workspace.resolve() / (path or ".").strip()
        display = _rel(workspace, entry.parent.resolve() / entry.name) if entry.name else "."
        if entry.resolve() == workspace.resolve():
            raise ToolError("refused: the workspace itself cannot be deleted")
        try:
            if entry.is_dir() and not entry.is_symlink():
                try:
                    entry.rmdir()
                except OSError:
                    raise ToolError(
                        f"{display} is a folder that is not empty; delete what it holds first"
                    ) from None
                return {"path": display, "deleted": "folder"}
            entry.unlink()
        except FileNotFoundError:
            raise ToolError(f"{display} does not exist") from None
        except OSError as e:
            raise ToolError(f"cannot delete {display}: {e.strerror or e}") from None
        return {"path": display, "deleted": "file"}

    return [read_file, write_file, list_dir, create_dir, delete_file]
