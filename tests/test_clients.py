"""Third-party clients that must work against sorat unchanged (issue 2), each driven against the real
daemon on a scripted upstream: LangChain's ChatOpenAI, openai-node and the Vercel AI SDK (Node scripts
in tests/js, installed with ``npm ci``), and a model of Open WebUI's streaming consumer. openai-python is
covered in test_server.py."""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import DaemonProc, assert_one_session, user_says
from tests.upstream import Upstream, text, tool_calls

JS = Path(__file__).resolve().parent / "js"
USER = [{"role": "user", "content": "hi"}]
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


def internal_round() -> tuple[Any, ...]:
    """Two internal rounds (three calls, two in the first round), then a streamed answer."""
    return (
        tool_calls([("get_current_time", {"timezone": "UTC"}), ("get_current_time", {})]),
        tool_calls([("get_current_time", {"timezone": "Asia/Tokyo"})]),
        text("It is noon.", chunks=3),
    )


def assert_valid_conversation(messages: list[dict[str, Any]]) -> None:
    """What strict providers (OpenAI itself) check: each tool message answers a call of the nearest
    assistant message with tool_calls, once, and every call is answered before the next message."""
    open_ids: set[str] = set()
    for i, m in enumerate(messages):
        if m["role"] == "tool":
            assert m["tool_call_id"] in open_ids, f"message {i} answers no pending call: {messages}"
            open_ids.discard(m["tool_call_id"])
            continue
        assert not open_ids, f"calls {open_ids} unanswered before message {i}: {messages}"
        open_ids = {c["id"] for c in m.get("tool_calls") or []} if m["role"] == "assistant" else set()
    assert not open_ids, f"calls {open_ids} unanswered: {messages}"


# -- LangChain (langchain-openai's ChatOpenAI) ---------------------------------------------------------


TOOL_CALLS = {"X-Sorat-Tool-Events": "tool_calls"}  # the opt-in mode that shows internal calls as calls


@pytest.fixture
def chat(daemon: DaemonProc) -> Iterator[Any]:
    from langchain_openai import ChatOpenAI

    # An HTTP client of its own, closed here: left to the garbage collector (older langchain-openai), one
    # collected in a cycle with its connections may close after its sockets are finalized, and their
    # ResourceWarning fails a later test. Newer ones share a cached client: never close that one.
    with httpx.Client() as http:
        yield ChatOpenAI(
            base_url=daemon.base_url,
            api_key=daemon.token,
            model="sorat-agent",
            max_retries=0,
            http_client=http,
        )


@pytest.fixture
def chat_tool_calls(daemon: DaemonProc) -> Any:
    """ChatOpenAI opted into tool_events = "tool_calls" (by the header)."""
    from langchain_openai import ChatOpenAI

    return ChatOpenAI(
        base_url=daemon.base_url,
        api_key=daemon.token,
        model="sorat-agent",
        max_retries=0,
        default_headers=TOOL_CALLS,
    )


def _summed(chunks: list[Any]) -> Any:
    total = chunks[0]
    for c in chunks[1:]:
        total = total + c
    return total


def test_langchain_invoke(chat: Any, upstream: Upstream, prompt: str) -> None:
    upstream.script(text("Hello there"))
    msg = chat.invoke(prompt)
    assert msg.content == "Hello there" and msg.tool_calls == []
    assert msg.response_metadata["finish_reason"] == "stop"
    assert msg.response_metadata["model_name"] == "gpt-4o"
    assert msg.usage_metadata["total_tokens"] == 15
    assert upstream.requests_for(prompt)[0]["messages"] == [{"role": "user", "content": prompt}]


def test_langchain_stream(chat: Any, upstream: Upstream) -> None:
    upstream.script(text("Hello streaming world", chunks=4, chunk_delay=0.02))  # four reads: four chunks
    chunks = list(chat.stream("hi"))
    assert len([c for c in chunks if c.content]) == 4
    full = _summed(chunks)
    assert full.content == "Hello streaming world" and full.tool_calls == []
    assert full.response_metadata["finish_reason"] == "stop"


def test_langchain_stream_with_internal_tool_rounds(
    chat: Any, daemon: DaemonProc, upstream: Upstream
) -> None:
    """No tools bound, the default tool_events = "reasoning": LangChain's aggregated stream is exactly
    the answer, with no tool call that never was its own (the phantom calls of the tool_calls mode),
    and the next turn continues the one session."""
    from langchain_core.messages import HumanMessage

    upstream.script(*internal_round())
    chunks = list(chat.stream("what time is it? (langchain default)"))
    full = _summed(chunks)
    assert full.content == "It is noon."
    assert full.tool_calls == [] and full.tool_call_chunks == [] and full.invalid_tool_calls == []
    assert full.response_metadata["finish_reason"] == "stop"
    upstream.script(text("You're welcome."))
    reply = chat.invoke([HumanMessage("what time is it? (langchain default)"), full, HumanMessage("thanks")])
    assert reply.content == "You're welcome."
    sent = upstream.requests_for("what time is it? (langchain default)")[-1]["messages"]
    assert_valid_conversation(sent)
    assert " ".join(m["role"] for m in sent) == "user assistant tool tool assistant tool assistant user"
    assert sent[-2]["content"] == "It is noon." and not sent[-2].get("tool_calls")
    roles = "user assistant tool tool assistant tool assistant user assistant"
    assert_one_session(daemon, "what time is it? (langchain default)", roles)


def test_langchain_stream_in_tool_calls_mode(chat_tool_calls: Any, upstream: Upstream) -> None:
    """tool_events = "tool_calls" (opted in): the internal calls arrive as tool_call chunks with rising
    indexes. LangChain keeps them apart (no merged arguments), the text is exactly the answer, and the
    finish reason stays "stop". The summed message lists the internal calls in ``tool_calls``: calls
    that were never LangChain's, which is why this mode is not the default."""
    from langchain_core.messages import HumanMessage

    chat = chat_tool_calls
    upstream.script(*internal_round())
    full = _summed(list(chat.stream("what time is it?")))
    assert full.content == "It is noon."
    assert full.response_metadata["finish_reason"] == "stop"
    assert [c["index"] for c in full.tool_call_chunks] == [0, 1, 2]
    assert [(c["name"], c["args"]) for c in full.tool_calls] == [
        ("get_current_time", {"timezone": "UTC"}),
        ("get_current_time", {}),
        ("get_current_time", {"timezone": "Asia/Tokyo"}),
    ]
    assert full.invalid_tool_calls == []
    # The next turn carries that message back, internal calls included; sorat recognises the echo and
    # the model sees the real conversation (calls answered once, then the answer), nothing dangling.
    upstream.script(text("You're welcome."))
    reply = chat.invoke([HumanMessage("what time is it?"), full, HumanMessage("thanks")])
    assert reply.content == "You're welcome."
    sent = upstream.requests_for("what time is it?")[-1]["messages"]
    assert_valid_conversation(sent)
    roles = " ".join(m["role"] for m in sent)
    assert roles == "user assistant tool tool assistant tool assistant user"
    assert sent[-2]["content"] == "It is noon." and not sent[-2].get("tool_calls")


def _get_weather_tool() -> Any:
    from langchain_core.tools import tool

    @tool
    def get_weather(city: str) -> str:
        """Weather in a city."""
        return "sunny"

    return get_weather


def test_langchain_bind_tools_invoke_and_continue(chat: Any, upstream: Upstream) -> None:
    from langchain_core.messages import HumanMessage, ToolMessage

    bound = chat.bind_tools([_get_weather_tool()])
    upstream.script(tool_calls([("get_current_time", {}), ("get_weather", {"city": "Oslo"})]))
    question = "weather in Oslo? (then continued)"
    msg = bound.invoke(question)
    assert msg.response_metadata["finish_reason"] == "tool_calls"
    assert [(c["name"], c["args"]) for c in msg.tool_calls] == [("get_weather", {"city": "Oslo"})]
    assert upstream.requests_for(question)[0]["tools"][-1]["function"]["name"] == "get_weather"

    upstream.script(text("Sunny in Oslo."))
    call_id = msg.tool_calls[0]["id"]
    final = bound.invoke([HumanMessage(question), msg, ToolMessage("sunny", tool_call_id=call_id)])
    assert final.content == "Sunny in Oslo." and final.tool_calls == []
    sent = upstream.requests_for(question)[-1]["messages"]
    assert_valid_conversation(sent)
    assert [m["role"] for m in sent] == ["user", "assistant", "tool", "tool"]
    assert sent[-1] == {"role": "tool", "tool_call_id": call_id, "content": "sunny"}


def test_langchain_bind_tools_stream(chat: Any, upstream: Upstream) -> None:
    """Streamed with tools bound: the internal call goes out as reasoning_content (LangChain ignores it),
    the client's call as a tool_call chunk."""
    bound = chat.bind_tools([_get_weather_tool()])
    upstream.script(tool_calls([("get_current_time", {}), ("get_weather", {"city": "Oslo"})], chunks=3))
    full = _summed(list(bound.stream("weather in Oslo?")))
    assert full.content == ""
    assert full.response_metadata["finish_reason"] == "tool_calls"
    assert [(c["name"], c["args"]) for c in full.tool_calls] == [("get_weather", {"city": "Oslo"})]
    assert full.tool_calls[0]["id"].startswith("call_") and full.invalid_tool_calls == []


# -- Node clients: openai-node and the Vercel AI SDK ----------------------------------------------------

_NETWORK = re.compile(r"ENOTFOUND|EAI_AGAIN|ECONNREFUSED|ECONNRESET|ETIMEDOUT|ENETUNREACH|network", re.I)


@pytest.fixture(scope="session")
def node_modules() -> Path:
    """tests/js/node_modules from the committed package-lock.json, by ``npm ci`` when absent or older
    than the lock file. Skips (with the reason) without Node 18+/npm or without network for npm."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if not node or not npm:
        pytest.skip("node and npm are needed for the openai-node and AI SDK client tests")
    version = subprocess.run([node, "--version"], capture_output=True, text=True).stdout.strip()
    major = int(version.lstrip("v").split(".")[0] or 0)
    if major < 18:
        pytest.skip(f"Node 18+ is needed for the openai-node and AI SDK client tests (found {version})")
    modules = JS / "node_modules"
    stamp = modules / ".package-lock.json"  # npm writes it on install
    if not stamp.exists() or stamp.stat().st_mtime < (JS / "package-lock.json").stat().st_mtime:
        try:
            out = subprocess.run(
                [npm, "ci", "--no-audit", "--no-fund"], cwd=JS, capture_output=True, text=True, timeout=600
            )
        except subprocess.TimeoutExpired:
            pytest.skip("npm ci in tests/js timed out (no network?)")
        if out.returncode != 0:
            log = out.stdout + out.stderr
            lines = [line for line in log.splitlines() if _NETWORK.search(line)]
            if lines:
                pytest.skip(f"npm ci in tests/js failed for lack of network: {lines[0].strip()}")
            pytest.fail(f"npm ci in tests/js failed:\n{log[-4000:]}")
    return modules


def node(daemon: DaemonProc, script: str, scenario: str, tool_events: str = "", prompt: str = "") -> Any:
    """``tool_events``: sent as X-Sorat-Tool-Events (the scripts read SORAT_TOOL_EVENTS); ``prompt``:
    the AI SDK's prompt instead of "hi" (SORAT_PROMPT)."""
    env = {**os.environ, "SORAT_BASE_URL": daemon.base_url, "SORAT_TOKEN": daemon.token}
    env.update(SORAT_TOOL_EVENTS=tool_events, SORAT_PROMPT=prompt)
    out = subprocess.run(
        ["node", script, scenario], cwd=JS, env=env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, f"node {script} {scenario} failed:\n{out.stderr[-4000:]}"
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.fixture
def js(node_modules: Path, daemon: DaemonProc, prompt: str) -> Callable[..., Any]:
    """``js(script, scenario, tool_events="", said=None)``: the scenario's JSON output, run against the
    module's daemon; the user says ``said``, else the test's ``prompt``."""
    return lambda script, scenario, tool_events="", said=None: node(
        daemon, script, scenario, tool_events, prompt if said is None else said
    )


def test_openai_node_create(js: Any, upstream: Upstream) -> None:
    upstream.script(text("Hello there"))
    r = js("openai_node.mjs", "create")
    c = r["completion"]
    assert c["object"] == "chat.completion" and c["model"] == "gpt-4o"
    assert c["choices"][0]["message"] == {"role": "assistant", "content": "Hello there"}
    assert c["choices"][0]["finish_reason"] == "stop" and c["usage"]["total_tokens"] == 15
    assert r["sessionId"].startswith("sess_")


def test_openai_node_models_and_errors(js: Any) -> None:
    assert js("openai_node.mjs", "models")["ids"][:2] == ["gpt-4o", "sorat-agent"]
    assert js("openai_node.mjs", "bad_key")["error"] == {
        "name": "AuthenticationError",
        "status": 401,
        "type": "authentication_error",
        "code": "invalid_api_key",
    }


def test_openai_node_stream_with_internal_tool_rounds(js: Any, upstream: Upstream) -> None:
    """The default tool_events = "reasoning": one reasoning_content line per internal call, no
    delta.tool_calls at all."""
    upstream.script(*internal_round())
    chunks = js("openai_node.mjs", "stream")["chunks"]
    deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
    assert "".join(d.get("content") or "" for d in deltas) == "It is noon."
    assert not [d for d in deltas if d.get("tool_calls")]
    lines = "".join(d.get("reasoning_content") or "" for d in deltas).splitlines()
    assert lines == [
        'get_current_time {"timezone":"UTC"}',
        "get_current_time {}",
        'get_current_time {"timezone":"Asia/Tokyo"}',
    ]
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1] == "stop"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["total_tokens"] == 45


def test_openai_node_stream_in_tool_calls_mode(js: Any, upstream: Upstream) -> None:
    upstream.script(*internal_round())
    chunks = js("openai_node.mjs", "stream", "tool_calls")["chunks"]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
    assert "".join(d.get("content") or "" for d in deltas) == "It is noon."
    assert [tc["index"] for d in deltas for tc in d.get("tool_calls") or []] == [0, 1, 2]
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1] == "stop"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["total_tokens"] == 45


def test_openai_node_stream_helper(js: Any, upstream: Upstream) -> None:
    """``client.chat.completions.stream()`` accumulates the deltas: with the default tool_events the
    final completion is the text and finish_reason "stop", no tool calls."""
    upstream.script(*internal_round())
    r = js("openai_node.mjs", "stream_helper")
    choice = r["final"]["choices"][0]
    assert choice["finish_reason"] == "stop"
    assert choice["message"]["content"] == r["content"] == r["finalContent"] == "It is noon."
    assert not choice["message"].get("tool_calls") and r["toolEvents"] == []


def test_openai_node_stream_helper_in_tool_calls_mode(js: Any, upstream: Upstream) -> None:
    """Opted into tool_events = "tool_calls": the final completion has the text, finish_reason "stop",
    and the internal calls, each whole."""
    upstream.script(*internal_round())
    r = js("openai_node.mjs", "stream_helper", "tool_calls")
    choice = r["final"]["choices"][0]
    assert choice["finish_reason"] == "stop"
    assert choice["message"]["content"] == r["content"] == r["finalContent"] == "It is noon."
    args = [json.loads(c["function"]["arguments"]) for c in choice["message"]["tool_calls"]]
    assert args == [{"timezone": "UTC"}, {}, {"timezone": "Asia/Tokyo"}]
    assert [e["name"] for e in r["toolEvents"]] == ["get_current_time"] * 3


@pytest.mark.parametrize("scenario", ["run_tools", "run_tools_stream"])
def test_openai_node_run_tools(js: Any, upstream: Upstream, prompt: str, scenario: str) -> None:
    """runTools runs the client's tool and sends the result back; sorat continues the same session and
    the model sees both calls answered once. Streamed, the internal call reaches the client as
    reasoning_content (runTools keeps it on the message, harmlessly), never as a tool call to run."""
    upstream.script(
        tool_calls([("get_current_time", {}), ("get_weather", {"city": "Oslo"})]),
        text("Sunny in Oslo.", chunks=2),
    )
    r = js("openai_node.mjs", scenario)
    assert r["finalContent"] == "Sunny in Oslo." and r["calls"] == [{"city": "Oslo"}]
    assert [m["role"] for m in r["messages"]] == ["user", "assistant", "tool", "assistant"]
    assert [c["function"]["name"] for c in r["messages"][1]["tool_calls"]] == ["get_weather"]
    if scenario == "run_tools_stream":
        assert r["content"] == "Sunny in Oslo."
        assert r["messages"][1]["reasoning_content"] == "get_current_time {}\n"
    asked = upstream.requests_for(prompt)
    sent = asked[-1]["messages"]
    assert_valid_conversation(sent)
    assert [m["role"] for m in sent] == ["user", "assistant", "tool", "tool"]
    assert json.loads(sent[-1]["content"]) == {"sky": "sunny", "city": "Oslo"}
    assert len(asked) == 2


def test_ai_sdk_generate_text(js: Any, upstream: Upstream) -> None:
    upstream.script(text("Hello there"))
    r = js("ai_sdk.mjs", "generate")
    assert r["text"] == "Hello there" and r["finishReason"] == "stop" and r["modelId"] == "gpt-4o"
    assert (r["usage"]["inputTokens"], r["usage"]["outputTokens"], r["usage"]["totalTokens"]) == (10, 5, 15)


def test_ai_sdk_stream_text_with_internal_tool_rounds(
    js: Any, daemon: DaemonProc, upstream: Upstream
) -> None:
    """streamText without tools, the default tool_events: the internal calls are reasoning-delta parts,
    and no tool-call, tool-error (NoSuchToolError) or error part appears."""
    upstream.script(*internal_round())
    r = js("ai_sdk.mjs", "stream", "", "ai sdk stream: time?")
    assert r["text"] == "It is noon." and r["finishReason"] == "stop"
    assert r["usage"]["totalTokens"] == 45 and r["toolCalls"] == []
    assert_one_session(daemon, "ai sdk stream: time?")
    types = [p["type"] for p in r["parts"]]
    assert not {"tool-call", "tool-error", "error"} & set(types)
    assert types.count("start-step") == 1 and types[-1] == "finish"
    reasoning = "".join(p["text"] for p in r["parts"] if p["type"] == "reasoning-delta")
    assert reasoning.count("get_current_time {") == 3


def test_ai_sdk_stream_text_in_tool_calls_mode(js: Any, upstream: Upstream) -> None:
    """Opted into tool_events = "tool_calls": the text and finish reason are right. The AI SDK reports
    each internal call as an invalid tool call plus a ``tool-error`` part ("Model tried to call
    unavailable tool"), without an ``error`` part and without another step: noise in fullStream."""
    upstream.script(*internal_round())
    r = js("ai_sdk.mjs", "stream", "tool_calls")
    assert r["text"] == "It is noon." and r["finishReason"] == "stop"
    assert "".join(p["text"] for p in r["parts"] if p["type"] == "text-delta") == "It is noon."
    assert r["usage"]["totalTokens"] == 45
    types = [p["type"] for p in r["parts"]]
    assert "error" not in types and types.count("start-step") == 1 and types[-1] == "finish"
    calls = [p for p in r["parts"] if p["type"] == "tool-call"]
    assert [(c["toolName"], c["input"], c["invalid"]) for c in calls] == [
        ("get_current_time", {"timezone": "UTC"}, True),
        ("get_current_time", {}, True),
        ("get_current_time", {"timezone": "Asia/Tokyo"}, True),
    ]
    assert types.count("tool-error") == 3


def test_ai_sdk_stream_text_with_stop_when(js: Any, daemon: DaemonProc, upstream: Upstream) -> None:
    """streamText with ``stopWhen`` (more steps allowed), the default tool_events: one step, the answer,
    nothing for the SDK to run; one session."""
    upstream.strict = True
    upstream.script(*internal_round())
    r = js("ai_sdk.mjs", "stream_stop_when", "", "ai sdk stopWhen: time?")
    assert r["text"] == "It is noon." and r["finishReason"] == "stop"
    assert r["steps"] == [{"finishReason": "stop", "text": "It is noon."}]
    assert not {"tool-call", "tool-error", "error"} & {p["type"] for p in r["parts"]}
    assert_one_session(daemon, "ai sdk stopWhen: time?", "user assistant tool tool assistant tool assistant")


def test_ai_sdk_stream_text_with_stop_when_in_tool_calls_mode(
    js: Any, daemon: DaemonProc, upstream: Upstream
) -> None:
    """Opted into tool_calls, with ``stopWhen``: the SDK cannot run sorat's internal calls, so its second
    step sends their tool-error results back. Those are neither stored nor sent (a strict provider
    answers 400 to results that follow no call, and every later turn would fail the same way): the
    request brings nothing new and gets the turn's answer again, without a model call."""
    upstream.strict = True
    upstream.script(*internal_round())
    r = js("ai_sdk.mjs", "stream_stop_when", "tool_calls", "ai sdk stopWhen, tool_calls mode")
    assert "error" not in [p["type"] for p in r["parts"]], r["parts"]
    assert r["text"].endswith("It is noon.")
    sent = [
        b for b in upstream.requests if b["messages"][0].get("content") == "ai sdk stopWhen, tool_calls mode"
    ]
    assert len(sent) == 3  # the turn's own calls; the echo made none
    for body in sent:
        assert_valid_conversation(body["messages"])
    assert_one_session(
        daemon, "ai sdk stopWhen, tool_calls mode", "user assistant tool tool assistant tool assistant"
    )


def test_ai_sdk_generate_text_with_a_client_tool(js: Any, upstream: Upstream, prompt: str) -> None:
    upstream.script(
        tool_calls([("get_current_time", {}), ("get_weather", {"city": "Oslo"})]), text("Sunny in Oslo.")
    )
    r = js("ai_sdk.mjs", "generate_tools")
    assert r["text"] == "Sunny in Oslo." and r["finishReason"] == "stop" and r["calls"] == [{"city": "Oslo"}]
    assert [s["finishReason"] for s in r["steps"]] == ["tool-calls", "stop"]
    assert r["steps"][0]["toolCalls"] == [{"toolName": "get_weather", "input": {"city": "Oslo"}}]
    asked = upstream.requests_for(prompt)
    sent = asked[-1]["messages"]
    assert_valid_conversation(sent)
    assert [m["role"] for m in sent] == ["user", "assistant", "tool", "tool"]
    assert len(asked) == 2


def test_ai_sdk_stream_text_with_a_client_tool(js: Any, upstream: Upstream, prompt: str) -> None:
    """Streamed with tools: the internal call arrives as reasoning (reasoning-delta parts), the client's
    call is run by the SDK, and the second step streams the answer."""
    upstream.script(
        tool_calls([("get_current_time", {}), ("get_weather", {"city": "Oslo"})], chunks=3),
        text("Sunny in Oslo.", chunks=2),
    )
    r = js("ai_sdk.mjs", "stream_tools")
    assert r["text"] == "Sunny in Oslo." and r["finishReason"] == "stop" and r["calls"] == [{"city": "Oslo"}]
    parts = r["parts"]
    assert "".join(p["text"] for p in parts if p["type"] == "reasoning-delta") == "get_current_time {}\n"
    assert [(p["toolName"], p["input"], p["invalid"]) for p in parts if p["type"] == "tool-call"] == [
        ("get_weather", {"city": "Oslo"}, False)
    ]
    assert [p["finishReason"] for p in parts if p["type"] == "finish-step"] == ["tool-calls", "stop"]
    assert not [p for p in parts if p["type"] in ("error", "tool-error")]
    assert_valid_conversation(upstream.requests_for(prompt)[-1]["messages"])


# -- Open WebUI ----------------------------------------------------------------------------------------


class OpenWebUIModel:
    """A MODEL of Open WebUI's consumer of a streamed chat completion, not Open WebUI itself (which
    cannot run here). It re-implements, from open_webui/utils/middleware.py (process_chat_response:
    ``stream_body_handler`` and the tool-call loop after it) and open_webui/utils/content_blocks.py
    (``serialize_content_blocks``, ``convert_content_blocks_to_messages``), the parts that touch what
    sorat sends:

    - each line: skipped unless it starts with ``data:``; the rest is JSON-decoded (``[DONE]`` and bad
      JSON are skipped); a chunk with no ``choices`` is only looked at for ``usage`` / ``error``;
    - ``delta.tool_calls``: grouped by ``index``, the first delta of an index kept as the call (name and
      arguments defaulted to ""), later ones appending ``function.name`` and ``function.arguments``;
      an item WITHOUT ``index`` is DROPPED;
    - ``delta.reasoning_content`` / ``reasoning`` / ``thinking`` go to a reasoning block, ``content`` to
      a text block;
    - after the stream, if any calls were collected, Open WebUI "runs" them: the arguments are parsed
      with ``ast.literal_eval`` then ``json.loads`` and re-dumped; a tool it does not know (not one it
      declared) gets the result "" (``tool_result or ""``); it then sends a FOLLOW-UP streamed request:
      its messages + ``convert_content_blocks_to_messages(content_blocks, raw=True)`` (the assistant
      message with the collected calls, ``index`` included, and one tool message per call), and consumes
      that stream the same way, up to CHAT_RESPONSE_MAX_TOOL_CALL_RETRIES rounds. This happens whether
      or not Open WebUI declared tools.
    """

    MAX_TOOL_CALL_RETRIES = 30

    def __init__(self, tools: dict[str, Any] | None = None) -> None:
        self.tools = tools or {}  # name -> python callable(**params)
        self.content_blocks: list[dict[str, Any]] = [{"type": "text", "content": ""}]
        self.rounds: list[list[dict[str, Any]]] = []  # the calls collected from each stream
        self.errors: list[Any] = []

    # stream_body_handler
    def consume(self, lines: Iterable[str]) -> list[dict[str, Any]]:
        response_tool_calls: list[dict[str, Any]] = []
        blocks = self.content_blocks
        for line in lines:
            if not line.strip() or not line.startswith("data:"):
                continue
            try:
                data = json.loads(line[len("data:") :].strip())
            except ValueError:
                continue
            choices = data.get("choices", [])
            if not choices:
                if data.get("error"):
                    self.errors.append(data["error"])
                continue
            delta = choices[0].get("delta", {})
            for tc in delta.get("tool_calls") or []:
                index = tc.get("index")
                if index is None:
                    continue  # dropped
                current = next((c for c in response_tool_calls if c.get("index") == index), None)
                if current is None:
                    tc.setdefault("function", {})
                    tc["function"].setdefault("name", "")
                    tc["function"].setdefault("arguments", "")
                    response_tool_calls.append(tc)
                else:
                    name = tc.get("function", {}).get("name")
                    arguments = tc.get("function", {}).get("arguments")
                    if name:
                        current["function"]["name"] += name
                    if arguments:
                        current["function"]["arguments"] += arguments
            reasoning = delta.get("reasoning_content") or delta.get("reasoning") or delta.get("thinking")
            if reasoning:
                if blocks[-1]["type"] != "reasoning":
                    blocks.append(
                        {"type": "reasoning", "start_tag": "<think>", "end_tag": "</think>", "content": ""}
                    )
                blocks[-1]["content"] += reasoning
            value = delta.get("content")
            if value:
                if blocks[-1]["type"] == "reasoning":
                    blocks[-1]["duration"] = 0
                    blocks.append({"type": "text", "content": ""})
                blocks[-1]["content"] += value
        if blocks[-1]["type"] == "text":
            blocks[-1]["content"] = blocks[-1]["content"].strip()
            if not blocks[-1]["content"] and len(blocks) > 1:
                blocks.pop()
        self.rounds.append(response_tool_calls)
        return response_tool_calls

    def run_tools(self, calls: list[dict[str, Any]]) -> None:
        results = []
        for call in calls:
            raw = call.get("function", {}).get("arguments", "{}")
            try:
                params = ast.literal_eval(raw)
            except Exception:
                try:
                    params = json.loads(raw)
                except Exception:
                    params = {}
            call.setdefault("function", {})["arguments"] = json.dumps(params)
            result = None
            name = call.get("function", {}).get("name", "")
            if name in self.tools:
                result = self.tools[name](**params)
            results.append({"tool_call_id": call.get("id", ""), "content": result or ""})
        self.content_blocks.append({"type": "tool_calls", "content": calls, "results": results})
        self.content_blocks.append({"type": "text", "content": ""})

    def follow_up_messages(self) -> list[dict[str, Any]]:
        """``convert_content_blocks_to_messages(content_blocks, raw=True)``."""
        messages: list[dict[str, Any]] = []
        temp: list[dict[str, Any]] = []
        for block in self.content_blocks:
            if block["type"] == "tool_calls":
                text_ = self.serialize_raw(temp)
                if temp:
                    if text_:
                        messages.append(
                            {"role": "assistant", "content": text_, "tool_calls": block["content"]}
                        )
                    temp = []
                else:
                    messages.append({"role": "assistant", "content": "", "tool_calls": block["content"]})
                for r in block.get("results", []):
                    messages.append(
                        {"role": "tool", "tool_call_id": r["tool_call_id"], "content": r["content"] or ""}
                    )
            else:
                temp.append(block)
        if temp and self.serialize_raw(temp):
            messages.append({"role": "assistant", "content": self.serialize_raw(temp)})
        return messages

    @staticmethod
    def serialize_raw(blocks: list[dict[str, Any]]) -> str:
        out = ""
        for b in blocks:
            if b["type"] == "text" and b["content"].strip():
                out += b["content"].strip() + "\n"
            elif b["type"] == "reasoning":
                out += (
                    "\n" if out and not out.endswith("\n") else ""
                ) + f"{b['start_tag']}{b['content']}{b['end_tag']}\n"
        return out.strip()

    def visible_text(self) -> str:
        return "\n".join(b["content"] for b in self.content_blocks if b["type"] == "text" and b["content"])

    def converse(self, daemon: DaemonProc, body: dict[str, Any], **headers: str) -> None:
        """One user turn as Open WebUI runs it: the stream, then the tool-call loop."""
        with daemon.client() as c:
            calls = self.consume(_stream_lines(c, body, headers))
            retries = 0
            while calls and retries < self.MAX_TOOL_CALL_RETRIES:
                retries += 1
                self.run_tools(calls)
                follow = {**body, "stream": True, "messages": [*body["messages"], *self.follow_up_messages()]}
                calls = self.consume(_stream_lines(c, follow, headers))


def _stream_lines(c: httpx.Client, body: dict[str, Any], headers: dict[str, str]) -> Iterator[str]:
    with c.stream("POST", "/v1/chat/completions", json=body, headers=headers) as r:
        assert r.status_code == 200, r.read()
        yield from r.iter_lines()


def test_openwebui_collects_internal_calls_whole(daemon: DaemonProc, upstream: Upstream) -> None:
    """tool_events = "tool_calls": every internal call carries its own index, so Open WebUI shows each
    whole (none dropped for a missing index, none merged into another's arguments)."""
    upstream.script(*internal_round())
    ui = OpenWebUIModel()
    with daemon.client() as c:
        body = {"model": "sorat-agent", "messages": USER, "stream": True}
        calls = ui.consume(_stream_lines(c, body, TOOL_CALLS))
    assert [
        (tc["index"], tc["function"]["name"], json.loads(tc["function"]["arguments"])) for tc in calls
    ] == [
        (0, "get_current_time", {"timezone": "UTC"}),
        (1, "get_current_time", {}),
        (2, "get_current_time", {"timezone": "Asia/Tokyo"}),
    ]
    assert ui.visible_text() == "It is noon." and ui.errors == []


DIALECTS = [
    pytest.param({}, 2, id="openai"),
    pytest.param({"no_index"}, 2, id="no_index"),
    pytest.param({"index_from_1"}, 2, id="index_from_1"),
    pytest.param({"whole_tool_calls"}, 1, id="whole_tool_calls"),
    pytest.param({"empty_name"}, 3, id="empty_name"),
    pytest.param({"no_index", "whole_tool_calls"}, 1, id="no_index_whole"),
]


@pytest.mark.parametrize(("quirks", "chunks"), DIALECTS)
def test_openwebui_native_tools_from_every_upstream_dialect(
    daemon: DaemonProc, upstream: Upstream, prompt: str, quirks: set[str], chunks: int
) -> None:
    """Open WebUI's native function calling (it declares its tools): whatever the provider's tool-call
    dialect (Gemini and Mistral send no index, Anthropic starts at 1, Ollama sends calls whole, LM Studio
    repeats empty names), sorat's stream gives each client call an index from 0, so Open WebUI gets
    both calls whole; the internal call is a reasoning line, not a call for Open WebUI to run. Then the
    whole loop: Open WebUI runs get_weather, sends its follow-up, and sorat's answer ends the turn."""
    upstream.script(
        tool_calls(
            [
                ("get_weather", {"city": "Oslo"}),
                ("get_current_time", {}),
                ("get_weather", {"city": "Bergen"}),
            ],
            chunks=chunks,
            quirks=quirks,
        ),
        text("Sunny in Oslo and Bergen.", chunks=2),
    )
    ui = OpenWebUIModel(tools={"get_weather": lambda city: json.dumps({"city": city, "sky": "sunny"})})
    body = {
        "model": "sorat-agent",
        "messages": user_says(prompt),
        "stream": True,
        "tools": [WEATHER],
    }
    ui.converse(daemon, body)
    first = ui.rounds[0]
    assert [tc["index"] for tc in first] == [0, 1]
    assert [(tc["function"]["name"], json.loads(tc["function"]["arguments"])) for tc in first] == [
        ("get_weather", {"city": "Oslo"}),
        ("get_weather", {"city": "Bergen"}),
    ]
    assert all(tc["id"] and tc["type"] == "function" for tc in first)
    assert [len(r) for r in ui.rounds] == [2, 0]
    reasoning = [b["content"] for b in ui.content_blocks if b["type"] == "reasoning"]
    assert reasoning == ["get_current_time {}\n"]
    assert ui.visible_text() == "Sunny in Oslo and Bergen."
    asked = upstream.requests_for(prompt)
    sent = asked[-1]["messages"]
    assert_valid_conversation(sent)
    answers = [json.loads(m["content"]) for m in sent if m["role"] == "tool" and "city" in m["content"]]
    assert sorted(a["city"] for a in answers) == ["Bergen", "Oslo"]
    assert len(asked) == 2


def test_openwebui_native_follow_up_keeps_the_internal_round(
    daemon: DaemonProc, upstream: Upstream, prompt: str
) -> None:
    """Open WebUI's follow-up after running its tool echoes the assistant turn through
    ``convert_content_blocks_to_messages(raw=True)``, so sorat's reasoning line comes back as the
    assistant's content: ``"<think>get_current_time {}\n</think>"``. sorat leaves leading ``<think>``
    blocks out when it compares a request with the visible conversation, so this is no edit: the model
    sees the turn as it happened, the internal call answered, then the client's."""
    upstream.script(
        tool_calls([("get_current_time", {}), ("get_weather", {"city": "Oslo"})]), text("Sunny in Oslo.")
    )
    ui = OpenWebUIModel(tools={"get_weather": lambda city: json.dumps({"city": city, "sky": "sunny"})})
    body = {
        "model": "x",
        "messages": user_says(prompt),
        "stream": True,
        "tools": [WEATHER],
    }
    ui.converse(daemon, body)
    assert ui.visible_text() == "Sunny in Oslo."
    echoed = ui.follow_up_messages()[0]
    assert echoed["content"] == "<think>get_current_time {}\n</think>"  # what Open WebUI sends back
    sent = upstream.requests_for(prompt)[-1]["messages"]
    assert_valid_conversation(sent)
    assert not any("<think>" in (m.get("content") or "") for m in sent if m["role"] == "assistant")
    assert [m["role"] for m in sent] == ["user", "assistant", "tool", "tool"]


@pytest.mark.parametrize("headers", [{}, {"X-Sorat-Tool-Events": "reasoning"}], ids=["default", "header"])
def test_openwebui_reasoning_mode_has_no_follow_up(
    daemon: DaemonProc, upstream: Upstream, headers: dict[str, str], prompt: str
) -> None:
    """With tool_events = "reasoning" (the default, or per request) Open WebUI shows the internal calls
    as a thinking block and makes no follow-up request."""
    upstream.script(*internal_round())
    ui = OpenWebUIModel()
    ui.converse(daemon, {"model": "sorat-agent", "messages": user_says(prompt), "stream": True}, **headers)
    assert ui.rounds == [[]]
    assert [
        b["content"].count("get_current_time {") for b in ui.content_blocks if b["type"] == "reasoning"
    ] == [3]
    assert ui.visible_text() == "It is noon."
    assert len(upstream.requests_for(prompt)) == 3


def test_openwebui_default_mode_follow_up_after_internal_calls(
    daemon: DaemonProc, upstream: Upstream, prompt: str
) -> None:
    """Open WebUI's default mode (it declares no tools) with tool_events = "tool_calls" (opted in):
    Open WebUI collects the internal calls from the stream and, as it does for any collected call,
    "runs" them (unknown tools: result "") and sends a follow-up request carrying the calls and those
    empty results. That follow-up must not break the conversation the provider sees (a strict provider
    rejects a tool message that answers no pending call with a 400): sorat recognises the echoed calls
    and results, stores and sends neither, and, the request bringing nothing new, gives the turn's
    answer again without calling the model (Open WebUI shows it after its tool block)."""
    upstream.strict = True
    upstream.script(*internal_round(), text("Second answer."))
    ui = OpenWebUIModel()
    ui.converse(daemon, {"model": "sorat-agent", "messages": user_says(prompt), "stream": True}, **TOOL_CALLS)
    assert len(ui.rounds[0]) == 3  # the internal calls, as Open WebUI collected them
    assert ui.rounds[1:] == [[]] and ui.errors == []  # one follow-up, answered
    assert len(upstream.requests_for(prompt)) == 3 and upstream.pending == 1  # the follow-up called no model
    for body in upstream.requests_for(prompt):
        assert_valid_conversation(body["messages"])
    assert ui.visible_text() == "It is noon.\nIt is noon."
