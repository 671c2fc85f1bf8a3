"""A stored session as the pages show it: messages grouped into turns, each internal tool call paired
with its result and duration, long outputs cut to a preview; and the session as a Markdown export.

Input is ``SessionStore.get(…, include_superseded=True)``: OpenAI chat messages, each with a
``timestamp`` and the store's ``internal`` / ``superseded`` marks. Nothing here renders HTML: the
templates escape every string, and only the assistant's markdown goes through ``ui.markdown``.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from typing import Any

import orjson

from sorat_daemon.wire import text_of

PREVIEW_CHARS = 1500
PREVIEW_LINES = 20


@dataclass(slots=True)
class Output:
    """A text that may be long: ``preview`` is what shows until "show all"."""

    text: str
    preview: str
    long: bool

    @classmethod
    def of(cls, text: str) -> Output:
        text = readable(text)
        lines = text.split("\n", PREVIEW_LINES)
        preview = "\n".join(lines[:PREVIEW_LINES])[:PREVIEW_CHARS]
        return cls(text, preview, len(preview) < len(text))


@dataclass(slots=True)
class ToolView:
    id: str
    name: str
    arguments: str  # pretty-printed when it is JSON
    result: Output | None = None  # None: no result was stored (the run stopped first)
    error: bool = False  # the result is the error object a failed call gives the model
    duration_ms: float | None = None
    internal: bool = True  # ran by sorat; False: a tool the client declared and ran itself


@dataclass(slots=True)
class Part:
    kind: str  # text | reasoning | tool
    text: str = ""
    tool: ToolView | None = None


@dataclass(slots=True)
class Entry:
    """One block of the conversation: a user message, or what the assistant said and did after it."""

    role: str  # system | user | assistant
    parts: list[Part] = field(default_factory=list)
    timestamp: float = 0.0
    superseded: bool = False

    @property
    def text(self) -> str:
        """The entry's text as it was written, for the copy button."""
        return "\n\n".join(p.text for p in self.parts if p.kind == "text" and p.text)


def pretty_json(text: str) -> str:
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        return text
    if isinstance(value, str):
        return value
    return orjson.dumps(value, option=orjson.OPT_INDENT_2).decode()


def readable(output: str) -> str:
    """A tool's result as a person reads it: the JSON object the model got, one field a line, its long
    strings (a command's stdout, a page's text) with their own line breaks instead of ``\\n``."""
    if not output.startswith("{"):
        return output
    try:
        value = orjson.loads(output)
    except orjson.JSONDecodeError:
        return output
    if not isinstance(value, dict):
        return output
    lines = []
    for key, item in value.items():
        if isinstance(item, str) and ("\n" in item or len(item) > 80):
            lines.append(f"{key}:\n{item.rstrip()}")
        else:
            shown = item if isinstance(item, str) else orjson.dumps(item).decode()
            lines.append(f"{key}: {shown}".rstrip())
    return "\n".join(lines)


def is_error(output: str) -> bool:
    """The result is the ``{"error": …}`` object a failed call gives the model."""
    if not output.startswith('{"error"'):
        return False
    try:
        value = orjson.loads(output)
    except orjson.JSONDecodeError:
        return False
    return isinstance(value, dict) and set(value) == {"error"}


def conversation(messages: list[dict[str, Any]], *, superseded: bool = False) -> list[Entry]:
    """The entries of a session; superseded messages only when asked for (then marked)."""
    entries: list[Entry] = []
    calls: dict[str, tuple[ToolView, float]] = {}
    for m in messages:
        gone = bool(m.get("superseded"))
        if gone and not superseded:
            continue
        role = m.get("role")
        ts = float(m.get("timestamp") or 0)
        if role == "tool":
            call_id = str(m.get("tool_call_id") or "")
            output = text_of(m.get("content"))
            found = calls.get(call_id)
            if found is None:  # a result whose call is not shown: show it on its own
                view = ToolView(call_id, "tool result", "", internal=bool(m.get("internal")))
                _entry(entries, "assistant", ts, gone).parts.append(Part("tool", tool=view))
            else:
                view, called_at = found
                view.duration_ms = max(0.0, (ts - called_at) * 1000) if ts and called_at else None
                view.internal = bool(m.get("internal"))  # a client's own results came from the client
            view.result = Output.of(output)
            view.error = is_error(output)
            continue
        if role not in ("system", "developer", "user", "assistant"):
            continue
        role = "system" if role == "developer" else role
        entry = _entry(entries, role, ts, gone, merge=role == "assistant")
        if role == "assistant" and m.get("reasoning_content"):
            entry.parts.append(Part("reasoning", str(m["reasoning_content"])))
        text = text_of(m.get("content"))
        if text:
            entry.parts.append(Part("text", text))
        for call in m.get("tool_calls") or ():
            fn = call.get("function") or {}
            view = ToolView(
                str(call.get("id") or ""),
                str(fn.get("name") or "?"),
                pretty_json(str(fn.get("arguments") or "")),
            )
            calls[view.id] = (view, ts)
            entry.parts.append(Part("tool", tool=view))
    return entries


def _entry(entries: list[Entry], role: str, ts: float, gone: bool, *, merge: bool = False) -> Entry:
    last = entries[-1] if entries else None
    if merge and last is not None and last.role == role and last.superseded == gone:
        return last
    entry = Entry(role, timestamp=ts, superseded=gone)
    entries.append(entry)
    return entry


def superseded_count(messages: list[dict[str, Any]]) -> int:
    return sum(1 for m in messages if m.get("superseded"))


# --- export ------------------------------------------------------------------------------------------


def _fence(text: str, info: str = "") -> str:
    """``text`` in a code fence longer than any run of backticks inside it."""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    ticks = "`" * max(3, longest + 1)
    return f"{ticks}{info}\n{text}\n{ticks}"


def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) if ts else ""


def markdown_export(session: dict[str, Any]) -> str:
    """The conversation (without superseded messages) as a Markdown document."""
    title = session.get("title") or session.get("id") or "Session"
    out = [f"# {title}", ""]
    out.append(f"- Session: `{session.get('id')}`")
    if session.get("model"):
        out.append(f"- Model: {session['model']}")
    out.append(f"- Created: {_when(session.get('created_at') or 0)}")
    out.append(f"- Updated: {_when(session.get('updated_at') or 0)}")
    names = {"system": "System", "user": "User", "assistant": "Assistant"}
    for entry in conversation(session.get("messages") or []):
        out += ["", f"## {names[entry.role]} ({_when(entry.timestamp)})", ""]
        for part in entry.parts:
            if part.kind == "text":
                out += [part.text, ""]
            elif part.kind == "reasoning":
                out += ["<details><summary>Reasoning</summary>", "", _fence(part.text), "", "</details>", ""]
            elif part.tool is not None:
                t = part.tool
                took = f" ({t.duration_ms / 1000:.1f} s)" if t.duration_ms is not None else ""
                out += [f"**Tool `{t.name}`**{took}", "", _fence(t.arguments, "json"), ""]
                if t.result is not None:
                    out += ["Result:", "", _fence(t.result.text), ""]
    return "\n".join(out).rstrip() + "\n"
