"""The tools through the real daemon: a scripted model calls them, and we check what the model reads
back (the tool results in the upstream's next request), what lands on disk, and what never leaks."""

from __future__ import annotations

import json
import os
import secrets
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import DaemonProc, clean_env, process_alive, write_config
from tests.upstream import Reply, Upstream, text, tool_calls

USER = [{"role": "user", "content": "do things"}]
ENV_KEY = "sk-env-" + secrets.token_hex(12)  # OPENAI_API_KEY in the daemon's environment
CFG_KEY = "sk-cfg-" + secrets.token_hex(12)  # a configured provider's api_key_env value
# An LC_ name passes the tool environment's locale allowlist: only the provider-key filter stops it.
CFG_KEY_ENV = "LC_SCRIPTED_CREDS"
FIXTURE = Path(__file__).resolve().parent / "mcp_server_fixture.py"


# -- helpers ------------------------------------------------------------------------------------------


def poll(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        time.sleep(0.02)


def make_home(home: Path, upstream: Upstream, tools_toml: str | None, agent: str = "") -> dict[str, str]:
    """config.toml with two providers (a literal key, and one from ``CFG_KEY_ENV``) and ``agent`` lines
    in [agent]; the daemon's env."""
    write_config(home, upstream.base_url, agent=agent)
    with open(home / "config.toml", "a", encoding="utf-8") as f:
        f.write(
            f'\n[[providers]]\nname = "second"\nbase_url = "{upstream.base_url}"\n'
            f'api_key_env = "{CFG_KEY_ENV}"\nmodels = ["other-model"]\n'
        )
    if tools_toml is not None:
        (home / "tools.toml").write_text(tools_toml, encoding="utf-8")
    return clean_env(home, OPENAI_API_KEY=ENV_KEY, **{CFG_KEY_ENV: CFG_KEY})


def start(home: Path, upstream: Upstream, tools_toml: str | None = None, agent: str = "") -> DaemonProc:
    return DaemonProc(home, make_home(home, upstream, tools_toml, agent)).start()


def chat(d: DaemonProc, **body: Any) -> httpx.Response:
    with d.client() as c:
        return c.post("/v1/chat/completions", json={"messages": USER, **body})


def results_of(request: dict[str, Any], reply: Reply) -> list[str]:
    """The tool results (as the model reads them) answering ``reply``'s calls, in the calls' order."""
    by_id = {m["tool_call_id"]: m["content"] for m in request["messages"] if m.get("role") == "tool"}
    return [by_id[call_id] for call_id, _, _ in reply.calls]


def run_tools(d: DaemonProc, upstream: Upstream, calls: list[tuple[str, Any]]) -> list[str]:
    """One round of tool calls then a text answer; the results the model got back."""
    reply = tool_calls(calls)
    upstream.script(reply, text("done"))
    before = len(upstream.requests)
    r = chat(d)
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"] == "done"
    assert len(upstream.requests) == before + 2
    return results_of(upstream.requests[-1], reply)


def error_of(result: str) -> str:
    data = json.loads(result)
    assert isinstance(data, dict) and set(data) == {"error"}, result
    return str(data["error"])


def offered(d: DaemonProc, upstream: Upstream, **body: Any) -> list[str]:
    """The tool names the model is offered on a new request (``body``: more of the request)."""
    r = chat(d, **body)
    assert r.status_code == 200, r.text
    return [t["function"]["name"] for t in upstream.requests[-1].get("tools") or []]


WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


def procs_with_arg(arg: str) -> list[int]:
    """Live processes (not zombies, whose cmdline is empty) with ``arg`` on their command line."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            argv = (Path("/proc") / entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if arg.encode() in argv:
            found.append(int(entry))
    return found


def warnings(d: DaemonProc, *needles: str) -> list[str]:
    """The daemon's WARNING lines (its stderr, whole) holding every needle."""
    log = (d.home / "daemon-stderr.log").read_text(errors="replace")
    return [line for line in log.splitlines() if " WARNING " in line and all(n in line for n in needles)]


# -- daemons ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def allowlisted(upstream: Upstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProc]:
    """The default tools (run_command in allowlist mode)."""
    d = start(tmp_path_factory.mktemp("allow") / "home", upstream)
    yield d
    d.stop()


@pytest.fixture(scope="module")
def unrestricted(upstream: Upstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProc]:
    toml = '[run_command]\nmode = "unrestricted"\ntimeout_s = 1\n'
    d = start(tmp_path_factory.mktemp("loose") / "home", upstream, toml)
    yield d
    d.stop()


# -- run_command ------------------------------------------------------------------------------------


def test_allowlist_runs_ls_and_refuses_every_way_out(allowlisted: DaemonProc, upstream: Upstream) -> None:
    d = allowlisted
    ws = d.home / "workspace"
    ws.mkdir(exist_ok=True)
    (ws / "hello.txt").write_text("hello from the workspace\n")
    (ws / "innocent.txt").unlink(missing_ok=True)
    (ws / "innocent.txt").symlink_to(d.home / "token")
    (ws / "up").unlink(missing_ok=True)
    (ws / "up").symlink_to(d.home, target_is_directory=True)
    assert d.token and (d.home / "token").read_text().strip() == d.token

    refused = [
        {"command": "cat ../token"},
        {"command": "cat", "args": ["../token"]},
        {"command": f"cat {d.home / 'token'}"},
        {"command": "cat /etc/passwd"},
        {"command": "ls; cat x"},
        {"command": "sh -c id"},
        {"command": "cat innocent.txt"},
        {"command": "cat up/token"},
        {"command": "head -n1 hello.txt/../../token"},
        {"command": "grep --file=../token ."},
        {"command": "/bin/cat hello.txt"},
        {"command": "cat ~/token"},
        {"command": "grep -R '' ."},  # -R would follow innocent.txt and up/ out of the workspace
        {"command": "grep --dereference-recursive token ."},
    ]
    results = run_tools(
        d,
        upstream,
        [
            ("run_command", {"command": "ls"}),
            ("run_command", {"command": "cat hello.txt"}),
            ("run_command", {"command": "grep -rn '' ."}),  # -r leaves the symlinks alone
        ]
        + [("run_command", args) for args in refused],
    )
    listing, cat, grep = (json.loads(r) for r in results[:3])
    assert "./hello.txt:1:hello from the workspace" in grep["stdout"], grep
    assert listing["exit_code"] == 0 and "hello.txt" in listing["stdout"].split(), listing
    assert cat["stdout"] == "hello from the workspace\n" and cat["exit_code"] == 0
    for args, result in zip(refused, results[3:], strict=True):
        assert error_of(result).startswith("refused:"), (args, result)

    seen = json.dumps([upstream.requests, upstream.title_requests])
    assert d.token not in seen
    assert "root:" not in seen  # /etc/passwd's first line


def test_tool_environment_has_no_keys(unrestricted: DaemonProc, upstream: Upstream) -> None:
    d = unrestricted
    (result,) = run_tools(d, upstream, [("run_command", {"command": "env"})])
    out = json.loads(result)
    assert out["exit_code"] == 0 and "PATH=" in out["stdout"], out
    env_names = {line.split("=", 1)[0] for line in out["stdout"].splitlines() if "=" in line}
    assert "OPENAI_API_KEY" not in env_names and CFG_KEY_ENV not in env_names
    assert not {n for n in env_names if n.startswith("SORAT")}, env_names
    for secret in (ENV_KEY, CFG_KEY, "sk-upstream-secret", d.token):
        assert secret not in result
    assert d.token not in json.dumps([upstream.requests, upstream.title_requests])


def test_timeout_kills_the_whole_process_group(unrestricted: DaemonProc, upstream: Upstream) -> None:
    marker = f"{secrets.randbelow(10**6) + 100}.{secrets.randbelow(10**6):06d}"  # a unique sleep length
    started = time.monotonic()
    (result,) = run_tools(
        unrestricted, upstream, [("run_command", {"command": f"sh -c 'sleep {marker} & sleep {marker}'"})]
    )
    assert time.monotonic() - started < 15
    out = json.loads(result)
    assert out.get("timed_out") is True and "killed after 1 s" in out["stderr"], out
    poll(lambda: not procs_with_arg(marker), 3, f"sleep {marker} still runs: {procs_with_arg(marker)}")


def test_a_background_child_dies_with_its_command(unrestricted: DaemonProc, upstream: Upstream) -> None:
    marker = f"{secrets.randbelow(10**6) + 100}.{secrets.randbelow(10**6):06d}"
    started = time.monotonic()
    (result,) = run_tools(
        unrestricted, upstream, [("run_command", {"command": f"sh -c 'sleep {marker} & echo started'"})]
    )
    out = json.loads(result)
    assert out["exit_code"] == 0 and out["stdout"] == "started\n" and "timed_out" not in out, out
    assert time.monotonic() - started < 5
    poll(lambda: not procs_with_arg(marker), 3, f"sleep {marker} still runs: {procs_with_arg(marker)}")


# -- file tools -----------------------------------------------------------------------------------------


def test_file_tools_round_trip_inside_the_workspace(allowlisted: DaemonProc, upstream: Upstream) -> None:
    d = allowlisted
    content = "first line\nsecond line — ünïcode\n"
    wrote, read, listed, up, absolute, token = run_tools(
        d,
        upstream,
        [
            ("write_file", {"path": "notes/plan.md", "content": content}),
            ("read_file", {"path": "notes/plan.md"}),
            ("list_dir", {"path": "notes"}),
            ("write_file", {"path": "../x", "content": "escaped"}),
            ("write_file", {"path": str(d.home / "abs.txt"), "content": "escaped"}),
            ("read_file", {"path": "../token"}),
        ],
    )
    # One round runs concurrently: the read may come before the write; read it again after.
    assert json.loads(wrote)["path"] == "notes/plan.md"
    assert (d.home / "workspace" / "notes" / "plan.md").read_text(encoding="utf-8") == content
    (read,) = run_tools(d, upstream, [("read_file", {"path": "notes/plan.md"})])
    assert json.loads(read)["content"] == content
    for refused in (up, absolute, token):
        assert error_of(refused).startswith("refused:")
    assert not (d.home / "x").exists() and not (d.home / "abs.txt").exists()
    assert d.token not in json.dumps([upstream.requests, upstream.title_requests])


# -- memory ---------------------------------------------------------------------------------------------


def test_memory_survives_a_restart(home: Path, upstream: Upstream) -> None:
    fact = f"The user's cat is called Pixel-{secrets.token_hex(3)}"
    d = start(home, upstream)
    try:
        (result,) = run_tools(d, upstream, [("remember", {"fact": fact})])
        assert fact in result
    finally:
        d.stop()
    assert fact in (home / "memory.md").read_text(encoding="utf-8")
    d = DaemonProc(home, d.env).start()
    try:
        (result,) = run_tools(d, upstream, [("recall_memory", {})])
        facts = json.loads(result)["facts"]
        assert len(facts) == 1 and fact in facts[0], facts
    finally:
        d.stop()


# -- web ------------------------------------------------------------------------------------------------

PAGE = b"""<!doctype html><html><head><title>Quiet Lakes</title>
<style>.STYLE_MARKER { color: red }</style><script>var SCRIPT_MARKER = "x";</script></head>
<body><nav><a href="/">NAV_MARKER Home</a> | <a href="/about">About</a></nav>
<main><article><h1>Quiet lakes of the north</h1>
<p>The quiet lakes of the north freeze early in the autumn, and the ice stays until late spring.</p>
<p>Fishermen cut holes in the ice and wait for hours in the cold, telling each other long stories.</p>
<p>In summer the water is clear and cold, and the light lasts almost all night long.</p>
</article></main><script>document.write("SCRIPT_MARKER_TWO")</script></body></html>"""


class _Page(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(PAGE)))
        self.end_headers()
        self.wfile.write(PAGE)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_read_webpage_on_loopback(allowlisted: DaemonProc, upstream: Upstream) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Page)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/lakes"
        (result,) = run_tools(allowlisted, upstream, [("read_webpage", {"url": url})])
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
    page = json.loads(result)
    assert "quiet lakes" in page["title"].lower() and page["url"] == url  # <title>, or the one <h1>
    assert "freeze early in the autumn" in page["content"]
    assert "light lasts almost all night" in page["content"]
    for marker in ("SCRIPT_MARKER", "STYLE_MARKER", "NAV_MARKER", "<p>"):
        assert marker not in page["content"], page["content"]


# -- tools.toml hot reload ------------------------------------------------------------------------------


def test_tools_toml_hot_reload(home: Path, upstream: Upstream) -> None:
    file = home / "tools.toml"
    d = start(home, upstream, '[run_command]\nmode = "allowlist"\n')
    try:
        assert {"run_command", "read_file", "remember"} <= set(offered(d, upstream))

        # A request already running keeps its tools: its model answers (late) with a run_command call.
        slow = tool_calls([("run_command", {"command": "pwd"})], delay=2.0)
        upstream.script(slow)  # its next call, and the probes below, get the default "ok"
        running: list[httpx.Response] = []
        first = len(upstream.requests)
        inflight = threading.Thread(target=lambda: running.append(chat(d)))
        inflight.start()
        poll(lambda: len(upstream.requests) > first, 5, "the slow request reaches the model")

        # A save through a temp file renamed over tools.toml, as many editors do.
        tmp = home / ".tools.toml.swp"
        tmp.write_text('[run_command]\nmode = "disabled"\n', encoding="utf-8")
        saved = time.monotonic()
        os.replace(tmp, file)
        poll(lambda: "run_command" not in offered(d, upstream), 2, "run_command withdrawn")
        assert time.monotonic() - saved < 2.5
        withdrawn_at = len(upstream.requests)

        inflight.join(15)
        assert running and running[0].status_code == 200, running
        later = [
            (i, r)
            for i, r in enumerate(upstream.requests)
            if any(m.get("role") == "tool" for m in r["messages"])
        ]
        assert len(later) == 1 and later[0][0] >= withdrawn_at, "the slow call ran after the withdrawal"
        (result,) = results_of(later[0][1], slow)
        assert json.loads(result)["stdout"].strip() == str((home / "workspace").resolve()), result

        # Invalid (line 5): applying the valid part would bring run_command back; nothing applies.
        file.write_text('[run_command]\nmode = "allowlist"\n\n[files]\nenabled = "yes"\n', encoding="utf-8")
        poll(lambda: bool(warnings(d, str(file), "line 5")), 3, "the invalid tools.toml is logged")
        names = offered(d, upstream)
        assert "run_command" not in names and "read_file" in names
        (line,) = warnings(d, str(file))
        assert "files.enabled" in line, line

        # Invalid TOML: one more line, naming the file and the line.
        file.write_text("[run_command]\nmode = allowlist\n", encoding="utf-8")
        poll(lambda: bool(warnings(d, str(file), "line 2")), 3, "the broken tools.toml is logged")
        assert "run_command" not in offered(d, upstream)
        assert len(warnings(d, str(file))) == 2, d.stderr()

        file.write_text('[run_command]\nmode = "allowlist"\n', encoding="utf-8")
        saved = time.monotonic()
        poll(lambda: "run_command" in offered(d, upstream), 2, "run_command restored")
        assert time.monotonic() - saved < 2.5
        (result,) = run_tools(d, upstream, [("run_command", {"command": "pwd"})])
        assert json.loads(result)["stdout"].strip() == str((home / "workspace").resolve())

        # No tools.toml at all: the defaults (run_command in allowlist mode).
        file.write_text('[run_command]\nmode = "disabled"\n', encoding="utf-8")
        poll(lambda: "run_command" not in offered(d, upstream), 2, "run_command withdrawn again")
        file.unlink()
        poll(lambda: "run_command" in offered(d, upstream), 2, "a deleted tools.toml means the defaults")
    finally:
        d.stop()


def test_a_client_leaving_kills_the_running_command(home: Path, upstream: Upstream) -> None:
    d = start(home, upstream, '[run_command]\nmode = "unrestricted"\n')
    marker = f"{secrets.randbelow(10**6) + 100}.{secrets.randbelow(10**6):06d}"
    upstream.script(tool_calls([("run_command", {"command": f"sh -c 'sleep {marker} & sleep {marker}'"})]))
    try:
        with (
            d.client() as c,
            c.stream("POST", "/v1/chat/completions", json={"messages": USER, "stream": True}) as r,
        ):
            assert r.status_code == 200
            poll(lambda: len(procs_with_arg(marker)) == 2, 5, "the command runs")
        # The client is gone (connection closed) while the command still had 60 s to go.
        poll(lambda: not procs_with_arg(marker), 5, f"sleep {marker} still runs: {procs_with_arg(marker)}")
        upstream.wait_for(lambda: upstream.pending == 0)
        assert len(upstream.requests) == 1  # the cancelled run asked the model nothing more
    finally:
        d.stop()


# -- MCP --------------------------------------------------------------------------------------------------


def test_mcp_server_added_and_removed_while_running(home: Path, upstream: Upstream) -> None:
    """Also [agent] tools_with_client_tools: here the MCP server's tools and the clock beside a client's."""
    families = 'tools_with_client_tools = ["mcp", "clock"]'
    d = start(home, upstream, agent=families)  # the first start writes the commented template
    file = home / "tools.toml"
    try:
        template = file.read_text(encoding="utf-8")
        assert "[mcp.servers.NAME]" in template
        assert not [n for n in offered(d, upstream) if "__" in n]

        added = (
            f"{template}\n[mcp.servers.fx]\ncommand = {json.dumps(sys.executable)}\n"
            f'args = [{json.dumps(str(FIXTURE))}, "fx"]\n'
        )
        file.write_text(added, encoding="utf-8")
        poll(lambda: "fx__add" in offered(d, upstream), 20, "the MCP server's tools are offered")
        names = offered(d, upstream)
        assert {"fx__add", "fx__pid", "fx__echo_env", "run_command"} <= set(names)
        beside = offered(d, upstream, tools=[WEATHER])
        mcp = [n for n in names if n.startswith("fx__")]
        assert beside == ["get_current_time", "get_system_info", *mcp, "get_weather"]

        total, pid, key, cfg_key, failed = run_tools(
            d,
            upstream,
            [
                ("fx__add", {"a": 2, "b": 40}),
                ("fx__pid", {}),
                ("fx__echo_env", {"name": "OPENAI_API_KEY"}),
                ("fx__echo_env", {"name": CFG_KEY_ENV}),
                ("fx__fail", {"message": "boom"}),
            ],
        )
        assert total == "42"
        assert key == cfg_key == "<unset>"
        assert "fail" in error_of(failed)  # the SDK hides the exception's text
        server_pid = int(pid)
        assert process_alive(server_pid)

        file.write_text(template, encoding="utf-8")
        poll(lambda: "fx__add" not in offered(d, upstream), 3, "the MCP server's tools are withdrawn")
        assert not [n for n in offered(d, upstream) if n.startswith("fx__")]
        poll(lambda: not process_alive(server_pid), 15, f"MCP server {server_pid} stops")
    finally:
        d.stop()


# -- bad arguments, streaming ---------------------------------------------------------------------------

BAD_CALLS: list[tuple[str, Any]] = [
    ("run_command", {}),
    ("run_command", {"command": "ls", "bogus": 1}),
    ("run_command", {"command": 5}),
    ("run_command", '{"command": "ls"'),
    ("run_command", "[1, 2]"),
    ("write_file", {"path": "a.txt"}),
    ("no_such_tool", {}),
]
BAD_ERRORS = [
    "missing required argument 'command'",
    "unexpected argument 'bogus'",
    "argument 'command' must be a string",
    "not valid JSON",
    "must be a JSON object",
    "missing required argument 'content'",
    "unknown tool 'no_such_tool'",
]


@pytest.mark.parametrize("stream", [False, True])
def test_bad_arguments_give_the_model_errors(
    allowlisted: DaemonProc, upstream: Upstream, stream: bool
) -> None:
    reply = tool_calls(BAD_CALLS)
    upstream.script(reply, text("sorry"))
    r = chat(allowlisted, stream=stream)
    assert r.status_code == 200, r.text
    if stream:
        assert r.text.rstrip().endswith("data: [DONE]") and '"error"' not in r.text.split("data: ")[-2]
        assert "sorry" in r.text
    else:
        assert r.json()["choices"][0]["message"]["content"] == "sorry"
    assert len(upstream.requests) == 2
    for expected, result in zip(BAD_ERRORS, results_of(upstream.requests[-1], reply), strict=True):
        assert expected in error_of(result), (expected, result)
    assert not (allowlisted.home / "workspace" / "a.txt").exists()


def stream_deltas(r: httpx.Response) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """A stream's chunks (``[DONE]`` checked and left out) and the deltas of those with a choice."""
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    frames = [line[6:] for line in r.text.splitlines() if line.startswith("data: ")]
    assert frames[-1] == "[DONE]"
    chunks = [json.loads(f) for f in frames[:-1]]
    return chunks, [c["choices"][0]["delta"] for c in chunks if c["choices"]]


def test_a_run_command_round_streams_as_reasoning_by_default(
    allowlisted: DaemonProc, upstream: Upstream
) -> None:
    """The default tool_events = "reasoning": the internal call is one line of reasoning_content, never a
    tool call a client would try to run; the text after the tool round follows a blank line."""
    reply = tool_calls([("run_command", {"command": "pwd"})], content="Let me look.")
    upstream.script(reply, text("You are in the workspace.", chunks=3))
    chunks, deltas = stream_deltas(chat(allowlisted, stream=True))
    assert not [d for d in deltas if "tool_calls" in d]
    assert "".join(d.get("reasoning_content") or "" for d in deltas) == 'run_command {"command":"pwd"}\n'
    assert "".join(d.get("content") or "" for d in deltas) == "Let me look.\n\nYou are in the workspace."
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1] == "stop"
    (result,) = results_of(upstream.requests[-1], reply)
    assert json.loads(result)["stdout"].strip().endswith("workspace")


def test_client_tools_come_with_the_default_families_only(
    allowlisted: DaemonProc, upstream: Upstream
) -> None:
    """A client that declares tools gets web, memory and clock beside them, not the workspace tools
    (files, run_command) that would shadow its own; without tools of its own, every enabled tool."""
    upstream.script(text("no tools for this"))
    beside = offered(allowlisted, upstream, tools=[WEATHER])
    assert beside == [
        "get_current_time", "get_system_info", "web_search", "read_webpage", "remember", "recall_memory",
        "get_weather",
    ]  # fmt: skip
    alone = offered(allowlisted, upstream)
    assert {"run_command", "show_allowed_commands", "read_file", "write_file"} <= set(alone)


def test_a_run_command_round_streams(allowlisted: DaemonProc, upstream: Upstream) -> None:
    """tool_events = "tool_calls" (opted into per request): the call is a delta.tool_calls entry."""
    reply = tool_calls([("run_command", {"command": "pwd"})])
    upstream.script(reply, text("You are in the workspace.", chunks=3))
    with allowlisted.client() as c:
        r = c.post(
            "/v1/chat/completions",
            json={"messages": USER, "stream": True},
            headers={"X-Sorat-Tool-Events": "tool_calls"},
        )
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    frames = [line[6:] for line in r.text.splitlines() if line.startswith("data: ")]
    assert frames[-1] == "[DONE]"
    chunks = [json.loads(f) for f in frames[:-1]]
    deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
    calls = [tc for delta in deltas for tc in delta.get("tool_calls", [])]
    assert [c["index"] for c in calls] == [0]
    assert calls[0]["function"]["name"] == "run_command"
    assert json.loads(calls[0]["function"]["arguments"]) == {"command": "pwd"}
    assert "".join(dl.get("content") or "" for dl in deltas) == "You are in the workspace."
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1] == "stop"
    (result,) = results_of(upstream.requests[-1], reply)
    assert json.loads(result)["stdout"].strip().endswith("workspace")
