"""OpenAI Responses in: a client's ``POST /v1/responses`` body checked and turned into what the turn
pipeline takes (chat messages, chat function tools, provider params). Pure: no I/O.

Input items become chat messages in one pass. The assistant side of a turn, however many items the
client echoes for it (messages of each model round, ``function_call`` items, sorat's own ``reasoning``
and ``mcp_call`` items between them), becomes one assistant message, as the session stored it: a
client that resends everything every turn (Codex) then matches its session exactly. ``system`` and
``developer`` messages and ``instructions``, wherever they stand, become one leading system message
(many chat templates reject a later one).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson

from sorat_daemon.errors import RequestError
from sorat_daemon.types import JSON, Message

# Tool types OpenAI runs on its side; a chat provider cannot take them, and sorat's own tools stand in.
HOSTED_TOOLS = frozenset(
    """web_search web_search_preview web_search_preview_2025_03_11 web_search_2025_08_26 file_search
    code_interpreter image_generation computer_use_preview computer_use computer mcp local_shell shell
    apply_patch tool_search""".split()
)
# Items sorat produced itself (or another server's hosted calls) that a client echoes: never conversation.
_ECHOED = frozenset({"reasoning", "mcp_call", "mcp_list_tools", "mcp_approval_request", "item_reference"})
_TEXT_PARTS = frozenset({"input_text", "output_text", "text", "refusal", "summary_text", "reasoning_text"})
_ROLES = frozenset({"user", "assistant", "system", "developer"})
_NAMESPACE_SEP = "__"


@dataclass(slots=True)
class ClientTool:
    """How a client tool's call goes back: a ``function_call`` or a ``custom_tool_call`` (with one
    string ``input``), under its own name and namespace."""

    kind: str  # function | custom
    name: str
    namespace: str | None = None


@dataclass(slots=True)
class ResponsesRequest:
    system: list[str]  # the texts of instructions, system and developer messages, in order
    messages: list[Message]  # the conversation, without system messages
    model: str | None = None
    stream: bool = False
    store: bool = True
    tools: list[JSON] = field(default_factory=list)  # chat function tools
    client_tools: dict[str, ClientTool] = field(default_factory=dict)  # by the chat function name
    tool_choice: Any = None
    params: JSON = field(default_factory=dict)
    previous_response_id: str | None = None
    conversation: str | None = None
    orphans: list[str] = field(default_factory=list)  # call_ids of outputs with no call in the input
    skipped_tools: list[str] = field(default_factory=list)  # hosted and unknown tool types left out
    items: list[Any] = field(default_factory=list)  # the input items as sent (for input_items)
    echo: JSON = field(default_factory=dict)  # request settings the Response object repeats

    def chat_messages(self) -> list[Message]:
        """The request's messages for the pipeline: one leading system message, then the conversation."""
        return with_system(self.system, self.messages)


def with_system(system: list[str], messages: list[Message]) -> list[Message]:
    if not system:
        return messages
    return [{"role": "system", "content": "\n\n".join(system)}, *messages]


def _bad(message: str, param: str | None) -> RequestError:
    return RequestError(message, param=param)


def fc_id(call_id: str) -> str:
    """A function call item's ``id``, derived from its ``call_id``: stable wherever the call is shown
    again (the stream, the Response object, conversation items) and never equal to the ``call_id``."""
    return "fc_" + hashlib.blake2b(call_id.encode(), digest_size=12).hexdigest()


# --- input items -----------------------------------------------------------------------------------


def _texts(content: Any, where: str) -> tuple[list[JSON], bool]:
    """Chat content parts of a Responses message's content, and whether all of them are text."""
    if isinstance(content, str):
        return [{"type": "text", "text": content}], True
    if content is None:
        return [], True
    if not isinstance(content, list):
        raise _bad(f"{where} must be a string or an array of content parts", where)
    parts: list[JSON] = []
    only_text = True
    for j, part in enumerate(content):
        if isinstance(part, str):  # lenient: a bare string is its text
            parts.append({"type": "text", "text": part})
            continue
        if not isinstance(part, dict) or not isinstance(part.get("type"), str):
            raise _bad(f"{where}[{j}] must be an object with a string 'type'", f"{where}[{j}]")
        kind = part["type"]
        if kind in _TEXT_PARTS:
            text = part.get("text", part.get("refusal"))
            if not isinstance(text, str):
                raise _bad(f"{where}[{j}].text must be a string", f"{where}[{j}].text")
            parts.append({"type": "text", "text": text})
        elif kind == "input_image":
            url = part.get("image_url")
            if isinstance(url, dict):
                url = url.get("url")
            if isinstance(url, str) and url:
                image: JSON = {"url": url}
                if isinstance(part.get("detail"), str) and part["detail"] != "auto":
                    image["detail"] = part["detail"]
                parts.append({"type": "image_url", "image_url": image})
                only_text = False
        elif kind == "input_file" and isinstance(part.get("file_data"), str):
            file: JSON = {"file_data": part["file_data"]}
            if isinstance(part.get("filename"), str):
                file["filename"] = part["filename"]
            parts.append({"type": "file", "file": file})
            only_text = False
        # other parts (input_audio, a file_id only sorat cannot fetch…) are left out
    return parts, only_text


def _chat_content(parts: list[JSON], only_text: bool) -> Any:
    if only_text:
        return "".join(p["text"] for p in parts) if len(parts) != 1 else parts[0]["text"]
    return parts


def _output_text(output: Any, where: str) -> str:
    """A tool output as the text a chat tool message carries."""
    if isinstance(output, str):
        return output
    if isinstance(output, list):
        out = []
        for j, part in enumerate(output):
            if isinstance(part, dict) and part.get("type") in _TEXT_PARTS:
                text = part.get("text")
                if not isinstance(text, str):
                    raise _bad(f"{where}[{j}].text must be a string", f"{where}[{j}].text")
                out.append(text)
            elif isinstance(part, dict) and part.get("type") in ("input_image", "input_file"):
                out.append(f"[{part['type'][6:]} omitted: the model takes text results only]")
            elif isinstance(part, str):
                out.append(part)
            else:
                raise _bad(f"{where}[{j}] must be a content part", f"{where}[{j}]")
        return "".join(out)
    if output is None:
        raise _bad(f"{where} is required", where)
    return orjson.dumps(output).decode()  # lenient: a JSON value is its JSON text


class _Items:
    """One pass over input items; the assistant message being built collects one turn's calls."""

    __slots__ = ("system", "messages", "calls", "orphans", "_assistant", "_content")

    def __init__(self) -> None:
        self.system: list[str] = []
        self.messages: list[Message] = []
        self.calls: set[str] = set()
        self.orphans: list[str] = []
        self._assistant: Message | None = None
        self._content: list[str] = []

    def flush(self) -> None:
        a = self._assistant
        if a is not None:
            if self._content:
                a["content"] = "".join(self._content)
            self.messages.append(a)
            self._assistant, self._content = None, []

    def _pending(self) -> Message:
        if self._assistant is None:
            self._assistant = {"role": "assistant", "content": None}
        return self._assistant

    def add(self, item: Any, where: str) -> None:
        if isinstance(item, str):  # lenient: a bare string is a user message
            item = {"role": "user", "content": item}
        if not isinstance(item, dict):
            raise _bad(f"{where} must be an object", where)
        kind = item.get("type")
        if kind is None or kind == "message":
            self._message(item, where)
        elif kind in ("function_call", "custom_tool_call"):
            self._call(item, kind, where)
        elif kind in ("function_call_output", "custom_tool_call_output"):
            call_id = item.get("call_id")
            if not isinstance(call_id, str) or not call_id:
                raise _bad(f"{where}.call_id must be a non-empty string", f"{where}.call_id")
            content = _output_text(item.get("output"), f"{where}.output")
            self.flush()
            if call_id not in self.calls:
                self.orphans.append(call_id)
            self.messages.append({"role": "tool", "tool_call_id": call_id, "content": content})
        elif not isinstance(kind, str):
            raise _bad(f"{where}.type must be a string", f"{where}.type")
        # sorat's own echoed items and unknown item types are skipped, never a 400 (_ECHOED and the rest)

    def _message(self, item: JSON, where: str) -> None:
        role = item.get("role")
        if role not in _ROLES:
            raise _bad(
                f"{where}.role must be one of {', '.join(sorted(_ROLES))}, not {role!r}", f"{where}.role"
            )
        if "content" not in item:
            raise _bad(f"{where}.content is required", f"{where}.content")
        parts, only_text = _texts(item["content"], f"{where}.content")
        if role in ("system", "developer"):
            text = "".join(p["text"] for p in parts if p["type"] == "text")
            if text:
                self.system.append(text)
        elif role == "assistant":
            self._pending()
            self._content.extend(p["text"] for p in parts if p["type"] == "text")
        else:
            self.flush()
            self.messages.append({"role": "user", "content": _chat_content(parts, only_text)})

    def _call(self, item: JSON, kind: str, where: str) -> None:
        call_id, name = item.get("call_id"), item.get("name")
        if not isinstance(call_id, str) or not call_id:
            raise _bad(f"{where}.call_id must be a non-empty string", f"{where}.call_id")
        if not isinstance(name, str) or not name:
            raise _bad(f"{where}.name must be a non-empty string", f"{where}.name")
        if kind == "custom_tool_call":
            text = item.get("input")
            if not isinstance(text, str):
                raise _bad(f"{where}.input must be a string", f"{where}.input")
            arguments = orjson.dumps({"input": text}).decode()
        else:
            arguments = item.get("arguments", "")
            if isinstance(arguments, dict):
                arguments = orjson.dumps(arguments).decode()
            if not isinstance(arguments, str):
                raise _bad(f"{where}.arguments must be a string of JSON", f"{where}.arguments")
        namespace = item.get("namespace")
        if isinstance(namespace, str) and namespace:
            name = namespace + _NAMESPACE_SEP + name
        a = self._pending()
        a.setdefault("tool_calls", []).append(
            {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}
        )
        self.calls.add(call_id)


def parse_items(items: Iterable[Any], where: str = "input") -> tuple[list[str], list[Message], list[str]]:
    """(system texts, conversation messages, orphan call_ids) of a list of input items."""
    state = _Items()
    for i, item in enumerate(items):
        state.add(item, f"{where}[{i}]")
    state.flush()
    return state.system, state.messages, state.orphans


# --- tools -----------------------------------------------------------------------------------------


def _function(t: JSON, where: str, namespace: str | None) -> tuple[JSON, ClientTool]:
    name = t.get("name")
    if not isinstance(name, str) or not name:
        raise _bad(f"{where}.name must be a non-empty string", f"{where}.name")
    description = t.get("description")
    if description is not None and not isinstance(description, str):
        raise _bad(f"{where}.description must be a string", f"{where}.description")
    fn: JSON = {"name": namespace + _NAMESPACE_SEP + name if namespace else name}
    if description:
        fn["description"] = description
    if t.get("type") == "custom":
        fmt = t.get("format")
        hint = ""
        if isinstance(fmt, dict) and fmt.get("type") == "grammar" and isinstance(fmt.get("definition"), str):
            hint = f"The input follows this {fmt.get('syntax') or 'grammar'} grammar:\n{fmt['definition']}"
        fn["parameters"] = {
            "type": "object",
            "properties": {"input": {"type": "string", **({"description": hint} if hint else {})}},
            "required": ["input"],
        }
        return {"type": "function", "function": fn}, ClientTool("custom", name, namespace)
    parameters = t.get("parameters")
    if parameters is not None:
        if not isinstance(parameters, dict):
            raise _bad(f"{where}.parameters must be an object", f"{where}.parameters")
        fn["parameters"] = parameters
    if isinstance(t.get("strict"), bool):
        fn["strict"] = t["strict"]
    return {"type": "function", "function": fn}, ClientTool("function", name, namespace)


def parse_tools(tools: Any) -> tuple[list[JSON], dict[str, ClientTool], list[str]]:
    """(chat function tools, how each call goes back by its chat name, tool types left out)."""
    if tools is None:
        return [], {}, []
    if not isinstance(tools, list):
        raise _bad("tools must be an array", "tools")
    out: list[JSON] = []
    names: dict[str, ClientTool] = {}
    skipped: list[str] = []

    def add(t: Any, where: str, namespace: str | None) -> None:
        if not isinstance(t, dict) or not isinstance(t.get("type"), str):
            raise _bad(f"{where} must be an object with a string 'type'", where)
        kind = t["type"]
        if kind in ("function", "custom"):
            chat, client = _function(t, where, namespace)
            flat = chat["function"]["name"]
            if flat not in names:  # a name declared twice: the first declaration stands
                out.append(chat)
                names[flat] = client
        elif kind == "namespace" and namespace is None:
            ns = t.get("name")
            inner = t.get("tools")
            if not isinstance(ns, str) or not ns:
                raise _bad(f"{where}.name must be a non-empty string", f"{where}.name")
            if not isinstance(inner, list):
                raise _bad(f"{where}.tools must be an array", f"{where}.tools")
            for j, sub in enumerate(inner):
                add(sub, f"{where}.tools[{j}]", ns)
        else:
            skipped.append(kind)

    for i, t in enumerate(tools):
        add(t, f"tools[{i}]", None)
    return out, names, skipped


def _tool_choice(choice: Any) -> Any:
    if choice is None or choice in ("auto", "none", "required"):
        return choice
    if isinstance(choice, str):
        raise _bad("tool_choice must be auto, none, required or an object", "tool_choice")
    if not isinstance(choice, dict):
        raise _bad("tool_choice must be a string or an object", "tool_choice")
    kind, name = choice.get("type"), choice.get("name")
    if kind in ("function", "custom") and isinstance(name, str) and name:
        namespace = choice.get("namespace")
        if isinstance(namespace, str) and namespace:
            name = namespace + _NAMESPACE_SEP + name
        return {"type": "function", "function": {"name": name}}
    if kind == "allowed_tools":
        mode = choice.get("mode")
        return "required" if mode == "required" else "auto"
    return "auto"  # a hosted tool: sorat's own tools serve the model


# --- settings --------------------------------------------------------------------------------------


def _response_format(text: Any) -> JSON | None:
    if text is None:
        return None
    if not isinstance(text, dict):
        raise _bad("text must be an object", "text")
    fmt = text.get("format")
    if fmt is None:
        return None
    if not isinstance(fmt, dict) or not isinstance(fmt.get("type"), str):
        raise _bad("text.format must be an object with a string 'type'", "text.format")
    if fmt["type"] == "json_schema":
        schema = {k: fmt[k] for k in ("name", "schema", "strict", "description") if k in fmt}
        return {"type": "json_schema", "json_schema": schema}
    if fmt["type"] == "json_object":
        return {"type": "json_object"}
    return None


def _optional(data: JSON, key: str, kind: type | tuple[type, ...], what: str) -> Any:
    value = data.get(key)
    if value is not None and (isinstance(value, bool) != (kind is bool) or not isinstance(value, kind)):
        raise _bad(f"'{key}' must be {what}", key)
    return value


def _params(data: JSON) -> JSON:
    params: JSON = {}
    for key in ("temperature", "top_p"):
        value = _optional(data, key, (int, float), "a number")
        if value is not None:
            params[key] = value
    limit = _optional(data, "max_output_tokens", int, "an integer")
    if limit is not None:
        params["max_tokens"] = limit  # per model call
    parallel = _optional(data, "parallel_tool_calls", bool, "a boolean")
    if parallel is not None:
        params["parallel_tool_calls"] = parallel
    fmt = _response_format(data.get("text"))
    if fmt is not None:
        params["response_format"] = fmt
    reasoning = data.get("reasoning")
    if reasoning is not None and not isinstance(reasoning, dict):
        raise _bad("'reasoning' must be an object", "reasoning")
    if reasoning and isinstance(reasoning.get("effort"), str):
        params["reasoning_effort"] = reasoning["effort"]
    return params


_ECHO = (
    "instructions", "max_output_tokens", "metadata", "parallel_tool_calls", "reasoning", "temperature",
    "text", "tool_choice", "tools", "top_p", "truncation", "user", "service_tier", "prompt_cache_key",
)  # fmt: skip


def _conversation(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, dict):
        value = value.get("id")
    if not isinstance(value, str) or not value:
        raise _bad("'conversation' must be a conversation id or {'id': ...}", "conversation")
    return value


def parse_request(body: bytes) -> ResponsesRequest:
    """A client's POST /v1/responses body, checked; RequestError (400) names the bad field."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as e:
        raise _bad(f"The request body is not valid JSON: {e}", None) from None
    if not isinstance(data, dict):
        raise _bad("The request body must be a JSON object", None)
    if data.get("background") is True:
        raise _bad("background responses are not supported by sorat; leave 'background' out", "background")
    model = _optional(data, "model", str, "a string")
    stream = _optional(data, "stream", bool, "a boolean")
    store = _optional(data, "store", bool, "a boolean")
    previous = _optional(data, "previous_response_id", str, "a string")
    conversation = _conversation(data.get("conversation"))
    if previous and conversation:
        raise _bad(
            "previous_response_id and conversation cannot be used together: give one of them", "conversation"
        )
    raw = data.get("input")
    if raw is None:
        items: list[Any] = []
    elif isinstance(raw, str):
        items = [{"type": "message", "role": "user", "content": raw}]
    elif isinstance(raw, list):
        items = raw
    else:
        raise _bad("'input' must be a string or an array of items", "input")
    system, messages, orphans = parse_items(items)
    instructions = data.get("instructions")
    if isinstance(instructions, str):
        if instructions:
            system.insert(0, instructions)
    elif isinstance(instructions, list):
        system[:0] = parse_items(instructions, "instructions")[0]
    elif instructions is not None:
        raise _bad("'instructions' must be a string", "instructions")
    tools, client_tools, skipped = parse_tools(data.get("tools"))
    tool_choice = _tool_choice(data.get("tool_choice"))
    params = _params(data)
    try:  # orjson reads 1024 levels of nesting but writes only 255: refuse what could not be sent on
        orjson.dumps((messages, tools, params))
    except TypeError:
        raise _bad("The request is nested too deeply (more than 255 levels)", None) from None
    if data.get("metadata") is not None and not isinstance(data["metadata"], dict):
        raise _bad("'metadata' must be an object of strings", "metadata")
    echo = {k: data[k] for k in _ECHO if data.get(k) is not None}
    return ResponsesRequest(
        system=system,
        messages=messages,
        model=model or None,
        stream=bool(stream),
        store=store is not False,
        tools=tools,
        client_tools=client_tools,
        tool_choice=tool_choice,
        params=params,
        previous_response_id=previous or None,
        conversation=conversation,
        orphans=orphans,
        skipped_tools=skipped,
        items=items,
        echo=echo,
    )
