from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Literal

import pytest

from sorat_daemon.paths import Home
from sorat_daemon.tools.registry import Tool, ToolContext, ToolError, Toolset, tool


@pytest.fixture
def ctx(tmp_path: Path) -> ToolContext:
    return ToolContext(home=Home(tmp_path), session_id="s1")


@tool
def greet(name: str, times: int = 1, loud: bool = False) -> str:
    """Greet someone.

    Args:
        name: who to greet
        times: how many times
            (continued on a second line)
    """
    text = " ".join([f"hello {name}"] * times)
    return text.upper() if loud else text


@tool(name="pick", timeout_s=5)
def pick_fn(
    color: Literal["red", "green"],
    tags: list[str] | None = None,
    ratio: float = 0.5,
    note: Annotated[str, "free text"] = "",
) -> dict[str, object]:
    """Pick a color."""
    return {"color": color, "tags": tags, "ratio": ratio, "note": note}


@tool
async def whoami(*, ctx: ToolContext) -> dict[str, str | None]:
    """Which session calls."""
    return {"session": ctx.session_id}


@tool
def boom() -> str:
    """Fails."""
    raise RuntimeError("kaput")


@tool
def refuse() -> str:
    """Fails with a message for the model."""
    raise ToolError("not allowed")


@tool(timeout_s=0.05)
async def slow() -> str:
    """Never finishes in time."""
    await asyncio.Event().wait()
    return "never"


def test_schema_from_signature_and_docstring() -> None:
    spec = greet.spec()["function"]
    assert spec["name"] == "greet"
    assert spec["description"] == "Greet someone."
    params = spec["parameters"]
    assert params["type"] == "object"
    assert params["required"] == ["name"]
    assert params["additionalProperties"] is False
    assert params["properties"]["name"] == {"type": "string", "description": "who to greet"}
    assert params["properties"]["times"] == {
        "type": "integer",
        "description": "how many times (continued on a second line)",
    }
    assert params["properties"]["loud"]["type"] == "boolean"


def test_schema_literal_optional_list_annotated() -> None:
    assert pick_fn.name == "pick" and pick_fn.timeout_s == 5
    props = pick_fn.parameters["properties"]
    assert props["color"] == {"type": "string", "enum": ["red", "green"]}
    assert props["tags"] == {"type": "array", "items": {"type": "string"}}
    assert props["ratio"] == {"type": "number"}
    assert props["note"] == {"type": "string", "description": "free text"}
    assert pick_fn.parameters["required"] == ["color"]


def test_ctx_is_not_in_the_schema() -> None:
    assert whoami.takes_ctx
    assert whoami.parameters["properties"] == {}


def test_toolset_specs_names_contains() -> None:
    ts = Toolset([greet, pick_fn])
    assert ts.names() == ["greet", "pick"]
    assert "greet" in ts and "nope" not in ts
    assert [s["function"]["name"] for s in ts.specs()] == ["greet", "pick"]
    assert ts.specs() is ts.specs()  # computed once
    with pytest.raises(ValueError):
        Toolset([greet, greet])


def test_toolset_only_keeps_the_named_families() -> None:
    ts = Toolset(
        [replace(greet, family="web"), replace(pick_fn, family="files"), replace(whoami, family="mcp")]
    )
    web_mcp = ts.only(("web", "mcp"))
    assert web_mcp.names() == ["greet", "whoami"]
    assert ts.only(("web", "mcp")) is web_mcp  # made once per snapshot
    assert ts.only(()).names() == [] and len(ts) == 3
    assert Toolset([greet]).only(("web",)).names() == []  # a tool of no family is in none


async def test_call_happy_paths(ctx: ToolContext) -> None:
    ts = Toolset([greet, pick_fn, whoami])
    assert await ts.call("greet", '{"name": "ann", "times": 2}', ctx) == "hello ann hello ann"
    out = json.loads(await ts.call("pick", '{"color": "red", "tags": ["a"], "ratio": 1}', ctx))
    assert out == {"color": "red", "tags": ["a"], "ratio": 1, "note": ""}
    # null for an optional argument is as if it were absent; 3.0 is accepted for an integer
    assert await ts.call("greet", '{"name": "bo", "times": 1.0, "loud": null}', ctx) == "hello bo"
    assert json.loads(await ts.call("whoami", "", ctx)) == {"session": "s1"}


@pytest.mark.parametrize(
    ("name", "arguments", "expected"),
    [
        ("nope", "{}", "unknown tool 'nope'"),
        ("greet", "{not json", "not valid JSON"),
        ("greet", "[1, 2]", "must be a JSON object"),
        ("greet", "{}", "missing required argument 'name'"),
        ("greet", '{"name": "a", "extra": 1}', "unexpected argument 'extra'"),
        ("greet", '{"name": 5}', "argument 'name' must be a string, not an integer"),
        ("greet", '{"name": "a", "times": "2"}', "must be an integer"),
        ("greet", '{"name": "a", "loud": 1}', "must be a boolean"),
        ("pick", '{"color": "blue"}', 'must be one of "red", "green"'),
        ("pick", '{"color": "red", "tags": ["a", 2]}', "tags[1]"),
        ("boom", "{}", "RuntimeError: kaput"),
        ("refuse", "{}", "not allowed"),
        ("slow", "{}", "timed out"),
    ],
)
async def test_call_never_raises(ctx: ToolContext, name: str, arguments: str, expected: str) -> None:
    ts = Toolset([greet, pick_fn, boom, refuse, slow])
    result = json.loads(await ts.call(name, arguments, ctx))
    assert set(result) == {"error"}
    assert expected in result["error"]


async def test_one_log_line_per_call(ctx: ToolContext, caplog: pytest.LogCaptureFixture) -> None:
    ts = Toolset([greet, boom])
    long_name = "x" * 1000
    with caplog.at_level(logging.INFO, logger="sorat.tools"):
        await ts.call("greet", json.dumps({"name": long_name}), ctx)
        await ts.call("boom", "{}", ctx)
    lines = [r.getMessage() for r in caplog.records if r.name == "sorat.tools"]
    assert len(lines) == 2
    assert lines[0].startswith("tool greet ") and " ok " in lines[0] and "session=s1" in lines[0]
    assert len(lines[0]) < 400  # arguments shortened
    assert " ms " in lines[0]
    assert "error: RuntimeError: kaput" in lines[1]


async def test_cancellation_propagates(ctx: ToolContext) -> None:
    started = asyncio.Event()
    cancelled = asyncio.Event()

    async def hang() -> str:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return "never"

    ts = Toolset([Tool(name="hang", description="", parameters={"type": "object"}, fn=hang)])
    task = asyncio.create_task(ts.call("hang", "{}", ctx))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert cancelled.is_set()


async def test_sync_tools_run_in_a_thread(ctx: ToolContext) -> None:
    import threading

    main = threading.get_ident()

    @tool
    def where() -> bool:
        """Whether it runs off the event loop's thread."""
        return threading.get_ident() != main

    assert await Toolset([where]).call("where", "{}", ctx) == "true"


async def test_hand_made_tool_with_schema_validation(ctx: ToolContext) -> None:
    async def fn(**kwargs: object) -> dict[str, object]:
        return dict(kwargs)

    schema = {"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]}
    ts = Toolset([Tool(name="srv__q", description="d", parameters=schema, fn=fn)])
    assert json.loads(await ts.call("srv__q", '{"q": "x", "other": 1}', ctx)) == {"q": "x", "other": 1}
    assert "missing required" in json.loads(await ts.call("srv__q", "{}", ctx))["error"]


def test_a_tool_is_still_callable() -> None:
    assert greet("ann", times=2) == "hello ann hello ann"
