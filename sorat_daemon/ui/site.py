"""What every page shares: the runtime, the sign-in state, sorat's own origins, the cookie's name, the
Jinja templates (autoescaped: titles and answers are attacker-influenced) and the markdown renderer."""

from __future__ import annotations

import hashlib
import importlib.resources
import time
from datetime import datetime
from typing import TYPE_CHECKING, Any

import jinja2
from quart import Response, request

from sorat_daemon import __version__
from sorat_daemon.errors import SoratError
from sorat_daemon.ui.markdown import Markdown
from sorat_daemon.ui.signin import SignIn

if TYPE_CHECKING:
    from sorat_daemon.runtime import Runtime

STATIC = importlib.resources.files("sorat_daemon.ui") / "static"


class Site:
    def __init__(self, rt: Runtime, signin: SignIn, origin: str) -> None:
        self.rt = rt
        self.signin = signin
        self.origin = origin  # where `sorat open` sends the browser
        port = rt.port
        self.origins = frozenset(
            {origin, f"http://127.0.0.1:{port}", f"http://localhost:{port}", f"http://[::1]:{port}"}
        )
        self.cookie = f"sorat_ui_{port}"  # cookies ignore the port: two daemons on one host keep theirs
        self.markdown = Markdown()
        self._hashes: dict[str, str] = {}
        self._env = jinja2.Environment(
            loader=jinja2.PackageLoader("sorat_daemon.ui", "templates"),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self._env.globals.update(static=self.static_url, version=__version__, markdown=self.markdown)
        self._env.filters.update(ago=ago, iso=iso, when=when)

    def static_url(self, name: str) -> str:
        """The asset's URL with a hash of its content, so browsers may cache it for good."""
        digest = self._hashes.get(name)
        if digest is None:
            digest = hashlib.sha256((STATIC / name).read_bytes()).hexdigest()[:12]
            self._hashes[name] = digest
        return f"/ui/static/{name}?h={digest}"

    def browser_session(self) -> str | None:
        return request.cookies.get(self.cookie)

    def page(self, template: str, status: int = 200, **context: Any) -> Response:
        context.setdefault("active_model", self.rt.active_model)
        context.setdefault("attention", self.rt.state.get().attention)
        context.setdefault("nav", "")
        html = self._env.get_template(template).render(**context)
        return Response(html, status=status, content_type="text/html; charset=utf-8")

    def error_page(self, err: SoratError) -> Response:
        heading = HEADINGS.get(err.status, "Something went wrong")
        return self.page("error.html", err.status, heading=heading, message=err.message)


HEADINGS = {400: "That did not work", 404: "Not found", 403: "Not allowed", 503: "No provider"}


def see_other(location: str) -> Response:
    """The answer to a form post or a page needing sign-in: GET ``location`` (a path on sorat)."""
    return Response("", status=303, headers={"Location": location})


def iso(ts: float | int | None) -> str:
    if not ts:
        return ""
    return datetime.fromtimestamp(float(ts)).astimezone().isoformat(timespec="seconds")


def when(ts: float | int | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(float(ts))) if ts else ""


def ago(ts: float | int | None, now: float | None = None) -> str:
    """``5 min ago``, ``3 h ago``, ``yesterday``…: what a list of conversations says of each."""
    if not ts:
        return ""
    seconds = (time.time() if now is None else now) - float(ts)
    if seconds < 45:
        return "just now"
    minutes = round(seconds / 60)
    if minutes < 60:
        return f"{minutes} min ago"
    hours = round(seconds / 3600)
    if hours < 24:
        return f"{hours} h ago"
    days = round(seconds / 86400)
    if days == 1:
        return "yesterday"
    if days < 30:
        return f"{days} days ago"
    return time.strftime("%Y-%m-%d", time.localtime(float(ts)))
