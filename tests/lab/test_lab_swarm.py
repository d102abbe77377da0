"""``lab up`` with joining (the default): every host is a node of host-1's swarm."""

from __future__ import annotations

import time
from typing import Any

import docker
import pytest

from shoal.lab import Lab

pytestmark = pytest.mark.lab(hosts=2, join=True)


def nodes_by_host(lab: Lab) -> dict[str, dict[str, Any]]:
    client = docker.DockerClient(base_url=lab.docker_host, version="1.41", timeout=60)
    return {n.attrs["Description"]["Hostname"]: n.attrs for n in client.nodes.list()}


def wait_ready(lab: Lab, hosts: list[str], within_s: float = 30) -> dict[str, dict[str, Any]]:
    deadline = time.monotonic() + within_s
    while True:
        nodes = nodes_by_host(lab)
        ready = sorted(name for name, n in nodes.items() if n["Status"]["State"] == "ready")
        if ready == hosts or time.monotonic() > deadline:
            assert ready == hosts, nodes
            return nodes
        time.sleep(0.2)


def test_up_joins_every_host_into_one_swarm(lab: Lab) -> None:
    nodes = wait_ready(lab, ["host-1", "host-2"])
    assert {n["ID"] for n in nodes.values()} == {h.node_id for h in lab.hosts}
    assert nodes["host-1"]["Spec"]["Role"] == "manager"
    assert nodes["host-2"]["Spec"]["Role"] == "worker"
    assert nodes["host-2"]["Status"]["Addr"] == lab.hosts[1].addr


def test_a_killed_worker_comes_back_as_the_same_node(lab: Lab) -> None:
    before = wait_ready(lab, ["host-1", "host-2"])["host-2"]["ID"]
    lab.kill("host-2")
    lab.restore("host-2")  # the daemon rejoins from its data root: no new join
    nodes = wait_ready(lab, ["host-1", "host-2"])
    assert nodes["host-2"]["ID"] == before
    assert len(nodes) == 2
