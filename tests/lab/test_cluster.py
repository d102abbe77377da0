"""Issue 3 on a real 4-host lab: spread, failover of lost hosts, drain/pause, labels, refusals.

Every host is a network namespace with its own dockerd and Shoal daemon; faults are real (a
SIGKILLed daemon, a link taken down). The heartbeat is set to 1 s so a lost node is marked down
in about 3 s instead of 15.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import grpc
import pytest

from shoal.errors import ShoalError
from shoal.lab import Lab
from shoal.models import NodeDescription
from shoal.transport import messages as m
from shoal.transport.bootstrap import join_cluster
from shoal.transport.rpc import DISPATCHER_SERVICE, decoder, encode, path, secure_channel
from tests.lab.conftest import wait_for

pytestmark = pytest.mark.lab(hosts=4, join=True)

IMAGE = "busybox:latest"
SECOND = 1_000_000_000


def client_of(lab: Lab) -> docker.DockerClient:
    return docker.DockerClient(base_url=lab.docker_host, version="1.41", timeout=60)


@pytest.fixture
def swarm(lab: Lab) -> Iterator[docker.DockerClient]:
    client = client_of(lab)
    wait_for(lambda: all(n.attrs["Status"]["State"] == "ready" for n in client.nodes.list()) and
             len(client.nodes.list()) == 4)
    spec = client.swarm.attrs["Spec"]
    spec.setdefault("Dispatcher", {})["HeartbeatPeriod"] = SECOND
    client.api.update_swarm(version=client.swarm.attrs["Version"]["Index"], swarm_spec=spec)
    client.swarm.reload()
    yield client
    for svc in client.services.list():
        svc.remove()
    for node in client.nodes.list():  # undo drains, pauses and labels
        spec = node.attrs["Spec"]
        if spec.get("Availability") != "active" or spec.get("Labels"):
            spec["Availability"], spec["Labels"] = "active", {}
            node.update(spec)


def hostnames(client: docker.DockerClient) -> dict[str, str]:
    return {n.id: n.attrs["Description"]["Hostname"] for n in client.nodes.list()}


def running_per_host(client: docker.DockerClient, service_id: str) -> dict[str, int]:
    names = hostnames(client)
    tasks = client.api.tasks(filters={"service": service_id, "desired-state": "running"})
    return dict(collections.Counter(names[t["NodeID"]] for t in tasks if t["Status"]["State"] == "running"))


def engine_containers(lab: Lab, service_id: str) -> dict[str, list[dict[str, Any]]]:
    """Running containers of a service on every host's own engine, as the engines see them."""
    out: dict[str, list[dict[str, Any]]] = {}
    for h in lab.hosts:
        engine = docker.APIClient(base_url=h.engine, version="1.41", timeout=30)
        try:
            out[h.name] = engine.containers(filters={"label": f"shoal.service.id={service_id}"})
        except docker.errors.DockerException:
            out[h.name] = []  # an engine that is down runs nothing
        finally:
            engine.close()
    return out


def sleeper(client: docker.DockerClient, name: str, replicas: int, **kw: Any) -> Any:
    return client.services.create(
        IMAGE, command=["sleep", "3600"], name=name, mode=docker.types.ServiceMode("replicated", replicas=replicas),
        stop_grace_period=SECOND, **kw,
    )


def test_twelve_replicas_spread_evenly(lab: Lab, swarm: docker.DockerClient) -> None:
    svc = sleeper(swarm, "spread", 12)
    per_host = wait_for(lambda: (p := running_per_host(swarm, svc.id)) and sum(p.values()) == 12 and p)
    assert per_host == {"host-1": 3, "host-2": 3, "host-3": 3, "host-4": 3}
    # The engines agree with the API: three containers each.
    assert {h: len(cs) for h, cs in engine_containers(lab, svc.id).items()} == per_host


def test_failover_of_a_killed_host_and_a_cut_host(lab: Lab, swarm: docker.DockerClient) -> None:
    svc = sleeper(swarm, "failover", 12)
    wait_for(lambda: sum(running_per_host(swarm, svc.id).values()) == 12)
    ids = {h.name: h.node_id for h in lab.hosts}
    lab.kill("host-2")
    lab.cut("host-3")

    def down() -> bool:
        states = {n.id: n.attrs["Status"]["State"] for n in swarm.nodes.list()}
        return states[ids["host-2"]] == "down" and states[ids["host-3"]] == "down"

    wait_for(down, within=30)
    marked = time.monotonic()
    per_host = wait_for(lambda: (p := running_per_host(swarm, svc.id)) and sum(p.values()) == 12 and p, within=15)
    took = time.monotonic() - marked
    assert set(per_host) == {"host-1", "host-4"} and took < 15
    lost = [t for t in swarm.api.tasks(filters={"service": svc.id}) if t["NodeID"] in (ids["host-2"], ids["host-3"])]
    assert lost and all(t["Status"]["State"] == "orphaned" and t["DesiredState"] == "shutdown" for t in lost)

    lab.restore("host-2")
    lab.restore("host-3")

    def one_container_per_slot() -> bool:
        running = [c for cs in engine_containers(lab, svc.id).values() for c in cs]
        slots = collections.Counter(c["Labels"]["shoal.task.slot"] for c in running)
        return len(running) == 12 and set(slots.values()) == {1}

    wait_for(one_container_per_slot, within=60)
    assert wait_for(lambda: sum(running_per_host(swarm, svc.id).values()) == 12)


def test_a_stopped_engine_moves_its_tasks_and_takes_none_until_it_is_back(lab: Lab, swarm: docker.DockerClient) -> None:
    """Issue 10, item 9: `shoal lab stop-engine host-2` with 12 replicas. Host-2's agent lives on and
    reports its engine down: the node goes down ("engine unavailable: ..."), its tasks are orphaned
    (no restart attempt spent) and run elsewhere within the failover time, and nothing is placed
    on host-2 until its engine is back."""
    svc = sleeper(swarm, "engine", 12)
    wait_for(lambda: running_per_host(swarm, svc.id) == {"host-1": 3, "host-2": 3, "host-3": 3, "host-4": 3})
    ids = {h.name: h.node_id for h in lab.hosts}

    def node2() -> dict[str, Any]:
        return swarm.api.inspect_node(ids["host-2"])

    start = time.monotonic()
    lab.stop_engine("host-2")  # returns once dockerd has exited (it stops its containers first)
    stopped = time.monotonic() - start
    status = wait_for(lambda: (st := node2()["Status"])["State"] == "down" and st, within=15)
    assert status["Message"].startswith("engine unavailable: cannot connect to unix://"), status
    per_host = wait_for(lambda: (p := running_per_host(swarm, svc.id)) and sum(p.values()) == 12 and p, within=15)
    took = time.monotonic() - start
    print(f"\nengine stop: dockerd gone after {stopped:.1f} s, 12 running elsewhere after {took:.1f} s")
    assert "host-2" not in per_host and took < 20
    tasks = swarm.api.tasks(filters={"service": svc.id})
    lost = [t for t in tasks if t["NodeID"] == ids["host-2"]]
    assert len(lost) == 3
    assert all(t["Status"]["State"] == "orphaned" and t["DesiredState"] == "shutdown" for t in lost), [
        (t["Status"], t["DesiredState"]) for t in lost]
    # Nothing failed or was rejected on the way: the slots were refilled without a restart attempt.
    assert {t["Status"]["State"] for t in tasks} == {"running", "orphaned"}

    # While the engine is down, nothing new goes there, and the CLI's view says why.
    svc.scale(16)
    per_host = wait_for(lambda: (p := running_per_host(swarm, svc.id)) and sum(p.values()) == 16 and p)
    assert "host-2" not in per_host
    assert len([t for t in swarm.api.tasks(filters={"service": svc.id}) if t["NodeID"] == ids["host-2"]]) == 3
    assert node2()["Status"]["State"] == "down"

    # Back: the same agent reports it, the node is ready again and takes its share.
    start = time.monotonic()
    lab.restore("host-2")
    wait_for(lambda: node2()["Status"]["State"] == "ready", within=30)
    print(f"engine restore: node ready {time.monotonic() - start:.1f} s after restore began")
    svc.reload()
    svc.scale(20)
    per_host = wait_for(lambda: (p := running_per_host(swarm, svc.id)) and sum(p.values()) == 20 and p)
    assert per_host.get("host-2") == 4, per_host  # spread: the empty node takes the 4 new tasks
    wait_for(lambda: len(engine_containers(lab, svc.id)["host-2"]) == 4)


def test_the_manager_serves_the_cluster_while_its_own_engine_is_down(lab: Lab, swarm: docker.DockerClient) -> None:
    """The manager's engine stops: its API and the cluster go on, it just runs nothing itself."""
    svc = sleeper(swarm, "managed", 8)
    wait_for(lambda: running_per_host(swarm, svc.id) == {"host-1": 2, "host-2": 2, "host-3": 2, "host-4": 2})
    manager = lab.hosts[0].node_id
    lab.stop_engine("host-1")
    status = wait_for(lambda: (st := swarm.api.inspect_node(manager)["Status"])["State"] == "down" and st, within=15)
    assert status["Message"].startswith("engine unavailable: ")
    per_host = wait_for(lambda: (p := running_per_host(swarm, svc.id)) and sum(p.values()) == 8 and p, within=15)
    assert "host-1" not in per_host
    other = sleeper(swarm, "while-down", 3)  # the cluster API works as ever
    assert sum(wait_for(lambda: (p := running_per_host(swarm, other.id)) and sum(p.values()) == 3 and p).values()) == 3
    assert "host-1" not in running_per_host(swarm, other.id)
    assert swarm.api.inspect_node(manager)["ManagerStatus"]["Leader"] is True
    lab.restore("host-1")
    wait_for(lambda: swarm.api.inspect_node(manager)["Status"]["State"] == "ready", within=30)
    svc.reload()
    svc.scale(11)
    assert wait_for(lambda: running_per_host(swarm, svc.id).get("host-1") == 3)


def test_drain_moves_everything_and_pause_takes_nothing_new(lab: Lab, swarm: docker.DockerClient) -> None:
    svc = sleeper(swarm, "maint", 8)
    wait_for(lambda: sum(running_per_host(swarm, svc.id).values()) == 8)
    node3 = next(n for n in swarm.nodes.list() if n.attrs["Description"]["Hostname"] == "host-3")
    spec = node3.attrs["Spec"]
    spec["Availability"] = "drain"
    node3.update(spec)
    per_host = wait_for(lambda: (p := running_per_host(swarm, svc.id)) and sum(p.values()) == 8
                        and "host-3" not in p and p)
    assert sum(per_host.values()) == 8
    wait_for(lambda: engine_containers(lab, svc.id)["host-3"] == [])

    node4 = next(n for n in swarm.nodes.list() if n.attrs["Description"]["Hostname"] == "host-4")
    before_on_4 = running_per_host(swarm, svc.id).get("host-4", 0)
    spec4 = node4.attrs["Spec"]
    spec4["Availability"] = "pause"
    node4.update(spec4)
    svc.scale(14)
    per_host = wait_for(lambda: (p := running_per_host(swarm, svc.id)) and sum(p.values()) == 14 and p)
    assert per_host.get("host-4", 0) == before_on_4  # paused: keeps what runs, takes nothing new
    assert "host-3" not in per_host


def test_labels_and_constraints_steer_placement(lab: Lab, swarm: docker.DockerClient) -> None:
    for node in swarm.nodes.list():
        host = node.attrs["Description"]["Hostname"]
        spec = node.attrs["Spec"]
        spec["Labels"] = {"zone": "b" if host in ("host-2", "host-4") else "a"}
        node.update(spec)
    svc = sleeper(swarm, "zoned", 6, constraints=["node.labels.zone==b"])
    per_host = wait_for(lambda: (p := running_per_host(swarm, svc.id)) and sum(p.values()) == 6 and p)
    assert per_host == {"host-2": 3, "host-4": 3}
    pinned = sleeper(swarm, "pinned", 2, constraints=["node.hostname==host-3"])
    assert wait_for(lambda: running_per_host(swarm, pinned.id) == {"host-3": 2})
    nowhere = sleeper(swarm, "nowhere", 1, constraints=["node.labels.zone==c"])
    task = wait_for(lambda: (ts := swarm.api.tasks(filters={"service": nowhere.id})) and ts[0]["Status"]["Err"]
                    and ts[0])
    assert task["Status"]["State"] == "pending"
    assert "no suitable node" in task["Status"]["Err"] and "4 nodes" in task["Status"]["Err"]


def node_snapshot(client: docker.DockerClient) -> list[tuple[str, str, str]]:
    return sorted((n.id, n.attrs["Spec"]["Role"], n.attrs["Description"]["Hostname"]) for n in client.nodes.list())


def test_bad_joins_and_uncertified_connections_are_refused(lab: Lab, swarm: docker.DockerClient,
                                                          tmp_path: Path) -> None:
    before = node_snapshot(swarm)
    tokens = swarm.swarm.attrs["JoinTokens"]
    manager = f"{lab.hosts[0].addr}:2377"

    def join(token: str) -> None:
        # A real join from the bridge address (10.77.0.254), over the lab network.
        asyncio.run(join_cluster(manager, token, "intruder", "10.77.0.254", "active", tmp_path / "certs"))

    wrong_secret = tokens["Worker"][:-5] + "zzzzz"
    other_ca = "SWMTKN-1-" + "0" * 50 + "-" + tokens["Worker"].rsplit("-", 1)[1]
    for token, needle in ((wrong_secret, "invalid join token"), (other_ca, "fingerprint"),
                          ("garbage", "invalid join token")):
        with pytest.raises(ShoalError) as exc:
            join(token)
        assert needle in exc.value.message.lower()
    # A rotated worker token no longer lets anyone in.
    swarm.api.update_swarm(version=swarm.swarm.attrs["Version"]["Index"], swarm_spec=swarm.swarm.attrs["Spec"],
                           rotate_worker_token=True)
    with pytest.raises(ShoalError):
        join(tokens["Worker"])
    assert node_snapshot(swarm) == before  # nothing stored for any refused join

    # Straight to the dispatcher without a client certificate: refused, nothing changes.
    root = swarm.swarm.attrs["TLSInfo"]["TrustRoot"]

    async def register_without_cert() -> grpc.StatusCode:
        async with secure_channel(lab.hosts[0].addr, 2377, root) as ch:
            call = ch.unary_unary(path(DISPATCHER_SERVICE, "Register"), request_serializer=encode,
                                  response_deserializer=decoder(m.RegisterResponse))
            try:
                await call(m.RegisterRequest(before[0][0], NodeDescription(Hostname="x"), "10.77.0.9"), timeout=5)
            except grpc.aio.AioRpcError as e:
                return e.code()
        return grpc.StatusCode.OK

    assert asyncio.run(register_without_cert()) in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNAUTHENTICATED)
    assert node_snapshot(swarm) == before


def test_node_removal_and_demotion_rules(lab: Lab, swarm: docker.DockerClient) -> None:
    before = node_snapshot(swarm)
    worker = next(n for n in swarm.nodes.list() if n.attrs["Description"]["Hostname"] == "host-2")
    with pytest.raises(docker.errors.APIError) as exc:
        worker.remove()  # still Ready: needs --force
    assert exc.value.status_code == 400 and "not down" in str(exc.value.explanation)
    leader = next(n for n in swarm.nodes.list() if n.attrs["Spec"]["Role"] == "manager")
    spec = leader.attrs["Spec"]
    spec["Role"] = "worker"
    with pytest.raises(docker.errors.APIError) as exc:
        leader.update(spec)
    assert "last manager" in str(exc.value.explanation)
    assert node_snapshot(swarm) == before


def test_manager_restart_keeps_the_cluster(lab: Lab, swarm: docker.DockerClient) -> None:
    svc = sleeper(swarm, "steady", 8)
    wait_for(lambda: sum(running_per_host(swarm, svc.id).values()) == 8)
    before = {h: sorted(c["Id"] for c in cs) for h, cs in engine_containers(lab, svc.id).items()}
    lab.kill("host-1")  # the manager's daemon dies; its engine and every worker keep running
    time.sleep(2)
    assert {h: sorted(c["Id"] for c in cs) for h, cs in engine_containers(lab, svc.id).items()} == before
    lab.restore("host-1")
    client = client_of(lab)
    wait_for(lambda: all(n.attrs["Status"]["State"] == "ready" for n in client.nodes.list()), within=60)
    wait_for(lambda: sum(running_per_host(client, svc.id).values()) == 8, within=60)
    # Nothing was restarted or recreated anywhere: agents reconnected and adopted what runs.
    assert {h: sorted(c["Id"] for c in cs) for h, cs in engine_containers(lab, svc.id).items()} == before
    assert len(client.api.tasks(filters={"service": svc.id})) == 8


def test_root_ca_rotation_keeps_every_node(lab: Lab, swarm: docker.DockerClient) -> None:
    swarm.swarm.reload()
    old_root = swarm.swarm.attrs["TLSInfo"]["TrustRoot"]
    old_worker = swarm.swarm.attrs["JoinTokens"]["Worker"]
    spec = swarm.swarm.attrs["Spec"]
    spec["CAConfig"] = {**(spec.get("CAConfig") or {}), "ForceRotate": int((spec.get("CAConfig") or {})
                                                                            .get("ForceRotate") or 0) + 1}
    swarm.api.update_swarm(version=swarm.swarm.attrs["Version"]["Index"], swarm_spec=spec)
    swarm.swarm.reload()
    assert swarm.swarm.attrs["TLSInfo"]["TrustRoot"] != old_root
    assert swarm.swarm.attrs["JoinTokens"]["Worker"] != old_worker  # tokens name the new root's digest

    def finished() -> bool:
        swarm.swarm.reload()
        return not swarm.swarm.attrs.get("RootRotationInProgress")

    wait_for(finished, within=60)  # every live node renewed onto the new root
    # ... and every node is (still, or again after a reconnect) ready: none was locked out.
    wait_for(lambda: all(n.attrs["Status"]["State"] == "ready" for n in swarm.nodes.list()), within=30)
    svc = sleeper(swarm, "after-rotation", 4)
    assert wait_for(lambda: sum(running_per_host(swarm, svc.id).values()) == 4)


# ------------------------------------------------------------------ placement on real hosts (issue 4)


def label_nodes(client: docker.DockerClient, zones: dict[str, str]) -> None:
    for node in client.nodes.list():
        spec = node.attrs["Spec"]
        spec["Labels"] = {"zone": zones[node.attrs["Description"]["Hostname"]]}
        node.update(spec)


def test_spread_over_label_values(lab: Lab, swarm: docker.DockerClient) -> None:
    label_nodes(swarm, {"host-1": "a", "host-2": "b", "host-3": "b", "host-4": "b"})
    svc = sleeper(swarm, "zones", 6, preferences=[("spread", "node.labels.zone")])
    per_host = wait_for(lambda: (p := running_per_host(swarm, svc.id)) and sum(p.values()) == 6 and p)
    # Half to zone a (one host), half spread over zone b's three hosts.
    assert per_host == {"host-1": 3, "host-2": 1, "host-3": 1, "host-4": 1}


def test_binpack_fills_one_host_before_the_next(lab: Lab, swarm: docker.DockerClient) -> None:
    ncpu = swarm.nodes.list()[0].attrs["Description"]["Resources"]["NanoCPUs"]
    per_task = ncpu // 4  # four fit on a host
    svc = sleeper(swarm, "packed", 6, labels={"shoal.strategy": "binpack"},
                  resources=docker.types.Resources(cpu_reservation=per_task))
    per_host = wait_for(lambda: (p := running_per_host(swarm, svc.id)) and sum(p.values()) == 6 and p)
    assert sorted(per_host.values()) == [2, 4]


def test_high_priority_preempts_on_a_full_cluster(lab: Lab, swarm: docker.DockerClient) -> None:
    ncpu = swarm.nodes.list()[0].attrs["Description"]["Resources"]["NanoCPUs"]
    big = docker.types.Resources(cpu_reservation=ncpu * 3 // 4)  # one per host
    low = sleeper(swarm, "low", 4, labels={"shoal.priority": "1"}, resources=big)
    wait_for(lambda: sum(running_per_host(swarm, low.id).values()) == 4)
    high = sleeper(swarm, "high", 1, labels={"shoal.priority": "10"}, resources=big)
    wait_for(lambda: sum(running_per_host(swarm, high.id).values()) == 1)
    tasks = swarm.api.tasks(filters={"service": low.id})
    victims = [t for t in tasks if t["Status"].get("Message", "").startswith("preempted by high")]
    assert len(victims) == 1 and victims[0]["DesiredState"] == "shutdown"
    # The victim's slot is refilled, and its replacement waits with the reason.
    pending = wait_for(lambda: [t for t in swarm.api.tasks(filters={"service": low.id, "desired-state": "running"})
                                if t["Status"]["State"] == "pending" and t["Status"]["Err"]])
    assert "insufficient cpu on 4 nodes" in pending[0]["Status"]["Err"]
    assert sum(running_per_host(swarm, low.id).values()) == 3
