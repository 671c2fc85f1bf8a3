"""A scripted OpenAI-compatible upstream: a real HTTP server on 127.0.0.1 for tests and benchmarks.

    with Upstream() as up:                          # or up = Upstream().start() ... up.stop()
        up.script(text("Hello world", chunks=3), tool_calls([("run_command", {"command": "ls"})]))
        ...  # point the daemon / a Provider at up.base_url ("http://127.0.0.1:PORT/v1")
        up.wait_for(lambda: len(up.requests) == 2)  # or: await up.until(...)
        assert up.requests[0]["messages"][-1]["content"] == "hi"

It runs in a background thread with its own event loop (uvloop when available), so sync tests, async tests
and tests that drive the daemon as a subprocess can all use it.

Routes: ``POST /v1/chat/completions`` (also ``/chat/completions``), ``GET /v1/models`` (also ``/models``;
OpenAI's list shape from ``models``; ``models = None`` gives a 404). When ``api_key`` is set, a request
without ``Authorization: Bearer <api_key>`` gets OpenAI's 401.

Replies (``script(*replies)``) are consumed one per chat request, in order; with an empty queue the
upstream answers ``default`` (``text("ok")``). A request whose first message is a system message starting
with "Generate a title" is a title request: it gets ``title_reply`` as text, is recorded in
``title_requests`` (not ``requests``), and leaves the queue alone.

Every reply takes the shape the request asks for: SSE when ``"stream": true`` (a final ``choices: []``
chunk with usage when ``stream_options.include_usage``), else a whole ``chat.completion`` with usage;
with ``"logprobs": true`` every content piece carries OpenAI's ``logprobs`` (one token per piece,
``top_logprobs`` alternatives), whole answers ``choices[0].logprobs``.
The default usage is ``USAGE`` (10 + 5 = 15 tokens); pass ``usage=`` to change it.

``strict = True`` makes it behave like a strict provider (OpenAI) where a lenient one would not:
a conversation whose tool traffic is out of order (a ``tool`` message that answers no call of the
assistant message before it, a call left unanswered) gets OpenAI's 400 with its message and param,
whatever is scripted; and a request whose ``tool_choice`` forces a call (``required``: the first tool
offered; a named tool) gets that call with ``{}`` arguments, as an obedient model answers, unless the
next scripted reply is itself a tool call or an error (a scripted text waits for an unforced request).
``reset()`` turns it off.

Builders
    text(content, chunks=1, reasoning=None, reasoning_as="reasoning_content")
        reasoning_as: reasoning_content | reasoning (Ollama, vLLM) | reasoning_details |
                      openrouter (reasoning + reasoning_details) | thought (Gemini's extra_content)
    tool_calls([(name, args), (id, name, args)...], content=None, chunks=2)   args: dict or JSON str;
        each call's arguments stream as a header delta then ``chunks`` fragments; ids are fixed when the
        reply is built (``reply.calls[i][0]``)
    error(status, message, type=None, code=None, headers=None)   an HTTP error with OpenAI's error JSON
    stream_error(message, after=1, style="openai", done=False, content="Hello world", chunks=3)
        an error event inside a 200 stream after ``after`` content pieces; styles: openai
        (``data: {"error":…}``), openrouter (error + ``finish_reason: "error"``), event (``event: error``),
        field (llama.cpp's old ``error: {…}`` line). A non-stream request gets a 200 whose body is the error.
    raw(data_or_frames, status=200, content_type="text/event-stream")   exact bytes, frame by frame
    html(status=200)                                                     a 200 (or other) HTML page

Options of every builder
    delay=s          wait before the headers          hang=True        never send headers
    chunk_delay=s    between frames                   stall_after=K    send K frames, then go silent
    drop_after=K     send K frames, then close the connection mid-body (a reset stream)
    finish_reason=   override the last chunk's value (eos, end_turn, stop after tool calls…)
    usage=           the reported usage              headers=         extra response headers
    quirks={...}     any of QUIRKS:
        crlf, cr           line endings \\r\\n or \\r           nospace      ``data:{…}`` without the space
        comments           ``: OPENROUTER PROCESSING`` first, ``: keep-alive`` between events
        multiline          each JSON payload split over two ``data:`` lines
        no_done            no ``data: [DONE]``                   no_finish    no finish_reason at all
        azure              empty first chunk (prompt_filter_results, choices []), content_filter_results,
                           an annotation chunk without delta after the finish chunk
        extras             unknown fields everywhere (obfuscation, timings, provider, stop_reason…)
        role_every_chunk   ``role: assistant`` in every delta (Ollama, DashScope)
        content_with_finish  the last content piece rides on the finish chunk (vLLM, Gemini)
        whole_tool_calls   each call whole in one delta (Ollama, Mistral)
        no_index           tool calls without ``index`` (Gemini, Mistral)
        index_from_1       tool-call indexes start at 1 (Anthropic)
        empty_name         continuation deltas carry ``id: ""``, ``type`` and ``name: ""`` (LM Studio)
        thought_signature  calls carry ``extra_content.google.thought_signature`` (Gemini)
        groq_usage         usage only in ``x_groq.usage`` on the finish chunk
        usage_on_finish    usage on the finish chunk (Mistral), no separate usage chunk
        usage_every_chunk  cumulative usage on every chunk (vLLM continuous_usage_stats)
        usage_after_stop   the usage chunk has non-empty choices with finish_reason null (OpenRouter)

``reset()`` forgets the script and the records and restores the defaults (for module-scoped fixtures).

Observing: ``requests``, ``title_requests``, ``headers`` (the chat requests' headers, lower-case keys),
``models_requests``, ``disconnects`` (responses the client left before their end), ``wait_for(pred)``
(blocking, on a condition) and ``await until(pred)`` (the same from async code).

Selecting: a module's tests share one Upstream (and often one daemon), and a session of an earlier test
may still ask after ``reset()``: its title waits for a quiet moment. So a test never reads "the last
request" or request N of ``requests``; it reads its own:
    requests_for(marker), title_requests_for(marker), headers_for(marker)
        the requests (their headers) with a user message containing ``marker``: a text only this test
        sends (conftest's ``prompt`` fixture gives one). Every request of a conversation repeats its first
        user message, and a title request quotes it, so the first question marks the whole conversation.
    answering(reply)
        the first chat request carrying the results of ``reply``'s tool calls (their ids are unique).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import uuid
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any

import orjson
from aiohttp import web

CREATED = 1_700_000_000
USAGE = {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}
QUIRKS = frozenset(
    """crlf cr nospace comments multiline no_done no_finish azure extras role_every_chunk content_with_finish
    whole_tool_calls no_index index_from_1 empty_name thought_signature groq_usage usage_on_finish
    usage_every_chunk usage_after_stop""".split()
)
_STATUS_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
}


@dataclass(eq=False)
class Reply:
    """One scripted answer; build it with the functions below rather than by hand."""

    kind: str  # text | tool_calls | error | raw
    content: str | None = None
    chunks: int = 1
    reasoning: str | None = None
    reasoning_as: str = "reasoning_content"
    calls: tuple[tuple[str, str, str], ...] = ()  # (id, name, arguments JSON)
    finish_reason: str | None = None
    usage: dict[str, Any] = field(default_factory=lambda: dict(USAGE))
    status: int = 200
    body: bytes = b""
    frames: tuple[bytes, ...] = ()
    content_type: str = "text/event-stream"
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    chunk_delay: float = 0.0
    hang: bool = False
    stall_after: int | None = None
    drop_after: int | None = None
    error_after: int | None = None
    error_style: str = "openai"
    error_done: bool = False
    error_body: dict[str, Any] | None = None
    quirks: frozenset[str] = frozenset()
    _cache: dict[tuple[bool, bool, str, int | None], tuple[bytes, ...] | bytes] = field(
        default_factory=dict, repr=False
    )

    def __post_init__(self) -> None:
        unknown = set(self.quirks) - QUIRKS
        if unknown:
            raise ValueError(f"unknown quirks: {sorted(unknown)}")
        self.quirks = frozenset(self.quirks)


def _options(reply: Reply, options: dict[str, Any]) -> Reply:
    if "quirks" in options:
        options["quirks"] = frozenset(options["quirks"])
    return replace(reply, **options) if options else reply


def text(
    content: str,
    chunks: int = 1,
    *,
    reasoning: str | None = None,
    reasoning_as: str = "reasoning_content",
    **options: Any,
) -> Reply:
    return _options(
        Reply("text", content=content, chunks=chunks, reasoning=reasoning, reasoning_as=reasoning_as), options
    )


def tool_calls(
    calls: Iterable[tuple[Any, ...]], content: str | None = None, chunks: int = 2, **options: Any
) -> Reply:
    built = []
    for call in calls:
        if len(call) == 3:
            call_id, name, args = call
        else:
            (name, args), call_id = call, f"call_{uuid.uuid4().hex[:12]}"
        built.append((call_id, name, args if isinstance(args, str) else orjson.dumps(args).decode()))
    return _options(Reply("tool_calls", content=content, chunks=chunks, calls=tuple(built)), options)


def error(
    status: int,
    message: str,
    type: str | None = None,
    code: str | None = None,
    headers: dict[str, str] | None = None,
    param: str | None = None,
    **options: Any,
) -> Reply:
    kind = type or _STATUS_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    return _options(
        Reply(
            "error",
            status=status,
            body=orjson.dumps(body),
            content_type="application/json",
            headers=dict(headers or {}),
        ),
        options,
    )


def stream_error(
    message: str,
    after: int = 1,
    style: str = "openai",
    done: bool = False,
    content: str = "Hello world",
    chunks: int = 3,
    type: str = "server_error",
    code: str | int | None = None,
    **options: Any,
) -> Reply:
    if style not in ("openai", "openrouter", "event", "field"):
        raise ValueError(f"unknown error style {style!r}")
    body = {"error": {"message": message, "type": type, "code": code}}
    return _options(
        Reply(
            "text",
            content=content,
            chunks=chunks,
            error_after=after,
            error_style=style,
            error_done=done,
            error_body=body,
        ),
        options,
    )


def raw(
    data: bytes | Iterable[bytes], status: int = 200, content_type: str = "text/event-stream", **options: Any
) -> Reply:
    frames = (data,) if isinstance(data, bytes) else tuple(data)
    return _options(Reply("raw", status=status, frames=frames, content_type=content_type), options)


def html(status: int = 200, **options: Any) -> Reply:
    page = b"<!DOCTYPE html><html><head><title>Welcome</title></head><body><h1>It works!</h1></body></html>"
    return raw(page, status=status, content_type="text/html; charset=utf-8", **options)


# --- rendering ---------------------------------------------------------------------------------------


def _split(s: str, n: int) -> list[str]:
    n = max(1, n)
    size = len(s)
    pieces = [s[i * size // n : (i + 1) * size // n] for i in range(n)]
    return [p for p in pieces if p]


def _reasoning_delta(piece: str, how: str) -> dict[str, Any]:
    detail = [{"type": "reasoning.text", "text": piece, "format": "unknown", "index": 0}]
    if how == "reasoning":
        return {"content": "", "reasoning": piece}
    if how == "reasoning_details":
        return {"reasoning_details": detail}
    if how == "openrouter":
        return {"content": "", "reasoning": piece, "reasoning_details": detail}
    if how == "thought":
        return {"content": piece, "extra_content": {"google": {"thought": True}}}
    return {"reasoning_content": piece}


def logprobs_of(pieces: list[str], top: int) -> dict[str, Any]:
    """OpenAI's ``choices[0].logprobs`` for these pieces of content, one token each (``top`` alternatives
    per token, the token itself first)."""

    def entry(token: str, logprob: float) -> dict[str, Any]:
        return {"token": token, "logprob": logprob, "bytes": list(token.encode())}

    content = [
        {
            **entry(p, -0.25),
            "top_logprobs": [entry(p, -0.25), *(entry(f"{p}~{k}", -2.0 - k) for k in range(top - 1))][:top],
        }
        for p in pieces
    ]
    return {"content": content, "refusal": None}


class _Events:
    """Builds a response's SSE events (("data", dict) | ("comment", str) | ("error", dict)…)."""

    def __init__(self, reply: Reply, model: str, include_usage: bool, logprobs: int | None = None) -> None:
        self.r, self.q, self.model = reply, reply.quirks, model
        self.include_usage = include_usage
        self.logprobs = logprobs  # top_logprobs when the request asked for logprobs, else None
        self.out: list[tuple[str, Any]] = []
        self.n = 0  # content-ish chunks sent, for cumulative usage

    def chunk(self, delta: dict[str, Any] | None, finish: str | None = None, **top: Any) -> dict[str, Any]:
        q = self.q
        if delta is not None and "role_every_chunk" in q:
            delta = {"role": "assistant", **delta}
        choice: dict[str, Any] = {"index": 0}
        if delta is not None:
            choice["delta"] = delta
        if "extras" in q:
            choice["logprobs"] = None
        piece = (delta or {}).get("content")
        if self.logprobs is not None and piece:
            choice["logprobs"] = logprobs_of([piece], self.logprobs)
        choice["finish_reason"] = finish
        if "azure" in q:
            choice["content_filter_results"] = {}
        if "extras" in q:
            choice["native_finish_reason"] = finish
            choice["stop_reason"] = None
        c: dict[str, Any] = {
            "id": "chatcmpl-upstream",
            "object": "chat.completion.chunk",
            "created": CREATED,
            "model": self.model,
            "choices": [choice],
        }
        if "extras" in q:
            c.update(
                system_fingerprint="fp_upstream",
                service_tier="default",
                provider="Scripted",
                obfuscation="x7Kq",
                timings={"prompt_n": 3, "predicted_per_second": 99.5},
            )
            if self.include_usage:
                c["usage"] = None
        if "usage_every_chunk" in q:
            self.n += 1
            u = self.r.usage
            done = min(u.get("completion_tokens", 0), self.n)
            c["usage"] = {
                "prompt_tokens": u.get("prompt_tokens", 0),
                "completion_tokens": done,
                "total_tokens": u.get("prompt_tokens", 0) + done,
            }
        c.update(top)
        return c

    def data(self, obj: dict[str, Any]) -> None:
        self.out.append(("data", obj))

    def build(self) -> list[tuple[str, Any]]:
        r, q = self.r, self.q
        if "comments" in q:
            self.out.append(("comment", "OPENROUTER PROCESSING"))
        if "azure" in q:
            self.data(
                {
                    "choices": [],
                    "created": 0,
                    "id": "",
                    "model": "",
                    "object": "",
                    "prompt_filter_results": [
                        {
                            "prompt_index": 0,
                            "content_filter_results": {"hate": {"filtered": False, "severity": "safe"}},
                        }
                    ],
                }
            )
        self.data(self.chunk({"role": "assistant", "content": None if r.calls and not r.content else ""}))
        if r.reasoning:
            for piece in _split(r.reasoning, r.chunks):
                self.data(self.chunk(_reasoning_delta(piece, r.reasoning_as)))
        pieces = _split(r.content or "", r.chunks)
        last_piece = pieces.pop() if "content_with_finish" in q and pieces and not r.calls else None
        for i, piece in enumerate(pieces):
            if r.error_after is not None and i == r.error_after:
                return self.fail()
            self.data(self.chunk({"content": piece}))
        if r.error_after is not None:
            return self.fail()
        for i, (call_id, name, args) in enumerate(r.calls):
            self.tool_call(i, call_id, name, args)
        finish = r.finish_reason or ("tool_calls" if r.calls else "stop")
        if "no_finish" not in q:
            top: dict[str, Any] = {}
            if "groq_usage" in q:
                top["x_groq"] = {"id": "req_01upstream", "usage": {**r.usage, "queue_time": 0.01}}
            if "usage_on_finish" in q:
                top["usage"] = r.usage
            delta = {"content": last_piece} if last_piece else {}
            self.data(self.chunk(delta, finish, **top))
        elif last_piece:
            self.data(self.chunk({"content": last_piece}))
        if "azure" in q:
            self.data(
                {
                    "choices": [
                        {
                            "content_filter_offsets": {
                                "check_offset": 0,
                                "start_offset": 0,
                                "end_offset": 11,
                            },
                            "content_filter_results": {"hate": {"filtered": False, "severity": "safe"}},
                            "finish_reason": None,
                            "index": 0,
                        }
                    ],
                    "created": CREATED,
                    "id": "chatcmpl-upstream",
                    "model": self.model,
                    "object": "",
                }
            )
        if self.include_usage and not {"groq_usage", "usage_on_finish"} & q:
            choices: list[Any] = []
            if "usage_after_stop" in q:
                choices = [{"index": 0, "delta": {"content": ""}, "finish_reason": None}]
            self.data(
                {
                    "id": "chatcmpl-upstream",
                    "object": "chat.completion.chunk",
                    "created": CREATED,
                    "model": self.model,
                    "choices": choices,
                    "usage": r.usage,
                }
            )
        if "no_done" not in q:
            self.out.append(("done", None))
        return self.out

    def tool_call(self, i: int, call_id: str, name: str, args: str) -> None:
        q = self.q
        head: dict[str, Any] = {} if "no_index" in q else {"index": i + (1 if "index_from_1" in q else 0)}
        extra = (
            {"extra_content": {"google": {"thought_signature": f"sig-{i}"}}}
            if "thought_signature" in q
            else {}
        )
        if "whole_tool_calls" in q:
            call = {
                **head,
                "id": call_id,
                "type": "function",
                "function": {"name": name, "arguments": args},
                **extra,
            }
            self.data(self.chunk({"tool_calls": [call]}))
            return
        first = {
            **head,
            "id": call_id,
            "type": "function",
            "function": {"name": name, "arguments": ""},
            **extra,
        }
        self.data(self.chunk({"tool_calls": [first]}))
        for piece in _split(args, self.r.chunks):
            more: dict[str, Any] = dict(head)
            if "empty_name" in q:
                more.update(id="", type="function", function={"name": "", "arguments": piece})
            else:
                more["function"] = {"arguments": piece}
            self.data(self.chunk({"tool_calls": [more]}))

    def fail(self) -> list[tuple[str, Any]]:
        body = dict(self.r.error_body or {})
        if self.r.error_style == "openrouter":
            body = self.chunk({"content": ""}, "error", provider="openai", **body)
        self.out.append(
            (
                "event-error"
                if self.r.error_style == "event"
                else "field-error"
                if self.r.error_style == "field"
                else "data",
                body,
            )
        )
        if self.r.error_done:
            self.out.append(("done", None))
        return self.out


def _encode(events: list[tuple[str, Any]], quirks: frozenset[str]) -> tuple[bytes, ...]:
    eol = b"\r\n" if "crlf" in quirks else b"\r" if "cr" in quirks else b"\n"
    prefix = b"data:" if "nospace" in quirks else b"data: "
    frames = []
    for kind, payload in events:
        if kind == "comment":
            frames.append(b": " + payload.encode() + eol + eol)
            continue
        if kind == "done":
            frames.append(prefix + b"[DONE]" + eol + eol)
            continue
        data = orjson.dumps(payload)
        if kind == "field-error":
            frames.append(b"error: " + data + eol + eol)
            continue
        lines = [data]
        if "multiline" in quirks and b'",' in data:
            cut = data.index(b'",') + 2
            lines = [data[:cut], data[cut:]]
        frame = b"".join(prefix + line + eol for line in lines) + eol
        if kind == "event-error":
            frame = b"event: error" + eol + frame
        frames.append(frame)
        if "comments" in quirks:
            frames.append(b": keep-alive" + eol + eol)
    return tuple(frames)


def _completion(reply: Reply, model: str, logprobs: int | None = None) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": reply.content}
    if reply.reasoning:
        how = reply.reasoning_as
        if how in ("reasoning", "openrouter"):
            message["reasoning"] = reply.reasoning
        if how in ("reasoning_details", "openrouter"):
            message["reasoning_details"] = [{"type": "reasoning.text", "text": reply.reasoning}]
        if how in ("reasoning_content", "thought"):
            message["reasoning_content"] = reply.reasoning
    if reply.calls:
        message["tool_calls"] = [
            {"id": cid, "type": "function", "function": {"name": name, "arguments": args}}
            for cid, name, args in reply.calls
        ]
    finish = reply.finish_reason or ("tool_calls" if reply.calls else "stop")
    out: dict[str, Any] = {
        "id": "chatcmpl-upstream",
        "object": "chat.completion",
        "created": CREATED,
        "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": finish}],
        "usage": reply.usage,
    }
    if logprobs is not None:
        out["choices"][0]["logprobs"] = logprobs_of(_split(reply.content or "", reply.chunks), logprobs)
    return out


def render(
    reply: Reply, stream: bool, include_usage: bool, model: str, logprobs: int | None = None
) -> tuple[bytes, ...] | bytes:
    """The reply's bytes for one request: SSE frames, or a whole body (``logprobs``: the request's
    top_logprobs when it asked for logprobs). Cached on the reply."""
    key = (stream, include_usage, model, logprobs)
    cached = reply._cache.get(key)
    if cached is not None:
        return cached
    out: tuple[bytes, ...] | bytes
    if reply.kind == "raw":
        out = reply.frames
    elif reply.kind == "error":
        out = reply.body
    elif not stream:
        whole = reply.error_body if reply.error_after is not None else _completion(reply, model, logprobs)
        out = orjson.dumps(whole)
    else:
        out = _encode(_Events(reply, model, include_usage, logprobs).build(), reply.quirks)
    reply._cache[key] = out
    return out


# --- a strict provider --------------------------------------------------------------------------------

_DANGLING_RESULT = (
    "Invalid parameter: messages with role 'tool' must be a response to a preceeding message with "
    "'tool_calls'."
)  # OpenAI's words, its typo included
_UNANSWERED = (
    "An assistant message with 'tool_calls' must be followed by tool messages responding to each "
    "'tool_call_id'. The following tool_call_ids did not have response messages: "
)


def strict_problem(messages: Any) -> tuple[str, str] | None:
    """What OpenAI checks of a conversation's tool traffic: each ``tool`` message answers a call of the
    assistant message right before it (and its results), every call is answered before anything else.
    The first violation as (message, param), or None."""
    pending: list[str] = []
    opened = 0
    for i, m in enumerate(messages if isinstance(messages, list) else []):
        role = m.get("role") if isinstance(m, dict) else None
        if role == "tool":
            if m.get("tool_call_id") not in pending:
                return _DANGLING_RESULT, f"messages.[{i}].role"
            pending.remove(m["tool_call_id"])
            continue
        if pending:
            return _UNANSWERED + ", ".join(pending), f"messages.[{opened}].role"
        calls = m.get("tool_calls") if role == "assistant" else None
        pending = [str(c.get("id")) for c in calls or [] if isinstance(c, dict)]
        opened = i
    if pending:
        return _UNANSWERED + ", ".join(pending), f"messages.[{opened}].role"
    return None


def forced_tool(body: dict[str, Any]) -> str | None:
    """The tool an obedient model calls because ``tool_choice`` forces one (``required``: the first tool
    offered; a named tool: that one), or None."""
    choice, tools = body.get("tool_choice"), body.get("tools") or []
    names = [
        t["function"]["name"] for t in tools if isinstance(t, dict) and isinstance(t.get("function"), dict)
    ]
    if choice == "required":
        return names[0] if names else None
    if isinstance(choice, dict):
        if choice.get("type") == "function" and isinstance(choice.get("function"), dict):
            return choice["function"].get("name")
        allowed = choice.get("allowed_tools")
        if isinstance(allowed, dict) and allowed.get("mode") == "required":
            listed = [
                t["function"]["name"]
                for t in allowed.get("tools") or []
                if isinstance(t.get("function"), dict)
            ]
            return listed[0] if listed else None
    return None


# --- selecting a test's own requests ----------------------------------------------------------------


def user_texts(body: dict[str, Any]) -> list[str]:
    """What the request's user messages say: string contents and the text of content parts."""
    texts: list[str] = []
    messages = body.get("messages")
    for m in messages if isinstance(messages, list) else ():
        if not isinstance(m, dict) or m.get("role") != "user":
            continue
        content = m.get("content")
        if isinstance(content, str):
            texts.append(content)
        elif isinstance(content, list):
            texts += [p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str)]
    return texts


def mentions(body: dict[str, Any], marker: str) -> bool:
    """Whether one of the request's user messages contains ``marker``."""
    return any(marker in said for said in user_texts(body))


# --- the server --------------------------------------------------------------------------------------


class Upstream:
    def __init__(
        self,
        *,
        models: list[str] | None = None,
        api_key: str | None = None,
        title_reply: str = "A Scripted Title",
    ) -> None:
        self.models: list[str] | None = ["gpt-4o", "gpt-4o-mini"] if models is None else models
        self.api_key = api_key
        self.title_reply = title_reply
        self.default: Reply = text("ok")
        self.strict = False
        self.requests: list[dict[str, Any]] = []
        self.title_requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.models_requests = 0
        self.disconnects = 0
        self.port = 0
        self.base_url = ""
        self._queue: deque[Reply] = deque()
        self._changed = threading.Condition()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._ready = threading.Event()
        self._failure: BaseException | None = None

    # control, from any thread

    def script(self, *replies: Reply) -> None:
        self._queue.extend(replies)

    def reset(self) -> None:
        """Forget the script and everything recorded; restore the defaults (models and api_key included)."""
        self._queue.clear()
        with self._changed:
            for recorded in (self.requests, self.title_requests, self.headers):
                recorded.clear()
        self.models = ["gpt-4o", "gpt-4o-mini"]
        self.api_key = None
        self.default = text("ok")
        self.strict = False
        self.title_reply = "A Scripted Title"
        self.models_requests = 0
        self.disconnects = 0

    @property
    def pending(self) -> int:
        """Scripted replies not consumed yet."""
        return len(self._queue)

    def start(self) -> Upstream:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        sock.listen(1024)
        self.port = sock.getsockname()[1]
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self._thread = threading.Thread(
            target=self._run, args=(sock,), name=f"upstream:{self.port}", daemon=True
        )
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the scripted upstream did not start")
        if self._failure:
            raise RuntimeError("the scripted upstream failed to start") from self._failure
        return self

    def stop(self) -> None:
        if self._loop and self._stopping and self._thread and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stopping.set)
            self._thread.join(10)

    def __enter__(self) -> Upstream:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
        """Block until ``predicate()`` holds (re-checked whenever the upstream records something)."""
        with self._changed:
            return self._changed.wait_for(predicate, timeout)

    async def until(self, predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
        return await asyncio.to_thread(self.wait_for, predicate, timeout)

    # selecting, from any thread (see the module docstring)

    def requests_for(self, marker: str) -> list[dict[str, Any]]:
        """The chat requests with a user message containing ``marker``, in the order they came."""
        with self._changed:
            return [body for body in self.requests if mentions(body, marker)]

    def title_requests_for(self, marker: str) -> list[dict[str, Any]]:
        """The title requests quoting a user message that contains ``marker``, in the order they came."""
        with self._changed:
            return [body for body in self.title_requests if mentions(body, marker)]

    def headers_for(self, marker: str) -> list[dict[str, str]]:
        """The headers of ``requests_for(marker)``, in the same order."""
        with self._changed:
            return [h for body, h in zip(self.requests, self.headers, strict=True) if mentions(body, marker)]

    def answering(self, reply: Reply) -> dict[str, Any]:
        """The first chat request carrying a result for each of ``reply``'s tool calls: the one that
        brought the model what its calls returned."""
        assert reply.calls, "answering() needs a reply with tool calls"
        wanted = {call_id for call_id, _, _ in reply.calls}
        with self._changed:
            for body in self.requests:
                answered = {m.get("tool_call_id") for m in body.get("messages") or () if isinstance(m, dict)}
                if wanted <= answered:
                    return body
        raise AssertionError(f"no request carries the results of calls {sorted(wanted)}")

    # the server thread

    def _notify(self) -> None:
        with self._changed:
            self._changed.notify_all()

    def _run(self, sock: socket.socket) -> None:
        try:
            import uvloop

            loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
        except ImportError:  # pragma: no cover - Windows
            loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._serve(sock))
        except BaseException as e:  # pragma: no cover - surfaced by start()
            self._failure = e
            self._ready.set()
        finally:
            loop.close()

    async def _serve(self, sock: socket.socket) -> None:
        self._stopping = asyncio.Event()
        app = web.Application(client_max_size=64 * 1024 * 1024)
        for prefix in ("/v1", ""):
            app.router.add_post(prefix + "/chat/completions", self._chat)
            app.router.add_get(prefix + "/models", self._models)
        runner = web.AppRunner(
            app, handle_signals=False, access_log=None, handler_cancellation=True, shutdown_timeout=0.5
        )
        await runner.setup()
        await web.SockSite(runner, sock).start()
        self._ready.set()
        await self._stopping.wait()
        await runner.cleanup()

    def _unauthorized(self, request: web.Request) -> web.Response | None:
        if self.api_key is None or request.headers.get("Authorization") == f"Bearer {self.api_key}":
            return None
        body = {
            "error": {
                "message": "Incorrect API key provided: sk-up***.",
                "type": "invalid_request_error",
                "param": None,
                "code": "invalid_api_key",
            }
        }
        return web.Response(status=401, body=orjson.dumps(body), content_type="application/json")

    async def _models(self, request: web.Request) -> web.StreamResponse:
        self.models_requests += 1
        self._notify()
        denied = self._unauthorized(request)
        if denied is not None:  # not "if denied": an aiohttp Response is a mapping, falsy while empty
            return denied
        if self.models is None:
            return web.Response(status=404, text="404 page not found")
        data = [{"id": m, "object": "model", "created": CREATED, "owned_by": "upstream"} for m in self.models]
        return web.Response(
            body=orjson.dumps({"object": "list", "data": data}), content_type="application/json"
        )

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        raw_body = await request.read()
        denied = self._unauthorized(request)
        try:
            body = orjson.loads(raw_body)
        except orjson.JSONDecodeError:
            body = {}
        messages = body.get("messages") or [{}]
        first = messages[0] if isinstance(messages[0], dict) else {}
        content = first.get("content")
        if (
            first.get("role") == "system"
            and isinstance(content, str)
            and content.startswith("Generate a title")
        ):
            with self._changed:
                self.title_requests.append(body)
            reply = text(self.title_reply)
        else:
            with self._changed:  # together: headers_for pairs them
                self.requests.append(body)
                self.headers.append({k.lower(): v for k, v in request.headers.items()})
            reply = self._next(body)
        self._notify()
        if denied is not None:  # not "if denied": an aiohttp Response is a mapping, falsy while empty
            return denied
        stream = body.get("stream") is True
        options = body.get("stream_options") or {}
        model = body.get("model") if isinstance(body.get("model"), str) else "unknown"
        top = body.get("top_logprobs")
        logprobs = (top if isinstance(top, int) else 0) if body.get("logprobs") is True else None
        out = render(reply, stream, bool(options.get("include_usage")), model, logprobs)
        return await self._respond(request, reply, out, stream)

    def _next(self, body: dict[str, Any]) -> Reply:
        """The reply to a chat request: the next scripted one, unless ``strict`` says otherwise."""
        if self.strict:
            problem = strict_problem(body.get("messages"))
            if problem is not None:
                return error(400, problem[0], param=problem[1])
            forced = forced_tool(body)
            if forced is not None and (not self._queue or self._queue[0].kind == "text"):
                return tool_calls([(forced, {})])  # the scripted text waits for an unforced call
        return self._queue.popleft() if self._queue else self.default

    async def _respond(
        self, request: web.Request, reply: Reply, out: tuple[bytes, ...] | bytes, stream: bool
    ) -> web.StreamResponse:
        assert self._stopping is not None
        try:
            if reply.hang:
                await self._stopping.wait()
            if reply.delay:
                await asyncio.sleep(reply.delay)
        except asyncio.CancelledError:
            self._left()
            raise
        kind = reply.content_type if reply.kind in ("raw", "error") or stream else "application/json"
        paced = reply.chunk_delay or reply.stall_after is not None or reply.drop_after is not None
        if not paced:
            body = out if isinstance(out, bytes) else b"".join(out)
            return web.Response(
                status=reply.status, body=body, headers={"Content-Type": kind, **reply.headers}
            )
        frames = (out,) if isinstance(out, bytes) else out
        response = web.StreamResponse(status=reply.status, headers={"Content-Type": kind, **reply.headers})
        try:
            await response.prepare(request)
            for i, frame in enumerate(frames):
                if reply.stall_after is not None and i == reply.stall_after:
                    await self._stopping.wait()
                    return response
                if reply.drop_after is not None and i == reply.drop_after:
                    if request.transport is not None:
                        request.transport.abort()
                    return response
                if reply.chunk_delay and i:
                    await asyncio.sleep(reply.chunk_delay)
                await response.write(frame)
            if reply.stall_after is not None and reply.stall_after >= len(frames):
                await self._stopping.wait()
                return response
            await response.write_eof()
        except (asyncio.CancelledError, ConnectionResetError):
            self._left()
            raise
        return response

    def _left(self) -> None:
        if self._stopping is not None and not self._stopping.is_set():
            self.disconnects += 1
            self._notify()


@contextlib.contextmanager
def running(**kwargs: Any) -> Any:
    """``with running() as up:`` — an Upstream started for the block."""
    up = Upstream(**kwargs).start()
    try:
        yield up
    finally:
        up.stop()
