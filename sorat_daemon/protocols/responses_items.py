"""Responses items ⇄ chat messages. Pure: no I/O.

In, in one pass over what the client sent: the assistant side of a turn, however many items a client
echoes for it (the message of each model round, ``function_call`` items, sorat's own ``reasoning`` and
``mcp_call`` items between them), becomes one assistant message, its rounds' texts apart by
``agent.ROUND_SEPARATOR``, as the session stored it: a client that resends everything every turn
(Codex) then matches its session exactly, and nothing is stored twice. ``system`` and ``developer``
messages, wherever they stand, are collected apart: the request's instructions, not conversation.
Unknown item types are skipped, never a 400 (Ollama's "unknown input item type" broke clients); a known
item that is malformed is a 400 naming it. This runs on every Codex turn over ~1 MB of history, so the
common shapes take the short paths and an item's location is only spelled out when it is wrong.

Out: a client's tool call as the item it runs (``call_item``), and a session's visible conversation as
items (``items_of``, for /v1/conversations), with ids that are the same every time.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import orjson

from sorat_daemon.agent import ROUND_SEPARATOR
from sorat_daemon.errors import RequestError
from sorat_daemon.types import JSON, Message

_TEXT_PARTS = frozenset({"input_text", "output_text", "text", "refusal", "summary_text", "reasoning_text"})
_ROLES = frozenset({"user", "assistant", "system", "developer"})
_SYSTEM = frozenset({"system", "developer"})
NAMESPACE_SEP = "__"  # a namespace tool's chat name: <namespace>__<name>


@dataclass(slots=True)
class ClientTool:
    """How a client tool's call goes back: a ``function_call`` or a ``custom_tool_call`` (with one
    string ``input``), under its own name and namespace."""

    kind: str  # function | custom
    name: str
    namespace: str | None = None


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
            if type(kind) is str and kind in _TEXT_PARTS:
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
            if type(kind) is str and kind in _TEXT_PARTS:
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

    def copy(self) -> _Items:
        """A state of its own, to go on from: the messages are shared (none is changed once added), the
        turn being built is not (``flush`` finishes it)."""
        out = _Items()
        out.system, out.messages = list(self.system), list(self.messages)
        out.calls, out.orphans, out.said = set(self.calls), list(self.orphans), list(self.said)
        a = self.assistant
        if a is not None:
            out.assistant = {**a, "tool_calls": list(a["tool_calls"])} if "tool_calls" in a else dict(a)
        return out

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
            if type(role) is not str or role not in _ROLES:
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


class ItemsRead:
    """What ``read_items`` made of the first ``count`` items: the state to go on from."""

    __slots__ = ("count", "_state")

    def __init__(self, count: int, state: _Items) -> None:
        self.count = count
        self._state = state


def parse_items(items: Iterable[Any], where: str = "input") -> tuple[list[str], list[Message], list[str]]:
    """(system texts, conversation messages, call_ids of outputs that answer no call in ``items``)."""
    system, messages, orphans, _ = read_items(list(items), where)
    return system, messages, orphans


def read_items(
    items: list[Any], where: str = "input", prior: ItemsRead | None = None, same: int = 0
) -> tuple[list[str], list[Message], list[str], ItemsRead]:
    """``parse_items``, going on from ``prior`` (what an earlier call made of its items) when the first
    ``same`` items are those and no others (a client resending its history has only its new items read),
    and what to go on from next time."""
    if prior is not None and prior.count == same <= len(items):
        state, start = prior._state.copy(), prior.count
    else:
        state, start = _Items(), 0
    i = start
    try:
        for i in range(start, len(items)):
            state.add(items[i])
    except _Bad as e:
        at = f"{where}[{i}]{e.path}"
        raise RequestError(f"{at} {e.problem}", param=at) from None
    read = ItemsRead(len(items), state.copy())
    state.flush()
    return state.system, state.messages, state.orphans, read


# --- back to the client: calls and a session's visible conversation as items ----------------------


def text_part(text: str) -> JSON:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def call_item(call: JSON, tools: dict[str, ClientTool], status: str = "completed") -> JSON:
    """A client's tool call (chat format) as the item it runs: ``function_call`` or ``custom_tool_call``."""
    fn = call.get("function") or {}
    flat, arguments, call_id = fn.get("name") or "", fn.get("arguments") or "", call.get("id") or ""
    tool = tools.get(flat) or ClientTool("function", flat)
    if tool.kind == "custom":
        text: Any = arguments
        try:
            parsed = orjson.loads(arguments)
        except orjson.JSONDecodeError:
            parsed = None
        if isinstance(parsed, dict) and isinstance(parsed.get("input"), str):
            text = parsed["input"]
        item = {"id": "ctc" + fc_id(call_id)[2:], "type": "custom_tool_call", "status": status}
        item.update(call_id=call_id, name=tool.name, input=text)
    else:
        item = {"id": fc_id(call_id), "type": "function_call", "status": status}
        item.update(call_id=call_id, name=tool.name, arguments=arguments)
    if tool.namespace:
        item["namespace"] = tool.namespace
    return item


def items_of(messages: list[Message], tools: dict[str, ClientTool] | None = None) -> list[JSON]:
    """Visible chat messages as Responses items, with ids that stay the same on every listing: a
    message's from its position, a call's from its ``call_id``."""
    out: list[JSON] = []
    for i, m in enumerate(messages):
        role = m.get("role")
        content = m.get("content")
        if role == "tool":
            call_id = m.get("tool_call_id") or ""
            text = content if isinstance(content, str) else _text_of(content)
            item = {"id": "fco" + fc_id(call_id)[2:], "type": "function_call_output", "call_id": call_id}
            item.update(output=text, status="completed")
            out.append(item)
            continue
        if role == "assistant":
            text = content if isinstance(content, str) else _text_of(content)
            if text:
                out.append(
                    {"id": f"msg_{i:08d}", "type": "message", "status": "completed", "role": "assistant",
                     "content": [text_part(text)]}
                )  # fmt: skip
            out += [call_item(c, tools or {}) for c in m.get("tool_calls") or () if isinstance(c, dict)]
            continue
        parts = [{"type": "input_text", "text": content}] if isinstance(content, str) else _parts(content)
        out.append(
            {"id": f"msg_{i:08d}", "type": "message", "status": "completed", "role": role, "content": parts}
        )
    return out


def _text_of(content: Any) -> str:
    if isinstance(content, list):
        return "".join(str(p.get("text") or "") for p in content if isinstance(p, dict))
    return content if isinstance(content, str) else ""


def _parts(content: Any) -> list[JSON]:
    out: list[JSON] = []
    for p in content if isinstance(content, list) else ():
        if not isinstance(p, dict):
            continue
        if p.get("type") == "text":
            out.append({"type": "input_text", "text": p.get("text") or ""})
        elif p.get("type") == "image_url":
            image = p.get("image_url")
            image = image if isinstance(image, dict) else {"url": image}
            out.append(
                {"type": "input_image", "image_url": image.get("url"), "detail": image.get("detail", "auto")}
            )
    return out
