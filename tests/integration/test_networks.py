"""The machine's real ``docker`` CLI manages overlay networks on a Shoal daemon, and a service on
one gets its addresses: the task's NetworksAttachments and the service's VIP, in the subnet."""

from __future__ import annotations

import ipaddress
import json

import docker
import pytest

from tests.integration.conftest import wait_for
from tests.integration.shoal_process import ShoalProcess

pytestmark = pytest.mark.integration


def test_network_lifecycle_with_docker_cli(shoal: ShoalProcess, swarm: docker.DockerClient) -> None:
    nid = shoal.docker_cli("network", "create", "-d", "overlay", "--attachable", "--label", "tier=web",
                           "front").stdout.strip()
    shoal.docker_cli("network", "create", "-d", "overlay", "--subnet", "172.29.200.0/24", "--gateway",
                     "172.29.200.1", "back")

    ls = shoal.docker_cli("network", "ls", "--format", "{{.Name}} {{.Driver}} {{.Scope}}").stdout.splitlines()
    # ingress: made by swarm init for the routing mesh, as in Swarm.
    assert sorted(ls) == ["back overlay swarm", "front overlay swarm", "ingress overlay swarm"]
    assert shoal.docker_cli("network", "ls", "-q", "--filter", "label=tier=web").stdout.split() == [nid[:12]]

    front = json.loads(shoal.docker_cli("network", "inspect", "front").stdout)[0]
    assert front["Id"] == nid and front["Scope"] == "swarm" and front["Driver"] == "overlay"
    assert front["Attachable"] is True and front["Labels"] == {"tier": "web"}
    (cfg,) = front["IPAM"]["Config"]
    subnet = ipaddress.ip_network(cfg["Subnet"])
    assert cfg["Gateway"] == str(subnet.network_address + 1)
    assert int(front["Options"]["com.docker.network.driver.overlay.vxlanid_list"]) >= 4096
    back = json.loads(shoal.docker_cli("network", "inspect", "back").stdout)[0]
    assert back["IPAM"]["Config"] == [{"Subnet": "172.29.200.0/24", "Gateway": "172.29.200.1"}]

    # Refusals, Docker-style, leave nothing behind.
    res = shoal.docker_cli("network", "create", "-d", "bridge", "--scope", "swarm", "nope", check=False)
    assert res.returncode != 0 and "overlay" in res.stderr
    res = shoal.docker_cli("network", "create", "-d", "overlay", "--subnet", "172.29.200.0/25", "clash", check=False)
    assert res.returncode != 0 and "overlaps" in res.stderr
    res = shoal.docker_cli("network", "create", "-d", "overlay", "front", check=False)
    assert res.returncode != 0 and "already exists" in res.stderr
    assert len(shoal.docker_cli("network", "ls", "-q").stdout.split()) == 3

    # A service on the network: its task gets an address in the subnet, the service a VIP.
    shoal.docker_cli("service", "create", "--detach", "--name", "web", "--network",
                     "name=front,alias=www", "busybox:latest", "sleep", "600")
    svc = json.loads(shoal.docker_cli("service", "inspect", "web").stdout)[0]
    assert svc["Spec"]["TaskTemplate"]["Networks"] == [{"Target": nid, "Aliases": ["www"]}]

    def attached() -> dict | None:
        tasks = swarm.api.tasks(filters={"service": "web"})
        return next((t for t in tasks if t.get("NetworksAttachments")), None)

    task = wait_for(attached, timeout=30)
    assert isinstance(task, dict)
    inspected = json.loads(shoal.docker_cli("inspect", "--type", "task", task["ID"]).stdout)[0]
    (att,) = inspected["NetworksAttachments"]
    assert att["Network"]["ID"] == nid and att["Aliases"] == ["www"]
    (addr,) = att["Addresses"]
    assert ipaddress.ip_interface(addr).network == subnet and ipaddress.ip_interface(addr).ip in subnet

    def vips() -> list:
        ep = json.loads(shoal.docker_cli("service", "inspect", "web").stdout)[0].get("Endpoint") or {}
        return ep.get("VirtualIPs") or []

    (vip,) = wait_for(vips, timeout=30)  # type: ignore[misc]
    assert vip["NetworkID"] == nid and ipaddress.ip_interface(vip["Addr"]).ip in subnet
    assert vip["Addr"] != addr

    # In use: refused with Docker's wording; free again once the service is gone.
    res = shoal.docker_cli("network", "rm", "front", check=False)
    assert res.returncode != 0 and "is in use by service web" in res.stderr
    res = shoal.docker_cli("service", "create", "--detach", "--network", "missing", "busybox:latest", check=False)
    assert res.returncode != 0 and "not found" in res.stderr
    shoal.docker_cli("service", "rm", "web")
    shoal.docker_cli("network", "rm", "front")
    out = shoal.docker_cli("network", "prune", "--force").stdout
    assert "back" in out and "ingress" not in out
    assert shoal.docker_cli("network", "ls", "--format", "{{.Name}}").stdout.split() == ["ingress"]
    res = shoal.docker_cli("network", "inspect", "front", check=False)
    assert res.returncode != 0 and "not found" in res.stderr.lower()
