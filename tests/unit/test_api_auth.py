"""Authorization rules, tokens, the daemon's own TLS certificates, and a stack's team — in process,
with real TLS handshakes on loopback."""

from __future__ import annotations

import re
import socket
import ssl
from pathlib import Path

import aiohttp
import msgspec
import pytest
from cryptography import x509

from shoal.api import create_app, serve
from shoal.api.app import _ROUTES
from shoal.api.auth import RULES, AuditLog, Security
from shoal.api.containers import _REF, CONTAINER_ACTIONS, EXEC_ACTIONS
from shoal.api.testing import FakeManager
from shoal.api.tls import ServerTLS, TLSConfigError, TLSOptions, ensure_generated, tcp_hosts_need_tls
from shoal.console import api as console_api
from shoal.console import static_routes as console_static
from shoal.controlapi import stacks, users
from shoal.models import ContainerSpec, ServiceSpec, StackResources, StackSpec, TaskSpec, UserSpec
from shoal.orchestrator.testutils import make_node
from shoal.store import MemoryStore, NullBackend

# What only admins may do: every route RULES does not name. A new route lands here until someone
# decides who may call it, so this list changes only on purpose.
ADMIN_ONLY = {
    ("POST", "/swarm/init"), ("POST", "/swarm/join"), ("POST", "/swarm/leave"), ("POST", "/swarm/update"),
    ("GET", "/swarm/unlockkey"), ("POST", "/swarm/unlock"), ("POST", "/nodes/{id}/update"), ("DELETE", "/nodes/{id}"),
    # Every call about a node engine's containers (a container can mount the host's /).
    ("POST", "/containers/create"), ("DELETE", f"/containers/{{id:{_REF}}}"), ("POST", "/containers/prune"),
    *((m, f"/containers/{{id:{_REF}}}/{{tail:{a}}}") for m, acts in CONTAINER_ACTIONS.items() for a in acts),
    *((m, f"/exec/{{id}}/{{tail:{a}}}") for m, acts in EXEC_ACTIONS.items() for a in acts),
    # Images: every change on the engines, and docker save (an image's files).
    ("POST", "/images/create"), ("POST", "/images/load"), ("POST", "/images/prune"), ("GET", "/images/get"),
    ("GET", "/images/{name}/get"), ("POST", "/images/{name}/tag"), ("POST", "/images/{name}/push"),
    ("DELETE", "/images/{name}"), ("POST", "/commit"),
    ("POST", "/networks/prune"),
    ("POST", "/volumes/create"), ("DELETE", "/volumes/{name:[^/]+(?:/[^/]+)?}"), ("POST", "/volumes/prune"),
    # A container joins or leaves a network (it is an engine's container: as the calls above).
    ("POST", "/networks/{id}/connect"), ("POST", "/networks/{id}/disconnect"),
    ("GET", "/shoal/users"), ("POST", "/shoal/users"), ("GET", "/shoal/users/{name}"),
    ("DELETE", "/shoal/users/{name}"), ("POST", "/shoal/users/{name}/tokens"),
    ("DELETE", "/shoal/users/{name}/tokens/{id}"), ("POST", "/shoal/users/{name}/cert"), ("GET", "/shoal/audit"),
    # Log sinks: their URLs may carry a receiver's credentials, and they receive every team's lines.
    ("GET", "/shoal/logs/sinks"), ("POST", "/shoal/logs/sinks"), ("DELETE", "/shoal/logs/sinks/{name}"),
}


def _canonical(path: str) -> str:
    return path.replace("{name:.+}", "{name}").replace("{path:.+}", "{path}")


def test_every_route_has_a_rule_or_is_knowingly_admin_only() -> None:
    routes = {(m, _canonical(p)) for m, p, _ in [*_ROUTES, *console_static.ROUTES, *console_api.ROUTES,
                                                 *console_api.PAGE_ROUTES]}
    assert set(RULES) <= routes, set(RULES) - routes  # no rule for a route that does not exist
    assert routes - set(RULES) == ADMIN_ONLY


def test_tokens_are_scoped_and_stored_hashed() -> None:
    store = MemoryStore(NullBackend())
    users.put(store, UserSpec(Name="paul", Role="operator", Teams=["web", "api"]))
    token, record = users.create_token(store, "paul", teams=["api", "other"], role="viewer")
    assert token not in msgspec.json.encode(store.list("user")).decode()
    assert record.Hash and record.Hash in msgspec.json.encode(store.list("user")).decode()
    ident = users.authenticate_token(store, token)
    assert ident is not None and ident.role == "viewer" and ident.teams == frozenset({"api"})
    assert users.authenticate_token(store, token[:-1] + ("A" if token[-1] != "A" else "B")) is None
    assert users.authenticate_token(store, "shoal_nothing") is None
    users.revoke_token(store, "paul", record.ID)
    assert users.authenticate_token(store, token) is None


@pytest.mark.parametrize("spec, message", [
    (UserSpec(Name="x", Role="root"), "invalid role 'root'"),
    (UserSpec(Name="-x"), "invalid user name"),
    (UserSpec(Name="x", Teams=["Web Team"]), "invalid team name"),
])
def test_bad_users_are_refused_and_nothing_is_stored(spec: UserSpec, message: str) -> None:
    store = MemoryStore(NullBackend())
    with pytest.raises(Exception, match=message):
        users.put(store, spec)
    assert store.list("user") == []


def test_a_stacks_team_labels_everything_it_makes() -> None:
    store = MemoryStore(NullBackend())
    make_node(store, "host-1", node_id="n1")
    spec = ServiceSpec(TaskTemplate=TaskSpec(ContainerSpec=ContainerSpec(Image="busybox")),
                       Labels={users.TEAM_LABEL: "db"})  # the file tries to place it in another team
    stacks.deploy_stack(store, StackSpec(Name="shop", Labels={users.TEAM_LABEL: "web"}, Compose="services: {}\n",
                                         Resources=StackResources(Services={"front": spec})))
    (svc,) = store.list("service")
    assert svc.Spec.Labels[users.TEAM_LABEL] == "web"


def test_plain_tcp_needs_a_flag() -> None:
    with pytest.raises(TLSConfigError, match=re.escape("refusing to listen on tcp://0.0.0.0:2375 without TLS")):
        tcp_hosts_need_tls(["unix:///x.sock", "tcp://0.0.0.0:2375"], TLSOptions(), insecure_tcp=False)
    tcp_hosts_need_tls(["tcp://0.0.0.0:2375"], TLSOptions(), insecure_tcp=True)
    tcp_hosts_need_tls(["tcp://0.0.0.0:2376"], TLSOptions(verify=True), insecure_tcp=False)
    with pytest.raises(TLSConfigError, match="--tlscert and --tlskey go together"):
        TLSOptions(verify=True, cert="/etc/hostname").check()


def test_generated_certificates_are_kept_and_renewed_for_new_addresses(tmp_path: Path) -> None:
    ca, cert, key = ensure_generated(tmp_path / "tls", ["tcp://127.0.0.1:2376"], None)
    first = cert.read_bytes()
    assert oct((tmp_path / "tls").stat().st_mode & 0o777) == "0o700"
    assert oct(key.stat().st_mode & 0o777) == "0o600"
    assert ensure_generated(tmp_path / "tls", ["tcp://127.0.0.1:2376"], None)[1].read_bytes() == first
    ensure_generated(tmp_path / "tls", ["tcp://127.0.0.1:2376"], "10.9.8.7")
    sans = x509.load_pem_x509_certificate(cert.read_bytes()).extensions.get_extension_for_class(
        x509.SubjectAlternativeName).value
    assert "10.9.8.7" in {str(ip) for ip in sans.get_values_for_type(x509.IPAddress)}
    assert x509.load_pem_x509_certificate(cert.read_bytes()).issuer == x509.load_pem_x509_certificate(
        ca.read_bytes()).subject


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_the_daemons_own_certificate_serves_tls_and_anonymous_callers_are_refused(tmp_path: Path) -> None:
    """--tls without files: the daemon's generated certificate verifies against the CA it hands out;
    a caller with neither certificate nor token gets Docker's 401 shape, and is audited."""
    port = _free_port()
    hosts = [f"tcp://127.0.0.1:{port}"]
    tls = ServerTLS(TLSOptions(tls=True), tmp_path, hosts, None)
    audit = AuditLog(tmp_path / "audit.log")
    manager = FakeManager()
    runner = await serve(create_app(manager, Security(tls=tls, anonymous=None, audit=audit)), hosts,
                         ssl_context=tls.context)
    try:
        ctx = ssl.create_default_context(cadata=tls.server_ca_pem)
        async with aiohttp.ClientSession() as session:
            async with session.get(f"https://127.0.0.1:{port}/_ping", ssl=ctx) as resp:
                assert resp.status == 200
            async with session.get(f"https://localhost:{port}/services", ssl=ctx) as resp:
                assert resp.status == 401
                assert (await resp.json())["message"].startswith("authentication required")
            with pytest.raises(aiohttp.ClientConnectorCertificateError):
                async with session.get(f"https://127.0.0.1:{port}/_ping", ssl=ssl.create_default_context()):
                    pass
        assert [e["status"] for e in audit.tail()] == [401]
    finally:
        await runner.cleanup()
        audit.close()


def test_the_audit_log_stays_private_across_rotations(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(AuditLog, "MAX_BYTES", 200)
    audit = AuditLog(tmp_path / "audit.log")
    try:
        for i in range(20):
            audit.record({"user": "u", "i": i, "path": "/x" * 10})
        files = sorted(tmp_path.glob("audit.log*"))
        assert len(files) > 1
        assert all(oct(f.stat().st_mode & 0o777) == "0o600" for f in files)
        assert audit.tail(1)[0]["i"] == 19
    finally:
        audit.close()
