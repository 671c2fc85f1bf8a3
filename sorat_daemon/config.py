"""config.toml: frozen settings, defaults when absent, errors that name the file, the key and the problem."""

from __future__ import annotations

import logging
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from sorat_daemon.paths import create_once

log = logging.getLogger("sorat.config")

TOOL_EVENTS = ("tool_calls", "reasoning", "none")
TOOL_FAMILIES = ("run_command", "files", "web", "memory", "clock", "mcp")

TEMPLATE = """\
# sorat configuration. Every key is optional; the values shown are the defaults.
# Restart sorat after editing, except [agent] model, which applies live.

[server]
host = "127.0.0.1"          # loopback by default; another address exposes sorat to the network
port = 8080
allowed_origins = []        # web origins allowed to call the API from a browser (CORS)
allowed_hosts = []          # Host header values accepted besides localhost, 127.0.0.1, [::1]

[agent]
model = "gpt-4o"            # the active model; the tray's Model menu and `sorat model` switch it
max_iterations = 30         # tool rounds per request, then one final answer
tool_events = "reasoning"   # how streams show internal tool calls: reasoning | tool_calls | none
tools_with_client_tools = ["web", "memory", "clock", "mcp"]  # internal tool families offered beside a
                            # client's own tools; families: run_command, files, web, memory, clock, mcp
system_prompt = ""          # optional; prepended to every conversation
provider_read_timeout_s = 120  # a provider silent this long ends the call (504)

# One block per provider; any OpenAI-compatible endpoint works.
# With none: OPENAI_API_KEY (+ OPENAI_BASE_URL) from the environment, else a local Ollama.
#
# [[providers]]
# name = "openai"
# base_url = "https://api.openai.com/v1"
# api_key_env = "OPENAI_API_KEY"   # or api_key = "..."
# models = ["gpt-4o", "gpt-4o-mini"]   # optional: else discovered from GET {base_url}/models
#
# [[providers]]
# name = "ollama"
# base_url = "http://127.0.0.1:11434/v1"
"""

OLLAMA_URL = "http://127.0.0.1:11434/v1"


class ConfigError(Exception):
    """A config file that cannot be used; ``str()`` is the one line shown to the user."""

    def __init__(self, file: Path, key: str | None, problem: str) -> None:
        where = f"{file}: {key}: " if key else f"{file}: "
        super().__init__(where + problem)
        self.file, self.key, self.problem = file, key, problem


@dataclass(frozen=True, slots=True)
class ServerSettings:
    host: str = "127.0.0.1"
    port: int = 8080
    allowed_origins: tuple[str, ...] = ()
    allowed_hosts: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class AgentSettings:
    model: str = "gpt-4o"
    max_iterations: int = 30
    tool_events: str = "reasoning"
    tools_with_client_tools: tuple[str, ...] = ("web", "memory", "clock", "mcp")
    system_prompt: str = ""
    provider_read_timeout_s: float = 120.0


@dataclass(frozen=True, slots=True)
class ProviderSettings:
    name: str
    base_url: str
    api_key: str | None = field(default=None, repr=False)
    api_key_env: str | None = None
    models: tuple[str, ...] = ()  # empty: discover from GET {base_url}/models
    probe: bool = False  # a guessed provider (local Ollama): used only if it answers


@dataclass(frozen=True, slots=True)
class Settings:
    server: ServerSettings = ServerSettings()
    agent: AgentSettings = AgentSettings()
    providers: tuple[ProviderSettings, ...] = ()
    file: Path | None = None

    def with_model(self, model: str) -> Settings:
        return replace(self, agent=replace(self.agent, model=model))


_SERVER_KEYS = {"host": str, "port": int, "allowed_origins": list, "allowed_hosts": list}
_AGENT_KEYS = {
    "model": str,
    "max_iterations": int,
    "tool_events": str,
    "tools_with_client_tools": list,
    "system_prompt": str,
    "provider_read_timeout_s": (int, float),
}
_PROVIDER_KEYS = {"name": str, "base_url": str, "api_key": str, "api_key_env": str, "models": list}
_TYPE_NAMES = {str: "a string", int: "an integer", list: "a list", (int, float): "a number"}


def _typed(file: Path, key: str, value: Any, kind: Any) -> Any:
    ok = isinstance(value, kind) and not (kind is int and isinstance(value, bool))
    if kind == (int, float) and isinstance(value, bool):
        ok = False
    if not ok:
        raise ConfigError(file, key, f"must be {_TYPE_NAMES[kind]}, not {type(value).__name__} {value!r}")
    return value


def _table(file: Path, data: dict[str, Any], name: str, keys: dict[str, Any], prefix: str) -> dict[str, Any]:
    table = data.get(name, {})
    if not isinstance(table, dict):
        raise ConfigError(file, prefix.rstrip("."), "must be a table")
    out: dict[str, Any] = {}
    for key, value in table.items():
        if key not in keys:
            log.warning("%s: unknown key %s%s (ignored)", file, prefix, key)
            continue
        out[key] = _typed(file, prefix + key, value, keys[key])
    return out


def _strings(file: Path, key: str, values: list[Any]) -> tuple[str, ...]:
    for v in values:
        if not isinstance(v, str):
            raise ConfigError(file, key, f"must be a list of strings, found {v!r}")
    return tuple(values)


def parse(text: str, file: Path, env: Mapping[str, str] | None = None) -> Settings:
    if env is None:
        env = os.environ
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(file, None, f"invalid TOML: {e}") from None
    for key in data:
        if key not in ("server", "agent", "providers"):
            log.warning("%s: unknown key %s (ignored)", file, key)

    s = _table(file, data, "server", _SERVER_KEYS, "server.")
    port = s.get("port", 8080)
    if not 0 <= port <= 65535:
        raise ConfigError(file, "server.port", f"must be between 0 and 65535, not {port}")
    server = ServerSettings(
        host=s.get("host", "127.0.0.1"),
        port=port,
        allowed_origins=_strings(file, "server.allowed_origins", s.get("allowed_origins", [])),
        allowed_hosts=tuple(
            h.lower() for h in _strings(file, "server.allowed_hosts", s.get("allowed_hosts", []))
        ),
    )

    a = _table(file, data, "agent", _AGENT_KEYS, "agent.")
    if a.get("tool_events", "reasoning") not in TOOL_EVENTS:
        raise ConfigError(file, "agent.tool_events", f"must be one of {', '.join(TOOL_EVENTS)}")
    if "tools_with_client_tools" in a:
        key = "agent.tools_with_client_tools"
        families = _strings(file, key, a["tools_with_client_tools"])
        unknown = [f for f in families if f not in TOOL_FAMILIES]
        if unknown:
            raise ConfigError(
                file, key, f"unknown family {unknown[0]!r}; families: {', '.join(TOOL_FAMILIES)}"
            )
        a["tools_with_client_tools"] = families
    if a.get("max_iterations", 30) < 0:
        raise ConfigError(file, "agent.max_iterations", "must be 0 or more")
    if a.get("provider_read_timeout_s", 120) <= 0:
        raise ConfigError(file, "agent.provider_read_timeout_s", "must be more than 0")
    if "model" in a and not a["model"].strip():
        raise ConfigError(file, "agent.model", "must not be empty")
    agent = AgentSettings(**a)
    if "provider_read_timeout_s" in a:
        agent = replace(agent, provider_read_timeout_s=float(a["provider_read_timeout_s"]))

    raw = data.get("providers", [])
    if not isinstance(raw, list):
        raise ConfigError(file, "providers", "must be an array of tables: [[providers]]")
    providers = []
    for i, table in enumerate(raw):
        prefix = f"providers[{i}]."
        p = _table(file, {"p": table}, "p", _PROVIDER_KEYS, prefix)
        for required in ("name", "base_url"):
            if not p.get(required, "").strip():
                raise ConfigError(file, prefix + required, "is required")
        if not p["base_url"].startswith(("http://", "https://")):
            raise ConfigError(
                file, prefix + "base_url", f"must start with http:// or https://, not {p['base_url']!r}"
            )
        api_key: str | None = p.get("api_key")
        if api_key is None and p.get("api_key_env"):
            api_key = env.get(p["api_key_env"]) or None
            if api_key is None:
                log.warning("%s: %sapi_key_env: $%s is not set", file, prefix, p["api_key_env"])
        providers.append(
            ProviderSettings(
                name=p["name"],
                base_url=p["base_url"].rstrip("/"),
                api_key=api_key,
                api_key_env=p.get("api_key_env"),
                models=_strings(file, prefix + "models", p.get("models", [])),
            )
        )
    names = [p.name for p in providers]
    for n in names:
        if names.count(n) > 1:
            raise ConfigError(file, "providers", f"two providers are named {n!r}")

    if not providers:
        providers = _fallback_providers(env)
    return Settings(server=server, agent=agent, providers=tuple(providers), file=file)


def _fallback_providers(env: Mapping[str, str]) -> list[ProviderSettings]:
    if env.get("OPENAI_API_KEY"):
        base = env.get("OPENAI_BASE_URL") or "https://api.openai.com/v1"
        return [ProviderSettings(name="openai", base_url=base.rstrip("/"), api_key=env["OPENAI_API_KEY"])]
    return [ProviderSettings(name="ollama", base_url=OLLAMA_URL, probe=True)]


def load(file: Path, env: Mapping[str, str] | None = None) -> Settings:
    """Read ``file``; an absent file gives the defaults."""
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        text = ""
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(file, None, f"cannot be read: {e}") from None
    return parse(text, file, env)


def read_active_model(file: Path) -> str | None:
    """The ``[agent] model`` now on disk, or None when the file cannot be used (the caller keeps its own)."""
    try:
        data = tomllib.loads(file.read_text(encoding="utf-8"))
        model = data.get("agent", {}).get("model")
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError, AttributeError):
        return None
    return model if isinstance(model, str) and model.strip() else None


def write_template(file: Path) -> bool:
    """Write the commented template if no config exists yet."""
    return create_once(file, TEMPLATE)
