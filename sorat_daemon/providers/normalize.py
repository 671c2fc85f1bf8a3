"""Each provider's dialect → sorat's terms (UPSTREAMS.md's checklist, items 1-20). Pure: no I/O.

``DeltaNormalizer`` turns one stream's chunks into ``types.Delta``s. ``map_finish``, ``normalize_usage``,
``reasoning_of`` and ``logprobs_of`` read finish reasons, usages, reasoning and logprobs wherever a
provider puts them; ``provider_failure``, ``error_fields``, ``error_text`` and ``is_context_window`` read
its errors.
"""

from __future__ import annotations

from typing import Any

import orjson

from sorat_daemon import errors, wire
from sorat_daemon.providers.sse import Event
from sorat_daemon.types import JSON, Delta, ToolCallDelta

_FINISH = {
    "stop": "stop",
    "length": "length",
    "tool_calls": "tool_calls",
    "content_filter": "content_filter",
    "eos": "stop",
    "eos_token": "stop",
    "end": "stop",
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "model_length": "length",
    "tool_call": "tool_calls",
    "tool_use": "tool_calls",
    "function_call": "tool_calls",
}
_CONTEXT_MARKERS = (
    "context_length_exceeded",
    "context length",
    "context_length",
    "maximum context",
    "context window",
    "context_window",
    "exceed_context_size",
    "exceeds the context",
    "context size",
    "too many tokens",
    "prompt is too long",
    "input is too long",
    "prompt too long",
    "reduce the length of the messages",
    "maximum prompt length",
)
_TOOL_CALL_KEYS = frozenset({"index", "id", "type", "function"})


def map_finish(reason: Any, tool_calls: bool) -> str:
    """A provider's finish_reason in OpenAI's vocabulary; tool calls made turn any stop into tool_calls."""
    mapped = _FINISH.get(reason, "stop") if isinstance(reason, str) else "stop"
    if tool_calls and mapped == "stop":
        return "tool_calls"
    return mapped


def error_text(err: Any, _depth: int = 0) -> str:
    """The human message of a provider's error object (OpenAI's, OpenRouter's, FastAPI's, a bare string)."""
    if _depth > 16:  # orjson reads 1024 levels: a hostile body must not blow the stack
        return "an error object nested too deeply"
    if isinstance(err, dict):
        inner = err.get("error")
        if inner is not None and inner is not err:
            return error_text(inner, _depth + 1)
        for key in ("message", "detail", "msg"):
            if err.get(key):
                return error_text(err[key], _depth + 1)
        try:
            return orjson.dumps(err).decode()
        except TypeError:  # nested beyond orjson's 255 levels for writing
            return "an error object nested too deeply"
    if isinstance(err, list):
        return "; ".join(error_text(e, _depth + 1) for e in err)
    return str(err)


def is_context_window(*texts: Any) -> bool:
    """Whether an error (message, type or code) says the prompt does not fit the model's context window."""
    low = " ".join(str(t) for t in texts if t and isinstance(t, str | int | float)).lower()
    return any(marker in low for marker in _CONTEXT_MARKERS)


def provider_failure(err: Any, source: str) -> errors.ProviderError:
    """The exception for an error a provider reported inside a 200 answer."""
    message = error_text(err)
    extra = [err.get("type"), err.get("code")] if isinstance(err, dict) else []
    if isinstance(err, dict) and isinstance(err.get("error"), dict):
        extra += [err["error"].get("type"), err["error"].get("code")]
    if is_context_window(message, *extra):
        return errors.ContextWindowExceeded(message, code="context_length_exceeded")
    return errors.ProviderError(f"{source} reported an error: {message}")


def error_fields(raw: bytes) -> tuple[str, Any, Any, Any]:
    """message, type, code, param of an HTTP error body, whatever its shape (JSON or not)."""
    try:
        obj = wire.loads(raw)
    except ValueError:
        obj = None
    if isinstance(obj, dict | list) and obj:
        inner = obj.get("error") if isinstance(obj, dict) else None
        fields = inner if isinstance(inner, dict) else obj if isinstance(obj, dict) else {}
        return error_text(obj), fields.get("type"), fields.get("code"), fields.get("param")
    text = raw.decode("utf-8", "replace")
    if "<html" in text[:500].lower() or "<!doctype" in text[:500].lower():
        return "an HTML page instead of an API answer", None, None, None
    return " ".join(text.split())[:300] or "no details", None, None, None


def normalize_usage(usage: Any) -> JSON | None:
    """Only the token counts of a provider's usage (cost, queue_time… dropped); total filled in."""
    if not isinstance(usage, dict):
        return None
    out: JSON = {}
    for key, value in usage.items():
        if isinstance(value, bool):
            continue
        if isinstance(value, int) and key.endswith("_tokens"):
            out[key] = value
        elif isinstance(value, dict) and key.endswith("_tokens_details"):
            details = {k: v for k, v in value.items() if isinstance(v, int) and not isinstance(v, bool)}
            if details:
                out[key] = details
    if not out:
        return None
    out.setdefault("prompt_tokens", 0)
    out.setdefault("completion_tokens", 0)
    out.setdefault("total_tokens", out["prompt_tokens"] + out["completion_tokens"])
    return out


def reasoning_of(obj: dict[str, Any]) -> str | None:
    """Reasoning from any field a provider uses, in a delta or a message."""
    for key in ("reasoning_content", "reasoning"):
        value = obj.get(key)
        if isinstance(value, str) and value:
            return value
    details = obj.get("reasoning_details")
    if isinstance(details, list) and details:
        texts = []
        for d in details:
            if isinstance(d, dict):
                t = d.get("text") or d.get("summary")
                if isinstance(t, str):
                    texts.append(t)
        return "".join(texts) or None
    return None


def logprobs_of(obj: Any) -> JSON | None:
    """A choice's ``logprobs`` object as the provider sent it, or None when it says nothing
    (null, not an object, or every list in it null or empty) or could not be sent on."""
    if not isinstance(obj, dict) or not any(obj.values()):
        return None
    try:  # orjson reads 1024 levels of nesting but writes only 255: the client must get valid JSON
        orjson.dumps(obj)
    except TypeError:
        return None
    return obj


def _google_thought(obj: dict[str, Any]) -> Any:
    extra = obj.get("extra_content")
    if isinstance(extra, dict):
        google = extra.get("google")
        if isinstance(google, dict):
            return google.get("thought")
    return None


class DeltaNormalizer:
    """One streamed response's chunks → ``Delta``s of content, reasoning, tool-call fragments and the
    provider's logprobs (each on the delta of the chunk that carried them).

    ``feed``/``event`` return a Delta or None and raise errors.ProviderError for an error the provider
    reports mid-stream. Finish reason and usage are held back: ``final()`` gives them in one last Delta,
    so a consumer sees each exactly once (usage may come cumulatively on every chunk, and the finish
    chunk may be followed by annotation or usage chunks).
    """

    __slots__ = (
        "source",
        "finish",
        "usage",
        "done",
        "produced",
        "junk",
        "_by_index",
        "_by_id",
        "_ids",
        "_named",
    )

    def __init__(self, source: str = "The provider") -> None:
        self.source = source
        self.finish: str | None = None  # the provider's first finish_reason, as sent
        self.usage: JSON | None = None  # the last usage seen
        self.done = False  # [DONE] seen
        self.produced = False  # any content, reasoning or tool call
        self.junk: bytes | None = None  # the first data payload that was not JSON, for error messages
        self._by_index: dict[int, int] = {}  # provider's index → ours
        self._by_id: dict[str, int] = {}
        self._ids: list[str | None] = []  # per call (our index): its id once known
        self._named: list[bool] = []

    @property
    def tool_calls(self) -> int:
        return len(self._ids)

    def event(self, ev: Event) -> Delta | None:
        if ev.comment:
            return None
        data = ev.data
        if data == b"[DONE]":
            self.done = True
            return None
        try:
            chunk = orjson.loads(data)
        except orjson.JSONDecodeError:
            if ev.event == "error":
                text = data.decode("utf-8", "replace")
                raise errors.ProviderError(f"{self.source} reported an error: {text}") from None
            if self.junk is None:
                self.junk = data[:300]
            return None
        if ev.event == "error" and isinstance(chunk, dict) and "error" not in chunk:
            raise provider_failure(chunk, self.source)
        return self.feed(chunk)

    def feed(self, chunk: Any) -> Delta | None:
        if not isinstance(chunk, dict):
            return None
        err = chunk.get("error")
        if err:
            raise provider_failure(err, self.source)
        if "usage" in chunk or "x_groq" in chunk:
            self._take_usage(chunk)
        choices = chunk.get("choices")
        if not choices or not isinstance(choices, list):
            return None
        choice = choices[0]
        if not isinstance(choice, dict):
            return None
        reason = choice.get("finish_reason")
        if reason is not None:
            if reason == "error":
                raise errors.ProviderError(f"{self.source} ended the answer with an error")
            if self.finish is None:
                self.finish = reason
        delta = choice.get("delta")
        logprobs = choice.get("logprobs")  # OpenAI sends null on every chunk unless asked
        if logprobs is not None:
            logprobs = logprobs_of(logprobs)
        if not delta or not isinstance(delta, dict):
            return None if logprobs is None else Delta(logprobs=logprobs)
        content = delta.get("content")
        if not isinstance(content, str) or not content:
            content = None
        reasoning = None
        if len(delta) > 1 or content is None:  # the common {"content": "..."} needs none of this
            reasoning = reasoning_of(delta)
            thought = _google_thought(delta)
            if thought is True and content:
                reasoning, content = (reasoning or "") + content, None
            elif isinstance(thought, str) and thought:
                reasoning = (reasoning or "") + thought
            refusal = delta.get("refusal")
            if isinstance(refusal, str) and refusal:
                content = (content or "") + refusal
            calls = delta.get("tool_calls")
            if calls and isinstance(calls, list):
                tcs = self._tool_calls(calls)
                if tcs:
                    self.produced = True
                    return Delta(content, reasoning, tcs, logprobs=logprobs)
        if content is None and reasoning is None:
            # a token that decodes to no text yet (half a UTF-8 character) still has its logprobs
            return None if logprobs is None else Delta(logprobs=logprobs)
        self.produced = True
        if logprobs is None:  # a keyword argument costs a third more on the path of every token
            return Delta(content, reasoning)
        return Delta(content, reasoning, logprobs=logprobs)

    def final(self) -> Delta:
        """The last Delta: finish_reason (mapped; "stop" when none came) and usage."""
        return Delta(finish_reason=map_finish(self.finish, bool(self._ids)), usage=self.usage)

    def _take_usage(self, chunk: dict[str, Any]) -> None:
        usage = normalize_usage(chunk.get("usage"))
        groq = chunk.get("x_groq")
        if usage is None and isinstance(groq, dict):
            usage = normalize_usage(groq.get("usage"))
        if usage is not None:
            self.usage = usage

    def _new_call(self) -> int:
        self._ids.append(None)
        self._named.append(False)
        return len(self._ids) - 1

    def _tool_calls(self, items: list[Any]) -> list[ToolCallDelta]:
        out = []
        for tc in items:
            if not isinstance(tc, dict):
                continue
            cid = tc.get("id") or None
            if cid is not None and not isinstance(cid, str):
                cid = str(cid)
            fn = tc.get("function")
            if not isinstance(fn, dict):
                fn = {}
            name = fn.get("name") or None
            args = fn.get("arguments")
            if args is None:
                args = ""
            elif not isinstance(args, str):
                args = orjson.dumps(args).decode()
            index = tc.get("index")
            if isinstance(index, int) and not isinstance(index, bool):
                i = self._by_index.get(index)
                if i is None or (cid and self._ids[i] and cid != self._ids[i]):
                    i = self._by_index[index] = self._new_call()
            elif cid and cid in self._by_id:
                i = self._by_id[cid]
            elif cid or name or not self._ids:
                i = self._new_call()
            else:  # an indexless fragment with neither id nor name continues the last call (Gemini)
                i = len(self._ids) - 1
            new_id = None
            if cid and self._ids[i] is None:
                self._ids[i] = new_id = cid
                self._by_id[cid] = i
            new_name = None
            if name and not self._named[i]:
                self._named[i] = True
                new_name = str(name)
            extra = (
                {k: v for k, v in tc.items() if k not in _TOOL_CALL_KEYS}
                if tc.keys() - _TOOL_CALL_KEYS
                else None
            )
            if new_id is None and new_name is None and not args and not extra:
                continue
            out.append(ToolCallDelta(i, new_id, new_name, args, extra))
        return out
