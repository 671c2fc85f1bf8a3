"""Anthropic's own clients against the real daemon on a scripted upstream: anthropic-python
(``messages.create``, ``messages.stream()``, a client tool round trip, ``count_tokens``, errors) and Claude
Code itself (``claude -p``: a text answer, a Bash tool round trip that Claude Code really runs, ``claude -c``
continuing the session; and its interactive mode in tmux, whose title side calls are stored nowhere).

Claude Code is the pinned npm package in tests/js (2.1.197, the last release that runs on Node 20), run
offline: a temporary HOME, ``CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC=1``; these tests skip without Node."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import DaemonProc
from tests.test_clients import node_modules  # noqa: F401  (the npm ci fixture of tests/js)
from tests.upstream import Upstream, error, stream_error, text, tool_calls

anthropic = pytest.importorskip("anthropic")

BASH = {
    "name": "Bash",
    "description": "Run a shell command",
    "input_schema": {
        "$schema": "http://json-schema.org/draft-07/schema#",
        "type": "object",
        "properties": {"command": {"type": "string"}},
        "required": ["command"],
        "additionalProperties": False,
    },
}


def requests_with(upstream: Upstream, marker: str) -> list[dict[str, Any]]:
    return [r for r in upstream.requests if marker in json.dumps(r["messages"])]


def sessions_with(daemon: DaemonProc, marker: str) -> list[dict[str, Any]]:
    """The stored sessions whose messages mention ``marker``."""
    with daemon.client() as c:
        rows = c.get("/v1/sessions", params={"limit": 1000}).json()["data"]
        full = [c.get(f"/v1/sessions/{row['id']}").json() for row in rows]
    return [s for s in full if marker in json.dumps(s["messages"])]


@pytest.fixture
def client(daemon: DaemonProc) -> Iterator[Any]:
    with anthropic.Anthropic(base_url=daemon.url, api_key=daemon.token, max_retries=0) as c:
        yield c


# -- anthropic-python -----------------------------------------------------------------------------------


def test_sdk_create(client: Any, upstream: Upstream) -> None:
    upstream.script(text("Hello from sorat", reasoning="a thought"))
    msg = client.messages.create(
        model="claude-sonnet-4-5", max_tokens=1024, messages=[{"role": "user", "content": "sdk-create"}]
    )
    assert [b.type for b in msg.content] == ["thinking", "text"]
    assert msg.content[1].text == "Hello from sorat" and msg.content[0].thinking == "a thought"
    assert msg.stop_reason == "end_turn" and msg.model == "gpt-4o"
    assert (msg.usage.input_tokens, msg.usage.output_tokens) == (10, 5)


def test_sdk_stream_with_internal_tool_rounds(client: Any, upstream: Upstream) -> None:
    """The SDK's accumulator raises on a missing ``event:`` line, an index gap or a message_delta without
    usage: a clean run is the check."""
    upstream.script(
        tool_calls(
            [("get_current_time", {"timezone": "UTC"})], usage={"prompt_tokens": 40, "completion_tokens": 2}
        ),
        text(
            "It is noon in UTC.",
            chunks=4,
            reasoning="so",
            usage={"prompt_tokens": 60, "completion_tokens": 6},
        ),
    )
    with client.messages.stream(
        model="claude-sonnet-4-5",
        max_tokens=1024,
        system="Be brief.",
        messages=[{"role": "user", "content": "sdk-stream"}],
    ) as stream:
        said = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert said == "It is noon in UTC."
    assert [b.type for b in final.content] == ["thinking", "text"]
    thinking = "".join(b.thinking for b in final.content if b.type == "thinking")
    assert 'get_current_time {"timezone":"UTC"}' in thinking and "so" in thinking
    assert final.stop_reason == "end_turn"
    assert (final.usage.input_tokens, final.usage.output_tokens) == (60, 8)
    sent = requests_with(upstream, "sdk-stream")[0]  # and the tool round's call after it
    assert sent["messages"][0] == {"role": "system", "content": "Be brief."}


def test_sdk_client_tool_round_trip(client: Any, upstream: Upstream) -> None:
    upstream.script(tool_calls([("functions.Bash:0", "Bash", {"command": "ls"})]))
    history: list[Any] = [{"role": "user", "content": "sdk-tool: list the files"}]
    with client.messages.stream(model="x", max_tokens=512, tools=[BASH], messages=history) as stream:
        first = stream.get_final_message()
    assert first.stop_reason == "tool_use"
    (use,) = [b for b in first.content if b.type == "tool_use"]
    assert use.name == "Bash" and use.input == {"command": "ls"} and use.id.startswith("toolu_")

    upstream.script(text("There are two files."))
    history += [
        {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in first.content]},
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "a.txt\nb.txt"}],
        },
    ]
    second = client.messages.create(model="x", max_tokens=512, tools=[BASH], messages=history)
    assert second.content[0].text == "There are two files."
    follow = requests_with(upstream, "sdk-tool")[1]
    assert follow["messages"][-1] == {
        "role": "tool",
        "tool_call_id": "functions.Bash:0",
        "content": "a.txt\nb.txt",
    }
    assert requests_with(upstream, "sdk-tool")[0]["tools"][-1]["function"]["name"] == "Bash"


def test_sdk_count_tokens(client: Any, upstream: Upstream) -> None:
    got = client.messages.count_tokens(
        model="claude-sonnet-4-5",
        system="s" * 400,
        tools=[BASH],
        messages=[{"role": "user", "content": "hi"}],
    )
    assert got.input_tokens > 100
    assert upstream.requests == []


def test_sdk_errors(daemon: DaemonProc, client: Any, upstream: Upstream) -> None:
    bad_key = anthropic.Anthropic(base_url=daemon.url, api_key="wrong", max_retries=0)
    with pytest.raises(anthropic.AuthenticationError):
        bad_key.messages.create(model="x", max_tokens=5, messages=[{"role": "user", "content": "hi"}])
    by_header = anthropic.Anthropic(
        base_url=daemon.url, api_key=None, default_headers={"x-api-key": daemon.token}, max_retries=0
    )
    assert by_header.messages.create(
        model="x", max_tokens=5, messages=[{"role": "user", "content": "hi"}]
    ).content
    with pytest.raises(anthropic.BadRequestError) as e:
        client.messages.create(
            model="x",
            max_tokens=5,
            messages=[
                {"role": "user", "content": "hi"},
                {"role": "assistant", "content": [{"type": "tool_use", "id": "a", "name": "f", "input": {}}]},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "nope", "content": "x"}]},
            ],
        )
    assert e.value.body["error"]["type"] == "invalid_request_error"
    upstream.script(*[error(503, "upstream down")] * 5)
    with pytest.raises(anthropic.InternalServerError):
        client.messages.create(model="x", max_tokens=5, messages=[{"role": "user", "content": "sdk-err"}])
    upstream.script(stream_error("broke midway", after=1))
    with (
        pytest.raises(anthropic.APIStatusError, match="broke midway"),
        client.messages.stream(
            model="x", max_tokens=5, messages=[{"role": "user", "content": "sdk-err2"}]
        ) as s,
    ):
        s.get_final_message()


# -- Claude Code ---------------------------------------------------------------------------------------------


class ClaudeCode:
    """``claude`` with its own HOME and project folder, pointed at the daemon, kept off the network."""

    def __init__(self, binary: Path, daemon: DaemonProc, root: Path) -> None:
        self.binary = binary
        self.home = root / "home"
        self.project = root / "project"
        self.home.mkdir(parents=True)
        self.project.mkdir()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("ANTHROPIC_", "CLAUDE"))}
        env.update(
            HOME=str(self.home),
            ANTHROPIC_BASE_URL=daemon.url,
            ANTHROPIC_AUTH_TOKEN=daemon.token,
            CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC="1",
            CLAUDE_CODE_DISABLE_OFFICIAL_MARKETPLACE_AUTOINSTALL="1",
            DISABLE_AUTOUPDATER="1",
        )
        self.env = env

    def __call__(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        out = subprocess.run(
            [str(self.binary), *args],
            cwd=self.project,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )
        assert out.returncode == 0, f"claude {args} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
        return out


@pytest.fixture
def claude(node_modules: Path, daemon: DaemonProc, tmp_path: Path) -> ClaudeCode:  # noqa: F811
    binary = node_modules / ".bin" / "claude"
    if not binary.exists():
        pytest.skip("Claude Code is not installed in tests/js")
    return ClaudeCode(binary, daemon, tmp_path)


def test_claude_code_text_answer(claude: ClaudeCode, upstream: Upstream, daemon: DaemonProc) -> None:
    upstream.script(
        text(
            "Hello from sorat, Claude Code.", chunks=3, usage={"prompt_tokens": 1234, "completion_tokens": 9}
        )
    )
    out = json.loads(claude("-p", "cc-text-marker: say hi", "--output-format", "json").stdout)
    assert out["is_error"] is False and out["result"] == "Hello from sorat, Claude Code."
    assert out["usage"]["input_tokens"] == 1234 and out["usage"]["output_tokens"] == 9
    (sent,) = requests_with(upstream, "cc-text-marker")
    names = {t["function"]["name"] for t in sent["tools"]}
    assert {"Bash", "Read", "Edit"} <= names  # Claude Code's own tools, schemas as sent
    assert sent["messages"][0]["role"] == "system" and sent["messages"][1]["role"] == "user"
    assert [m["role"] for m in sent["messages"]].count("system") == 1
    assert sent["max_tokens"] == 16384
    (stored,) = sessions_with(daemon, "cc-text-marker")
    assert stored["id"] == out["session_id"]  # X-Claude-Code-Session-Id names the session


def test_claude_code_runs_its_bash_tool(claude: ClaudeCode, upstream: Upstream) -> None:
    command = "echo sorat-bash-ok > proof.txt && cat proof.txt"
    upstream.script(
        tool_calls(
            [("Bash", {"command": command, "description": "Write the proof file"})], content="Running it."
        ),
        text("The command ran."),
    )
    out = claude("-p", "cc-bash-marker: run the command", "--allowedTools", "Bash")
    assert "The command ran." in out.stdout
    assert (claude.project / "proof.txt").read_text().strip() == "sorat-bash-ok"  # Claude Code ran it
    first, second = requests_with(upstream, "cc-bash-marker")
    call = second["messages"][-2]["tool_calls"][0]
    assert (
        call["function"]["name"] == "Bash" and json.loads(call["function"]["arguments"])["command"] == command
    )
    result = second["messages"][-1]
    assert result["role"] == "tool" and result["tool_call_id"] == call["id"]
    assert "sorat-bash-ok" in result["content"]


def test_claude_code_continue_keeps_one_session(
    claude: ClaudeCode, upstream: Upstream, daemon: DaemonProc
) -> None:
    upstream.script(text("First answer."))
    first = json.loads(claude("-p", "cc-continue-marker: first", "--output-format", "json").stdout)
    upstream.script(text("Second answer."))
    second = json.loads(claude("-c", "-p", "and a second prompt", "--output-format", "json").stdout)
    assert second["result"] == "Second answer."
    (stored,) = sessions_with(daemon, "cc-continue-marker")
    assert stored["id"] == first["session_id"]
    said = [(m["role"], m["content"]) for m in stored["messages"] if m["role"] in ("assistant", "user")]
    assert said[-3:] == [
        ("assistant", "First answer."),
        ("user", "and a second prompt"),
        ("assistant", "Second answer."),
    ]
    assert len(said) == 4
    resent = requests_with(upstream, "cc-continue-marker")[-1]["messages"]
    assert [m["role"] for m in resent] == ["system", "user", "assistant", "user"]


def test_claude_code_subagent_keeps_its_own_session(
    claude: ClaudeCode, upstream: Upstream, daemon: DaemonProc
) -> None:
    """Claude Code's Agent tool runs a subagent whose requests carry the main conversation's session header:
    the subagent gets a session of its own, and the main one keeps its messages once."""
    task = {
        "description": "Say hello",
        "prompt": "cc-agent-sub: say hello",
        "subagent_type": "general-purpose",
    }
    upstream.script(tool_calls([("Agent", task)]), text("Hello from the subagent."), text("Main is done."))
    out = json.loads(
        claude(
            "-p", "cc-agent-main: ask a subagent", "--allowedTools", "Agent", "--output-format", "json"
        ).stdout
    )
    assert out["result"] == "Main is done."
    sub = requests_with(upstream, "cc-agent-sub: say hello")
    assert (
        sub[0]["messages"][0]["content"]
        != requests_with(upstream, "cc-agent-main")[0]["messages"][0]["content"]
    )
    (main,) = sessions_with(daemon, "cc-agent-main")
    assert main["id"] == out["session_id"]
    with daemon.client() as c:
        full = c.get(f"/v1/sessions/{main['id']}", params={"include_superseded": "1"}).json()
    assert not any(m.get("superseded") for m in full["messages"] if m["role"] != "system")
    said = [m["role"] for m in full["messages"] if m["role"] != "system"]
    assert said == ["user", "assistant", "tool", "assistant"]
    subs = [s for s in sessions_with(daemon, "cc-agent-sub: say hello") if s["id"] != main["id"]]
    assert len(subs) == 1 and "Hello from the subagent." in json.dumps(subs[0]["messages"])


# -- Claude Code, interactive (tmux) ------------------------------------------------------------------------


class Tmux:
    """One tmux server of our own (its own socket), so nothing else's sessions are touched."""

    def __init__(self, cwd: Path, env: dict[str, str], command: list[str]) -> None:
        self.base = ["tmux", "-L", f"sorat-test-{uuid.uuid4().hex[:8]}"]
        env = {k: v for k, v in env.items() if k != "TMUX"}  # the server, and so the pane, get this env
        size = ["-x", "200", "-y", "50"]
        subprocess.run(
            [*self.base, "new-session", "-d", *size, "-c", str(cwd), shlex.join(command)], check=True, env=env
        )

    def screen(self) -> str:
        return subprocess.run([*self.base, "capture-pane", "-p"], capture_output=True, text=True).stdout

    def keys(self, *keys: str) -> None:
        subprocess.run([*self.base, "send-keys", *keys], check=True)

    def wait(self, check: Callable[[str], bool], what: str, timeout: float = 60) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            screen = self.screen()
            if check(screen):
                return screen
            time.sleep(0.2)
        raise AssertionError(f"waited {timeout:g} s for {what}; the screen:\n{self.screen()}")

    def kill(self) -> None:
        subprocess.run([*self.base, "kill-server"], capture_output=True)


@pytest.fixture
def tmux_claude(claude: ClaudeCode) -> Iterator[Tmux]:
    if not shutil.which("tmux"):
        pytest.skip("tmux is needed to drive Claude Code's interactive mode")
    # What the first start asks (theme, trust in the folder) answered beforehand.
    state = {
        "hasCompletedOnboarding": True,
        "lastOnboardingVersion": "2.1.197",
        "theme": "dark",
        "projects": {str(claude.project): {"hasTrustDialogAccepted": True, "projectOnboardingSeenCount": 1}},
    }
    (claude.home / ".claude.json").write_text(json.dumps(state))
    t = Tmux(claude.project, claude.env, [str(claude.binary)])
    try:
        yield t
    finally:
        t.kill()


def test_claude_code_interactive_is_one_session(
    tmux_claude: Tmux, claude: ClaudeCode, upstream: Upstream, daemon: DaemonProc
) -> None:
    """Two prompts typed in the interactive UI: each brings a title side call (Claude Code's session
    header, no tools) and the real request. The session list holds one conversation, its prompts once."""
    t = tmux_claude
    upstream.default = text("Interactive answer.")
    t.wait(lambda s: "❯" in s and "for shortcuts" in s, "the prompt")
    for n, prompt in enumerate(["cc-tmux-marker first prompt", "cc-tmux second prompt"], start=1):
        t.keys("-l", prompt)
        t.wait(lambda s, p=prompt: p in s, "the typed prompt")
        t.keys("Enter")
        assert upstream.wait_for(
            lambda p=prompt: any(
                p in json.dumps(r["messages"]) and r.get("tools") for r in upstream.requests
            ),
            60,
        )
        t.wait(lambda s, n=n: s.count("Interactive answer.") >= n, "the answer")
    side = [r for r in upstream.requests if "tools" not in r]  # plain calls: no internal tools either
    assert len(side) == 2, [r["messages"] for r in upstream.requests]
    (stored,) = sessions_with(daemon, "cc-tmux-marker")
    said = [(m["role"], m["content"]) for m in stored["messages"] if m["role"] in ("user", "assistant")]
    assert [r for r, _ in said] == ["user", "assistant", "user", "assistant"], said
    assert said[2] == ("user", "cc-tmux second prompt")
    assert "cc-tmux-marker first prompt" in said[0][1]
    kept = json.dumps(stored["messages"])
    for call in side:  # the title exchange is stored nowhere, not even in the conversation's session
        assert json.dumps(call["messages"][-1]["content"])[1:-1] not in kept
    assert len(sessions_with(daemon, "cc-tmux second prompt")) == 1
