"""The README's screenshots of the web UI: a daemon on the scripted upstream, a few sessions made through
the API, and the sessions page and a session with tool calls, light and dark.

    python -m tests.ui_screenshots [assets]
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from tests.conftest import DaemonProc, eventually, write_config
from tests.ui_support import CHROMIUM, CHROMIUM_ARGS, login_link, seed, session
from tests.upstream import Upstream, text, tool_calls

TOOLS = '[run_command]\nmode = "allowlist"\nallow = ["ls", "cat", "wc"]\n'
NOTES = """\
# Garden notes
- Tomatoes: water every other day, more in July.
- Basil next to the tomatoes keeps the whiteflies away.
- Order seeds for the autumn beds before September.
"""


def demo(d: DaemonProc, up: Upstream) -> str:
    """A few sessions; the id of the one with tool calls."""
    chats = [
        ("Summarize what pyproject.toml optional-dependencies are for", "Optional dependencies in pyproject",
         "They are **extras**: groups of packages installed only on request, e.g. `pip install .[test]`."),
        ("Write a haiku about a slow build", "A haiku about slow builds",
         "Fans hum, logs scroll by\nthe linker thinks of its past\ncoffee has gone cold"),
        ("What's the difference between TCP and UDP in one paragraph?", "TCP versus UDP in brief",
         "TCP gives an ordered, reliable byte stream with congestion control; UDP sends independent "
         "datagrams with no delivery guarantee, which suits games, voice and DNS."),
    ]  # fmt: skip
    for question, title, answer in chats:
        up.title_reply = title
        sid = seed(d, up, question, text(answer))
        eventually(lambda sid=sid, title=title: session(d, sid)["title"] == title)  # type: ignore[misc]
        time.sleep(1.1)  # distinct times in the list
    up.title_reply = "Garden notes and what to do this week"
    sid = seed(
        d,
        up,
        "Look at my garden notes and tell me what to do this week",
        tool_calls([("get_current_time", {})]),
        tool_calls([("list_dir", {"path": "."}), ("run_command", {"command": "cat", "args": ["garden.md"]})]),
        text(
            "It is the first week of **July**, so from your notes:\n\n"
            "1. Water the tomatoes every day this week (July needs more).\n"
            "2. Check the basil beside them for whiteflies.\n"
            "3. Put *order autumn seeds* on the list before September."
        ),
    )
    eventually(lambda: session(d, sid)["title"] == up.title_reply)
    return sid


def main(out: Path) -> None:
    from playwright.sync_api import sync_playwright

    out.mkdir(parents=True, exist_ok=True)
    with Upstream() as up, tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "home"
        write_config(home, up.base_url, model="gpt-4o")
        (home / "tools.toml").write_text(TOOLS)
        (home / "workspace").mkdir(parents=True)
        (home / "workspace" / "garden.md").write_text(NOTES)
        d = DaemonProc(home).start()
        try:
            sid = demo(d, up)
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
                for scheme in ("light", "dark"):
                    ctx = browser.new_context(viewport={"width": 1000, "height": 640}, color_scheme=scheme)
                    page = ctx.new_page()
                    page.goto(login_link(d))
                    page.screenshot(path=str(out / f"ui-sessions-{scheme}.png"))
                    page.goto(f"{d.url}/ui/sessions/{sid}")
                    page.locator("details.tool").nth(2).locator(":scope > summary").click()
                    page.screenshot(path=str(out / f"ui-session-{scheme}.png"), full_page=True)
                    ctx.close()
                browser.close()
        finally:
            d.stop()
    print(f"screenshots in {out}")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "assets"))
