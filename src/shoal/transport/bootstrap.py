"""Joining a cluster from a new host, and the credentials it keeps afterwards.

Swarmkit's ``ca.GetRemoteCA`` + ``DownloadRootCA`` + ``IssueNodeCertificate``, in three steps:

1. Fetch the cluster's root over TLS *without* verifying the manager (the joiner has nothing to
   verify it with yet) and compare the root's digest with the one in the join token. Only a
   manager holding that exact root gets further, so nothing said on that connection matters.
2. Connect again, verifying the manager against that root, and send the token with a CSR for a
   fresh P-256 key: the manager creates the node and signs the certificate.
3. Keep the key, certificate and trusted roots under ``cert_dir`` for every later connection.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from shoal.ca.certs import (
    MANAGER_SERVER_NAME,
    cert_identity,
    generate_key_and_csr,
    public_key_matches,
    split_pem,
    write_private,
)
from shoal.ca.tokens import ca_digest, parse_join_token
from shoal.errors import InvalidArgument, TooManyRequests, Unavailable
from shoal.models import NodeRole
from shoal.transport import messages as m
from shoal.transport.errors import from_rpc_error
from shoal.transport.rpc import BOOTSTRAP_SERVICE, decoder, encode, path, secure_channel, split_addr

JOIN_TIMEOUT_S = 10.0
JOIN_RETRY_S = 0.5  # after "too many joins from this address"
KEY_FILE, CERT_FILE, ROOTS_FILE, STATE_FILE = "node.key", "node.crt", "ca.crt", "node.json"


@dataclass(frozen=True)
class NodeCredentials:
    """A node's identity in a cluster: its certificate and key, the roots it trusts, its manager."""

    node_id: str
    role: NodeRole
    cert_pem: str
    key_pem: str
    root_pem: str  # trust bundle: the cluster's current root first, then any still trusted
    manager: str  # "ip:port" of the manager's cluster listener
    managers: tuple[str, ...] = ()  # every manager's, as the last session listed them (leader first)

    @property
    def not_after(self) -> dt.datetime:
        return cert_identity(self.cert_pem).not_after

    @property
    def root_digest(self) -> str:
        """Digest of the root this node holds as current; the manager's differs after a rotation."""
        roots = split_pem(self.root_pem)
        return ca_digest(roots[0]) if roots else ""


def save_credentials(cert_dir: str | Path, creds: NodeCredentials) -> None:
    """Write the credentials (every file 0600). Key and certificate are written as ``.new`` first
    and then swapped in, so a crash never leaves a key beside another key's certificate."""
    d = Path(cert_dir)
    d.mkdir(parents=True, exist_ok=True, mode=0o700)
    write_private(d / (KEY_FILE + ".new"), creds.key_pem)
    write_private(d / (CERT_FILE + ".new"), creds.cert_pem)
    write_private(d / ROOTS_FILE, creds.root_pem)
    write_private(d / STATE_FILE, json.dumps({"node_id": creds.node_id, "manager": creds.manager,
                                              "managers": list(creds.managers)}))
    (d / (KEY_FILE + ".new")).replace(d / KEY_FILE)
    (d / (CERT_FILE + ".new")).replace(d / CERT_FILE)


def load_credentials(cert_dir: str | Path) -> NodeCredentials | None:
    """The saved credentials, or None if this host never joined (or its files are unusable)."""
    d = Path(cert_dir)
    key_new, cert_new = d / (KEY_FILE + ".new"), d / (CERT_FILE + ".new")
    try:
        if cert_new.exists():  # finish a save that stopped half-way (if its pair is complete)
            key_path = key_new if key_new.exists() else d / KEY_FILE
            if public_key_matches(cert_new.read_text(), key_path.read_text()):
                if key_path == key_new:
                    key_new.replace(d / KEY_FILE)
                cert_new.replace(d / CERT_FILE)
        state = json.loads((d / STATE_FILE).read_text())
        cert_pem, key_pem = (d / CERT_FILE).read_text(), (d / KEY_FILE).read_text()
        root_pem = (d / ROOTS_FILE).read_text()
        if not public_key_matches(cert_pem, key_pem):
            return None
        ident = cert_identity(cert_pem)
    except (OSError, ValueError, KeyError):
        return None
    if ident.role is None or ident.node_id != state.get("node_id"):
        return None
    return NodeCredentials(ident.node_id, ident.role, cert_pem, key_pem, root_pem, str(state["manager"]),
                           tuple(str(a) for a in state.get("managers", ())))


def _fetch_server_cert(host: str, port: int, timeout: float) -> str:
    """The manager's TLS certificate, unverified (PEM). Only used to open the channel that fetches
    the root, which is then checked against the token's digest."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["h2"])  # gRPC servers expect HTTP/2 to be offered
    with socket.create_connection((host, port), timeout=timeout) as sock, \
            ctx.wrap_socket(sock, server_hostname=MANAGER_SERVER_NAME) as tls:
        der = tls.getpeercert(binary_form=True)
    if not der:
        raise ssl.SSLError("the manager sent no certificate")
    return ssl.DER_cert_to_PEM_cert(der)


async def _bootstrap_call(host: str, port: int, trusted_pem: str, method: str, req: Any, resp_t: type[Any],
                          deadline_s: float, manager: str) -> Any:
    """One bootstrap call; refused for too many joins from this address (the manager's per-source
    limit), it is tried again within the deadline, as a crowd of hosts behind one NAT would need."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + deadline_s
    async with secure_channel(host, port, trusted_pem) as ch:
        call = ch.unary_unary(path(BOOTSTRAP_SERVICE, method), request_serializer=encode,
                              response_deserializer=decoder(resp_t))
        while True:
            try:
                return await call(req, timeout=max(deadline - loop.time(), 0.1))
            except grpc.aio.AioRpcError as e:
                err = from_rpc_error(e, manager)
                if not isinstance(err, TooManyRequests) or loop.time() + JOIN_RETRY_S >= deadline:
                    raise err from None
            await asyncio.sleep(JOIN_RETRY_S)


async def join_cluster(
    manager: str,
    token: str,
    hostname: str,
    addr: str,
    availability: str,
    cert_dir: str | Path,
    *,
    timeout_s: float = JOIN_TIMEOUT_S,
    bootstrap_port: int | None = None,
    listen_port: int = 0,
    etcd_port: int = 0,
    on_manager: Callable[[m.ManagerJoin], None] | None = None,
) -> NodeCredentials:
    """Join the cluster whose manager listens at ``manager`` ("ip:port"); see the module's doc.
    A manager of a swarm on etcd also gets its part of the store, handed to ``on_manager`` before
    the credentials are saved (``listen_port``, ``etcd_port``: where it will listen).

    Raises InvalidArgument (bad token, root digest mismatch), Conflict (hostname taken) or
    Unavailable (manager unreachable within ``timeout_s``)."""
    try:
        digest, _secret = parse_join_token(token.strip())
    except ValueError:
        raise InvalidArgument("invalid join token") from None
    host, port = split_addr(manager)
    bport = port + 1 if bootstrap_port is None else bootstrap_port
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    try:
        anchor = await asyncio.wait_for(asyncio.to_thread(_fetch_server_cert, host, bport, timeout_s), timeout_s)
    except (OSError, TimeoutError) as e:  # ssl.SSLError is an OSError
        reason = str(e) or "timed out"
        raise Unavailable(f"could not reach the manager at {manager}: {reason}") from None
    root = await _bootstrap_call(host, bport, anchor, "GetRootCA", m.Empty(), m.RootCAResponse,
                                 deadline - loop.time(), manager)
    if ca_digest(root.root_pem) != digest:
        raise InvalidArgument(f"remote CA does not match fingerprint. Expected: {digest}")
    key_pem, csr_pem = generate_key_and_csr()
    req = m.JoinRequest(token=token.strip(), csr_pem=csr_pem, hostname=hostname, addr=addr,
                        availability=availability or "active", listen_port=listen_port, etcd_port=etcd_port)
    resp = await _bootstrap_call(host, bport, root.root_pem, "Join", req, m.JoinResponse,
                                 deadline - loop.time(), manager)
    if resp.manager is not None and on_manager is not None:
        on_manager(resp.manager)
    creds = NodeCredentials(resp.node_id, NodeRole(resp.role), resp.cert_pem, key_pem, resp.bundle_pem, manager)
    save_credentials(cert_dir, creds)
    return creds
