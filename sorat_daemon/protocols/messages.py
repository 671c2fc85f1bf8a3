"""Anthropic Messages in: a ``POST /v1/messages`` body as OpenAI chat messages, tools and parameters, the
tool-id mapping both ways, and the local token estimate of ``count_tokens``. Pure: no I/O.

What becomes of an Anthropic body (CLIENTS.md lists what Claude Code and the SDKs send):
- ``system`` (a string or text blocks) and every ``role: "system"`` message inside ``messages`` (Claude Code
  puts some there) become ONE leading system message, joined by blank lines: chat templates reject a later
  one. Claude Code's ``x-anthropic-billing-header`` block is dropped: it is not an instruction.
- ``text`` and ``image`` blocks become content parts (``image`` → ``image_url``, base64 as a data URL); a
  user message of text blocks only becomes one string. ``tool_use`` blocks become the assistant message's
  ``tool_calls``; ``tool_result`` blocks become ``tool`` messages, placed before the user text of the same
  message (an image in a result follows them in a user message: tool messages carry text only).
- ``thinking`` and ``redacted_thinking`` blocks a client echoes, server-tool blocks and unknown block types
  are dropped; ``cache_control`` is never copied (Claude Code moves it every turn, and two histories must
  compare equal without it).
- ``max_tokens`` is required and clamped to ``MAX_TOKENS_PER_CALL`` for each model call; ``stop_sequences``
  → ``stop``; ``temperature``, ``top_p`` as given; ``tool_choice`` auto | any (→ required) | tool (→ that
  function) | none; ``disable_parallel_tool_use`` → ``parallel_tool_calls: false``; other fields are
  ignored (``thinking``, ``metadata``, ``top_k``, ``context_management``…).
- tools with an ``input_schema`` (``$schema`` and all) become chat function tools; typed tools without one
  (Anthropic's server tools: ``web_search_…``, ``bash_…``) are left out, named in ``skipped_tools``.

Tool ids: Anthropic's clients need ``^[A-Za-z0-9_-]+$``; a provider's call id that is not so
(``functions.Bash:0``) goes out as ``toolu_sorat_`` + its base64url and comes back decoded, so no table is
kept and the mapping survives restarts.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass, field
from typing import Any

import orjson

from sorat_daemon import wire
from sorat_daemon.agent import ROUND_SEPARATOR
from sorat_daemon.errors import RequestError
from sorat_daemon.protocols.resent import Resent, parse_object
from sorat_daemon.types import JSON, Message

# Claude Code asks 32 000-64 000 tokens per answer; many providers refuse more than their model's output
# limit with a 400 (OpenAI's gpt-4o: 16 384, DeepSeek: 8 192). 16 384 is what OpenAI's common models take
# and is long enough for a large file written through a tool call.
MAX_TOKENS_PER_CALL = 16384
# count_tokens: about four characters of JSON per token, and a flat figure per image (Anthropic bills an
# image at about width×height/750 tokens: ~1 600 for a large one), never its base64 length.
CHARS_PER_TOKEN = 4
IMAGE_TOKENS = 1600

_TOOL_ID = re.compile(r"[A-Za-z0-9_-]+")
_MAPPED = "toolu_sorat_"
_BILLING = "x-anthropic-billing-header:"


def tool_id_out(call_id: str) -> str:
    """The id an Anthropic client gets for a provider's call id."""
    if _TOOL_ID.fullmatch(call_id) and not call_id.startswith(_MAPPED):
        return call_id
    return _MAPPED + base64.urlsafe_b64encode(call_id.encode()).decode().rstrip("=")


def tool_id_in(tool_id: str) -> str:
    """The provider's call id behind an id a client sends back (``tool_use.id``, ``tool_use_id``)."""
    if not tool_id.startswith(_MAPPED):
        return tool_id
    data = tool_id[len(_MAPPED) :]
    try:
        original = base64.urlsafe_b64decode(data + "=" * (-len(data) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return tool_id
    return original if original and tool_id_out(original) == tool_id else tool_id


@dataclass(slots=True)
class MessagesRequest:
    messages: list[Message]
    model: str | None = None
    stream: bool = False
    tools: list[JSON] = field(default_factory=list)  # chat function tools
    declared_tools: bool = False  # the body had a non-empty ``tools`` (Claude Code's side calls have none)
    tool_choice: Any = None
    params: JSON = field(default_factory=dict)
    skipped_tools: list[str] = field(default_factory=list)
    # The top-level ``system`` (not the inline system messages): Claude Code's subagents share its session
    # header but not its system prompt. A hash, stable within the process.
    system_hash: int = 0


def _bad(message: str, param: str | None = None) -> RequestError:
    return RequestError(message, param=param)


def _load(body: bytes) -> JSON:
    return wire.json_object(body)


def _text(block: JSON, where: str) -> str:
    text = block.get("text")
    if not isinstance(text, str):
        raise _bad(f"{where}.text must be a string", f"{where}.text")
    return text


def _system_text(content: Any, where: str) -> list[str]:
    """The texts of a system prompt (a string or text blocks); Claude Code's billing line left out."""
    if isinstance(content, str):
        return [content] if content else []
    if not isinstance(content, list):
        raise _bad(f"{where} must be a string or an array of text blocks", where)
    out = []
    for j, block in enumerate(content):
        if not isinstance(block, dict) or not isinstance(block.get("type"), str):
            raise _bad(f"{where}[{j}] must be an object with a string 'type'", f"{where}[{j}]")
        if block["type"] == "text":
            text = _text(block, f"{where}[{j}]")
            if text and not text.startswith(_BILLING):
                out.append(text)
    return out


def _image(block: JSON, where: str) -> JSON | None:
    source = block.get("source")
    if not isinstance(source, dict):
        raise _bad(f"{where}.source must be an object", f"{where}.source")
    kind = source.get("type")
    if kind == "base64":
        media, data = source.get("media_type"), source.get("data")
        if not isinstance(media, str) or not isinstance(data, str):
            raise _bad(f"{where}.source needs string media_type and data", f"{where}.source")
        url = f"data:{media};base64,{data}"
    elif kind == "url":
        if not isinstance(source.get("url"), str):
            raise _bad(f"{where}.source.url must be a string", f"{where}.source.url")
        url = source["url"]
    else:
        return None  # a file id: nothing a chat provider can open
    return {"type": "image_url", "image_url": {"url": url}}


def _result_content(content: Any, where: str, images: list[JSON]) -> str:
    """A tool_result's text; its images are collected into ``images``."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise _bad(f"{where} must be a string or an array of blocks", where)
    texts = []
    for j, block in enumerate(content):
        if not isinstance(block, dict) or not isinstance(block.get("type"), str):
            raise _bad(f"{where}[{j}] must be an object with a string 'type'", f"{where}[{j}]")
        if block["type"] == "text":
            texts.append(_text(block, f"{where}[{j}]"))
        elif block["type"] == "image":
            part = _image(block, f"{where}[{j}]")
            if part is not None:
                images.append(part)
    return "\n".join(texts)


def _at(i: int, j: int) -> str:
    return f"messages[{i}].content[{j}]"


def _text_of(block: JSON, i: int, j: int) -> str:
    """A ``text`` block's text, which must be a string."""
    text = block.get("text")
    if not isinstance(text, str):
        raise _bad(f"{_at(i, j)}.text must be a string", f"{_at(i, j)}.text")
    return text


def _user(content: list[Any], i: int, pending: set[str] | None, out: list[Message]) -> None:
    """A user message's blocks: its tool results first (as ``tool`` messages), then its text and images.
    Error locations are formatted only when raised: a long history is read on every request."""
    parts: list[str | JSON] = []  # texts as strings until it is known whether they are all text
    images: list[JSON] = []
    only_text = True
    for j, block in enumerate(content):
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text":
            parts.append(_text_of(block, i, j))
        elif kind == "tool_result":
            raw_id = block.get("tool_use_id")
            if not isinstance(raw_id, str) or not raw_id:
                raise _bad(f"{_at(i, j)}.tool_use_id must be a non-empty string", f"{_at(i, j)}.tool_use_id")
            call_id = tool_id_in(raw_id)
            if pending is not None and call_id not in pending:
                raise _bad(
                    f"{_at(i, j)}: unexpected tool_use_id {raw_id!r} in a tool_result block: each tool_result"
                    " must answer a tool_use block of the previous assistant message",
                    f"{_at(i, j)}.tool_use_id",
                )
            result = block.get("content")
            if not isinstance(result, str):
                result = _result_content(result, f"{_at(i, j)}.content", images)
            out.append({"role": "tool", "tool_call_id": call_id, "content": result})
        elif kind == "image":
            part = _image(block, _at(i, j))
            if part is not None:
                parts.append(part)
                only_text = False
        elif kind == "document":
            source = block.get("source")
            if (
                isinstance(source, dict)
                and source.get("type") == "text"
                and isinstance(source.get("data"), str)
            ):
                parts.append(source["data"])
        elif not isinstance(kind, str):
            raise _bad(f"{_at(i, j)} must be an object with a string 'type'", _at(i, j))
    if images:
        parts += images
        only_text = False
    if not parts:
        return
    if only_text:
        out.append({"role": "user", "content": "\n\n".join(p for p in parts if isinstance(p, str))})
    else:
        out.append(
            {
                "role": "user",
                "content": [{"type": "text", "text": p} if isinstance(p, str) else p for p in parts],
            }
        )


def _assistant(content: list[Any], i: int, out: list[Message]) -> set[str]:
    """An assistant message's text and tool calls (its echoed thinking dropped); the ids of its calls."""
    texts = []
    calls: list[JSON] = []
    ids: set[str] = set()
    for j, block in enumerate(content):
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text":
            texts.append(_text_of(block, i, j))
        elif kind == "tool_use":
            raw_id, name, args = block.get("id"), block.get("name"), block.get("input")
            if not isinstance(raw_id, str) or not raw_id:
                raise _bad(f"{_at(i, j)}.id must be a non-empty string", f"{_at(i, j)}.id")
            if not isinstance(name, str) or not name:
                raise _bad(f"{_at(i, j)}.name must be a non-empty string", f"{_at(i, j)}.name")
            if args is not None and not isinstance(args, dict):
                raise _bad(f"{_at(i, j)}.input must be an object", f"{_at(i, j)}.input")
            try:
                arguments = orjson.dumps(args or {}).decode()
            except TypeError:  # orjson reads 1024 levels of nesting but writes only 255
                raise _bad(f"{_at(i, j)}.input is nested too deeply", f"{_at(i, j)}.input") from None
            call_id = tool_id_in(raw_id)
            ids.add(call_id)
            calls.append(
                {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}
            )
        elif not isinstance(kind, str):
            raise _bad(f"{_at(i, j)} must be an object with a string 'type'", _at(i, j))
    # sorat answers each model round's text in a block of its own; the session holds them as one message,
    # rounds apart by a blank line (agent.ROUND_SEPARATOR), and an echo must compare equal to it.
    text = ROUND_SEPARATOR.join(t for t in texts if t)
    message: Message = {"role": "assistant", "content": text or (None if calls else "")}
    if calls:
        message["tool_calls"] = calls
    out.append(message)
    return ids


class _Conversion:
    """The pass over ``messages``, resumable: what the messages read so far made."""

    __slots__ = ("texts", "out", "pending", "count", "_before")

    def __init__(self, texts: list[str]) -> None:
        self.texts = texts  # system texts: ``system``'s, then inline system messages'
        self.out: list[Message] = []
        self.pending: set[str] | None = None  # the previous assistant message's call ids (None: none yet)
        self.count = 0  # messages read
        self._before: list[tuple[int, set[str] | None, int]] = []  # per message read: what came before it

    def copy(self, count: int | None = None) -> _Conversion:
        """A state of its own (``pending`` is replaced, never changed), as it was after ``count``
        messages (by default all read)."""
        out = _Conversion([])
        if count is None or count >= self.count:
            out.texts, out.out, out.pending = list(self.texts), list(self.out), self.pending
            out.count, out._before = self.count, list(self._before)
            return out
        made, out.pending, texts = self._before[count]
        out.texts, out.out, out.count = self.texts[:texts], self.out[:made], count
        out._before = self._before[:count]
        return out

    def read(self, messages: list[Any]) -> None:
        out, before = self.out, self._before
        for i in range(self.count, len(messages)):
            m = messages[i]
            before.append((len(out), self.pending, len(self.texts)))
            if not isinstance(m, dict):
                raise _bad(f"messages[{i}] must be an object", f"messages[{i}]")
            role = m.get("role")
            content = m.get("content")
            if role == "user" or role == "assistant":
                if isinstance(content, str):
                    if role == "user":
                        out.append({"role": "user", "content": content})
                        continue
                    content = [{"type": "text", "text": content}]
                elif not isinstance(content, list):
                    where = f"messages[{i}].content"
                    raise _bad(f"{where} must be a string or an array of content blocks", where)
                if role == "user":
                    _user(content, i, self.pending, out)
                else:
                    self.pending = _assistant(content, i, out)
            elif role == "system":
                self.texts += _system_text(content, f"messages[{i}].content")
            else:
                where = f"messages[{i}].role"
                raise _bad(f"{where} must be user, assistant or system, not {role!r}", where)
        self.count = len(messages)

    def result(self) -> list[Message]:
        if self.texts:
            return [{"role": "system", "content": "\n\n".join(self.texts)}, *self.out]
        return list(self.out)


def convert_messages(
    system: Any, messages: Any, prior: Any = None, same: int = 0
) -> tuple[list[Message], Any]:
    """Anthropic's ``system`` and ``messages`` as chat messages, one leading system message first; and
    what to go on from when the same messages come again with more (``prior``: that, from an earlier
    call with the same ``system`` whose first ``same`` messages are these: only the rest is read)."""
    if not isinstance(messages, list):
        raise _bad("'messages' must be an array", "messages")
    if isinstance(prior, _Conversion):
        state = prior.copy(min(same, len(messages)))
    else:
        state = _Conversion(_system_text(system, "system") if system is not None else [])
    state.read(messages)
    return state.result(), state  # ``result`` is a list of its own: ``state`` is only read from again


def _tools(tools: Any) -> tuple[list[JSON], list[str]]:
    if tools is None:
        return [], []
    if not isinstance(tools, list):
        raise _bad("'tools' must be an array", "tools")
    out, skipped = [], []
    for i, t in enumerate(tools):
        where = f"tools[{i}]"
        if not isinstance(t, dict) or not isinstance(t.get("name"), str) or not t["name"]:
            raise _bad(f"{where} must be an object with a non-empty string 'name'", f"{where}.name")
        schema = t.get("input_schema")
        if schema is None and t.get("type") not in (None, "custom"):
            skipped.append(t["name"])  # one of Anthropic's typed tools: no schema to offer a chat model
            continue
        if not isinstance(schema, dict):
            raise _bad(f"{where}.input_schema must be an object", f"{where}.input_schema")
        function: JSON = {"name": t["name"]}
        if isinstance(t.get("description"), str):
            function["description"] = t["description"]
        function["parameters"] = schema
        out.append({"type": "function", "function": function})
    return out, skipped


def _tool_choice(choice: Any, params: JSON) -> Any:
    if choice is None:
        return None
    if not isinstance(choice, dict) or not isinstance(choice.get("type"), str):
        raise _bad("'tool_choice' must be an object with a string 'type'", "tool_choice")
    if choice.get("disable_parallel_tool_use") is True:
        params["parallel_tool_calls"] = False
    kind = choice["type"]
    if kind == "auto":
        return "auto"
    if kind == "any":
        return "required"
    if kind == "none":
        return "none"
    if kind == "tool":
        name = choice.get("name")
        if not isinstance(name, str) or not name:
            raise _bad("'tool_choice.name' must be a non-empty string", "tool_choice.name")
        return {"type": "function", "function": {"name": name}}
    raise _bad("'tool_choice.type' must be auto, any, tool or none", "tool_choice.type")


def _number(data: JSON, key: str, params: JSON) -> None:
    value = data.get(key)
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _bad(f"'{key}' must be a number", key)
    params[key] = value


def parse_messages_request(body: bytes, resent: Resent | None = None) -> MessagesRequest:
    """A client's POST /v1/messages body, checked; errors.RequestError (400) names the bad field. With
    ``resent``, a body that resends an earlier one's messages (Claude Code, every turn) has only its new
    ones read."""
    parsed = parse_object(body, resent)
    data = parsed.data
    if "messages" not in data:
        raise _bad("Missing required parameter: 'messages'", "messages")
    max_tokens = data.get("max_tokens")
    if max_tokens is None:
        raise _bad("Missing required parameter: 'max_tokens'", "max_tokens")
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise _bad("'max_tokens' must be a positive integer", "max_tokens")
    system = data.get("system")
    messages, read = convert_messages(system, data["messages"], parsed.prior, parsed.reused)
    parsed.keep(read)
    if not any(m["role"] != "system" for m in messages):
        raise _bad("'messages' must hold at least one user or assistant message", "messages")
    model = data.get("model")
    if model is not None and not isinstance(model, str):
        raise _bad("'model' must be a string", "model")
    stream = data.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise _bad("'stream' must be a boolean", "stream")
    params: JSON = {"max_tokens": min(max_tokens, MAX_TOKENS_PER_CALL)}
    _number(data, "temperature", params)
    _number(data, "top_p", params)
    stop = data.get("stop_sequences")
    if stop is not None:
        if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
            raise _bad("'stop_sequences' must be an array of strings", "stop_sequences")
        if stop:
            params["stop"] = stop
    tools, skipped = _tools(data.get("tools"))
    tool_choice = _tool_choice(data.get("tool_choice"), params) if tools else None
    if not tools:
        params.pop("parallel_tool_calls", None)
    try:  # the schemas go on as given; orjson reads 1024 levels of nesting but writes only 255
        orjson.dumps(tools)
    except TypeError:
        raise _bad("The request is nested too deeply (more than 255 levels)") from None
    system_hash = hash("\n\n".join(_system_text(system, "system"))) if system is not None else 0
    return MessagesRequest(
        messages,
        model or None,
        bool(stream),
        tools,
        bool(data.get("tools")),
        tool_choice,
        params,
        skipped,
        system_hash,
    )


def _without_images(value: Any, images: list[int]) -> Any:
    if isinstance(value, dict):
        if value.get("type") in ("image", "document") and isinstance(value.get("source"), dict):
            images[0] += 1
            return None
        return {k: _without_images(v, images) for k, v in value.items() if k != "cache_control"}
    if isinstance(value, list):
        return [_without_images(v, images) for v in value]
    return value


def count_tokens(body: bytes) -> int:
    """``POST /v1/messages/count_tokens``: a local estimate over system, messages and tools (the request
    is checked as a message request would be, ``max_tokens`` aside)."""
    data = _load(body)
    if "messages" not in data:
        raise _bad("Missing required parameter: 'messages'", "messages")
    counted = [data.get("system"), data["messages"], data.get("tools")]
    try:
        orjson.dumps(counted)
    except TypeError:  # and the walk below could exceed Python's recursion limit
        raise _bad("The request is nested too deeply (more than 255 levels)") from None
    convert_messages(data.get("system"), data["messages"])
    _tools(data.get("tools"))
    images = [0]
    size = len(orjson.dumps(_without_images(counted, images)))
    return max(1, size // CHARS_PER_TOKEN + images[0] * IMAGE_TOKENS)
