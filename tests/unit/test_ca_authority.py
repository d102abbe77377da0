"""ClusterCA: join tokens, joining, renewal and root rotation, on a store and key files (no network)."""

from __future__ import annotations

import stat
from pathlib import Path

import msgspec
import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from shoal.ca.authority import ClusterCA
from shoal.ca.certs import cert_identity, generate_key_and_csr, split_pem
from shoal.ca.rootca import create_root_ca
from shoal.ca.tokens import ca_digest, generate_join_token
from shoal.errors import Conflict, InvalidArgument, NotFound
from shoal.models import JoinTokens, NodeAvailability, NodeRole, NodeState, NodeStatus
from shoal.store import MemoryStore, NullBackend
from tests.integration.transport_env import make_cluster


@pytest.fixture
def env(tmp_path: Path) -> tuple[MemoryStore, ClusterCA, str]:
    store = MemoryStore(NullBackend())
    manager_id = make_cluster(store, tmp_path)
    return store, ClusterCA(store, tmp_path, local_node_id=manager_id), manager_id


def tokens(store: MemoryStore) -> JoinTokens:
    t = store.cluster().JoinTokens
    assert t is not None
    return t


def csr() -> str:
    return generate_key_and_csr()[1]


def set_state(store: MemoryStore, node_id: str, state: NodeState) -> None:
    with store.tx() as tx:
        node = store.get("node", node_id)
        tx.update("node", msgspec.structs.replace(node, Status=NodeStatus(State=state, Addr=node.Status.Addr)))


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_tokens_decide_the_role(env: tuple[MemoryStore, ClusterCA, str]) -> None:
    store, ca, _ = env
    assert ca.validate_join_token(tokens(store).Worker) == NodeRole.WORKER
    assert ca.validate_join_token(tokens(store).Manager) == NodeRole.MANAGER


@pytest.mark.parametrize("kind", ["garbage", "wrong-secret", "other-ca", "truncated"])
def test_bad_tokens_are_refused(env: tuple[MemoryStore, ClusterCA, str], kind: str) -> None:
    store, ca, _ = env
    worker = tokens(store).Worker
    bad = {
        "garbage": "not-a-token",
        "wrong-secret": generate_join_token(ca.root_pem),
        "other-ca": generate_join_token(create_root_ca("elsewhere")[0]),
        "truncated": worker[:-5].rsplit("-", 1)[0],
    }[kind]
    with pytest.raises(InvalidArgument, match="invalid join token") as exc:
        ca.validate_join_token(bad)
    if kind == "other-ca":
        assert "remote CA does not match fingerprint" in exc.value.message


def test_join_creates_the_node_and_a_certificate_naming_it(env: tuple[MemoryStore, ClusterCA, str]) -> None:
    store, ca, _ = env
    node_id, cert_pem = ca.join(tokens(store).Manager, csr(), "host-2", "10.77.0.2", "pause", peer_ip="10.77.0.2")
    node = store.get("node", node_id)
    assert node.Spec.Role == NodeRole.MANAGER and node.Spec.Availability == NodeAvailability.PAUSE
    assert node.Description.Hostname == "host-2"
    assert node.Status.State == NodeState.UNKNOWN and node.Status.Addr == "10.77.0.2"
    assert node.ManagerStatus is not None and node.ManagerStatus.Addr == "10.77.0.2:2377"
    ident = cert_identity(cert_pem)
    assert (ident.node_id, ident.role, ident.cluster_id) == (node_id, NodeRole.MANAGER, store.cluster().ID)
    cert = x509.load_pem_x509_certificate(cert_pem.encode())
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "swarm-manager" in sans.get_values_for_type(x509.DNSName)
    assert [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)] == ["10.77.0.2"]
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.CLIENT_AUTH in eku and ExtendedKeyUsageOID.SERVER_AUTH in eku
    root = x509.load_pem_x509_certificate(ca.root_pem.encode())
    cert.verify_directly_issued_by(root)

    worker_id, worker_cert = ca.join(tokens(store).Worker, csr(), "host-3", "10.77.0.3", "")
    assert store.get("node", worker_id).Spec.Role == NodeRole.WORKER
    assert "swarm-worker" in x509.load_pem_x509_certificate(worker_cert.encode()).extensions.get_extension_for_class(
        x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)
    assert store.get("node", worker_id).ManagerStatus is None
    assert cert_identity(worker_cert).role == NodeRole.WORKER


def test_a_certificate_names_only_the_role_and_the_address_the_ca_saw(env: tuple[MemoryStore, ClusterCA, str]) -> None:
    """The impersonation: a worker joining with the address "swarm-manager" got a certificate with
    that DNS name, which every agent accepts as the manager's. Names chosen by a node are refused;
    the only IP in the certificate is the one the join came from."""
    store, ca, _ = env
    with pytest.raises(InvalidArgument, match="invalid advertise address 'swarm-manager'"):
        ca.join(tokens(store).Worker, csr(), "evil", "swarm-manager", "", peer_ip="10.77.0.66")
    assert [n for n in store.list("node") if n.Description.Hostname == "evil"] == []
    _, cert_pem = ca.join(tokens(store).Worker, csr(), "liar", "10.77.0.1", "", peer_ip="10.77.0.66")
    sans = x509.load_pem_x509_certificate(cert_pem.encode()).extensions.get_extension_for_class(
        x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["swarm-worker"]
    assert [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)] == ["10.77.0.66"]


@pytest.mark.parametrize("token", ["SWMTKN-1-\u00e9", "SWMTKN-1-" + "\u00e9" * 50 + "-x", "\uff53\uff57\uff4d",
                                   "SWMTKN-1-" + "a" * 50 + "-\u00fc"])
def test_a_non_ascii_token_is_an_invalid_token(env: tuple[MemoryStore, ClusterCA, str], token: str) -> None:
    store, ca, _ = env
    with pytest.raises(InvalidArgument, match="invalid join token"):
        ca.join(token, csr(), "host-9", "10.77.0.9", "")
    with pytest.raises(InvalidArgument, match="invalid join token"):  # also once shaped like one
        ca.validate_join_token(tokens(store).Worker[:-1] + "\u00e9")


def test_join_with_bad_input_writes_nothing(env: tuple[MemoryStore, ClusterCA, str]) -> None:
    store, ca, _ = env
    before = store.revision
    with pytest.raises(InvalidArgument):
        ca.join(tokens(store).Worker, "not a csr", "host-2", "10.77.0.2", "active")
    with pytest.raises(InvalidArgument, match="availability"):
        ca.join(tokens(store).Worker, csr(), "host-2", "10.77.0.2", "sometimes")
    with pytest.raises(InvalidArgument, match="invalid join token"):
        ca.join("SWMTKN-1-nope", csr(), "host-2", "10.77.0.2", "active")
    assert store.revision == before and store.count("node") == 1


def test_duplicate_hostname_is_refused_unless_that_node_is_down(env: tuple[MemoryStore, ClusterCA, str]) -> None:
    store, ca, _ = env
    first, _ = ca.join(tokens(store).Worker, csr(), "host-2", "10.77.0.2", "active")
    with pytest.raises(Conflict, match="host-2"):
        ca.join(tokens(store).Worker, csr(), "host-2", "10.77.0.9", "active")
    with pytest.raises(Conflict):
        ca.join(tokens(store).Worker, csr(), "manager-host", "10.77.0.9", "active")  # the manager's own name
    assert store.count("node") == 2
    set_state(store, first, NodeState.DOWN)
    second, _ = ca.join(tokens(store).Worker, csr(), "host-2", "10.77.0.9", "active")
    assert second != first and store.count("node") == 3


def test_renew_uses_the_current_role_and_refuses_removed_nodes(env: tuple[MemoryStore, ClusterCA, str]) -> None:
    store, ca, _ = env
    node_id, cert_pem = ca.join(tokens(store).Worker, csr(), "host-2", "10.77.0.2", "active")
    with store.tx() as tx:
        node = store.get("node", node_id)
        tx.update("node", msgspec.structs.replace(node, Spec=msgspec.structs.replace(node.Spec, Role=NodeRole.MANAGER)))
    renewed = ca.renew(node_id, csr())
    assert cert_identity(renewed).role == NodeRole.MANAGER and renewed != cert_pem
    with store.tx() as tx:
        tx.delete("node", node_id)
    with pytest.raises(NotFound):
        ca.renew(node_id, csr())


def test_certificate_lifetime_follows_the_cluster_setting(tmp_path: Path) -> None:
    store = MemoryStore(NullBackend())
    make_cluster(store, tmp_path, cert_expiry_s=3600)
    ca = ClusterCA(store, tmp_path)
    _, cert_pem = ca.join(tokens(store).Worker, csr(), "host-2", "10.77.0.2", "active")
    cert = x509.load_pem_x509_certificate(cert_pem.encode())
    lifetime = (cert.not_valid_after_utc - cert.not_valid_before_utc).total_seconds()
    assert 3600 <= lifetime <= 3600 + 6 * 60  # plus the clock-skew allowance


def test_rotation_replaces_root_key_and_tokens_and_trusts_both_roots(
    env: tuple[MemoryStore, ClusterCA, str], tmp_path: Path
) -> None:
    store, ca, _ = env
    node_id, _ = ca.join(tokens(store).Worker, csr(), "host-2", "10.77.0.2", "active")
    old_root, old_tokens, old_key = ca.root_pem, tokens(store), (tmp_path / "ca.key").read_text()
    generation = ca.generation
    new_root = ca.rotate_root()

    cluster = store.cluster()
    assert cluster.TLSInfo.TrustRoot == new_root != old_root and cluster.RootRotationInProgress
    assert (tmp_path / "ca.key").read_text() != old_key and mode(tmp_path / "ca.key") == 0o600
    assert mode(tmp_path / "ca-rotation.json") == 0o600
    assert tokens(store).Worker != old_tokens.Worker and tokens(store).Manager != old_tokens.Manager
    assert tokens(store).Worker.split("-")[2] == ca_digest(new_root)
    assert ca.validate_join_token(tokens(store).Worker) == NodeRole.WORKER
    with pytest.raises(InvalidArgument, match="remote CA does not match fingerprint"):
        ca.validate_join_token(old_tokens.Worker)
    assert split_pem(ca.trust_bundle_pem()) == [new_root, old_root]
    assert ca.generation > generation

    # The manager's certificate comes from the new root, with the new root cross-signed by the old.
    chain, _key = ca.issue_manager_server_cert("mgr", "10.77.0.1")
    leaf, cross = (x509.load_pem_x509_certificate(p.encode()) for p in split_pem(chain))
    leaf.verify_directly_issued_by(x509.load_pem_x509_certificate(new_root.encode()))
    cross.verify_directly_issued_by(x509.load_pem_x509_certificate(old_root.encode()))

    # A restarted manager still trusts the old root until the node renewed.
    again = ClusterCA(store, tmp_path, local_node_id=ca.local_node_id)
    assert again.rotation_in_progress and again.root_pem == new_root
    again.renew(node_id, csr())
    assert not again.rotation_in_progress and not store.cluster().RootRotationInProgress
    assert again.trust_bundle_pem() == new_root
    assert not (tmp_path / "ca-rotation.json").exists()


def test_rotation_does_not_wait_for_nodes_that_are_down_or_removed(env: tuple[MemoryStore, ClusterCA, str]) -> None:
    store, ca, _ = env
    a, _ = ca.join(tokens(store).Worker, csr(), "host-2", "10.77.0.2", "active")
    b, _ = ca.join(tokens(store).Worker, csr(), "host-3", "10.77.0.3", "active")
    ca.rotate_root()
    assert ca.rotation_in_progress and sorted(ca.status()["waiting_for"]) == sorted([a, b])
    set_state(store, a, NodeState.DOWN)
    assert not ca.maybe_finish_rotation()
    with store.tx() as tx:
        tx.delete("node", b)
    assert ca.maybe_finish_rotation()
    assert ca.trust_bundle_pem() == ca.root_pem


def test_a_lone_manager_rotates_at_once(env: tuple[MemoryStore, ClusterCA, str]) -> None:
    store, ca, _ = env
    ca.rotate_root()
    assert not ca.rotation_in_progress and not store.cluster().RootRotationInProgress


def test_key_that_does_not_match_the_root_is_refused(tmp_path: Path) -> None:
    store = MemoryStore(NullBackend())
    make_cluster(store, tmp_path)
    (tmp_path / "ca.key").write_text(create_root_ca("x")[1])
    with pytest.raises(InvalidArgument, match="does not hold the key"):
        ClusterCA(store, tmp_path)


async def test_a_new_swarm_in_the_same_store_is_followed(
    env: tuple[MemoryStore, ClusterCA, str], tmp_path: Path
) -> None:
    """``swarm leave`` then ``swarm init``: a new root and key; a stale rotation file is ignored."""
    store, ca, _ = env
    ca.join(tokens(store).Worker, csr(), "host-2", "10.77.0.2", "active")
    ca.rotate_root()
    assert ca.rotation_in_progress
    await store.wipe()
    make_cluster(store, tmp_path)
    generation = ca.generation
    assert ca.validate_join_token(tokens(store).Worker) == NodeRole.WORKER
    assert ca.root_pem == store.cluster().TLSInfo.TrustRoot and ca.generation > generation
    assert not ca.rotation_in_progress and ca.trust_bundle_pem() == ca.root_pem
