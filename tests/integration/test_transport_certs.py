"""Certificate renewal (asked, scheduled, on a role change) and root rotation, over real TLS."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature

from shoal.ca.certs import cert_identity, split_pem
from shoal.errors import InvalidArgument, Unavailable
from shoal.models import NodeDescription, NodeRole
from shoal.transport.bootstrap import NodeCredentials, join_cluster, load_credentials
from shoal.transport.client import GrpcDispatcherClient
from tests.integration.transport_env import manager_side


async def wait_until(predicate: Callable[[], Any], within: float = 5.0) -> Any:
    deadline = time.monotonic() + within
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {within}s")
        await asyncio.sleep(0.05)
    return value


def issued_by(cert_pem: str, root_pem: str) -> bool:
    try:
        x509.load_pem_x509_certificate(cert_pem.encode()).verify_directly_issued_by(
            x509.load_pem_x509_certificate(root_pem.encode()))
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


async def session(client: GrpcDispatcherClient, creds: NodeCredentials) -> str:
    info = await client.register(creds.node_id, NodeDescription(Hostname="h"), "127.0.0.2")
    return info.session_id


async def test_renewal_on_request_keeps_the_session(tmp_path: Path) -> None:
    async with manager_side(tmp_path) as mgr:
        creds = await join_cluster(mgr.addr, mgr.tokens.Worker, "host-2", "127.0.0.2", "active", tmp_path / "c")
        client = GrpcDispatcherClient(creds, tmp_path / "c")
        try:
            sid = await session(client, creds)
            renewed = await client.renew_certificate()
            assert renewed.cert_pem != creds.cert_pem and renewed.key_pem != creds.key_pem
            assert load_credentials(tmp_path / "c") == renewed
            assert await client.heartbeat(sid) > 0  # a new connection, the same session
        finally:
            await client.close()


async def test_promotion_renews_with_the_new_role(tmp_path: Path) -> None:
    async with manager_side(tmp_path) as mgr:
        creds = await join_cluster(mgr.addr, mgr.tokens.Worker, "host-2", "127.0.0.2", "active", tmp_path / "c")
        client = GrpcDispatcherClient(creds, tmp_path / "c")
        seen: list[NodeCredentials] = []
        client.on_renewed = seen.append
        try:
            sid = await session(client, creds)
            with mgr.store.tx() as tx:  # `node promote`
                node = mgr.store.get("node", creds.node_id)
                tx.update("node", msgspec.structs.replace(
                    node, Spec=msgspec.structs.replace(node.Spec, Role=NodeRole.MANAGER)))
            await client.heartbeat(sid)  # the reply says "manager": renew now
            await wait_until(lambda: client.creds.role == NodeRole.MANAGER)
            assert cert_identity(client.creds.cert_pem).role == NodeRole.MANAGER
            assert seen and seen[-1].role == NodeRole.MANAGER
        finally:
            await client.close()


async def test_certificates_renew_before_they_expire(tmp_path: Path) -> None:
    async with manager_side(tmp_path, cert_expiry_s=3.0) as mgr:
        creds = await join_cluster(mgr.addr, mgr.tokens.Worker, "host-2", "127.0.0.2", "active", tmp_path / "c")
        client = GrpcDispatcherClient(creds, tmp_path / "c")
        try:
            await session(client, creds)
            await wait_until(lambda: client.creds.cert_pem != creds.cert_pem, within=4.0)
            assert client.creds.not_after > creds.not_after
            # Past the first certificate's expiry (the manager's first one expired about then too).
            await asyncio.sleep(max(creds.not_after.timestamp() - time.time(), 0) + 0.2)
            sid = await session(client, creds)  # new handshakes: fresh certificates on both sides
            assert await client.heartbeat(sid) > 0
            fresh = GrpcDispatcherClient(client.creds, tmp_path / "c2")
            try:
                await session(fresh, client.creds)
            finally:
                await fresh.close()
        finally:
            await client.close()


async def test_root_rotation(tmp_path: Path) -> None:
    async with manager_side(tmp_path) as mgr:
        old_root, old_worker_token = mgr.ca.root_pem, mgr.tokens.Worker
        creds = await join_cluster(mgr.addr, old_worker_token, "host-2", "127.0.0.2", "active", tmp_path / "a")
        new_root = mgr.ca.rotate_root()
        assert mgr.store.cluster().RootRotationInProgress

        # Joins need the new token: the old one names the old root.
        with pytest.raises(InvalidArgument, match="remote CA does not match fingerprint"):
            await join_cluster(mgr.addr, old_worker_token, "host-3", "127.0.0.3", "active", tmp_path / "b")
        joined = await join_cluster(mgr.addr, mgr.tokens.Worker, "host-3", "127.0.0.3", "active", tmp_path / "b")
        assert issued_by(joined.cert_pem, new_root)

        # The node on the old root still gets in (both ways: it trusts only the old root), and the
        # manager's replies make it renew onto the new one.
        stale = GrpcDispatcherClient(creds, tmp_path / "a-copy")
        client = GrpcDispatcherClient(creds, tmp_path / "a")
        try:
            assert await session(stale, creds)
            sid = await session(client, creds)
            await wait_until(lambda: client.creds.root_digest == mgr.ca.root_digest)
            assert issued_by(client.creds.cert_pem, new_root)
            assert split_pem(client.creds.root_pem)[0] == new_root
            # Every node renewed: the rotation is over, the old root is no longer trusted.
            await wait_until(lambda: not mgr.ca.rotation_in_progress)
            assert not mgr.store.cluster().RootRotationInProgress
            assert await client.heartbeat(sid) > 0
            late = GrpcDispatcherClient(creds, tmp_path / "a-late")  # a fresh connection on the old root
            try:
                with pytest.raises(Unavailable):
                    await session(late, creds)
            finally:
                await late.close()
        finally:
            await stale.close()
            await client.close()
        assert old_root not in mgr.ca.trust_bundle_pem()
