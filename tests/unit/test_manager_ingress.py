"""A swarm made before Shoal had an ingress network gets one, and its publishing services' tasks are
rolled onto it, when its leader starts."""

from __future__ import annotations

import msgspec

from shoal.allocator.ingress import find_ingress
from shoal.bench.scale import free_port_pair
from shoal.manager import Manager
from shoal.models import Endpoint, EndpointSpec, InitRequest, PortConfig, TaskState
from shoal.orchestrator.task import new_task
from shoal.orchestrator.testutils import make_node, make_service


async def test_an_old_swarm_gets_its_ingress_network_and_its_tasks_rolled(tmp_path) -> None:
    manager = Manager(tmp_path, engine_info={"Name": "m1"}, advertise_addr="127.0.0.1")
    await manager.start()
    try:
        await manager.init_swarm(InitRequest(ListenAddr=f"127.0.0.1:{free_port_pair()}", AdvertiseAddr="127.0.0.1"))
        store = manager.store
        ingress = find_ingress(store.list("network"))
        assert ingress is not None and ingress.Spec.Name == "ingress"  # made by init
        # What an older Shoal left: no ingress network, a service publishing, a task placed without it.
        with store.tx() as tx:
            tx.delete("network", ingress.ID)
        port = PortConfig(TargetPort=80, PublishedPort=8080)
        svc = make_service(store, "demo", replicas=1, EndpointSpec=EndpointSpec(Ports=[port]))
        svc = msgspec.structs.replace(svc, Endpoint=Endpoint(Spec=svc.Spec.EndpointSpec, Ports=[port]))
        quiet = make_service(store, "quiet", replicas=1)  # publishes nothing: left alone
        node = make_node(store, "n1")
        task = msgspec.structs.replace(new_task(svc, 1), NodeID=node.ID, DesiredState=TaskState.RUNNING)
        with store.tx() as tx:
            tx.update("service", svc)
            tx.create("task", task)
        before = store.get("service", svc.ID).Spec.TaskTemplate.ForceUpdate

        await manager._ensure_ingress()
        assert find_ingress(store.list("network")) is not None
        assert store.get("service", svc.ID).Spec.TaskTemplate.ForceUpdate == before + 1
        assert store.get("service", quiet.ID).Spec.TaskTemplate.ForceUpdate == 0
        await manager._ensure_ingress()  # again (a later leader start): nothing more to make
        assert len([n for n in store.list("network") if n.Spec.Ingress]) == 1
    finally:
        await manager.close()
