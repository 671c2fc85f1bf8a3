"""providers.client: what a Provider sends, and how it relays what the provider answers."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import orjson
import pytest

from sorat_daemon import errors
from sorat_daemon.config import ProviderSettings
from sorat_daemon.providers import Http, Provider
from sorat_daemon.types import Delta, ModelCall
from tests.provider_helpers import CALL, KEY, USAGE, USER, closed_port, collect, provider, summary
from tests.upstream import Upstream, raw, text, tool_calls

pytest_plugins = ["tests.provider_fixtures"]  # _server, up, client, env


# --- streams: the text path and every quirk --------------------------------------------------------


async def test_stream_relays_text_and_sends_the_request(up: Upstream, client: Http) -> None:
    up.api_key = KEY
    up.script(text("Hello world", chunks=3))
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    call = ModelCall("gpt-4o-mini", [USER], tools, "auto", {"temperature": 0.1, "max_tokens": 9})
    deltas = await collect(provider(up.base_url, client), call)
    # what arrives in one read is merged; the text and its order are what the upstream sent
    assert "".join(d.content or "" for d in deltas[:-1]) == "Hello world"
    assert deltas[-1] == Delta(finish_reason="stop", usage=USAGE)
    assert up.requests == [
        {
            "temperature": 0.1,
            "max_tokens": 9,
            "model": "gpt-4o-mini",
            "messages": [USER],
            "tools": tools,
            "tool_choice": "auto",
            "stream": True,
            "stream_options": {"include_usage": True},
        }
    ]
    assert up.headers[0]["authorization"] == f"Bearer {KEY}"


async def test_tool_choice_and_parallel_calls_dropped_without_tools(up: Upstream, client: Http) -> None:
    call = ModelCall("m", [USER], None, "none", {"parallel_tool_calls": True, "n": 3})
    await provider(up.base_url, client, key=None).complete(call)
    assert up.requests == [{"model": "m", "messages": [USER]}]
    assert "authorization" not in up.headers[0]


async def test_stream_relays_before_the_answer_is_whole(up: Upstream, client: Http) -> None:
    up.script(text("Hello world", chunks=4, stall_after=3))  # role + 2 pieces, then silence
    stream = provider(up.base_url, client).stream(CALL)
    said = ""
    while said != "Hello":  # the pieces sent before the silence, however the reads cut them
        said += (await anext(stream)).content or ""
    await stream.aclose()
    assert await up.until(lambda: up.disconnects == 1)


TEXT_QUIRKS: list[tuple[set[str], str | None, str, dict[str, int] | None]] = [
    (set(), None, "stop", USAGE),
    ({"crlf"}, None, "stop", USAGE),
    ({"cr"}, None, "stop", USAGE),
    ({"nospace"}, None, "stop", USAGE),
    ({"comments"}, None, "stop", USAGE),
    ({"multiline"}, None, "stop", USAGE),
    ({"no_done"}, None, "stop", USAGE),
    ({"no_finish", "no_done"}, None, "stop", USAGE),
    ({"azure"}, None, "stop", USAGE),
    ({"extras"}, None, "stop", USAGE),
    ({"role_every_chunk"}, None, "stop", USAGE),
    ({"content_with_finish"}, None, "stop", USAGE),
    ({"groq_usage"}, None, "stop", USAGE),
    ({"usage_on_finish"}, None, "stop", USAGE),
    ({"usage_every_chunk"}, None, "stop", USAGE),
    ({"usage_after_stop"}, None, "stop", USAGE),
    ({"crlf", "nospace", "comments", "azure", "extras", "multiline", "no_done"}, None, "stop", USAGE),
    (set(), "eos", "stop", USAGE),
    (set(), "eos_token", "stop", USAGE),
    (set(), "end", "stop", USAGE),
    (set(), "end_turn", "stop", USAGE),
    (set(), "length", "length", USAGE),
    (set(), "content_filter", "content_filter", USAGE),
    (set(), "weird_new_reason", "stop", USAGE),
]


@pytest.mark.parametrize(("quirks", "finish", "expected", "usage"), TEXT_QUIRKS, ids=lambda v: repr(v))
async def test_text_quirks(
    up: Upstream,
    client: Http,
    quirks: set[str],
    finish: str | None,
    expected: str,
    usage: dict[str, int] | None,
) -> None:
    up.script(text("Hello world", chunks=4, quirks=quirks, finish_reason=finish))
    content, reasoning, calls, got_finish, got_usage = summary(await collect(provider(up.base_url, client)))
    assert (content, reasoning, calls, got_finish, got_usage) == ("Hello world", "", [], expected, usage)


@pytest.mark.parametrize(
    "how", ["reasoning_content", "reasoning", "reasoning_details", "openrouter", "thought"]
)
async def test_reasoning_fields(up: Upstream, client: Http, how: str) -> None:
    p = provider(up.base_url, client)
    up.script(text("Answer.", chunks=2, reasoning="Let me think.", reasoning_as=how))
    content, reasoning, _, finish, _ = summary(await collect(p))
    assert (content, reasoning, finish) == ("Answer.", "Let me think.", "stop")
    if how != "thought":  # Gemini marks thoughts only in streams
        up.script(text("Answer.", reasoning="Let me think.", reasoning_as=how))
        result = await p.complete(CALL)
        assert result.message == {
            "role": "assistant",
            "content": "Answer.",
            "reasoning_content": "Let me think.",
        }


TOOL_QUIRKS: list[tuple[set[str], str | None]] = [
    (set(), None),
    ({"whole_tool_calls"}, None),
    ({"no_index"}, None),
    ({"no_index", "whole_tool_calls"}, None),
    ({"index_from_1"}, None),
    ({"empty_name"}, None),
    ({"empty_name", "no_index"}, None),
    ({"thought_signature", "no_index", "whole_tool_calls"}, "stop"),  # Gemini
    ({"crlf", "comments", "extras", "azure"}, None),
    ({"usage_every_chunk", "role_every_chunk"}, None),
    (set(), "stop"),
    (set(), "tool_use"),
    (set(), "tool_call"),
    (set(), "function_call"),
    (set(), "end_turn"),
]


@pytest.mark.parametrize(("quirks", "finish"), TOOL_QUIRKS, ids=lambda v: repr(v))
async def test_tool_call_quirks(up: Upstream, client: Http, quirks: set[str], finish: str | None) -> None:
    reply = tool_calls(
        [("run_command", {"command": "ls", "args": ["-l"]}), ("read_file", {"path": "a b.txt"})],
        content="Let me look.",
        chunks=3,
        quirks=quirks,
        finish_reason=finish,
    )
    up.script(reply)
    content, _, calls, got_finish, usage = summary(await collect(provider(up.base_url, client)))
    assert content == "Let me look."
    assert got_finish == "tool_calls" and usage == USAGE
    expected = [
        {"id": cid, "type": "function", "function": {"name": name, "arguments": args}}
        for cid, name, args in reply.calls
    ]
    if "thought_signature" in quirks:
        for i, call in enumerate(expected):
            call["extra_content"] = {"google": {"thought_signature": f"sig-{i}"}}
    assert calls == expected


async def test_complete_text_and_tool_calls(up: Upstream, client: Http) -> None:
    p = provider(up.base_url, client)
    reply = tool_calls([("run_command", {"command": "ls"})], finish_reason="stop")
    up.script(text("Hello world", chunks=3, usage={"prompt_tokens": 3, "completion_tokens": 2}), reply)
    result = await p.complete(CALL)
    assert result.message == {"role": "assistant", "content": "Hello world"}
    assert (result.finish_reason, result.usage) == (
        "stop",
        {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
    )
    assert "stream" not in up.requests[0] and "stream_options" not in up.requests[0]
    result = await p.complete(CALL)
    (cid, name, args) = reply.calls[0]
    assert result.message["tool_calls"] == [
        {"id": cid, "type": "function", "function": {"name": name, "arguments": args}}
    ]
    assert result.finish_reason == "tool_calls"


async def test_provider_ignoring_stream_true(up: Upstream, client: Http) -> None:
    whole = {
        "choices": [{"message": {"content": "whole", "reasoning": "r"}, "finish_reason": "stop"}],
        "usage": USAGE,
    }
    up.script(raw(orjson.dumps(whole), content_type="application/json"))
    assert summary(await collect(provider(up.base_url, client))) == ("whole", "r", [], "stop", USAGE)


def logprobs(token: str) -> dict[str, Any]:
    return {"content": [{"token": token, "logprob": -0.5, "bytes": list(token.encode()), "top_logprobs": []}]}


async def test_logprobs_are_relayed_with_their_tokens(up: Upstream, client: Http) -> None:
    def frame(delta: dict[str, Any], lp: Any = None, finish: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": lp, "finish_reason": finish}
        return b"data: " + orjson.dumps({"id": "x", "choices": [choice]}) + b"\n\n"

    stream = [
        frame({"role": "assistant", "content": ""}),
        frame({"content": "Hi"}, logprobs("Hi")),
        frame({"content": "!"}, logprobs("!")),
        frame({}, None, "stop"),
        b"data: [DONE]\n\n",
    ]
    up.script(raw(b"".join(stream)))  # one read: its deltas are merged, but never across logprobs
    deltas = await collect(provider(up.base_url, client))
    assert deltas == [
        Delta("Hi", logprobs=logprobs("Hi")),
        Delta("!", logprobs=logprobs("!")),
        Delta(finish_reason="stop"),
    ]
    whole = {"choices": [{"message": {"content": "Hi"}, "logprobs": logprobs("Hi"), "finish_reason": "stop"}]}
    up.script(raw(orjson.dumps(whole), content_type="application/json"))
    assert (await provider(up.base_url, client).complete(CALL)).logprobs == logprobs("Hi")
    up.script(raw(orjson.dumps(whole), content_type="application/json"))  # stream=true ignored
    assert (await collect(provider(up.base_url, client)))[0] == Delta("Hi", logprobs=logprobs("Hi"))


async def test_empty_answer_with_finish_is_fine(up: Upstream, client: Http) -> None:
    up.script(text(""))
    assert summary(await collect(provider(up.base_url, client))) == ("", "", [], "stop", USAGE)


async def test_environment_proxies_apply(up: Upstream, client: Http, env: pytest.MonkeyPatch) -> None:
    env.setenv("HTTP_PROXY", up.base_url.removesuffix("/v1"))  # the upstream plays the proxy
    assert (await provider("http://provider.invalid/v1", client).complete(CALL)).message["content"] == "ok"
    assert up.headers[0]["host"] == "provider.invalid"
    env.setenv("HTTP_PROXY", f"http://127.0.0.1:{closed_port()}")
    env.setenv("NO_PROXY", "127.0.0.1")
    assert (await provider(up.base_url, client).complete(CALL)).message["content"] == "ok"


async def test_pieces_that_arrive_apart_are_relayed_apart(up: Upstream, client: Http) -> None:
    up.script(text("Hello world", chunks=3, chunk_delay=0.05))
    deltas = await collect(provider(up.base_url, client), ModelCall("gpt-4o", [USER]))
    assert [d.content for d in deltas[:-1]] == ["Hel", "lo w", "orld"]


# --- cancellation -----------------------------------------------------------------------------------


async def test_aclose_drops_the_upstream_request(up: Upstream, client: Http) -> None:
    up.script(text("Hello world", chunks=5, stall_after=3))
    async with contextlib.aclosing(provider(up.base_url, client).stream(CALL)) as stream:
        async for d in stream:
            assert d.content and "Hello".startswith(d.content)
            break
    assert await up.until(lambda: up.disconnects == 1)


async def test_break_without_aclose_still_drops_it(up: Upstream, client: Http) -> None:
    up.script(text("Hello world", chunks=5, stall_after=3))
    async for _ in provider(up.base_url, client).stream(CALL):
        break
    assert await up.until(lambda: up.disconnects == 1)


async def test_cancelling_the_consumer_drops_it(up: Upstream, client: Http) -> None:
    up.script(text("Hello world", chunks=5, stall_after=3))
    first = asyncio.Event()

    async def consume() -> None:
        async for _ in provider(up.base_url, client).stream(CALL):
            first.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(first.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await up.until(lambda: up.disconnects == 1)


async def test_cancelling_while_waiting_for_headers(up: Upstream, client: Http) -> None:
    up.script(text("never", hang=True))
    task = asyncio.create_task(provider(up.base_url, client).complete(CALL))
    assert await up.until(lambda: len(up.requests) == 1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await up.until(lambda: up.disconnects == 1)


# --- models -----------------------------------------------------------------------------------------


async def test_list_models(up: Upstream, client: Http) -> None:
    assert await provider(up.base_url, client).list_models() == ["gpt-4o", "gpt-4o-mini"]
    settings = ProviderSettings("x", up.base_url, models=("a", "b"))
    assert await Provider(settings, client).list_models() == ["a", "b"]
    up.api_key = "another-key-entirely"
    with pytest.raises(errors.ProviderError, match="rejected the API key"):
        await provider(up.base_url, client).list_models()
