"""OpenAI's chat JSON, both ways. Pure: no I/O.

In: ``parse_chat_request`` checks a client's body. From providers: ``SSEDecoder`` splits a byte stream into
events whatever the framing, ``DeltaNormalizer`` turns each provider's chunk dialect into ``types.Delta``
(UPSTREAMS.md's checklist, items 1-20), ``parse_completion`` does the same for whole answers, and
``ToolCallAccumulator`` joins streamed tool-call fragments. Out: ``ChunkWriter`` frames sorat's own stream,
``completion`` builds a whole answer.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson

from sorat_daemon import errors
from sorat_daemon.types import JSON, Delta, Message, ModelResult, ToolCallDelta

ROLES = frozenset({"system", "developer", "user", "assistant", "tool"})
# Request fields that go to the provider as given; anything else a client sends is ignored.
PASSTHROUGH = (
    "temperature",
    "top_p",
    "max_tokens",
    "max_completion_tokens",
    "stop",
    "seed",
    "presence_penalty",
    "frequency_penalty",
    "response_format",
    "user",
    "parallel_tool_calls",
    "logit_bias",
    "reasoning_effort",
)
DONE = b"data: [DONE]\n\n"
KEEPALIVE = b": keep-alive\n\n"


def dumps(obj: Any) -> bytes:
    return orjson.dumps(obj)


def loads(data: bytes | str) -> Any:
    return orjson.loads(data)


def text_of(content: Any) -> str:
    """The text of a message's ``content``: a string, or the text parts of a list."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(p.get("text") or "") for p in content if isinstance(p, dict))
    return ""


_ids = random.Random()  # seeded from os.urandom; response and call ids are labels, not secrets


def new_id() -> str:
    return f"chatcmpl-{_ids.getrandbits(96):024x}"


def new_call_id() -> str:
    return f"call_{_ids.getrandbits(96):024x}"


# --- requests ----------------------------------------------------------------------------------------


@dataclass(slots=True)
class ChatRequest:
    messages: list[Message]
    model: str | None = None  # None or "" → the active model
    stream: bool = False
    include_usage: bool = False
    tools: list[JSON] = field(default_factory=list)  # declared by the client
    tool_choice: Any = None
    params: JSON = field(default_factory=dict)  # PASSTHROUGH fields the client set (not null)


def _bad(message: str, param: str | None) -> errors.RequestError:
    return errors.RequestError(message, param=param)


def _check_content(content: Any, where: str, required: bool) -> None:
    if content is None:
        if required:
            raise _bad(f"{where} is required", where)
        return
    if isinstance(content, str):
        return
    if not isinstance(content, list):
        raise _bad(f"{where} must be a string or an array of content parts", where)
    for j, part in enumerate(content):
        if not isinstance(part, dict) or not isinstance(part.get("type"), str):
            raise _bad(f"{where}[{j}] must be an object with a string 'type'", f"{where}[{j}]")


def _check_message(i: int, m: Any) -> None:
    where = f"messages[{i}]"
    if not isinstance(m, dict):
        raise _bad(f"{where} must be an object", where)
    role = m.get("role")
    if role not in ROLES:
        raise _bad(f"{where}.role must be one of {', '.join(sorted(ROLES))}, not {role!r}", f"{where}.role")
    _check_content(m.get("content"), f"{where}.content", required=role != "assistant")
    if role == "tool" and not isinstance(m.get("tool_call_id"), str):
        raise _bad(f"{where}.tool_call_id must be a string", f"{where}.tool_call_id")
    if role == "assistant" and m.get("tool_calls") is not None:
        calls = m["tool_calls"]
        if not isinstance(calls, list) or not all(
            isinstance(c, dict) and isinstance(c.get("function"), dict) for c in calls
        ):
            raise _bad(f"{where}.tool_calls must be an array of tool calls", f"{where}.tool_calls")
    if m.get("name") is not None and not isinstance(m["name"], str):
        raise _bad(f"{where}.name must be a string", f"{where}.name")


def _check_tools(tools: Any) -> list[JSON]:
    if tools is None:
        return []
    if not isinstance(tools, list):
        raise _bad("tools must be an array", "tools")
    for i, t in enumerate(tools):
        fn = t.get("function") if isinstance(t, dict) else None
        if not isinstance(t, dict) or t.get("type") != "function" or not isinstance(fn, dict):
            raise _bad(f"tools[{i}] must be {{'type': 'function', 'function': {{...}}}}", f"tools[{i}]")
        if not isinstance(fn.get("name"), str) or not fn["name"]:
            raise _bad(f"tools[{i}].function.name must be a non-empty string", f"tools[{i}].function.name")
        if fn.get("parameters") is not None and not isinstance(fn["parameters"], dict):
            raise _bad(f"tools[{i}].function.parameters must be an object", f"tools[{i}].function.parameters")
    return tools


def parse_chat_request(body: bytes) -> ChatRequest:
    """A client's POST /v1/chat/completions body, checked; errors.RequestError (400) names the bad field."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as e:
        raise _bad(f"The request body is not valid JSON: {e}", None) from None
    if not isinstance(data, dict):
        raise _bad("The request body must be a JSON object", None)
    messages = data.get("messages")
    if messages is None:
        raise _bad("Missing required parameter: 'messages'", "messages")
    if not isinstance(messages, list) or not messages:
        raise _bad("'messages' must be a non-empty array", "messages")
    for i, m in enumerate(messages):
        _check_message(i, m)
    model = data.get("model")
    if model is not None and not isinstance(model, str):
        raise _bad("'model' must be a string", "model")
    stream = data.get("stream")
    if stream is None:
        stream = False
    elif not isinstance(stream, bool):
        raise _bad("'stream' must be a boolean", "stream")
    options = data.get("stream_options")
    include_usage = False
    if options is not None:
        if not isinstance(options, dict):
            raise _bad("'stream_options' must be an object", "stream_options")
        flag = options.get("include_usage")
        if flag is not None and not isinstance(flag, bool):
            raise _bad("'stream_options.include_usage' must be a boolean", "stream_options.include_usage")
        include_usage = bool(flag) and stream
    tools = _check_tools(data.get("tools"))
    tool_choice = data.get("tool_choice")
    if tool_choice is not None and not isinstance(tool_choice, str | dict):
        raise _bad("'tool_choice' must be a string or an object", "tool_choice")
    n = data.get("n")
    if n is not None and n != 1:
        raise _bad("sorat returns one choice: 'n' must be 1", "n")
    params = {k: data[k] for k in PASSTHROUGH if data.get(k) is not None}
    try:  # orjson reads 1024 levels of nesting but writes only 255: refuse what could not be sent on
        orjson.dumps((messages, tools, tool_choice, params))
    except TypeError:
        raise _bad("The request is nested too deeply (more than 255 levels)", None) from None
    return ChatRequest(messages, model or None, stream, include_usage, tools, tool_choice, params)


# --- server-sent events ------------------------------------------------------------------------------


@dataclass(slots=True)
class Event:
    data: bytes = b""  # the data lines, joined with \n
    event: str | None = None  # the event: name (an ``error:`` line gives "error")
    comment: bool = False  # comments only: a liveness signal, never JSON


class SSEDecoder:
    """Incremental SSE parser: any line ending (CR, LF, CRLF, split across reads), ``data:`` with or
    without its space, comments, ``event:`` names; ``close()`` flushes a last event that lacks its blank line.
    """

    __slots__ = ("_buf", "_cr")

    def __init__(self) -> None:
        self._buf = b""
        self._cr = False  # the last read ended in \r: a \n starting the next one belongs to it

    def feed(self, data: bytes) -> list[Event]:
        if not data:
            return []
        if self._cr:
            self._cr = False
            if data[:1] == b"\n":
                data = data[1:]
        if b"\r" in data:
            self._cr = data[-1:] == b"\r"
            data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        buf = self._buf
        if buf:
            # only the new bytes can complete an event: keeps a huge event in small reads linear
            if b"\n\n" not in data and not (buf[-1:] == b"\n" and data[:1] == b"\n"):
                self._buf = buf + data
                return []
            data = buf + data
        elif b"\n\n" not in data:
            self._buf = data
            return []
        parts = data.split(b"\n\n")
        self._buf = parts.pop()
        out = []
        for p in parts:
            if p[:6] == b"data: " and b"\n" not in p:
                out.append(Event(p[6:]))
            elif p:
                ev = _block(p)
                if ev is not None:
                    out.append(ev)
        return out

    def close(self) -> list[Event]:
        buf, self._buf = self._buf, b""
        ev = _block(buf) if buf else None
        return [ev] if ev is not None else []


def _block(block: bytes) -> Event | None:
    data: list[bytes] = []
    event: str | None = None
    comment = False
    for line in block.split(b"\n"):
        if not line:
            continue
        if line[:1] == b":":
            comment = True
            continue
        name, _, value = line.partition(b":")
        if value[:1] == b" ":
            value = value[1:]
        if name == b"data":
            data.append(value)
        elif name == b"event":
            event = value.decode("utf-8", "replace")
        elif name == b"error":  # llama.cpp's old servers wrote their errors in this non-standard field
            data.append(value)
            event = event or "error"
    if data and (len(data) > 1 or data[0]):
        return Event(b"\n".join(data), event)
    return Event(comment=True) if comment else None


# --- provider chunks → Delta -------------------------------------------------------------------------

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


def add_usage(a: JSON | None, b: JSON | None) -> JSON:
    """The sum of two usages (either may be None); never None, so a usage chunk always has numbers."""
    out: JSON = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
    for u in (a, b):
        if u:
            _add_into(out, u)
    return out


def _add_into(out: JSON, u: JSON) -> None:
    for key, value in u.items():
        if isinstance(value, bool):
            continue
        if isinstance(value, int | float):
            prev = out.get(key, 0)
            out[key] = (prev if isinstance(prev, int | float) else 0) + value
        elif isinstance(value, dict):
            sub = out.get(key)
            if not isinstance(sub, dict):
                sub = out[key] = {}
            _add_into(sub, value)


def _reasoning_of(obj: dict[str, Any]) -> str | None:
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


def _google_thought(obj: dict[str, Any]) -> Any:
    extra = obj.get("extra_content")
    if isinstance(extra, dict):
        google = extra.get("google")
        if isinstance(google, dict):
            return google.get("thought")
    return None


class DeltaNormalizer:
    """One streamed response's chunks → ``Delta``s of content, reasoning and tool-call fragments.

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
        if not delta or not isinstance(delta, dict):
            return None
        content = delta.get("content")
        if not isinstance(content, str) or not content:
            content = None
        reasoning = None
        if len(delta) > 1 or content is None:  # the common {"content": "..."} needs none of this
            reasoning = _reasoning_of(delta)
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
                    return Delta(content, reasoning, tcs)
        if content is None and reasoning is None:
            return None
        self.produced = True
        return Delta(content, reasoning)

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


# --- whole answers -----------------------------------------------------------------------------------


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
    ``reasoning_content``, tool calls complete with ids); raises for an error body or a missing answer."""
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
    reasoning = _reasoning_of(msg)
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
    return ModelResult(message, finish, usage)


def coalesce(deltas: Iterable[Delta | None]) -> list[Delta]:
    """Merge neighbouring deltas that carry only text of the same kind (content, or reasoning), keeping
    their order; anything else (tool calls, finish, usage) stays a delta of its own."""
    out: list[Delta] = []
    last: Delta | None = None
    for d in deltas:
        if d is None:
            continue
        plain = d.tool_calls is None and d.finish_reason is None and d.usage is None
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


# --- sorat's own answers -----------------------------------------------------------------------------

_TAIL = b',"logprobs":null,"finish_reason":null}]}\n\n'


class ChunkWriter:
    """The ``data: …\\n\\n`` frames of one streamed response; the envelope is encoded once."""

    __slots__ = ("_head", "_usage_head")

    def __init__(self, id: str, created: int, model: str) -> None:
        envelope = orjson.dumps(
            {"id": id, "object": "chat.completion.chunk", "created": created, "model": model}
        )
        self._head = b"data: " + envelope[:-1] + b',"choices":[{"index":0,"delta":'
        self._usage_head = b"data: " + envelope[:-1] + b',"choices":[],"usage":'

    def role(self) -> bytes:
        return self._head + b'{"role":"assistant","content":""}' + _TAIL

    def content(self, text: str) -> bytes:
        return self._head + b'{"content":' + orjson.dumps(text) + b"}" + _TAIL

    def reasoning(self, text: str) -> bytes:
        return self._head + b'{"reasoning_content":' + orjson.dumps(text) + b"}" + _TAIL

    def tool_call(self, index: int, id: str, name: str, arguments: str) -> bytes:
        call = {
            "index": index,
            "id": id,
            "type": "function",
            "function": {"name": name, "arguments": arguments},
        }
        return self._head + orjson.dumps({"tool_calls": [call]}) + _TAIL

    def finish(self, reason: str) -> bytes:
        return self._head + b'{},"logprobs":null,"finish_reason":' + orjson.dumps(reason) + b"}]}\n\n"

    def usage(self, usage: JSON) -> bytes:
        return self._usage_head + orjson.dumps(usage) + b"}\n\n"

    def error(self, body: JSON) -> bytes:
        return b"data: " + orjson.dumps(body) + b"\n\n"


def completion(
    id: str, created: int, model: str, message: Message, finish_reason: str, usage: JSON | None
) -> JSON:
    """A whole ``chat.completion``; ``message`` may carry reasoning_content and tool_calls."""
    calls = message.get("tool_calls")
    content = message.get("content")
    msg: JSON = {"role": "assistant", "content": content if content or calls else (content or "")}
    if message.get("reasoning_content"):
        msg["reasoning_content"] = message["reasoning_content"]
    if calls:
        msg["tool_calls"] = calls
    return {
        "id": id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "message": msg, "logprobs": None, "finish_reason": finish_reason}],
        "usage": usage if usage is not None else add_usage(None, None),
    }
