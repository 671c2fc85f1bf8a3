"""Whole answers and the pieces of streamed ones, in sorat's terms. Pure: no I/O.

``parse_completion`` reads a provider's whole ``chat.completion``; ``coalesce`` merges the deltas of one
read; ``ToolCallAccumulator`` joins streamed tool-call fragments into complete calls.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import orjson

from sorat_daemon import errors
from sorat_daemon.providers.normalize import (
    logprobs_of,
    map_finish,
    normalize_usage,
    provider_failure,
    reasoning_of,
)
from sorat_daemon.types import JSON, Delta, Message, ModelResult, ToolCallDelta
from sorat_daemon.wire import new_call_id


def _tool_call_dict(call: Any) -> JSON | None:
    if not isinstance(call, dict):
        return None
    fn = call.get("function")
    if not isinstance(fn, dict):
        fn = {}
    args = fn.get("arguments")
    if args is None or args == "":
        args = "{}"
    elif not isinstance(args, str):
        args = orjson.dumps(args).decode()
    out: JSON = {"id": call.get("id") or new_call_id(), "type": "function"}
    out["function"] = {"name": fn.get("name") or "", "arguments": args}
    for key, value in call.items():
        out.setdefault(key, value)  # provider round-trip fields (extra_content…)
    out.pop("index", None)
    return out


def parse_completion(obj: Any, source: str = "The provider") -> ModelResult:
    """A provider's whole chat.completion → ModelResult, its message normalised (reasoning in
    ``reasoning_content``, tool calls complete with ids, logprobs kept); raises for an error body or a
    missing answer."""
    if not isinstance(obj, dict):
        raise errors.ProviderError(f"{source} answered with JSON that is not a chat completion")
    if obj.get("error"):
        raise provider_failure(obj["error"], source)
    choices = obj.get("choices")
    choice = choices[0] if isinstance(choices, list) and choices else None
    msg = choice.get("message") if isinstance(choice, dict) else None
    if not isinstance(msg, dict):
        raise errors.ProviderError(f"{source} answered without a message (no choices[0].message)")
    if choice.get("finish_reason") == "error":  # type: ignore[union-attr]
        raise errors.ProviderError(f"{source} ended the answer with an error")
    content = msg.get("content")
    if isinstance(content, list):  # some servers answer with content parts
        content = "".join(p.get("text", "") for p in content if isinstance(p, dict)) or None
    elif content is not None and not isinstance(content, str):
        content = str(content)
    reasoning = reasoning_of(msg)
    if not content and isinstance(msg.get("refusal"), str):
        content = msg["refusal"]
    message: Message = {"role": "assistant", "content": content}
    if reasoning:
        message["reasoning_content"] = reasoning
    raw_calls = msg.get("tool_calls")
    calls = [c for c in map(_tool_call_dict, raw_calls) if c] if isinstance(raw_calls, list) else []
    if calls:
        message["tool_calls"] = calls
    finish = map_finish(choice.get("finish_reason"), bool(calls))  # type: ignore[union-attr]
    usage = normalize_usage(obj.get("usage"))
    if usage is None and isinstance(obj.get("x_groq"), dict):
        usage = normalize_usage(obj["x_groq"].get("usage"))
    logprobs = logprobs_of(choice.get("logprobs"))  # type: ignore[union-attr]
    return ModelResult(message, finish, usage, logprobs)


def coalesce(deltas: Iterable[Delta | None]) -> list[Delta]:
    """Merge neighbouring deltas that carry only text of the same kind (content, or reasoning), keeping
    their order; anything else (tool calls, finish, usage, logprobs) stays a delta of its own."""
    out: list[Delta] = []
    last: Delta | None = None
    for d in deltas:
        if d is None:
            continue
        plain = d.tool_calls is None and d.finish_reason is None and d.usage is None and d.logprobs is None
        if plain and last is not None:
            if (
                d.reasoning is None
                and last.reasoning is None
                and d.content is not None
                and last.content is not None
            ):
                last.content += d.content
                continue
            if (
                d.content is None
                and last.content is None
                and d.reasoning is not None
                and last.reasoning is not None
            ):
                last.reasoning += d.reasoning
                continue
        out.append(d)
        last = d if plain else None
    return out


class ToolCallAccumulator:
    """Normalised ToolCallDeltas → complete OpenAI tool calls, extra fields (Gemini's extra_content) kept.
    A known id or name is never replaced; ids are made up where a provider gave none."""

    __slots__ = ("_calls",)

    def __init__(self) -> None:
        self._calls: list[dict[str, Any]] = []

    def __len__(self) -> int:
        return len(self._calls)

    def add(self, deltas: Iterable[ToolCallDelta]) -> None:
        calls = self._calls
        for d in deltas:
            while len(calls) <= d.index:
                calls.append({"id": None, "name": None, "args": [], "extra": None})
            c = calls[d.index]
            if d.id and not c["id"]:
                c["id"] = d.id
            if d.name and not c["name"]:
                c["name"] = d.name
            if d.arguments:
                c["args"].append(d.arguments)
            if d.extra:
                c["extra"] = {**(c["extra"] or {}), **d.extra}

    def calls(self) -> list[JSON]:
        out = []
        for c in self._calls:
            if c["name"] is None and not c["args"] and c["id"] is None:
                continue  # an index nobody filled
            if not c["id"]:
                c["id"] = new_call_id()  # once: calls() stays stable
            args = "".join(c["args"]) or "{}"
            call: JSON = {
                "id": c["id"],
                "type": "function",
                "function": {"name": c["name"] or "", "arguments": args},
            }
            for key, value in (c["extra"] or {}).items():
                call.setdefault(key, value)
            out.append(call)
        return out
