"""The cluster CA on the manager: join tokens → nodes and certificates, renewal, root rotation.

Modelled on swarmkit's ``ca/server.go``, without its pending-certificate queue: a CSR is signed
at once, since the manager holding the root key is the only signer.

Root rotation keeps the previous root trusted until every node has renewed (nodes that are down,
removed, or this manager's own node are not waited for): the manager's TLS certificate is then
issued by the new root and sent with the new root cross-signed by the old one, so nodes that trust
only the old root still accept it, and the server trusts client certificates from either root.
The rotation's state is kept in ``<data_root>/ca-rotation.json`` so a restarted manager keeps
accepting nodes that have not renewed yet. A second rotation before the first one finished drops
the oldest root: nodes still on it must join again (swarmkit restarts the rotation likewise).
"""

from __future__ import annotations

import datetime as dt
import hmac
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from shoal.ca.certs import (
    generate_key_and_csr,
    issue_node_cert,
    issue_user_cert,
    load_csr,
    public_key_matches,
    verified_ip,
    write_private,
)
from shoal.ca.rootca import create_root, cross_sign, key_to_pem, tls_info
from shoal.ca.tokens import ca_digest, generate_join_token, parse_join_token
from shoal.dispatcher.sanity import check_hostname
from shoal.errors import Conflict, InvalidArgument, NotFound, NotInSwarm
from shoal.ids import new_id
from shoal.models import (
    SECOND,
    Cluster,
    JoinTokens,
    ManagerStatus,
    Node,
    NodeAvailability,
    NodeDescription,
    NodeRole,
    NodeSpec,
    NodeState,
    NodeStatus,
    Version,
)
from shoal.store import MemoryStore
from shoal.store.autolock import KeyVault

log = logging.getLogger(__name__)

DEFAULT_NODE_CERT_EXPIRY = dt.timedelta(days=90)
DEFAULT_USER_CERT_EXPIRY = dt.timedelta(days=365)  # a person's certificate; revoked by removing the user
SWARM_PORT = 2377
INVALID_TOKEN = "invalid join token"
KEY_FILE = "ca.key"
ROTATION_FILE = "ca-rotation.json"


class _Rotation(msgspec.Struct):
    """A root rotation in progress: what stays trusted, and whom it still waits for."""

    root: str  # the root it rotated to: state naming another root is stale (aborted, or another swarm's)
    previous_root: str
    cross_signed: str  # the current root's key and name, certified by the previous root
    pending: list[str]  # node IDs that have not renewed since the rotation


class ClusterCA:
    """Signs node certificates with the root key in ``<data_root>/ca.key`` (cert: the store's TrustRoot)."""

    def __init__(self, store: MemoryStore, data_root: str | Path, *, local_node_id: str | None = None,
                 vault: KeyVault | None = None) -> None:
        self.store = store
        self.data_root = Path(data_root)
        # The manager's key files, wrapped under the unlock key while autolock is on.
        self.vault = vault or KeyVault(self.data_root)
        # This manager's own node: its agent runs in-process without a certificate, so a rotation
        # does not wait for it to renew.
        self.local_node_id = local_node_id
        self.generation = 0  # bumped whenever what the manager's TLS serves or trusts changes
        self._listeners: list[Callable[[], None]] = []
        self._root_pem = ""
        self._root: x509.Certificate | None = None
        self._key: ec.EllipticCurvePrivateKey | None = None
        self._rotation: _Rotation | None = None
        self._load()

    # ------------------------------------------------------------------ state

    def _cluster(self) -> Cluster:
        cluster = self.store.cluster()
        if cluster is None:
            raise NotInSwarm()
        root = cluster.TLSInfo.TrustRoot if cluster.TLSInfo else ""
        if root != self._root_pem and self._root_pem:  # a new swarm since (leave, then init): start over
            self._load(cluster)
            self._changed()
        return cluster

    def _load(self, cluster: Cluster | None = None) -> None:
        cluster = cluster or self._cluster()
        root_pem = cluster.TLSInfo.TrustRoot if cluster.TLSInfo else ""
        if not root_pem:
            raise InvalidArgument("the cluster has no root CA certificate")
        key_path = self.data_root / KEY_FILE
        nxt = key_path.with_name(KEY_FILE + ".next")
        if nxt.exists() and public_key_matches(root_pem, self.vault.read(nxt)):
            nxt.replace(key_path)  # a rotation committed to the store but stopped before this step
        key_pem = self.vault.read(key_path)
        if not public_key_matches(root_pem, key_pem):
            raise InvalidArgument(f"{key_path} does not hold the key of the cluster's root CA certificate")
        key = serialization.load_pem_private_key(key_pem.encode(), None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise InvalidArgument(f"{key_path}: the root CA key must be an EC key")
        self._root_pem, self._root, self._key = root_pem, x509.load_pem_x509_certificate(root_pem.encode()), key
        nxt.unlink(missing_ok=True)  # left by a rotation that stopped before the store named its root
        try:
            self._rotation = msgspec.json.decode((self.data_root / ROTATION_FILE).read_bytes(), type=_Rotation)
        except (FileNotFoundError, msgspec.DecodeError):  # none, or unreadable: trust the current root only
            self._rotation = None
        if self._rotation is not None and self._rotation.root != root_pem:
            self._rotation = None  # ... and its state, or one from an earlier swarm
            self._save_rotation()

    def _save_rotation(self) -> None:
        path = self.data_root / ROTATION_FILE
        if self._rotation is None:
            path.unlink(missing_ok=True)
        else:
            write_private(path, msgspec.json.encode(self._rotation).decode())

    def on_change(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` (no arguments) after the root or the trust bundle changed."""
        self._listeners.append(callback)

    def off_change(self, callback: Callable[[], None]) -> None:
        if callback in self._listeners:
            self._listeners.remove(callback)

    def _changed(self) -> None:
        self.generation += 1
        for cb in list(self._listeners):
            try:
                cb()
            except Exception:
                log.exception("CA change listener failed")

    @property
    def root_pem(self) -> str:
        self._cluster()
        return self._root_pem

    @property
    def root_digest(self) -> str:
        """The digest join tokens carry (and nodes compare with the root they hold)."""
        return ca_digest(self.root_pem)

    @property
    def rotation_in_progress(self) -> bool:
        self._cluster()
        return self._rotation is not None

    def trust_bundle_pem(self) -> str:
        """The roots a node certificate may chain to: the current one first, then (while a rotation
        is in progress) the previous one."""
        self._cluster()
        if self._rotation is None:
            return self._root_pem
        return self._root_pem + self._rotation.previous_root

    def cert_expiry(self) -> dt.timedelta:
        """Lifetime of new node certificates: the cluster's ``NodeCertExpiry``, or 90 days."""
        cfg = self._cluster().Spec.CAConfig
        if cfg is not None and cfg.NodeCertExpiry > 0:
            return dt.timedelta(seconds=cfg.NodeCertExpiry / SECOND)
        return DEFAULT_NODE_CERT_EXPIRY

    # ------------------------------------------------------------------ signing

    def sign_node_csr(self, csr_pem: str, node_id: str, role: NodeRole, cluster_id: str, addr: str) -> str:
        """A certificate (PEM) for the CSR's key naming the node, its role and cluster."""
        csr = load_csr(csr_pem)
        self._cluster()
        assert self._root is not None and self._key is not None
        return issue_node_cert(csr.public_key(), self._root, self._key, node_id, role,  # type: ignore[arg-type]
                               cluster_id, addr, self.cert_expiry())

    def issue_manager_server_cert(self, node_id: str, addr: str) -> tuple[str, str]:
        """(certificate chain PEM, key PEM) for this manager's own TLS listeners.

        During a rotation the chain carries the cross-signed new root after the certificate, so
        nodes that still trust only the old root accept it."""
        key_pem, csr_pem = generate_key_and_csr()
        cert_pem = self.sign_node_csr(csr_pem, node_id, NodeRole.MANAGER, self._cluster().ID, addr)
        if self._rotation is not None:
            cert_pem += self._rotation.cross_signed
        return cert_pem, key_pem

    def sign_user_csr(self, csr_pem: str, user: str, user_id: str,
                      validity: dt.timedelta = DEFAULT_USER_CERT_EXPIRY) -> str:
        """An API client certificate for ``user`` (see ca/certs.py ``issue_user_cert``)."""
        csr = load_csr(csr_pem)
        cluster = self._cluster()
        assert self._root is not None and self._key is not None
        return issue_user_cert(csr.public_key(), self._root, self._key, user, user_id,  # type: ignore[arg-type]
                               cluster.ID, validity)

    # ------------------------------------------------------------------ joining

    def validate_join_token(self, token: str) -> NodeRole:
        """The role a token admits; InvalidArgument for anything but the cluster's current tokens."""
        tokens = self._cluster().JoinTokens or JoinTokens()
        try:
            digest, _secret = parse_join_token(token.strip())
        except ValueError:
            raise InvalidArgument(INVALID_TOKEN) from None
        if not hmac.compare_digest(digest, self.root_digest):
            raise InvalidArgument(f"{INVALID_TOKEN}: remote CA does not match fingerprint (the token is for another "
                                  "cluster, or for a root CA that was rotated)")
        token = token.strip()
        if tokens.Manager and hmac.compare_digest(token.encode(), tokens.Manager.encode()):
            return NodeRole.MANAGER
        if tokens.Worker and hmac.compare_digest(token.encode(), tokens.Worker.encode()):
            return NodeRole.WORKER
        raise InvalidArgument(f"{INVALID_TOKEN}: A valid join token is necessary to join this cluster")

    def join(self, token: str, csr_pem: str, hostname: str, addr: str, availability: str,
             listen_port: int = SWARM_PORT, peer_ip: str = "") -> tuple[str, str]:
        """Admit a new node: (node ID, certificate PEM). Everything is checked before anything is
        written; the node object is created in one transaction. ``addr`` is the address the node
        advertises (an IP: it is where others reach it); ``peer_ip``, the one the join came from,
        is the only one its certificate names."""
        role = self.validate_join_token(token)
        cluster = self._cluster()
        try:
            avail = NodeAvailability(availability or NodeAvailability.ACTIVE)
        except ValueError:
            raise InvalidArgument(f"invalid availability {availability!r}: must be active, pause or drain") from None
        check_hostname(hostname)
        if addr and not verified_ip(addr):
            raise InvalidArgument(f"invalid advertise address {addr[:64]!r}: must be an IP address")
        node_id = new_id()
        cert_pem = self.sign_node_csr(csr_pem, node_id, role, cluster.ID, peer_ip)
        node = Node(
            ID=node_id, Version=Version(), CreatedAt="", UpdatedAt="",
            Spec=NodeSpec(Role=role, Availability=avail),
            Description=NodeDescription(Hostname=hostname, TLSInfo=tls_info(self._root_pem)),
            Status=NodeStatus(State=NodeState.UNKNOWN, Addr=addr),
            ManagerStatus=(ManagerStatus(Leader=False, Reachability="unknown", Addr=f"{addr}:{listen_port}")
                           if role == NodeRole.MANAGER else None),
        )
        with self.store.tx() as tx:
            for other in self.store.list("node"):
                if other.Description.Hostname == hostname and other.Status.State != NodeState.DOWN:
                    raise Conflict(f"a node named {hostname!r} is already part of the swarm ({other.ID}, status "
                                   f"{other.Status.State}); remove it first, or join with another hostname")
            tx.create("node", node)
        log.info("node %s (%s) joined as %s from %s", node_id, hostname, role, addr)
        return node_id, cert_pem

    def renew(self, node_id: str, csr_pem: str, peer_ip: str = "") -> str:
        """A new certificate for an existing node, with its current role (promote/demote apply here)
        and the address the renewal came from."""
        node: Node | None = self.store.get("node", node_id)
        if node is None:
            raise NotFound(f"node {node_id} not found")
        cert_pem = self.sign_node_csr(csr_pem, node_id, node.Spec.Role, self._cluster().ID, peer_ip)
        if self._rotation is not None and node_id in self._rotation.pending:
            self._rotation.pending.remove(node_id)
            self._save_rotation()
            self.maybe_finish_rotation()
        return cert_pem

    # ------------------------------------------------------------------ rotation

    def rotate_root(self) -> str:
        """Replace the root key and certificate; new join tokens. Returns the new root's PEM."""
        cluster = self._cluster()
        assert self._root is not None and self._key is not None
        new_cert, new_key = create_root(cluster.ID, unique=True)
        new_pem = new_cert.public_bytes(serialization.Encoding.PEM).decode()
        pending = [n.ID for n in self.store.list("node") if n.ID != self.local_node_id]
        rotation = _Rotation(root=new_pem, previous_root=self._root_pem,
                             cross_signed=cross_sign(new_cert, self._root, self._key), pending=pending)
        key_path = self.data_root / KEY_FILE
        nxt = key_path.with_name(KEY_FILE + ".next")
        # Order for crash safety: the new key and the rotation state are on disk before the store
        # names the new root; _load() completes a rotation that stopped between the two.
        previous = self._rotation
        self.vault.write(nxt, key_to_pem(new_key))
        self._rotation = rotation
        self._save_rotation()
        try:
            with self.store.tx() as tx:
                tx.update("cluster", msgspec.structs.replace(
                    cluster, TLSInfo=tls_info(new_pem), RootRotationInProgress=True,
                    JoinTokens=JoinTokens(Worker=generate_join_token(new_pem), Manager=generate_join_token(new_pem)),
                ))
        except BaseException:
            self._rotation = previous
            self._save_rotation()
            nxt.unlink(missing_ok=True)
            raise
        nxt.replace(key_path)
        self._root_pem, self._root, self._key = new_pem, new_cert, new_key
        log.info("root CA rotated; waiting for %d node(s) to renew", len(pending))
        self._changed()
        self.maybe_finish_rotation()
        return new_pem

    def _still_waiting_for(self, node_id: str) -> bool:
        node: Node | None = self.store.get("node", node_id)
        return node is not None and node.Status.State != NodeState.DOWN and node_id != self.local_node_id

    def maybe_finish_rotation(self) -> bool:
        """End the rotation (stop trusting the previous root) once no node still needs it."""
        if self._rotation is None:
            return False
        if any(self._still_waiting_for(nid) for nid in self._rotation.pending):
            return False
        self._rotation = None
        self._save_rotation()
        cluster = self.store.cluster()
        if cluster is not None and cluster.RootRotationInProgress:
            with self.store.tx() as tx:
                tx.update("cluster", msgspec.structs.replace(cluster, RootRotationInProgress=False))
        log.info("root CA rotation complete: the previous root is no longer trusted")
        self._changed()
        return True

    async def run(self) -> None:
        """Finish a rotation when the nodes it waits for go down or are removed (renewals finish it
        themselves). Runs as a manager component."""
        watcher = self.store.watch("node")
        try:
            self.maybe_finish_rotation()
            async for _batch in watcher:
                watcher.drain()
                self.maybe_finish_rotation()
        finally:
            watcher.close()

    def status(self) -> dict[str, Any]:
        """For diagnostics and ``swarm ca``: the root digest, and whom a rotation waits for."""
        waiting = [nid for nid in self._rotation.pending if self._still_waiting_for(nid)] if self._rotation else []
        return {"root_digest": self.root_digest, "rotation_in_progress": self._rotation is not None,
                "waiting_for": waiting}
