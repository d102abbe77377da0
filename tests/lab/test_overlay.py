"""Overlay networks across real hosts: a 2-host lab, one overlay network, service "alpha" on host-1
and service "beta" on host-2; beta reaches alpha across hosts by IP (VXLAN, head-end replication),
by name and by ``tasks.alpha`` (each node's DNS responder). The engines see only their own
container; the names come from the records.

Two ways in: the node side alone (NetworkAgent + DockerExecutor run inside each host's namespace
by overlay_node.py, fed hand-made NetworkStates, with a VNI far from the allocator's), and the whole
cluster (``docker network create -d overlay`` and ``docker service create --network`` against the
lab's manager)."""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import docker
import msgspec
import pytest

from shoal.dispatcher.protocol import NetworkState, ServiceRecord
from shoal.ids import new_id
from shoal.lab import Lab
from shoal.models import (
    SECOND,
    ContainerSpec,
    Driver,
    IPAMConfig,
    IPAMOptions,
    Network,
    NetworkAttachment,
    NetworkSpec,
    Task,
    TaskSpec,
    TaskState,
    TaskStatus,
    Version,
)
from tests.lab.conftest import wait_for

pytestmark = pytest.mark.lab(hosts=2, join=True)

HELPER = str(Path(__file__).with_name("overlay_node.py"))
PREFIX = "10.66.1"
NET = Network(
    ID=new_id(), Version=Version(1), CreatedAt="", UpdatedAt="", Spec=NetworkSpec(Name="ovlab"),
    DriverState=Driver(Name="overlay", Options={"com.docker.network.driver.overlay.vxlanid_list": "16000"}),
    IPAMOptions=IPAMOptions(Configs=[IPAMConfig(Subnet=f"{PREFIX}.0/24", Gateway=f"{PREFIX}.1")]),
)
ADDRS = {"alpha": f"{PREFIX}.5", "beta": f"{PREFIX}.6"}
NODE_ADDRS = {1: f"{PREFIX}.251", 2: f"{PREFIX}.252"}  # per node: the bridges never share an IP


def task(node_id: str, service: str) -> Task:
    return Task(
        ID=new_id(), Version=Version(), CreatedAt="", UpdatedAt="",
        Spec=TaskSpec(ContainerSpec=ContainerSpec(Image="busybox:latest", Command=["sleep", "300"],
                                                  StopGracePeriod=SECOND)),
        ServiceID="svc-" + service, Status=TaskStatus(State=TaskState.ASSIGNED), DesiredState=TaskState.RUNNING,
        NodeID=node_id, Slot=1, ServiceAnnotations={"Name": service},
        NetworksAttachments=[NetworkAttachment(Network=NET, Addresses=[ADDRS[service] + "/24"])],
    )


RECORDS = [
    ServiceRecord(service_id="svc-" + name, name=name, addrs=[ip], tasks={f"{name}.1.x": ip})
    for name, ip in ADDRS.items()
]


@pytest.fixture
def nodes(lab: Lab) -> Iterator[dict[str, tuple[docker.DockerClient, str]]]:
    """alpha on host-1, beta on host-2: {service: (that host's engine, container id)}."""
    procs: list[subprocess.Popen[str]] = []
    out: dict[str, tuple[docker.DockerClient, str]] = {}
    try:
        for n, service in ((1, "alpha"), (2, "beta")):
            h = lab.host(n)
            other = lab.host(3 - n)
            state = NetworkState(network=NET, node_address=f"{NODE_ADDRS[n]}/24", peers=[other.addr], records=RECORDS)
            node_id = f"ovlab-{n}"
            encoded = [msgspec.json.encode(x).decode() for x in (state, task(node_id, service))]
            argv = lab.nsenter(n, sys.executable, HELPER, h.engine, node_id, h.addr, *encoded)
            p = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
            procs.append(p)
            assert p.stdout is not None
            line = p.stdout.readline().strip()
            assert line.startswith("ready "), f"{h.name}: {line or 'helper exited'}"
            out[service] = (docker.DockerClient(base_url=h.engine, version="1.41", timeout=60), line.split()[1])
        yield out
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
        for client, _ in out.values():
            client.close()


def sh(client: docker.DockerClient, cid: str, script: str) -> tuple[int, str]:
    res = client.containers.get(cid).exec_run(["sh", "-c", script])
    return res.exit_code, res.output.decode(errors="replace")


def test_beta_reaches_alpha_across_hosts(nodes: dict[str, tuple[docker.DockerClient, str]]) -> None:
    client_b, cid_b = nodes["beta"]
    client_a, cid_a = nodes["alpha"]
    # Each engine knows only its own container.
    assert [c.id for c in client_b.containers.list(filters={"label": "shoal.service.name=alpha"})] == []

    code, out = sh(client_b, cid_b, f"ping -c2 -W2 {ADDRS['alpha']}")
    assert code == 0, out
    code, out = sh(client_b, cid_b, "ping -c1 -W2 alpha && nslookup tasks.alpha")
    assert code == 0 and ADDRS["alpha"] in out, out
    code, out = sh(client_a, cid_a, "ping -c1 -W2 beta")  # and back, through host-1's own responder
    assert code == 0 and ADDRS["beta"] in out, out
    # A full-size frame for the overlay's MTU crosses unfragmented (1450 - 28 bytes of IP+ICMP).
    code, out = sh(client_b, cid_b, f"ping -c1 -W2 -s 1422 {ADDRS['alpha']}")
    assert code == 0, out
    # TCP across hosts: a one-shot server in alpha, read from beta by name (busybox's nc; its wget
    # crashes on this image even locally).
    client_a.containers.get(cid_a).exec_run(["sh", "-c", "echo overlay-ok | nc -l -p 9090"], detach=True)
    fetch = "for i in 1 2 3 4 5; do nc alpha 9090 </dev/null && exit 0; sleep 0.2; done; false"
    code, out = sh(client_b, cid_b, fetch)
    assert code == 0 and "overlay-ok" in out, out


def test_services_on_an_overlay_reach_each_other_across_hosts(lab: Lab) -> None:
    client = docker.DockerClient(base_url=lab.docker_host, version="1.41", timeout=60)
    engines = {n: docker.DockerClient(base_url=lab.host(n).engine, version="1.41", timeout=60) for n in (1, 2)}
    wait_for(lambda: len(client.nodes.list()) == 2 and
             all(n.attrs["Status"]["State"] == "ready" for n in client.nodes.list()))
    net = client.networks.create("ovcluster", driver="overlay")
    services = []
    try:
        for n, name in ((1, "alpha"), (2, "beta")):
            services.append(client.services.create(
                "busybox:latest", ["sleep", "300"], name=name, networks=["ovcluster"],
                constraints=[f"node.hostname==host-{n}"], stop_grace_period=SECOND,
            ))

        def running(n: int, name: str) -> str:
            cs = engines[n].containers.list(filters={"label": f"com.docker.swarm.service.name={name}"})
            return cs[0].id if cs else ""

        def networks_of_alpha() -> dict:
            # The container running alpha's task now: under a loaded CI run its first container was
            # once replaced between being listed and being inspected (cause not found yet; see the
            # issue-10 note), so look it up afresh rather than hold on to the first ID.
            cid = running(1, "alpha")
            with contextlib.suppress(docker.errors.NotFound):
                return engines[1].containers.get(cid).attrs["NetworkSettings"]["Networks"] if cid else {}
            return {}

        cid_b = wait_for(lambda: running(2, "beta"))
        ip_a = wait_for(networks_of_alpha)
        addr_a = next(iter(ip_a.values()))["IPAddress"]
        code, out = sh(engines[2], cid_b, f"ping -c2 -W2 {addr_a}")
        assert code == 0, out
        # Names: the records reach host-2 once alpha runs. `alpha` is its VIP (endpoint mode vip),
        # which host-2's kernel forwards to the task (the ping is answered); tasks.alpha is the task.
        alpha = client.services.get("alpha").attrs
        vip = next(v["Addr"].split("/")[0] for v in alpha["Endpoint"]["VirtualIPs"] if v["NetworkID"] == net.id)
        code, out = wait_for(lambda: (r := sh(engines[2], cid_b, "ping -c1 -W2 alpha"))[0] == 0 and r, 20)
        assert f"({vip})" in out, out
        code, out = sh(engines[2], cid_b, "nslookup tasks.alpha")
        assert code == 0 and addr_a in out, out

        # host-2's daemon dies and comes back: the container kept running, the restarted agent adopts
        # the engine network and device as they are, and its DNS responder answers again.
        lab.kill("host-2")
        lab.restore("host-2")
        code, out = wait_for(lambda: (r := sh(engines[2], cid_b, "ping -c1 -W2 alpha"))[0] == 0 and r, 30)
        assert f"({vip})" in out and running(2, "beta") == cid_b, out
        code, out = sh(engines[2], cid_b, "nslookup tasks.alpha")
        assert code == 0 and addr_a in out, out

        # No tasks left on the network: each node takes its bridge network (and VXLAN device) down.
        for svc in services:
            svc.remove()
        services = []
        wait_for(lambda: not any(e.networks.list(filters={"label": "shoal.network.id"}) for e in engines.values()), 30)
    finally:
        for svc in services:
            svc.remove()
        wait_for(lambda: not any(e.containers.list(all=True, filters={"label": "com.docker.swarm.service.name"})
                                 for e in engines.values()), 30)
        net.remove()
        for e in engines.values():
            e.close()
        client.close()
