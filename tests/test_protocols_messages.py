"""protocols/messages.py: Anthropic Messages bodies into chat messages, tools and parameters; the tool-id
mapping; the count_tokens estimate."""

from __future__ import annotations

import json
from typing import Any

import pytest

from sorat_daemon.errors import RequestError
from sorat_daemon.protocols.messages import (
    IMAGE_TOKENS,
    MAX_TOKENS_PER_CALL,
    count_tokens,
    parse_messages_request,
    tool_id_in,
    tool_id_out,
)

CACHE = {"type": "ephemeral"}


def parse(**body: Any) -> Any:
    body.setdefault("max_tokens", 1024)
    body.setdefault("messages", [{"role": "user", "content": "hi"}])
    return parse_messages_request(json.dumps(body).encode())


def bad(**body: Any) -> RequestError:
    with pytest.raises(RequestError) as e:
        parse(**body)
    assert e.value.status == 400 and e.value.message
    return e.value


def test_a_plain_request() -> None:
    req = parse(model="claude-sonnet-4-5", messages=[{"role": "user", "content": "hi"}], stream=True)
    assert req.messages == [{"role": "user", "content": "hi"}]
    assert req.model == "claude-sonnet-4-5" and req.stream is True
    assert req.params == {"max_tokens": 1024}
    assert req.tools == [] and req.declared_tools is False and req.tool_choice is None


def test_max_tokens_is_required_and_clamped_per_call() -> None:
    with pytest.raises(RequestError) as e:
        parse_messages_request(b'{"messages": [{"role": "user", "content": "hi"}]}')
    assert e.value.param == "max_tokens" and "max_tokens" in e.value.message
    for wrong in (0, -1, 1.5, "10", True, None):
        assert bad(max_tokens=wrong).param == "max_tokens"
    assert parse(max_tokens=64000).params["max_tokens"] == MAX_TOKENS_PER_CALL
    assert parse(max_tokens=1).params["max_tokens"] == 1


def test_parameters_are_mapped() -> None:
    req = parse(
        temperature=0.2, top_p=0.9, top_k=5, stop_sequences=["END", "STOP"], metadata={"user_id": "x"}
    )
    assert req.params == {"max_tokens": 1024, "temperature": 0.2, "top_p": 0.9, "stop": ["END", "STOP"]}
    assert "stop" not in parse(stop_sequences=[]).params
    assert bad(temperature="hot").param == "temperature"
    assert bad(stop_sequences="END").param == "stop_sequences"
    assert bad(stream="yes").param == "stream"
    assert bad(model=3).param == "model"


def test_system_string_blocks_and_inline_system_messages_become_one_leading_message() -> None:
    """Claude Code sends three system blocks, the first its billing line, and role: system messages
    inside messages (after the first user message): one leading system message, in order."""
    req = parse(
        system=[
            {
                "type": "text",
                "text": "x-anthropic-billing-header: cc_version=2.1.197.9aa; cc_entrypoint=cli;",
            },
            {"type": "text", "text": "You are a Claude agent.", "cache_control": CACHE},
            {"type": "text", "text": "Be brief.", "cache_control": CACHE},
        ],
        messages=[
            {"role": "user", "content": "hi"},
            {"role": "system", "content": "Agent types: none."},
            {"role": "assistant", "content": "hello"},
            {"role": "system", "content": [{"type": "text", "text": "Reminder."}]},
            {"role": "user", "content": "again"},
        ],
    )
    assert req.messages == [
        {
            "role": "system",
            "content": "You are a Claude agent.\n\nBe brief.\n\nAgent types: none.\n\nReminder.",
        },
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "again"},
    ]
    assert parse(system="Plain.").messages[0] == {"role": "system", "content": "Plain."}
    assert parse(system="").messages == [{"role": "user", "content": "hi"}]
    assert bad(system=3).param == "system"
    assert bad(system=[{"type": "text", "text": 3}]).param == "system[0].text"


def test_user_blocks_text_images_and_cache_control() -> None:
    req = parse(
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "<system-reminder>ctx</system-reminder>"},
                    {"type": "text", "text": "say hi", "cache_control": CACHE},
                ],
            }
        ]
    )
    assert req.messages == [{"role": "user", "content": "<system-reminder>ctx</system-reminder>\n\nsay hi"}]
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}}
    url = {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.png"}}
    req = parse(messages=[{"role": "user", "content": [{"type": "text", "text": "what is it?"}, image, url]}])
    assert req.messages == [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "what is it?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
                {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}},
            ],
        }
    ]
    assert "cache_control" not in json.dumps(req.messages)


def test_tool_use_and_tool_result_blocks() -> None:
    """Tool results become tool messages before the user text of the same message; the assistant's
    echoed thinking is dropped, its tool_use blocks become tool_calls."""
    req = parse(
        messages=[
            {"role": "user", "content": "list files"},
            {
                "role": "assistant",
                "content": [
                    {"type": "thinking", "thinking": "let me see", "signature": "sig"},
                    {"type": "redacted_thinking", "data": "xx"},
                    {"type": "text", "text": "Listing."},
                    {"type": "tool_use", "id": "toolu_01", "name": "Bash", "input": {"command": "ls"}},
                    {"type": "tool_use", "id": "call_2", "name": "Read", "input": {}},
                ],
            },
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "and then?"},
                    {
                        "type": "tool_result",
                        "tool_use_id": "toolu_01",
                        "content": "a.txt",
                        "cache_control": CACHE,
                    },
                    {
                        "type": "tool_result",
                        "tool_use_id": "call_2",
                        "is_error": True,
                        "content": [{"type": "text", "text": "no"}, {"type": "text", "text": "file"}],
                    },
                ],
            },
        ]
    )
    assert req.messages == [
        {"role": "user", "content": "list files"},
        {
            "role": "assistant",
            "content": "Listing.",
            "tool_calls": [
                {
                    "id": "toolu_01",
                    "type": "function",
                    "function": {"name": "Bash", "arguments": '{"command":"ls"}'},
                },
                {"id": "call_2", "type": "function", "function": {"name": "Read", "arguments": "{}"}},
            ],
        },
        {"role": "tool", "tool_call_id": "toolu_01", "content": "a.txt"},
        {"role": "tool", "tool_call_id": "call_2", "content": "no\nfile"},
        {"role": "user", "content": "and then?"},
    ]


def test_an_echoed_answer_of_two_rounds_is_one_message_rounds_apart() -> None:
    """sorat streams each model round's text as its own block; the echo must equal the stored message."""
    req = parse(
        messages=[
            {"role": "user", "content": "time, then weather"},
            {
                "role": "assistant",
                "content": [
                    {"type": "text", "text": "Checking the time."},
                    {"type": "thinking", "thinking": "get_current_time {}", "signature": ""},
                    {"type": "text", "text": "Now the weather."},
                ],
            },
            {"role": "user", "content": "thanks"},
        ]
    )
    assert req.messages[1]["content"] == "Checking the time.\n\nNow the weather."


def test_an_assistant_message_of_tool_calls_only_has_no_content() -> None:
    req = parse(
        messages=[
            {"role": "user", "content": "go"},
            {
                "role": "assistant",
                "content": [{"type": "tool_use", "id": "a", "name": "f", "input": {"x": 1}}],
            },
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "a"}]},
        ]
    )
    assert req.messages[1]["content"] is None
    assert req.messages[2] == {"role": "tool", "tool_call_id": "a", "content": ""}
    only_thinking = parse(
        messages=[
            {"role": "user", "content": "go"},
            {"role": "assistant", "content": [{"type": "thinking", "thinking": "x", "signature": "s"}]},
            {"role": "user", "content": "more"},
        ]
    )
    assert only_thinking.messages[1] == {"role": "assistant", "content": ""}


def test_images_in_a_tool_result_follow_the_tool_messages() -> None:
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/jpeg", "data": "AAAA"}}
    req = parse(
        messages=[
            {"role": "user", "content": "shot"},
            {
                "role": "assistant",
                "content": [{"type": "tool_use", "id": "s", "name": "Screenshot", "input": {}}],
            },
            {
                "role": "user",
                "content": [
                    {
                        "type": "tool_result",
                        "tool_use_id": "s",
                        "content": [{"type": "text", "text": "ok"}, image],
                    }
                ],
            },
        ]
    )
    assert req.messages[2:] == [
        {"role": "tool", "tool_call_id": "s", "content": "ok"},
        {
            "role": "user",
            "content": [{"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,AAAA"}}],
        },
    ]


def test_a_tool_result_for_an_unknown_tool_use_id_is_refused() -> None:
    err = bad(
        messages=[
            {"role": "user", "content": "go"},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "a", "name": "f", "input": {}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "zzz", "content": "x"}]},
        ]
    )
    assert err.param == "messages[2].content[0].tool_use_id" and "zzz" in err.message
    # Without an assistant message in the request, the session may hold the call (X-Session-ID with only
    # the new message): accepted.
    req = parse(
        messages=[{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "a", "content": "x"}]}]
    )
    assert req.messages == [{"role": "tool", "tool_call_id": "a", "content": "x"}]


@pytest.mark.parametrize(
    ("messages", "param"),
    [
        ("hi", "messages"),
        ([], "messages"),
        ([{"role": "system", "content": "only a system prompt"}], "messages"),
        (["hi"], "messages[0]"),
        ([{"role": "wizard", "content": "hi"}], "messages[0].role"),
        ([{"role": "user"}], "messages[0].content"),
        ([{"role": "user", "content": 3}], "messages[0].content"),
        ([{"role": "user", "content": ["text"]}], "messages[0].content[0]"),
        ([{"role": "user", "content": [{"text": "no type"}]}], "messages[0].content[0]"),
        ([{"role": "user", "content": [{"type": "text"}]}], "messages[0].content[0].text"),
        ([{"role": "user", "content": [{"type": "image"}]}], "messages[0].content[0].source"),
        (
            [{"role": "user", "content": [{"type": "image", "source": {"type": "base64"}}]}],
            "messages[0].content[0].source",
        ),
        ([{"role": "user", "content": [{"type": "tool_result"}]}], "messages[0].content[0].tool_use_id"),
        (
            [{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "a", "content": 5}]}],
            "messages[0].content[0].content",
        ),
        (
            [{"role": "assistant", "content": [{"type": "tool_use", "name": "f"}]}],
            "messages[0].content[0].id",
        ),
        (
            [{"role": "assistant", "content": [{"type": "tool_use", "id": "a"}]}],
            "messages[0].content[0].name",
        ),
        (
            [{"role": "assistant", "content": [{"type": "tool_use", "id": "a", "name": "f", "input": "x"}]}],
            "messages[0].content[0].input",
        ),
    ],
)
def test_malformed_messages_are_400s_naming_the_field(messages: Any, param: str) -> None:
    assert bad(messages=messages).param == param


def test_unknown_block_types_are_skipped() -> None:
    req = parse(
        messages=[
            {
                "role": "user",
                "content": [{"type": "text", "text": "hi"}, {"type": "container_upload", "file_id": "f"}],
            },
            {
                "role": "assistant",
                "content": [
                    {"type": "server_tool_use", "id": "srv", "name": "web_search", "input": {}},
                    {"type": "web_search_tool_result", "tool_use_id": "srv", "content": []},
                    {"type": "text", "text": "found"},
                ],
            },
        ]
    )
    assert req.messages == [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "found"}]


def test_body_must_be_a_json_object() -> None:
    for raw in (b"", b"not json", b"[1]", b'"x"'):
        with pytest.raises(RequestError):
            parse_messages_request(raw)
    with pytest.raises(RequestError) as e:
        parse_messages_request(b'{"max_tokens": 5}')
    assert e.value.param == "messages"


# -- tools ----------------------------------------------------------------------------------------------

BASH = {
    "name": "Bash",
    "description": "Run a command",
    "input_schema": {
        "$schema": "http://json-schema.org/draft-07/schema#",
        "type": "object",
        "properties": {"command": {"type": "string"}},
        "required": ["command"],
        "additionalProperties": False,
    },
    "cache_control": CACHE,
}


def test_tools_become_chat_function_tools_schema_kept_whole() -> None:
    req = parse(tools=[BASH, {"name": "Nothing", "input_schema": {"type": "object"}}])
    assert req.declared_tools is True
    assert req.tools == [
        {
            "type": "function",
            "function": {"name": "Bash", "description": "Run a command", "parameters": BASH["input_schema"]},
        },
        {"type": "function", "function": {"name": "Nothing", "parameters": {"type": "object"}}},
    ]


def test_anthropic_server_tools_are_left_out_and_named() -> None:
    req = parse(tools=[BASH, {"type": "web_search_20250305", "name": "web_search", "max_uses": 5}])
    assert [t["function"]["name"] for t in req.tools] == ["Bash"]
    assert req.skipped_tools == ["web_search"]
    assert bad(tools=[{"name": "f"}]).param == "tools[0].input_schema"
    assert bad(tools=[{"input_schema": {}}]).param == "tools[0].name"
    assert bad(tools={"name": "f"}).param == "tools"


@pytest.mark.parametrize(
    ("choice", "mapped"),
    [
        ({"type": "auto"}, "auto"),
        ({"type": "any"}, "required"),
        ({"type": "none"}, "none"),
        ({"type": "tool", "name": "Bash"}, {"type": "function", "function": {"name": "Bash"}}),
    ],
)
def test_tool_choice(choice: Any, mapped: Any) -> None:
    req = parse(tools=[BASH], tool_choice=choice)
    assert req.tool_choice == mapped
    assert "parallel_tool_calls" not in req.params


def test_tool_choice_details() -> None:
    req = parse(tools=[BASH], tool_choice={"type": "auto", "disable_parallel_tool_use": True})
    assert req.params["parallel_tool_calls"] is False
    assert parse(tool_choice={"type": "any", "disable_parallel_tool_use": True}).params == {
        "max_tokens": 1024
    }
    assert bad(tools=[BASH], tool_choice="auto").param == "tool_choice"
    assert bad(tools=[BASH], tool_choice={"type": "tool"}).param == "tool_choice.name"
    assert bad(tools=[BASH], tool_choice={"type": "maybe"}).param == "tool_choice.type"


# -- tool ids ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "call_id", ["functions.Bash:0", "call 1", "id/with/slashes", "ünïcode", "toolu_sorat_x"]
)
def test_ids_anthropic_cannot_take_map_out_and_back(call_id: str) -> None:
    out = tool_id_out(call_id)
    assert out.startswith("toolu_") and out != call_id
    assert all(c.isascii() and (c.isalnum() or c in "_-") for c in out)
    assert tool_id_in(out) == call_id


@pytest.mark.parametrize("call_id", ["call_abc123", "toolu_01A09q90qw90lq917835lq9", "a-b_c", "toolu_sorat_"])
def test_good_ids_pass_unchanged(call_id: str) -> None:
    if call_id != "toolu_sorat_":
        assert tool_id_out(call_id) == call_id
    assert tool_id_in(call_id) == call_id


def test_mapped_ids_come_back_in_tool_use_and_tool_result() -> None:
    mapped = tool_id_out("functions.Bash:0")
    req = parse(
        messages=[
            {"role": "user", "content": "go"},
            {
                "role": "assistant",
                "content": [{"type": "tool_use", "id": mapped, "name": "Bash", "input": {}}],
            },
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": mapped, "content": "ok"}]},
        ]
    )
    assert req.messages[1]["tool_calls"][0]["id"] == "functions.Bash:0"
    assert req.messages[2]["tool_call_id"] == "functions.Bash:0"


# -- count_tokens -----------------------------------------------------------------------------------------


def test_count_tokens_is_an_estimate_over_system_messages_and_tools() -> None:
    body = {"system": "s" * 400, "messages": [{"role": "user", "content": "m" * 400}]}
    small = count_tokens(json.dumps(body).encode())
    assert 200 <= small <= 240
    with_tools = count_tokens(json.dumps({**body, "tools": [BASH] * 10}).encode())
    assert with_tools > small + 10 * 40
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "A" * 400_000}}
    pic = count_tokens(json.dumps({"messages": [{"role": "user", "content": [image]}]}).encode())
    assert IMAGE_TOKENS <= pic < IMAGE_TOKENS + 50
    assert count_tokens(b'{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}') >= 1


def test_count_tokens_checks_the_request() -> None:
    for raw in (b"[]", b"{}", b'{"messages": [{"role": "user", "content": 3}]}'):
        with pytest.raises(RequestError):
            count_tokens(raw)
    deep: Any = "x"
    for _ in range(600):
        deep = [deep]
    with pytest.raises(RequestError):
        count_tokens(json.dumps({"messages": [{"role": "user", "content": "hi"}], "tools": deep}).encode())


def test_a_resent_conversation_reads_as_a_whole_one_and_reuses_what_it_read() -> None:
    """Claude Code's turns, with ``cache_control`` moving to the newest block and an inline system
    message, parse through ``Resent`` exactly as each body alone; the messages read before are the same
    objects; a bad block in a new message is still a 400 naming it."""
    from sorat_daemon.protocols.resent import Resent

    resent = Resent("messages", min_body=0)
    cache = {"type": "ephemeral"}
    system = [{"type": "text", "text": "You are Claude Code.", "cache_control": cache}]
    messages: list[Any] = [
        {"role": "user", "content": [{"type": "text", "text": "<system-reminder>x</system-reminder>"},
                                     {"type": "text", "text": "fix it", "cache_control": cache}]},
    ]  # fmt: skip
    earlier = None
    for turn in range(6):
        body = json.dumps({"model": "m", "max_tokens": 100, "messages": messages, "system": system}).encode()
        got, alone = parse_messages_request(body, resent), parse_messages_request(body)
        assert (got.messages, got.params, got.model) == (alone.messages, alone.params, alone.model)
        if turn >= 2:  # (the first message itself lost its cache_control at turn 1)
            assert earlier is not None and got.messages[1] is earlier.messages[1]  # read once
        earlier = got
        for m in messages:
            if isinstance(m["content"], list):
                for block in m["content"]:
                    block.pop("cache_control", None)
        call = f"toolu_{turn}"
        messages += [
            {"role": "assistant", "content": [{"type": "text", "text": f"step {turn}"},
                                              {"type": "tool_use", "id": call, "name": "Bash", "input": {}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call, "content": "ok",
                                          "cache_control": cache}]},
        ]  # fmt: skip
        if turn == 2:
            messages.append({"role": "system", "content": "a note"})
    wrong = {"role": "assistant", "content": [{"type": "tool_use", "id": "", "name": "Bash"}]}
    bad_body = {"model": "m", "max_tokens": 100, "system": system, "messages": [*messages, wrong]}
    with pytest.raises(RequestError) as e:
        parse_messages_request(json.dumps(bad_body).encode(), resent)
    assert e.value.param == f"messages[{len(messages)}].content[0].id"
