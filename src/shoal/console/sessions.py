"""Console logins: one-time tokens swapped for a browser session cookie (Jupyter's way).

``POST /shoal/console/tokens`` mints a token for the caller's identity; ``GET /console/login?token=``
swaps it for the ``shoal_console`` cookie. Both live in this manager's memory only: a token is a
credential in a URL, so it is single-use and short-lived (60 s), and a session ends after 12 h idle,
with the daemon, or as soon as the user it stands for is removed or changed (re-checked against the
store on every request). Secrets are compared with ``hmac.compare_digest``; look-ups are by a
public id half, so a comparison never walks every session.
"""

from __future__ import annotations

import hmac
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, replace

from shoal.controlapi import users
from shoal.controlapi.users import Identity
from shoal.store import MemoryStore

TOKEN_TTL_S = 60.0
SESSION_IDLE_S = 12 * 3600.0
MAX_TOKENS = 256  # outstanding at once: a script minting in a loop cannot fill the manager's memory
MAX_SESSIONS = 4096  # the oldest-used session goes first past this
VIA = "console"  # what the audit log's "via" says of requests made with a session


@dataclass
class _Grant:
    secret: str
    identity: Identity
    user_id: str  # the store user it stands for ("" for the local admin, an operator cert, anonymous)
    expires: float  # monotonic


def _split(value: str) -> tuple[str, str]:
    sid, dot, secret = value.partition(".")
    return (sid, secret) if dot and sid and secret else ("", "")


class Sessions:
    """The tokens and sessions of one manager's console."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._tokens: OrderedDict[str, _Grant] = OrderedDict()
        self._sessions: OrderedDict[str, _Grant] = OrderedDict()

    def __len__(self) -> int:
        return len(self._sessions)

    def mint(self, ident: Identity, store: MemoryStore | None) -> str:
        """A one-time login token (``<id>.<secret>``) for ``ident``, valid :data:`TOKEN_TTL_S`."""
        self._expire(self._tokens)
        while len(self._tokens) >= MAX_TOKENS:
            self._tokens.popitem(last=False)
        # Only these name a store user; the local admin, an operator's certificate and anonymous do not.
        user = users.find(store, ident.name) if store is not None and ident.via in ("token", "cert") else None
        tid, secret = secrets.token_urlsafe(9), secrets.token_urlsafe(32)
        base = replace(ident, via=VIA)
        self._tokens[tid] = _Grant(secret, base, user.ID if user is not None else "", self._clock() + TOKEN_TTL_S)
        return f"{tid}.{secret}"

    def redeem(self, token: str) -> str | None:
        """Swap a token for a session cookie value; None if unknown, used, expired or wrong. A token
        whose secret does not match is dropped too: a guess costs the real holder the token, never
        a second try at it."""
        tid, secret = _split(token)
        grant = self._tokens.pop(tid, None) if tid else None
        if grant is None or grant.expires < self._clock() or not hmac.compare_digest(grant.secret, secret):
            return None
        self._expire(self._sessions)
        while len(self._sessions) >= MAX_SESSIONS:
            self._sessions.popitem(last=False)
        sid, ssecret = secrets.token_urlsafe(9), secrets.token_urlsafe(32)
        self._sessions[sid] = _Grant(ssecret, grant.identity, grant.user_id, self._clock() + SESSION_IDLE_S)
        return f"{sid}.{ssecret}"

    def identity(self, cookie: str, store: MemoryStore | None) -> Identity | None:
        """Who a session cookie stands for now, or None (unknown, expired, or its user is gone).
        A store user's role and teams are re-read: the session never has more than the user has
        now, nor more than the credential it was minted with."""
        sid, secret = _split(cookie)
        grant = self._sessions.get(sid) if sid else None
        if grant is None or not hmac.compare_digest(grant.secret, secret):
            return None
        now = self._clock()
        if grant.expires < now:
            del self._sessions[sid]
            return None
        ident = grant.identity
        if grant.user_id:
            user = users.find(store, ident.name) if store is not None else None
            if user is None or user.ID != grant.user_id:
                del self._sessions[sid]  # removed (or removed and made again): the session ends
                return None
            role = users.weaker(ident.role, user.Spec.Role)
            ident = replace(ident, role=role, teams=ident.teams & frozenset(user.Spec.Teams or ()))
        grant.expires = now + SESSION_IDLE_S
        self._sessions.move_to_end(sid)
        return ident

    def end(self, cookie: str) -> None:
        sid, secret = _split(cookie)
        grant = self._sessions.get(sid) if sid else None
        if grant is not None and hmac.compare_digest(grant.secret, secret):
            del self._sessions[sid]

    def _expire(self, table: OrderedDict[str, _Grant]) -> None:
        now = self._clock()
        for key in [k for k, g in table.items() if g.expires < now]:
            del table[key]
