"""What the menu's items do on the desktop: show a folder, open a link in the browser, copy to the clipboard.

Each returns at once: the menu runs them on a backend's loop (pystray's, or the D-Bus connection's), which
must not wait for a file manager, a browser or a stuck clipboard.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger("sorat.tray")

CLIPBOARD_TIMEOUT_S = 3.0

Opener = Callable[[Path], None]
Tell = Callable[[str], None]
Browser = Callable[[str], None]


def open_path(path: Path) -> None:
    """Show ``path`` in the desktop's file manager, without waiting for it."""
    if sys.platform == "win32":
        os.startfile(path)  # type: ignore[attr-defined]  # Windows only
        return
    program = "open" if sys.platform == "darwin" else "xdg-open"
    proc = subprocess.Popen(
        [program, str(path)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    threading.Thread(target=proc.wait, name="sorat-opener", daemon=True).start()  # reap it


def open_url(url: str) -> None:
    """``url`` in the user's browser (``webbrowser`` honours ``$BROWSER``), from a thread of its own: a
    console browser named there runs until it is closed."""

    def run() -> None:
        import webbrowser

        try:
            if not webbrowser.open(url):
                log.warning("no browser could open the web UI; open it by hand")
        except Exception:
            log.exception("cannot start a browser")

    threading.Thread(target=run, name="sorat-browser", daemon=True).start()


def copy_to_clipboard(
    text: str,
    tell: Tell,
    timeout: float = CLIPBOARD_TIMEOUT_S,
    copy_text: Callable[[str], None] | None = None,
) -> None:
    """Copy with pyperclip in a thread of its own: xclip and xsel can hang (no X selection owner, a stuck
    clipboard manager), and the menu must not. Failure or silence is told to the user."""
    done = threading.Event()
    failure: list[str] = []

    def copy() -> None:
        try:
            if copy_text is None:
                import pyperclip

                pyperclip.copy(text)
            else:
                copy_text(text)
        except Exception as e:  # PyperclipException when no mechanism exists, OSError from its programs
            failure.append(str(e) or type(e).__name__)
        finally:
            done.set()

    def watch() -> None:
        threading.Thread(target=copy, name="sorat-clipboard", daemon=True).start()
        if not done.wait(timeout):
            tell(f"The clipboard did not answer within {timeout:g} s; `sorat token` prints the token")
        elif failure:
            tell(f"No clipboard available ({failure[0].splitlines()[0]}); `sorat token` prints the token")
        else:
            tell("Bearer token copied")

    threading.Thread(target=watch, name="sorat-clipboard-watch", daemon=True).start()
