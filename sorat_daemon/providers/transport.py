"""The HTTP underneath every provider: one pooled aiohttp session (``Http``), TLS verification as httpx
did it (``tls_context``), the environment's proxies (``route``) and ``Retry-After`` (``retry_after``).
"""

from __future__ import annotations

import contextlib
import email.utils
import functools
import os
import ssl
import time
from collections.abc import Mapping
from typing import Any

import aiohttp
import certifi
from aiohttp.helpers import get_env_proxy_for_url
from yarl import URL


class Http:
    """The one pooled aiohttp session of every provider, made inside the running loop on first use."""

    def __init__(self) -> None:
        self._session: aiohttp.ClientSession | None = None

    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=1000, keepalive_timeout=30),
                cookie_jar=aiohttp.DummyCookieJar(),
                auto_decompress=True,
            )
        return self._session

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


@functools.cache
def tls_context() -> ssl.SSLContext:
    """Verification as httpx did it: SSL_CERT_FILE or SSL_CERT_DIR when set, else certifi's bundle. Made on
    the first https request (it costs ~25 ms), then shared."""
    if os.environ.get("SSL_CERT_FILE"):
        context = ssl.create_default_context(cafile=os.environ["SSL_CERT_FILE"])
    elif os.environ.get("SSL_CERT_DIR"):
        context = ssl.create_default_context(capath=os.environ["SSL_CERT_DIR"])
    else:
        context = ssl.create_default_context(cafile=certifi.where())
    context.set_alpn_protocols(["http/1.1"])
    return context


def route(base_url: str) -> dict[str, Any]:
    """The request arguments for ``base_url``: the TLS context (https only) and the environment's proxy
    (HTTP(S)_PROXY, NO_PROXY). The session does not ``trust_env``: aiohttp would then look both up in
    threads on every request, and a ~/.netrc entry for the host would clash with the API key."""
    url = URL(base_url)
    out: dict[str, Any] = {"ssl": tls_context()} if url.scheme == "https" else {}
    with contextlib.suppress(LookupError):
        out["proxy"], out["proxy_auth"] = get_env_proxy_for_url(url)
    return out


def retry_after(headers: Mapping[str, str]) -> float | None:
    """The seconds a 429 or 503 asks to wait (``retry-after-ms``, or ``Retry-After`` in seconds or as an
    HTTP date), or None."""
    ms = headers.get("retry-after-ms")
    if ms:
        with contextlib.suppress(ValueError):
            return max(0.0, float(ms) / 1000)
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())
