"""--with-registry-auth's credentials reach only the nodes that run the service's tasks: they travel
in the tasks' spec (ContainerSpec.PullOptions), and a node's assignments hold only its own tasks.
Real dispatcher, orchestrator and scheduler on a memory store (the fixtures of the network tests)."""

from __future__ import annotations

import msgspec

from shoal.models import ContainerSpec, Placement, PullOptions, TaskSpec
from shoal.orchestrator.testutils import make_service
from tests.unit.test_dispatcher_networks import cluster, connect  # noqa: F401  (cluster: a fixture)

AUTH = "eyJ1c2VybmFtZSI6InUiLCJwYXNzd29yZCI6InMzY3JldCJ9"


async def test_credentials_travel_only_to_the_nodes_running_the_service(cluster) -> None:  # noqa: F811
    store, d, nodes = cluster
    a = await connect(d, nodes["a"], "192.168.5.1")
    b = await connect(d, nodes["b"], "192.168.5.2")
    make_service(store, "private", replicas=2, template=TaskSpec(
        ContainerSpec=ContainerSpec(Image="127.0.0.1:5000/app:1", PullOptions=PullOptions(RegistryAuth=AUTH)),
        Placement=Placement(Constraints=["node.hostname==a"])))
    make_service(store, "public", replicas=1, template=TaskSpec(
        ContainerSpec=ContainerSpec(Image="busybox:latest"), Placement=Placement(Constraints=["node.hostname==b"])))
    await a.until(lambda v: len(v.tasks) == 2, "a's two tasks")
    await b.until(lambda v: len(v.tasks) == 1, "b's task")
    for t in a.view.tasks.values():
        assert t.Spec.ContainerSpec.PullOptions.RegistryAuth == AUTH  # the agent pulls with it
    assert AUTH not in msgspec.json.encode(b.view.messages).decode()  # b never hears it
