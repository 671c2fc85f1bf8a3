"""web_search and read_webpage.

Search goes through a small backend interface (``SearchBackend.search``): DuckDuckGo through the
ddgs library (blocking, so in a thread; the client is injected for tests) or a SearXNG instance's
JSON API. The top few result pages are then fetched concurrently and their text added, each and
all capped, within one deadline.

Pages: http/https only, redirects bounded, a download cap (the body is streamed and cut), timeouts
(connect/read and a whole-fetch deadline that stops slow-drip servers), the charset from the header,
a BOM or the page's ``<meta>``, else UTF-8 or a detected one. HTML goes through trafilatura (the main
text without navigation, scripts or styles), falling back to lxml's text of the page minus those
elements; plain text and JSON come back as text; anything else is refused with its type named.
trafilatura and lxml are imported on first use: they cost start-up time and memory.
"""

from __future__ import annotations

import asyncio
import codecs
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlsplit

import httpx
import orjson

from sorat_daemon.tools.registry import Tool, ToolError, tool
from sorat_daemon.tools.settings import WebSettings

USER_AGENT = "Mozilla/5.0 (compatible; sorat/0.1; +https://github.com/sorat)"
MAX_DOWNLOAD_BYTES = 5 * 1024 * 1024
MAX_PAGE_CHARS = 12_000
MAX_REDIRECTS = 5
FETCH_TIMEOUT_S = 20.0
SEARCH_RESULTS = 8
PAGES_FETCHED = 3
PAGE_CHARS_IN_SEARCH = 3000
SEARCH_CONTENT_CHARS = 9000
SEARCH_FETCH_DEADLINE_S = 15.0

_ACCEPT = "text/html,application/xhtml+xml,text/plain;q=0.9,application/json;q=0.9,*/*;q=0.5"
_HTML_TYPES = ("text/html", "application/xhtml+xml")
_TEXT_TYPES = ("text/plain", "text/markdown", "text/csv", "text/xml", "application/xml", "text/x-markdown")
_LARGE_PAGE_ELEMENTS = 3000
_HUGE_PAGE_ELEMENTS = 15000
_DROP_TAGS = ("script", "style", "noscript", "nav", "header", "footer", "aside", "form", "iframe", "svg",
              "template", "button", "select")  # fmt: skip


@dataclass(frozen=True, slots=True)
class SearchHit:
    title: str
    url: str
    snippet: str


class SearchBackend(Protocol):
    async def search(self, query: str, max_results: int) -> list[SearchHit]: ...


class DuckDuckGo:
    """DuckDuckGo through ddgs; ``client_factory`` makes an object with ddgs' ``text()`` (tests: a fake)."""

    def __init__(self, client_factory: Callable[[], Any] | None = None, *, timeout_s: int = 10) -> None:
        self._factory = client_factory
        self._timeout_s = timeout_s

    def _search_sync(self, query: str, max_results: int) -> list[dict[str, Any]]:
        if self._factory is not None:
            client = self._factory()
        else:
            from ddgs import DDGS

            client = DDGS(timeout=self._timeout_s)
        return list(client.text(query, max_results=max_results, backend="duckduckgo") or [])

    async def search(self, query: str, max_results: int) -> list[SearchHit]:
        try:
            raw = await asyncio.to_thread(self._search_sync, query, max_results)
        except Exception as e:  # ddgs raises its own tree; "no results" is one of them
            if "no results" in str(e).lower():
                return []
            raise ToolError(f"DuckDuckGo search failed: {type(e).__name__}: {e}") from None
        return [
            SearchHit(
                title=str(r.get("title") or ""),
                url=str(r.get("href") or r.get("url") or ""),
                snippet=str(r.get("body") or r.get("snippet") or ""),
            )
            for r in raw
            if r.get("href") or r.get("url")
        ][:max_results]


class SearXNG:
    """A SearXNG instance's JSON API: ``GET {base_url}/search?q=...&format=json``."""

    def __init__(self, base_url: str, *, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self._base = base_url.rstrip("/")
        self._transport = transport

    async def search(self, query: str, max_results: int) -> list[SearchHit]:
        async with _client(self._transport, timeout=15.0) as client:
            try:
                r = await client.get(f"{self._base}/search", params={"q": query, "format": "json"})
            except httpx.HTTPError as e:
                raise ToolError(f"SearXNG at {self._base} failed: {_http_error(e)}") from None
        if r.status_code != 200:
            hint = " (is the json format enabled in its settings.yml?)" if r.status_code == 403 else ""
            raise ToolError(f"SearXNG at {self._base} answered HTTP {r.status_code}{hint}")
        try:
            data = r.json()
        except ValueError:
            raise ToolError(f"SearXNG at {self._base} did not answer JSON") from None
        results = data.get("results") if isinstance(data, dict) else None
        if not isinstance(results, list):
            raise ToolError(f"SearXNG at {self._base} answered JSON without a results list")
        hits = [
            SearchHit(title=str(r.get("title") or ""), url=str(r["url"]), snippet=str(r.get("content") or ""))
            for r in results
            if isinstance(r, dict) and r.get("url")
        ]
        return hits[:max_results]


# --- fetching pages ----------------------------------------------------------------------------


def _client(transport: httpx.AsyncBaseTransport | None, *, timeout: float = 10.0) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=transport,
        follow_redirects=True,
        max_redirects=MAX_REDIRECTS,
        timeout=httpx.Timeout(timeout, connect=min(timeout, 5.0)),
        headers={"User-Agent": USER_AGENT},
        trust_env=True,
    )


def _http_error(e: httpx.HTTPError) -> str:
    if isinstance(e, httpx.TooManyRedirects):
        return f"too many redirects (more than {MAX_REDIRECTS})"
    if isinstance(e, httpx.TimeoutException):
        return "timed out"
    if isinstance(e, httpx.UnsupportedProtocol):
        return "redirected to a URL that is not http or https"
    return str(e) or type(e).__name__


def check_url(url: str) -> str:
    url = url.strip()
    parts = urlsplit(url)
    if parts.scheme.lower() not in ("http", "https"):
        raise ToolError(f"refused: {url!r} is not an http or https URL")
    if not parts.hostname:
        raise ToolError(f"refused: {url!r} has no host")
    return url


_META_CHARSET = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?\s*([A-Za-z0-9_.:-]+)""", re.IGNORECASE)


def _known(encoding: str | None) -> str | None:
    if not encoding:
        return None
    try:
        return codecs.lookup(encoding.strip().strip("\"'")).name
    except LookupError:
        return None


def decode_body(body: bytes, header_charset: str | None, *, html: bool) -> str:
    """Bytes to text: the header's charset, a BOM, the HTML's <meta>, UTF-8, else a detected one."""
    boms = ((codecs.BOM_UTF8, "utf-8-sig"), (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"))
    for bom, name in boms:
        if body.startswith(bom):
            return body.decode(name, errors="replace")
    encoding = _known(header_charset)
    if encoding is None and html:
        m = _META_CHARSET.search(body[:4096])
        encoding = _known(m.group(1).decode("ascii", "replace")) if m else None
    if encoding is not None:
        return body.decode(encoding, errors="replace")
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError as e:
        if e.start >= len(body) - 3:  # the download cap cut a character in two
            return body.decode("utf-8", errors="ignore")
    try:
        from charset_normalizer import from_bytes

        best = from_bytes(body[:200_000]).best()
        if best is not None and best.encoding:
            return body.decode(best.encoding, errors="replace")
    except ImportError:  # pragma: no cover - comes with trafilatura
        pass
    return body.decode("cp1252", errors="replace")


def _parse_html(html: str) -> Any:
    import lxml.html

    # Bytes with an explicit encoding: a str with an <?xml encoding=...?> declaration is refused by lxml.
    parser = lxml.html.HTMLParser(encoding="utf-8", remove_comments=True)
    try:
        return lxml.html.document_fromstring(html.encode("utf-8", errors="replace"), parser=parser)
    except Exception:  # lxml raises ParserError or ValueError on empty or odd input
        return None


def _plain_text(root: Any) -> str:
    """The page's text minus scripts, styles, navigation and forms: lxml alone, for any page."""
    for el in list(root.iter(*_DROP_TAGS)):
        el.drop_tree()
    body = root.find("body")
    lines = (" ".join(line.split()) for line in (body if body is not None else root).itertext())
    return "\n".join(line for line in lines if line)


def extract_html(html: str, url: str) -> tuple[str, str]:
    """(title, main text) of an HTML page.

    trafilatura's cost grows faster than the page, so a large page gets its fast mode and a huge one
    (a generated listing, a log dump) the plain lxml text: the result is cut at 12 000 characters
    anyway, and the tool must answer in seconds.
    """
    root = _parse_html(html)
    if root is None:
        return "", ""
    title = " ".join((root.findtext(".//title") or "").split())
    for el in list(root.iter("script", "style", "noscript", "template", "svg", "iframe")):
        el.drop_tree()
    elements = sum(1 for _ in root.iter())
    text = ""
    if elements <= _HUGE_PAGE_ELEMENTS:
        import trafilatura

        try:
            doc = trafilatura.bare_extraction(
                root,
                url=url,
                with_metadata=True,
                include_comments=False,
                include_tables=True,
                include_images=False,
                include_links=False,
                favor_recall=elements <= _LARGE_PAGE_ELEMENTS,
                fast=elements > _LARGE_PAGE_ELEMENTS,
            )
        except Exception:  # an extractor failure falls back to the plain text below
            doc = None
        if doc is not None:
            title = str(getattr(doc, "title", "") or "") or title
            text = str(getattr(doc, "text", "") or "")
    if not text.strip():
        fresh = _parse_html(html)  # trafilatura may have pruned the tree it was given
        text = _plain_text(fresh) if fresh is not None else ""
    return title.strip(), text.strip()


def cap(text: str, limit: int) -> tuple[str, bool]:
    if len(text) <= limit:
        return text, False
    cut = text[:limit]
    space = cut.rfind(" ", limit - 200)
    return (cut[:space] if space > 0 else cut) + " [truncated]", True


async def fetch_page(
    client: httpx.AsyncClient,
    url: str,
    *,
    max_chars: int = MAX_PAGE_CHARS,
    max_bytes: int = MAX_DOWNLOAD_BYTES,
) -> dict[str, Any]:
    """``{title, url, content}`` of a page (``url`` is where redirects ended)."""
    url = check_url(url)
    try:
        async with client.stream("GET", url, headers={"Accept": _ACCEPT}) as r:
            final_url = str(r.url)
            if r.status_code >= 400:
                raise ToolError(f"{final_url} answered HTTP {r.status_code} {r.reason_phrase}".strip())
            mime, charset = _content_type(r.headers.get("content-type", ""))
            kind = _kind(mime)
            if kind is None:
                raise ToolError(
                    f"{final_url} is {mime}, not a page read_webpage can read (HTML, plain text or JSON)"
                )
            body = bytearray()
            cut = False
            async for chunk in r.aiter_bytes():  # decoded (gzip…): the cap counts what we keep
                body += chunk
                if len(body) >= max_bytes:
                    del body[max_bytes:]
                    cut = True
                    break
    except httpx.HTTPError as e:
        raise ToolError(f"cannot fetch {url}: {_http_error(e)}") from None

    if kind == "sniff":
        head = bytes(body[:512]).lstrip().lower()
        kind = "html" if head.startswith((b"<!doctype html", b"<html", b"<head", b"<body")) else "text"
        if kind == "text" and b"\x00" in body[:8192]:
            raise ToolError(f"{final_url} has no content type and looks binary; it cannot be read as text")
    text = decode_body(bytes(body), charset, html=kind == "html")
    if kind == "html":
        title, content = await asyncio.to_thread(extract_html, text, final_url)
    elif kind == "json":
        title = ""
        content = _pretty_json(text)
    else:
        title, content = "", text.strip()
    content, truncated = cap(content, max_chars)
    result: dict[str, Any] = {"title": title, "url": final_url, "content": content}
    if truncated or cut:
        result["truncated"] = True
    return result


def _content_type(header: str) -> tuple[str, str | None]:
    mime, _, params = header.partition(";")
    charset = None
    for param in params.split(";"):
        key, _, value = param.partition("=")
        if key.strip().lower() == "charset":
            charset = value.strip().strip("\"'") or None
    return mime.strip().lower(), charset


def _kind(mime: str) -> str | None:
    if not mime:
        return "sniff"
    if mime in _HTML_TYPES:
        return "html"
    if mime == "application/json" or mime.endswith("+json"):
        return "json"
    if (
        mime in _TEXT_TYPES
        or mime.endswith("+xml")
        or (mime.startswith("text/") and mime != "text/event-stream")
    ):
        return "text"
    return None


def _pretty_json(text: str) -> str:
    try:
        return orjson.dumps(orjson.loads(text), option=orjson.OPT_INDENT_2).decode()
    except orjson.JSONDecodeError:
        return text.strip()  # cut by the download cap, or not JSON after all: the text as it is


# --- the tools ---------------------------------------------------------------------------------


def make_backend(settings: WebSettings, **overrides: Any) -> SearchBackend:
    if settings.search_backend == "searxng":
        return SearXNG(settings.searxng_url, transport=overrides.get("transport"))
    return DuckDuckGo(overrides.get("ddgs_factory"))


def make_tools(
    settings: WebSettings,
    *,
    backend: SearchBackend | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
    fetch_timeout_s: float = FETCH_TIMEOUT_S,
) -> list[Tool]:
    """The web tools (none when disabled). ``backend``/``transport`` replace the network in tests."""
    if not settings.enabled:
        return []
    search_backend = backend or make_backend(settings, transport=transport)

    async def _fetch(client: httpx.AsyncClient, url: str, max_chars: int) -> dict[str, Any]:
        try:
            async with asyncio.timeout(fetch_timeout_s):
                return await fetch_page(client, url, max_chars=max_chars)
        except TimeoutError:
            raise ToolError(f"cannot fetch {url}: timed out after {fetch_timeout_s:g} s") from None

    @tool(timeout_s=fetch_timeout_s + 10)
    async def read_webpage(url: str) -> dict[str, Any]:
        """Read a web page: its title and main text (no menus, scripts or ads), up to 12 000 characters.

        Args:
            url: the page's http or https URL
        """
        async with _client(transport, timeout=min(fetch_timeout_s, 15.0)) as client:
            return await _fetch(client, url, MAX_PAGE_CHARS)

    @tool(timeout_s=SEARCH_FETCH_DEADLINE_S + fetch_timeout_s + 30)
    async def web_search(query: str) -> dict[str, Any]:
        """Search the web: the top results (title, URL, snippet), with the text of the first few pages.

        Args:
            query: what to search for
        """
        if not query.strip():
            raise ToolError("the query is empty")
        hits = await search_backend.search(query.strip(), SEARCH_RESULTS)
        results: list[dict[str, Any]] = [
            {"title": h.title, "url": h.url, "snippet": h.snippet, "content": ""} for h in hits
        ]
        targets = [r for r in results if urlsplit(r["url"]).scheme in ("http", "https")][:PAGES_FETCHED]
        if targets:
            async with _client(transport, timeout=min(fetch_timeout_s, 10.0)) as client:
                tasks = [asyncio.create_task(_fetch(client, r["url"], PAGE_CHARS_IN_SEARCH)) for r in targets]
                done, pending = await asyncio.wait(
                    tasks, timeout=min(SEARCH_FETCH_DEADLINE_S, fetch_timeout_s)
                )
                for task in pending:
                    task.cancel()
                await asyncio.gather(*pending, return_exceptions=True)
            budget = SEARCH_CONTENT_CHARS
            for r, task in zip(targets, tasks, strict=True):
                if task not in done or task.cancelled():
                    r["content_error"] = "timed out"
                    continue
                if (exc := task.exception()) is not None:
                    r["content_error"] = str(exc) if isinstance(exc, ToolError) else type(exc).__name__
                    continue
                content, _ = cap(task.result()["content"], min(PAGE_CHARS_IN_SEARCH, budget))
                budget -= len(content)
                r["content"] = content
                if budget <= 0:
                    break
        return {"query": query, "results": results}

    return [web_search, read_webpage]
