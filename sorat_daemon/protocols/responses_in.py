"""OpenAI Responses in: a client's ``POST /v1/responses`` body checked and turned into what the turn
pipeline takes: chat messages (``responses_items``), chat function tools (``function`` tools as they are,
``custom`` ones as functions of one string ``input``, ``namespace`` ones flattened to
``<namespace>__<name>``, hosted ones left out) and the provider's params. Pure: no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from sorat_daemon.errors import RequestError
from sorat_daemon.protocols.resent import Resent, parse_object
from sorat_daemon.protocols.responses_items import (
    NAMESPACE_SEP,
    ClientTool,
    ItemsRead,
    parse_items,
    read_items,
    with_system,
)
from sorat_daemon.types import JSON, Message

# Tool types OpenAI runs on its side; a chat provider cannot take them, and sorat's own tools stand in.
HOSTED_TOOLS = frozenset(
    """web_search web_search_preview web_search_preview_2025_03_11 web_search_2025_08_26 file_search
    code_interpreter image_generation computer_use_preview computer_use computer mcp local_shell shell
    apply_patch tool_search""".split()
)


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
    echo: JSON = field(default_factory=dict)  # request settings the Response object repeats

    def chat_messages(self) -> list[Message]:
        """The request's messages for the pipeline: one leading system message, then the conversation."""
        return with_system(self.system, self.messages)


def _bad(message: str, param: str | None) -> RequestError:
    return RequestError(message, param=param)


# --- tools -----------------------------------------------------------------------------------------


def _function(t: JSON, where: str, namespace: str | None) -> tuple[JSON, ClientTool]:
    name = t.get("name")
    if not isinstance(name, str) or not name:
        raise _bad(f"{where}.name must be a non-empty string", f"{where}.name")
    description = t.get("description")
    if description is not None and not isinstance(description, str):
        raise _bad(f"{where}.description must be a string", f"{where}.description")
    fn: JSON = {"name": namespace + NAMESPACE_SEP + name if namespace else name}
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
            name = namespace + NAMESPACE_SEP + name
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


def parse_request(body: bytes, resent: Resent | None = None) -> ResponsesRequest:
    """A client's POST /v1/responses body, checked; RequestError (400) names the bad field. With
    ``resent``, a body that resends an earlier one's items (Codex, every turn) has only its new ones read."""
    parsed = parse_object(body, resent)
    data = parsed.data
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
    prior = parsed.prior if isinstance(parsed.prior, ItemsRead) else None
    system, messages, orphans, read = read_items(items, prior=prior, same=parsed.reused)
    parsed.keep(read)
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
    if data.get("metadata") is not None and not isinstance(data["metadata"], dict):
        raise _bad("'metadata' must be an object of strings", "metadata")
    echo = {k: data[k] for k in _ECHO if data.get(k) is not None}
    # orjson reads 1024 levels of nesting but writes only 255: refuse what could not be sent on. The
    # messages are built of strings here; what is passed through as given is checked.
    try:
        orjson.dumps((tools, params, echo))
    except TypeError:
        raise _bad("The request is nested too deeply (more than 255 levels)", None) from None
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
        echo=echo,
    )
