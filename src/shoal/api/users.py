"""``/shoal/users``, ``/shoal/whoami`` and ``/shoal/audit``: API users, their tokens and
certificates, and the audit log (admins only, but ``whoami``; see api/auth.py)."""

from __future__ import annotations

from typing import Any

import msgspec
from aiohttp import web

from shoal.api.auth import SECURITY, identity
from shoal.api.common import decode_body, empty_response, json_response, swarm_manager
from shoal.controlapi import users as ops
from shoal.errors import InvalidArgument, Unavailable
from shoal.models import ApiToken, User, UserSpec


class TokenRequest(msgspec.Struct, forbid_unknown_fields=True):
    Description: str = ""
    Teams: list[str] | None = None
    Role: str = ""


class CertRequest(msgspec.Struct, forbid_unknown_fields=True):
    CSR: str


def _shown(user: User) -> User:
    """A user as the API shows it: tokens without their hashes."""
    tokens = [msgspec.structs.replace(t, Hash="") for t in user.Tokens or []] or None
    return msgspec.structs.replace(user, Tokens=tokens)


async def list_users(request: web.Request) -> web.Response:
    manager = swarm_manager(request)
    return json_response([_shown(u) for u in ops.list_users(manager.store)])


async def put_user(request: web.Request) -> web.Response:
    """Create a user or set its role and teams (201 when created)."""
    manager = swarm_manager(request)
    spec = await decode_body(request, UserSpec)
    user, created = ops.put(manager.store, spec)
    return json_response(_shown(user), status=201 if created else 200)


async def inspect_user(request: web.Request) -> web.Response:
    manager = swarm_manager(request)
    return json_response(_shown(ops.get(manager.store, request.match_info["name"])))


async def remove_user(request: web.Request) -> web.Response:
    manager = swarm_manager(request)
    ops.remove(manager.store, request.match_info["name"])
    return empty_response(204)


async def create_token(request: web.Request) -> web.Response:
    manager = swarm_manager(request)
    body = await request.read()
    req = await decode_body(request, TokenRequest) if body.strip() else TokenRequest()
    token, record = ops.create_token(manager.store, request.match_info["name"], req.Description, req.Teams, req.Role)
    shown: ApiToken = msgspec.structs.replace(record, Hash="")
    return json_response({"ID": record.ID, "Token": token, "Record": shown}, status=201)


async def revoke_token(request: web.Request) -> web.Response:
    manager = swarm_manager(request)
    ops.revoke_token(manager.store, request.match_info["name"], request.match_info["id"])
    return empty_response(204)


async def issue_cert(request: web.Request) -> web.Response:
    """Sign a client certificate for an existing user from the CSR it made (its key never travels).
    The answer carries the CA that verifies this daemon's TLS certificate, for the client's ca.pem."""
    manager = swarm_manager(request)
    user = ops.get(manager.store, request.match_info["name"])
    req = await decode_body(request, CertRequest)
    ca = getattr(manager, "ca", None)
    if ca is None:
        raise Unavailable("this manager cannot sign certificates now (it does not lead the swarm)")
    cert = ca.sign_user_csr(req.CSR, user.Spec.Name, user.ID)
    sec = request.app[SECURITY]
    server_ca = sec.tls.server_ca_pem if sec.tls is not None else ""
    return json_response({"Cert": cert, "CA": server_ca, "ClusterCA": ca.root_pem}, status=201)


async def whoami(request: web.Request) -> web.Response:
    ident = identity(request)
    return json_response({"Name": ident.name, "Role": ident.role, "Teams": sorted(ident.teams), "Via": ident.via})


async def audit(request: web.Request) -> web.Response:
    sec = request.app[SECURITY]
    if sec.audit is None:
        raise Unavailable("this daemon keeps no audit log (it serves only its unix socket to in-process clients)")
    try:
        limit = int(request.query.get("limit", "100"))
    except ValueError:
        raise InvalidArgument("limit must be a number") from None
    if not 0 < limit <= 10_000:
        raise InvalidArgument("limit must be between 1 and 10000")
    entries: list[dict[str, Any]] = sec.audit.tail(limit, request.query.get("user", ""))
    return json_response(entries)


ROUTES: list[tuple[str, str, Any]] = [
    ("GET", "/shoal/users", list_users),
    ("POST", "/shoal/users", put_user),
    ("GET", "/shoal/users/{name}", inspect_user),
    ("DELETE", "/shoal/users/{name}", remove_user),
    ("POST", "/shoal/users/{name}/tokens", create_token),
    ("DELETE", "/shoal/users/{name}/tokens/{id}", revoke_token),
    ("POST", "/shoal/users/{name}/cert", issue_cert),
    ("GET", "/shoal/whoami", whoami),
    ("GET", "/shoal/audit", audit),
]
