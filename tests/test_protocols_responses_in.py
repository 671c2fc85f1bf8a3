"""The Responses request parser and the input items: what a Responses body becomes for the pipeline."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from sorat_daemon.errors import RequestError
from sorat_daemon.protocols.responses_in import parse_request
from sorat_daemon.protocols.responses_items import ClientTool, fc_id, parse_items, with_system

IMAGE_OMITTED = "[image omitted: the model takes text results only]"


def parse(**body: Any):  # type: ignore[no-untyped-def]
    return parse_request(orjson.dumps(body))


def bad(param: str | None, **body: Any) -> RequestError:
    with pytest.raises(RequestError) as e:
        parse(**body)
    assert e.value.status == 400 and e.value.message
    assert e.value.param == param, e.value.message
    return e.value


def user(text: str) -> dict[str, Any]:
    return {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}


def call(call_id: str, name: str, arguments: str) -> dict[str, Any]:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def said(text: str, **extra: Any) -> dict[str, Any]:
    return {
        "type": "message",
        "role": "assistant",
        "content": [{"type": "output_text", "text": text}],
        **extra,
    }


# --- input ---------------------------------------------------------------------------------------------


def test_a_string_is_one_user_message() -> None:
    req = parse(input="hello", model="sorat-agent")
    assert req.chat_messages() == [{"role": "user", "content": "hello"}]
    assert req.model == "sorat-agent" and req.stream is False and req.store is True


def test_messages_with_and_without_type_and_their_parts() -> None:
    req = parse(
        input=[
            {"role": "user", "content": "plain"},
            user("typed"),
            {
                "role": "user",
                "content": [{"type": "input_text", "text": "a"}, {"type": "input_text", "text": "b"}],
            },
            {
                "role": "user",
                "content": [
                    {"type": "input_text", "text": "look"},
                    {"type": "input_image", "image_url": "data:image/png;base64,AAA", "detail": "low"},
                ],
            },
        ]
    )
    assert req.messages == [
        {"role": "user", "content": "plain"},
        {"role": "user", "content": "typed"},
        {"role": "user", "content": "ab"},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "look"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAA", "detail": "low"}},
            ],
        },
    ]


def test_instructions_system_and_developer_make_one_leading_system_message() -> None:
    req = parse(
        instructions="Be terse.",
        input=[
            {"role": "developer", "content": [{"type": "input_text", "text": "Dev one."}]},
            {"role": "system", "content": "Sys two."},
            user("hi"),
            said("hello"),
            {"role": "developer", "content": "Late dev."},  # hoisted too: templates reject a later one
            user("again"),
        ],
    )
    assert req.chat_messages() == [
        {"role": "system", "content": "Be terse.\n\nDev one.\n\nSys two.\n\nLate dev."},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "again"},
    ]


def test_an_echoed_turn_is_one_assistant_message() -> None:
    """Codex echoes each round's message, sorat's reasoning and mcp_call items, and the function calls:
    the session stored them as one assistant message, and one it must be again."""
    input_ = [
        user("do it"),
        {"type": "reasoning", "id": "rs_1", "summary": [{"type": "summary_text", "text": "hmm"}]},
        said("Let me look.", id="msg_1"),
        {"type": "mcp_call", "id": "mcp_1", "server_label": "sorat", "name": "get_current_time"},
        {"type": "reasoning", "id": "rs_2", "summary": [], "encrypted_content": None},
        said("Now the shell.", id="msg_2"),
        {"type": "function_call", "id": "fc_x", "call_id": "call_1", "name": "exec_command",
         "arguments": '{"cmd":"ls"}', "status": "completed"},
        {"type": "function_call", "call_id": "call_2", "name": "spawn_agent", "namespace": "multi_agent_v1",
         "arguments": "{}"},
        {"type": "function_call_output", "call_id": "call_1", "output": "a\nb\n"},
        {"type": "function_call_output", "call_id": "call_2",
         "output": [{"type": "input_text", "text": "spawned"}, {"type": "input_image", "image_url": "x"}]},
        said("Done."),
        user("thanks"),
    ]  # fmt: skip
    system, messages, orphans = parse_items(input_)
    assert system == [] and orphans == []
    assert messages == [
        {"role": "user", "content": "do it"},
        {
            "role": "assistant",
            "content": "Let me look.\n\nNow the shell.",  # rounds apart, as the session joined them
            "tool_calls": [
                call("call_1", "exec_command", '{"cmd":"ls"}'),
                call("call_2", "multi_agent_v1__spawn_agent", "{}"),
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "a\nb\n"},
        {"role": "tool", "tool_call_id": "call_2", "content": "spawned" + IMAGE_OMITTED},
        {"role": "assistant", "content": "Done."},
        {"role": "user", "content": "thanks"},
    ]  # fmt: skip


def test_custom_tool_calls_are_functions_of_one_input() -> None:
    _, messages, _ = parse_items(
        [
            user("patch it"),
            {"type": "custom_tool_call", "call_id": "c1", "name": "apply_patch", "input": "*** Begin Patch"},
            {"type": "custom_tool_call_output", "call_id": "c1", "output": "applied"},
        ]
    )
    assert messages[1]["tool_calls"][0]["function"] == {
        "name": "apply_patch",
        "arguments": '{"input":"*** Begin Patch"}',
    }
    assert messages[2] == {"role": "tool", "tool_call_id": "c1", "content": "applied"}


def test_unknown_and_foreign_items_are_skipped() -> None:
    _, messages, _ = parse_items(
        [
            {"type": "item_reference", "id": "msg_old"},
            {"type": "web_search_call", "id": "ws_1", "status": "completed", "action": {"type": "search"}},
            {"type": "compaction", "encrypted_content": "..."},
            {"type": "something_new", "whatever": [1, 2]},
            user("hi"),
        ]
    )
    assert messages == [{"role": "user", "content": "hi"}]


def test_outputs_without_their_call_are_reported() -> None:
    _, messages, orphans = parse_items([{"type": "function_call_output", "call_id": "nope", "output": "x"}])
    assert orphans == ["nope"] and messages == [{"role": "tool", "tool_call_id": "nope", "content": "x"}]


@pytest.mark.parametrize(
    ("item", "param"),
    [
        (3, "input[1]"),
        ({"type": "message", "content": "x"}, "input[1].role"),
        ({"role": "wizard", "content": "x"}, "input[1].role"),
        ({"role": "user"}, "input[1].content"),
        ({"role": "user", "content": 5}, "input[1].content"),
        ({"role": "user", "content": [{"type": "input_text", "text": 5}]}, "input[1].content[0].text"),
        ({"role": "user", "content": [{"text": "no type"}]}, "input[1].content[0]"),
        ({"type": "function_call", "name": "f", "arguments": "{}"}, "input[1].call_id"),
        ({"type": "function_call", "call_id": "c", "arguments": "{}"}, "input[1].name"),
        ({"type": "function_call", "call_id": "c", "name": "f", "arguments": 3}, "input[1].arguments"),
        ({"type": "custom_tool_call", "call_id": "c", "name": "f"}, "input[1].input"),
        ({"type": "function_call_output", "output": "x"}, "input[1].call_id"),
        ({"type": "function_call_output", "call_id": "c"}, "input[1].output"),
        ({"type": "function_call_output", "call_id": "c", "output": [7]}, "input[1].output[0]"),
        ({"type": 7}, "input[1].type"),
    ],
)
def test_malformed_items_name_themselves(item: Any, param: str) -> None:
    bad(param, input=[user("fine"), item])


# --- tools ---------------------------------------------------------------------------------------------


def test_tools_function_custom_namespace_and_hosted() -> None:
    req = parse(
        input="x",
        tools=[
            {"type": "function", "name": "exec_command", "description": "Run", "strict": False,
             "parameters": {"type": "object", "properties": {"cmd": {"type": "string"}}}},
            {"type": "custom", "name": "apply_patch", "description": "Patch files",
             "format": {"type": "grammar", "syntax": "lark", "definition": "start: 'x'"}},
            {"type": "namespace", "name": "multi_agent_v1", "description": "Agents",
             "tools": [{"type": "function", "name": "spawn_agent", "parameters": {"type": "object"}}]},
            {"type": "web_search", "external_web_access": False},
            {"type": "tool_search"},
            {"type": "brand_new_hosted_thing"},
        ],
    )  # fmt: skip
    names = [t["function"]["name"] for t in req.tools]
    assert names == ["exec_command", "apply_patch", "multi_agent_v1__spawn_agent"]
    assert req.tools[0] == {
        "type": "function",
        "function": {
            "name": "exec_command",
            "description": "Run",
            "parameters": {"type": "object", "properties": {"cmd": {"type": "string"}}},
            "strict": False,
        },
    }
    patch = req.tools[1]["function"]["parameters"]
    assert patch["required"] == ["input"] and "start: 'x'" in patch["properties"]["input"]["description"]
    assert req.client_tools == {
        "exec_command": ClientTool("function", "exec_command"),
        "apply_patch": ClientTool("custom", "apply_patch"),
        "multi_agent_v1__spawn_agent": ClientTool("function", "spawn_agent", "multi_agent_v1"),
    }
    assert req.skipped_tools == ["web_search", "tool_search", "brand_new_hosted_thing"]


@pytest.mark.parametrize(
    ("tools", "param"),
    [
        ({"type": "function"}, "tools"),
        ([{"type": "function"}], "tools[0].name"),
        ([{"type": "function", "name": "f", "parameters": "x"}], "tools[0].parameters"),
        ([{"name": "no type"}], "tools[0]"),
        ([{"type": "namespace", "name": "ns"}], "tools[0].tools"),
        ([{"type": "namespace", "name": "ns", "tools": [{"type": "function"}]}], "tools[0].tools[0].name"),
    ],
)
def test_malformed_tools(tools: Any, param: str) -> None:
    bad(param, input="x", tools=tools)


@pytest.mark.parametrize(
    ("choice", "chat"),
    [
        ("auto", "auto"),
        ("required", "required"),
        ({"type": "function", "name": "f"}, {"type": "function", "function": {"name": "f"}}),
        (
            {"type": "function", "name": "s", "namespace": "ns"},
            {"type": "function", "function": {"name": "ns__s"}},
        ),
        (
            {"type": "custom", "name": "apply_patch"},
            {"type": "function", "function": {"name": "apply_patch"}},
        ),
        ({"type": "allowed_tools", "mode": "required", "tools": []}, "required"),
        ({"type": "web_search"}, "auto"),
    ],
)
def test_tool_choice(choice: Any, chat: Any) -> None:
    assert parse(input="x", tool_choice=choice).tool_choice == chat


# --- settings ------------------------------------------------------------------------------------------


def test_settings_go_to_the_provider() -> None:
    req = parse(
        input="x",
        temperature=0.3,
        top_p=0.9,
        max_output_tokens=77,
        parallel_tool_calls=False,
        text={"format": {"type": "json_schema", "name": "out", "schema": {"type": "object"}, "strict": True}},
        reasoning={"effort": "low", "summary": "auto"},
        include=["reasoning.encrypted_content"],
        prompt_cache_key="thread-1",
        unknown_field={"ignored": True},
        stream=True,
        store=False,
        metadata={"k": "v"},
    )
    assert req.params == {
        "temperature": 0.3,
        "top_p": 0.9,
        "max_tokens": 77,
        "parallel_tool_calls": False,
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "out", "schema": {"type": "object"}, "strict": True},
        },
        "reasoning_effort": "low",
    }
    assert req.stream is True and req.store is False
    assert req.echo["metadata"] == {"k": "v"} and req.echo["max_output_tokens"] == 77
    assert parse(input="x", text={"format": {"type": "json_object"}}).params == {
        "response_format": {"type": "json_object"}
    }
    assert parse(input="x", text={"format": {"type": "text"}, "verbosity": "low"}).params == {}


def test_sessions_fields() -> None:
    assert parse(input="x", previous_response_id="resp_1").previous_response_id == "resp_1"
    assert parse(input="x", conversation="conv_1").conversation == "conv_1"
    assert parse(input="x", conversation={"id": "conv_2"}).conversation == "conv_2"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"input": "x", "background": True}, "background"),
        ({"input": "x", "previous_response_id": "resp_1", "conversation": "conv_1"}, "conversation"),
        ({"input": 5}, "input"),
        ({"input": "x", "stream": "yes"}, "stream"),
        ({"input": "x", "store": 1}, "store"),
        ({"input": "x", "temperature": True}, "temperature"),
        ({"input": "x", "max_output_tokens": 1.5}, "max_output_tokens"),
        ({"input": "x", "model": 4}, "model"),
        ({"input": "x", "instructions": 4}, "instructions"),
        ({"input": "x", "conversation": 4}, "conversation"),
        ({"input": "x", "tool_choice": "sometimes"}, "tool_choice"),
        ({"input": "x", "text": {"format": "json"}}, "text.format"),
        ({"input": "x", "reasoning": "high"}, "reasoning"),
        ({"input": "x", "metadata": ["a"]}, "metadata"),
    ],
)
def test_bad_settings(body: dict[str, Any], param: str) -> None:
    bad(param, **body)


def test_bad_bodies() -> None:
    for raw in (b"{", b"[]", b'"x"', b"\xff"):
        with pytest.raises(RequestError):
            parse_request(raw)


def test_nesting_orjson_cannot_send_on_is_refused() -> None:
    deep = '{"x":' * 400 + "1" + "}" * 400
    body = '{"input": "x", "tools": [{"type": "function", "name": "f", "parameters": ' + deep + "}]}"
    with pytest.raises(RequestError) as e:
        parse_request(body.encode())
    assert "nested too deeply" in e.value.message


def test_helpers() -> None:
    assert with_system([], [{"role": "user", "content": "x"}]) == [{"role": "user", "content": "x"}]
    assert fc_id("call_1") == fc_id("call_1") != fc_id("call_2")
    assert fc_id("call_1").startswith("fc_") and fc_id("call_1") != "call_1"
