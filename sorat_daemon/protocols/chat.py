"""OpenAI Chat Completions, the client's side. Pure: no I/O.

In: ``parse_chat_request`` checks a client's POST /v1/chat/completions body into a ``ChatRequest``.
Out: ``ChatRenderer`` turns the agent's events into one response, streamed (``ChunkWriter`` frames the
chunks) or whole (``completion`` builds the ``chat.completion``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson

from sorat_daemon import agent, errors, wire
from sorat_daemon.protocols.resent import Resent, parse_object
from sorat_daemon.types import JSON, Message

if TYPE_CHECKING:
    from sorat_daemon.turn import Run

ROLES = frozenset({"system", "developer", "user", "assistant", "tool"})
_PLAIN = ROLES - {"tool"}  # a tool message needs its tool_call_id
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
    "logprobs",
    "top_logprobs",
)
DONE = b"data: [DONE]\n\n"
KEEPALIVE = b": keep-alive\n\n"


def new_id() -> str:
    """A ``chatcmpl-…`` id: one per response, on every chunk of a stream."""
    return wire.random_id("chatcmpl-")


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


_CHECKED = "checked"  # kept with a body whose messages all passed: its continuation checks only new ones


def _plain(m: Any) -> bool:
    """The message most of a long history is made of, a role and string content: fine as it is."""
    if type(m) is not dict or len(m) != 2 or type(m.get("content")) is not str:
        return False
    role = m.get("role")
    return type(role) is str and role in _PLAIN


def _check_message(i: int, m: Any) -> None:
    if _plain(m):  # a resent history is checked at the cost of a look: no names made for its errors
        return
    where = f"messages[{i}]"
    if not isinstance(m, dict):
        raise _bad(f"{where} must be an object", where)
    role = m.get("role")
    if not isinstance(role, str) or role not in ROLES:  # (a list is not even hashable)
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


def parse_chat_request(body: bytes, resent: Resent | None = None) -> ChatRequest:
    """A client's POST /v1/chat/completions body, checked; errors.RequestError (400) names the bad field.
    With ``resent``, a body that resends an earlier one's messages has only its new ones read."""
    parsed = parse_object(body, resent)
    data = parsed.data
    messages = data.get("messages")
    if messages is None:
        raise _bad("Missing required parameter: 'messages'", "messages")
    if not isinstance(messages, list) or not messages:
        raise _bad("'messages' must be a non-empty array", "messages")
    checked = parsed.reused if parsed.prior is _CHECKED else 0  # a request that failed its checks kept none
    for i in range(checked, len(messages)):
        _check_message(i, messages[i])
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
        orjson.dumps((messages[checked:], tools, tool_choice, params))
    except TypeError:
        raise _bad("The request is nested too deeply (more than 255 levels)", None) from None
    parsed.keep(_CHECKED)
    return ChatRequest(messages, model or None, stream, include_usage, tools, tool_choice, params)


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

    def content(self, text: str, logprobs: JSON | None = None) -> bytes:
        """A content delta; ``logprobs`` (the provider's ``choices[0].logprobs``) goes beside it."""
        if logprobs is None:
            return self._head + b'{"content":' + orjson.dumps(text) + b"}" + _TAIL
        return (
            self._head
            + b'{"content":'
            + orjson.dumps(text)
            + b'},"logprobs":'
            + orjson.dumps(logprobs)
            + b',"finish_reason":null}]}\n\n'
        )

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
    id: str,
    created: int,
    model: str,
    message: Message,
    finish_reason: str,
    usage: JSON | None,
    logprobs: JSON | None = None,
) -> JSON:
    """A whole ``chat.completion``; ``message`` may carry reasoning_content and tool_calls, ``logprobs``
    becomes ``choices[0].logprobs``."""
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
        "choices": [{"index": 0, "message": msg, "logprobs": logprobs, "finish_reason": finish_reason}],
        "usage": usage if usage is not None else wire.add_usage(None, None),
    }


class ChatRenderer:
    """One response: internal tool calls shown per ``mode`` (``tool_calls`` indices rise across the whole
    response), the client's own calls returned at the end; the provider's logprobs beside the text they
    belong to (in a whole answer, the final round's)."""

    __slots__ = ("_w", "_mode", "_usage", "_index", "_model", "_round")

    def __init__(self, model: str, mode: str, include_usage: bool) -> None:
        self._w = ChunkWriter(new_id(), int(time.time()), model)
        self._model = model
        self._mode = mode
        self._usage = include_usage
        self._index = 0
        self._round = -1  # the round of the last text sent

    def begin(self) -> bytes:
        return self._w.role()

    def event(self, ev: agent.Event) -> bytes:
        w = self._w
        if isinstance(ev, agent.Text):
            text = ev.text
            if (
                text and ev.round != self._round
            ):  # a later round's text follows a blank line, as in whole answers
                if self._round >= 0:
                    text = agent.ROUND_SEPARATOR + text
                self._round = ev.round
            return w.content(text, ev.logprobs)
        if isinstance(ev, agent.Reasoning):
            return w.reasoning(ev.text)
        if isinstance(ev, agent.ToolCall):
            if self._mode == "tool_calls":
                self._index += 1
                return w.tool_call(self._index - 1, ev.id, ev.name, ev.arguments)
            if self._mode == "reasoning":
                return w.reasoning(f"{ev.name} {ev.arguments}\n")
            return b""
        if isinstance(ev, agent.KeepAlive):
            return KEEPALIVE
        return b""

    def end(self, done: agent.Done) -> bytes:
        w = self._w
        out = []
        for call in done.message.get("tool_calls") or ():
            fn = call["function"]
            out.append(w.tool_call(self._index, call["id"], fn["name"], fn["arguments"]))
            self._index += 1
        out.append(w.finish(done.finish_reason))
        if self._usage:
            out.append(w.usage(done.usage or wire.add_usage(None, None)))
        return b"".join(out)

    def fail(self, err: errors.SoratError) -> bytes:
        return self._w.error(err.body())

    def close(self) -> bytes:
        return DONE

    async def whole(self, run: Run) -> bytes:
        done = await run.answer()
        message = dict(done.message)
        body = completion(
            new_id(), int(time.time()), self._model, message, done.finish_reason, done.usage, done.logprobs
        )
        return wire.dumps(body)
