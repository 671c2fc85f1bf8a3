"""Signing in and out: the one-time link, the token typed once, and the cookie they set."""

from __future__ import annotations

from quart import Response, request

from sorat_daemon.ui.signin import IDLE_S
from sorat_daemon.ui.site import Site, see_other

HOME = "/ui/sessions"


def _signed_in(site: Site, sid: str, referrer: str = "same-origin") -> Response:
    resp = see_other(HOME)
    resp.set_cookie(
        site.cookie, sid, max_age=int(IDLE_S), path="/", httponly=True, samesite="Strict", secure=False
    )
    resp.headers["Referrer-Policy"] = referrer
    return resp


async def login(site: Site) -> Response:
    if request.method == "POST":
        form = await request.form
        sid = site.signin.with_token(form.get("token", ""))
        if sid is None:
            return site.page("login.html", status=401, problem="That is not sorat's token.")
        return _signed_in(site, sid)
    nonce = request.args.get("nonce")
    if nonce:
        sid = site.signin.redeem(nonce)
        if sid is None:
            problem = "This sign-in link was already used or has expired. Run `sorat open` for a new one."
            return site.page("login.html", status=403, problem=problem)
        # The link's URL holds the nonce: no page it leads to may send it on as a Referer.
        return _signed_in(site, sid, referrer="no-referrer")
    if site.signin.check(site.browser_session()):
        return see_other(HOME)
    return site.page("login.html", problem=None)


async def logout(site: Site) -> Response:
    site.signin.close(site.browser_session())
    resp = see_other("/ui/login")
    resp.delete_cookie(site.cookie, path="/", httponly=True, samesite="Strict")
    return resp
