"""What every request must pass before anything reads its body: Host (DNS rebinding), Origin (pages in the
user's browser), the bearer token (constant-time), the body size; and the CORS headers an answer gets."""

from __future__ import annotations

import hmac
from collections.abc import Callable, Sequence

from sorat_daemon.errors import AuthError, PayloadTooLarge, PermissionDenied

MAX_BODY = 16 * 1024 * 1024
LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "[::1]"})
CORS_ALLOW_HEADERS = "Authorization, Content-Type, X-Session-ID, X-Sorat-Tool-Events"
ANTHROPIC_ALLOW_HEADERS = CORS_ALLOW_HEADERS + ", x-api-key, anthropic-version, anthropic-beta"


def host_name(host: str) -> str:
    """``Host`` without its port, lower-cased: ``[::1]:8080`` → ``[::1]``."""
    host = host.strip().lower()
    if host.startswith("["):
        end = host.find("]")
        port = host[end + 1 :] if end > 0 else "x"
        if port and not (port[0] == ":" and port[1:].isdigit()):
            return ""  # "[::1]evil.com" is not [::1]
        return host[: end + 1]
    name, sep, port = host.rpartition(":")
    return name if sep and port.isdigit() else host


def target_host(target: bytes, host: str) -> str:
    """The host a request names: an absolute-form target's authority, else the ``Host`` header."""
    if target.startswith(b"/"):
        return host
    parts = target.split(b"/", 3)
    return parts[2].decode("latin-1") if len(parts) > 2 and parts[0].endswith(b":") else ""


def bearer(auths: Sequence[str]) -> str | None:
    """The token of a single ``Authorization: Bearer`` header, else None."""
    scheme, _, token = (auths[0] if len(auths) == 1 else "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" else None


class Guard:
    """One definition for the Quart routes and the protocol endpoints' fast path. ``token`` is read on
    every check, so a rotated token applies at once."""

    def __init__(
        self, token: Callable[[], str], allowed_hosts: Sequence[str], allowed_origins: Sequence[str]
    ) -> None:
        self._token = token
        self.allowed_hosts = LOCAL_HOSTS | set(allowed_hosts)
        self.allowed_origins = frozenset(allowed_origins)

    def check_host(self, target: bytes, host: str) -> None:
        host = target_host(target, host)
        allowed = self.allowed_hosts
        if host_name(host) not in allowed and host.strip().lower() not in allowed:
            raise PermissionDenied(
                "Host header not allowed; add it to [server] allowed_hosts in config.toml to accept it"
            )

    def check(
        self,
        method: str,
        path: str,
        target: bytes,
        host: str,
        origins: Sequence[str],
        auths: Sequence[str],
        length: int | None,
        api_key: str | None = None,
    ) -> bool:
        """Raises the request's SoratError; True for a CORS preflight (answered 204 without a token).
        ``api_key``: an ``x-api-key`` header, which the Anthropic routes take instead of a bearer token."""
        self.check_host(target, host)
        if len(origins) > 1 or (origins and origins[0] not in self.allowed_origins):
            raise PermissionDenied(
                "Origin not allowed; add it to [server] allowed_origins in config.toml to accept it"
            )
        if method == "OPTIONS":  # a CORS preflight, on any path: browsers send it without a token
            return True
        if path == "/health":
            return False
        token = bearer(auths)
        if token is None and not auths and api_key is not None:
            token = api_key.strip()
        if token is None or not hmac.compare_digest(token.encode(), self._token().encode()):
            raise AuthError("Invalid or missing bearer token; run `sorat token` to print it")
        if length is not None and length > MAX_BODY:
            raise PayloadTooLarge("Request body larger than 16 MiB")
        return False

    def cors(self, origin: str | None, method: str, path: str = "") -> list[tuple[str, str]]:
        """The CORS headers for an answer to ``origin`` (none unless it is allowed)."""
        if origin is None or origin not in self.allowed_origins:
            return []
        headers = [
            ("Access-Control-Allow-Origin", origin),
            ("Vary", "Origin"),
            ("Access-Control-Expose-Headers", "X-Session-ID"),
        ]
        if method == "OPTIONS":
            allow = ANTHROPIC_ALLOW_HEADERS if path.startswith("/v1/messages") else CORS_ALLOW_HEADERS
            headers += [
                ("Access-Control-Allow-Methods", "GET, POST, DELETE, OPTIONS"),
                ("Access-Control-Allow-Headers", allow),
                ("Access-Control-Max-Age", "600"),
            ]
        return headers
