"""What the daemon loads of the web UI at start: the route table, views that import their module on
first use, the one-time-link API route, and ``login_url()`` for `sorat open` and the tray.

Everything behind a view (templates, markdown, the sessions and chat pages) loads on the first UI
request, so a daemon whose UI is never opened pays nothing for it in start-up time or memory.
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from quart import Quart, Response, request

from sorat_daemon.errors import SoratError

if TYPE_CHECKING:
    from sorat_daemon.http.guard import Guard
    from sorat_daemon.runtime import Runtime
    from sorat_daemon.ui.signin import SignIn
    from sorat_daemon.ui.site import Site

# rule, methods, module in sorat_daemon.ui, handler: ``async def handler(site, **url_values)``
ROUTES: tuple[tuple[str, tuple[str, ...], str, str], ...] = (
    ("/", ("GET",), "pages", "sessions"),
    ("/ui/sessions", ("GET",), "pages", "sessions"),
    ("/ui/sessions/<session_id>", ("GET",), "pages", "session"),
    ("/ui/sessions/<session_id>/export.md", ("GET",), "pages", "export_markdown"),
    ("/ui/sessions/<session_id>/export.json", ("GET",), "pages", "export_json"),
    ("/ui/sessions/<session_id>/delete", ("GET", "POST"), "pages", "delete"),
    ("/ui/chat", ("GET",), "chat", "page"),
    ("/ui/chat/<session_id>", ("GET",), "chat", "page"),
    ("/ui/turn", ("POST",), "chat", "turn"),
    ("/ui/model", ("GET", "POST"), "pages", "model"),
    ("/ui/status", ("GET",), "status", "page"),
    ("/ui/login", ("GET", "POST"), "login", "login"),
    ("/ui/logout", ("POST",), "login", "logout"),
    ("/ui/static/<name>", ("GET",), "static", "asset"),
)


def is_ui_path(path: str) -> bool:
    """The paths the UI owns: its own checks apply there instead of the bearer token."""
    return path == "/" or path == "/ui" or path.startswith("/ui/")


def loopback_host(bound: str) -> str:
    """The host a browser on this machine reaches the server by, for the address it is bound to."""
    bound = bound.strip().lower().strip("[]")
    if bound in ("::1", "::"):
        return "[::1]"
    if bound == "localhost":
        return "localhost"
    return "127.0.0.1"


class WebUI:
    """The web UI of one app. ``site`` (the pages' shared state) is built on first use."""

    def __init__(self, rt: Runtime, guard: Guard) -> None:
        self._rt = rt
        self.guard = guard
        self._lock = threading.Lock()  # the tray's thread may mint a link while the loop builds the site
        self._signin: SignIn | None = None
        self._site: Site | None = None

    @property
    def signin(self) -> SignIn:
        with self._lock:
            if self._signin is None:
                from sorat_daemon.ui.signin import SignIn

                rt = self._rt
                self._signin = SignIn(lambda: rt.token)
            return self._signin

    @property
    def site(self) -> Site:
        signin = self.signin
        with self._lock:
            if self._site is None:
                from sorat_daemon.ui.site import Site

                self._site = Site(self._rt, signin, self.origin())
            return self._site

    def origin(self) -> str:
        """sorat's own origin as a browser here sees it: ``http://127.0.0.1:PORT``."""
        return f"http://{loopback_host(self._rt.settings.server.host)}:{self._rt.port}"

    def login_url(self) -> str:
        """A fresh one-time sign-in link (60 s, single use). Safe to call from any thread."""
        return f"{self.origin()}/ui/login?nonce={self.signin.mint()}"

    async def check(self) -> Response | None:
        """The UI's own request checks (Host, cookie, Origin, Sec-Fetch-Site), from the app's guard hook."""
        from sorat_daemon.ui import security

        return security.check(self.site, self.guard)

    def secure(self, response: Response) -> None:
        """The security headers of every UI response."""
        from sorat_daemon.ui import security

        security.headers(response)

    def view(self, module: str, handler: str) -> Callable[..., Awaitable[Any]]:
        async def view(**values: Any) -> Any:
            found = getattr(importlib.import_module(f"sorat_daemon.ui.{module}"), handler)
            try:
                return await found(self.site, **values)
            except SoratError as e:
                if request.method != "GET":
                    raise  # the page's script reads the JSON error
                return self.site.error_page(e)

        view.__name__ = view.__qualname__ = f"ui_{module}_{handler}"
        return view


def register(app: Quart, rt: Runtime, guard: Guard, json: Callable[..., Response]) -> WebUI:
    ui = WebUI(rt, guard)
    views: dict[tuple[str, str], Callable[..., Awaitable[Any]]] = {}
    for rule, methods, module, handler in ROUTES:
        view = views.get((module, handler))
        if view is None:
            view = views[module, handler] = ui.view(module, handler)
        app.add_url_rule(rule, f"ui.{module}.{handler}", view, methods=list(methods))

    @app.post("/v1/ui/login-link")
    async def ui_login_link() -> Response:
        """A one-time sign-in link for `sorat open`: behind the bearer token like every /v1 route."""
        from sorat_daemon.ui.signin import LINK_TTL_S

        return json({"object": "ui.login_link", "url": ui.login_url(), "expires_in": int(LINK_TTL_S)})

    return ui
