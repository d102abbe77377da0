"""Who is calling (authentication), may they (authorization), and what they did (the audit log).

Identity, in order (docs/security.md has the threat model):

1. ``Authorization: Bearer shoal_<id>_<secret>``: the token's user, narrowed to the token's scope.
   A token that does not match is refused (401) rather than ignored, so a revoked token never
   silently falls back to a stronger identity.
2. A TLS client certificate: from the operator's ``--tlscacert`` → an admin named by its CN (what
   dockerd grants such a certificate); from the cluster's root with OU ``shoal-user`` and this
   cluster's ID → that user, with the role the store gives it now (removing the user revokes the
   certificate). A node's certificate is refused: nodes have no business on the API.
3. The web console's session cookie (``shoal_console``, from ``shoal console --url``'s one-time
   token; console/sessions.py): the identity that minted the token, re-checked against the store.
   A write with it must carry ``X-Shoal-Console: 1`` (a page of another site cannot set it), or 403.
4. The unix socket: the local admin (opening it needs root or the socket's group, as Docker's).
5. Anything else (plain TCP with ``--insecure-tcp``, or TLS without a client certificate):
   ``Security.anonymous``, which is admin only under ``--insecure-tcp`` and for an app built
   without a Security (the tests' in-process clients).

Authorization is a table from route to rule (:data:`RULES`); a route it does not name is for
admins only, so a new route is safe until someone decides otherwise. Every write, and every
refused call, is written to the audit log.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from aiohttp import web
from cryptography import x509
from cryptography.exceptions import InvalidSignature

from shoal.api.common import MANAGER, ManagerAPI
from shoal.api.forward import FORWARDED_USER
from shoal.api.tls import ServerTLS
from shoal.ca.certs import USER_OU, split_pem, subject_fields
from shoal.controlapi import networks as network_ops
from shoal.controlapi import secrets as secret_ops
from shoal.controlapi import stacks as stack_ops
from shoal.controlapi import users
from shoal.controlapi.resolve import get_service, get_task
from shoal.controlapi.users import ADMIN, OPERATOR, Identity
from shoal.errors import Forbidden, ShoalError, Unauthorized
from shoal.store import MemoryStore

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

USER_KEY: web.RequestKey[str] = web.RequestKey("shoal.user", str)  # the caller's name (stream caps read it)
IDENTITY_KEY: web.RequestKey[Identity] = web.RequestKey("shoal.identity", Identity)

LOCAL_ADMIN = Identity(name="local", role=ADMIN, via="unix")
ANONYMOUS_ADMIN = Identity(name="anonymous", role=ADMIN, via="anonymous")


class _PrivateRotatingFileHandler(logging.handlers.RotatingFileHandler):
    """Opens (and, after each rotation, creates) the log file 0600, whatever the process umask."""

    def _open(self) -> Any:
        fd = os.open(self.baseFilename, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        return open(fd, "a", encoding=self.encoding, errors=self.errors)


class AuditLog:
    """JSON lines, one per write or refused call, in a 0600 file rotated at 10 MiB (5 kept)."""

    MAX_BYTES = 10 * 1024 * 1024
    BACKUPS = 5

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        os.close(fd)
        os.chmod(path, 0o600)
        self._logger = logging.getLogger(f"shoal.audit.{id(self)}")
        self._logger.propagate = False
        self._logger.setLevel(logging.INFO)
        self._handler = _PrivateRotatingFileHandler(path, maxBytes=self.MAX_BYTES, backupCount=self.BACKUPS)
        self._handler.setFormatter(logging.Formatter("%(message)s"))
        self._logger.addHandler(self._handler)

    def record(self, entry: dict[str, Any]) -> None:
        self._logger.info(json.dumps(entry, separators=(",", ":"), sort_keys=True))

    def tail(self, limit: int = 100, user: str = "") -> list[dict[str, Any]]:
        """The last ``limit`` entries (of ``user`` if given), oldest first, from the current file."""
        try:
            lines = self.path.read_text().splitlines()
        except FileNotFoundError:
            return []
        out: list[dict[str, Any]] = []
        for line in reversed(lines):
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if user and entry.get("user") != user:
                continue
            out.append(entry)
            if len(out) >= limit:
                break
        return list(reversed(out))

    def close(self) -> None:
        self._logger.removeHandler(self._handler)
        self._handler.close()


@dataclass
class Security:
    """What the API's authentication needs to know about how the daemon listens."""

    tls: ServerTLS | None = None
    anonymous: Identity | None = ANONYMOUS_ADMIN
    audit: AuditLog | None = None
    forward_sock: Path | None = None  # the leader's replay socket: its requests were authorized already


SECURITY: web.AppKey[Security] = web.AppKey("security")

CONSOLE_COOKIE = "shoal_console"
CONSOLE_HEADER = "X-Shoal-Console"  # the CSRF guard a cookie-authenticated write must carry


class ConsoleSessions(Protocol):
    """What authentication needs of the console's sessions (console/sessions.py sits above the API)."""

    def identity(self, cookie: str, store: MemoryStore | None) -> Identity | None: ...


# Set by the console (console/api.py ``install``) on the daemon's app; absent, cookies mean nothing.
CONSOLE_SESSIONS: web.AppKey[ConsoleSessions] = web.AppKey("shoal.console_sessions", ConsoleSessions)


# ---------------------------------------------------------------------------- authentication


def _load_certs(pem: str) -> list[x509.Certificate]:
    return [x509.load_pem_x509_certificate(p.encode()) for p in split_pem(pem)]


def _issued_by(cert: x509.Certificate, roots: list[x509.Certificate]) -> bool:
    for root in roots:
        try:
            cert.verify_directly_issued_by(root)
            return True
        except (ValueError, TypeError, InvalidSignature):
            continue
    return False


def _cert_identity(der: bytes, sec: Security, manager: ManagerAPI) -> Identity:
    cert = x509.load_der_x509_certificate(der)
    cn, ou, org, uid = subject_fields(cert)
    if sec.tls is not None and sec.tls.operator_ca_pem and _issued_by(cert, _load_certs(sec.tls.operator_ca_pem)):
        return Identity(name=cn or "operator", role=ADMIN, via="operator-cert")
    cluster = manager.store.cluster() if manager.in_swarm else None
    root_pem = cluster.TLSInfo.TrustRoot if cluster is not None and cluster.TLSInfo else ""
    if not root_pem or not _issued_by(cert, _load_certs(root_pem)):
        raise Unauthorized("the client certificate is not one this swarm issued to a user (its CA is not trusted)")
    if ou != USER_OU or cluster is None or org != cluster.ID:
        raise Forbidden(f"certificate {cn!r} ({ou or 'no role'}) is not a user certificate of this swarm: node "
                        "certificates cannot use the API; get one with 'shoal user cert'")
    user = users.find(manager.store, cn)
    if user is None or user.ID != uid:
        raise Forbidden(f"user {cn!r} is not known to this swarm (removed?); ask an admin for access")
    return users.identity_of_user(user, "cert")


def authenticate(request: web.Request) -> Identity:
    manager = request.app[MANAGER]
    sec = request.app.get(SECURITY) or Security()
    auth = request.headers.get("Authorization", "")
    if auth:
        scheme, _, token = auth.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthorized("unsupported Authorization header: send 'Authorization: Bearer <token>'")
        ident = users.authenticate_token(manager.store, token.strip()) if manager.in_swarm else None
        if ident is None:
            raise Unauthorized("invalid or revoked API token")
        return ident
    cookie = request.cookies.get(CONSOLE_COOKIE)
    sessions = request.app.get(CONSOLE_SESSIONS)
    if cookie and sessions is not None:
        ident = sessions.identity(cookie, manager.store if manager.in_swarm else None)
        if ident is None:  # refused rather than ignored, as a bad token: never a silent fallback
            raise Unauthorized("the console session expired or is unknown: open a new one with 'shoal console --url'")
        return ident
    transport = request.transport
    ssl_object = transport.get_extra_info("ssl_object") if transport is not None else None
    if ssl_object is not None:
        der = ssl_object.getpeercert(binary_form=True)
        if der:
            return _cert_identity(der, sec, manager)
    sockname = transport.get_extra_info("sockname") if transport is not None else None
    if isinstance(sockname, str | bytes) and ssl_object is None:
        forwarded = request.headers.get(FORWARDED_USER)
        if forwarded and sec.forward_sock is not None and str(sockname) == str(sec.forward_sock):
            return Identity(name=forwarded, role=ADMIN, via="forwarded")
        return LOCAL_ADMIN
    if sec.anonymous is None:
        raise Unauthorized("authentication required: use a client certificate ('shoal user cert') or an API token")
    return sec.anonymous


# ---------------------------------------------------------------------------- authorization


Rule = Callable[[web.Request, Identity, ManagerAPI], Awaitable[str | None]]  # → the object's team, for the log


async def _read(request: web.Request, ident: Identity, manager: ManagerAPI) -> str | None:
    return None


async def _admin(request: web.Request, ident: Identity, manager: ManagerAPI) -> str | None:
    if not ident.is_admin:
        raise Forbidden(f"{_who(ident)} may not {_what(request)}: only admins may")
    return None


async def _secret_read(request: web.Request, ident: Identity, manager: ManagerAPI) -> str | None:
    if ident.role not in (ADMIN, OPERATOR):
        raise Forbidden(f"{_who(ident)} may not read secrets: viewers see no secrets")
    return None


async def _body(request: web.Request) -> tuple[str | None, str]:
    """(team label, Name) of a JSON body; nothing for a malformed one (the handler answers its 400)."""
    try:
        body = json.loads(await request.read() or b"{}")
    except ValueError:
        return None, ""
    if not isinstance(body, dict):
        return None, ""
    labels, name = body.get("Labels"), body.get("Name")
    return (users.team_of(labels) if isinstance(labels, dict) else None), (name if isinstance(name, str) else "")


def _who(ident: Identity) -> str:
    return f"{ident.role} {ident.name!r}"


def _what(request: web.Request) -> str:
    return f"{request.method} {_route_path(request) or request.path}"


def _check_team(ident: Identity, team: str | None, request: web.Request) -> str | None:
    if ident.can_write(team):
        return team
    if ident.role != OPERATOR:
        raise Forbidden(f"{_who(ident)} may not {_what(request)}: read-only access")
    granted = ", ".join(sorted(ident.teams)) or "none"
    if team is None:
        raise Forbidden(f"{_who(ident)} may only change what belongs to its teams ({granted}): label it "
                        f"{users.TEAM_LABEL}=<team>")
    raise Forbidden(f"{_who(ident)} may not change what belongs to team {team!r} (its teams: {granted})")


def _existing_team(kind: str, manager: ManagerAPI, ref: str) -> tuple[bool, str | None]:
    """(found, team) of the object a route names; not found lets the handler answer 404."""
    store = manager.store
    try:
        if kind == "service":
            return True, users.team_of(get_service(store, ref).Spec.Labels)
        if kind in ("secret", "config"):
            return True, users.team_of(secret_ops.get(store, secret_ops.KINDS[kind], ref).Spec.Labels)
        if kind == "network":
            return True, users.team_of(network_ops.get_network(store, ref).Spec.Labels)
        if kind == "stack":
            return True, users.team_of(stack_ops.get_stack(store, ref).Spec.Labels)
        if kind == "task":
            task = get_task(store, ref)
            svc = store.get("service", task.ServiceID)
            return True, users.team_of(svc.Spec.Labels) if svc is not None else None
    except ShoalError:  # 404, or an ambiguous prefix: the handler answers it
        return False, None
    raise ValueError(kind)


def _ref(request: web.Request) -> str:
    return request.match_info.get("id") or request.match_info.get("name") or ""


def _create(kind: str) -> Rule:
    async def rule(request: web.Request, ident: Identity, manager: ManagerAPI) -> str | None:
        new_team, name = await _body(request)
        if ident.is_admin:
            return new_team
        if ident.role != OPERATOR:
            raise Forbidden(f"{_who(ident)} may not {_what(request)}: read-only access")
        if kind == "stack":  # a deploy of an existing stack is an update of it: it must be ours too
            found, team = _existing_team("stack", manager, name)
            if found:
                _check_team(ident, team, request)
                if new_team is None:
                    return team  # naming no team keeps the stack's (controlapi/stacks.py)
        return _check_team(ident, new_team, request)
    return rule


async def _console_deploy(request: web.Request, ident: Identity, manager: ManagerAPI) -> str | None:
    """``POST /shoal/console/deploy?name=<stack>[&team=<team>]``: a stack deploy whose body is a
    Compose file (YAML, not a StackSpec), so the stack's name and team come from the query. A dry
    run writes nothing and is a view (as ``/shoal/plan``)."""
    if request.query.get("dryRun", "").strip().lower() not in ("", "0", "no", "false", "none"):
        return None
    new_team = request.query.get("team") or None
    if ident.is_admin:
        return new_team
    if ident.role != OPERATOR:
        raise Forbidden(f"{_who(ident)} may not {_what(request)}: read-only access")
    found, team = _existing_team("stack", manager, request.query.get("name", ""))
    if found:
        _check_team(ident, team, request)
        if new_team is None:
            return team
    return _check_team(ident, new_team, request)


def _change(kind: str, new_labels: bool) -> Rule:
    """Update or remove: the object must be the caller's team's, and an update may not move it to
    a team the caller has not. An object that does not exist is left to the handler's 404."""
    async def rule(request: web.Request, ident: Identity, manager: ManagerAPI) -> str | None:
        found, team = _existing_team(kind, manager, _ref(request))
        if ident.is_admin:
            return team
        if ident.role != OPERATOR:
            raise Forbidden(f"{_who(ident)} may not {_what(request)}: read-only access")
        if found:
            _check_team(ident, team, request)
        if new_labels:
            new_team, _ = await _body(request)
            if not (kind == "stack" and new_team is None):  # a redeploy naming no team keeps the stack's
                _check_team(ident, new_team, request)
        return team
    return rule


def _logs(kind: str) -> Rule:
    async def rule(request: web.Request, ident: Identity, manager: ManagerAPI) -> str | None:
        found, team = _existing_team(kind, manager, _ref(request))
        if found and not ident.can_read_logs(team):
            raise Forbidden(f"{_who(ident)} may not read the logs of a {kind} of "
                            f"{'team ' + repr(team) if team else 'no team'}: only of its teams' services")
        return team
    return rule


RULES: dict[tuple[str, str], Rule] = {
    ("GET", "/_ping"): _read, ("HEAD", "/_ping"): _read, ("GET", "/version"): _read, ("GET", "/info"): _read,
    ("GET", "/swarm"): _read,  # join tokens are shown to admins only (api/swarm.py)
    ("GET", "/nodes"): _read, ("GET", "/nodes/{id}"): _read,
    ("GET", "/services"): _read, ("GET", "/services/{id}"): _read,
    ("POST", "/services/create"): _create("service"),
    ("POST", "/services/{id}/update"): _change("service", new_labels=True),
    ("DELETE", "/services/{id}"): _change("service", new_labels=False),
    ("GET", "/services/{id}/logs"): _logs("service"),
    ("GET", "/tasks"): _read, ("GET", "/tasks/{id}"): _read, ("GET", "/tasks/{id}/logs"): _logs("task"),
    ("GET", "/distribution/{name}/json"): _read,
    ("POST", "/shoal/plan"): _read,  # a placement plan writes nothing
    ("GET", "/shoal/debug/manager"): _read,
    ("GET", "/shoal/services/{id}/stats"): _read,
    ("GET", "/shoal/logs/query"): _read,  # lines of the caller's teams' services only (api/logstore.py)
    ("GET", "/metrics"): _read,  # counts and latencies: no names beyond what `service ls` shows a viewer
    ("GET", "/containers/json"): _read,
    # The cluster's images as views; pulling, loading, tagging, removing, saving are admin's (engine calls).
    ("GET", "/images/json"): _read, ("GET", "/images/{name}/json"): _read, ("GET", "/images/{name}/history"): _read,
    ("GET", "/images/search"): _read,
    ("POST", "/auth"): _read,  # docker login: an engine checks the credentials with the registry; nothing is kept
    # Volume lists and inspects are views; making, removing or pruning one is admin's (a local volume's
    # DriverOpts can bind any host path).
    ("GET", "/events"): _read, ("GET", "/system/df"): _read,  # secret events are left out for viewers (api/events.py)
    ("GET", "/volumes"): _read, ("GET", "/volumes/{name:[^/]+(?:/[^/]+)?}"): _read,
    ("GET", "/networks"): _read, ("GET", "/networks/{id}"): _read,
    ("POST", "/networks/create"): _create("network"),
    ("DELETE", "/networks/{id}"): _change("network", new_labels=False),
    ("GET", "/secrets"): _secret_read, ("GET", "/secrets/{id}"): _secret_read,
    ("POST", "/secrets/create"): _create("secret"),
    ("POST", "/secrets/{id}/update"): _change("secret", new_labels=True),
    ("DELETE", "/secrets/{id}"): _change("secret", new_labels=False),
    ("GET", "/configs"): _read, ("GET", "/configs/{id}"): _read,
    ("POST", "/configs/create"): _create("config"),
    ("POST", "/configs/{id}/update"): _change("config", new_labels=True),
    ("DELETE", "/configs/{id}"): _change("config", new_labels=False),
    ("GET", "/shoal/stacks"): _read, ("GET", "/shoal/stacks/{name}"): _read,
    ("POST", "/shoal/stacks"): _create("stack"),
    ("POST", "/shoal/stacks/{name}/update"): _change("stack", new_labels=True),
    ("POST", "/shoal/stacks/{name}/scale"): _change("stack", new_labels=False),
    ("DELETE", "/shoal/stacks/{name}"): _change("stack", new_labels=False),
    ("GET", "/shoal/whoami"): _read,
    # The web console's files (no data in them; the UI's data comes from the routes above).
    ("GET", "/console"): _read, ("GET", "/console/"): _read, ("GET", "/console/static/{path}"): _read,
    # The console's aggregates and its change stream: views (console/api.py); a login token for oneself;
    # a deploy from the console is a stack deploy (the body is a Compose file: the handler checks the team).
    ("GET", "/shoal/console/overview"): _read, ("GET", "/shoal/console/services"): _read,
    ("GET", "/shoal/console/visualizer"): _read, ("GET", "/shoal/console/stream"): _read,
    ("POST", "/shoal/console/tokens"): _read, ("GET", "/console/login"): _read,
    ("POST", "/shoal/console/deploy"): _console_deploy,
}
# Everything else — swarm init/join/leave/update and the unlock key, node changes, users and the
# audit log, the engine's /containers calls (a container can mount the host's /) — is admin's.


def _route_path(request: web.Request) -> str:
    """The route's pattern without the ``/v1.xx`` prefix (``/services/{id}/update``)."""
    route = request.match_info.route
    resource = route.resource if route is not None else None
    canonical = resource.canonical if resource is not None else ""
    prefix = "/v{api_version}"
    return canonical.removeprefix(prefix) if canonical.startswith(prefix + "/") else canonical


_WRITES_EXEMPT = frozenset({"/shoal/plan"})
# Answered to anyone who completed the TLS handshake: the docker CLI pings to negotiate the API
# version first, and without the answer it reports a version mismatch instead of the real refusal.
# The console's page and files hold no cluster data: a browser without a session gets the page, whose
# script says how to log in (`shoal console --url`); the login swaps a one-time token (the credential)
# for a cookie and needs no other.
_OPEN = frozenset({"/_ping", "/console", "/console/", "/console/static/{path}", "/console/login"})


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Authenticate, authorize by :data:`RULES`, then run; every write and refusal is audited."""
    sec = request.app.get(SECURITY) or Security()
    route = _route_path(request)
    write = request.method not in ("GET", "HEAD", "OPTIONS") and route not in _WRITES_EXEMPT
    started = time.time()
    ident: Identity | None = None
    team: str | None = None
    status = 500
    try:
        try:
            ident = authenticate(request)
        except (Unauthorized, Forbidden):
            if route not in _OPEN:
                raise
            response = await handler(request)  # clients negotiate the API version before anything
            status = response.status
            return response
        request[IDENTITY_KEY] = ident
        request[USER_KEY] = ident.name
        if (ident.via == "console" and request.method not in ("GET", "HEAD", "OPTIONS")
                and request.headers.get(CONSOLE_HEADER) != "1"):
            raise Forbidden(f"a console session's write must carry the header '{CONSOLE_HEADER}: 1' "
                            "(a guard against other sites' pages posting with the cookie)")
        if not route:  # no such route: the router's 404/405, for anyone authenticated
            response = await handler(request)
            status = response.status
            return response
        rule = RULES.get((request.method, route), _admin)
        team = await rule(request, ident, request.app[MANAGER])
        response = await handler(request)
        status = response.status
        return response
    except ShoalError as e:
        status = e.status
        raise
    except web.HTTPException as e:
        status = e.status
        raise
    finally:
        if sec.audit is not None and (write or status in (401, 403)):
            entry: dict[str, Any] = {
                "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(started)) + f".{int(started % 1 * 1000):03d}Z",
                "user": ident.name if ident else "", "role": ident.role if ident else "",
                "via": ident.via if ident else "", "method": request.method, "path": request.path,
                "status": status, "remote": request.remote or "unix",
            }
            if team:
                entry["team"] = team
            if _ref(request):
                entry["object"] = _ref(request)
            sec.audit.record(entry)


def identity(request: web.Request) -> Identity:
    """The caller, as :func:`auth_middleware` found it (admin when it did not run)."""
    ident = request.get(IDENTITY_KEY)
    return ident if isinstance(ident, Identity) else ANONYMOUS_ADMIN
