"""providers.transport: Retry-After, TLS and the environment's proxies."""

from __future__ import annotations

import email.utils
import ssl
import time

import pytest
from multidict import CIMultiDict

from sorat_daemon.providers.transport import retry_after, route, tls_context

pytest_plugins = ["tests.provider_fixtures"]  # _server, up, client, env


def test_retry_after_parsing() -> None:
    soon = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert retry_after(CIMultiDict({"Retry-After": "2"})) == 2
    assert 25 < (retry_after(CIMultiDict({"retry-after": soon})) or 0) <= 30
    assert retry_after(CIMultiDict({"Retry-After-Ms": "1500", "Retry-After": "9"})) == 1.5
    assert retry_after(CIMultiDict({"retry-after": "soon-ish"})) is None
    assert retry_after(CIMultiDict()) is None


def test_tls_only_for_https_and_verified(env: pytest.MonkeyPatch) -> None:
    assert route("http://127.0.0.1:11434/v1") == {}
    tls_context.cache_clear()
    try:
        env.setenv("SSL_CERT_FILE", "/nonexistent/ca.pem")
        with pytest.raises(FileNotFoundError):
            tls_context()
        env.delenv("SSL_CERT_FILE")
        env.delenv("SSL_CERT_DIR", raising=False)
        tls = route("https://api.example.com/v1")["ssl"]  # certifi's bundle
        assert isinstance(tls, ssl.SSLContext) and tls.verify_mode == ssl.CERT_REQUIRED and tls.check_hostname
        assert tls.cert_store_stats()["x509_ca"] > 50
    finally:
        tls_context.cache_clear()


def test_route_takes_the_environments_proxy(env: pytest.MonkeyPatch) -> None:
    env.setenv("HTTP_PROXY", "http://user:pw@proxy.local:3128")
    r = route("http://provider.invalid/v1")
    assert str(r["proxy"]) == "http://proxy.local:3128" and r["proxy_auth"].login == "user"
    assert "ssl" not in r
    env.setenv("NO_PROXY", "provider.invalid")
    assert route("http://provider.invalid/v1") == {}
