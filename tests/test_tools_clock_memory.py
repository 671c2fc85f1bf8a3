from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import pytest

from sorat_daemon.paths import Home
from sorat_daemon.tools import clock, memory
from sorat_daemon.tools.registry import ToolContext, Toolset


@pytest.fixture
def ctx(tmp_path: Path) -> ToolContext:
    return ToolContext(home=Home(tmp_path))


async def call(ts: Toolset, ctx: ToolContext, name: str, **arguments: object) -> dict[str, object]:
    return json.loads(await ts.call(name, json.dumps(arguments), ctx))  # type: ignore[no-any-return]


async def test_current_time(ctx: ToolContext) -> None:
    ts = Toolset(clock.TOOLS)
    out = await call(ts, ctx, "get_current_time", timezone="Asia/Tokyo")
    moment = datetime.fromisoformat(str(out["iso"]))
    assert moment.utcoffset() is not None and moment.utcoffset().total_seconds() == 9 * 3600  # type: ignore[union-attr]
    assert out["timezone"] == "Asia/Tokyo"
    assert out["weekday"] == moment.strftime("%A")
    local = await call(ts, ctx, "get_current_time")
    assert datetime.fromisoformat(str(local["iso"])).tzinfo is not None
    assert local["timezone"]


@pytest.mark.parametrize("zone", ["Mars/Olympus", "../../etc/passwd", ""])
async def test_unknown_time_zone(ctx: ToolContext, zone: str) -> None:
    out = await call(Toolset(clock.TOOLS), ctx, "get_current_time", timezone=zone)
    if zone:
        assert "unknown time zone" in str(out["error"])
    else:
        assert "iso" in out  # empty means local


async def test_system_info(ctx: ToolContext) -> None:
    out = await call(Toolset(clock.TOOLS), ctx, "get_system_info")
    assert {"os", "arch", "hostname", "uptime_s", "memory"} <= set(out)
    mem = out["memory"]
    assert isinstance(mem, dict) and set(mem) == {"total", "available"}
    if Path("/proc/meminfo").exists():
        assert mem["total"] > mem["available"] > 0
        assert isinstance(out["uptime_s"], int) and out["uptime_s"] >= 0


async def test_remember_and_recall(ctx: ToolContext) -> None:
    ts = Toolset(memory.make_tools())
    assert (await call(ts, ctx, "recall_memory"))["facts"] == []
    await call(ts, ctx, "remember", fact="The user prefers\ntabs over spaces.")
    await call(ts, ctx, "remember", fact="Project Zeta ships in May.")
    facts = (await call(ts, ctx, "recall_memory"))["facts"]
    assert isinstance(facts, list) and len(facts) == 2
    assert str(facts[0]).startswith("The user prefers tabs over spaces.")
    assert str(facts[1]).startswith("Project Zeta ships in May.")
    text = ctx.home.memory.read_text()
    assert text.count("\n") == 2 and text.startswith("- The user prefers tabs")
    assert "error" in await call(ts, ctx, "remember", fact="   ")


async def test_a_torn_last_line_does_not_swallow_the_next_fact(ctx: ToolContext) -> None:
    ctx.home.memory.write_text("- first fact\n- half a fa")  # as a crash mid-write would leave it
    ts = Toolset(memory.make_tools())
    await call(ts, ctx, "remember", fact="second fact")
    facts = (await call(ts, ctx, "recall_memory"))["facts"]
    assert isinstance(facts, list)
    assert facts[:2] == ["first fact", "half a fa"]
    assert str(facts[2]).startswith("second fact")


async def test_recall_keeps_the_newest_when_large(ctx: ToolContext) -> None:
    lines = [f"- fact number {i} " + "x" * 100 for i in range(1000)]
    ctx.home.memory.write_text("\n".join(lines) + "\n")
    out = await call(Toolset(memory.make_tools()), ctx, "recall_memory")
    assert out["truncated"] is True
    facts = out["facts"]
    assert isinstance(facts, list) and str(facts[-1]).startswith("fact number 999 ")
    assert sum(len(str(f)) for f in facts) <= memory.MAX_RECALL_CHARS
