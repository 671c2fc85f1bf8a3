"""The web UI's checks, with an HTTP client against the real daemon: every UI route without the cookie,
with a foreign Origin, with a foreign Host; the cookie against /v1/*; the security headers; sign-in by
link and by token, and the revocation of every browser session when the token rotates."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator

import httpx
import pytest

from sorat_daemon import tokens
from sorat_daemon.ui.entry import ROUTES
from sorat_daemon.ui.security import CSP
from tests.conftest import ALLOWED_ORIGIN, DEFAULT_EXTRA, DaemonProc, eventually, write_config
from tests.ui_support import cookie_name, login_link, seed, signed_in
from tests.upstream import Upstream, text


@pytest.fixture(scope="module")
def sid(daemon: DaemonProc, upstream: Upstream) -> str:
    return seed(daemon, upstream, "security marker question", text("security marker answer"))


def _paths(session_id: str) -> list[tuple[str, str]]:
    """(method, path) of every UI route, with real values in its URL."""
    out = []
    for rule, methods, _module, _handler in ROUTES:
        path = rule.replace("<session_id>", session_id).replace("<name>", "sorat.css")
        out += [(m, path) for m in methods]
    return out


@pytest.fixture
def client(daemon: DaemonProc) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=daemon.url, timeout=30, follow_redirects=False) as c:
        yield c


def origin(d: DaemonProc) -> str:
    return d.url.replace("localhost", "127.0.0.1")


PUBLIC = {("GET", "/ui/login"), ("POST", "/ui/login")}


def test_every_route_without_the_cookie(daemon: DaemonProc, sid: str, client: httpx.Client) -> None:
    own = {"Origin": origin(daemon), "Sec-Fetch-Site": "same-origin"}
    for method, path in _paths(sid):
        form = {"token": "wrong"} if method == "POST" else None
        resp = client.request(method, path, headers=own, data=form)
        where = f"{method} {path}"
        if path.startswith("/ui/static/"):
            assert resp.status_code == 200, where  # the UI's own script and styles are public
        elif (method, path) in PUBLIC:
            assert resp.status_code in (200, 401), where  # the login page, and a wrong token
            assert "sorat_ui_" not in resp.headers.get("set-cookie", ""), where
        elif method == "GET":
            assert resp.status_code == 303, where
            assert resp.headers["location"] == "/ui/login", where
            assert "security marker" not in resp.text, where
        else:
            assert resp.status_code == 401, where
    # and nothing was deleted by the attempts
    with daemon.client() as api:
        assert api.get(f"/v1/sessions/{sid}").status_code == 200


@pytest.mark.parametrize(
    "headers",
    [
        {"Origin": "http://evil.example"},
        {"Origin": ALLOWED_ORIGIN},  # allowed for the API's CORS, not for the UI
        {"Origin": "null"},
        {},  # no Origin at all
        {"Origin": "http://127.0.0.1:1"},  # a loopback origin, but not sorat's port
        {"Origin": "ORIGIN", "Sec-Fetch-Site": "cross-site"},
        {"Origin": "ORIGIN", "Sec-Fetch-Site": "same-site"},
    ],
    ids=["foreign", "api-allowed", "null", "absent", "other-port", "cross-site", "same-site"],
)
def test_every_change_with_a_foreign_origin(daemon: DaemonProc, sid: str, headers: dict[str, str]) -> None:
    headers = {k: (origin(daemon) if v == "ORIGIN" else v) for k, v in headers.items()}
    with signed_in(daemon) as c:
        for method, path in _paths(sid):
            if method != "POST":
                continue
            body = {"message": "hi"} if path == "/ui/turn" else None
            resp = c.request(method, path, headers=headers, json=body)
            assert resp.status_code == 403, f"{method} {path}: {resp.status_code}"
            assert resp.json()["error"]["type"] == "permission_error"
        assert c.get(f"/ui/sessions/{sid}").status_code == 200  # still signed in, nothing deleted


def test_every_route_with_a_foreign_host(daemon: DaemonProc, sid: str) -> None:
    with signed_in(daemon) as c:
        for method, path in _paths(sid):
            headers = {"Host": "evil.example", "Origin": origin(daemon)}
            resp = c.request(method, path, headers=headers)
            assert resp.status_code == 403, f"{method} {path}"
            assert "Host" in resp.json()["error"]["message"]
        # as on the API: an allowed_hosts entry passes the Host check
        assert c.get("/ui/sessions", headers={"Host": "sorat.local"}).status_code == 200


def test_the_cookie_never_opens_the_api(daemon: DaemonProc, sid: str) -> None:
    with signed_in(daemon) as c:
        assert c.get("/v1/sessions").status_code == 401
        assert c.get(f"/v1/sessions/{sid}").status_code == 401
        assert c.delete(f"/v1/sessions/{sid}").status_code == 401
        assert c.post("/v1/ui/login-link").status_code == 401
        chat = {"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}]}
        assert c.post("/v1/chat/completions", json=chat).status_code == 401
        assert c.get("/openapi.json").status_code == 401
    # and the token never opens a page
    resp = httpx.get(daemon.url + "/ui/sessions", headers=daemon.headers(), follow_redirects=False)
    assert resp.status_code == 303


def test_security_headers(daemon: DaemonProc, sid: str, client: httpx.Client) -> None:
    with signed_in(daemon) as c:
        answers = [
            c.get("/ui/sessions"),
            c.get(f"/ui/sessions/{sid}"),
            c.get("/ui/status"),
            c.get("/ui/sessions/no-such-session"),  # an error page
            c.get("/ui/static/sorat.js"),
            c.get("/ui/static/sorat.css", headers={"Origin": ALLOWED_ORIGIN}),
            client.get("/ui/login"),
            client.get("/"),  # the redirect to the login page
            c.options("/ui/turn", headers={"Origin": ALLOWED_ORIGIN, "Access-Control-Request-Method": "GET"}),
        ]
    for resp in answers:
        where = f"{resp.request.method} {resp.request.url.path} {resp.status_code}"
        h = resp.headers
        assert h["content-security-policy"] == CSP, where
        assert "'unsafe-inline'" not in CSP and "frame-ancestors 'none'" in CSP
        assert h["x-content-type-options"] == "nosniff", where
        assert h["x-frame-options"] == "DENY", where
        assert h["referrer-policy"] == "same-origin", where
        assert not [k for k in h if k.lower().startswith("access-control-")], where
    assert answers[0].headers["cache-control"] == "no-store"
    assert answers[4].headers["content-type"].startswith("text/javascript")


def test_a_one_time_link_signs_in_once(daemon: DaemonProc, client: httpx.Client) -> None:
    link = login_link(daemon)
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+/ui/login\?nonce=[A-Za-z0-9_-]{40,}", link)
    path = link.removeprefix(daemon.url)
    first = client.get(path)
    assert first.status_code == 303 and first.headers["location"] == "/ui/sessions"
    assert first.headers["referrer-policy"] == "no-referrer"  # the link's URL must not travel on
    cookie = first.headers["set-cookie"]
    name = cookie_name(daemon)
    assert cookie.startswith(f"{name}=")
    value = cookie.split(";", 1)[0].split("=", 1)[1]
    assert daemon.token not in cookie and value not in link
    attrs = {a.strip().split("=")[0].lower() for a in cookie.split(";")[1:]}
    assert {"httponly", "path", "max-age"} <= attrs
    assert "samesite=strict" in cookie.lower() and "max-age=43200" in cookie.lower()
    assert client.get("/ui/sessions").status_code == 200
    with httpx.Client(base_url=daemon.url, follow_redirects=False) as other:
        again = other.get(path)  # the same link, used again
        assert again.status_code == 403
        assert "already used" in again.text
        assert name not in other.cookies
        assert other.get("/ui/sessions").status_code == 303


def test_the_token_typed_once(daemon: DaemonProc, client: httpx.Client) -> None:
    own = {"Origin": origin(daemon)}
    wrong = client.post("/ui/login", data={"token": "not-the-token"}, headers=own)
    assert wrong.status_code == 401 and cookie_name(daemon) not in client.cookies
    right = client.post("/ui/login", data={"token": daemon.token}, headers=own)
    assert right.status_code == 303 and cookie_name(daemon) in client.cookies
    assert client.get("/ui/sessions").status_code == 200
    out = client.post("/ui/logout", headers=own)
    assert out.status_code == 303
    assert client.get("/ui/sessions").status_code == 303


def test_a_rotated_token_revokes_every_browser_session(
    upstream: Upstream, tmp_path_factory: pytest.TempPathFactory
) -> None:
    home = tmp_path_factory.mktemp("rotate") / "home"
    write_config(home, upstream.base_url, DEFAULT_EXTRA)
    d = DaemonProc(home).start()
    stack = contextlib.ExitStack()
    try:
        a = stack.enter_context(signed_in(d))
        b = stack.enter_context(signed_in(d))
        unused = login_link(d)
        assert a.get("/ui/sessions").status_code == 200
        tokens.rotate(home / "token")
        assert eventually(lambda: a.get("/ui/sessions").status_code == 303, timeout=5)
        assert b.get("/ui/sessions").status_code == 303
        assert httpx.get(unused, follow_redirects=False).status_code == 403  # links minted before, too
        d.token = (home / "token").read_text().strip()
        with signed_in(d) as c:  # the new token gives new links
            assert c.get("/ui/sessions").status_code == 200
    finally:
        stack.close()
        d.stop()
