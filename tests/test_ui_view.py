"""ui/view.py: a stored session as the pages show it, and its Markdown export."""

from __future__ import annotations

from typing import Any

from sorat_daemon.ui import view


def call(call_id: str, name: str, arguments: str) -> dict[str, Any]:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


MESSAGES: list[dict[str, Any]] = [
    {"role": "system", "content": "Be brief.", "timestamp": 1.0},
    {"role": "user", "content": "What is in my folder?", "timestamp": 2.0},
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [call("c1", "run_command", '{"command":"ls"}'), call("c2", "get_current_time", "{}")],
        "timestamp": 3.0,
        "internal": True,
    },
    {
        "role": "tool",
        "tool_call_id": "c1",
        "content": '{"stdout":"a.txt\\nb.txt\\n","exit_code":0}',
        "timestamp": 3.25,
        "internal": True,
    },  # fmt: skip
    {
        "role": "tool",
        "tool_call_id": "c2",
        "content": '{"error": "clock broke"}',
        "timestamp": 3.5,
        "internal": True,
    },  # fmt: skip
    {"role": "assistant", "content": "Two files: **a.txt** and b.txt.", "timestamp": 4.0},
    {"role": "user", "content": "old question", "timestamp": 5.0, "superseded": True},
    {"role": "assistant", "content": "old answer", "timestamp": 6.0, "superseded": True},
    {
        "role": "user",
        "content": [{"type": "text", "text": "new "}, {"type": "text", "text": "question"}],
        "timestamp": 7.0,
    },  # fmt: skip
    {"role": "assistant", "content": "new answer", "reasoning_content": "thinking…", "timestamp": 8.0},
]


def test_turns_and_tool_calls() -> None:
    entries = view.conversation(MESSAGES)
    assert [e.role for e in entries] == ["system", "user", "assistant", "user", "assistant"]
    answer = entries[2]
    kinds = [p.kind for p in answer.parts]
    assert kinds == ["tool", "tool", "text"]  # the calls, then the text after them: one block
    ls, clock = answer.parts[0].tool, answer.parts[1].tool
    assert ls is not None and clock is not None
    assert ls.name == "run_command" and ls.arguments == '{\n  "command": "ls"\n}'
    assert ls.result is not None and ls.result.text == "stdout:\na.txt\nb.txt\nexit_code: 0"
    assert ls.duration_ms == 250 and not ls.error and ls.internal
    assert clock.error and clock.duration_ms == 500
    assert answer.text == "Two files: **a.txt** and b.txt."
    assert entries[3].parts[0].text == "new question"
    assert [p.kind for p in entries[4].parts] == ["reasoning", "text"]


def test_superseded_only_when_asked() -> None:
    assert view.superseded_count(MESSAGES) == 2
    shown = view.conversation(MESSAGES, superseded=True)
    gone = [e for e in shown if e.superseded]
    assert [e.text for e in gone] == ["old question", "old answer"]


def test_a_call_without_its_result() -> None:
    pending = {"role": "assistant", "tool_calls": [call("x", "sleep", "{}")], "timestamp": 1}
    entries = view.conversation([pending])
    tool = entries[0].parts[0].tool
    assert tool is not None and tool.result is None and tool.duration_ms is None


def test_long_output_has_a_preview() -> None:
    text = "".join(f"line {i}\n" for i in range(500))
    out = view.Output.of(text)
    assert out.long and out.text == text and out.preview.count("\n") == view.PREVIEW_LINES - 1
    short = view.Output.of("just this")
    assert not short.long and short.preview == "just this"
    wide = view.Output.of("x" * 10_000)
    assert wide.long and len(wide.preview) == view.PREVIEW_CHARS


def test_readable_results() -> None:
    assert view.readable("plain text") == "plain text"
    assert view.readable("[1, 2]") == "[1, 2]"
    assert view.readable('{"a": 1, "b": "short"}') == "a: 1\nb: short"
    assert view.readable("{not json") == "{not json"


def test_markdown_export() -> None:
    session = {"id": "s1", "title": "Files", "model": "gpt-4o", "created_at": 1, "updated_at": 8,
               "messages": MESSAGES}  # fmt: skip
    text = view.markdown_export(session)
    assert text.startswith("# Files\n")
    assert "- Model: gpt-4o" in text and "## User (" in text and "## Assistant (" in text
    assert "**Tool `run_command`** (0.2 s)" in text and "a.txt\nb.txt" in text
    assert "old answer" not in text  # superseded messages stay out
    fenced = view.markdown_export({"id": "s2", "messages": [
        {"role": "assistant", "tool_calls": [call("c", "t", "{}")], "timestamp": 1},
        {"role": "tool", "tool_call_id": "c", "content": "```\nnested\n```", "timestamp": 2},
    ]})  # fmt: skip
    assert "````\n```\nnested\n```\n````" in fenced  # a longer fence around backticks
