"""Responses and sessions end to end: Codex-shaped resends that continue one session, previous_response_id
(also after a restart, and branching), stored responses and their input items, and /v1/conversations."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import DEFAULT_EXTRA, DaemonProc, write_config
from tests.test_protocols_responses_out import check_stream, frames
from tests.test_responses_e2e import WEATHER, sent_with
from tests.upstream import Upstream, text, tool_calls

# What Codex 0.171 sends (probed): two developer messages (~17 kB), an environment context as a user
# message, tools of every kind, store: false, the whole history every turn.
CODEX_PROMPT = [
    {"type": "message", "id": "msg_dev_1", "role": "developer",
     "content": [{"type": "input_text", "text": "You are a coding agent running in the Codex CLI. " * 300}]},
    {"type": "message", "id": "msg_dev_2", "role": "developer",
     "content": [{"type": "input_text", "text": "<skills_instructions>none</skills_instructions>"}]},
    {"type": "message", "id": "msg_env", "role": "user",
     "content": [{"type": "input_text", "text": "<environment_context><cwd>/w</cwd></environment_context>"}]},
]  # fmt: skip
CODEX_TOOLS = [
    {"type": "function", "name": "exec_command", "description": "Runs a command", "strict": False,
     "parameters": {"type": "object", "properties": {"cmd": {"type": "string"}}, "required": ["cmd"]}},
    {"type": "namespace", "name": "multi_agent_v1", "description": "Sub-agents",
     "tools": [{"type": "function", "name": "spawn_agent", "parameters": {"type": "object"}}]},
    {"type": "custom", "name": "apply_patch", "description": "Edit files",
     "format": {"type": "grammar", "syntax": "lark", "definition": "start: /.+/"}},
    {"type": "web_search", "external_web_access": False},
]  # fmt: skip


@pytest.fixture
def client(daemon: DaemonProc) -> Iterator[openai.OpenAI]:
    with daemon.openai() as c:
        yield c


def codex(daemon: DaemonProc, items: list[Any]) -> tuple[str, list[dict[str, Any]]]:
    """One Codex request: (the session it landed in, the output items Codex keeps from output_item.done)."""
    body = {
        "model": "sorat-agent", "stream": True, "store": False, "input": items, "tools": CODEX_TOOLS,
        "tool_choice": "auto", "parallel_tool_calls": True, "reasoning": {"summary": "auto"},
        "include": ["reasoning.encrypted_content"], "prompt_cache_key": "thread-1",
    }  # fmt: skip
    with daemon.client() as c:
        r = c.post("/v1/responses", json=body, headers={"session-id": "thread-1"})
    assert r.status_code == 200, r.text
    evs = frames(r.content)
    check_stream(evs)
    assert evs[-1]["type"] == "response.completed"
    return r.headers["x-session-id"], [e["item"] for e in evs if e["type"] == "response.output_item.done"]


def user(text: str) -> dict[str, Any]:
    return {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}


def test_a_codex_thread_is_one_session(daemon: DaemonProc, upstream: Upstream) -> None:
    upstream.script(tool_calls([("exec_command", {"cmd": "ls"})]))
    sid, out1 = codex(daemon, [*CODEX_PROMPT, user("codex-1 list the files")])
    (call,) = out1
    assert (
        call["type"] == "function_call" and call["name"] == "exec_command" and call["id"] != call["call_id"]
    )

    # Codex ran it; the model calls an internal tool, then answers (with reasoning)
    upstream.script(tool_calls([("get_current_time", {})]), text("Two files.", reasoning="Counting."))
    output = {"type": "function_call_output", "call_id": call["call_id"], "output": "a.py\nb.py\n"}
    history = [*CODEX_PROMPT, user("codex-1 list the files"), call, output]
    sid2, out2 = codex(daemon, history)
    assert sid2 == sid
    # with client tools, internal calls are reasoning lines (never calls the client would run)
    assert [i["type"] for i in out2] == ["reasoning", "message"]
    assert out2[0]["summary"][0]["text"].startswith("get_current_time {}\n")

    # the next prompt: everything echoed verbatim (and an mcp_call item of sorat's, as other modes give)
    upstream.script(text("You are welcome."))
    mcp = {"type": "mcp_call", "id": "mcp_1", "server_label": "sorat", "name": "get_current_time",
           "arguments": "{}", "output": "noon", "status": "completed"}  # fmt: skip
    sid3, out3 = codex(daemon, [*history, mcp, *out2, user("codex-2 thanks")])
    assert sid3 == sid and out3[-1]["content"][0]["text"] == "You are welcome."

    last = sent_with(upstream, "codex-2")
    assert len(last) == 1
    sent = last[0]["messages"]
    assert [m["role"] for m in sent] == [
        "system", "user", "user", "assistant", "tool", "assistant", "tool", "assistant", "user",
    ]  # fmt: skip
    assert (
        sent[0]["content"].startswith("You are a coding agent")
        and "<skills_instructions>" in sent[0]["content"]
    )
    assert sent[-2]["content"] == "Two files."
    names = [t["function"]["name"] for t in last[0]["tools"]]
    assert {"exec_command", "multi_agent_v1__spawn_agent", "apply_patch"} <= set(names)
    assert "web_search" in names  # sorat's own, not Codex's hosted one

    with daemon.client() as c:
        session = c.get(f"/v1/sessions/{sid}").json()
    visible = [m for m in session["messages"] if not m.get("internal")]
    assert [m["role"] for m in visible] == [
        "system", "user", "user", "assistant", "tool", "assistant", "user", "assistant",
    ]  # fmt: skip
    texts = [str(m.get("content")) for m in session["messages"]]
    assert sum("codex-1" in t for t in texts) == 1 and sum("codex-2" in t for t in texts) == 1  # stored once


def test_previous_response_id_continues_and_branches(
    daemon: DaemonProc, client: openai.OpenAI, upstream: Upstream
) -> None:
    upstream.script(text("Answer A."))
    a = client.responses.with_raw_response.create(model="x", input="prev-A hi")
    sid = a.headers["x-session-id"]
    upstream.script(text("Answer B."))
    b = client.responses.with_raw_response.create(
        model="x", input="prev-B more", previous_response_id=a.parse().id
    )
    assert b.headers["x-session-id"] == sid
    (sent,) = sent_with(upstream, "prev-B")
    assert [m["content"] for m in sent["messages"]] == ["prev-A hi", "Answer A.", "prev-B more"]

    # answering A again branches: B's turn is superseded, as an edit would
    upstream.script(text("Answer C."))
    c = client.responses.create(model="x", input="prev-C instead", previous_response_id=a.parse().id)
    (sent,) = sent_with(upstream, "prev-C")
    assert [m["content"] for m in sent["messages"]] == ["prev-A hi", "Answer A.", "prev-C instead"]
    upstream.script(text("Answer D."))
    client.responses.create(model="x", input="prev-D on", previous_response_id=c.id)
    (sent,) = sent_with(upstream, "prev-D")
    assert [m["content"] for m in sent["messages"]] == [
        "prev-A hi", "Answer A.", "prev-C instead", "Answer C.", "prev-D on",
    ]  # fmt: skip
    with daemon.client() as h:
        session = h.get(f"/v1/sessions/{sid}", params={"include_superseded": "true"}).json()
    superseded = [m["content"] for m in session["messages"] if m.get("superseded")]
    assert superseded == ["prev-B more", "Answer B."]


def test_previous_response_id_recalls_the_function_call(
    daemon: DaemonProc, client: openai.OpenAI, upstream: Upstream
) -> None:
    """The Agents SDK with auto_previous_response_id sends only the new output."""
    upstream.script(tool_calls([("get_weather", {"city": "Oslo"})]))
    first = client.responses.create(model="x", input="prevtool-1 weather?", tools=[WEATHER], store=False)
    (call,) = first.output
    upstream.script(text("Sunny."))
    out = {"type": "function_call_output", "call_id": call.call_id, "output": "sunny"}  # type: ignore[union-attr]
    second = client.responses.create(model="x", input=[out], previous_response_id=first.id, tools=[WEATHER])
    assert second.output_text == "Sunny."
    sent = sent_with(upstream, "prevtool-1")[-1]["messages"]
    assert [m["role"] for m in sent] == ["user", "assistant", "tool"]
    assert sent[1]["tool_calls"][0]["id"] == call.call_id  # type: ignore[union-attr]


def test_stored_responses_and_their_input_items(daemon: DaemonProc, upstream: Upstream) -> None:
    client = daemon.openai()
    items = [{"role": "user", "content": f"items-{i}"} for i in range(5)]
    upstream.script(text("Stored."))
    r = client.responses.create(model="x", input=items, metadata={"k": "v"})  # type: ignore[arg-type]
    got = client.responses.retrieve(r.id)
    assert got.id == r.id and got.output_text == "Stored." and got.metadata == {"k": "v"}
    page = client.responses.input_items.list(r.id, limit=2, order="asc")
    assert [i.content[0].text for i in page.data] == ["items-0", "items-1"] and page.has_more  # type: ignore[union-attr]
    rest = client.responses.input_items.list(r.id, order="asc", after=page.data[-1].id)
    assert [i.content[0].text for i in rest.data] == ["items-2", "items-3", "items-4"]  # type: ignore[union-attr]
    assert [i.id for i in client.responses.input_items.list(r.id, order="asc").data] == [
        *(i.id for i in page.data),
        *(i.id for i in rest.data),
    ]  # the same ids on every listing
    newest = client.responses.input_items.list(r.id, limit=1)
    assert newest.data[0].content[0].text == "items-4"  # type: ignore[union-attr]

    with daemon.client() as h:
        deleted = h.delete(f"/v1/responses/{r.id}")
    assert deleted.json() == {"id": r.id, "object": "response", "deleted": True}
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(r.id)
    with pytest.raises(openai.BadRequestError):
        client.responses.create(model="x", input="x", previous_response_id=r.id)

    upstream.script(text("Not stored."))
    hidden = client.responses.create(model="x", input="items-hidden", store=False)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(hidden.id)
    with daemon.client() as h:
        assert h.get(f"/v1/responses/{hidden.id}/input_items").status_code == 404
        assert h.get("/v1/responses/resp_nope").status_code == 404
        assert h.get(f"/v1/responses/{got.id}/input_items").status_code == 404  # deleted


@pytest.fixture
def own_daemon(upstream: Upstream, tmp_path: Path) -> Iterator[DaemonProc]:
    home = tmp_path / "home"
    write_config(home, upstream.base_url, DEFAULT_EXTRA)
    d = DaemonProc(home).start()
    yield d
    if d.proc is not None and d.proc.poll() is None:
        d.stop()


def test_response_ids_resolve_after_a_restart(own_daemon: DaemonProc, upstream: Upstream) -> None:
    upstream.script(text("Before the restart."), text("Kept too."))
    with own_daemon.openai() as client:
        stored = client.responses.create(model="x", input="restart-1 hello")
        unstored = client.responses.create(model="x", input="restart-2 hello", store=False)
    assert own_daemon.stop() == 0
    own_daemon.start()
    upstream.script(text("After."))
    with own_daemon.openai() as client:
        assert client.responses.retrieve(stored.id).output_text == "Before the restart."
        client.responses.create(model="x", input="restart-3 again", previous_response_id=unstored.id)
    (sent,) = sent_with(upstream, "restart-3")
    assert [m["content"] for m in sent["messages"]] == ["restart-2 hello", "Kept too.", "restart-3 again"]


# --- /v1/conversations ---------------------------------------------------------------------------------


def test_a_conversation_is_a_session(daemon: DaemonProc, client: openai.OpenAI, upstream: Upstream) -> None:
    conv = client.conversations.create(
        items=[{"type": "message", "role": "user", "content": "conv-1 remember 42"}],
        metadata={"topic": "numbers"},
    )
    assert conv.id.startswith("conv_") and conv.metadata == {"topic": "numbers"}
    assert client.conversations.retrieve(conv.id).metadata == {"topic": "numbers"}
    assert client.conversations.update(conv.id, metadata={"topic": "42"}).metadata == {"topic": "42"}

    upstream.script(text("It was 42."))
    raw = client.responses.with_raw_response.create(
        model="x", input="conv-1 which number?", conversation=conv.id
    )
    assert raw.headers["x-session-id"] == conv.id and raw.parse().output_text == "It was 42."
    (sent,) = sent_with(upstream, "which number")
    assert [m["content"] for m in sent["messages"]] == ["conv-1 remember 42", "conv-1 which number?"]

    added = client.conversations.items.create(
        conv.id, items=[{"type": "message", "role": "user", "content": "conv-1 p.s."}]
    )
    assert [i.type for i in added.data] == ["message"]
    listed = client.conversations.items.list(conv.id, order="asc")
    texts = [i.content[0].text for i in listed.data]  # type: ignore[union-attr]
    assert texts == ["conv-1 remember 42", "conv-1 which number?", "It was 42.", "conv-1 p.s."]
    assert [i.id for i in client.conversations.items.list(conv.id).data][0] == listed.data[-1].id  # desc
    one = client.conversations.items.retrieve(listed.data[2].id, conversation_id=conv.id)
    assert one.content[0].text == "It was 42."  # type: ignore[union-attr]

    with daemon.client() as h:
        assert conv.id in [s["id"] for s in h.get("/v1/sessions").json()["data"]]
        assert h.get(f"/v1/sessions/{conv.id}").json()["message_count"] == 4
    assert client.conversations.delete(conv.id).deleted is True
    with daemon.client() as h:
        assert h.get(f"/v1/sessions/{conv.id}").status_code == 404
    with pytest.raises(openai.NotFoundError):
        client.conversations.retrieve(conv.id)
    with pytest.raises(openai.BadRequestError):
        client.responses.create(model="x", input="x", conversation=conv.id)


def test_conversation_errors(daemon: DaemonProc) -> None:
    with daemon.client() as c:
        for path in ("/v1/conversations/conv_nope", "/v1/conversations/conv_nope/items"):
            assert c.get(path).status_code == 404
        assert c.delete("/v1/conversations/conv_nope").status_code == 404
        assert c.post("/v1/conversations/conv_nope/items", json={"items": []}).status_code == 404
        bad = c.post("/v1/conversations", json={"metadata": {"k": 1}})
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "metadata"
        bad = c.post("/v1/conversations", json={"items": [{"role": "wizard", "content": "x"}]})
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "items[0].role"
        assert c.post("/v1/conversations", content=b"{nope").status_code == 400
        empty = c.post("/v1/conversations", content=b"")
        assert empty.status_code == 200 and empty.json()["metadata"] == {}
        items = c.get(f"/v1/conversations/{empty.json()['id']}/items").json()
        assert items == {"object": "list", "data": [], "first_id": None, "last_id": None, "has_more": False}
        assert (
            c.get(f"/v1/conversations/{empty.json()['id']}/items", params={"order": "up"}).status_code == 400
        )


def test_openai_errors_shape_on_the_new_routes(daemon: DaemonProc) -> None:
    with daemon.client() as h:
        responses = [
            httpx.get(daemon.url + "/v1/responses/resp_x"),
            h.get("/v1/responses/resp_x"),
            h.get("/v1/conversations/conv_x/items", params={"limit": "many"}),
        ]
    assert [r.status_code for r in responses] == [401, 404, 404]
    for r in responses:
        assert set(r.json()["error"]) == {"message", "type", "param", "code"}
