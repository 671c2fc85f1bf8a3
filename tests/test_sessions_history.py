"""sessions/history.py: how a request's messages meet a session's history (SPEC, "History")."""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sorat_daemon.sessions import SessionStore, history
from sorat_daemon.types import Message
from tests.sessions_support import (
    SYSTEM,
    answer,
    assistant,
    call,
    lines,
    message_lines,
    result,
    user,
)


async def test_resend_everything_adds_only_the_new_tail(root: Path, store: SessionStore) -> None:
    history = [SYSTEM, user("q1")]
    await answer(store, "h", history, "a1")
    history += [assistant("a1"), user("q2")]
    async with store.turn("h", history, model="m") as turn:
        assert turn.messages == history
        await turn.add(assistant("a2"))
    contents = [d["message"]["content"] for d in message_lines(root / "h.jsonl")]
    assert contents == ["You are terse.", "q1", "a1", "q2", "a2"]


async def test_edit_supersedes_and_the_request_wins(root: Path, store: SessionStore) -> None:
    await answer(store, "e", [SYSTEM, user("q1")], "a1")
    await answer(store, "e", [SYSTEM, user("q1"), assistant("a1"), user("q2")], "a2")
    edited = [SYSTEM, user("q1"), assistant("a1"), user("q2 edited")]
    async with store.turn("e", edited, model="m") as turn:
        assert turn.messages == edited
        await turn.add(assistant("a2 new"))
    row = await store.get("e")
    assert row is not None
    assert [m["content"] for m in row["messages"]] == ["You are terse.", "q1", "a1", "q2 edited", "a2 new"]
    assert row["message_count"] == 5
    everything = await store.get("e", include_superseded=True)
    assert everything is not None
    superseded = [m["content"] for m in everything["messages"] if m.get("superseded")]
    assert superseded == ["q2", "a2"]
    docs = lines(root / "e.jsonl")
    marks = [d for d in docs if "supersede" in d]
    assert len(marks) == 1 and len(marks[0]["supersede"]) == 2
    # the superseded branch never reaches the model again
    async with store.turn("e", [user("q3")], model="m") as turn:
        assert [m["content"] for m in turn.messages] == [
            "You are terse.",
            "q1",
            "a1",
            "q2 edited",
            "a2 new",
            "q3",
        ]


async def test_regenerate_drops_the_old_answer_and_its_tool_traffic(root: Path, store: SessionStore) -> None:
    await answer(store, "r", [SYSTEM, user("q1")], "a1")
    async with store.turn("r", [SYSTEM, user("q1"), assistant("a1"), user("q2")], model="m") as turn:
        await turn.add(assistant(None, [call("int_1")]), visible=None)
        await turn.add(result("int_1", "files"), visible=None)
        await turn.add(assistant("a2"))
    before = len(message_lines(root / "r.jsonl"))
    regenerate = [SYSTEM, user("q1"), assistant("a1"), user("q2")]
    async with store.turn("r", regenerate, model="m") as turn:
        assert turn.messages == regenerate  # no old answer, no old tool calls
        await turn.add(assistant("a2 again"))
    assert len(message_lines(root / "r.jsonl")) == before + 1  # nothing re-stored
    row = await store.get("r", include_superseded=True)
    assert row is not None
    assert sum(1 for m in row["messages"] if m.get("superseded")) == 3


async def test_stateful_client_gets_the_stored_conversation_in_front(root: Path, store: SessionStore) -> None:
    async with store.turn("sf", [SYSTEM, user("list files")], model="m") as turn:
        await turn.add(assistant("Let me look. ", [call("call_int")]), visible=assistant("Let me look. "))
        await turn.add(result("call_int", "a.txt b.txt"), visible=None)
        await turn.add(assistant("There are two files."))
    async with store.turn("sf", [SYSTEM, user("and their sizes?")], model="m") as turn:
        assert turn.messages == [
            SYSTEM,
            user("list files"),
            assistant("Let me look. ", [call("call_int")]),
            result("call_int", "a.txt b.txt"),
            assistant("There are two files."),
            user("and their sizes?"),
        ]
        await turn.add(assistant("Small."))
    docs = message_lines(root / "sf.jsonl")
    assert [d["message"]["role"] for d in docs].count("tool") == 1  # stored once
    assert [d["message"] for d in docs].count(SYSTEM) == 1
    row = await store.get("sf")
    assert row is not None
    assert row["message_count"] == 5  # system, user, one streamed answer, user, answer
    assert [m.get("internal", False) for m in row["messages"]] == [
        False,
        False,
        False,
        True,
        False,
        False,
        False,
    ]
    # a client without a system prompt, sending only its message, gets the same
    async with store.turn("sf", [user("thanks")], model="m") as turn:
        assert turn.messages[0] == SYSTEM and turn.messages[3]["role"] == "tool"
        assert turn.messages[-1] == user("thanks")


async def test_stateful_client_with_another_system_prompt(store: SessionStore) -> None:
    await answer(store, "sp", [SYSTEM, user("q1")], "a1")
    other = {"role": "system", "content": "Be verbose."}
    async with store.turn("sp", [other, user("q2")], model="m") as turn:
        assert turn.messages == [other, user("q1"), assistant("a1"), user("q2")]


async def test_stateless_resend_continues_without_header(root: Path, store: SessionStore) -> None:
    history: list[Message] = [SYSTEM, user("q1")]
    async with store.turn(None, history, model="m") as turn:
        first = turn.id
        assert turn.created
        await turn.add(assistant("Checking. ", [call("call_int1")]), visible=assistant("Checking. "))
        await turn.add(result("call_int1", "ok"), visible=None)
        await turn.add(assistant("Done."))
    for n in range(2, 6):
        # what a client echoes: the streamed text as one message, internal tool_calls it accumulated,
        # content as text parts, other key order, null fields
        history += [
            {
                "tool_calls": [call("call_int1")] if n == 2 else None,
                "content": [{"type": "text", "text": "Checking. Done."}] if n == 2 else f"a{n - 1}",
                "role": "assistant",
                "refusal": None,
            },
            user(f"q{n}"),
        ]
        async with store.turn(None, history, model="m") as turn:
            assert turn.id == first and not turn.created
            assert turn.messages[3] == result("call_int1", "ok")  # internal traffic kept for the model
            assert turn.messages[-1] == user(f"q{n}")
            assert len(turn.messages) == 6 + 2 * (n - 2)
            await turn.add(assistant(f"a{n}"))
    rows, _ = await store.list()
    assert [r["id"] for r in rows] == [first]
    assert rows[0]["message_count"] == 3 + 2 * 4
    contents = [d["message"]["content"] for d in message_lines(root / f"{first}.jsonl")]
    assert contents.count("q1") == 1 and contents.count("q5") == 1 and contents.count("a4") == 1


async def test_stateless_new_conversations_get_new_sessions(store: SessionStore) -> None:
    one = await answer(store, None, [SYSTEM, user("hi")], "hello")
    two = await answer(store, None, [SYSTEM, user("hi")], "hello")  # a first message starts a new chat
    three = await answer(store, None, [SYSTEM, user("hi"), assistant("other"), user("x")], "y")
    assert len({one, two, three}) == 3


async def test_client_tool_calls_round_trip(store: SessionStore) -> None:
    client_tools_call = call("call_client", "get_weather", '{"city": "Oslo"}')
    async with store.turn(None, [user("weather?")], model="m") as turn:
        sid = turn.id
        full = assistant("Looking. ", [call("call_int"), client_tools_call])
        await turn.add(full, visible=assistant("Looking. ", [client_tools_call]))
        await turn.add(result("call_int", "internal result"), visible=None)
    # the client runs its tool and sends the result; arguments re-serialized with other spacing
    echoed = assistant("Looking. ", [call("call_client", "get_weather", '{ "city":"Oslo" }')])
    request = [user("weather?"), echoed, result("call_client", "sunny")]
    async with store.turn(None, request, model="m") as turn:
        assert turn.id == sid
        assert turn.messages == [
            user("weather?"),
            full,
            result("call_int", "internal result"),
            result("call_client", "sunny"),
        ]
        await turn.add(assistant("Sunny in Oslo."))
    row = await store.get(sid)
    assert row is not None and row["message_count"] == 4


async def test_reasoning_echoed_in_think_tags_is_not_an_edit(root: Path, store: SessionStore) -> None:
    """Open WebUI and other chat apps send the streamed reasoning back inside <think> tags."""
    history = [SYSTEM, user("q1")]
    await answer(store, "t", history, "a1")
    echoed = [SYSTEM, user("q1"), assistant("<think>get_current_time {}\n</think>\na1"), user("q2")]
    async with store.turn(None, echoed, model="m") as turn:
        assert turn.id == "t" and not turn.created
        assert [m["content"] for m in turn.messages] == ["You are terse.", "q1", "a1", "q2"]


# --- a property: whatever a client does with its history, the model sees exactly that history -------

Op = tuple[str, int, bool]  # (new | regenerate | edit, which user message to edit, use an internal tool)


def client_ops() -> st.SearchStrategy[list[Op]]:
    op = st.tuples(st.sampled_from(["new", "new", "regenerate", "edit"]), st.integers(0, 20), st.booleans())
    return st.lists(op, min_size=1, max_size=12)


def without_internal(messages: list[Message]) -> list[Message]:
    """The client's view of what the model got: internal calls and results dropped."""
    out = []
    for message in messages:
        if message["role"] == "tool" and message["tool_call_id"].startswith("int_"):
            continue
        if message["role"] == "assistant" and message.get("tool_calls"):
            continue
        out.append(message)
    return out


async def play(root: Path, ops: list[Op]) -> None:
    history: list[Message] = [SYSTEM]
    async with SessionStore(root) as store:
        for n, (kind, which, tool) in enumerate(ops):
            users = [i for i, m in enumerate(history) if m["role"] == "user"]
            if kind == "regenerate" and users:
                history = history[: users[-1] + 1]
            elif (
                kind == "edit" and len(users) > 1
            ):  # an edit of the first message means a new message (case 3)
                at = users[1:][which % (len(users) - 1)]
                history = [*history[:at], user(f"edited {n}")]
            else:
                history = [*history, user(f"q{n}")]
            async with store.turn("prop", history, model="m") as turn:
                assert without_internal(turn.messages) == history
                if tool:
                    await turn.add(assistant(None, [call(f"int_{n}")]), visible=None)
                    await turn.add(result(f"int_{n}", "out"), visible=None)
                await turn.add(assistant(f"a{n}"))
            history.append(assistant(f"a{n}"))
            row = await store.get("prop")
            assert row is not None and row["message_count"] == len(history)
            assert (
                without_internal([{k: v for k, v in m.items() if k != "timestamp"} for m in row["messages"]])
                == history
            )
    async with SessionStore(root) as store:  # and so it stays after a restart
        row = await store.get("prop")
        assert row is not None
        assert (
            without_internal([{k: v for k, v in m.items() if k != "timestamp"} for m in row["messages"]])
            == history
        )


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=client_ops())
def test_history_property(tmp_path: Path, ops: list[Op]) -> None:
    root = Path(tempfile.mkdtemp(dir=tmp_path)) / "sessions"
    asyncio.run(play(root, ops))


def system(text: str) -> Message:
    return {"role": "system", "content": text}


Prompt = tuple[int, bool, bool]  # (system prompt version, an inline note before the last message, stateless)


def prompts() -> st.SearchStrategy[list[Prompt]]:
    return st.lists(st.tuples(st.integers(0, 2), st.booleans(), st.booleans()), min_size=12, max_size=12)


def strip(messages: list[dict]) -> list[Message]:
    return without_internal([{k: v for k, v in m.items() if k != "timestamp"} for m in messages])


async def play_instructions(root: Path, ops: list[Op], instructions: list[Prompt]) -> None:
    """Like ``play``, with a system prompt that changes and inline notes that come and go: the model gets
    exactly each request, and the conversation is stored as if the instructions were not there."""
    conversation: list[Message] = []
    async with SessionStore(root) as store:
        for n, ((kind, which, tool), (version, note, stateless)) in enumerate(
            zip(ops, instructions, strict=False)
        ):
            users = [i for i, m in enumerate(conversation) if m["role"] == "user"]
            if kind == "regenerate" and users:
                conversation = conversation[: users[-1] + 1]
            elif kind == "edit" and len(users) > 1:
                at = users[1:][which % (len(users) - 1)]
                conversation = [*conversation[:at], user(f"edited {n}")]
            else:
                kind = "new"
                conversation = [*conversation, user(f"q{n}")]
            request = [system(f"prompt v{version}"), *conversation]
            if note:
                request.insert(len(request) - 1, system(f"note {n}"))
            header = None if stateless and kind == "new" and n else "prop"
            async with store.turn(header, request, model="m") as turn:
                assert turn.id == "prop"
                assert without_internal(turn.messages) == request
                if tool:
                    await turn.add(assistant(None, [call(f"int_{n}")]), visible=None)
                    await turn.add(result(f"int_{n}", "out"), visible=None)
                await turn.add(assistant(f"a{n}"))
            conversation.append(assistant(f"a{n}"))
            row = await store.get("prop")
            assert row is not None
            instructions_now = [m for m in request if m["role"] == "system"]
            assert row["message_count"] == len(instructions_now) + len(conversation)
            stored = strip(row["messages"])
            assert [m for m in stored if m["role"] != "system"] == conversation
            assert [m for m in stored if m["role"] == "system"] == instructions_now


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=client_ops(), instructions=prompts())
def test_history_property_with_changing_instructions(
    tmp_path: Path, ops: list[Op], instructions: list[Prompt]
) -> None:
    root = Path(tempfile.mkdtemp(dir=tmp_path)) / "sessions"
    asyncio.run(play_instructions(root, ops, instructions))


# --- system and developer messages -------------------------------------------------------------------

DEVELOPER: Message = {"role": "developer", "content": "You are terse."}


async def test_a_developer_prompt_counts_as_a_system_prompt(store: SessionStore) -> None:
    """With the session's id and only the new message after the developer prompt, nothing is superseded."""
    await answer(store, "dev", [DEVELOPER, user("q1")], "a1")
    async with store.turn("dev", [DEVELOPER, user("q2")], model="m") as turn:
        assert turn.messages == [DEVELOPER, user("q1"), assistant("a1"), user("q2")]
        await turn.add(assistant("a2"))
    row = await store.get("dev", include_superseded=True)
    assert row is not None and not any(m.get("superseded") for m in row["messages"])
    assert [m["content"] for m in row["messages"]] == ["You are terse.", "q1", "a1", "q2", "a2"]


async def test_a_developer_prompt_alone_starts_new_conversations(store: SessionStore) -> None:
    one = await answer(store, None, [DEVELOPER, user("hi")], "hello")
    two = await answer(store, None, [DEVELOPER, user("hi")], "hello")
    assert one != two
    async with store.turn(None, [DEVELOPER, user("hi"), assistant("hello"), user("more")], model="m") as turn:
        assert turn.id == two and not turn.created


async def test_a_system_prompt_rebuilt_every_turn_neither_forks_nor_restores(
    root: Path, store: SessionStore
) -> None:
    """Aider rebuilds its system prompt (with its repo map) every turn and sends no session id: one
    session, each system prompt stored once with its turn, the conversation never superseded."""
    sid = await answer(store, None, [system("map v1"), user("q1")], "a1")
    async with store.turn(
        None, [system("map v2"), user("q1"), assistant("a1"), user("q2")], model="m"
    ) as turn:
        assert turn.id == sid and not turn.created
        assert turn.messages == [system("map v2"), user("q1"), assistant("a1"), user("q2")]
        await turn.add(assistant("a2"))
    request = [system("map v3"), user("q1"), assistant("a1"), user("q2"), assistant("a2"), user("q3")]
    async with store.turn(None, request, model="m") as turn:
        assert turn.id == sid and turn.messages == request
        await turn.add(assistant("a3"))
    contents = [d["message"]["content"] for d in message_lines(root / f"{sid}.jsonl")]
    assert contents == ["map v1", "q1", "a1", "map v2", "q2", "a2", "map v3", "q3", "a3"]
    row = await store.get(sid, include_superseded=True)
    assert row is not None and row["message_count"] == 7  # the system prompt and six messages
    assert [m["content"] for m in row["messages"] if m.get("superseded")] == ["map v1", "map v2"]
    rows, _ = await store.list()
    assert [r["id"] for r in rows] == [sid]


async def test_a_new_system_prompt_is_used_from_then_on(store: SessionStore) -> None:
    await answer(store, "sp", [SYSTEM, user("q1")], "a1")
    other = system("Be verbose.")
    async with store.turn("sp", [other, user("q2")], model="m") as turn:
        assert turn.messages == [other, user("q1"), assistant("a1"), user("q2")]
        await turn.add(assistant("a2"))
    async with store.turn("sp", [user("q3")], model="m") as turn:  # a client that sends no system prompt
        assert turn.messages == [other, user("q1"), assistant("a1"), user("q2"), assistant("a2"), user("q3")]
    row = await store.get("sp")
    assert row is not None and [m["content"] for m in row["messages"]].count("You are terse.") == 0


async def test_inline_system_messages_stay_where_the_request_puts_them(
    root: Path, store: SessionStore
) -> None:
    """Claude Code's inline system messages change from turn to turn: instructions for that request, never
    part of the conversation."""
    async with store.turn(None, [SYSTEM, user("q1")], model="m") as turn:
        sid = turn.id
        await turn.add(assistant("Looking. ", [call("int_1")]), visible=assistant("Looking. "))
        await turn.add(result("int_1", "a.txt"), visible=None)
        await turn.add(assistant("One file."))
    note1, note2 = system("It is 10:01."), system("It is 10:02.")
    request = [SYSTEM, user("q1"), note1, assistant("Looking. One file."), user("q2")]
    async with store.turn(None, request, model="m") as turn:
        assert turn.id == sid and not turn.created
        assert turn.messages == [
            SYSTEM,
            user("q1"),
            note1,  # before the stored records of the message it preceded, internal traffic and all
            assistant("Looking. ", [call("int_1")]),
            result("int_1", "a.txt"),
            assistant("One file."),
            user("q2"),
        ]
        await turn.add(assistant("a2"))
    request = [
        SYSTEM,
        user("q1"),
        assistant("Looking. One file."),
        user("q2"),
        assistant("a2"),
        note2,
        user("q3"),
    ]
    async with store.turn(None, request, model="m") as turn:
        assert turn.id == sid
        assert [m["content"] for m in turn.messages] == [
            "You are terse.", "q1", "Looking. ", "a.txt", "One file.", "q2", "a2", "It is 10:02.", "q3"
        ]  # fmt: skip
        await turn.add(assistant("a3"))
    async with store.turn(
        sid, [user("q4")], model="m"
    ) as turn:  # no system messages: the stored ones, in front
        assert turn.messages[:2] == [SYSTEM, note2] and turn.messages[-1] == user("q4")
    row = await store.get(sid, include_superseded=True)
    assert row is not None
    superseded = [m["content"] for m in row["messages"] if m.get("superseded")]
    assert superseded == ["It is 10:01."]  # the unchanged prompt before the note stays, stored once
    everything = [m["content"] for m in row["messages"]]
    assert everything.count("You are terse.") == 1 and everything.count("q2") == 1


async def test_only_system_messages_supersede_nothing(store: SessionStore) -> None:
    await answer(store, "s", [SYSTEM, user("q1")], "a1")
    async with store.turn("s", [system("new rules")], model="m") as turn:
        assert turn.messages == [system("new rules"), user("q1"), assistant("a1")]
    row = await store.get("s")
    assert row is not None and [m["content"] for m in row["messages"]] == ["q1", "a1", "new rules"]


# --- the new tail of a stateless request -------------------------------------------------------------


async def test_tool_results_then_a_user_message_continue_the_session(store: SessionStore) -> None:
    """pydantic-ai answers a client tool call and asks on in one request: [.., assistant(tool_calls),
    tool, user]."""
    weather = call("call_client", "get_weather", '{"city": "Oslo"}')
    async with store.turn(None, [user("weather?")], model="m") as turn:
        sid = turn.id
        await turn.add(assistant(None, [weather]))
    request = [user("weather?"), assistant(None, [weather]), result("call_client", "sunny"), user("thanks")]
    async with store.turn(None, request, model="m") as turn:
        assert turn.id == sid and not turn.created
        assert turn.messages == request
        await turn.add(assistant("You're welcome."))
    row = await store.get(sid, include_superseded=True)
    assert row is not None and row["message_count"] == 5
    assert not any(m.get("superseded") for m in row["messages"])


# --- results a client sends for internal tool calls --------------------------------------------------


async def internal_turn(store: SessionStore, session_id: str | None) -> str:
    """A turn with an internal call, streamed with tool_events=tool_calls: a client sees the call."""
    async with store.turn(session_id, [SYSTEM, user("list files")], model="m") as turn:
        await turn.add(assistant("Looking. ", [call("int_1")]), visible=assistant("Looking. "))
        await turn.add(result("int_1", "a.txt"), visible=None)
        await turn.add(assistant("One file."))
        return turn.id


STORED = [
    SYSTEM,
    user("list files"),
    assistant("Looking. ", [call("int_1")]),
    result("int_1", "a.txt"),
    assistant("One file."),
]
ECHOED = [SYSTEM, user("list files"), assistant("Looking. One file.", [call("int_1")])]
FAILED = result("int_1", "error: no such tool")  # what a client that could not run the call answers


@pytest.mark.parametrize("header", [True, False])
async def test_results_for_internal_calls_are_neither_stored_nor_sent(
    root: Path, store: SessionStore, header: bool
) -> None:
    sid = await internal_turn(store, "int" if header else None)
    async with store.turn(sid if header else None, [*ECHOED, FAILED, user("thanks")], model="m") as turn:
        assert turn.id == sid and not turn.created
        assert turn.messages == [*STORED, user("thanks")] and turn.new == [user("thanks")]
        await turn.add(assistant("You're welcome."))
    contents = [d["message"]["content"] for d in message_lines(root / f"{sid}.jsonl")]
    assert "error: no such tool" not in contents and contents.count("list files") == 1
    row = await store.get(sid, include_superseded=True)
    assert row is not None and not any(m.get("superseded") for m in row["messages"])
    # later in the history too, and after a restart (the index finds it: its hash leaves results out)
    request = [*ECHOED, FAILED, user("thanks"), assistant("You're welcome."), user("bye")]
    await store.close()
    async with SessionStore(root) as again:
        async with again.turn(None, request, model="m") as turn:
            assert turn.id == sid and turn.messages == [
                *STORED,
                user("thanks"),
                assistant("You're welcome."),
                user("bye"),
            ]


async def test_only_results_for_internal_calls_bring_nothing_new(root: Path, store: SessionStore) -> None:
    sid = await internal_turn(store, None)
    before = message_lines(root / f"{sid}.jsonl")
    async with store.turn(None, [*ECHOED, FAILED], model="m") as turn:
        assert turn.id == sid and turn.messages == STORED and turn.new == []
    assert message_lines(root / f"{sid}.jsonl") == before


# --- canonical forms ---------------------------------------------------------------------------------

IMAGE = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
EPHEMERAL = {"cache_control": {"type": "ephemeral"}}


def test_cache_control_on_content_parts_does_not_count() -> None:
    plain = {"role": "user", "content": [{"type": "text", "text": "look"}, IMAGE]}
    marked = {
        "role": "user",
        "content": [{"type": "text", "text": "look", **EPHEMERAL}, {**IMAGE, **EPHEMERAL}],
    }
    assert history.form(marked) == history.form(plain)
    text_only = {"role": "user", "content": [{"type": "text", "text": "look", **EPHEMERAL}]}
    assert history.form(text_only) == history.form(user("look"))
    assert history.form(marked) != history.form(
        {"role": "user", "content": [{"type": "text", "text": "look"}]}
    )


async def test_a_moved_cache_control_is_not_an_edit(store: SessionStore) -> None:
    first = {"role": "user", "content": [{"type": "text", "text": "look", **EPHEMERAL}, IMAGE]}
    sid = await answer(store, None, [SYSTEM, first], "a cat")
    moved = {"role": "user", "content": [{"type": "text", "text": "look"}, IMAGE]}
    second = {"role": "user", "content": [{"type": "text", "text": "and now?", **EPHEMERAL}]}
    async with store.turn(None, [SYSTEM, moved, assistant("a cat"), second], model="m") as turn:
        assert turn.id == sid and not turn.created
        assert turn.messages == [SYSTEM, first, assistant("a cat"), second]


# --- one pass over the request (issue 12, item 9) ----------------------------------------------------


async def test_a_resent_conversation_is_formed_once_and_not_hashed(
    store: SessionStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stateless client resending its whole history as it got it: its messages, equal to the stored
    ones, are not formed at all (only its system prompt, compared apart, and the message it adds), the
    stored side is never formed again, and a cached session is found without hashing the request. One
    resent in another shape (nulls, parts for a string) is formed, message by message, and still found."""
    conversation: list[Message] = [SYSTEM]
    for n in range(20):
        conversation.append(user(f"q{n}"))
        await answer(store, None, conversation, f"a{n}")
        conversation.append(assistant(f"a{n}"))
    formed = 0
    real = history.form

    def counting(message: Message) -> bytes:
        nonlocal formed
        formed += 1
        return real(message)

    def no_hash(self: history.Request) -> str:
        raise AssertionError("the cached session is compared without a hash")

    monkeypatch.setattr(history, "form", counting)
    monkeypatch.setattr(history.Request, "lookup", no_hash)
    request = [*conversation, user("q20")]
    async with store.turn(None, request, model="m") as turn:
        assert not turn.created and len(turn.messages) == len(request)
        assert formed == 2  # the system prompt, and the user message it adds to the session
        await turn.add(assistant("a20"))
    assert formed == 3
    conversation += [user("q20"), assistant("a20")]
    reshaped = [
        {**m, "content": [{"type": "text", "text": m["content"]}], "name": None} for m in conversation
    ]
    formed = 0
    async with store.turn(None, [*reshaped, user("q21")], model="m") as turn:
        assert not turn.created and len(turn.messages) == len(conversation) + 1
        assert formed == len(conversation) + 1


async def test_the_hash_after_an_edit_finds_the_session_after_a_restart(root: Path) -> None:
    async with SessionStore(root) as store:
        await answer(store, "e", [SYSTEM, user("q1")], "a1")
        await answer(store, "e", [SYSTEM, user("q1"), assistant("a1"), user("q2")], "a2")
        await answer(store, "e", [SYSTEM, user("q1"), assistant("a1"), user("q2 edited")], "a2 new")
    async with SessionStore(root) as store:  # found through the index, by the hash saved after the cut
        request = [SYSTEM, user("q1"), assistant("a1"), user("q2 edited"), assistant("a2 new"), user("q3")]
        async with store.turn(None, request, model="m") as turn:
            assert turn.id == "e" and not turn.created
            assert turn.messages == request


def test_every_call_gets_a_result_for_the_model() -> None:
    """A call left without its result (a process killed mid-call) gets a placeholder before what follows;
    a call at the very end still waits for its result."""
    missing = {"role": "tool", "tool_call_id": "c2", "content": history.NO_RESULT}
    messages = [
        user("q"),
        assistant(None, [call("c1"), call("c2")]),
        result("c1", "one"),
        assistant("next"),
        assistant(None, [call("c3")]),
        result("c3", "three"),
        user("q2"),
        assistant(None, [call("c4")]),
    ]
    out = history.with_results(messages)
    assert out == [*messages[:3], missing, *messages[3:]]
    out.append(user("more"))  # a list of its own (the agent appends its rounds to it)...
    assert len(messages) == 8 and out[0] is messages[0]  # ...of the same messages: none is copied
    assert history.with_results(messages[:3]) == messages[:3]


async def test_assistant_text_spaced_otherwise_is_the_same_message(store: SessionStore) -> None:
    """A client joins the rounds of a streamed answer its own way (pydantic-ai: a blank line of its own
    between parts that came apart by one already): the spacing of assistant text doesn't count."""
    first = [SYSTEM, user("q")]
    sid = await answer(store, None, first, "Checking. \n\nIt is noon.")
    resent = [*first, assistant("Checking. \n\n\n\nIt is noon. "), user("thanks")]
    async with store.turn(None, resent, model="m") as turn:
        assert turn.id == sid and not turn.created
        assert [m.get("content") for m in turn.messages][-2:] == ["Checking. \n\nIt is noon.", "thanks"]
    changed = [*first, assistant("Checking. It is one."), user("thanks")]
    async with store.turn(None, changed, model="m") as turn:
        assert turn.id != sid  # other words are another answer
