"""Responses input items → chat messages, in one pass over what the client sent. Pure: no I/O.

The assistant side of a turn, however many items a client echoes for it (the message of each model
round, ``function_call`` items, sorat's own ``reasoning`` and ``mcp_call`` items between them), becomes
one assistant message, its rounds' texts apart by ``agent.ROUND_SEPARATOR``, as the session stored it:
a client that resends everything every turn (Codex) then matches its session exactly, and nothing is
stored twice. ``system`` and ``developer`` messages, wherever they stand, are collected apart: the
request's instructions, not conversation. Unknown item
types are skipped, never a 400 (Ollama's "unknown input item type" broke clients); a known item that is
malformed is a 400 naming it.

This runs on every Codex turn over ~1 MB of history, so the common shapes take the short paths and an
item's location is only spelled out when it is wrong.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Any

import orjson

from sorat_daemon.agent import ROUND_SEPARATOR
from sorat_daemon.errors import RequestError
from sorat_daemon.types import JSON, Message

_TEXT_PARTS = frozenset({"input_text", "output_text", "text", "refusal", "summary_text", "reasoning_text"})
_ROLES = frozenset({"user", "assistant", "system", "developer"})
_SYSTEM = frozenset({"system", "developer"})
NAMESPACE_SEP = "__"  # a namespace tool's chat name: <namespace>__<name>


def with_system(system: list[str], messages: list[Message]) -> list[Message]:
    """One leading system message (many chat templates reject a later one), then the conversation."""
    if not system:
        return messages
    return [{"role": "system", "content": "\n\n".join(system)}, *messages]


def fc_id(call_id: str) -> str:
    """A function call item's ``id``, derived from its ``call_id``: the same wherever the call is shown
    again (the stream, the Response object, conversation items) and never equal to the ``call_id``."""
    return "fc_" + hashlib.blake2b(call_id.encode(), digest_size=12).hexdigest()


class _Bad(Exception):
    """A malformed item: ``path`` within the item (".content[0].text"), and what is wrong."""

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(problem)
        self.path = path
        self.problem = problem


def _other_part(part: JSON) -> JSON | None:
    """A non-text part as chat content, or None for what a chat provider cannot take."""
    kind = part.get("type")
    if kind == "input_image":
        url = part.get("image_url")
        if isinstance(url, dict):
            url = url.get("url")
        if isinstance(url, str) and url:
            image: JSON = {"url": url}
            if isinstance(part.get("detail"), str) and part["detail"] != "auto":
                image["detail"] = part["detail"]
            return {"type": "image_url", "image_url": image}
    elif kind == "input_file" and isinstance(part.get("file_data"), str):
        file: JSON = {"file_data": part["file_data"]}
        if isinstance(part.get("filename"), str):
            file["filename"] = part["filename"]
        return {"type": "file", "file": file}
    return None  # input_audio, a file_id sorat cannot fetch…


def chat_content(content: Any) -> str | list[JSON]:
    """A Responses message's content as chat content: its text when all of it is text, else parts."""
    if type(content) is str:
        return content
    if content is None:
        return ""
    if type(content) is not list:
        raise _Bad(".content", "must be a string or an array of content parts")
    texts: list[str] = []
    parts: list[JSON] | None = None
    for j, part in enumerate(content):
        if type(part) is dict:
            kind = part.get("type")
            if kind in _TEXT_PARTS:
                text = part.get("text")
                if text is None:
                    text = part.get("refusal")
                if type(text) is not str:
                    raise _Bad(f".content[{j}].text", "must be a string")
            elif type(kind) is not str:
                raise _Bad(f".content[{j}]", "must be an object with a string 'type'")
            else:
                other = _other_part(part)
                if other is not None:
                    if parts is None:
                        parts = [{"type": "text", "text": t} for t in texts]
                    parts.append(other)
                continue
        elif type(part) is str:  # lenient: a bare string is its text
            text = part
        else:
            raise _Bad(f".content[{j}]", "must be an object with a string 'type'")
        texts.append(text)
        if parts is not None:
            parts.append({"type": "text", "text": text})
    if parts is not None:
        return parts
    return texts[0] if len(texts) == 1 else "".join(texts)


def _text(content: str | list[JSON]) -> str:
    if isinstance(content, str):
        return content
    return "".join(p["text"] for p in content if p["type"] == "text")


def _output_text(output: Any) -> str:
    """A tool output as the text of a chat tool message."""
    if type(output) is str:
        return output
    if type(output) is list:
        out = []
        for j, part in enumerate(output):
            kind = part.get("type") if type(part) is dict else None
            if kind in _TEXT_PARTS:
                if type(part.get("text")) is not str:
                    raise _Bad(f".output[{j}].text", "must be a string")
                out.append(part["text"])
            elif kind in ("input_image", "input_file"):
                out.append(f"[{kind[6:]} omitted: the model takes text results only]")
            elif type(part) is str:
                out.append(part)
            else:
                raise _Bad(f".output[{j}]", "must be a content part")
        return "".join(out)
    if output is None:
        raise _Bad(".output", "is required")
    return orjson.dumps(output).decode()  # lenient: a JSON value is its JSON text


def _required(item: JSON, key: str) -> str:
    value = item.get(key)
    if type(value) is not str or not value:
        raise _Bad(f".{key}", "must be a non-empty string")
    return value


class _Items:
    """The pass: ``assistant`` is the message being built for one turn's echoed items."""

    __slots__ = ("system", "messages", "calls", "orphans", "assistant", "said")

    def __init__(self) -> None:
        self.system: list[str] = []
        self.messages: list[Message] = []
        self.calls: set[str] = set()
        self.orphans: list[str] = []
        self.assistant: Message | None = None
        self.said: list[str] = []

    def flush(self) -> None:
        a = self.assistant
        if a is not None:
            if self.said:  # one message item per model round, as the session joined them
                a["content"] = ROUND_SEPARATOR.join(self.said)
                self.said = []
            self.messages.append(a)
            self.assistant = None

    def add(self, item: Any) -> None:
        if type(item) is not dict:
            if type(item) is not str:
                raise _Bad("", "must be an object")
            item = {"role": "user", "content": item}  # lenient: a bare string is a user message
        kind = item.get("type", "message")
        if kind == "message":
            role = item.get("role")
            if role not in _ROLES:
                raise _Bad(".role", f"must be one of {', '.join(sorted(_ROLES))}, not {role!r}")
            if "content" not in item:
                raise _Bad(".content", "is required")
            content = chat_content(item["content"])
            if role == "user":
                self.flush()
                self.messages.append({"role": "user", "content": content})
            elif role == "assistant":
                if self.assistant is None:
                    self.assistant = {"role": "assistant", "content": None}
                text = _text(content)
                if text:
                    self.said.append(text)
            else:
                text = _text(content)
                if text:
                    self.system.append(text)
        elif kind == "function_call" or kind == "custom_tool_call":
            self._call(item, kind)
        elif kind == "function_call_output" or kind == "custom_tool_call_output":
            call_id = _required(item, "call_id")
            text = _output_text(item.get("output"))
            self.flush()
            if call_id not in self.calls:
                self.orphans.append(call_id)
            self.messages.append({"role": "tool", "tool_call_id": call_id, "content": text})
        elif type(kind) is not str:
            raise _Bad(".type", "must be a string")
        # else: reasoning and mcp_call items (sorat's own, echoed), item_reference and unknown types

    def _call(self, item: JSON, kind: str) -> None:
        call_id, name = _required(item, "call_id"), _required(item, "name")
        if kind == "custom_tool_call":
            text = item.get("input")
            if type(text) is not str:
                raise _Bad(".input", "must be a string")
            arguments = orjson.dumps({"input": text}).decode()
        else:
            arguments = item.get("arguments", "")
            if type(arguments) is dict:
                arguments = orjson.dumps(arguments).decode()
            elif type(arguments) is not str:
                raise _Bad(".arguments", "must be a string of JSON")
        namespace = item.get("namespace")
        if namespace and type(namespace) is str:
            name = namespace + NAMESPACE_SEP + name
        a = self.assistant
        if a is None:
            a = self.assistant = {"role": "assistant", "content": None}
        call = {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}
        if "tool_calls" in a:
            a["tool_calls"].append(call)
        else:
            a["tool_calls"] = [call]
        self.calls.add(call_id)


def parse_items(items: Iterable[Any], where: str = "input") -> tuple[list[str], list[Message], list[str]]:
    """(system texts, conversation messages, call_ids of outputs that answer no call in ``items``)."""
    state = _Items()
    i = 0
    try:
        for i, item in enumerate(items):  # noqa: B007 - read by the handler
            state.add(item)
    except _Bad as e:
        at = f"{where}[{i}]{e.path}"
        raise RequestError(f"{at} {e.problem}", param=at) from None
    state.flush()
    return state.system, state.messages, state.orphans
