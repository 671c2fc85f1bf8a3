from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from sorat_daemon.paths import Home
from sorat_daemon.tools import files
from sorat_daemon.tools.registry import ToolContext, Toolset


@pytest.fixture
def home(tmp_path: Path) -> Home:
    h = Home(tmp_path / "home")
    h.ensure()
    h.token.write_text("the-sorat-token\n")
    return h


@pytest.fixture
def ctx(home: Home) -> ToolContext:
    return ToolContext(home=home)


@pytest.fixture
def ts() -> Toolset:
    return Toolset(files.make_tools())


async def call(ts: Toolset, ctx: ToolContext, name: str, **arguments: object) -> dict[str, object]:
    return json.loads(await ts.call(name, json.dumps(arguments), ctx))  # type: ignore[no-any-return]


async def test_write_read_list_delete(ts: Toolset, ctx: ToolContext, home: Home) -> None:
    out = await call(ts, ctx, "write_file", path="notes/today.md", content="héllo\n")
    assert out == {"path": "notes/today.md", "bytes": 7, "created": True}
    assert (home.workspace / "notes" / "today.md").read_text(encoding="utf-8") == "héllo\n"
    out = await call(ts, ctx, "write_file", path="notes/today.md", content="v2")
    assert out["created"] is False
    out = await call(ts, ctx, "read_file", path="notes/today.md")
    assert out == {"path": "notes/today.md", "size": 2, "content": "v2"}
    out = await call(ts, ctx, "list_dir")
    assert out == {"path": ".", "entries": [{"name": "notes", "type": "dir"}]}
    out = await call(ts, ctx, "list_dir", path="notes")
    assert out["entries"] == [{"name": "today.md", "type": "file", "size": 2}]
    assert await call(ts, ctx, "create_dir", path="a/b") == {"path": "a/b", "created": True}
    assert await call(ts, ctx, "create_dir", path="a/b") == {"path": "a/b", "created": False}
    assert (await call(ts, ctx, "delete_file", path="notes/today.md"))["deleted"] == "file"
    assert not (home.workspace / "notes" / "today.md").exists()
    assert (await call(ts, ctx, "delete_file", path="a/b"))["deleted"] == "folder"


async def test_no_temp_files_left_and_mode_kept(ts: Toolset, ctx: ToolContext, home: Home) -> None:
    target = home.workspace / "script.sh"
    target.write_text("old")
    target.chmod(0o750)
    await call(ts, ctx, "write_file", path="script.sh", content="new")
    assert target.read_text() == "new"
    assert os.listdir(home.workspace) == ["script.sh"]
    if sys.platform != "win32":
        assert target.stat().st_mode & 0o777 == 0o750


def test_write_is_atomic_when_it_fails(home: Home, monkeypatch: pytest.MonkeyPatch) -> None:
    target = home.workspace / "keep.txt"
    target.write_text("original")

    def broken_fsync(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(files.os, "fsync", broken_fsync)
    with pytest.raises(OSError):
        files.write_atomic(target, b"partial")
    assert target.read_text() == "original"
    assert os.listdir(home.workspace) == ["keep.txt"]


@pytest.mark.parametrize(
    ("tool", "path"),
    [
        ("read_file", "../token"),
        ("read_file", "a/../../token"),
        ("read_file", "/etc/passwd"),
        ("read_file", "~/x"),
        ("write_file", "../escape.txt"),
        ("write_file", "/tmp/escape.txt"),
        ("list_dir", ".."),
        ("list_dir", "/"),
        ("create_dir", "../newdir"),
        ("delete_file", "../token"),
    ],
)
async def test_confined_to_the_workspace(
    ts: Toolset, ctx: ToolContext, home: Home, tool: str, path: str
) -> None:
    arguments: dict[str, object] = {"path": path}
    if tool == "write_file":
        arguments["content"] = "x"
    out = await call(ts, ctx, tool, **arguments)
    assert str(out["error"]).startswith("refused"), out
    assert home.token.read_text() == "the-sorat-token\n"
    assert not (home.root / "escape.txt").exists() and not (home.root / "newdir").exists()


@pytest.mark.skipif(sys.platform == "win32", reason="symlinks")
async def test_symlinks_leading_out_are_refused(ts: Toolset, ctx: ToolContext, home: Home) -> None:
    (home.workspace / "token").symlink_to(home.token)
    (home.workspace / "root").symlink_to(home.root)
    for tool, arguments in [
        ("read_file", {"path": "token"}),
        ("read_file", {"path": "root/token"}),
        ("write_file", {"path": "token", "content": "overwritten"}),  # writing through the link
        ("write_file", {"path": "root/new.txt", "content": "x"}),
        ("list_dir", {"path": "root"}),
        ("delete_file", {"path": "root/token"}),
    ]:
        out = await call(ts, ctx, tool, **arguments)
        assert "outside the workspace" in str(out.get("error")), (tool, arguments, out)
    assert home.token.read_text() == "the-sorat-token\n"
    assert not (home.root / "new.txt").exists()
    # a link that stays inside works, and deleting it removes the link only
    (home.workspace / "real.txt").write_text("real")
    (home.workspace / "alias.txt").symlink_to(home.workspace / "real.txt")
    assert (await call(ts, ctx, "read_file", path="alias.txt"))["content"] == "real"
    await call(ts, ctx, "delete_file", path="alias.txt")
    assert (home.workspace / "real.txt").exists() and not (home.workspace / "alias.txt").exists()


async def test_binary_and_huge_files(ts: Toolset, ctx: ToolContext, home: Home) -> None:
    (home.workspace / "img.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)))
    out = await call(ts, ctx, "read_file", path="img.png")
    assert "binary file" in str(out["error"])
    (home.workspace / "huge.txt").write_text("y" * (files.MAX_READ_CHARS * 3))
    out = await call(ts, ctx, "read_file", path="huge.txt")
    assert out["truncated"] is True
    assert len(str(out["content"])) == files.MAX_READ_CHARS
    assert "only its first" in str(out["note"])
    (home.workspace / "latin1.txt").write_bytes("café crème\n".encode("latin-1"))
    assert (await call(ts, ctx, "read_file", path="latin1.txt"))["content"] == "café crème\n"


async def test_clear_errors(ts: Toolset, ctx: ToolContext, home: Home) -> None:
    (home.workspace / "d" / "e").mkdir(parents=True)
    (home.workspace / "f.txt").write_text("x")
    assert "does not exist" in str((await call(ts, ctx, "read_file", path="missing.txt"))["error"])
    assert "is a folder" in str((await call(ts, ctx, "read_file", path="d"))["error"])
    assert "not empty" in str((await call(ts, ctx, "delete_file", path="d"))["error"])
    assert "cannot be deleted" in str((await call(ts, ctx, "delete_file", path="."))["error"])
    assert "does not exist" in str((await call(ts, ctx, "delete_file", path="nope"))["error"])
    assert "not a folder" in str((await call(ts, ctx, "list_dir", path="f.txt"))["error"])
    assert "not a folder" in str((await call(ts, ctx, "create_dir", path="f.txt"))["error"])
    assert "is a folder" in str((await call(ts, ctx, "write_file", path="d", content="x"))["error"])


async def test_workspace_is_created_on_demand(tmp_path: Path) -> None:
    home = Home(tmp_path / "fresh")
    ctx = ToolContext(home=home)
    out = await call(Toolset(files.make_tools()), ctx, "list_dir")
    assert out == {"path": ".", "entries": []}
