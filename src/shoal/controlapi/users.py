"""Users of the API, their roles and teams, and their API tokens.

A user is known by name: the CN of a user certificate the cluster CA issued (``shoal user cert``)
or the owner of an API token (``Authorization: Bearer shoal_<id>_<secret>``). Roles, from most to
least: ``admin`` (everything), ``operator`` (deploy, scale, update and remove what belongs to the
teams granted: the ``shoal.team`` label), ``viewer`` (read only; no secrets; logs only of its
teams' services). Tokens are random 256-bit secrets; the store keeps only their SHA-256, so a copy
of the store does not let anyone in.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

import msgspec

from shoal.errors import Conflict, InvalidArgument, NotFound
from shoal.ids import new_id
from shoal.models import ApiToken, User, UserSpec, Version
from shoal.store import MemoryStore

ADMIN, OPERATOR, VIEWER = "admin", "operator", "viewer"
ROLES = (ADMIN, OPERATOR, VIEWER)  # most to least
TEAM_LABEL = "shoal.team"  # the team (namespace) a service, stack, network, secret or config belongs to
MAX_TOKENS = 32  # per user: enough for a few CI jobs and consoles, few enough to audit
TOKEN_PREFIX = "shoal_"

_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.@-]{0,63}$")
_TEAM = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,62}$")


@dataclass(frozen=True)
class Identity:
    """Who is calling, as the API's authorization sees it."""

    name: str
    role: str
    teams: frozenset[str] = frozenset()
    via: str = ""  # unix, cert, operator-cert, token, anonymous, forwarded

    @property
    def is_admin(self) -> bool:
        return self.role == ADMIN

    def can_write(self, team: str | None) -> bool:
        """May this caller create or change something of ``team`` (None: no team label)?"""
        if self.role == ADMIN:
            return True
        return self.role == OPERATOR and team is not None and team in self.teams

    def can_read_logs(self, team: str | None) -> bool:
        return self.role == ADMIN or (team is not None and team in self.teams)


def weaker(a: str, b: str) -> str:
    """The lesser of two roles."""
    return a if ROLES.index(a) >= ROLES.index(b) else b


def check_role(role: str) -> str:
    if role not in ROLES:
        raise InvalidArgument(f"invalid role {role!r}: must be one of {', '.join(ROLES)}")
    return role


def check_teams(teams: list[str] | None) -> list[str] | None:
    if teams is None:
        return None
    for t in teams:
        if not _TEAM.match(t):
            raise InvalidArgument(f"invalid team name {t!r}: lowercase letters, digits, '_', '.' and '-', "
                                  "starting with a letter or digit (at most 63 characters)")
    return sorted(set(teams))


def check_name(name: str) -> None:
    if not _NAME.match(name or ""):
        raise InvalidArgument(f"invalid user name {name!r}: letters, digits, '_', '.', '@' and '-', "
                              "starting with a letter or digit (at most 64 characters)")


def find(store: MemoryStore, name: str) -> User | None:
    # Users are few (tens): a scan costs less than an index kept in sync.
    for u in store.list("user"):
        if u.Spec.Name == name:
            return u
    return None


def get(store: MemoryStore, name: str) -> User:
    user = find(store, name)
    if user is None:
        raise NotFound(f"user {name} not found")
    return user


def list_users(store: MemoryStore) -> list[User]:
    return sorted(store.list("user"), key=lambda u: u.Spec.Name)


def put(store: MemoryStore, spec: UserSpec) -> tuple[User, bool]:
    """Create the user, or set its role and teams: (user, created). Checked before any write."""
    check_name(spec.Name)
    spec = msgspec.structs.replace(spec, Role=check_role(spec.Role), Teams=check_teams(spec.Teams))
    cur = find(store, spec.Name)
    with store.tx() as tx:
        if cur is None:
            user = User(ID=new_id(), Version=Version(), CreatedAt="", UpdatedAt="", Spec=spec)
            tx.create("user", user)
            return user, True
        user = msgspec.structs.replace(cur, Spec=spec)
        tx.update("user", user)
        return user, False


def remove(store: MemoryStore, name: str) -> None:
    """The user goes, and with it every token; certificates it holds stop working at once (they
    name a user that no longer exists)."""
    user = get(store, name)
    with store.tx() as tx:
        tx.delete("user", user.ID)


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def create_token(store: MemoryStore, name: str, description: str = "", teams: list[str] | None = None,
                 role: str = "") -> tuple[str, ApiToken]:
    """A new token for ``name``: (the token, shown only now; its record)."""
    user = get(store, name)
    if role:
        check_role(role)
    teams = check_teams(teams)
    tokens = list(user.Tokens or [])
    if len(tokens) >= MAX_TOKENS:
        raise Conflict(f"user {name} already has {MAX_TOKENS} tokens: revoke one first")
    token_id = new_id()[:12]
    secret = secrets.token_urlsafe(32)
    record = ApiToken(ID=token_id, Hash=_digest(secret), Description=description[:200], Teams=teams, Role=role)
    with store.tx() as tx:
        tx.update("user", msgspec.structs.replace(user, Tokens=[*tokens, record]))
    return f"{TOKEN_PREFIX}{token_id}_{secret}", record


def revoke_token(store: MemoryStore, name: str, token_id: str) -> None:
    user = get(store, name)
    tokens = [t for t in user.Tokens or [] if t.ID != token_id]
    if len(tokens) == len(user.Tokens or []):
        raise NotFound(f"user {name} has no token {token_id}")
    with store.tx() as tx:
        tx.update("user", msgspec.structs.replace(user, Tokens=tokens or None))


def identity_of_user(user: User, via: str, token: ApiToken | None = None) -> Identity:
    role = user.Spec.Role
    teams = frozenset(user.Spec.Teams or ())
    if token is not None:
        if token.Role:
            role = weaker(role, token.Role)
        if token.Teams is not None:
            teams = teams & frozenset(token.Teams)
    return Identity(name=user.Spec.Name, role=role, teams=teams, via=via)


def authenticate_token(store: MemoryStore, token: str) -> Identity | None:
    """The identity an API token stands for, or None (unknown, revoked, or malformed)."""
    if not token.startswith(TOKEN_PREFIX):
        return None
    token_id, sep, secret = token.removeprefix(TOKEN_PREFIX).partition("_")
    if not sep or not secret:
        return None
    digest = _digest(secret)
    for user in store.list("user"):
        for t in user.Tokens or ():
            if t.ID == token_id and hmac.compare_digest(t.Hash, digest):
                return identity_of_user(user, "token", t)
    return None


def team_of(labels: dict[str, str] | None) -> str | None:
    return (labels or {}).get(TEAM_LABEL) or None
