"""Sessions end to end: the real daemon in a subprocess, a scripted upstream on loopback, and the files the
store leaves in ``$SORAT_HOME/sessions/`` (killed, restarted, torn, raced, attacked through ids)."""

from __future__ import annotations

import asyncio
import http.client
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import httpx
import pytest

from tests.conftest import DaemonProc, eventually, write_config
from tests.upstream import Upstream, text, tool_calls

Messages = list[dict[str, Any]]


def user(content: str) -> dict[str, Any]:
    return {"role": "user", "content": content}


def assistant(content: str) -> dict[str, Any]:
    return {"role": "assistant", "content": content}


def chat(
    d: DaemonProc, messages: Messages, sid: str | None = None, **body: Any
) -> tuple[httpx.Response, str]:
    headers = {"X-Session-ID": sid} if sid is not None else {}
    with d.client() as c:
        r = c.post("/v1/chat/completions", json={"messages": messages, **body}, headers=headers)
    assert r.status_code == 200, r.text
    return r, r.headers["x-session-id"]


def answer_of(r: httpx.Response) -> str:
    return str(r.json()["choices"][0]["message"]["content"])


def get(d: DaemonProc, sid: str) -> dict[str, Any]:
    with d.client() as c:
        r = c.get(f"/v1/sessions/{sid}")
    assert r.status_code == 200, r.text
    session: dict[str, Any] = r.json()
    return session


def listing(d: DaemonProc, limit: int = 1000) -> list[dict[str, Any]]:
    """Every row, paging with ``after``; checks ``has_more``, ``first_id`` and ``last_id`` on the way."""
    rows: list[dict[str, Any]] = []
    after: str | None = None
    with d.client() as c:
        while True:
            params: dict[str, Any] = {"limit": limit} | ({"after": after} if after else {})
            page = c.get("/v1/sessions", params=params).json()
            assert page["object"] == "list" and len(page["data"]) <= limit
            if page["data"]:
                assert page["first_id"] == page["data"][0]["id"] and page["last_id"] == page["data"][-1]["id"]
            rows += page["data"]
            if not page["has_more"]:
                return rows
            assert len(page["data"]) == limit
            after = page["last_id"]


def roles_and_contents(messages: Messages) -> list[tuple[str, Any]]:
    """What the model was sent, without a system prompt sorat may add."""
    return [(m["role"], m.get("content")) for m in messages if m["role"] != "system"]


def jsonl(d: DaemonProc, sid: str) -> Path:
    return d.home / "sessions" / f"{sid.lower()}.jsonl"


def records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_bytes().splitlines()]


@pytest.fixture
def fresh(home: Path, upstream: Upstream) -> Iterator[Callable[[], DaemonProc]]:
    """Daemons of their own on ``home`` (one at a time), for restarts and kills; all stopped at the end."""
    write_config(home, upstream.base_url)
    started: list[DaemonProc] = []

    def start() -> DaemonProc:
        # A killed daemon's "pid N, http://…" stays in sorat.lock until the next one describes itself,
        # and DaemonProc.start would take that dead address for the new daemon's.
        (home / "sorat.lock").unlink(missing_ok=True)
        started.append(DaemonProc(home).start())
        return started[-1]

    yield start
    for d in started:
        assert d.proc is not None
        if d.proc.poll() is None:
            d.stop()


# -- crashes and restarts -------------------------------------------------------------------------------


def test_kill_9_mid_stream_keeps_earlier_turns_and_continues(
    fresh: Callable[[], DaemonProc], upstream: Upstream
) -> None:
    d = fresh()
    r, sid = chat(d, [user("first question")])
    assert answer_of(r) == "ok"
    chat(d, [user("second question")], sid)
    upstream.script(text("a b c d e f g h i j", chunks=10, chunk_delay=0.3))
    with (
        httpx.Client(timeout=30) as c,
        c.stream(
            "POST",
            d.url + "/v1/chat/completions",
            json={"messages": [user("third, killed mid-answer")], "stream": True},
            headers=d.headers(**{"X-Session-ID": sid}),
        ) as stream,
    ):
        for line in stream.iter_lines():
            if '"content":"a' in line.replace(" ", ""):
                break
        d.kill()

    d = fresh()
    session = get(d, sid)
    said = roles_and_contents(session["messages"])
    assert said[:4] == [
        ("user", "first question"),
        ("assistant", "ok"),
        ("user", "second question"),
        ("assistant", "ok"),
    ]
    assert said[4] == ("user", "third, killed mid-answer")
    assert len(said) in (5, 6)  # the answer being written when killed may be lost, nothing else
    assert [row["id"] for row in listing(d) if row["id"] == sid] == [sid]

    upstream.reset()
    r, again = chat(d, [user("after the crash")], sid)
    assert again == sid and answer_of(r) == "ok"
    sent = roles_and_contents(upstream.requests[-1]["messages"])
    assert sent[:5] == said[:5] and sent[-1] == ("user", "after the crash")
    assert get(d, sid)["message_count"] == len(said) + 2


def test_restart_keeps_list_and_sessions(fresh: Callable[[], DaemonProc], upstream: Upstream) -> None:
    d = fresh()
    r, sid = chat(d, [user("remember me")])
    chat(d, [user("remember me"), assistant(answer_of(r)), user("and this")])
    assert eventually(lambda: get(d, sid)["title"] == "A Scripted Title")
    before_list, before = listing(d), get(d, sid)
    d.stop()
    d = fresh()
    assert listing(d) == before_list
    assert get(d, sid) == before
    assert before["message_count"] == 4 and before["model"] == "gpt-4o"


def test_torn_last_line_is_skipped_then_repaired(fresh: Callable[[], DaemonProc], upstream: Upstream) -> None:
    d = fresh()
    _, sid = chat(d, [user("before the tear")])
    d.stop()
    path = jsonl(d, sid)
    whole = path.read_bytes()
    path.write_bytes(whole + b'{"seq": 2, "ts": 1712345679.0, "turn": 2, "by": "client", "message": {"ro')

    d = fresh()
    session = get(d, sid)
    assert roles_and_contents(session["messages"]) == [("user", "before the tear"), ("assistant", "ok")]
    assert "dropping a torn last line" in (d.home / "logs" / "sorat.log").read_text()
    assert [row["message_count"] for row in listing(d) if row["id"] == sid] == [2]
    r, again = chat(d, [user("after the tear")], sid)
    assert again == sid
    assert roles_and_contents(upstream.requests[-1]["messages"]) == [
        ("user", "before the tear"),
        ("assistant", "ok"),
        ("user", "after the tear"),
    ]
    d.stop()
    data = path.read_bytes()
    assert data.startswith(whole) and data.endswith(b"\n")
    docs = records(path)  # every line parses: the torn one was cut before the append
    contents = [doc["message"]["content"] for doc in docs if "message" in doc]
    assert contents == ["before the tear", "ok", "after the tear", "ok"]


# -- many at once -------------------------------------------------------------------------------------


async def test_32_concurrent_requests_on_one_session_are_serialized(
    daemon: DaemonProc, upstream: Upstream
) -> None:
    sid = "race-" + str(time.monotonic_ns())
    n = 32
    async with httpx.AsyncClient(base_url=daemon.url, headers=daemon.headers(), timeout=30) as c:

        async def one(i: int) -> httpx.Response:
            body = {"messages": [user(f"message {i}")]}
            return await c.post("/v1/chat/completions", json=body, headers={"X-Session-ID": sid})

        responses = await asyncio.gather(*(one(i) for i in range(n)))
        assert [r.status_code for r in responses] == [200] * n
        assert {r.headers["x-session-id"] for r in responses} == {sid}
        session = (await c.get(f"/v1/sessions/{sid}")).json()

    assert session["message_count"] == 2 * n
    said = roles_and_contents(session["messages"])
    assert said[1::2] == [("assistant", "ok")] * n  # strictly alternating: no turn interleaved with another
    users = [content for role, content in said[0::2]]
    assert sorted(users) == sorted(f"message {i}" for i in range(n))  # each once
    # Each request saw every earlier turn whole: the model got 1, 3, 5, … 63 messages.
    sizes = sorted(len(roles_and_contents(req["messages"])) for req in upstream.requests)
    assert sizes == [2 * i + 1 for i in range(n)]
    longest = max(upstream.requests, key=lambda req: len(req["messages"]))
    assert roles_and_contents(longest["messages"]) == said[:-1]


async def test_128_parallel_new_sessions_are_all_listed(
    fresh: Callable[[], DaemonProc], upstream: Upstream
) -> None:
    d = await asyncio.to_thread(fresh)
    n = 128
    limits = httpx.Limits(max_connections=n)
    async with httpx.AsyncClient(base_url=d.url, headers=d.headers(), timeout=30, limits=limits) as c:

        async def one(i: int) -> str:
            r = await c.post("/v1/chat/completions", json={"messages": [user(f"new conversation {i}")]})
            assert r.status_code == 200, r.text
            return r.headers["x-session-id"]

        ids = await asyncio.gather(*(one(i) for i in range(n)))
    assert len(set(ids)) == n

    for limit in (50, 128, 1000):
        rows = await asyncio.to_thread(listing, d, limit)
        assert [row["id"] for row in rows] and {row["id"] for row in rows} == set(ids)
        assert len(rows) == n
        assert all(row["message_count"] == 2 for row in rows)
        stamps = [row["updated_at"] for row in rows]
        assert stamps == sorted(stamps, reverse=True)  # newest first
    with d.client() as sync:
        last = sync.get("/v1/sessions", params={"limit": 1, "after": rows[-2]["id"]}).json()
        assert [row["id"] for row in last["data"]] == [rows[-1]["id"]] and last["has_more"] is False
        edge = sync.get("/v1/sessions", params={"limit": n}).json()
        assert len(edge["data"]) == n and edge["has_more"] is False


# -- history: edits, regenerations, both client styles ----------------------------------------------------


def test_edit_and_regenerate_supersede_and_are_never_sent_again(
    daemon: DaemonProc, upstream: Upstream
) -> None:
    upstream.script(text("answer one"), text("answer two"))
    q1, a1, q2, a2 = user("q1"), assistant("answer one"), user("q2"), assistant("answer two")
    _, sid = chat(daemon, [q1])
    chat(daemon, [q1, a1, q2], sid)

    # An edit: the second question changed.
    upstream.script(text("answer to the edit"))
    q2e = user("q2, edited")
    chat(daemon, [q1, a1, q2e], sid)
    assert roles_and_contents(upstream.requests[-1]["messages"]) == roles_and_contents([q1, a1, q2e])

    # A regenerate: the last answer sent back again, the client's version differing from the stored one.
    upstream.script(text("answer three"))
    mine, q3 = assistant("the client's own answer"), user("q3")
    chat(daemon, [q1, a1, q2e, mine, q3], sid)
    assert roles_and_contents(upstream.requests[-1]["messages"]) == roles_and_contents(
        [q1, a1, q2e, mine, q3]
    )

    # A plain regenerate (the last answer dropped, the same question again).
    upstream.script(text("answer three, regenerated"))
    chat(daemon, [q1, a1, q2e, mine, q3], sid)
    regenerated = roles_and_contents(upstream.requests[-1]["messages"])
    assert regenerated == roles_and_contents([q1, a1, q2e, mine, q3])

    upstream.script(text("answer four"))
    chat(daemon, [user("q4")], sid)
    final = [q1, a1, q2e, mine, q3, assistant("answer three, regenerated"), user("q4")]
    assert roles_and_contents(upstream.requests[-1]["messages"]) == roles_and_contents(final)
    after_edit = [m for req in upstream.requests[2:] for m in req["messages"]]
    for gone in ("q2", "answer two", "answer to the edit", "answer three"):
        assert all(m.get("content") != gone for m in after_edit), gone

    session = get(daemon, sid)
    assert roles_and_contents(session["messages"]) == roles_and_contents([*final, assistant("answer four")])
    assert session["message_count"] == 8
    docs = records(jsonl(daemon, sid))
    kept = {doc["seq"]: doc["message"].get("content") for doc in docs if "message" in doc}
    marked = {seq for doc in docs for seq in doc.get("supersede", ())}
    assert {kept[s] for s in marked} == {"q2", "answer two", "answer to the edit", "answer three"}
    assert a2["content"] in kept.values()  # superseded messages stay in the file


def test_get_can_show_superseded_messages_marked(daemon: DaemonProc, upstream: Upstream) -> None:
    _, sid = chat(daemon, [user("original")])
    chat(daemon, [user("original"), assistant("ok"), user("next")], sid)
    chat(daemon, [user("original"), assistant("ok"), user("next, edited")], sid)
    with daemon.client() as c:
        session = c.get(f"/v1/sessions/{sid}", params={"include_superseded": "true"}).json()
    marked = [m["content"] for m in session["messages"] if m.get("superseded")]
    assert marked == ["next", "ok"]


def test_stateless_client_resending_everything_stays_in_one_session(
    daemon: DaemonProc, upstream: Upstream
) -> None:
    upstream.script(text("one"), text("two"), text("three"))
    history: Messages = [{"role": "system", "content": "Be brief."}]
    sids = set()
    for question in ("first turn", "second turn", "third turn"):
        history.append(user(question))
        r, sid = chat(daemon, history)
        sids.add(sid)
        assert roles_and_contents(upstream.requests[-1]["messages"]) == roles_and_contents(history)
        history.append(assistant(answer_of(r)))
    assert len(sids) == 1
    session = get(daemon, sids.pop())
    assert session["message_count"] == 7
    assert [(m["role"], m.get("content")) for m in session["messages"]] == [
        (m["role"], m["content"]) for m in history
    ]


def test_stateful_client_gets_the_stored_conversation_with_internal_tools(
    daemon: DaemonProc, upstream: Upstream
) -> None:
    upstream.script(tool_calls([("get_current_time", {"timezone": "UTC"})]), text("It is noon."))
    r, sid = chat(daemon, [user("what time is it?")])
    assert answer_of(r) == "It is noon."
    upstream.script(text("Tomorrow at noon it will be noon."))
    chat(daemon, [user("and tomorrow?")], sid)
    sent = [m for m in upstream.requests[-1]["messages"] if m["role"] != "system"]
    assert [m["role"] for m in sent] == ["user", "assistant", "tool", "assistant", "user"]
    call = sent[1]["tool_calls"][0]
    assert call["function"]["name"] == "get_current_time" and sent[2]["tool_call_id"] == call["id"]
    assert "UTC" in sent[2]["content"]
    assert (sent[3]["content"], sent[4]["content"]) == ("It is noon.", "and tomorrow?")
    session = get(daemon, sid)
    assert session["message_count"] == 4  # the internal round is not part of the visible conversation
    roles = [m["role"] for m in session["messages"]]
    assert roles == ["user", "assistant", "tool", "assistant", "user", "assistant"]
    internal = [m["role"] for m in session["messages"] if m.get("internal")]
    assert internal == ["assistant", "tool"]  # the tool-calls-only message and its result


# -- titles -------------------------------------------------------------------------------------------


LONG = "Please help me plan a three week trip through Japan, Korea and Taiwan in spring"


def test_title_fallback_while_answering_then_generated(daemon: DaemonProc, upstream: Upstream) -> None:
    upstream.script(text("Sure, here is a plan.", chunks=4, chunk_delay=0.2))
    with (
        daemon.client() as c,
        c.stream(
            "POST",
            "/v1/chat/completions",
            json={"messages": [user(LONG)], "stream": True, "stream_options": {"include_usage": True}},
        ) as r,
    ):
        sid = r.headers["x-session-id"]
        assert get(daemon, sid)["title"] == LONG[:60]
        rows = [row for row in listing(daemon) if row["id"] == sid]
        assert [row["title"] for row in rows] == [LONG[:60]]
        events = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: {")]
    assert events[-1]["usage"]["total_tokens"] == 15  # one model call; the title is not counted
    assert eventually(lambda: get(daemon, sid)["title"] == "A Scripted Title")
    assert [row["title"] for row in listing(daemon) if row["id"] == sid] == ["A Scripted Title"]
    # the title request of this session: another test's may still arrive after it
    (asked,) = [t for t in upstream.title_requests if LONG in json.dumps(t["messages"])]
    assert "tools" not in asked


def test_whole_answer_usage_leaves_the_title_out(daemon: DaemonProc, upstream: Upstream) -> None:
    r, sid = chat(daemon, [user("count my tokens")])
    assert r.json()["usage"]["total_tokens"] == 15
    assert eventually(lambda: get(daemon, sid)["title"] == "A Scripted Title")
    assert len(upstream.title_requests) == 1 and len(upstream.requests) == 1


def test_title_failure_keeps_the_fallback(daemon: DaemonProc, upstream: Upstream) -> None:
    upstream.title_reply = '""'  # nothing usable: quotes around nothing
    _, sid = chat(daemon, [user(LONG)])
    log = daemon.home / "logs" / "sorat.log"
    assert eventually(lambda: f"no usable title for session {sid}" in log.read_text(errors="replace"))
    assert get(daemon, sid)["title"] == LONG[:60]
    assert [row["title"] for row in listing(daemon) if row["id"] == sid] == [LONG[:60]]


def test_client_disconnecting_mid_stream_still_gets_a_title(daemon: DaemonProc, upstream: Upstream) -> None:
    upstream.script(text("a b c d e f g h i j", chunks=10, chunk_delay=0.3))
    with (
        daemon.client() as c,
        c.stream("POST", "/v1/chat/completions", json={"messages": [user(LONG)], "stream": True}) as r,
    ):
        sid = r.headers["x-session-id"]
        for line in r.iter_lines():
            if '"content":"a' in line.replace(" ", ""):
                break
    assert upstream.wait_for(lambda: upstream.disconnects >= 1)
    assert eventually(
        lambda: len(get(daemon, sid)["messages"]) == 2
    )  # the turn ends when the upstream call does
    said = get(daemon, sid)["messages"]
    assert (
        said[0]["content"] == LONG and said[1]["role"] == "assistant" and said[1]["content"].startswith("a")
    )
    assert eventually(lambda: get(daemon, sid)["title"] == "A Scripted Title", 3), get(daemon, sid)


# -- ids: case, delete, traversal ----------------------------------------------------------------------


def test_ids_differing_in_case_are_one_session(daemon: DaemonProc, upstream: Upstream) -> None:
    sid = "Case-Mixed." + str(time.monotonic_ns())
    chat(daemon, [user("upper")], sid)
    _, echoed = chat(daemon, [user("lower")], sid.lower())
    assert echoed.lower() == sid.lower()
    assert roles_and_contents(upstream.requests[-1]["messages"])[:2] == [
        ("user", "upper"),
        ("assistant", "ok"),
    ]
    for spelled in (sid, sid.lower(), sid.upper()):
        assert get(daemon, spelled)["message_count"] == 4
    assert len([row for row in listing(daemon) if row["id"].lower() == sid.lower()]) == 1
    assert len(list((daemon.home / "sessions").glob(f"{sid.lower()}.jsonl"))) == 1


def test_delete_then_get_and_delete_are_404(daemon: DaemonProc) -> None:
    _, sid = chat(daemon, [user("short-lived")])
    with daemon.client() as c:
        r = c.delete(f"/v1/sessions/{sid}")
        assert r.status_code == 204 and r.content == b""
        for r in (c.get(f"/v1/sessions/{sid}"), c.delete(f"/v1/sessions/{sid}")):
            assert r.status_code == 404 and r.json()["error"]["type"] == "not_found_error"
    assert sid not in {row["id"] for row in listing(daemon)}
    assert not list((daemon.home / "sessions").glob(f"{sid.lower()}.*"))


BAD_IDS = ["..", "../x", "%2e%2e%2f", "/etc/passwd", "a\\b", "x" * 300, "CON", "x.", "nul.txt", ".hidden"]


def tree(home: Path) -> set[str]:
    """Every path in and beside ``home``, but for the sessions' own directory and the daemon's logs."""
    inside = (home / "sessions", home / "logs")
    return {str(p) for p in home.parent.rglob("*") if not any(p == d or d in p.parents for d in inside)}


@pytest.fixture
def planted(daemon: DaemonProc) -> Iterator[dict[Path, bytes]]:
    """Files a traversal would reach: next to sessions/, and beside the home."""
    header = b'{"sorat_session": 1, "id": "x", "created_at": 1}\n'
    line = (
        b'{"seq": 0, "ts": 1, "turn": 1, "by": "client", "message": {"role": "user", "content": "secret"}}\n'
    )
    files = {
        daemon.home / "x.jsonl": header + line,
        daemon.home / "x.json": b"{}",
        daemon.home / "passwd.jsonl": header + line,
        daemon.home.parent / "x.jsonl": header + line,
    }
    for path, data in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    yield files
    for path in files:
        path.unlink(missing_ok=True)


@pytest.mark.parametrize("bad", BAD_IDS)
def test_bad_session_id_header_is_400(
    daemon: DaemonProc, upstream: Upstream, planted: dict[Path, bytes], bad: str
) -> None:
    before, sessions = tree(daemon.home), listing(daemon)
    with daemon.client() as c:
        r = c.post("/v1/chat/completions", json={"messages": [user("hi")]}, headers={"X-Session-ID": bad})
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["type"] == "invalid_request_error"
    assert "x-session-id" not in r.headers and upstream.requests == []
    assert tree(daemon.home) == before and listing(daemon) == sessions
    assert all(path.read_bytes() == data for path, data in planted.items())


def raw(d: DaemonProc, method: str, path: str) -> tuple[int, bytes]:
    """A request whose path goes out byte for byte (httpx would resolve ``..`` before sending)."""
    where = urlsplit(d.url)
    conn = http.client.HTTPConnection(where.hostname or "127.0.0.1", where.port, timeout=10)
    try:
        conn.request(method, path, headers=d.headers())
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


@pytest.mark.parametrize("method", ["GET", "DELETE"])
def test_traversal_through_the_url_reads_and_deletes_nothing(
    daemon: DaemonProc, planted: dict[Path, bytes], method: str
) -> None:
    before = tree(daemon.home)
    paths = ["..", "../x", "../../x", "%2e%2e%2fx", "..%2F..%2Fx", "..%5Cx", "a%5Cb", "x" * 300, "CON", "x."]
    paths += ["x", "../passwd", "..%2fpasswd", "%2e%2e", *(quote(bad, safe="") for bad in BAD_IDS), *SLASHED]
    for bad in paths:
        status, body = raw(daemon, method, "/v1/sessions/" + bad)
        assert status not in (200, 204) and b"secret" not in body, (bad, status, body)
        if bad not in SLASHED and quote(bad, safe="") not in SLASHED:
            assert status in (400, 404), (bad, status, body)
            assert json.loads(body)["error"]["type"] in ("invalid_request_error", "not_found_error")
    assert tree(daemon.home) == before
    assert all(path.read_bytes() == data for path, data in planted.items())


SLASHED = ["/etc/passwd", "%2Fetc%2Fpasswd", "%2F..%2Fx"]


def test_session_path_with_a_double_slash_is_an_openai_error(daemon: DaemonProc) -> None:
    """``/v1/sessions//etc/passwd`` gets werkzeug's HTML 308 to ``/v1/sessions/etc/passwd`` today (and
    ``/v1/sessions/%2F..%2Fx`` one to ``/v1/sessions/../x``): nothing is read or deleted, but an API that
    speaks OpenAI's JSON should answer 400/404 as for every other bad id."""
    answers = {
        (method, bad): raw(daemon, method, "/v1/sessions/" + bad)
        for method in ("GET", "DELETE")
        for bad in SLASHED
    }
    wrong = {key: status for key, (status, _) in answers.items() if status not in (400, 404)}
    assert wrong == {}
