"""The real Responses clients against a real daemon on the scripted upstream: the OpenAI Agents SDK
(``Runner.run``, which sends no ``stream`` key, and ``Runner.run_streamed``, with a function tool the
model calls; a conversation; response chaining) and Codex CLI itself (``codex exec`` with the README's
config: a text answer, a shell command Codex really runs, an internal tool call it does not)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import DaemonProc
from tests.test_clients import node_modules  # noqa: F401 - the npm install fixture
from tests.test_responses_e2e import sent_with
from tests.upstream import Upstream, text, tool_calls

agents = pytest.importorskip("agents", reason="the OpenAI Agents SDK (openai-agents) is not installed")


@pytest.fixture
async def sdk(daemon: DaemonProc) -> AsyncIterator[Any]:
    from openai import AsyncOpenAI

    agents.set_tracing_disabled(True)  # else it posts traces to OpenAI
    async with AsyncOpenAI(base_url=daemon.base_url, api_key=daemon.token, max_retries=0) as client:
        yield client


def sessions_with(daemon: DaemonProc, marker: str) -> int:
    with daemon.client() as c:
        ids = [row["id"] for row in c.get("/v1/sessions", params={"limit": 1000}).json()["data"]]
        return sum(marker in str(c.get(f"/v1/sessions/{i}").json()["messages"]) for i in ids)


def weather_agent(client: Any, ran: list[str]) -> Any:
    @agents.function_tool
    def get_weather(city: str) -> str:
        """The weather in a city."""
        ran.append(city)
        return f"sunny in {city}"

    model = agents.OpenAIResponsesModel(model="sorat-agent", openai_client=client)
    return agents.Agent(name="helper", instructions="Be brief.", model=model, tools=[get_weather])


async def test_agents_sdk_run_with_a_function_tool(sdk: Any, daemon: DaemonProc, upstream: Upstream) -> None:
    ran: list[str] = []
    upstream.script(tool_calls([("get_weather", {"city": "Oslo"})]), text("Sunny in Oslo."))
    result = await agents.Runner.run(weather_agent(sdk, ran), "agents-1 weather in Oslo?")
    assert result.final_output == "Sunny in Oslo." and ran == ["Oslo"]
    first, second = sent_with(upstream, "agents-1")
    assert not first.get("stream")  # Runner.run sends no stream key: the answer came whole
    assert first["messages"][0] == {"role": "system", "content": "Be brief."}
    assert [m["role"] for m in second["messages"]] == ["system", "user", "assistant", "tool"]
    assert second["messages"][-1]["content"] == "sunny in Oslo"
    assert sessions_with(daemon, "agents-1") == 1  # the SDK resent the history: one session


async def test_agents_sdk_run_streamed(sdk: Any, upstream: Upstream) -> None:
    ran: list[str] = []
    upstream.script(
        tool_calls([("get_current_time", {})]),  # internal: sorat runs it, the SDK never sees a call
        tool_calls([("get_weather", {"city": "Bergen"})]),
        text("Rainy in Bergen, as ever.", chunks=4),
    )
    result = agents.Runner.run_streamed(weather_agent(sdk, ran), "agents-2 weather in Bergen?")
    kinds = [ev.type async for ev in result.stream_events()]
    assert result.final_output == "Rainy in Bergen, as ever." and ran == ["Bergen"]
    assert "raw_response_event" in kinds
    requests = sent_with(upstream, "agents-2")
    assert len(requests) == 3 and all(r["stream"] is True for r in requests)


async def test_agents_sdk_conversation_and_chaining(sdk: Any, daemon: DaemonProc, upstream: Upstream) -> None:
    agent = agents.Agent(name="plain", model=agents.OpenAIResponsesModel(model="x", openai_client=sdk))
    conv = await sdk.conversations.create()
    upstream.script(text("Noted: 7."), text("It was 7."))
    await agents.Runner.run(agent, "agents-3 remember 7", conversation_id=conv.id)
    result = await agents.Runner.run(agent, "agents-3 which number?", conversation_id=conv.id)
    assert result.final_output == "It was 7."
    last = sent_with(upstream, "which number")[0]["messages"]
    assert [m["content"] for m in last] == ["agents-3 remember 7", "Noted: 7.", "agents-3 which number?"]
    with daemon.client() as c:
        assert c.get(f"/v1/sessions/{conv.id}").json()["message_count"] == 4

    ran: list[str] = []
    upstream.script(tool_calls([("get_weather", {"city": "Rome"})]), text("Warm in Rome."))
    chained = await agents.Runner.run(
        weather_agent(sdk, ran), "agents-4 Rome?", auto_previous_response_id=True
    )
    assert chained.final_output == "Warm in Rome." and ran == ["Rome"]
    second = sent_with(upstream, "agents-4")[1]["messages"]
    assert [m["role"] for m in second] == ["system", "user", "assistant", "tool"]  # recalled by id


# --- Codex CLI -----------------------------------------------------------------------------------------

CODEX_CONFIG = """\
model = "sorat-agent"
model_provider = "sorat"
check_for_update_on_startup = false

[model_providers.sorat]
name = "sorat"
base_url = "{base_url}"
env_key = "SORAT_TOKEN"
wire_api = "responses"
stream_idle_timeout_ms = 900000
stream_max_retries = 0
request_max_retries = 1

[features]
plugins = false

[analytics]
enabled = false
"""


def readme_codex_config() -> str:
    """The config.toml of the README's Codex section: the test runs what users are told to write."""
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    section = readme.split("### Codex CLI", 1)[1]
    return section.split("```toml\n", 1)[1].split("```", 1)[0]


@pytest.fixture
def codex(node_modules: Path, daemon: DaemonProc, tmp_path: Path) -> Any:  # noqa: F811
    binary = node_modules / ".bin" / "codex"
    if not binary.exists():
        pytest.skip("Codex CLI is not installed in tests/js (npm ci)")
    home = tmp_path / "codex-home"
    home.mkdir()
    config = readme_codex_config().replace("http://127.0.0.1:8080/v1", daemon.base_url)
    assert config.strip() == CODEX_CONFIG.format(base_url=daemon.base_url).strip()
    (home / "config.toml").write_text(config, encoding="utf-8")
    work = tmp_path / "work"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "CODEX_"))}
    env.update(CODEX_HOME=str(home), SORAT_TOKEN=daemon.token, HOME=str(tmp_path))

    def run(prompt: str, *args: str) -> subprocess.CompletedProcess[str]:
        cmd = [str(binary), "exec", "--skip-git-repo-check", "--ephemeral", *args, prompt]
        return subprocess.run(
            cmd, cwd=work, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120
        )

    run.work = work  # type: ignore[attr-defined]
    return run


def test_codex_text_answer(codex: Any, upstream: Upstream) -> None:
    upstream.script(text("Hello from sorat to Codex.", chunks=3))
    out = codex("codex-text say hello")
    assert out.returncode == 0, out.stderr[-3000:]
    assert "Hello from sorat to Codex." in out.stdout
    (sent,) = sent_with(upstream, "codex-text")
    assert sent["messages"][0]["role"] == "system" and sent["stream"] is True
    assert "You are a coding agent" in sent["messages"][0]["content"]
    assert "exec_command" in [t["function"]["name"] for t in sent["tools"]]  # Codex's own tools, offered


def test_codex_runs_its_shell_and_not_sorats_tools(
    codex: Any, daemon: DaemonProc, upstream: Upstream
) -> None:
    upstream.script(
        tool_calls([("get_current_time", {"timezone": "UTC"})]),  # sorat's: Codex must not run it
        tool_calls([("exec_command", {"cmd": "echo ran-by-codex > marker.txt"})]),  # Codex's shell tool
        text("The marker is written.", chunks=2),
    )
    out = codex("codex-tool write the marker", "--dangerously-bypass-approvals-and-sandbox")
    assert out.returncode == 0, out.stderr[-3000:]
    assert (codex.work / "marker.txt").read_text().strip() == "ran-by-codex"  # Codex really ran it
    assert "The marker is written." in out.stdout
    *_, last = sent_with(upstream, "codex-tool")
    results = [m for m in last["messages"] if m["role"] == "tool"]
    # two results, no more: sorat's clock ran inside sorat; Codex answered only its own shell call
    assert len(results) == 2
    assert '"iso"' in results[0]["content"]
    assert "exited with code 0" in results[1]["content"]
    assert sessions_with(daemon, "codex-tool") == 1
