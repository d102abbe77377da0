"""The API over TCP: dockerd's TLS flags, users with roles and teams, tokens, and the audit log —
through the real docker CLI and the Docker SDK, against a real daemon.

The daemon here is set up as dockerd's TLS guide does it: one operator CA signs the server's
certificate (for 127.0.0.1) and the operator's own client certificate (--tlscacert); users get
theirs from the swarm's CA with `shoal user cert`."""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import os
import socket
import ssl
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import docker.tls
import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from shoal.ca.certs import issue_node_cert
from shoal.models import NodeRole
from tests.integration.shoal_process import ShoalProcess
from tests.integration.transport_env import listen_addr

pytestmark = pytest.mark.integration

SHOAL = str(Path(sys.executable).with_name("shoal"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _pem(obj: Any) -> bytes:
    if isinstance(obj, x509.Certificate):
        return obj.public_bytes(serialization.Encoding.PEM)
    return bytes(obj.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                   serialization.NoEncryption()))


def _issue(ca: x509.Certificate | None, ca_key: ec.EllipticCurvePrivateKey | None, cn: str, *,
           is_ca: bool = False, server: bool = False) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    b = (x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(ca.subject if ca else _name(cn))
         .public_key(key.public_key()).serial_number(x509.random_serial_number())
         .not_valid_before(now - dt.timedelta(hours=1)).not_valid_after(now + dt.timedelta(days=2))
         .add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), critical=True))
    if server:
        b = b.add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                            critical=False)
        b = b.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    elif not is_ca:
        b = b.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
    return b.sign(ca_key or key, hashes.SHA256()), key


class Secured:
    """A daemon on a unix socket (the local admin) and on TCP with --tlsverify, in a swarm."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = _free_port()
        self.tcp = f"tcp://127.0.0.1:{self.port}"
        tls = root / "operator"
        tls.mkdir()
        ca, ca_key = _issue(None, None, "operator CA", is_ca=True)
        server, server_key = _issue(ca, ca_key, "shoal-server", server=True)
        admin, admin_key = _issue(ca, ca_key, "ops-admin")
        (tls / "ca.pem").write_bytes(_pem(ca))
        (tls / "server-cert.pem").write_bytes(_pem(server))
        (tls / "server-key.pem").write_bytes(_pem(server_key))
        (tls / "cert.pem").write_bytes(_pem(admin))
        (tls / "key.pem").write_bytes(_pem(admin_key))
        self.operator = tls
        self.proc = ShoalProcess(root, args=(
            "-H", self.tcp, "--tlsverify", "--tlscacert", str(tls / "ca.pem"),
            "--tlscert", str(tls / "server-cert.pem"), "--tlskey", str(tls / "server-key.pem")))

    def docker(self, certs: Path | None, *args: str, env: dict[str, str] | None = None
               ) -> subprocess.CompletedProcess[str]:
        """The real docker CLI over TCP with --tlsverify and the given cert folder."""
        tls = ["--tlsverify", "--tlscacert", str(self.operator / "ca.pem")]
        if certs is not None:
            tls += ["--tlscert", str(certs / "cert.pem"), "--tlskey", str(certs / "key.pem")]
        return subprocess.run(["docker", "-H", self.tcp, *tls, *args], capture_output=True, text=True, timeout=60,
                              env={**os.environ, "DOCKER_CONFIG": str(self.root / "docker-config"), **(env or {})})

    def shoal(self, *args: str, token: str = "", host: str = "") -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "COLUMNS": "200"}
        env.pop("SHOAL_TOKEN", None)
        if token:
            env["SHOAL_TOKEN"] = token
        return subprocess.run([SHOAL, "-H", host or self.proc.host, *args], capture_output=True, text=True,
                              timeout=60, env=env)

    def sdk(self, certs: Path) -> docker.DockerClient:
        tls = docker.tls.TLSConfig(client_cert=(str(certs / "cert.pem"), str(certs / "key.pem")),
                                   ca_cert=str(self.operator / "ca.pem"), verify=True)
        client = docker.DockerClient(base_url=self.tcp, tls=tls, version="1.41", timeout=30)
        client.api.trust_env = False  # else $REQUESTS_CA_BUNDLE (set on this machine) replaces our CA
        return client

    def user_cert(self, name: str, *args: str) -> Path:
        out = self.root / f"certs-{name}"
        res = self.shoal("user", "cert", name, *args, "-o", str(out))
        assert res.returncode == 0, res.stderr
        return out

    def token(self, name: str, *args: str) -> str:
        res = self.shoal("user", "token", name, *args)
        assert res.returncode == 0, res.stderr
        return res.stdout.strip()


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Secured]:
    s = Secured(tmp_path_factory.mktemp("secured"))
    s.proc.start()
    client = s.proc.client()
    client.swarm.init(advertise_addr="127.0.0.1", listen_addr=listen_addr())
    try:
        yield s
    finally:
        try:
            client.swarm.leave(force=True)
        except docker.errors.APIError:
            pass
        s.proc.stop()


def _one_line_error(res: subprocess.CompletedProcess[str]) -> str:
    assert res.returncode != 0, res.stdout
    assert "Traceback" not in res.stderr, res.stderr
    return res.stderr.strip()


# ---------------------------------------------------------------------------- TLS on the listener


def test_tcp_without_tls_is_refused_unless_insecure_tcp(tmp_path: Path) -> None:
    port = _free_port()
    res = subprocess.run([SHOAL, "daemon", "-H", f"tcp://127.0.0.1:{port}", "--data-root", str(tmp_path / "d")],
                         capture_output=True, text=True, timeout=30)
    err = _one_line_error(res)
    assert "refusing to listen on tcp://127.0.0.1" in err and "--tlsverify" in err and "--insecure-tcp" in err
    assert len(err.splitlines()) == 1, err
    with socket.socket() as probe:  # and nothing was left listening
        assert probe.connect_ex(("127.0.0.1", port)) != 0

    proc = ShoalProcess(tmp_path / "insecure", args=("-H", f"tcp://127.0.0.1:{port}", "--insecure-tcp"))
    (tmp_path / "insecure").mkdir()
    proc.start()
    try:
        assert requests.get(f"http://127.0.0.1:{port}/_ping", timeout=5).text == "OK"
        assert "WITHOUT TLS (--insecure-tcp)" in proc.log.read_text()
    finally:
        proc.stop()


def test_a_client_without_a_certificate_is_turned_away(secured: Secured) -> None:
    res = secured.docker(None, "version", "--format", "{{.Server.Version}}")
    assert res.returncode != 0
    ctx = ssl.create_default_context(cafile=str(secured.operator / "ca.pem"))
    with socket.create_connection(("127.0.0.1", secured.port), timeout=5) as raw, \
            ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
        # TLS 1.3 reports the missing certificate on the first read, not in the handshake.
        tls.sendall(b"GET /_ping HTTP/1.1\r\nHost: x\r\n\r\n")
        with pytest.raises((ssl.SSLError, ConnectionResetError)):
            assert not tls.recv(100)
            raise ConnectionResetError


def test_the_operators_ca_gives_admins_as_dockerd_does(secured: Secured) -> None:
    res = secured.docker(secured.operator, "node", "ls", "--format", "{{.Hostname}} {{.ManagerStatus}}")
    assert res.returncode == 0, res.stderr
    assert "Leader" in res.stdout
    who = secured.sdk(secured.operator).api.get(f"https://127.0.0.1:{secured.port}/shoal/whoami").json()
    assert who == {"Name": "ops-admin", "Role": "admin", "Teams": [], "Via": "operator-cert"}


def test_user_certificates_from_the_swarm_ca_work_with_the_docker_cli_and_sdk(secured: Secured) -> None:
    certs = secured.user_cert("alice", "--role", "admin")
    assert stat.S_IMODE((certs / "key.pem").stat().st_mode) == 0o600
    res = secured.docker(certs, "service", "create", "--name", "alice-web", "--replicas", "0", "busybox:latest",
                         "sleep", "1000")
    assert res.returncode == 0, res.stderr
    sdk = secured.sdk(certs)
    assert [s.name for s in sdk.services.list(filters={"name": "alice-web"})] == ["alice-web"]
    assert sdk.swarm.attrs["JoinTokens"]["Worker"].startswith("SWMTKN-1-")  # an admin sees the tokens
    sdk.services.get("alice-web").remove()


# ---------------------------------------------------------------------------- roles and teams


def test_a_viewer_reads_but_cannot_read_secrets_create_services_or_see_join_tokens(secured: Secured) -> None:
    admin = secured.proc.client()
    admin.secrets.create(name="db-password", data=b"hunter2")
    certs = secured.user_cert("victor", "--role", "viewer")
    assert secured.docker(certs, "node", "ls").returncode == 0
    assert secured.docker(certs, "service", "ls").returncode == 0

    err = _one_line_error(secured.docker(certs, "secret", "ls"))
    assert "Error response from daemon: viewer 'victor' may not read secrets" in err
    err = _one_line_error(secured.docker(certs, "service", "create", "--name", "v", "busybox:latest"))
    assert "viewer 'victor' may not POST /services/create: read-only access" in err
    sdk = secured.sdk(certs)
    with pytest.raises(docker.errors.APIError) as exc:
        sdk.secrets.list()
    assert exc.value.response.status_code == 403
    assert json.loads(exc.value.response.text)["message"].startswith("viewer 'victor' may not read secrets")
    assert not sdk.swarm.attrs["JoinTokens"].get("Worker")
    assert not sdk.swarm.attrs["JoinTokens"].get("Manager")
    assert not admin.services.list(filters={"name": "v"})  # nothing was created


def test_an_operator_deploys_only_in_its_teams(secured: Secured) -> None:
    admin = secured.proc.client()
    admin.services.create("busybox:latest", ["sleep", "1000"], name="db-main", labels={"shoal.team": "db"},
                          mode=docker.types.ServiceMode("replicated", 0))
    assert secured.shoal("user", "create", "olga", "--role", "operator", "--team", "web").returncode == 0
    token = secured.token("olga", "--description", "ci")
    assert token.startswith("shoal_")

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return secured.shoal(*args, token=token)

    ok = run("service", "create", "--name", "web-front", "--label", "shoal.team=web", "--replicas", "0",
             "busybox:latest", "sleep", "1000")
    assert ok.returncode == 0, ok.stderr
    assert run("service", "scale", "web-front=2").returncode == 0
    assert admin.services.get("web-front").attrs["Spec"]["Mode"]["Replicated"]["Replicas"] == 2

    err = _one_line_error(run("service", "create", "--name", "nolabel", "busybox:latest"))
    assert "label it shoal.team=<team>" in err
    err = _one_line_error(run("service", "create", "--name", "x", "--label", "shoal.team=db", "busybox:latest"))
    assert "may not change what belongs to team 'db' (its teams: web)" in err
    err = _one_line_error(run("service", "scale", "db-main=3"))
    assert "team 'db'" in err
    err = _one_line_error(run("service", "rm", "db-main"))
    assert "team 'db'" in err
    # ... and cannot move its own service into another team
    err = _one_line_error(run("service", "update", "--label-add", "shoal.team=db", "web-front"))
    assert "team 'db'" in err
    assert admin.services.get("db-main").attrs["Spec"]["Mode"]["Replicated"]["Replicas"] == 0
    assert admin.services.get("web-front").attrs["Spec"]["Labels"]["shoal.team"] == "web"

    err = _one_line_error(run("node", "update", "--availability", "drain", admin.nodes.list()[0].id))
    assert "only admins may" in err
    assert run("service", "rm", "web-front").returncode == 0
    admin.services.get("db-main").remove()


def test_a_token_scoped_below_its_user_and_revocation(secured: Secured) -> None:
    assert secured.shoal("user", "create", "paul", "--role", "operator", "--team", "web", "--team",
                         "api").returncode == 0
    scoped = secured.token("paul", "--team", "api")
    read_only = secured.token("paul", "--role", "viewer")
    who = secured.shoal("user", "whoami", token=scoped)
    assert who.stdout.strip() == "paul (role operator, teams api, via token)"
    err = _one_line_error(secured.shoal("service", "create", "--name", "p1", "--label", "shoal.team=web",
                                        "busybox:latest", token=scoped))
    assert "its teams: api" in err
    err = _one_line_error(secured.shoal("service", "create", "--name", "p2", "--label", "shoal.team=api",
                                        "busybox:latest", token=read_only))
    assert "operator" not in err.split("may not")[0] and "read-only" in err

    info = secured.proc.client().api.get(secured.proc.client().api._url("/shoal/users/paul")).json()
    assert all(t["Hash"] == "" for t in info["Tokens"])  # never shown back
    assert secured.shoal("user", "revoke", "paul", info["Tokens"][0]["ID"]).returncode == 0
    err = _one_line_error(secured.shoal("service", "ls", token=scoped))
    assert "invalid or revoked API token" in err


def test_a_viewer_reads_only_its_teams_logs(secured: Secured) -> None:
    admin = secured.proc.client()
    admin.services.create("busybox:latest", ["sh", "-c", "echo hello; sleep 1000"], name="logs-web",
                          labels={"shoal.team": "web"})
    admin.services.create("busybox:latest", ["sh", "-c", "echo secret-ish; sleep 1000"], name="logs-db",
                          labels={"shoal.team": "db"})
    assert secured.shoal("user", "create", "wendy", "--role", "viewer", "--team", "web").returncode == 0
    token = secured.token("wendy")
    deadline = time.monotonic() + 60
    while True:
        res = secured.shoal("service", "logs", "logs-web", token=token)
        if "hello" in res.stdout or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert "hello" in res.stdout, res.stderr
    err = _one_line_error(secured.shoal("service", "logs", "logs-db", token=token))
    assert "may not read the logs of a service of team 'db'" in err
    for name in ("logs-web", "logs-db"):
        admin.services.get(name).remove()


def test_node_certificates_and_removed_users_are_refused(secured: Secured) -> None:
    # A certificate the swarm's CA made for a node (as a worker holds): signed with the real root key.
    cluster = secured.proc.client().swarm.attrs
    root_pem = cluster["TLSInfo"]["TrustRoot"]
    ca_key = serialization.load_pem_private_key((secured.proc.data / "ca.key").read_bytes(), None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    node_key = ec.generate_private_key(ec.SECP256R1())
    cert_pem = issue_node_cert(node_key.public_key(), x509.load_pem_x509_certificate(root_pem.encode()), ca_key,
                               "n0de", NodeRole.WORKER, cluster["ID"], "127.0.0.1", dt.timedelta(hours=1))
    node_dir = secured.root / "node-cert"
    node_dir.mkdir()
    (node_dir / "cert.pem").write_text(cert_pem)
    (node_dir / "key.pem").write_bytes(_pem(node_key))
    err = _one_line_error(secured.docker(node_dir, "service", "ls"))
    assert "node certificates cannot use the API" in err

    certs = secured.user_cert("gone", "--role", "admin")
    assert secured.docker(certs, "service", "ls").returncode == 0
    assert secured.shoal("user", "rm", "gone").returncode == 0
    err = _one_line_error(secured.docker(certs, "service", "ls"))
    assert "user 'gone' is not known to this swarm" in err


def test_every_write_and_refusal_is_audited(secured: Secured) -> None:
    assert secured.shoal("user", "create", "auditee", "--role", "viewer").returncode == 0
    token = secured.token("auditee")
    secured.shoal("network", "ls", token=token)
    secured.shoal("secret", "create", "nope", "-", token=token)
    res = secured.shoal("audit", "--user", "auditee")
    assert res.returncode == 0, res.stderr
    assert "POST" in res.stdout and "/secrets/create" in res.stdout and "403" in res.stdout
    entries = secured.proc.client().api.get(secured.proc.client().api._url("/shoal/audit"),
                                            params={"limit": 1000}).json()
    mine = [e for e in entries if e["user"] == "auditee"]
    assert mine and all(e["status"] == 403 for e in mine)  # the GET was allowed and is not a write
    created = [e for e in entries if e["path"].endswith("/shoal/users") and e["method"] == "POST"]
    assert created and created[-1]["user"] == "local" and created[-1]["status"] in (200, 201)
    assert stat.S_IMODE((secured.proc.data / "audit.log").stat().st_mode) == 0o600
    # only admins read it
    err = _one_line_error(secured.shoal("audit", token=token))
    assert "only admins may" in err


def test_the_docker_cli_sends_a_token_from_its_config(secured: Secured, tmp_path: Path) -> None:
    """The docker CLI's config.json HttpHeaders carry a token; a token outranks the socket's local admin."""
    assert secured.shoal("user", "create", "tina", "--role", "viewer").returncode == 0
    token = secured.token("tina")
    (tmp_path / "config.json").write_text(json.dumps({"HttpHeaders": {"Authorization": f"Bearer {token}"}}))
    res = subprocess.run(["docker", "--config", str(tmp_path), "-H", secured.proc.host, "secret", "ls"],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode != 0 and "viewer 'tina' may not read secrets" in res.stderr, res.stderr
    res = subprocess.run(["docker", "--config", str(tmp_path), "-H", secured.proc.host, "service", "ls"],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr


def test_a_user_made_again_under_the_same_name_does_not_revive_old_certificates(secured: Secured) -> None:
    old = secured.user_cert("reborn", "--role", "admin")
    assert secured.shoal("user", "rm", "reborn").returncode == 0
    assert secured.shoal("user", "create", "reborn", "--role", "admin").returncode == 0
    err = _one_line_error(secured.docker(old, "service", "ls"))
    assert "user 'reborn' is not known to this swarm" in err
    assert secured.docker(secured.user_cert("reborn"), "service", "ls").returncode == 0


def test_an_operator_deploys_a_stack_of_its_team(secured: Secured, tmp_path: Path) -> None:
    assert secured.shoal("user", "create", "stella", "--role", "operator", "--team", "shop").returncode == 0
    token = secured.token("stella")
    (tmp_path / "compose.yaml").write_text(
        "services:\n  front:\n    image: busybox:latest\n    command: sleep 1000\n    deploy: {replicas: 0}\n")
    f = str(tmp_path / "compose.yaml")
    res = secured.shoal("stack", "deploy", "shop", "-c", f, "--team", "shop", "-d", token=token)
    assert res.returncode == 0, res.stderr
    admin = secured.proc.client()
    assert admin.services.get("shop_front").attrs["Spec"]["Labels"]["shoal.team"] == "shop"
    # A redeploy that names no team keeps the stack's; one naming another team is refused.
    res = secured.shoal("stack", "deploy", "shop", "-c", f, "-d", token=token)
    assert res.returncode == 0, res.stderr
    assert admin.services.get("shop_front").attrs["Spec"]["Labels"]["shoal.team"] == "shop"
    err = _one_line_error(secured.shoal("stack", "deploy", "shop", "-c", f, "--team", "db", "-d", token=token))
    assert "team 'db'" in err
    err = _one_line_error(secured.shoal("stack", "deploy", "other", "-c", f, "-d", token=token))
    assert "label it shoal.team=<team>" in err
    assert secured.shoal("stack", "rm", "shop", token=token).returncode == 0
