"""The agent loop: model → tools → model, as a stream of events.

It knows nothing of HTTP or Quart: it talks to a ``ModelClient`` and a ``Toolset`` and reports what
happens as events, which the server turns into chunks or a whole completion. Every message it adds to
the conversation goes to ``record`` as soon as it exists (the session store writes it at once).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from sorat_daemon import wire
from sorat_daemon.errors import ContextWindowExceeded
from sorat_daemon.providers.completion import ToolCallAccumulator
from sorat_daemon.tools.registry import ToolContext, Toolset
from sorat_daemon.types import JSON, Message, ModelCall, ModelClient, ToolCallDelta

KEEPALIVE_S = 15.0
ROUND_SEPARATOR = "\n\n"  # between the texts of successive model rounds: "…the time.\n\nNow the weather"

# record(message, visible): visible is what the client saw of the message (None: nothing).
Recorder = Callable[..., Awaitable[None]]


@dataclass(slots=True)
class Text:
    text: str  # "" only for logprobs of a token that is no text yet
    round: int = 0  # the model call it came from: 0, 1, 2… (a tool round in between)
    logprobs: JSON | None = None  # the provider's logprobs of this text, when the client asked for them


@dataclass(slots=True)
class Reasoning:
    text: str
    round: int = 0


@dataclass(slots=True)
class ToolCall:
    """An internal tool call about to run (shown to the client per ``tool_events``)."""

    id: str
    name: str
    arguments: str


@dataclass(slots=True)
class ToolResult:
    """An internal tool call finished: what the model reads of it."""

    id: str
    name: str
    arguments: str
    output: str
    duration_ms: float


@dataclass(slots=True)
class KeepAlive:
    """Tools are still running; nothing to say yet."""


@dataclass(slots=True)
class Done:
    finish_reason: str  # stop | length | content_filter | tool_calls (client-declared tools only)
    usage: JSON | None
    message: Message  # what the client gets as choices[0].message in a whole answer
    last_usage: JSON | None = None  # the last model call's own usage: its prompt is what the context holds
    logprobs: JSON | None = None  # the last model call's logprobs, joined: a whole answer's


Event = Text | Reasoning | ToolCall | ToolResult | KeepAlive | Done


@dataclass(slots=True)
class RunOptions:
    model: str
    stream: bool = True
    params: JSON = field(default_factory=dict)
    client_tools: list[JSON] = field(default_factory=list)
    tool_choice: Any = None
    max_iterations: int = 30
    system_prompt: str = ""


async def _nothing(message: Message, *, visible: Any = ...) -> None:
    return None


def drop_oldest_turn(messages: list[Message]) -> list[Message] | None:
    """Drop the oldest turn (a user message and what answered it), keeping system messages and the
    latest turn; None when only the latest turn is left."""
    users = [i for i, m in enumerate(messages) if m.get("role") == "user"]
    body = [i for i, m in enumerate(messages) if m.get("role") not in ("system", "developer")]
    if len(users) < 2 or not body:
        return None
    start = body[0]
    end = next(i for i in users if i > start)
    return messages[:start] + messages[end:]


def later_tool_choice(tool_choice: Any) -> Any:
    """The tool_choice of the calls after the first: one that forces a call (``required``, a named tool,
    ``allowed_tools`` in ``required`` mode) becomes ``auto``, else an obedient model would call tools
    until ``max_iterations``; any other choice stays."""
    if tool_choice == "required":
        return "auto"
    if not isinstance(tool_choice, dict):
        return tool_choice
    allowed = tool_choice.get("allowed_tools")
    if tool_choice.get("type") == "allowed_tools" and isinstance(allowed, dict):
        if allowed.get("mode") != "required":
            return tool_choice
        return {**tool_choice, "allowed_tools": {**allowed, "mode": "auto"}}  # the same tools, unforced
    return "auto"  # a named function (or custom) tool


def _client_names(tools: list[JSON]) -> set[str]:
    return {t["function"]["name"] for t in tools if isinstance(t.get("function"), dict)}


async def run(
    model: ModelClient,
    toolset: Toolset,
    ctx: ToolContext,
    conversation: list[Message],
    opts: RunOptions,
    record: Recorder = _nothing,
) -> AsyncGenerator[Event, None]:
    """Run one request to its final answer, yielding events as they happen."""
    messages = list(conversation)
    if opts.system_prompt:
        first = messages[0] if messages else {}
        if first.get("role") in ("system", "developer") and isinstance(first.get("content"), str):
            # one leading system message: many chat templates reject a second one
            messages[0] = {**first, "content": f"{opts.system_prompt}\n\n{first['content']}"}
        else:
            messages.insert(0, {"role": "system", "content": opts.system_prompt})
    client_names = _client_names(opts.client_tools)
    internal_specs = [s for s in toolset.specs() if s["function"]["name"] not in client_names]
    tools = internal_specs + opts.client_tools
    usage: JSON | None = None
    rounds = 0
    said: list[str] = []  # each round's text the client saw, for the final message of a whole answer
    reasoning_said: list[str] = []
    while True:
        last = rounds >= opts.max_iterations
        tool_choice = opts.tool_choice if rounds == 0 else later_tool_choice(opts.tool_choice)
        if last and tools:
            tool_choice = "none"
        sep = ROUND_SEPARATOR if said else ""  # before this round's text, as the client sees it
        call = ModelCall(opts.model, messages, tools or None, tool_choice, opts.params)
        r = _Round()
        try:
            while True:
                try:
                    calling = _call_model(model, call, opts.stream, r, rounds)
                    async with contextlib.aclosing(calling) as events:
                        async for event in events:
                            yield event
                    break
                except ContextWindowExceeded:
                    shorter = None if r.answered else drop_oldest_turn(call.messages)
                    if shorter is None:
                        raise
                    call = ModelCall(opts.model, shorter, call.tools, call.tool_choice, opts.params)
        except BaseException:
            if r.text:  # what was said is kept, even when the provider or the client went away
                partial = {"role": "assistant", "content": "".join(r.text)}
                shown = {"role": "assistant", "content": sep + partial["content"]} if sep else partial
                await asyncio.shield(record(partial, visible=shown))
            raise
        usage = wire.add_usage(usage, r.usage) if r.usage or usage else None
        text, reasoning, finish = r.text, r.reasoning, r.finish
        acc = r.acc
        reasoning_said.extend(reasoning)
        calls = acc.calls()
        content = "".join(text)
        if content:
            said.append(content)
        shown_content = sep + content if content else content
        if not calls or last:
            final: Message = {"role": "assistant", "content": content}
            if reasoning:
                final["reasoning_content"] = "".join(reasoning)
            await record(final, visible={**final, "content": shown_content} if sep and content else final)
            whole: Message = {"role": "assistant", "content": ROUND_SEPARATOR.join(said)}
            if reasoning_said:
                whole["reasoning_content"] = "".join(reasoning_said)
            yield Done(
                "stop" if finish == "tool_calls" else finish, usage, whole, r.usage, r.joined_logprobs()
            )
            return

        assistant: Message = {"role": "assistant", "content": content or None, "tool_calls": calls}
        if reasoning:
            assistant["reasoning_content"] = "".join(reasoning)
        internal = [c for c in calls if c["function"]["name"] not in client_names]
        client = [c for c in calls if c["function"]["name"] in client_names]
        if client:
            visible: Message | None = {
                "role": "assistant",
                "content": shown_content or None,
                "tool_calls": client,
            }
        else:
            visible = {"role": "assistant", "content": shown_content} if content else None
        await record(assistant, visible=visible)
        messages.append(assistant)

        for c in internal:
            yield ToolCall(c["id"], c["function"]["name"], c["function"]["arguments"])
        async for event in _run_tools(toolset, ctx, internal, messages, record):
            yield event

        if client:
            whole = {"role": "assistant", "content": ROUND_SEPARATOR.join(said) or None, "tool_calls": client}
            yield Done("tool_calls", usage, whole, r.usage, r.joined_logprobs())
            return
        rounds += 1


@dataclass(slots=True)
class _Round:
    """What one model call said."""

    text: list[str] = field(default_factory=list)
    reasoning: list[str] = field(default_factory=list)
    acc: ToolCallAccumulator = field(default_factory=ToolCallAccumulator)
    finish: str = "stop"
    usage: JSON | None = None
    answered: bool = False
    logprobs: list[JSON] = field(default_factory=list)

    def joined_logprobs(self) -> JSON | None:
        """This call's logprobs as one object: each list (``content``, ``refusal``) in order."""
        if not self.logprobs:
            return None
        if len(self.logprobs) == 1:
            return self.logprobs[0]
        out: JSON = {}
        for part in self.logprobs:
            for key, value in part.items():
                if isinstance(value, list):
                    out[key] = [*(out.get(key) or []), *value]
                elif out.get(key) is None:
                    out[key] = value
        return out


async def _call_model(
    model: ModelClient, call: ModelCall, stream: bool, r: _Round, n: int
) -> AsyncGenerator[Event, None]:
    if not stream:
        result = await model.complete(call)
        r.answered = True
        msg = result.message
        if result.logprobs:
            r.logprobs.append(result.logprobs)
        if msg.get("content"):
            r.text.append(msg["content"])
            yield Text(msg["content"], n, result.logprobs)
        if msg.get("reasoning_content"):
            r.reasoning.append(msg["reasoning_content"])
            yield Reasoning(msg["reasoning_content"], n)
        if msg.get("tool_calls"):
            r.acc.add(_as_deltas(msg["tool_calls"]))
        r.finish, r.usage = result.finish_reason, result.usage
        return
    async with contextlib.aclosing(model.stream(call)) as deltas:  # type: ignore[type-var]
        async for d in deltas:
            r.answered = True
            if d.logprobs is not None:
                r.logprobs.append(d.logprobs)
                yield Text(d.content or "", n, d.logprobs)
                if d.content:
                    r.text.append(d.content)
            elif d.content:
                r.text.append(d.content)
                yield Text(d.content, n)
            if d.reasoning:
                r.reasoning.append(d.reasoning)
                yield Reasoning(d.reasoning, n)
            if d.tool_calls:
                r.acc.add(d.tool_calls)
            if d.finish_reason:
                r.finish = d.finish_reason
            if d.usage:
                r.usage = d.usage  # the last one seen: some providers repeat it cumulatively


def _as_deltas(tool_calls: list[JSON]) -> list[ToolCallDelta]:
    out = []
    for i, c in enumerate(tool_calls):
        fn = c.get("function") or {}
        extra = {k: v for k, v in c.items() if k not in ("id", "type", "function", "index")} or None
        out.append(ToolCallDelta(i, c.get("id"), fn.get("name"), fn.get("arguments") or "", extra))
    return out


def _stamp(ended: dict[int, float], i: int, _task: object) -> None:
    ended[i] = time.monotonic()


async def _run_tools(
    toolset: Toolset, ctx: ToolContext, calls: list[JSON], messages: list[Message], record: Recorder
) -> AsyncIterator[Event]:
    """Run one round's internal calls concurrently; results go to the conversation in call order."""
    if not calls:
        return
    started = time.monotonic()
    ended: dict[int, float] = {}
    tasks = []
    for i, c in enumerate(calls):
        task = asyncio.ensure_future(toolset.call(c["function"]["name"], c["function"]["arguments"], ctx))
        task.add_done_callback(functools.partial(_stamp, ended, i))
        tasks.append(task)
    try:
        pending = set(tasks)
        while pending:
            _, pending = await asyncio.wait(pending, timeout=KEEPALIVE_S)
            if pending:
                yield KeepAlive()
    finally:
        unfinished = [t for t in tasks if not t.done()]
        for t in unfinished:
            t.cancel()  # the client went away: stop the tools (and their processes) before leaving
        if unfinished:
            await asyncio.wait(unfinished, timeout=5)
    for i, (c, t) in enumerate(zip(calls, tasks, strict=True)):
        output = t.result()
        result = {"role": "tool", "tool_call_id": c["id"], "content": output}
        await record(result, visible=None)
        messages.append(result)
        fn = c["function"]
        ms = (ended.get(i, started) - started) * 1000
        yield ToolResult(c["id"], fn["name"], fn["arguments"], output, ms)
