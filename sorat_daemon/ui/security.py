"""The UI's checks and headers, all on the server.

Every UI request: Host as on the API (DNS rebinding). Pages (GET) need the browser-session cookie, else
they send the browser to the login page; the login page and static assets are public. Every request that
changes something (POST) needs the cookie (but the login itself), an ``Origin`` that is sorat's own
loopback origin on the bound port, and ``Sec-Fetch-Site`` same-origin or none where the browser sends it:
SameSite=Strict already keeps the cookie off other sites' requests, and these checks hold even where a
browser gets that wrong. UI answers carry no CORS headers, so no other origin reads them.

The bearer token never opens a page and the cookie never opens ``/v1/*``: the app's guard applies the
token to every path but the UI's, and sends these here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from quart import Response, request

from sorat_daemon.errors import AuthError, PermissionDenied
from sorat_daemon.ui.site import see_other

if TYPE_CHECKING:
    from sorat_daemon.http.guard import Guard
    from sorat_daemon.ui.site import Site

SAFE_METHODS = frozenset({"GET", "HEAD"})
PUBLIC_PREFIXES = ("/ui/static/",)
LOGIN = "/ui/login"
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    # Not no-referrer: Chromium then sends ``Origin: null`` on form posts, which the Origin check refuses.
    "Referrer-Policy": "same-origin",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
}


def check(site: Site, guard: Guard) -> Response | None:
    """None to go on; a redirect to the login page; or raises the request's SoratError."""
    guard.check_host(request.scope.get("raw_path") or b"/", request.headers.get("Host", ""))
    path = request.path
    if request.method in SAFE_METHODS:
        if path == LOGIN or path.startswith(PUBLIC_PREFIXES) or site.signin.check(site.browser_session()):
            return None
        return see_other(LOGIN)
    check_origin(site)
    if path != LOGIN and not site.signin.check(site.browser_session()):
        raise AuthError("Not signed in to sorat's web UI; run `sorat open`")
    return None


def check_origin(site: Site) -> None:
    origins = request.headers.getlist("Origin")
    if len(origins) != 1 or origins[0] not in site.origins:
        raise PermissionDenied("This request must come from sorat's own page (its Origin is not sorat's)")
    fetch_site = request.headers.getlist("Sec-Fetch-Site")
    if fetch_site and (len(fetch_site) > 1 or fetch_site[0] not in ("same-origin", "none")):
        raise PermissionDenied("This request must come from sorat's own page (Sec-Fetch-Site)")


def headers(response: Response) -> None:
    for name, value in HEADERS.items():
        response.headers.setdefault(name, value)
    response.headers.setdefault("Cache-Control", "no-store")
