"""The web UI in a real browser: Playwright's Python API driving Debian's Chromium against a real daemon
and the scripted upstream. Every test's browser context records each request it makes: none may leave
sorat's own origin."""

from __future__ import annotations

import re
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import DEFAULT_EXTRA, ROOT, DaemonProc, clean_env, eventually, write_config
from tests.ui_support import browser, login_link, seed, session
from tests.upstream import Upstream, text, tool_calls

__all__ = ["browser"]  # the fixture, imported for this module

pytestmark = pytest.mark.timeout(180)

TOOLS_TOML = """\
[run_command]
mode = "allowlist"
allow = ["cat", "echo", "sleep"]
"""
LONG_LINES = 120
TIMEOUT_MS = 15_000


@pytest.fixture(scope="module")
def d(upstream: Upstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProc]:
    home = tmp_path_factory.mktemp("ui") / "home"
    write_config(home, upstream.base_url, DEFAULT_EXTRA)
    (home / "tools.toml").write_text(TOOLS_TOML)
    (home / "workspace").mkdir(parents=True)
    (home / "workspace" / "long.txt").write_text("".join(f"line {i}\n" for i in range(1, LONG_LINES + 1)))
    daemon = DaemonProc(home).start()
    yield daemon
    daemon.stop()


@pytest.fixture
def context(browser: Any, d: DaemonProc) -> Iterator[Any]:
    ctx = browser.new_context()
    ctx.set_default_timeout(TIMEOUT_MS)
    requests: list[str] = []
    ctx.on("request", lambda r: requests.append(r.url))
    yield ctx
    ctx.close()
    foreign = [u for u in requests if not u.startswith(d.url + "/")]
    assert not foreign, f"the page requested other origins: {foreign}"
    assert requests, "no request was recorded"


@pytest.fixture
def page(context: Any, d: DaemonProc) -> Any:
    """A page signed in through a one-time link."""
    p = context.new_page()
    p.goto(login_link(d))
    assert p.url == d.url + "/ui/sessions"
    return p


def expect(target: Any) -> Any:
    from playwright.sync_api import expect as pw_expect

    return pw_expect(target)


# --- signing in ---------------------------------------------------------------------------------------


def test_sign_in_with_sorat_open_and_a_reused_link(context: Any, d: DaemonProc, tmp_path: Path) -> None:
    env = clean_env(d.home)
    out = subprocess.run(
        [sys.executable, "-m", "sorat_daemon", "open", "--print"],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    link = out.stdout.strip()
    assert link.startswith(d.url + "/ui/login?nonce=")
    page = context.new_page()
    page.goto(link)
    expect(page.get_by_role("heading", name="Sessions")).to_be_visible()
    assert page.url == d.url + "/ui/sessions"
    cookies = context.cookies()
    assert [c["name"] for c in cookies] == [f"sorat_ui_{d.url.rsplit(':', 1)[1]}"]
    assert cookies[0]["httpOnly"] and cookies[0]["sameSite"] == "Strict"
    assert d.token not in cookies[0]["value"]
    assert page.evaluate("document.cookie") == ""  # HttpOnly: no script reads it

    other = context.browser.new_context()  # another browser: the same link again
    try:
        again = other.new_page()
        again.goto(link)
        expect(again.get_by_role("alert")).to_contain_text("already used")
        again.get_by_label("Token").fill(d.token)
        again.get_by_role("button", name="Sign in").click()
        expect(again.get_by_role("heading", name="Sessions")).to_be_visible()
        again.get_by_role("button", name="Sign out").click()
        expect(again.get_by_role("heading", name="Sign in to sorat")).to_be_visible()
        again.goto(d.url + "/ui/sessions")
        expect(again.get_by_role("heading", name="Sign in to sorat")).to_be_visible()
    finally:
        other.close()

    # `sorat open` without --print hands the link to $BROWSER
    got = tmp_path / "opened.txt"
    script = tmp_path / "browser.sh"
    script.write_text(f'#!/bin/sh\nprintf "%s" "$1" > {got}\n')
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    env["BROWSER"] = str(script)
    out = subprocess.run(
        [sys.executable, "-m", "sorat_daemon", "open"], env=env, cwd=ROOT, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    assert eventually(got.exists)
    assert got.read_text().startswith(d.url + "/ui/login?nonce=")


def test_sorat_open_without_a_daemon(tmp_path: Path) -> None:
    home = tmp_path / "nobody"
    home.mkdir()
    out = subprocess.run(
        [sys.executable, "-m", "sorat_daemon", "open", "--print"],
        env=clean_env(home), cwd=ROOT, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert out.returncode == 1
    assert "not running" in out.stderr and "Traceback" not in out.stderr


# --- the list and search ----------------------------------------------------------------------------


def test_the_list_newest_first_with_paging(page: Any, d: DaemonProc, upstream: Upstream) -> None:
    for i in range(52):
        seed(d, upstream, f"paging marker {i:02d}", text(f"answer {i}"))
    page.reload()
    expect(page.get_by_role("searchbox", name="Search")).to_have_attribute("type", "search")
    expect(page.get_by_role("link", name="New chat")).to_have_attribute("href", "/ui/chat")
    rows = page.locator("table.sessions tbody tr")
    expect(rows).to_have_count(50)
    newest = rows.first
    expect(newest.get_by_role("link")).to_have_text(re.compile("paging marker 51|A Scripted Title"))
    expect(newest.locator("td.model")).to_have_text("gpt-4o")
    expect(newest.locator("td.num")).to_have_text("2")
    expect(newest.locator("time")).to_have_text(re.compile("just now|min ago"))
    page.get_by_role("link", name="Older sessions").click()
    expect(page.locator("table.sessions tbody tr").first).to_be_visible()
    titles = page.locator("table.sessions td.title a").all_inner_texts()
    assert titles and "paging marker 51" not in titles
    # a row's title links to its session
    page.locator("table.sessions td.title a").first.click()
    expect(page.get_by_role("link", name="Continue")).to_be_visible()


def test_search_by_message_text(page: Any, d: DaemonProc, upstream: Upstream) -> None:
    sid = seed(d, upstream, "a question about birds", text("The quetzalcoatlus was a pterosaur."))
    seed(d, upstream, "a question about fish", text("Sharks are fish."))
    search = page.get_by_role("searchbox", name="Search")
    search.fill("quetzalcoatlus")
    search.press("Enter")
    links = page.locator("table.sessions td.title a")
    expect(links).to_have_count(1)
    assert links.first.get_attribute("href") == f"/ui/sessions/{sid}"
    search = page.get_by_role("searchbox", name="Search")
    expect(search).to_have_value("quetzalcoatlus")
    search.fill("zzzznothing")
    search.press("Enter")
    expect(page.get_by_text("No session has all of these words")).to_be_visible()


# --- a session ----------------------------------------------------------------------------------------


def _tool_session(d: DaemonProc, upstream: Upstream, marker: str) -> str:
    calls = [("get_current_time", {}), ("run_command", {"command": "cat", "args": ["long.txt"]})]
    return seed(d, upstream, marker, tool_calls(calls), text("Here is **the file** and the time."))


def test_a_session_with_tool_calls(page: Any, context: Any, d: DaemonProc, upstream: Upstream) -> None:
    sid = _tool_session(d, upstream, "tool session marker")
    context.grant_permissions(["clipboard-read", "clipboard-write"], origin=d.url)
    page.goto(f"{d.url}/ui/sessions/{sid}")
    clock = page.locator("details.tool", has=page.locator("summary", has_text="get_current_time"))
    shell = page.locator("details.tool", has=page.locator("summary", has_text="run_command"))
    expect(clock).to_have_count(1)
    expect(shell.locator(":scope > summary")).to_contain_text(re.compile(r"\d+ ms|\d\.\d s"))
    expect(shell.locator("pre.args")).not_to_be_visible()  # collapsed until opened
    shell.locator(":scope > summary").click()
    expect(shell.locator("pre.args")).to_contain_text('"command": "cat"')
    expect(shell.locator("pre.preview")).to_contain_text("line 1")
    expect(shell.locator("pre.preview")).not_to_contain_text(f"line {LONG_LINES}")
    shell.get_by_text("Show all").click()
    expect(shell.locator(".show-all pre.out")).to_contain_text(f"line {LONG_LINES}")
    expect(shell.locator("pre.preview")).to_be_hidden()
    expect(page.locator(".md strong")).to_have_text("the file")  # the answer's markdown

    shell.locator(".tool-body h3").get_by_role("button", name="Copy").click()
    copied = page.evaluate("navigator.clipboard.readText()")
    assert copied.endswith(f"line {LONG_LINES}\nstderr:\nexit_code: 0")  # all of it
    answer = page.locator("li.entry.assistant > header")
    answer.get_by_role("button", name="Copy").click()
    expect(answer.get_by_role("button", name="Copied")).to_be_visible()
    assert page.evaluate("navigator.clipboard.readText()") == "Here is **the file** and the time."

    with page.expect_download() as md:
        page.get_by_role("link", name="Export Markdown").click()
    exported = Path(md.value.path()).read_text()
    assert "tool session marker" in exported and "**Tool `run_command`**" in exported
    assert f"line {LONG_LINES}" in exported
    with page.expect_download() as js:
        page.get_by_role("link", name="Export JSON").click()
    data = httpx.Response(200, content=Path(js.value.path()).read_bytes()).json()
    assert data["id"] == sid and any(m.get("role") == "tool" for m in data["messages"])


def test_superseded_versions_are_reachable(page: Any, d: DaemonProc, upstream: Upstream) -> None:
    sid = seed(d, upstream, "regenerate marker", text("first answer, soon superseded"))
    upstream.script(text("second answer"))
    resp = httpx.post(  # the first message again, without the answer: a regenerate
        d.url + "/v1/chat/completions",
        headers=d.headers(**{"X-Session-ID": sid}),
        json={"model": "gpt-4o", "messages": [{"role": "user", "content": "regenerate marker"}]},
    )
    assert resp.status_code == 200
    page.goto(f"{d.url}/ui/sessions/{sid}")
    assert "superseded" not in page.locator("#conversation").inner_text()
    page.get_by_role("link", name=re.compile(r"Show superseded versions \(\d+\)")).click()
    old = page.locator("li.entry.superseded")
    expect(old.first).to_be_visible()
    expect(page.locator("#conversation")).to_contain_text("first answer, soon superseded")
    page.get_by_role("link", name="Hide superseded versions").click()
    expect(page.locator("li.entry.superseded")).to_have_count(0)


def test_delete_with_confirmation(page: Any, d: DaemonProc, upstream: Upstream) -> None:
    sid = seed(d, upstream, "delete me marker", text("gone soon"))
    page.goto(f"{d.url}/ui/sessions/{sid}")
    page.get_by_role("link", name="Delete…").click()
    expect(page.get_by_role("heading", name="Delete this session?")).to_be_visible()
    page.get_by_role("link", name="Cancel").click()
    assert httpx.get(f"{d.url}/v1/sessions/{sid}", headers=d.headers()).status_code == 200
    page.get_by_role("link", name="Delete…").click()
    page.get_by_role("button", name="Delete").click()
    expect(page.get_by_role("heading", name="Sessions")).to_be_visible()
    assert httpx.get(f"{d.url}/v1/sessions/{sid}", headers=d.headers()).status_code == 404
    page.goto(f"{d.url}/ui/sessions/{sid}")
    expect(page.get_by_role("heading", name="Not found")).to_be_visible()


def test_markup_in_messages_never_runs(page: Any, d: DaemonProc, upstream: Upstream) -> None:
    user = '<script>window.__pwned = 1</script><img src=x onerror="window.__pwned = 2">'
    answer = (
        'Look: <img src=x onerror="window.__pwned = 3"> <script>window.__pwned = 4</script> '
        "[click](javascript:window.__pwned=5) ![pixel](http://evil.example/pixel.png)"
    )
    title = "<img src=x onerror=alert(7)> Title"  # as clean_title leaves it
    upstream.title_reply = title
    call = ("run_command", {"command": "echo", "args": ["<svg onload=window.__pwned=6>"]})
    sid = seed(d, upstream, user, tool_calls([call]), text(answer))
    assert eventually(lambda: session(d, sid)["title"] == title)
    dialogs: list[str] = []
    page.on("dialog", lambda dlg: (dialogs.append(dlg.message), dlg.dismiss()))
    page.reload()
    expect(page.get_by_role("link", name=title)).to_be_visible()  # the title shows as text
    page.goto(f"{d.url}/ui/sessions/{sid}")
    expect(page.locator("li.entry.user .plain")).to_have_text(user)
    expect(page.locator("li.entry.assistant .md")).to_contain_text("<script>window.__pwned = 4</script>")
    page.locator("details.tool summary").click()
    expect(page.locator("details.tool pre.out")).to_contain_text("<svg onload=window.__pwned=6>")
    assert page.locator("#conversation img, #conversation script, #conversation svg").count() == 0
    click = page.locator(".md").get_by_text("[click](javascript:window.__pwned=5)")
    expect(click).to_be_visible()  # not a link: its scheme is refused
    pixel = page.get_by_role("link", name="[image: pixel]")
    assert pixel.get_attribute("href") == "http://evil.example/pixel.png"  # a link, never loaded
    assert page.evaluate("window.__pwned") is None and not dialogs


# --- chat ---------------------------------------------------------------------------------------------


def test_a_streamed_chat_with_tool_calls(page: Any, d: DaemonProc, upstream: Upstream) -> None:
    upstream.script(
        tool_calls([("run_command", {"command": "sleep", "args": ["1.5"]})]),
        text("The answer is **forty-two**, streamed <b>slowly</b>.", chunks=8, chunk_delay=0.05),
    )
    page.get_by_role("link", name="New chat").click()
    box = page.get_by_role("textbox", name="Message")
    box.fill("stream marker")
    box.press("Shift+Enter")
    box.press_sequentially("second line")
    box.press("Enter")
    running = page.locator("details.tool.running", has=page.locator("summary", has_text="run_command"))
    expect(running).to_be_visible()  # shown while it runs
    expect(page.get_by_role("button", name="Stop")).to_be_visible()
    expect(page.locator("details.tool summary")).to_contain_text(re.compile(r"\d\.\d s"))
    expect(page.locator("li.entry.assistant .md strong")).to_have_text("forty-two")
    expect(page.locator("li.entry.assistant .md")).to_contain_text("<b>slowly</b>")
    expect(page.get_by_role("button", name="Stop")).to_be_hidden()
    expect(page).to_have_url(re.compile(r"/ui/chat/sess_\w+$"))
    sid = page.url.rsplit("/", 1)[1]
    sent = next(r for r in upstream.requests if "stream marker" in str(r["messages"][-1].get("content")))
    assert sent["messages"][-1]["content"] == "stream marker\nsecond line"
    stored = session(d, sid)
    assert stored["messages"][-1]["content"].startswith("The answer is **forty-two**")

    # the same page continues the same session
    upstream.script(text("follow-up answered"))
    box.fill("follow-up marker")
    box.press("Enter")
    expect(page.locator("li.entry.assistant").last).to_contain_text("follow-up answered")
    assert page.url.endswith(f"/ui/chat/{sid}")
    assert eventually(lambda: session(d, sid)["message_count"] == 4)


def test_stop_cancels_the_run_and_keeps_what_was_said(page: Any, d: DaemonProc, upstream: Upstream) -> None:
    words = " ".join(f"word{i}" for i in range(200))
    upstream.script(text(words, chunks=200, chunk_delay=0.05))
    page.goto(d.url + "/ui/chat")
    box = page.get_by_role("textbox", name="Message")
    box.fill("stop marker")
    box.press("Enter")
    expect(page.locator("li.entry.assistant .plain")).to_contain_text("word3")
    page.get_by_role("button", name="Stop").click()
    expect(page.get_by_role("status")).to_contain_text("Stopped")
    expect(page.get_by_role("button", name="Send")).to_be_enabled()
    assert upstream.wait_for(lambda: upstream.disconnects >= 1, timeout=10)  # the upstream call ended
    sid = page.url.rsplit("/", 1)[1]

    def kept() -> bool:
        messages = session(d, sid)["messages"]
        return messages[-1]["role"] == "assistant" and messages[-1]["content"].startswith("word0 word1")

    assert eventually(kept, timeout=10)
    said = session(d, sid)["messages"][-1]["content"]
    assert "word199" not in said


def test_continuing_a_session(page: Any, d: DaemonProc, upstream: Upstream) -> None:
    sid = seed(d, upstream, "continue marker first", text("first reply"))
    page.goto(f"{d.url}/ui/sessions/{sid}")
    page.get_by_role("link", name="Continue").click()
    expect(page.locator("#conversation")).to_contain_text("first reply")
    upstream.script(text("second reply"))
    box = page.get_by_role("textbox", name="Message")
    box.fill("continue marker second")
    box.press("Enter")
    expect(page.locator("li.entry.assistant").last).to_contain_text("second reply")
    sent = next(r for r in upstream.requests if r["messages"][-1].get("content") == "continue marker second")
    contents = [m.get("content") for m in sent["messages"]]
    assert "continue marker first" in contents and "first reply" in contents  # the history went along
    assert eventually(lambda: session(d, sid)["message_count"] == 4)


def test_the_model_switch(page: Any, d: DaemonProc, upstream: Upstream) -> None:
    page.get_by_role("link", name="Model").click()
    select = page.get_by_label("Model")
    expect(select).to_have_value("gpt-4o")
    select.select_option("gpt-4o-mini")
    page.get_by_role("button", name="Switch").click()
    try:
        expect(page.get_by_role("status")).to_contain_text("gpt-4o-mini")
        assert 'model = "gpt-4o-mini"' in (d.home / "config.toml").read_text()
        models = httpx.get(d.url + "/v1/models", headers=d.headers()).json()["data"]
        assert models[0]["id"] == "gpt-4o-mini"
        expect(page.get_by_label("Model")).to_have_value("gpt-4o-mini")
        expect(page.locator(".active-model")).to_have_text("gpt-4o-mini")
    finally:
        page.get_by_label("Model").select_option("gpt-4o")
        page.get_by_role("button", name="Switch").click()
        expect(page.get_by_role("status")).to_contain_text("gpt-4o")


def test_status_page(page: Any, d: DaemonProc) -> None:
    page.get_by_role("link", name="Status").click()
    expect(page.get_by_role("heading", name="Providers")).to_be_visible()
    expect(page.locator("table").first).to_contain_text("scripted")
    families = page.locator("section", has=page.get_by_role("heading", name="Tools")).locator("table").first
    expect(families).to_contain_text("allowlist")
    expect(page.locator("pre.log")).to_contain_text("POST /v1/ui/login-link 200")


def test_dark_mode_follows_the_system(page: Any, d: DaemonProc) -> None:
    def background() -> str:
        return str(page.evaluate("getComputedStyle(document.body.parentElement).backgroundColor"))

    page.emulate_media(color_scheme="light")
    light = background()
    page.emulate_media(color_scheme="dark")
    dark = background()
    assert light == "rgb(247, 247, 248)" and dark == "rgb(21, 23, 28)"
    page.goto(d.url + "/ui/login")  # signed in: sent on to the list, still dark
    assert background() == dark


def test_keyboard_only(page: Any, d: DaemonProc) -> None:
    page.keyboard.press("Tab")
    expect(page.get_by_role("link", name="Skip to content")).to_be_focused()
    page.goto(d.url + "/ui/chat")
    expect(page.get_by_role("textbox", name="Message")).to_be_focused()  # ready to type
