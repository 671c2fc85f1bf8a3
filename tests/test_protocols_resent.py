"""protocols/resent.py: a body that resends an earlier one is parsed from where it is new, and is then
exactly what a whole parse gives, whatever the bytes hold (brackets and key names inside strings,
duplicate keys, other spacing, edits); anything else is parsed whole."""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sorat_daemon.errors import RequestError
from sorat_daemon.protocols.chat import parse_chat_request
from sorat_daemon.protocols.resent import MIN_BODY, Resent

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(alphabet=st.sampled_from('ab]}[{,":\\ \n\u00e9\U0001f600'), max_size=12)
)
values = st.recursive(
    scalars, lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=6), c, max_size=4)
)
keys = st.sampled_from(["model", "tools", "x", "stream", "messages ", "]", '],"tools"'])


def dumps(obj: Any, style: int) -> bytes:
    if style == 0:
        return orjson.dumps(obj)
    if style == 1:
        return json.dumps(obj).encode()  # ", " and ": ", ASCII escapes
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()


def body_of(before: dict[str, Any], items: list[Any], after: dict[str, Any], style: int) -> bytes:
    return dumps({**before, "messages": items, **after}, style)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(
    before=st.dictionaries(keys, values, max_size=3),
    after=st.dictionaries(keys, values, max_size=3),
    first=st.lists(values, min_size=1, max_size=5),
    more=st.lists(st.lists(values, min_size=1, max_size=3), min_size=1, max_size=4),
    style=st.integers(0, 2),
)
def test_a_resent_body_parses_as_a_whole_parse_would(
    before: dict[str, Any], after: dict[str, Any], first: list[Any], more: list[list[Any]], style: int
) -> None:
    before.pop("messages", None)
    after = {k: v for k, v in after.items() if k not in before and k != "messages"}
    resent = Resent("messages", min_body=0)
    items = list(first)
    parsed = resent.loads(body_of(before, items, after, style))
    assert parsed.data == orjson.loads(body_of(before, items, after, style)) and parsed.reused == 0
    parsed.keep("state")
    for new in more:
        count = len(items)
        items = items + new
        body = body_of(before, items, after, style)
        parsed = resent.loads(body)
        assert parsed.data == orjson.loads(body)
        assert parsed.reused == count and parsed.prior == "state"  # it did go on from the last body
        parsed.keep("state")


@settings(max_examples=200)
@given(first=st.lists(values, min_size=1, max_size=4), edit=values, new=values, style=st.integers(0, 2))
def test_an_edited_body_reuses_only_what_precedes_the_edit(
    first: list[Any], edit: Any, new: Any, style: int
) -> None:
    resent = Resent("messages", min_body=0)
    resent.loads(body_of({"model": "m"}, first, {"tools": []}, style)).keep("state")
    changed = [*first[:-1], edit, new]
    body = body_of({"model": "m"}, changed, {"tools": []}, style)
    parsed = resent.loads(body)
    assert parsed.data == orjson.loads(body)
    if edit != first[-1]:
        assert parsed.reused < len(first)
    if parsed.reused:
        assert parsed.prior == "state"


def test_brackets_and_key_names_inside_strings_do_not_fool_it() -> None:
    resent = Resent("messages", min_body=0)
    tricky = {"role": "user", "content": ']],"tools":[]}'}
    first = b'{"model":"m","messages":[' + orjson.dumps(tricky) + b'],"tools":[{"x":"],\\"tools\\""}]}'
    resent.loads(first).keep("s")
    second = first.replace(b'}],"tools":[{', b'},{"role":"user","content":"]"}],"tools":[{', 1)
    parsed = resent.loads(second)
    assert parsed.data == orjson.loads(second) and parsed.reused == 1


def test_a_duplicate_key_is_parsed_whole() -> None:
    resent = Resent("messages", min_body=0)
    body = b'{"messages":[1],"model":"a","messages":[2],"tools":[]}'
    parsed = resent.loads(body)
    assert parsed.data == {"messages": [2], "model": "a", "tools": []}
    resent.loads(body).keep("s")
    longer = b'{"messages":[1],"model":"a","messages":[2,3],"tools":[]}'
    assert resent.loads(longer).data == orjson.loads(longer)


def test_what_the_caller_does_with_its_parse_does_not_reach_the_next() -> None:
    resent = Resent("messages", min_body=0)
    parsed = resent.loads(b'{"messages":[{"role":"user","content":"a"}]}')
    parsed.data["messages"].append({"role": "assistant", "content": "the agent's round"})
    parsed.data["model"] = "changed"
    body = b'{"messages":[{"role":"user","content":"a"},{"role":"user","content":"b"}]}'
    again = resent.loads(body)
    assert again.reused == 1 and again.data == orjson.loads(body)


def test_bad_json_after_a_kept_body_is_the_error_a_whole_parse_gives() -> None:
    resent = Resent("messages", min_body=0)
    resent.loads(b'{"messages":[1,2],"x":1}')
    with pytest.raises(orjson.JSONDecodeError):
        resent.loads(b'{"messages":[1,2,{],"x":1}')
    with pytest.raises(RequestError, match="not valid JSON"):
        resent.object(b'{"messages":[1,2,"],"x":1}')
    with pytest.raises(RequestError, match="must be a JSON object"):
        resent.object(b"[1, 2]")


def test_small_bodies_are_not_kept_and_few_are() -> None:
    resent = Resent("messages", size=2)
    small = b'{"messages":[1]}'
    resent.loads(small)
    assert resent.loads(b'{"messages":[1,2]}').reused == 0  # under MIN_BODY: parsed whole, not kept
    pad = "p" * MIN_BODY
    bodies = [orjson.dumps({"messages": [f"{n}{pad}"]}) for n in range(3)]
    for b in bodies:
        resent.loads(b)
    first_continued = orjson.dumps({"messages": [f"0{pad}", 1]})
    assert resent.loads(first_continued).reused == 0  # the oldest of three went: two are kept
    last_continued = orjson.dumps({"messages": [f"2{pad}", 1]})
    assert resent.loads(last_continued).reused == 1


def test_a_chat_body_whose_messages_failed_its_checks_is_checked_again() -> None:
    resent = Resent("messages", min_body=0)
    bad = [{"role": "user", "content": "hi"}, {"role": "tool", "content": "no tool_call_id"}]
    with pytest.raises(RequestError, match=r"messages\[1\]\.tool_call_id"):
        parse_chat_request(orjson.dumps({"messages": bad}), resent)
    longer = orjson.dumps({"messages": [*bad, {"role": "user", "content": "again"}]})
    with pytest.raises(RequestError, match=r"messages\[1\]\.tool_call_id"):
        parse_chat_request(longer, resent)
    good = [{"role": "user", "content": "hi"}]
    assert parse_chat_request(orjson.dumps({"messages": good}), resent).messages == good
    more = [*good, {"role": "assistant", "content": "yes"}, {"role": "user", "content": 5}]
    with pytest.raises(RequestError, match=r"messages\[2\]\.content"):  # the new one is checked
        parse_chat_request(orjson.dumps({"messages": more}), resent)


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(
    first=st.lists(values, min_size=1, max_size=4),
    turns=st.lists(st.tuples(st.lists(values, min_size=1, max_size=3), values), min_size=1, max_size=5),
    style=st.integers(0, 2),
)
def test_a_body_that_changes_its_last_turn_goes_on_from_the_turn_before(
    first: list[Any], turns: list[tuple[list[Any], Any]], style: int
) -> None:
    """Claude Code's shape: each turn adds elements and changes the last one it sent before (moving
    ``cache_control``): what precedes that turn is reused, with the state kept for it."""
    resent = Resent("messages", min_body=0)
    items = list(first)
    parsed = resent.loads(body_of({"model": "m"}, items, {"tools": [1]}, style))
    parsed.keep(len(items))
    marked: int | None = None  # where the body before went on from the one before it, if it did
    for new, changed in turns:
        start = len(items) - 1  # the changed element's place
        items = [*items[:-1], changed, *new]  # the last element of the body before, changed
        body = body_of({"model": "m"}, items, {"tools": [1]}, style)
        parsed = resent.loads(body)
        assert parsed.data == orjson.loads(body)
        if parsed.reused:
            assert parsed.prior >= parsed.reused  # the state kept with the body it went on from
        if marked is not None:
            assert parsed.reused >= marked  # at worst, what the body before added is read again
        marked = parsed.reused if parsed.reused and parsed.reused <= start else None
        parsed.keep(len(items))
