"""ui/signin.py: one-time links and browser sessions, on a fake clock."""

from __future__ import annotations

import threading

import pytest

from sorat_daemon.ui.signin import IDLE_S, LINK_TTL_S, MAX_NONCES, SignIn


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def token() -> list[str]:
    return ["t" * 43]


@pytest.fixture
def signin(clock: Clock, token: list[str]) -> SignIn:
    return SignIn(lambda: token[0], clock)


def test_a_link_signs_in_once(signin: SignIn) -> None:
    nonce = signin.mint()
    assert len(nonce) >= 40
    sid = signin.redeem(nonce)
    assert sid is not None and sid != nonce
    assert signin.check(sid)
    assert signin.redeem(nonce) is None  # spent
    assert not signin.check(nonce)  # a nonce is no browser session
    assert signin.redeem("made-up") is None


def test_a_link_expires_after_a_minute(signin: SignIn, clock: Clock) -> None:
    early, late = signin.mint(), signin.mint()
    clock.now += LINK_TTL_S - 1
    assert signin.redeem(early) is not None
    clock.now += 2
    assert signin.redeem(late) is None


def test_unused_links_are_bounded(signin: SignIn) -> None:
    nonces = [signin.mint() for _ in range(MAX_NONCES + 5)]
    assert signin.redeem(nonces[0]) is None  # the oldest went
    assert signin.redeem(nonces[-1]) is not None


def test_the_token_typed_once(signin: SignIn, token: list[str]) -> None:
    assert signin.with_token("wrong") is None
    assert signin.with_token("") is None
    sid = signin.with_token(f" {token[0]}\n")
    assert sid is not None and signin.check(sid)


def test_sessions_expire_after_12_hours_idle(signin: SignIn, clock: Clock) -> None:
    sid = signin.redeem(signin.mint())
    clock.now += IDLE_S - 10
    assert signin.check(sid)  # used: the idle time starts again
    clock.now += IDLE_S - 10
    assert signin.check(sid)
    clock.now += IDLE_S
    assert not signin.check(sid)
    assert not signin.check(sid)


def test_a_new_token_revokes_everything(signin: SignIn, token: list[str]) -> None:
    a = signin.redeem(signin.mint())
    b = signin.with_token(token[0])
    pending = signin.mint()
    token[0] = "n" * 43  # `sorat token --rotate`
    assert not signin.check(a) and not signin.check(b)
    assert signin.redeem(pending) is None
    assert signin.with_token("t" * 43) is None
    c = signin.with_token("n" * 43)
    assert signin.check(c)


def test_sign_out(signin: SignIn) -> None:
    a, b = signin.redeem(signin.mint()), signin.redeem(signin.mint())
    signin.close(a)
    assert not signin.check(a) and signin.check(b)
    signin.close(None)
    assert not signin.check(None) and not signin.check("")


def test_links_minted_from_another_thread(signin: SignIn) -> None:
    """The tray's thread mints while the loop checks."""
    nonces: list[str] = []
    threads = [threading.Thread(target=lambda: nonces.append(signin.mint())) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(nonces)) == 20
    assert all(signin.redeem(n) is not None for n in nonces)
