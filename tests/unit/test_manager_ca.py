"""swarm init with a root CA the user supplies: used as is, key kept out of the store, bad ones refused."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from shoal.ca.rootca import create_root_ca
from shoal.ca.tokens import ca_digest, parse_join_token
from shoal.errors import InvalidArgument
from shoal.manager import Manager
from shoal.models import CAConfig, InitRequest, SwarmSpec
from shoal.store import NullBackend


async def test_init_with_a_supplied_root_ca(tmp_path: Path) -> None:
    cert, key = create_root_ca("mine")
    mgr = Manager(tmp_path, backend=NullBackend(), advertise_addr="127.0.0.1")
    spec = SwarmSpec(CAConfig=CAConfig(SigningCACert=cert, SigningCAKey=key))
    await mgr.init_swarm(InitRequest(ListenAddr="127.0.0.1:0", Spec=spec))
    try:
        cluster = mgr.store.cluster()
        assert cluster.TLSInfo.TrustRoot == cert
        assert parse_join_token(cluster.JoinTokens.Worker)[0] == ca_digest(cert)
        assert cluster.Spec.CAConfig.SigningCAKey == "" and cluster.Spec.CAConfig.SigningCACert == ""
        assert b"PRIVATE KEY" not in msgspec.json.encode(cluster)
        assert (tmp_path / "ca.key").read_text() == key
        assert (tmp_path / "ca.key").stat().st_mode & 0o777 == 0o600
    finally:
        await mgr.stop()


async def test_a_mismatched_supplied_key_is_refused_and_nothing_changes(tmp_path: Path) -> None:
    cert, _ = create_root_ca("one")
    _, other_key = create_root_ca("two")
    mgr = Manager(tmp_path, backend=NullBackend(), advertise_addr="127.0.0.1")
    spec = SwarmSpec(CAConfig=CAConfig(SigningCACert=cert, SigningCAKey=other_key))
    with pytest.raises(InvalidArgument, match="does not match"):
        await mgr.init_swarm(InitRequest(ListenAddr="127.0.0.1:0", Spec=spec))
    assert not mgr.in_swarm and mgr.store.revision == 0
    assert not (tmp_path / "ca.key").exists()
