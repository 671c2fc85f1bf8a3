"""The agent loop against a scripted in-process model and real tools."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from sorat_daemon import agent
from sorat_daemon.errors import ContextWindowExceeded, ProviderError
from sorat_daemon.paths import Home
from sorat_daemon.tools.registry import ToolContext, Toolset, tool
from sorat_daemon.types import Delta, ModelCall, ModelResult, ToolCallDelta


def call(name: str, args: dict[str, Any], i: int = 0, cid: str | None = None) -> ToolCallDelta:
    return ToolCallDelta(i, cid or f"call_{name}_{i}", name, json.dumps(args))


class ScriptedModel:
    """A model that answers each call with the next scripted list of deltas (or raises it)."""

    def __init__(self, *replies: list[Delta] | BaseException) -> None:
        self.replies = list(replies)
        self.calls: list[ModelCall] = []

    def _next(self, c: ModelCall) -> list[Delta]:
        self.calls.append(ModelCall(c.model, list(c.messages), c.tools, c.tool_choice, dict(c.params)))
        reply = self.replies.pop(0) if self.replies else [Delta(content="ok", finish_reason="stop")]
        if isinstance(reply, BaseException):
            raise reply
        return reply

    async def stream(self, c: ModelCall) -> AsyncIterator[Delta]:
        for d in self._next(c):
            if isinstance(d, BaseException):
                raise d
            yield d

    async def complete(self, c: ModelCall) -> ModelResult:
        deltas = self._next(c)
        msg: dict[str, Any] = {"role": "assistant", "content": "".join(d.content or "" for d in deltas)}
        calls = [tc for d in deltas for tc in (d.tool_calls or [])]
        if calls:
            msg["tool_calls"] = [
                {"id": tc.id, "type": "function", "function": {"name": tc.name, "arguments": tc.arguments}}
                for tc in calls
            ]
        finish = next((d.finish_reason for d in deltas if d.finish_reason), "stop")
        return ModelResult(msg, finish, {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2})


@tool
def echo(text: str) -> str:
    """Echo the text back."""
    return text


@tool
def explode() -> str:
    """Always fails."""
    raise RuntimeError("boom")


@pytest.fixture
def ctx(tmp_path: Path) -> ToolContext:
    home = Home(tmp_path)
    home.ensure()
    return ToolContext(home=home)


async def collect(model: Any, toolset: Toolset, ctx: ToolContext, opts: agent.RunOptions, record: Any = None):
    recorded: list[tuple[dict[str, Any], Any]] = []

    async def rec(message: dict[str, Any], *, visible: Any = ...) -> None:
        recorded.append((message, visible))

    events = [
        e
        async for e in agent.run(
            model, toolset, ctx, [{"role": "user", "content": "hi"}], opts, record or rec
        )
    ]
    return events, recorded


@pytest.mark.parametrize("stream", [True, False])
async def test_text_answer(ctx: ToolContext, stream: bool) -> None:
    model = ScriptedModel(
        [
            Delta(content="Hel"),
            Delta(content="lo"),
            Delta(
                finish_reason="stop", usage={"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
            ),
        ]
    )
    events, recorded = await collect(model, Toolset([echo]), ctx, agent.RunOptions("m", stream=stream))
    done = events[-1]
    assert isinstance(done, agent.Done)
    assert done.message["content"] == "Hello" and done.finish_reason == "stop"
    assert recorded == [
        ({"role": "assistant", "content": "Hello"}, {"role": "assistant", "content": "Hello"})
    ]
    assert model.calls[0].tools and model.calls[0].tools[0]["function"]["name"] == "echo"


@pytest.mark.parametrize("stream", [True, False])
async def test_tool_round_then_answer_sums_usage(ctx: ToolContext, stream: bool) -> None:
    u = {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}
    model = ScriptedModel(
        [
            Delta(content="Looking. "),
            Delta(tool_calls=[call("echo", {"text": "pong"})]),
            Delta(finish_reason="tool_calls", usage=u),
        ],
        [Delta(content="It said pong."), Delta(finish_reason="stop", usage=u)],
    )
    events, recorded = await collect(model, Toolset([echo]), ctx, agent.RunOptions("m", stream=stream))
    calls = [e for e in events if isinstance(e, agent.ToolCall)]
    assert [(c.name, json.loads(c.arguments)) for c in calls] == [("echo", {"text": "pong"})]
    done = events[-1]
    assert isinstance(done, agent.Done) and done.finish_reason == "stop"
    assert done.message["content"] == "Looking. \n\nIt said pong."  # a blank line between the rounds
    if stream:
        assert done.usage == {"prompt_tokens": 20, "completion_tokens": 10, "total_tokens": 30}
    second = model.calls[1].messages
    assert second[-1]["role"] == "tool" and second[-1]["content"] == "pong"
    assert second[-2]["tool_calls"][0]["function"]["name"] == "echo"
    # stored once each: the call (visible as its text), the internal result (invisible), the answer
    assert [r[0]["role"] for r in recorded] == ["assistant", "tool", "assistant"]
    assert recorded[0][1] == {"role": "assistant", "content": "Looking. "}
    assert recorded[1][1] is None
    # the model's own message has its own text; the client saw it after the blank line
    assert recorded[2] == (
        {"role": "assistant", "content": "It said pong."},
        {"role": "assistant", "content": "\n\nIt said pong."},
    )
    texts = [(e.text, e.round) for e in events if isinstance(e, agent.Text)]
    assert texts == [("Looking. ", 0), ("It said pong.", 1)]  # the separator is the renderer's


async def test_no_separator_before_the_first_text(ctx: ToolContext) -> None:
    """A silent tool round (no text) then the answer: nothing went before it, so no blank line."""
    model = ScriptedModel(
        [Delta(tool_calls=[call("echo", {"text": "a"})])],
        [Delta(content="Between. "), Delta(tool_calls=[call("echo", {"text": "b"})])],
        [Delta(tool_calls=[call("echo", {"text": "c"})])],
        [Delta(content="Done.")],
    )
    events, recorded = await collect(model, Toolset([echo]), ctx, agent.RunOptions("m"))
    done = events[-1]
    assert isinstance(done, agent.Done) and done.message["content"] == "Between. \n\nDone."
    shown = [v["content"] for _, v in recorded if v is not None]
    assert "".join(shown) == "Between. \n\nDone."  # the visible conversation: one message, as seen


async def test_partial_answer_of_a_later_round_is_kept_as_seen(ctx: ToolContext) -> None:
    model = ScriptedModel(
        [Delta(content="First."), Delta(tool_calls=[call("echo", {"text": "a"})])],
        [Delta(content="half an ans"), ProviderError("reset")],  # type: ignore[list-item]
    )
    recorded: list[Any] = []

    async def rec(message: dict[str, Any], *, visible: Any = ...) -> None:
        recorded.append((message, visible))

    with pytest.raises(ProviderError):
        await collect(model, Toolset([echo]), ctx, agent.RunOptions("m"), record=rec)
    assert recorded[-1] == (
        {"role": "assistant", "content": "half an ans"},
        {"role": "assistant", "content": "\n\nhalf an ans"},
    )


@pytest.mark.parametrize(
    ("choice", "later"),
    [
        ("required", "auto"),
        ({"type": "function", "function": {"name": "echo"}}, "auto"),
        (
            {"type": "allowed_tools", "allowed_tools": {"mode": "required", "tools": [{"type": "function"}]}},
            {"type": "allowed_tools", "allowed_tools": {"mode": "auto", "tools": [{"type": "function"}]}},
        ),
        ({"type": "allowed_tools", "allowed_tools": {"mode": "auto", "tools": []}}, None),
        ("auto", "auto"),
        ("none", "none"),
        (None, None),
    ],
)
async def test_a_forcing_tool_choice_binds_the_first_call_only(
    ctx: ToolContext, choice: Any, later: Any
) -> None:
    """An obedient model calls a tool whenever tool_choice forces one: re-sent every round, it would call
    tools until max_iterations. Later rounds get ``auto`` (the same tools, for allowed_tools)."""
    if later is None:
        later = choice
    model = ScriptedModel(
        [Delta(tool_calls=[call("echo", {"text": "a"})])],
        [Delta(tool_calls=[call("echo", {"text": "b"})])],
        [Delta(content="done")],
    )
    await collect(model, Toolset([echo]), ctx, agent.RunOptions("m", tool_choice=choice))
    assert [c.tool_choice for c in model.calls] == [choice, later, later]
    assert agent.later_tool_choice(choice) == later


async def test_calls_of_one_round_run_concurrently(ctx: ToolContext) -> None:
    a_started, b_started = asyncio.Event(), asyncio.Event()

    @tool
    async def wait_a() -> str:
        """A."""
        a_started.set()
        await asyncio.wait_for(b_started.wait(), 5)
        return "a"

    @tool
    async def wait_b() -> str:
        """B."""
        b_started.set()
        await asyncio.wait_for(a_started.wait(), 5)
        return "b"

    model = ScriptedModel(
        [Delta(tool_calls=[call("wait_a", {}, 0), call("wait_b", {}, 1)]), Delta(finish_reason="tool_calls")]
    )
    events, _ = await collect(model, Toolset([wait_a, wait_b]), ctx, agent.RunOptions("m"))
    results = [m["content"] for m in model.calls[1].messages if m["role"] == "tool"]
    assert results == ["a", "b"]


async def test_tool_failure_is_a_result_not_an_error(ctx: ToolContext) -> None:
    model = ScriptedModel([Delta(tool_calls=[call("explode", {})])], [Delta(content="sorry")])
    events, _ = await collect(model, Toolset([explode]), ctx, agent.RunOptions("m"))
    result = model.calls[1].messages[-1]
    assert "boom" in json.loads(result["content"])["error"]
    assert isinstance(events[-1], agent.Done) and events[-1].message["content"] == "sorry"


async def test_max_iterations_then_final_answer_without_tools(ctx: ToolContext) -> None:
    looping = [[Delta(tool_calls=[call("echo", {"text": str(i)})])] for i in range(5)]
    model = ScriptedModel(*looping, [Delta(content="final")])
    events, _ = await collect(model, Toolset([echo]), ctx, agent.RunOptions("m", max_iterations=2))
    assert len(model.calls) == 3
    assert model.calls[0].tool_choice is None and model.calls[2].tool_choice == "none"
    done = events[-1]
    assert isinstance(done, agent.Done)


async def test_client_tools_are_returned_to_the_client(ctx: ToolContext) -> None:
    client_tool = {"type": "function", "function": {"name": "open_tab", "parameters": {"type": "object"}}}
    model = ScriptedModel(
        [Delta(tool_calls=[call("echo", {"text": "x"}, 0), call("open_tab", {"url": "u"}, 1)])]
    )
    events, recorded = await collect(
        model, Toolset([echo]), ctx, agent.RunOptions("m", client_tools=[client_tool])
    )
    done = events[-1]
    assert isinstance(done, agent.Done) and done.finish_reason == "tool_calls"
    assert [c["function"]["name"] for c in done.message["tool_calls"]] == ["open_tab"]
    assert {t["function"]["name"] for t in model.calls[0].tools or []} == {"echo", "open_tab"}
    # the internal call ran and was stored; the visible projection holds only the client's call
    assert recorded[0][1]["tool_calls"][0]["function"]["name"] == "open_tab"
    assert recorded[1][0]["role"] == "tool"


async def test_context_window_drops_oldest_turns(ctx: ToolContext) -> None:
    model = ScriptedModel(ContextWindowExceeded("too long"), [Delta(content="fits")])
    history = [
        {"role": "system", "content": "sys"},
        {"role": "user", "content": "old"},
        {"role": "assistant", "content": "old answer"},
        {"role": "user", "content": "new"},
    ]
    events = [e async for e in agent.run(model, Toolset(), ctx, history, agent.RunOptions("m"))]
    assert isinstance(events[-1], agent.Done)
    assert [m["content"] for m in model.calls[1].messages] == ["sys", "new"]


async def test_context_window_with_nothing_left_to_drop_fails(ctx: ToolContext) -> None:
    model = ScriptedModel(ContextWindowExceeded("too long"))
    with pytest.raises(ContextWindowExceeded):
        await collect(model, Toolset(), ctx, agent.RunOptions("m"))


async def test_keepalive_while_tools_run(ctx: ToolContext, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(agent, "KEEPALIVE_S", 0.02)

    @tool
    async def slow() -> str:
        """Slow."""
        await asyncio.sleep(0.2)
        return "done"

    model = ScriptedModel([Delta(tool_calls=[call("slow", {})])], [Delta(content="ok")])
    events, _ = await collect(model, Toolset([slow]), ctx, agent.RunOptions("m"))
    assert any(isinstance(e, agent.KeepAlive) for e in events)


async def test_partial_answer_is_kept_when_the_provider_fails(ctx: ToolContext) -> None:
    model = ScriptedModel([Delta(content="half an ans"), ProviderError("reset")])  # type: ignore[list-item]
    recorded: list[Any] = []

    async def rec(message: dict[str, Any], *, visible: Any = ...) -> None:
        recorded.append(message)

    with pytest.raises(ProviderError):
        await collect(model, Toolset(), ctx, agent.RunOptions("m"), record=rec)
    assert recorded == [{"role": "assistant", "content": "half an ans"}]


async def test_system_prompt_goes_first(ctx: ToolContext) -> None:
    model = ScriptedModel([Delta(content="ok")])
    await collect(model, Toolset(), ctx, agent.RunOptions("m", system_prompt="Be brief."))
    assert model.calls[0].messages[0] == {"role": "system", "content": "Be brief."}


def test_drop_oldest_turn_keeps_system_and_latest() -> None:
    msgs = [
        {"role": "system", "content": "s"},
        {"role": "user", "content": "1"},
        {"role": "assistant", "content": "a1", "tool_calls": []},
        {"role": "tool", "content": "r"},
        {"role": "user", "content": "2"},
        {"role": "user", "content": "3"},
    ]
    once = agent.drop_oldest_turn(msgs)
    assert once is not None and [m["content"] for m in once] == ["s", "2", "3"]
    twice = agent.drop_oldest_turn(once)
    assert twice is not None and [m["content"] for m in twice] == ["s", "3"]
    assert agent.drop_oldest_turn(twice) is None


def lp(*tokens: str) -> dict[str, Any]:
    return {
        "content": [{"token": t, "logprob": -0.5, "bytes": list(t.encode())} for t in tokens],
        "refusal": None,
    }


async def test_logprobs_ride_on_the_text_and_the_final_rounds_come_back(ctx: ToolContext) -> None:
    model = ScriptedModel(
        [Delta(content="Look", logprobs=lp("Look")), Delta(tool_calls=[call("echo", {"text": "a"})])],
        [
            Delta(content="It ", logprobs=lp("It", " ")),
            Delta(logprobs=lp("\xe2")),  # a token that is no text yet
            Delta(content="is.", logprobs=lp("is.")),
            Delta(finish_reason="stop"),
        ],
    )
    events, _ = await collect(model, Toolset([echo]), ctx, agent.RunOptions("m"))
    texts = [(e.text, e.round, e.logprobs) for e in events if isinstance(e, agent.Text)]
    assert texts == [
        ("Look", 0, lp("Look")),
        ("It ", 1, lp("It", " ")),
        ("", 1, lp("\xe2")),
        ("is.", 1, lp("is.")),
    ]
    done = events[-1]
    assert isinstance(done, agent.Done) and done.message["content"] == "Look\n\nIt is."
    assert done.logprobs == lp("It", " ", "\xe2", "is.")  # the final round's, joined


async def test_logprobs_of_a_whole_model_answer(ctx: ToolContext) -> None:
    class Whole(ScriptedModel):
        async def complete(self, c: ModelCall) -> ModelResult:
            result = await super().complete(c)
            return ModelResult(result.message, result.finish_reason, result.usage, lp("Hi"))

    events, _ = await collect(
        Whole([Delta(content="Hi")]), Toolset(), ctx, agent.RunOptions("m", stream=False)
    )
    assert [(e.text, e.logprobs) for e in events if isinstance(e, agent.Text)] == [("Hi", lp("Hi"))]
    done = events[-1]
    assert isinstance(done, agent.Done) and done.logprobs == lp("Hi")
    plain, _ = await collect(ScriptedModel([Delta(content="Hi")]), Toolset(), ctx, agent.RunOptions("m"))
    assert isinstance(plain[-1], agent.Done) and plain[-1].logprobs is None
