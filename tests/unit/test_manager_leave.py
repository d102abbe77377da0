"""``swarm leave`` on a manager never erases the cluster state another manager would need."""

from __future__ import annotations

import msgspec
import pytest

from shoal.bench.scale import free_port_pair
from shoal.errors import Unavailable
from shoal.manager import Manager
from shoal.models import InitRequest, NodeRole, NodeSpec
from shoal.orchestrator.testutils import make_node


async def test_leave_without_force_is_refused_even_with_other_nodes_promoted(tmp_path) -> None:
    manager = Manager(tmp_path, engine_info={"Name": "m1"}, advertise_addr="127.0.0.1")
    await manager.start()
    try:
        await manager.init_swarm(InitRequest(ListenAddr=f"127.0.0.1:{free_port_pair()}", AdvertiseAddr="127.0.0.1"))
        other = manager.store.get("node", make_node(manager.store, "m2").ID)
        with manager.store.tx() as tx:  # promoted: a manager in name only while the store is embedded
            tx.update("node", msgspec.structs.replace(other, Spec=NodeSpec(Role=NodeRole.MANAGER)))
        with pytest.raises(Unavailable, match="erases all current state"):
            await manager.leave(force=False)
        assert manager.in_swarm and manager.store.cluster() is not None
        assert manager.store.count("node") == 2
        await manager.leave(force=True)
        assert not manager.in_swarm and manager.store.cluster() is None
    finally:
        await manager.close()
