"""Reading an Anthropic Messages stream in tests, and checking it the way the SDKs do (CLIENTS.md)."""

from __future__ import annotations

from typing import Any

import orjson


def named_events(body: str | bytes) -> list[tuple[str, Any]]:
    """``(event name, data JSON)`` per frame; a frame without an ``event:`` line fails the test, as it
    fails anthropic-python."""
    text = body.decode() if isinstance(body, bytes) else body
    out = []
    for frame in text.split("\n\n"):
        if not frame.strip():
            continue
        lines = frame.split("\n")
        assert lines[0].startswith("event: ") and lines[1].startswith("data: "), frame
        name, data = lines[0][7:], orjson.loads(lines[1][6:])
        assert data["type"] == name, frame
        out.append((name, data))
    return out


def assert_valid_stream(events: list[tuple[str, Any]], *, failed: bool = False) -> None:
    """``message_start`` first; blocks started at indices 0, 1, 2…, each delta and stop on the open
    block; ``message_delta`` with usage; ``message_stop`` last (or an ``error`` event last)."""
    names = [n for n, _ in events]
    assert names[0] == "message_start", names
    usage = events[0][1]["message"]["usage"]
    assert {"input_tokens", "output_tokens"} <= set(usage)
    expected, open_index = 0, None
    for name, data in events[1:]:
        if name == "content_block_start":
            assert open_index is None and data["index"] == expected, names
            open_index, expected = data["index"], expected + 1
        elif name == "content_block_delta":
            assert data["index"] == open_index, names
        elif name == "content_block_stop":
            assert data["index"] == open_index, names
            open_index = None
    if failed:
        assert names[-1] == "error" and "message_stop" not in names, names
        return
    assert open_index is None, names
    assert names[-2:] == ["message_delta", "message_stop"], names
    delta = events[-2][1]
    assert delta["delta"]["stop_reason"] in ("end_turn", "tool_use", "max_tokens", "stop_sequence", "refusal")
    assert isinstance(delta["usage"]["output_tokens"], int) and isinstance(
        delta["usage"]["input_tokens"], int
    )


def blocks(events: list[tuple[str, Any]]) -> list[dict[str, Any]]:
    """The content blocks a stream built, as an SDK's accumulator would."""
    out: list[dict[str, Any]] = []
    partial: dict[int, str] = {}
    for name, data in events:
        if name == "content_block_start":
            out.append(dict(data["content_block"]))
        elif name == "content_block_delta":
            block, delta = out[data["index"]], data["delta"]
            if delta["type"] == "text_delta":
                block["text"] += delta["text"]
            elif delta["type"] == "thinking_delta":
                block["thinking"] += delta["thinking"]
            elif delta["type"] == "input_json_delta":
                partial[data["index"]] = partial.get(data["index"], "") + delta["partial_json"]
                block["input"] = orjson.loads(partial[data["index"]])
    return out
