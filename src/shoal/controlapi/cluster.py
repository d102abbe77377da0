"""The cluster (``/swarm``) object: inspect and update, including join-token rotation."""

from __future__ import annotations

import msgspec

from shoal.ca.tokens import generate_join_token
from shoal.controlapi.errors import invalid
from shoal.controlapi.validate import check_swarm_labels
from shoal.errors import NotInSwarm
from shoal.models import SECOND, Cluster, JoinTokens, SwarmSpec
from shoal.store import MemoryStore
from shoal.store.autolock import human_key, new_unlock_key

_MIN_CERT_EXPIRY = 3600 * SECOND


def inspect_cluster(store: MemoryStore) -> Cluster:
    cluster = store.cluster()
    if cluster is None:
        raise NotInSwarm()
    return cluster


def autolock_of(spec: SwarmSpec | None) -> bool:
    return bool(spec is not None and spec.EncryptionConfig is not None and spec.EncryptionConfig.AutoLockManagers)


def check_swarm_spec(spec: SwarmSpec) -> None:
    """What swarmkit refuses in a swarm spec, at init as at update."""
    ca = spec.CAConfig
    if ca is not None and ca.NodeCertExpiry and ca.NodeCertExpiry < _MIN_CERT_EXPIRY:
        raise invalid("minimum certificate expiry time is: 1h0m0s")
    orch = spec.Orchestration
    if orch is not None and orch.TaskHistoryRetentionLimit is not None and orch.TaskHistoryRetentionLimit < 0:
        raise invalid("TaskHistoryRetentionLimit cannot be negative")
    check_swarm_labels(spec.Labels)


def update_cluster(
    store: MemoryStore,
    version: int,
    spec: SwarmSpec,
    rotate_worker_token: bool = False,
    rotate_manager_token: bool = False,
    rotate_unlock_key: bool = False,
) -> Cluster:
    """Replace the swarm spec (stale ``version`` → 409) and rotate the join tokens asked for; the
    unlock key follows ``EncryptionConfig.AutoLockManagers`` as swarmkit's UpdateCluster: made when
    autolock turns on, dropped when it turns off, replaced on ``rotateManagerUnlockKey`` (ignored
    while autolock is off)."""
    cur = inspect_cluster(store)
    check_swarm_spec(spec)
    tokens = cur.JoinTokens or JoinTokens()
    if rotate_worker_token or rotate_manager_token:
        root = cur.TLSInfo.TrustRoot if cur.TLSInfo is not None else ""
        tokens = JoinTokens(
            Worker=generate_join_token(root) if rotate_worker_token else tokens.Worker,
            Manager=generate_join_token(root) if rotate_manager_token else tokens.Manager,
        )
    unlock_key = cur.UnlockKey
    if not autolock_of(spec):
        unlock_key = ""
    elif not unlock_key or rotate_unlock_key:
        unlock_key = human_key(new_unlock_key())
    new = msgspec.structs.replace(cur, Spec=spec, JoinTokens=tokens, UnlockKey=unlock_key)
    with store.tx() as tx:
        tx.update("cluster", new, expected_version=version)
    return new
