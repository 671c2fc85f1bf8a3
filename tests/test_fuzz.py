"""Fuzzing: the request parser and the provider-stream decoder against random input (hypothesis), and
the running daemon against its own OpenAPI description (schemathesis)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import orjson
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode

import sorat_daemon
from sorat_daemon import agent, errors, wire
from sorat_daemon.protocols.chat import parse_chat_request
from sorat_daemon.providers.completion import ToolCallAccumulator, parse_completion
from sorat_daemon.providers.normalize import DeltaNormalizer
from sorat_daemon.providers.sse import SSEDecoder
from tests.conftest import DEFAULT_EXTRA, DaemonProc, write_config
from tests.upstream import Upstream

# --- JSON-ish values -----------------------------------------------------------------------------------

_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
_json = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)


def _nested(depth: int, leaf: Any, key: str | None) -> Any:
    for _ in range(depth):
        leaf = {key: leaf} if key is not None else [leaf]
    return leaf


# Provider errors and request fields nested as deep as orjson allows (1024 levels).
_deep = st.builds(
    _nested,
    st.integers(min_value=100, max_value=1020),
    _scalars,
    st.sampled_from([None, "error", "message", "detail", "x"]),
)


def _dumps(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False).encode()


# --- protocols.chat.parse_chat_request ---------------------------------------------------------------------

_ROLE = st.sampled_from(["system", "developer", "user", "assistant", "tool", "wizard", "", None, 3])
_message = st.fixed_dictionaries(
    {"role": _ROLE},
    optional={
        "content": _json | st.lists(st.fixed_dictionaries({"type": st.just("text"), "text": _json})),
        "tool_call_id": _json,
        "name": _json,
        "tool_calls": _json
        | st.lists(
            st.fixed_dictionaries(
                {
                    "id": _json,
                    "type": _json,
                    "function": st.dictionaries(st.sampled_from(["name", "arguments"]), _json),
                }
            ),
            max_size=3,
        ),
    },
)
_tool = st.fixed_dictionaries(
    {"type": st.sampled_from(["function", "other"]) | _json},
    optional={"function": _json | st.fixed_dictionaries({"name": _json}, optional={"parameters": _json})},
)
_FIELDS = (
    "model stream stream_options tools tool_choice n temperature top_p max_tokens stop seed "
    "response_format user parallel_tool_calls reasoning_effort unknown_field"
).split()
_request = st.fixed_dictionaries(
    {"messages": st.lists(_message, max_size=4) | _json},
    optional={
        **{name: _json for name in _FIELDS},
        "tools": st.lists(_tool, max_size=3) | _json,
        "stream_options": st.fixed_dictionaries({}, optional={"include_usage": _json}) | _json,
    },
)


def _check_parse(raw: bytes) -> None:
    try:
        req = parse_chat_request(raw)
    except errors.RequestError as e:
        assert e.status == 400 and e.message
        return
    # Whatever was accepted must also leave again: to the provider, and into the session file.
    wire.dumps({"messages": req.messages, "tools": req.tools, "tool_choice": req.tool_choice, **req.params})
    assert isinstance(req.stream, bool) and isinstance(req.include_usage, bool)


@settings(max_examples=300, deadline=None)
@given(raw=st.binary(max_size=200))
def test_parse_random_bytes(raw: bytes) -> None:
    _check_parse(raw)


@settings(max_examples=300, deadline=None)
@given(body=_request | _json)
def test_parse_random_requests(body: Any) -> None:
    _check_parse(_dumps(body))


@settings(max_examples=30, deadline=None)
@given(deep=_deep, where=st.sampled_from(["messages", "content", "tools", "seed", "stop", "tool_calls"]))
def test_parse_deeply_nested_requests(deep: Any, where: str) -> None:
    message: dict[str, Any] = {"role": "user", "content": "hi"}
    body: dict[str, Any] = {"messages": [message]}
    if where == "messages":
        body["messages"] = deep
    elif where == "content":
        message["content"] = [{"type": "text", "text": "x", "extra": deep}]
    elif where == "tool_calls":
        body["messages"] = [message, {"role": "assistant", "tool_calls": [{"function": {"arguments": deep}}]}]
    else:
        body[where] = deep
    _check_parse(_dumps(body))


# --- protocols.messages (Anthropic Messages in) ---------------------------------------------------------

_block = st.fixed_dictionaries(
    {
        "type": st.sampled_from(["text", "image", "tool_use", "tool_result", "thinking", "document", "x"])
        | _json
    },
    optional={
        k: _json for k in ("text", "source", "id", "name", "input", "tool_use_id", "content", "cache_control")
    },
)
_anthropic_request = st.fixed_dictionaries(
    {
        "messages": st.lists(
            st.fixed_dictionaries(
                {"role": st.sampled_from(["user", "assistant", "system", "tool"]) | _json},
                optional={"content": st.text(max_size=10) | st.lists(_block, max_size=3) | _json},
            ),
            max_size=4,
        )
        | _json
    },
    optional={
        k: _json
        for k in "max_tokens model system stream temperature top_p stop_sequences tools tool_choice".split()
    },
)


def _check_messages_parse(raw: bytes) -> None:
    from sorat_daemon.protocols.messages import count_tokens, parse_messages_request

    for parse in (parse_messages_request, count_tokens):
        try:
            got = parse(raw)
        except errors.RequestError as e:
            assert e.status == 400 and e.message
            continue
        if isinstance(got, int):
            assert got >= 1
        else:  # what was accepted must also leave again, to the provider
            wire.dumps(
                {"messages": got.messages, "tools": got.tools, "tool_choice": got.tool_choice, **got.params}
            )


@settings(max_examples=300, deadline=None)
@given(body=_anthropic_request | _json, max_tokens=st.booleans())
def test_messages_parse_random_requests(body: Any, max_tokens: bool) -> None:
    if max_tokens and isinstance(body, dict):
        body["max_tokens"] = 100
    _check_messages_parse(_dumps(body))


@settings(max_examples=30, deadline=None)
@given(deep=_deep, where=st.sampled_from(["input", "content", "tools", "system", "text"]))
def test_messages_parse_deeply_nested(deep: Any, where: str) -> None:
    block: dict[str, Any] = {"type": "tool_use", "id": "a", "name": "f", "input": deep}
    if where != "input":
        block = (
            {"type": "text", "text": deep} if where == "text" else {"type": "text", "text": "x", where: deep}
        )
    body: dict[str, Any] = {"max_tokens": 5, "messages": [{"role": "assistant", "content": [block]}]}
    if where in ("tools", "system"):
        body[where] = deep
    _check_messages_parse(_dumps(body))


# --- the Responses parser and renderer --------------------------------------------------------------------

_part = st.fixed_dictionaries(
    {
        "type": st.sampled_from(["input_text", "output_text", "input_image", "refusal", "input_file", "x"])
        | _json
    },
    optional={"text": _json, "image_url": _json, "refusal": _json, "file_data": _json, "detail": _json},
)
_ITEM_TYPES = (
    "message function_call function_call_output custom_tool_call custom_tool_call_output reasoning mcp_call "
    "item_reference unknown"
).split()
_item = st.fixed_dictionaries(
    {},
    optional={
        "type": st.sampled_from(_ITEM_TYPES) | _json,
        "role": _ROLE,
        "content": _json | st.lists(_part | _json, max_size=3),
        "call_id": st.sampled_from(["c1", "c2", ""]) | _json,
        "name": st.sampled_from(["f", "g"]) | _json,
        "namespace": st.sampled_from(["ns", ""]) | _json,
        "arguments": _json,
        "input": _json,
        "output": _json | st.lists(_part | _json, max_size=2),
    },
)  # fmt: skip
_rtool = st.fixed_dictionaries(
    {"type": st.sampled_from(["function", "custom", "namespace", "web_search", "mcp"]) | _json},
    optional={"name": _json | st.just("f"), "parameters": _json, "tools": st.lists(_json, max_size=2) | _json,
              "format": _json, "description": _json},
)  # fmt: skip
_RFIELDS = (
    "model stream store instructions previous_response_id conversation tool_choice temperature top_p "
    "max_output_tokens parallel_tool_calls text reasoning metadata background include unknown_field"
).split()
_rrequest = st.fixed_dictionaries(
    {"input": st.lists(_item | _json, max_size=5) | _json},
    optional={**{name: _json for name in _RFIELDS}, "tools": st.lists(_rtool, max_size=3) | _json},
)


def _check_responses_parse(raw: bytes) -> None:
    from sorat_daemon.protocols import responses_in

    try:
        req = responses_in.parse_request(raw)
    except errors.RequestError as e:
        assert e.status == 400 and e.message
        return
    messages = req.chat_messages()
    assert all(m["role"] in ("system", "user", "assistant", "tool") for m in messages)
    assert [m["role"] for m in messages[1:]].count("system") == 0  # one leading system message at most
    wire.dumps({"messages": messages, "tools": req.tools, "tool_choice": req.tool_choice, **req.params})
    wire.dumps(req.echo)


@settings(max_examples=300, deadline=None)
@given(body=_rrequest | _json)
def test_responses_parse_random_requests(body: Any) -> None:
    _check_responses_parse(_dumps(body))


@settings(max_examples=100, deadline=None)
@given(raw=st.binary(max_size=200))
def test_responses_parse_random_bytes(raw: bytes) -> None:
    _check_responses_parse(raw)


_text = st.text(max_size=6)
_event = st.one_of(
    st.builds(agent.Text, _text, st.integers(0, 3)),
    st.builds(agent.Reasoning, _text, st.integers(0, 3)),
    st.builds(agent.ToolCall, st.sampled_from(["a", "b", "c"]), st.sampled_from(["f", "g"]), _text),
    st.builds(lambda i: agent.ToolResult(i, "f", "{}", "out", 1.0), st.sampled_from(["a", "b", "c"])),
    st.just(agent.KeepAlive()),
)
_calls = st.lists(
    st.builds(
        lambda i, name: {"id": i, "type": "function", "function": {"name": name, "arguments": "{}"}},
        st.sampled_from(["call_1", "call_2"]), st.sampled_from(["f", "apply_patch", "ns__spawn"]),
    ),
    max_size=2,
)  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(
    events=st.lists(_event, max_size=12),
    mode=st.sampled_from(["tool_calls", "reasoning", "none"]),
    calls=_calls,
    finish=st.sampled_from(["stop", "length", "content_filter", "error"]),
)
def test_responses_renderer_random_events(
    events: list[Any], mode: str, calls: list[Any], finish: str
) -> None:
    from sorat_daemon.protocols.responses_items import ClientTool
    from sorat_daemon.protocols.responses_out import Head, ResponsesRenderer
    from tests.test_protocols_responses_out import check_stream, frames

    tools = {
        "apply_patch": ClientTool("custom", "apply_patch"),
        "ns__spawn": ClientTool("function", "spawn", "ns"),
    }
    r = ResponsesRenderer(Head("resp_1", 1, "m"), mode, tools)
    data = r.begin() + b"".join(r.event(e) for e in events)
    if finish == "error":
        data += r.fail(errors.ProviderError("broke"))
    else:
        message = {"role": "assistant", "content": "x", "tool_calls": calls} if calls else {"content": "x"}
        data += r.end(agent.Done("tool_calls" if calls else finish, None, message))
    check_stream(frames(data + r.close()))


# --- SSEDecoder + DeltaNormalizer --------------------------------------------------------------------------


def _relay(pieces: list[bytes]) -> None:
    """What ``Provider._relay`` does with a body: only ProviderError (and its subclasses) may escape."""
    decoder, norm, acc = SSEDecoder(), DeltaNormalizer(), ToolCallAccumulator()
    try:
        for piece in pieces:
            for ev in decoder.feed(piece):
                d = norm.event(ev)
                if d is not None and d.tool_calls:
                    acc.add(d.tool_calls)
        for ev in decoder.close():
            d = norm.event(ev)
            if d is not None and d.tool_calls:
                acc.add(d.tool_calls)
    except errors.ProviderError as e:
        assert e.message and e.status in (400, 502, 504)
        return
    final = norm.final()
    assert final.finish_reason in ("stop", "length", "tool_calls", "content_filter")
    wire.dumps({"calls": acc.calls(), "usage": final.usage})


def _cut(data: bytes, cuts: list[int]) -> list[bytes]:
    pieces, last = [], 0
    for c in sorted({min(c, len(data)) for c in cuts}):
        pieces.append(data[last:c])
        last = c
    return [*pieces, data[last:]]


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=400), cuts=st.lists(st.integers(0, 400), max_size=6))
def test_decoder_random_bytes(data: bytes, cuts: list[int]) -> None:
    _relay(_cut(data, cuts))


_sse_line = st.one_of(
    st.builds(lambda v: b"data: " + v, st.binary(max_size=40)),
    st.builds(lambda v: b"data: " + _dumps(v), _json),
    st.just(b"data: [DONE]"),
    st.builds(lambda v: b"event: " + v, st.sampled_from([b"error", b"message", b"\xff"])),
    st.builds(lambda v: b"error: " + _dumps(v), _json),
    st.builds(lambda v: b": " + v, st.binary(max_size=10)),
    st.binary(max_size=20),  # garbage
)


@settings(max_examples=300, deadline=None)
@given(
    lines=st.lists(_sse_line, max_size=12),
    eol=st.sampled_from([b"\n", b"\r\n", b"\r"]),
    blank=st.lists(st.booleans(), min_size=12, max_size=12),
    cuts=st.lists(st.integers(0, 600), max_size=6),
)
def test_decoder_garbage_lines(lines: list[bytes], eol: bytes, blank: list[bool], cuts: list[int]) -> None:
    data = b"".join(line + eol + (eol if b else b"") for line, b in zip(lines, blank, strict=False))
    _relay(_cut(data, cuts))


_delta = st.fixed_dictionaries(
    {},
    optional={
        "role": _json,
        "content": st.text(max_size=10) | _json,
        "reasoning_content": _json,
        "reasoning": _json,
        "reasoning_details": st.lists(st.dictionaries(st.sampled_from(["text", "summary", "type"]), _json))
        | _json,
        "refusal": _json,
        "extra_content": st.fixed_dictionaries({"google": st.dictionaries(st.just("thought"), _json)})
        | _json,
        "tool_calls": st.lists(
            st.fixed_dictionaries(
                {},
                optional={
                    "index": st.integers(-2, 5) | _json,
                    "id": st.sampled_from(["a", "b", "", None]) | _json,
                    "type": _json,
                    "function": st.fixed_dictionaries(
                        {}, optional={"name": st.sampled_from(["f", "g", ""]) | _json, "arguments": _json}
                    )
                    | _json,
                    "extra_content": _json,
                },
            ),
            max_size=3,
        )
        | _json,
    },
)
_chunk = st.fixed_dictionaries(
    {},
    optional={
        "choices": st.lists(
            st.fixed_dictionaries(
                {},
                optional={
                    "index": _json,
                    "delta": _delta | _json,
                    "finish_reason": st.sampled_from(["stop", "length", "tool_calls", "error", "eos"])
                    | _json,
                },
            ),
            max_size=2,
        )
        | _json,
        "usage": st.dictionaries(
            st.sampled_from(["prompt_tokens", "completion_tokens", "x_tokens_details"]), _json
        )
        | _json,
        "x_groq": _json,
        "error": _json,
    },
)


@settings(max_examples=300, deadline=None)
@given(chunks=st.lists(_chunk | _json, max_size=8), as_error=st.lists(st.booleans(), max_size=8))
def test_normalizer_random_chunks(chunks: list[Any], as_error: list[bool]) -> None:
    frames = []
    for i, c in enumerate(chunks):
        head = b"event: error\n" if i < len(as_error) and as_error[i] else b""
        frames.append(head + b"data: " + _dumps(c) + b"\n\n")
    _relay(frames)


@settings(max_examples=300, deadline=None)
@given(obj=st.fixed_dictionaries({}, optional={"choices": _json, "error": _json, "usage": _json}) | _json)
def test_parse_completion_random_objects(obj: Any) -> None:
    try:
        result = parse_completion(obj)
    except errors.ProviderError as e:
        assert e.message
        return
    wire.dumps(result.message)


@settings(max_examples=30, deadline=None)
@given(deep=_deep, as_error=st.booleans(), where=st.sampled_from(["error", "choices", "usage", "delta"]))
def test_deeply_nested_provider_json(deep: Any, as_error: bool, where: str) -> None:
    chunk: Any = {where: deep}
    if where == "delta":
        chunk = {"choices": [{"index": 0, "delta": {"content": "x", "tool_calls": [{"function": deep}]}}]}
    _relay([(b"event: error\n" if as_error else b"") + b"data: " + _dumps(chunk) + b"\n\n"])
    try:
        parse_completion(chunk)
    except errors.ProviderError as e:
        assert e.message


# --- the daemon against its own OpenAPI description ------------------------------------------------------

# The operations come from the packaged document (collection happens before any daemon runs); the test
# below checks that the daemon serves exactly it. Per operation: 50 examples of valid data, and 50 of
# invalid data where the operation takes any input.
OPENAPI = Path(sorat_daemon.__file__).with_name("openapi.json")
SCHEMA = schemathesis.openapi.from_path(OPENAPI)
OPERATIONS = [result.ok() for result in SCHEMA.get_all_operations()]  # type: ignore[union-attr]
MAX_EXAMPLES = 50
CASES = [
    pytest.param(op, mode, id=f"{op.label}-{mode.value}")
    for op in OPERATIONS
    for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
    if mode is GenerationMode.POSITIVE or op.path_parameters or op.query or op.headers or op.body
]


@pytest.fixture(scope="module")
def fuzzed(upstream: Upstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProc]:
    home = tmp_path_factory.mktemp("fuzz") / "home"
    write_config(home, upstream.base_url, DEFAULT_EXTRA)
    d = DaemonProc(home).start()
    yield d
    assert d.stop() == 0
    assert "Traceback" not in (home / "logs" / "sorat.log").read_text()


@schemathesis.check
def openai_error_shape(ctx: Any, response: Any, case: Any) -> bool | None:
    """Every error is OpenAI's: {"error": {"message", "type", "param", "code"}}, no traceback; on the
    /v1/messages routes Anthropic's: {"type": "error", "error": {"type", "message"}}."""
    if response.status_code < 400:
        return None
    body = json.loads(response.content)
    err = body["error"]
    if case.path.startswith("/v1/messages"):  # the Anthropic routes: Anthropic's shape
        assert body["type"] == "error" and set(err) == {"type", "message"}, body
    else:
        assert set(err) == {"message", "type", "param", "code"}, body
    assert isinstance(err["message"], str) and err["message"], body
    assert "Traceback" not in response.content.decode("utf-8", "replace")
    return True


@pytest.mark.parametrize(("operation", "mode"), CASES)
def test_api_against_its_openapi(operation: Any, mode: GenerationMode, fuzzed: DaemonProc) -> None:
    from schemathesis.checks import not_a_server_error
    from schemathesis.specs.openapi.checks import (
        content_type_conformance,
        response_schema_conformance,
        status_code_conformance,
    )

    checks = [not_a_server_error, status_code_conformance, content_type_conformance, openai_error_shape]
    if mode is GenerationMode.POSITIVE:
        checks.append(response_schema_conformance)

    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
        database=None,
    )
    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case: Any) -> None:
        case.call_and_validate(base_url=fuzzed.url, headers=fuzzed.headers(), timeout=30, checks=checks)

    run()


def test_openapi_describes_every_route(fuzzed: DaemonProc) -> None:
    """The served document is the packaged one, and it has every route the app has."""
    import httpx

    from sorat_daemon.http.app import create_app
    from sorat_daemon.ui.entry import is_ui_path

    assert httpx.get(fuzzed.url + "/openapi.json").status_code == 401  # behind the token
    served = httpx.get(fuzzed.url + "/openapi.json", headers=fuzzed.headers()).json()
    packaged = json.loads(OPENAPI.read_text(encoding="utf-8"))
    assert served == {**packaged, "info": {**packaged["info"], "version": sorat_daemon.__version__}}

    server = SimpleNamespace(allowed_hosts=(), allowed_origins=())
    rt = SimpleNamespace(settings=SimpleNamespace(server=server), activity=None)
    app = create_app(rt)  # type: ignore[arg-type]
    routes = {
        (re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule), method)
        for rule in app.url_map.iter_rules()
        for method in rule.methods or ()
        if method not in ("HEAD", "OPTIONS")
        and rule.endpoint != "static"
        and not is_ui_path(rule.rule)  # the web UI's pages: not API (tests/test_ui_security.py)
    }
    # the protocol endpoints, served in front of Quart (sorat_daemon/http/endpoint.py)
    routes |= {(path, m) for path, e in app.endpoints.items() for m in e.methods}  # type: ignore[attr-defined]
    documented = {
        (path, method.upper())
        for path, ops in served["paths"].items()
        for method in ops
        if method != "parameters"
    }
    assert documented == routes


@pytest.mark.parametrize(
    ("parser", "body", "param"),
    [
        ("chat", {"messages": [{"role": [], "content": "x"}]}, "messages[0].role"),
        (
            "chat",
            {"messages": [{"role": {}, "content": [{"type": "text", "text": "x"}]}]},
            "messages[0].role",
        ),
        ("responses", {"input": [{"type": "message", "role": [], "content": "x"}]}, "input[0].role"),
        ("responses", {"input": [{"role": "user", "content": [{"type": []}]}]}, "input[0].content[0]"),
        (
            "responses",
            {"input": [{"type": "function_call_output", "call_id": "c", "output": [{"type": []}]}]},
            "input[0].output[0]",
        ),
        ("responses", {"input": [{"type": []}]}, "input[0].type"),
        ("messages", {"max_tokens": 5, "messages": [{"role": [], "content": "x"}]}, "messages[0].role"),
        (
            "messages",
            {"max_tokens": 5, "messages": [{"role": "user", "content": [{"type": []}]}]},
            "messages[0].content[0]",
        ),
    ],
)
def test_unhashable_values_where_names_belong_are_400s(parser: str, body: Any, param: str) -> None:
    """A list or an object where a role or a type name belongs (found by the random requests above: it
    was a TypeError, a 500) is a 400 naming it."""
    from sorat_daemon.errors import RequestError
    from sorat_daemon.protocols import responses_in
    from sorat_daemon.protocols.chat import parse_chat_request
    from sorat_daemon.protocols.messages import parse_messages_request

    parse = {"chat": parse_chat_request, "responses": responses_in.parse_request}.get(
        parser, parse_messages_request
    )
    with pytest.raises(RequestError) as e:
        parse(orjson.dumps(body))
    assert e.value.param == param
