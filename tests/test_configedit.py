from __future__ import annotations

import os
import stat
import sys
import tomllib
from pathlib import Path

import pytest

from sorat_daemon.config import TEMPLATE, ConfigError, load, read_active_model
from sorat_daemon.configedit import set_active_model

USER_FILE = """\
# my sorat setup, hand-written
[server]
port = 9090   # 8080 is taken by my other thing

[agent]
# I switch this a lot
model = "gpt-4o"            # the active model
max_iterations = 12

[[providers]]
name = "openai"
base_url = "https://api.openai.com/v1"
models = ["gpt-4o", "gpt-4o-mini"]  # keep these
"""


def test_only_the_model_value_changes(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text(USER_FILE)
    set_active_model(path, "gpt-4o-mini")
    assert path.read_text() == USER_FILE.replace('model = "gpt-4o" ', 'model = "gpt-4o-mini" ')
    assert read_active_model(path) == "gpt-4o-mini"


def test_round_trip_back_to_the_same_bytes(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text(USER_FILE)
    set_active_model(path, "llama3.1:8b")
    set_active_model(path, "gpt-4o")
    assert path.read_text() == USER_FILE


def test_missing_file_becomes_the_commented_template(tmp_path: Path) -> None:
    path = tmp_path / "new" / "config.toml"
    set_active_model(path, "qwen2.5")
    text = path.read_text()
    assert TEMPLATE.count('model = "gpt-4o"') == 1
    assert text == TEMPLATE.replace('model = "gpt-4o"', 'model = "qwen2.5"')  # comments came along
    assert load(path, env={}).agent.model == "qwen2.5"


def test_missing_agent_table_is_added(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text(
        '# only a server\n[server]\nport = 1234\n\n[[providers]]\nname = "x"\nbase_url = "http://h/v1"\n'
    )
    set_active_model(path, "m1")
    text = path.read_text()
    assert text.startswith("# only a server\n[server]\nport = 1234\n")
    data = tomllib.loads(text)
    assert data["agent"] == {"model": "m1"}
    assert data["providers"] == [{"name": "x", "base_url": "http://h/v1"}]


@pytest.mark.parametrize(
    "text",
    ['agent = {model = "a", max_iterations = 3}\n', 'agent.model = "a"\nagent.max_iterations = 3\n'],
    ids=["inline-table", "dotted-keys"],
)
def test_other_shapes_of_agent(tmp_path: Path, text: str) -> None:
    path = tmp_path / "config.toml"
    path.write_text(text)
    set_active_model(path, "b")
    assert path.read_text() == text.replace('"a"', '"b"')


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text("")
    set_active_model(path, "m")
    assert tomllib.loads(path.read_text()) == {"agent": {"model": "m"}}


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX file modes")
@pytest.mark.parametrize(
    ("before", "after"), [(0o600, 0o600), (0o400, 0o400), (0o640, 0o600), (0o666, 0o600)]
)
def test_atomic_write_tightens_the_mode_and_leaves_no_temp_file(
    tmp_path: Path, before: int, after: int
) -> None:
    """The file can hold an api_key: a mode letting others read it is tightened to 0600 (like the
    token's); a stricter one the user chose stays."""
    path = tmp_path / "config.toml"
    path.write_text(USER_FILE)
    os.chmod(path, before)
    inode = path.stat().st_ino
    set_active_model(path, "x")
    assert stat.S_IMODE(path.stat().st_mode) == after
    assert path.stat().st_ino != inode  # replaced, not rewritten in place
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.toml"]
    assert read_active_model(path) == "x"


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX file modes")
def test_new_file_is_private(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    old = os.umask(0)
    try:
        set_active_model(path, "x")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX file modes")
def test_symlinked_config_is_tightened_where_it_lies(tmp_path: Path) -> None:
    real = tmp_path / "dotfiles" / "sorat.toml"
    real.parent.mkdir()
    real.write_text(USER_FILE)
    os.chmod(real, 0o644)
    link = tmp_path / "config.toml"
    link.symlink_to(real)
    set_active_model(link, "y")
    assert link.is_symlink() and stat.S_IMODE(real.stat().st_mode) == 0o600


@pytest.mark.skipif(sys.platform == "win32", reason="symlinks")
def test_symlinked_config_stays_a_symlink(tmp_path: Path) -> None:
    real = tmp_path / "dotfiles" / "sorat.toml"
    real.parent.mkdir()
    real.write_text(USER_FILE)
    link = tmp_path / "config.toml"
    link.symlink_to(real)
    set_active_model(link, "y")
    assert link.is_symlink()
    assert read_active_model(real) == "y"


def test_invalid_toml_is_refused_and_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text("[agent\nmodel = 1\n")
    with pytest.raises(ConfigError, match="invalid TOML") as info:
        set_active_model(path, "x")
    assert info.value.file == path
    assert path.read_text() == "[agent\nmodel = 1\n"


def test_agent_that_is_not_a_table(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text('agent = "gpt-4o"\n')
    with pytest.raises(ConfigError, match="agent: must be a table"):
        set_active_model(path, "x")


def test_empty_model_name(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="must not be empty"):
        set_active_model(tmp_path / "config.toml", "  ")
    assert not (tmp_path / "config.toml").exists()
