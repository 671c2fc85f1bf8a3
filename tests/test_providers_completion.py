"""providers.completion: whole answers, coalescing a read's deltas, joining tool-call fragments."""

from __future__ import annotations

from typing import Any

import pytest

from sorat_daemon import errors
from sorat_daemon.providers.completion import ToolCallAccumulator, coalesce, parse_completion
from sorat_daemon.types import Delta, ToolCallDelta


def test_parse_completion_normalises_message() -> None:
    obj = {
        "choices": [
            {
                "message": {
                    "role": "assistant",
                    "content": None,
                    "reasoning": "thinking",
                    "tool_calls": [
                        {
                            "id": "",
                            "type": "function",
                            "function": {"name": "f", "arguments": ""},
                            "extra_content": {"google": {"thought_signature": "s"}},
                        },
                        {"function": {"name": "g", "arguments": {"a": 1}}},
                    ],
                },
                "finish_reason": "stop",
            }
        ],
        "x_groq": {"usage": {"prompt_tokens": 1, "completion_tokens": 2}},
    }
    result = parse_completion(obj)
    msg = result.message
    assert msg["reasoning_content"] == "thinking" and "reasoning" not in msg
    assert [c["function"] for c in msg["tool_calls"]] == [
        {"name": "f", "arguments": "{}"},
        {"name": "g", "arguments": '{"a":1}'},
    ]
    assert all(c["id"].startswith("call_") for c in msg["tool_calls"])
    assert msg["tool_calls"][0]["extra_content"] == {"google": {"thought_signature": "s"}}
    assert result.finish_reason == "tool_calls"
    assert result.usage == {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}


@pytest.mark.parametrize(
    ("obj", "kind"),
    [
        ({"error": {"message": "boom"}}, errors.ProviderError),
        (
            {"error": {"message": "This model's maximum context length is 8192 tokens", "code": "x"}},
            errors.ContextWindowExceeded,
        ),
        ({"choices": []}, errors.ProviderError),
        ([1], errors.ProviderError),
        ({"choices": [{"message": {"content": "x"}, "finish_reason": "error"}]}, errors.ProviderError),
    ],
)
def test_parse_completion_errors(obj: Any, kind: type[Exception]) -> None:
    with pytest.raises(kind):
        parse_completion(obj)


def test_accumulator_ids_stable_and_extra_kept() -> None:
    acc = ToolCallAccumulator()
    acc.add(
        [ToolCallDelta(0, None, "f", '{"a"'), ToolCallDelta(1, "id2", "g", "", {"extra_content": {"k": 1}})]
    )
    acc.add([ToolCallDelta(0, "", "", ":1}"), ToolCallDelta(1, "other", "other", "")])
    first = acc.calls()
    assert first == acc.calls()
    assert first[0]["id"].startswith("call_") and len(first[0]["id"]) > 10
    assert first[0]["function"] == {"name": "f", "arguments": '{"a":1}'}
    assert first[1] == {
        "id": "id2",
        "type": "function",
        "function": {"name": "g", "arguments": "{}"},
        "extra_content": {"k": 1},
    }
    assert len(acc) == 2


def test_coalesce_merges_only_neighbouring_text_of_one_kind() -> None:
    call = ToolCallDelta(0, "c1", "f", "{}")
    deltas = [
        Delta(reasoning="a"),
        Delta(reasoning="b"),
        Delta(content="c"),
        None,
        Delta(content="d"),
        Delta(tool_calls=[call]),
        Delta(content="e"),
        Delta(content="f", finish_reason="stop"),
        Delta(usage={"total_tokens": 1}),
    ]
    assert coalesce(deltas) == [
        Delta(reasoning="ab"),
        Delta(content="cd"),
        Delta(tool_calls=[call]),
        Delta(content="e"),
        Delta(content="f", finish_reason="stop"),
        Delta(usage={"total_tokens": 1}),
    ]


LOGPROBS = {"content": [{"token": "x", "logprob": -1.0, "bytes": [120], "top_logprobs": []}]}


def test_parse_completion_keeps_logprobs() -> None:
    choice: dict[str, Any] = {"message": {"content": "x"}, "finish_reason": "stop", "logprobs": LOGPROBS}
    assert parse_completion({"choices": [choice]}).logprobs == LOGPROBS
    choice["logprobs"] = None
    assert parse_completion({"choices": [choice]}).logprobs is None
    del choice["logprobs"]
    assert parse_completion({"choices": [choice]}).logprobs is None


def test_coalesce_keeps_each_delta_with_logprobs_apart() -> None:
    lp = LOGPROBS
    deltas = [Delta("a"), Delta("b", logprobs=lp), Delta("c", logprobs=lp), Delta("d"), Delta("e")]
    assert coalesce(deltas) == [
        Delta("a"),
        Delta("b", logprobs=LOGPROBS),
        Delta("c", logprobs=LOGPROBS),
        Delta("de"),
    ]
