"""The Chat Completions renderer: the agent's events as chunks, internal calls per tool_events."""

from __future__ import annotations

from typing import Any

import pytest

from sorat_daemon import agent
from sorat_daemon.protocols.chat_render import ChatRenderer
from tests.conftest import sse


def deltas(renderer: ChatRenderer, events: list[agent.Event]) -> list[dict[str, Any]]:
    frames = renderer.begin() + b"".join(renderer.event(e) for e in events)
    return [c["choices"][0]["delta"] for c in sse(frames.decode()) if c["choices"]]


ROUNDS: list[agent.Event] = [
    agent.Text("Let me look.", 0),
    agent.ToolCall("call_1", "get_current_time", '{"timezone":"UTC"}'),
    agent.Text("It is ", 1),
    agent.Text("noon.", 1),
]


def test_a_later_round_follows_a_blank_line() -> None:
    out = deltas(ChatRenderer("m", "none", False), ROUNDS)
    assert [d.get("content") for d in out] == ["", "Let me look.", "\n\nIt is ", "noon."]


def test_no_blank_line_before_the_first_text() -> None:
    """A silent first round: the answer's text is the first the client sees."""
    events: list[agent.Event] = [agent.ToolCall("c", "t", "{}"), agent.Text("Noon.", 1), agent.Text("!", 1)]
    out = deltas(ChatRenderer("m", "none", False), events)
    assert "".join(d.get("content") or "" for d in out) == "Noon.!"


@pytest.mark.parametrize(
    ("mode", "calls", "reasoning"),
    [
        ("reasoning", [], 'get_current_time {"timezone":"UTC"}\n'),
        ("tool_calls", [(0, "call_1", "get_current_time")], ""),
        ("none", [], ""),
    ],
)
def test_internal_calls_per_mode(mode: str, calls: list[Any], reasoning: str) -> None:
    out = deltas(ChatRenderer("m", mode, False), ROUNDS)
    shown = [(c["index"], c["id"], c["function"]["name"]) for d in out for c in d.get("tool_calls") or []]
    assert shown == calls
    assert "".join(d.get("reasoning_content") or "" for d in out) == reasoning
