"""config.toml: defaults, fallbacks, and errors that name the file, the key and the problem."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from sorat_daemon import config


def parse(text: str, env: dict[str, str] | None = None) -> config.Settings:
    return config.parse(text, Path("/h/config.toml"), env or {})


def test_absent_file_gives_defaults_and_the_ollama_probe(tmp_path: Path) -> None:
    s = config.load(tmp_path / "missing.toml", env={})
    assert s.server.host == "127.0.0.1" and s.server.port == 8080
    assert s.agent.model == "gpt-4o" and s.agent.max_iterations == 30 and s.agent.tool_events == "reasoning"
    assert s.agent.tools_with_client_tools == ("web", "memory", "clock", "mcp")
    assert [(p.name, p.base_url, p.probe) for p in s.providers] == [("ollama", config.OLLAMA_URL, True)]


def test_template_parses_to_the_defaults() -> None:
    assert parse(config.TEMPLATE).agent == config.AgentSettings()


def test_openai_env_fallback() -> None:
    s = parse("", {"OPENAI_API_KEY": "sk-x", "OPENAI_BASE_URL": "http://127.0.0.1:9/v1/"})
    (p,) = s.providers
    assert (p.name, p.base_url, p.api_key, p.probe) == ("openai", "http://127.0.0.1:9/v1", "sk-x", False)


def test_providers_and_api_key_env() -> None:
    s = parse(
        '[[providers]]\nname = "a"\nbase_url = "http://x/v1"\napi_key_env = "A_KEY"\nmodels = ["m1"]\n'
        '[[providers]]\nname = "b"\nbase_url = "http://y/v1"\napi_key = "k"\n',
        {"A_KEY": "secret"},
    )
    assert [(p.name, p.api_key, p.models) for p in s.providers] == [("a", "secret", ("m1",)), ("b", "k", ())]
    assert "secret" not in repr(s)


@pytest.mark.parametrize(
    ("text", "key", "problem"),
    [
        ("[server]\nport = 'x'", "server.port", "must be an integer"),
        ("[server]\nport = 70000", "server.port", "between 0 and 65535"),
        ("[agent]\ntool_events = 'all'", "agent.tool_events", "must be one of"),
        ("[agent]\nmax_iterations = -1", "agent.max_iterations", "0 or more"),
        ("[agent]\nmodel = ''", "agent.model", "must not be empty"),
        ("[agent]\ntools_with_client_tools = 'web'", "agent.tools_with_client_tools", "must be a list"),
        ("[agent]\ntools_with_client_tools = [1]", "agent.tools_with_client_tools", "list of strings"),
        (
            "[agent]\ntools_with_client_tools = ['shell']",
            "agent.tools_with_client_tools",
            "unknown family 'shell'",
        ),
        ("[[providers]]\nname = 'a'", "providers[0].base_url", "is required"),
        ("[[providers]]\nname = 'a'\nbase_url = 'ftp://x'", "providers[0].base_url", "http://"),
        ("[server]\nallowed_origins = [1]", "server.allowed_origins", "list of strings"),
        ("providers = 3", "providers", "array of tables"),
        ("[agent\nmodel = 'x'", None, "invalid TOML"),
    ],
)
def test_errors_name_file_key_and_problem(text: str, key: str | None, problem: str) -> None:
    with pytest.raises(config.ConfigError) as info:
        parse(text)
    message = str(info.value)
    assert message.startswith("/h/config.toml: ")
    assert problem in message
    if key:
        assert f": {key}: " in message
    assert "\n" not in message


@pytest.mark.parametrize("mode", config.TOOL_EVENTS)
def test_tool_events_modes(mode: str) -> None:
    assert parse(f"[agent]\ntool_events = '{mode}'").agent.tool_events == mode


def test_tools_with_client_tools() -> None:
    """Any of the families, in any order; none at all leaves the client's tools alone."""
    agent = parse("[agent]\ntools_with_client_tools = ['files', 'run_command']").agent
    assert agent.tools_with_client_tools == ("files", "run_command")
    assert parse("[agent]\ntools_with_client_tools = []").agent.tools_with_client_tools == ()


def test_unknown_key_warns_once_naming_it(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="sorat.config"):
        parse("[agent]\nmodle = 'x'\n")
    assert [r.getMessage() for r in caplog.records] == ["/h/config.toml: unknown key agent.modle (ignored)"]


def test_read_active_model(tmp_path: Path) -> None:
    f = tmp_path / "config.toml"
    assert config.read_active_model(f) is None
    f.write_text("[agent]\nmodel = 'm2'\n")
    assert config.read_active_model(f) == "m2"
    f.write_text("[agent\n")
    assert config.read_active_model(f) is None


def test_write_template_only_once(tmp_path: Path) -> None:
    f = tmp_path / "config.toml"
    assert config.write_template(f) is True
    f.write_text("# mine\n")
    assert config.write_template(f) is False
    assert f.read_text() == "# mine\n"
