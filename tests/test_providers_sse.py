"""providers.sse: any framing, any split of the bytes, the same events."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sorat_daemon.providers.sse import Event, SSEDecoder
from tests.upstream import Reply, render, stream_error, text, tool_calls


def decode(*reads: bytes) -> list[Event]:
    d = SSEDecoder()
    out = [ev for r in reads for ev in d.feed(r)]
    return out + d.close()


def test_sse_framings() -> None:
    E = Event
    assert decode(b'data: {"a":1}\n\ndata: [DONE]\n\n') == [E(b'{"a":1}'), E(b"[DONE]")]
    assert decode(b"data:x\r\n\r\ndata:  y\r\r") == [E(b"x"), E(b" y")]
    assert decode(b"data: a\rdata: b\r\r") == [E(b"a\nb")]
    assert decode(b": OPENROUTER PROCESSING\n\n: keep-alive\n\ndata: x\n\n") == [
        E(comment=True),
        E(comment=True),
        E(b"x"),
    ]
    assert decode(b"event: error\ndata: {}\n\n") == [E(b"{}", "error")]
    assert decode(b'error: {"message":"m"}\n\n') == [E(b'{"message":"m"}', "error")]
    assert decode(b"id: 3\nretry: 10\ndata: x\n\n\n\n") == [E(b"x")]
    assert decode(b"data:\n\nevent: ping\n\n") == []  # empty data and no data dispatch nothing
    assert decode(b"data: last") == [E(b"last")]  # no blank line: flushed on close
    assert decode(b"data: last\n") == [E(b"last")]


def test_sse_crlf_split_across_reads() -> None:
    E = Event
    assert decode(b"data: a\r", b"\n\r", b"\ndata: b\r\n\r\n") == [E(b"a"), E(b"b")]
    assert decode(b"data: a\r", b"\r") == [E(b"a")]
    assert decode(b"data: a\n", b"\n") == [E(b"a")]


CORPUS: list[Reply] = [
    text("Hello world", chunks=5, reasoning="hmm", quirks=q)
    for q in (
        set(),
        {"crlf"},
        {"cr"},
        {"nospace", "comments"},
        {"multiline", "crlf"},
        {"azure", "extras", "cr", "multiline"},
        {"no_done", "no_finish"},
    )
] + [
    tool_calls([("a", {"x": "é\r\n"}), ("b", {})], quirks={"crlf", "comments"}),
    stream_error("boom", style="event", quirks={"crlf"}),
    stream_error("boom", style="field", quirks={"cr"}),
]


@pytest.mark.parametrize("reply", CORPUS, ids=lambda r: "-".join(sorted(r.quirks)) or r.kind)
def test_sse_every_byte_boundary(reply: Reply) -> None:
    data = b"".join(render(reply, True, True, "m"))
    whole = decode(data)
    assert whole and all(ev.comment or ev.data for ev in whole)
    for cut in range(1, len(data)):
        assert decode(data[:cut], data[cut:]) == whole, cut
    assert decode(*[data[i : i + 1] for i in range(len(data))]) == whole


_line = st.text(st.characters(blacklist_characters="\r\n", blacklist_categories=("Cs",)), max_size=12)


@settings(max_examples=150, deadline=None)
@given(
    events=st.lists(
        st.tuples(st.sampled_from(["data", "comment", "event"]), st.lists(_line, min_size=1, max_size=3))
    ),
    eol=st.sampled_from(["\n", "\r", "\r\n"]),
    cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=8),
)
def test_sse_random_streams_and_splits(
    events: list[tuple[str, list[str]]], eol: str, cuts: list[int]
) -> None:
    raw = ""
    for kind, lines in events:
        if kind == "comment":
            raw += "".join(f":{line}{eol}" for line in lines)
        elif kind == "event":
            raw += f"event: e{eol}" + "".join(f"data: {line}{eol}" for line in lines)
        else:
            raw += "".join(f"data:{line}{eol}" for line in lines)
        raw += eol
    data = raw.encode()
    whole = decode(data)
    pieces, last = [], 0
    for c in sorted({min(c, len(data)) for c in cuts}):
        pieces.append(data[last:c])
        last = c
    pieces.append(data[last:])
    assert decode(*pieces) == whole
    assert len([e for e in whole if not e.comment]) <= len(events)
