"""Signing in to the web UI without a page ever holding the bearer token.

Two ways in: a one-time link (``/ui/login?nonce=…``, minted for `sorat open` and the tray through a
route that needs the token, valid once for 60 s), or the token typed once into the login page. Either
gives the browser a cookie holding a random browser-session id, never the token. Browser sessions live
in memory only (a restart signs everyone out), expire after 12 h without a request, and are all revoked
when the bearer token changes (`sorat token --rotate`): every check compares the token in force with the
one the sessions were opened under, so no hook in the token watcher is needed.

Only hashes of nonces and session ids are kept, so a dict lookup never compares secrets byte by byte.
Methods are called from the server's loop and, for ``mint``, from the tray's thread: one lock guards
the state.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from collections.abc import Callable

LINK_TTL_S = 60.0
IDLE_S = 12 * 3600.0
MAX_NONCES = 64  # unused links kept at once; minting more drops the oldest
MAX_SESSIONS = 256  # open browser sessions; more drops the least recently used


def _digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode("utf-8", "replace")).digest()


class SignIn:
    """One-time links and browser sessions of one daemon. ``token`` is read on every call."""

    def __init__(self, token: Callable[[], str], clock: Callable[[], float] = time.monotonic) -> None:
        self._token = token
        self._clock = clock
        self._lock = threading.Lock()
        self._under = token()  # the token the current links and sessions belong to
        self._nonces: dict[bytes, float] = {}  # digest → expiry
        self._sessions: dict[bytes, float] = {}  # digest → last use

    def _revoke_if_rotated(self) -> None:
        token = self._token()
        if token != self._under:
            self._under = token
            self._nonces.clear()
            self._sessions.clear()

    def mint(self) -> str:
        """A new one-time nonce, valid for ``LINK_TTL_S``."""
        nonce = secrets.token_urlsafe(32)
        with self._lock:
            self._revoke_if_rotated()
            now = self._clock()
            self._nonces = {d: t for d, t in self._nonces.items() if t > now}
            while len(self._nonces) >= MAX_NONCES:
                del self._nonces[next(iter(self._nonces))]
            self._nonces[_digest(nonce)] = now + LINK_TTL_S
        return nonce

    def redeem(self, nonce: str) -> str | None:
        """A new browser-session id for a valid unused nonce (which is then spent), else None."""
        with self._lock:
            self._revoke_if_rotated()
            expiry = self._nonces.pop(_digest(nonce), None)
            if expiry is None or expiry <= self._clock():
                return None
            return self._open()

    def with_token(self, token: str) -> str | None:
        """A new browser-session id for the right bearer token, else None."""
        with self._lock:
            self._revoke_if_rotated()
            if not hmac.compare_digest(token.strip().encode(), self._under.encode()):
                return None
            return self._open()

    def _open(self) -> str:
        sid = secrets.token_urlsafe(32)
        now = self._clock()
        self._sessions = {d: t for d, t in self._sessions.items() if now - t < IDLE_S}
        while len(self._sessions) >= MAX_SESSIONS:
            del self._sessions[min(self._sessions, key=self._sessions.__getitem__)]
        self._sessions[_digest(sid)] = now
        return sid

    def check(self, sid: str | None) -> bool:
        """Whether ``sid`` is an open browser session; a valid one counts as used now."""
        if not sid:
            return False
        with self._lock:
            self._revoke_if_rotated()
            digest = _digest(sid)
            last = self._sessions.get(digest)
            now = self._clock()
            if last is None:
                return False
            if now - last >= IDLE_S:
                del self._sessions[digest]
                return False
            self._sessions[digest] = now
            return True

    def close(self, sid: str | None) -> None:
        """Signs one browser session out."""
        if sid:
            with self._lock:
                self._sessions.pop(_digest(sid), None)
