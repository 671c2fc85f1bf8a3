"""Python SDKs as their users drive them, against the real daemon on the scripted upstream (issue 12):
openai-python's helpers, LiteLLM's SDK (what Aider and many apps stand on), the OpenAI Agents SDK on
chat completions and pydantic-ai. Each shows what it exposed: phantom tool calls in a stream that the
SDK aggregates, a forcing ``tool_choice`` obeyed round after round, echoed results of internal calls,
a structured output that forked its session. After each multi-turn run, the conversation is one
session that stores nothing twice. LangChain and the JS clients are in test_clients.py."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest

from tests.conftest import DEFAULT_EXTRA, DaemonProc, assert_one_session, write_config
from tests.upstream import Upstream, text, tool_calls

# LiteLLM's modules, loaded on first use, make pydantic warn about a TypedDict of theirs
pytestmark = pytest.mark.filterwarnings("ignore:.* using the `ReadOnly` qualifier:UserWarning")

TOOL_CALLS = {"X-Sorat-Tool-Events": "tool_calls"}  # the opt-in mode that shows internal calls as calls
MODELS = ["gpt-4o", "openai/gpt-4o-mini"]  # an OpenRouter-style id, with a slash


def internal_round(answer: str = "It is noon.") -> tuple[Any, ...]:
    """One internal round (a call of sorat's clock), then a streamed answer."""
    return (tool_calls([("get_current_time", {"timezone": "UTC"})]), text(answer, chunks=3))


@pytest.fixture(scope="module")
def daemon(upstream: Upstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProc]:
    home = tmp_path_factory.mktemp("sdks") / "home"
    write_config(home, upstream.base_url, DEFAULT_EXTRA)
    with open(home / "config.toml", "a", encoding="utf-8") as f:
        f.write(f"models = {MODELS!r}\n".replace("'", '"'))  # the provider's, listed: no discovery
    d = DaemonProc(home).start()
    yield d
    d.stop()


def sent_roles(body: dict[str, Any]) -> str:
    return " ".join(m["role"] for m in body["messages"])


def requests_with(upstream: Upstream, marker: str) -> list[dict[str, Any]]:
    """The upstream's chat requests of the conversation whose first user message holds ``marker``."""
    return [
        r
        for r in upstream.requests
        if marker in str(next((m.get("content") for m in r["messages"] if m["role"] == "user"), ""))
    ]


# -- openai-python -------------------------------------------------------------------------------------


def test_openai_models_retrieve(daemon: DaemonProc) -> None:
    """``models.retrieve``: each listed model, an id with a slash too; an unknown one is a NotFoundError."""
    import openai

    client = daemon.openai()
    listed = {m.id: m for m in client.models.list().data}
    assert {"gpt-4o", "sorat-agent", "openai/gpt-4o-mini"} <= set(listed)
    for model_id in ("gpt-4o", "sorat-agent", "openai/gpt-4o-mini"):
        got = client.models.retrieve(model_id)
        assert got.model_dump() == listed[model_id].model_dump()
    with pytest.raises(openai.NotFoundError) as info:
        client.models.retrieve("no-such-model")
    assert info.value.status_code == 404
    assert info.value.body["code"] == "model_not_found"  # type: ignore[index]


def test_openai_logprobs_whole_and_streamed(daemon: DaemonProc, upstream: Upstream) -> None:
    """``logprobs``/``top_logprobs`` reach the provider; its logprobs come back: a whole answer has the
    final round's, a stream carries each piece's beside its text."""
    client = daemon.openai()
    upstream.script(*internal_round("Noon it is"))
    messages = [{"role": "user", "content": "time with logprobs?"}]
    whole = client.chat.completions.create(
        model="sorat-agent", messages=messages, logprobs=True, top_logprobs=2
    )  # type: ignore[call-overload]
    (forwarded,) = [r for r in requests_with(upstream, "time with logprobs?") if len(r["messages"]) == 1]
    assert (forwarded["logprobs"], forwarded["top_logprobs"]) == (True, 2)
    choice = whole.choices[0]
    assert choice.message.content == "Noon it is"
    assert choice.logprobs is not None and choice.logprobs.content is not None
    assert "".join(t.token for t in choice.logprobs.content) == "Noon it is"  # the final round's tokens
    assert [len(t.top_logprobs) for t in choice.logprobs.content] == [2, 2, 2]

    upstream.script(*internal_round("Noon it is"))
    stream = client.chat.completions.create(
        model="sorat-agent",
        messages=[{"role": "user", "content": "streamed logprobs?"}],
        logprobs=True,
        top_logprobs=1,
        stream=True,
    )  # type: ignore[call-overload]
    pieces = [(c.choices[0].delta.content, c.choices[0].logprobs) for c in stream if c.choices]
    with_lp = [(content, lp) for content, lp in pieces if lp is not None]
    assert len(with_lp) == 3 and "".join(content for content, _ in with_lp) == "Noon it is"
    assert [[t.token for t in lp.content] for _, lp in with_lp] == [[content] for content, _ in with_lp]


def test_openai_tool_choice_required_binds_the_first_call(daemon: DaemonProc, upstream: Upstream) -> None:
    """``tool_choice="required"`` (smolagents, pydantic-ai and the Agents SDK send it) against a provider
    that obeys it: the first model call must call a tool, later rounds are ``auto``, so the request ends
    after two upstream calls instead of looping until max_iterations (31 calls)."""
    upstream.strict = True
    upstream.script(text("It is noon."))
    client = daemon.openai()
    r = client.chat.completions.create(
        model="sorat-agent",
        messages=[{"role": "user", "content": "required choice?"}],
        tool_choice="required",
    )
    assert r.choices[0].message.content == "It is noon." and r.choices[0].finish_reason == "stop"
    sent = requests_with(upstream, "required choice?")
    assert [b.get("tool_choice") for b in sent] == ["required", "auto"]
    assert sent_roles(sent[1]) == "user assistant tool"  # the forced call: sorat's own clock, answered


def test_the_strict_upstream_rejects_a_dangling_tool_result(daemon: DaemonProc, upstream: Upstream) -> None:
    """What the strict upstream shows: a ``tool`` message that answers no call is OpenAI's 400, which sorat
    passes on as the provider's own 400."""
    import openai

    upstream.strict = True
    client = daemon.openai()
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(
            model="sorat-agent",
            messages=[
                {"role": "user", "content": "dangling?"},
                {"role": "assistant", "content": "Hello."},
                {"role": "tool", "tool_call_id": "call_nowhere", "content": "{}"},
            ],
        )
    assert "must be a response to a preceeding message with 'tool_calls'" in info.value.message


# -- LiteLLM -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def litellm() -> Any:
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no fetch of its price list at import
    return pytest.importorskip("litellm", reason="LiteLLM is part of the [test] extra")


def test_litellm_stream_chunk_builder_has_no_phantom_tool_calls(
    daemon: DaemonProc, upstream: Upstream, litellm: Any
) -> None:
    """LiteLLM (``model="openai/sorat-agent"``, as Aider configures it) rebuilds a streamed answer with
    ``stream_chunk_builder``. With the default tool_events the internal call is reasoning: the message is
    the answer, finish_reason "stop", no tool_calls. The next turn, the whole history resent, continues
    the session."""
    common = {"model": "openai/sorat-agent", "api_base": daemon.base_url, "api_key": daemon.token}
    messages: list[dict[str, Any]] = [{"role": "user", "content": "litellm: what time is it?"}]
    upstream.script(*internal_round())
    chunks = list(litellm.completion(messages=messages, stream=True, **common))
    full = litellm.stream_chunk_builder(chunks, messages=messages)
    choice = full.choices[0]
    assert (choice.finish_reason, choice.message.content, choice.message.tool_calls) == (
        "stop",
        "It is noon.",
        None,
    )
    assert choice.message.reasoning_content == 'get_current_time {"timezone":"UTC"}\n'

    messages += [
        {"role": "assistant", "content": choice.message.content},
        {"role": "user", "content": "thanks"},
    ]
    upstream.script(text("You're welcome."))
    again = litellm.completion(messages=messages, stream=True, **common)
    assert "".join(c.choices[0].delta.content or "" for c in again if c.choices) == "You're welcome."
    assert (
        sent_roles(upstream.requests_for("litellm: what time is it?")[-1])
        == "user assistant tool assistant user"
    )
    assert_one_session(daemon, "litellm: what time is it?", "user assistant tool assistant user assistant")


def test_litellm_in_tool_calls_mode_reports_calls_that_were_never_its_own(
    daemon: DaemonProc, upstream: Upstream, litellm: Any
) -> None:
    """Why tool_calls is not the default: opted in, LiteLLM's rebuilt message says finish_reason
    "tool_calls" and lists sorat's internal call for the application to run."""
    upstream.script(*internal_round())
    messages = [{"role": "user", "content": "litellm in tool_calls mode"}]
    chunks = list(
        litellm.completion(
            model="openai/sorat-agent",
            api_base=daemon.base_url,
            api_key=daemon.token,
            messages=messages,
            stream=True,
            extra_headers=TOOL_CALLS,
        )
    )
    choice = litellm.stream_chunk_builder(chunks, messages=messages).choices[0]
    assert choice.finish_reason == "tool_calls"
    assert [c.function.name for c in choice.message.tool_calls] == ["get_current_time"]


# -- the OpenAI Agents SDK (chat completions) ----------------------------------------------------------


@pytest.fixture
async def aclient(daemon: DaemonProc) -> AsyncIterator[Callable[..., Any]]:
    """``aclient(headers=None)``: an AsyncOpenAI client on the daemon, closed after the test (on its loop)."""
    from openai import AsyncOpenAI

    made: list[AsyncOpenAI] = []

    def make(headers: dict[str, str] | None = None) -> AsyncOpenAI:
        client = AsyncOpenAI(
            base_url=daemon.base_url, api_key=daemon.token, max_retries=0, default_headers=headers
        )
        made.append(client)
        return client

    yield make
    for client in made:
        await client.close()


@pytest.fixture
def agents_model(aclient: Callable[..., Any]) -> Callable[..., Any]:
    """``agents_model(headers=None)``: the Agents SDK's chat-completions model on the daemon."""
    agents = pytest.importorskip("agents", reason="openai-agents is part of the [test] extra")
    agents.set_tracing_disabled(True)

    def make(headers: dict[str, str] | None = None) -> Any:
        return agents.OpenAIChatCompletionsModel(model="sorat-agent", openai_client=aclient(headers))

    return make


async def streamed(agent: Any, run_input: Any) -> Any:
    from agents import Runner

    result = Runner.run_streamed(agent, run_input)
    async for _ in result.stream_events():
        pass
    return result


async def test_agents_sdk_run_streamed_then_a_second_turn(
    daemon: DaemonProc, upstream: Upstream, agents_model: Any
) -> None:
    """``Runner.run_streamed`` with the default tool_events: the internal call is no tool the SDK has to
    find (it raised ModelBehaviorError "Tool get_current_time not found" in tool_calls mode), and the
    second turn (``to_input_list()`` plus a new message) continues the one session."""
    from agents import Agent

    agent = Agent(name="clock", instructions="Be brief.", model=agents_model())
    upstream.script(*internal_round())
    first = await streamed(agent, "agents sdk: what time is it?")
    assert first.final_output == "It is noon."
    upstream.script(text("You're welcome."))
    second = await streamed(agent, [*first.to_input_list(), {"role": "user", "content": "thanks"}])
    assert second.final_output == "You're welcome."
    assert (
        sent_roles(upstream.requests_for("agents sdk: what time is it?")[-1])
        == "system user assistant tool assistant user"
    )
    assert_one_session(
        daemon, "agents sdk: what time is it?", "system user assistant tool assistant user assistant"
    )


async def test_agents_sdk_in_tool_calls_mode_cannot_find_the_tool(
    daemon: DaemonProc, upstream: Upstream, agents_model: Any
) -> None:
    from agents import Agent
    from agents.exceptions import ModelBehaviorError

    agent = Agent(name="clock", instructions="Be brief.", model=agents_model(TOOL_CALLS))
    upstream.script(*internal_round())
    with pytest.raises(ModelBehaviorError, match="get_current_time"):
        await streamed(agent, "agents sdk in tool_calls mode")


async def test_agents_sdk_required_tool_choice_with_a_function_tool(
    daemon: DaemonProc, upstream: Upstream, agents_model: Any
) -> None:
    """The Agents SDK with ``tool_choice="required"`` and a tool of its own, on a provider that obeys it.
    The model satisfies the first call with sorat's clock; sorat's next round is ``auto`` (not forced
    again), where the model calls the SDK's tool; the SDK runs it, resets its tool_choice, and the run
    ends with the answer."""
    from agents import Agent, ModelSettings, function_tool

    calls: list[str] = []

    @function_tool
    def get_weather(city: str) -> str:
        """Weather in a city."""
        calls.append(city)
        return "sunny"

    agent = Agent(
        name="weather",
        instructions="Be brief.",
        model=agents_model(),
        tools=[get_weather],
        model_settings=ModelSettings(tool_choice="required"),
    )
    upstream.strict = True
    upstream.script(
        tool_calls([("get_current_time", {})]),
        tool_calls([("get_weather", {"city": "Oslo"})]),
        text("Sunny in Oslo."),
    )
    result = await streamed(agent, "agents sdk: weather in Oslo, required")
    assert result.final_output == "Sunny in Oslo." and calls == ["Oslo"]
    sent = requests_with(upstream, "agents sdk: weather in Oslo, required")
    # the SDK resets its tool_choice once its tool ran (reset_tool_choice); sorat forced nothing more
    assert [b.get("tool_choice") for b in sent] == ["required", "auto", None]
    assert_one_session(daemon, "agents sdk: weather in Oslo, required")


# -- pydantic-ai ---------------------------------------------------------------------------------------


@pytest.fixture
def pydantic_agent(aclient: Callable[..., Any]) -> Callable[..., Any]:
    """``pydantic_agent(headers=None, **agent_options)``: a pydantic-ai Agent on the daemon."""
    pydantic_ai = pytest.importorskip(
        "pydantic_ai", reason="pydantic-ai-slim[openai] is part of the [test] extra"
    )
    from pydantic_ai.models.openai import OpenAIChatModel
    from pydantic_ai.providers.openai import OpenAIProvider

    def make(headers: dict[str, str] | None = None, **kw: Any) -> Any:
        model = OpenAIChatModel("sorat-agent", provider=OpenAIProvider(openai_client=aclient(headers)))
        return pydantic_ai.Agent(model, **kw)

    return make


async def test_pydantic_ai_streamed_run_then_a_second_run(
    daemon: DaemonProc, upstream: Upstream, pydantic_agent: Any
) -> None:
    """``run_stream`` with the default tool_events: the text is the answer; the second run, with the
    first's messages as history, continues the one session."""
    agent = pydantic_agent()
    upstream.script(*internal_round())
    async with agent.run_stream("pydantic-ai: what time is it?") as run:
        said = [t async for t in run.stream_text()]
    assert said[-1] == "It is noon."
    upstream.script(text("You're welcome."))
    second = await agent.run("thanks", message_history=run.all_messages())
    assert second.output == "You're welcome."
    assert (
        sent_roles(upstream.requests_for("pydantic-ai: what time is it?")[-1])
        == "user assistant tool assistant user"
    )
    assert_one_session(
        daemon, "pydantic-ai: what time is it?", "user assistant tool assistant user assistant"
    )


async def test_pydantic_ai_two_rounds_of_text_then_a_second_run(
    daemon: DaemonProc, upstream: Upstream, pydantic_agent: Any
) -> None:
    """Text in both rounds: pydantic-ai keeps "Checking. " and "\n\nIt is noon." as two text parts (the
    reasoning line between them) and sends them back joined with "\n\n", so the assistant message comes
    back with two blank lines where the client saw one. It should still continue the session."""
    agent = pydantic_agent()
    upstream.script(
        tool_calls([("get_current_time", {})], content="Checking. "), text("It is noon.", chunks=2)
    )
    async with agent.run_stream("pydantic-ai: two rounds of text") as run:
        said = [t async for t in run.stream_text()]
    assert said[-1] == "Checking. \n\nIt is noon."
    upstream.script(text("You're welcome."))
    await agent.run("thanks", message_history=run.all_messages())
    assert (
        sent_roles(upstream.requests_for("pydantic-ai: two rounds of text")[-1])
        == "user assistant tool assistant user"
    )
    assert_one_session(daemon, "pydantic-ai: two rounds of text")


async def test_pydantic_ai_streamed_run_in_tool_calls_mode(
    daemon: DaemonProc, upstream: Upstream, pydantic_agent: Any
) -> None:
    """Opted into tool_calls, pydantic-ai keeps sorat's internal call in its history and answers it with
    a result of its own ("Tool not executed…"). The next run sends that back: sorat must neither store
    nor forward it (a strict provider rejects the conversation, every later turn too)."""
    agent = pydantic_agent(TOOL_CALLS)
    upstream.strict = True
    upstream.script(*internal_round())
    async with agent.run_stream("pydantic-ai tool_calls mode: time?") as run:
        said = [t async for t in run.stream_text()]
    assert said[-1] == "It is noon."
    upstream.script(text("You're welcome."))
    second = await agent.run("thanks", message_history=run.all_messages())
    assert second.output == "You're welcome."
    sent = requests_with(upstream, "pydantic-ai tool_calls mode: time?")
    assert [sent_roles(b) for b in sent] == [
        "user",
        "user assistant tool",
        "user assistant tool assistant user",  # sorat's own result, once; not pydantic-ai's
    ]
    assert_one_session(daemon, "pydantic-ai tool_calls mode: time?")


async def test_pydantic_ai_structured_output_then_a_second_run(
    daemon: DaemonProc, upstream: Upstream, pydantic_agent: Any
) -> None:
    """A structured output (pydantic-ai's ``final_result`` tool, forced with ``tool_choice="required"``),
    then a second run with that history: its request ends with the tool result pydantic-ai wrote and a new
    user message. It continues the one session; nothing of the first run is stored again."""
    from pydantic import BaseModel

    class City(BaseModel):
        name: str
        country: str

    upstream.strict = True
    upstream.script(tool_calls([("final_result", {"name": "Oslo", "country": "Norway"})]))
    first = await pydantic_agent(output_type=City).run("pydantic-ai structured: a city?")
    assert first.output == City(name="Oslo", country="Norway")
    upstream.script(text("It is cold."))
    second = await pydantic_agent().run("and its weather?", message_history=first.all_messages())
    assert second.output == "It is cold."
    assert (
        sent_roles(upstream.requests_for("pydantic-ai structured: a city?")[-1]) == "user assistant tool user"
    )
    assert_one_session(daemon, "pydantic-ai structured: a city?", "user assistant tool user assistant")
