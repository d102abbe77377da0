"""Console logins (console/sessions.py): one-time, short-lived tokens; sessions that follow their user."""

from __future__ import annotations

from shoal.console.sessions import MAX_TOKENS, SESSION_IDLE_S, TOKEN_TTL_S, Sessions
from shoal.controlapi import users
from shoal.controlapi.users import Identity
from shoal.models import UserSpec
from shoal.store import MemoryStore, NullBackend


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


LOCAL = Identity(name="local", role="admin", via="unix")


def test_cs_token_is_single_use_and_the_session_keeps_the_identity() -> None:
    s = Sessions()
    token = s.mint(LOCAL, None)
    cookie = s.redeem(token)
    assert cookie is not None and cookie != token
    assert s.redeem(token) is None  # used
    ident = s.identity(cookie, None)
    assert ident is not None and (ident.name, ident.role, ident.via) == ("local", "admin", "console")


def test_cs_token_expires_after_60_s_and_sessions_after_12_h_idle() -> None:
    clock = Clock()
    s = Sessions(clock)
    late = s.mint(LOCAL, None)
    clock.now += TOKEN_TTL_S + 1
    assert s.redeem(late) is None
    cookie = s.redeem(s.mint(LOCAL, None))
    assert cookie is not None
    clock.now += SESSION_IDLE_S - 10
    assert s.identity(cookie, None) is not None  # use keeps it alive ...
    clock.now += SESSION_IDLE_S - 10
    assert s.identity(cookie, None) is not None
    clock.now += SESSION_IDLE_S + 1  # ... idleness ends it
    assert s.identity(cookie, None) is None
    assert len(s) == 0


def test_cs_a_wrong_secret_burns_the_token_and_forged_cookies_fail() -> None:
    s = Sessions()
    token = s.mint(LOCAL, None)
    tid, _, secret = token.partition(".")
    assert s.redeem(f"{tid}.{'x' * len(secret)}") is None
    assert s.redeem(token) is None  # a guess at its id cost the holder the token, not a second try
    cookie = s.redeem(s.mint(LOCAL, None))
    assert cookie is not None
    sid, _, csecret = cookie.partition(".")
    for bad in ("", ".", sid, f"{sid}.", f"{sid}.{csecret[:-1]}", f"x{sid}.{csecret}", token):
        assert s.identity(bad, None) is None, bad
    assert s.identity(cookie, None) is not None  # the real one still works


def test_cs_a_removed_or_demoted_user_loses_the_session() -> None:
    store = MemoryStore(NullBackend())
    users.put(store, UserSpec(Name="ann", Role="operator", Teams=["web", "db"]))
    token, _ = users.create_token(store, "ann")
    ident = users.authenticate_token(store, token)
    assert ident is not None
    s = Sessions()
    cookie = s.redeem(s.mint(ident, store))
    assert cookie is not None
    now = s.identity(cookie, store)
    assert now is not None and now.role == "operator" and now.teams == {"web", "db"}
    users.put(store, UserSpec(Name="ann", Role="viewer", Teams=["web"]))  # demoted: the session follows
    now = s.identity(cookie, store)
    assert now is not None and now.role == "viewer" and now.teams == {"web"}
    users.put(store, UserSpec(Name="ann", Role="admin", Teams=["web"]))  # promoted: never above the minting
    now = s.identity(cookie, store)
    assert now is not None and now.role == "operator"
    users.remove(store, "ann")
    assert s.identity(cookie, store) is None
    users.put(store, UserSpec(Name="ann", Role="admin"))  # a new user of the same name is someone else
    assert s.identity(cookie, store) is None


def test_cs_outstanding_tokens_are_bounded() -> None:
    s = Sessions()
    first = s.mint(LOCAL, None)
    for _ in range(MAX_TOKENS):
        s.mint(LOCAL, None)
    assert s.redeem(first) is None  # the oldest went
