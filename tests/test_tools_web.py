from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from sorat_daemon.paths import Home
from sorat_daemon.tools import web as webtools
from sorat_daemon.tools.registry import ToolContext, Toolset
from sorat_daemon.tools.settings import WebSettings

ARTICLE = """<!doctype html><html><head><title>The Article</title>
<style>body { color: red }</style><script>var tracking = "SCRIPT-TEXT";</script></head>
<body><nav><a href="/">Home</a> <a href="/about">NAV-TEXT</a></nav>
<article><h1>Otters hold hands</h1>
<p>Sea otters hold hands while they sleep so that they do not drift apart. This behaviour is called
rafting and a group of otters is called a raft.</p>
<p>They also keep a favourite stone in a pouch under their arm, which they use to crack shellfish.</p>
</article><footer>FOOTER-TEXT</footer></body></html>"""

CYRILLIC = "Привет, мир! Это страница в кодировке windows-1251 о морских выдрах и их камнях."


class Site:
    def __init__(self) -> None:
        self.release = asyncio.Event()  # frees the slow handler at teardown
        self.url = ""
        self.search_queries: list[str] = []

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/article", self.article)
        app.router.add_get("/hop", self.hop)
        app.router.add_get("/loop", self.loop)
        app.router.add_get("/to-file", self.to_file)
        app.router.add_get("/slow", self.slow)
        app.router.add_get("/drip", self.drip)
        app.router.add_get("/big", self.big)
        app.router.add_get("/cp1251", self.cp1251)
        app.router.add_get("/latin1.txt", self.latin1)
        app.router.add_get("/data.json", self.json)
        app.router.add_get("/notes.txt", self.text)
        app.router.add_get("/image.png", self.image)
        app.router.add_get("/missing", self.missing)
        app.router.add_get("/searx/search", self.searx)
        return app

    async def article(self, request: web.Request) -> web.Response:
        return web.Response(text=ARTICLE, content_type="text/html")

    async def hop(self, request: web.Request) -> web.Response:
        raise web.HTTPFound("/article")

    async def loop(self, request: web.Request) -> web.Response:
        raise web.HTTPFound("/loop")

    async def to_file(self, request: web.Request) -> web.Response:
        raise web.HTTPFound("file:///etc/passwd")

    async def slow(self, request: web.Request) -> web.Response:
        await self.release.wait()
        return web.Response(text="too late")

    async def drip(self, request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/plain"})
        await resp.prepare(request)
        while not self.release.is_set():
            await resp.write(b"x")
            try:
                await asyncio.wait_for(self.release.wait(), 0.05)
            except TimeoutError:
                pass
        return resp

    async def big(self, request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/html; charset=utf-8"})
        await resp.prepare(request)
        chunk = b"<p>lorem ipsum dolor sit amet, consectetur adipiscing elit</p>\n" * 1024
        sent = 0
        try:
            await resp.write(b"<html><head><title>Big</title></head><body>")
            while sent < 50 * 1024 * 1024:
                await resp.write(chunk)
                sent += len(chunk)
        except (ConnectionError, RuntimeError):
            pass  # the client stopped reading at its cap
        return resp

    async def cp1251(self, request: web.Request) -> web.Response:
        page = (
            '<html><head><meta http-equiv="Content-Type" content="text/html; charset=windows-1251">'
            f"<title>Выдры</title></head><body><article><p>{CYRILLIC}</p><p>{CYRILLIC}</p></article></body></html>"
        )
        return web.Response(body=page.encode("cp1251"), headers={"Content-Type": "text/html"})

    async def latin1(self, request: web.Request) -> web.Response:
        return web.Response(
            body="Café, crème brûlée".encode("latin-1"),
            headers={"Content-Type": "text/plain; charset=ISO-8859-1"},
        )

    async def json(self, request: web.Request) -> web.Response:
        return web.json_response({"otters": ["sea", "river"], "count": 2})

    async def text(self, request: web.Request) -> web.Response:
        return web.Response(text="line one\nline two\n", content_type="text/plain")

    async def image(self, request: web.Request) -> web.Response:
        return web.Response(body=b"\x89PNG\r\n\x1a\n" + bytes(100), content_type="image/png")

    async def missing(self, request: web.Request) -> web.Response:
        raise web.HTTPNotFound()

    async def searx(self, request: web.Request) -> web.Response:
        assert request.query["format"] == "json"
        self.search_queries.append(request.query["q"])
        results = [
            {"title": "Otters", "url": f"{self.url}/article", "content": "about otters"},
            {"title": "Data", "url": f"{self.url}/data.json", "content": "json"},
            {"title": "Slow", "url": f"{self.url}/slow", "content": "never loads"},
            {"title": "Image", "url": f"{self.url}/image.png", "content": "a picture"},
            {"title": "Fifth", "url": f"{self.url}/notes.txt", "content": "not fetched"},
        ]
        return web.json_response({"query": request.query["q"], "results": results})


@pytest.fixture
async def site() -> AsyncIterator[Site]:
    s = Site()
    runner = web.AppRunner(s.app(), shutdown_timeout=1)
    await runner.setup()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    site = web.SockSite(runner, sock)
    await site.start()
    s.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    try:
        yield s
    finally:
        s.release.set()
        await runner.cleanup()


@pytest.fixture
def ctx(tmp_path: Path) -> ToolContext:
    return ToolContext(home=Home(tmp_path))


def tools(**kwargs: Any) -> Toolset:
    settings = kwargs.pop("settings", WebSettings())
    kwargs.setdefault("fetch_timeout_s", 3.0)
    return Toolset(webtools.make_tools(settings, **kwargs))


async def read(ts: Toolset, ctx: ToolContext, url: str) -> dict[str, Any]:
    return json.loads(await ts.call("read_webpage", json.dumps({"url": url}), ctx))  # type: ignore[no-any-return]


async def test_article_main_text(site: Site, ctx: ToolContext) -> None:
    out = await read(tools(), ctx, f"{site.url}/hop")  # one redirect, followed
    assert out["url"] == f"{site.url}/article"
    assert out["title"]
    assert "Sea otters hold hands" in out["content"]
    assert "favourite stone" in out["content"]
    for junk in ("SCRIPT-TEXT", "color: red", "NAV-TEXT", "FOOTER-TEXT"):
        assert junk not in out["content"]


async def test_fallback_extraction_drops_scripts_and_nav() -> None:
    root = webtools._parse_html(ARTICLE)
    text = webtools._plain_text(root)
    assert "Sea otters" in text
    assert "SCRIPT-TEXT" not in text and "NAV-TEXT" not in text and "color: red" not in text


async def test_charsets(site: Site, ctx: ToolContext) -> None:
    out = await read(tools(), ctx, f"{site.url}/cp1251")
    assert "Привет, мир!" in out["content"]
    out = await read(tools(), ctx, f"{site.url}/latin1.txt")
    assert out["content"] == "Café, crème brûlée"


async def test_json_and_plain_text(site: Site, ctx: ToolContext) -> None:
    out = await read(tools(), ctx, f"{site.url}/data.json")
    assert json.loads(out["content"]) == {"otters": ["sea", "river"], "count": 2}
    out = await read(tools(), ctx, f"{site.url}/notes.txt")
    assert out == {"title": "", "url": f"{site.url}/notes.txt", "content": "line one\nline two"}


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/image.png", "is image/png, not a page"),
        ("/loop", "too many redirects"),
        ("/to-file", "not http or https"),
        ("/missing", "HTTP 404"),
    ],
)
async def test_refusals(site: Site, ctx: ToolContext, path: str, expected: str) -> None:
    out = await read(tools(), ctx, site.url + path)
    assert expected in out["error"]


@pytest.mark.parametrize(
    "url", ["file:///etc/passwd", "ftp://example.com/x", "javascript:alert(1)", "http://"]
)
async def test_only_http_urls(ctx: ToolContext, url: str) -> None:
    out = await read(tools(), ctx, url)
    assert out["error"].startswith("refused")


async def test_slow_page_times_out(site: Site, ctx: ToolContext) -> None:
    for path in ("/slow", "/drip"):  # no answer at all; an answer that never ends
        started = time.monotonic()
        out = await read(tools(fetch_timeout_s=0.5), ctx, site.url + path)
        assert "timed out" in out["error"]
        assert time.monotonic() - started < 3


async def test_huge_page_is_capped_and_fast(site: Site, ctx: ToolContext) -> None:
    started = time.monotonic()
    out = await read(tools(fetch_timeout_s=20), ctx, f"{site.url}/big")
    elapsed = time.monotonic() - started
    assert out["truncated"] is True
    assert len(out["content"]) <= webtools.MAX_PAGE_CHARS + 20
    assert out["content"].startswith("lorem ipsum")
    assert elapsed < 8


async def test_searxng_search_fetches_top_pages(site: Site, ctx: ToolContext) -> None:
    settings = WebSettings(search_backend="searxng", searxng_url=f"{site.url}/searx/")
    ts = tools(settings=settings, fetch_timeout_s=1.0)
    started = time.monotonic()
    out = json.loads(await ts.call("web_search", '{"query": "otters"}', ctx))
    assert time.monotonic() - started < 5
    assert site.search_queries == ["otters"]
    assert out["query"] == "otters"
    results = out["results"]
    assert [r["title"] for r in results] == ["Otters", "Data", "Slow", "Image", "Fifth"]
    assert "Sea otters hold hands" in results[0]["content"]
    assert len(results[0]["content"]) <= webtools.PAGE_CHARS_IN_SEARCH + 20
    assert '"otters"' in results[1]["content"]
    assert results[2]["content"] == "" and "timed out" in results[2]["content_error"]
    assert results[3]["content"] == ""  # beyond the pages fetched
    assert results[4]["snippet"] == "not fetched"


async def test_searxng_errors(site: Site, ctx: ToolContext) -> None:
    ts = tools(settings=WebSettings(search_backend="searxng", searxng_url=f"{site.url}/missing"))
    out = json.loads(await ts.call("web_search", '{"query": "x"}', ctx))
    assert "HTTP 404" in out["error"]


class FakeDDGS:
    """Stands in for ddgs.DDGS: same text() signature, canned results."""

    def __init__(self, results: list[dict[str, str]] | Exception) -> None:
        self.results = results
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def text(self, query: str, **kwargs: Any) -> list[dict[str, str]]:
        self.calls.append((query, kwargs))
        if isinstance(self.results, Exception):
            raise self.results
        return self.results


async def test_duckduckgo_adapter_with_a_fake_client(site: Site, ctx: ToolContext) -> None:
    fake = FakeDDGS(
        [
            {"title": "Otters", "href": f"{site.url}/article", "body": "about otters"},
            {"title": "Text", "href": f"{site.url}/notes.txt", "body": "notes"},
        ]
    )
    ts = tools(backend=webtools.DuckDuckGo(lambda: fake))
    out = json.loads(await ts.call("web_search", '{"query": "sea otters"}', ctx))
    assert fake.calls[0][0] == "sea otters"
    assert fake.calls[0][1]["max_results"] == webtools.SEARCH_RESULTS
    assert [r["url"] for r in out["results"]] == [f"{site.url}/article", f"{site.url}/notes.txt"]
    assert out["results"][0]["snippet"] == "about otters"
    assert "Sea otters" in out["results"][0]["content"]
    assert out["results"][1]["content"] == "line one\nline two"


async def test_duckduckgo_failures(ctx: ToolContext) -> None:
    class DDGSException(Exception):
        pass

    ts = tools(backend=webtools.DuckDuckGo(lambda: FakeDDGS(DDGSException("No results found."))))
    assert json.loads(await ts.call("web_search", '{"query": "zzzz"}', ctx)) == {
        "query": "zzzz",
        "results": [],
    }
    ts = tools(backend=webtools.DuckDuckGo(lambda: FakeDDGS(DDGSException("ratelimit"))))
    out = json.loads(await ts.call("web_search", '{"query": "x"}', ctx))
    assert "DuckDuckGo search failed" in out["error"] and "ratelimit" in out["error"]
    out = json.loads(await ts.call("web_search", '{"query": "  "}', ctx))
    assert "empty" in out["error"]


def test_disabled_offers_nothing() -> None:
    assert webtools.make_tools(WebSettings(enabled=False)) == []


def test_default_backend_is_duckduckgo() -> None:
    assert isinstance(webtools.make_backend(WebSettings()), webtools.DuckDuckGo)
    backend = webtools.make_backend(WebSettings(search_backend="searxng", searxng_url="http://127.0.0.1:1"))
    assert isinstance(backend, webtools.SearXNG)


def test_decode_body() -> None:
    assert webtools.decode_body("é".encode(), None, html=False) == "é"
    assert webtools.decode_body(b"\xef\xbb\xbfhi", None, html=False) == "hi"
    assert webtools.decode_body("é".encode("latin-1"), "iso-8859-1", html=False) == "é"
    page = '<meta charset="windows-1251"><p>Привет</p>'.encode("cp1251")
    assert "Привет" in webtools.decode_body(page, None, html=True)
    assert webtools.decode_body("é".encode() + "é".encode()[:1], None, html=False) == "é"  # cut mid-character
