"""wire: what both sides share."""

from __future__ import annotations

import orjson

from sorat_daemon import wire


def test_usage_and_json_helpers() -> None:
    a = {
        "prompt_tokens": 1,
        "completion_tokens": 2,
        "total_tokens": 3,
        "completion_tokens_details": {"reasoning_tokens": 1},
    }
    assert wire.add_usage(a, a) == {
        "prompt_tokens": 2,
        "completion_tokens": 4,
        "total_tokens": 6,
        "completion_tokens_details": {"reasoning_tokens": 2},
    }
    assert wire.add_usage(None, a) == a and wire.add_usage(a, None) is not a
    assert orjson.loads(wire.dumps({"a": [1]})) == wire.loads(b'{"a": [1]}')


def test_text_of_and_ids() -> None:
    assert wire.text_of("hi") == "hi"
    assert wire.text_of([{"type": "text", "text": "a"}, {"type": "image_url"}, "x", {"text": "b"}]) == "ab"
    assert wire.text_of(None) == "" and wire.text_of(3) == ""
    assert wire.random_id("resp_").startswith("resp_") and len(wire.random_id("resp_")) == 5 + 24
    assert wire.random_id("x") != wire.random_id("x")
    call = wire.new_call_id()
    assert call.startswith("call_") and len(call) == 5 + 24 and call != wire.new_call_id()
