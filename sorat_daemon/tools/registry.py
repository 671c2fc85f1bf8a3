"""Tools as plain typed functions, and the immutable set of them offered to one request.

``@tool`` turns a function into a ``Tool``: the JSON schema comes from the signature, the description
from the docstring (per-argument text from an ``Args:`` section or ``Annotated[str, "..."]``). A
parameter named ``ctx`` receives the ``ToolContext`` and is not part of the schema.

``Toolset.call`` never raises (except ``CancelledError``): whatever goes wrong becomes an
``{"error": ...}`` result for the model, as a tool's failure is something the model can react to.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import re
import time
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

import orjson

from sorat_daemon.paths import Home

log = logging.getLogger("sorat.tools")

DEFAULT_TIMEOUT_S = 120.0
_LOG_ARGS_CHARS = 200


class ToolError(Exception):
    """A failure the tool explains itself; its message goes to the model as is."""


@dataclass(frozen=True, slots=True)
class ToolContext:
    home: Home
    session_id: str | None = None
    env: Mapping[str, str] | None = None  # overrides os.environ for subprocesses (tests)


@dataclass(frozen=True, slots=True)
class Tool:
    name: str
    description: str
    parameters: dict[str, Any]  # JSON schema of the arguments object
    fn: Callable[..., Any]  # sync (runs in a thread) or async
    timeout_s: float | None = DEFAULT_TIMEOUT_S
    takes_ctx: bool = field(default=False, compare=False)
    family: str = field(default="", compare=False)  # config.TOOL_FAMILIES: what [agent] settings name

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Call the function itself (no checks, no timeout): for Python callers and tests."""
        return self.fn(*args, **kwargs)

    def spec(self) -> dict[str, Any]:
        return {
            "type": "function",
            "function": {"name": self.name, "description": self.description, "parameters": self.parameters},
        }


_UNSET: Any = object()


@typing.overload
def tool(fn: Callable[..., Any], *, name: str | None = None, timeout_s: float | None = ...) -> Tool: ...


@typing.overload
def tool(
    fn: None = None, *, name: str | None = None, timeout_s: float | None = ...
) -> Callable[[Callable[..., Any]], Tool]: ...


def tool(
    fn: Callable[..., Any] | None = None,
    *,
    name: str | None = None,
    timeout_s: float | None = _UNSET,
) -> Tool | Callable[[Callable[..., Any]], Tool]:
    """Make a ``Tool`` of a typed function; usable as ``@tool`` or ``@tool(name=..., timeout_s=...)``."""

    def make(f: Callable[..., Any]) -> Tool:
        description, arg_docs = _parse_docstring(inspect.getdoc(f) or "")
        parameters, takes_ctx = _schema_of(f, arg_docs)
        return Tool(
            name=name or f.__name__,
            description=description,
            parameters=parameters,
            fn=f,
            timeout_s=DEFAULT_TIMEOUT_S if timeout_s is _UNSET else timeout_s,
            takes_ctx=takes_ctx,
        )

    return make(fn) if fn is not None else make


# --- schema from the signature ----------------------------------------------------------------

_ARGS_HEADER = re.compile(r"^\s*(Args|Arguments|Parameters):\s*$")
_ARG_LINE = re.compile(r"^\s*\**(\w+)\s*(?:\([^)]*\))?\s*:\s*(.*)$")


def _parse_docstring(doc: str) -> tuple[str, dict[str, str]]:
    """The description (the docstring without its ``Args:`` section) and each argument's text."""
    lines = doc.splitlines()
    out: list[str] = []
    args: dict[str, str] = {}
    i = 0
    while i < len(lines):
        if not _ARGS_HEADER.match(lines[i]):
            out.append(lines[i])
            i += 1
            continue
        header_indent = _indent(lines[i])
        arg_indent: int | None = None
        current: str | None = None
        i += 1
        while i < len(lines):
            line = lines[i]
            if line.strip() and _indent(line) <= header_indent:
                break  # dedented: the section is over
            if arg_indent is None and line.strip():
                arg_indent = _indent(line)
            m = _ARG_LINE.match(line)
            if m and _indent(line) == arg_indent:
                current = m.group(1)
                args[current] = m.group(2).strip()
            elif current and line.strip():
                args[current] = f"{args[current]} {line.strip()}".strip()
            i += 1
    return "\n".join(out).strip(), args


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


_SIMPLE: dict[Any, dict[str, Any]] = {
    str: {"type": "string"},
    int: {"type": "integer"},
    float: {"type": "number"},
    bool: {"type": "boolean"},
    dict: {"type": "object"},
    list: {"type": "array"},
    Any: {},
}


def _type_schema(hint: Any) -> dict[str, Any]:
    if hint in _SIMPLE:
        return dict(_SIMPLE[hint])
    origin = get_origin(hint)
    args = get_args(hint)
    if origin is typing.Annotated:
        schema = _type_schema(args[0])
        text = next((a for a in args[1:] if isinstance(a, str)), None)
        if text:
            schema["description"] = text
        return schema
    if origin in (list, tuple, set, frozenset) or origin is getattr(typing, "Sequence", None):
        items = _type_schema(args[0]) if args and args[0] is not Ellipsis else {}
        return {"type": "array", "items": items} if items else {"type": "array"}
    if origin is dict:
        return {"type": "object"}
    if origin is Literal:
        kinds = {type(a) for a in args}
        base = _type_schema(kinds.pop()) if len(kinds) == 1 else {}
        return {**base, "enum": list(args)}
    if origin is Union or origin is types.UnionType:
        rest = [a for a in args if a is not type(None)]
        if len(rest) == 1:
            return _type_schema(rest[0])  # X | None: optional, the absence (or null) means None
        return {"anyOf": [_type_schema(a) for a in rest]}
    raise TypeError(f"unsupported parameter type for a tool: {hint!r}")


def _schema_of(fn: Callable[..., Any], arg_docs: Mapping[str, str]) -> tuple[dict[str, Any], bool]:
    hints = get_type_hints(fn, include_extras=True)
    properties: dict[str, Any] = {}
    required: list[str] = []
    takes_ctx = False
    for p in inspect.signature(fn).parameters.values():
        if p.name == "ctx":
            takes_ctx = True
            continue
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            raise TypeError(f"tool {fn.__name__}: *args/**kwargs cannot be described to a model")
        schema = _type_schema(hints.get(p.name, Any))
        if p.name in arg_docs and "description" not in schema:
            schema["description"] = arg_docs[p.name]
        properties[p.name] = schema
        if p.default is p.empty:
            required.append(p.name)
    parameters: dict[str, Any] = {"type": "object", "properties": properties, "required": required}
    parameters["additionalProperties"] = False
    return parameters, takes_ctx


# --- argument checking against the schema ------------------------------------------------------

_JSON_TYPES: dict[str, Callable[[Any], bool]] = {
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "array": lambda v: isinstance(v, list),
    "object": lambda v: isinstance(v, dict),
    "null": lambda v: v is None,
}


def _check(value: Any, schema: Mapping[str, Any], where: str) -> Any:
    """``value`` if it fits the (subset of JSON schema we understand), else ValueError naming ``where``.

    Unknown keywords are ignored: MCP servers send richer schemas and check their own arguments.
    """
    if "anyOf" in schema or "oneOf" in schema:
        options = schema.get("anyOf") or schema.get("oneOf") or []
        for option in options:
            try:
                return _check(value, option, where)
            except ValueError:
                continue
        if options:
            raise ValueError(f"argument '{where}' has the wrong type ({_kind(value)})")
    kind = schema.get("type")
    if kind is not None:
        kinds = kind if isinstance(kind, list) else [kind]
        if "integer" in kinds and isinstance(value, float) and value.is_integer():
            value = int(value)  # 3.0 from a model that writes numbers as floats
        if not any(_JSON_TYPES.get(k, lambda v: True)(value) for k in kinds):
            raise ValueError(
                f"argument '{where}' must be {' or '.join(_a(k) for k in kinds)}, not {_kind(value)}"
            )
    if "enum" in schema and value not in schema["enum"]:
        choices = ", ".join(orjson.dumps(c).decode() for c in schema["enum"])
        raise ValueError(f"argument '{where}' must be one of {choices}")
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        value = [_check(v, schema["items"], f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, dict) and ("properties" in schema or "required" in schema):
        value = _check_object(value, schema, where)
    return value


def _check_object(value: dict[str, Any], schema: Mapping[str, Any], where: str) -> dict[str, Any]:
    props: Mapping[str, Any] = schema.get("properties") or {}
    required = set(schema.get("required") or ())
    prefix = f"{where}." if where else ""
    out: dict[str, Any] = {}
    for key, v in value.items():
        if key not in props:
            if schema.get("additionalProperties") is False:
                known = ", ".join(props) or "none"
                raise ValueError(f"unexpected argument {prefix}{key!r} (arguments: {known})")
            out[key] = v
            continue
        if v is None and key not in required:
            continue  # null for an optional argument: as if absent
        out[key] = _check(v, props[key], prefix + key)
    missing = [k for k in props if k in required and k not in out]
    missing += [k for k in required if k not in props and k not in out]
    if missing:
        raise ValueError(
            "missing required argument"
            + ("s " if len(missing) > 1 else " ")
            + ", ".join(repr(prefix + k) for k in missing)
        )
    return out


def _a(kind: str) -> str:
    return {"integer": "an integer", "array": "an array", "object": "an object", "null": "null"}.get(
        kind, f"a {kind}"
    )


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    return {
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        str: "a string",
        list: "an array",
        dict: "an object",
    }.get(type(value), type(value).__name__)


def parse_arguments(tool: Tool, arguments: str | Mapping[str, Any] | None) -> dict[str, Any]:
    """The model's JSON text as checked keyword arguments; ValueError says what is wrong."""
    if isinstance(arguments, Mapping):  # some providers send the object itself
        return _check_object(dict(arguments), tool.parameters, "")
    text = (arguments or "").strip()
    if not text:
        data: Any = {}
    else:
        try:
            data = orjson.loads(text)
        except orjson.JSONDecodeError as e:
            raise ValueError(f"arguments are not valid JSON: {e}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ValueError(f"arguments must be a JSON object, not {_kind(data)}")
    return _check_object(data, tool.parameters, "")


def encode_result(result: Any) -> str:
    """What the model reads: a string as is, anything else as JSON."""
    if isinstance(result, str):
        return result
    return orjson.dumps(result, default=str, option=orjson.OPT_NON_STR_KEYS).decode()


def _error(message: str) -> str:
    return orjson.dumps({"error": message}).decode()


def _shorten(value: object, limit: int = _LOG_ARGS_CHARS) -> str:
    text = " ".join(str(value or "").split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


class Toolset:
    """An immutable snapshot of the tools offered; one per tools.toml version (plus MCP state)."""

    __slots__ = ("_tools", "_specs", "_subsets")

    def __init__(self, tools: Iterable[Tool] = ()) -> None:
        by_name: dict[str, Tool] = {}
        for t in tools:
            if t.name in by_name:
                raise ValueError(f"two tools are named {t.name!r}")
            by_name[t.name] = t
        self._tools: Mapping[str, Tool] = types.MappingProxyType(by_name)
        self._specs = [t.spec() for t in by_name.values()]
        self._subsets: dict[tuple[str, ...], Toolset] = {}

    def only(self, families: tuple[str, ...]) -> Toolset:
        """The tools of these families (made once per snapshot: requests ask for the same few sets)."""
        subset = self._subsets.get(families)
        if subset is None:
            subset = self._subsets[families] = Toolset(t for t in self if t.family in families)
        return subset

    def specs(self) -> list[dict[str, Any]]:
        """The OpenAI ``tools`` entries (shared; do not mutate)."""
        return self._specs

    def __contains__(self, name: object) -> bool:
        return name in self._tools

    def __len__(self) -> int:
        return len(self._tools)

    def __iter__(self) -> typing.Iterator[Tool]:
        return iter(self._tools.values())

    def __repr__(self) -> str:
        return f"Toolset({', '.join(self._tools)})"

    def names(self) -> list[str]:
        return list(self._tools)

    def get(self, name: str) -> Tool | None:
        return self._tools.get(name)

    async def call(self, name: str, arguments: str, ctx: ToolContext) -> str:
        """Run a tool for the model; the result (or the error) as the JSON text the model reads."""
        started = time.monotonic()
        outcome = "ok"
        try:
            result = await self._run(name, arguments, ctx)
            return encode_result(result)
        except ToolError as e:
            outcome = f"error: {e}"
            return _error(str(e))
        except TimeoutError:
            t = self._tools.get(name)
            outcome = f"error: timed out after {t.timeout_s if t else '?'} s"
            return _error(f"the tool {name} timed out after {t.timeout_s if t else '?'} s")
        except asyncio.CancelledError:
            outcome = "cancelled"
            raise
        except Exception as e:
            log.debug("tool %s failed", name, exc_info=True)
            outcome = f"error: {type(e).__name__}: {e}"
            return _error(f"{type(e).__name__}: {e}" if str(e) else type(e).__name__)
        finally:
            log.info(
                "tool %s args=%s %d ms %s session=%s",
                name,
                _shorten(arguments),
                (time.monotonic() - started) * 1000,
                _shorten(outcome, 300),
                ctx.session_id or "-",
            )

    async def _run(self, name: str, arguments: str, ctx: ToolContext) -> Any:
        t = self._tools.get(name)
        if t is None:
            known = ", ".join(self._tools) or "none"
            raise ToolError(f"unknown tool {name!r} (available: {known})")
        try:
            kwargs = parse_arguments(t, arguments)
        except ValueError as e:
            raise ToolError(f"{name}: {e}") from None
        if t.takes_ctx:
            kwargs["ctx"] = ctx
        async with asyncio.timeout(t.timeout_s):
            if inspect.iscoroutinefunction(t.fn):
                return await t.fn(**kwargs)
            result = await asyncio.to_thread(t.fn, **kwargs)
            if inspect.isawaitable(result):
                result = await result
            return result
