"""turn: the pieces of the pipeline that need no daemon (the rest is driven through the HTTP tests)."""

from __future__ import annotations

from typing import Any

import pytest

from sorat_daemon import agent
from sorat_daemon.errors import RequestError
from sorat_daemon.turn import last_answer, tool_events_mode

CALL = {"id": "call_1", "type": "function", "function": {"name": "get_current_time", "arguments": "{}"}}
CLIENT_CALL = {"id": "call_2", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}


def test_last_answer_joins_the_rounds_the_client_saw() -> None:
    messages: list[Any] = [
        {"role": "user", "content": "old"},
        {"role": "assistant", "content": "old answer"},
        {"role": "user", "content": "time?"},
        {"role": "assistant", "content": "Checking.", "tool_calls": [CALL]},
        {"role": "tool", "tool_call_id": "call_1", "content": "{}"},
        {"role": "assistant", "content": None, "tool_calls": [CALL]},
        {"role": "tool", "tool_call_id": "call_1", "content": "{}"},
        {"role": "assistant", "content": "It is noon."},
    ]
    assert last_answer(messages) == {"role": "assistant", "content": "Checking.\n\nIt is noon."}


def test_last_answer_with_the_clients_calls() -> None:
    messages: list[Any] = [
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": None, "tool_calls": [CLIENT_CALL]},
    ]
    assert last_answer(messages) == {"role": "assistant", "content": "", "tool_calls": [CLIENT_CALL]}


@pytest.mark.parametrize(
    "tail",
    [
        [{"role": "user", "content": "unanswered"}],
        [{"role": "user", "content": "q"}, {"role": "assistant", "tool_calls": [CALL]}, {"role": "tool"}],
        [],
    ],
)
def test_no_last_answer_when_the_model_has_still_to_answer(tail: list[Any]) -> None:
    assert last_answer([{"role": "system", "content": "s"}, *tail]) is None


def test_tool_events_mode() -> None:
    assert tool_events_mode(None, "reasoning", False) == "reasoning"
    assert tool_events_mode("Tool_Calls ", "reasoning", False) == "tool_calls"
    assert tool_events_mode("tool_calls", "reasoning", True) == "reasoning"  # never calls beside its own
    assert tool_events_mode(None, "tool_calls", True) == "reasoning"
    assert tool_events_mode("none", "tool_calls", True) == "none"
    with pytest.raises(RequestError):
        tool_events_mode("all", "reasoning", False)
    assert agent.ROUND_SEPARATOR == "\n\n"
