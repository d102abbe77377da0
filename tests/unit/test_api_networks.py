"""``/networks`` over HTTP in the engine's shape, and services naming networks: happy paths, and
every bad input answered Docker's way with the store left untouched."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pytest
from aiohttp.test_utils import TestClient, TestServer

from shoal.api import create_app
from shoal.api.testing import FakeManager
from shoal.models import InitRequest

from .test_api_services import cli_spec


@pytest.fixture
async def manager() -> FakeManager:
    m = FakeManager()
    await m.init_swarm(InitRequest())
    return m


@pytest.fixture
async def client(manager: FakeManager) -> AsyncIterator[TestClient]:
    async with TestClient(TestServer(create_app(manager))) as c:
        yield c


def cli_body(name: str, **extra: Any) -> dict[str, Any]:
    """What `docker network create -d overlay NAME` sends (API 1.41)."""
    body = {"Name": name, "CheckDuplicate": True, "Driver": "overlay", "Scope": "", "EnableIPv6": False,
            "IPAM": {"Driver": "default", "Config": [], "Options": {}}, "Internal": False, "Attachable": False,
            "Ingress": False, "ConfigOnly": False, "ConfigFrom": None, "Options": {}, "Labels": {}}
    body.update(extra)
    return body


def snapshot(manager: FakeManager) -> tuple[int, bytes]:
    s = manager.store
    return s.revision, msgspec.json.encode({k: sorted(s.list(k), key=lambda o: o.ID) for k in ("network", "service")})


async def create(client: TestClient, name: str, **extra: Any) -> str:
    r = await client.post("/v1.41/networks/create", json=cli_body(name, **extra))
    assert r.status == 201, await r.text()
    return (await r.json())["Id"]


async def test_create_inspect_list_in_engine_shape(client: TestClient) -> None:
    nid = await create(client, "front", Labels={"tier": "web"}, Attachable=True, Options={"mtu": "1400"})
    second = await create(client, "back")
    r = await client.get(f"/v1.41/networks/{nid}")
    net = await r.json()
    assert net["Name"] == "front" and net["Id"] == nid and net["Scope"] == "swarm" and net["Driver"] == "overlay"
    assert net["IPAM"]["Driver"] == "default"
    assert net["IPAM"]["Config"] == [{"Subnet": "10.0.0.0/24", "Gateway": "10.0.0.1"}]
    # 4096 is the ingress network's, made at init, as in Swarm.
    assert net["Options"]["com.docker.network.driver.overlay.vxlanid_list"] == "4097"
    assert net["Options"]["mtu"] == "1400"
    assert net["Attachable"] is True and net["Internal"] is False and net["Ingress"] is False
    assert net["Labels"] == {"tier": "web"} and net["Containers"] == {} and net["ConfigFrom"] == {"Network": ""}
    assert net["Created"]
    back = await (await client.get("/v1.41/networks/back")).json()
    assert back["Id"] == second and back["IPAM"]["Config"][0]["Subnet"] == "10.0.1.0/24"
    assert back["Options"]["com.docker.network.driver.overlay.vxlanid_list"] == "4098"
    # ID prefix, then list and its filters.
    assert (await (await client.get(f"/networks/{nid[:6]}")).json())["Name"] == "front"
    names = [n["Name"] for n in await (await client.get("/networks")).json()]
    assert names == ["ingress", "front", "back"]  # swarm init made the ingress network first

    async def listed(filters: dict[str, Any]) -> list[str]:
        r = await client.get("/networks", params={"filters": json.dumps(filters)})
        assert r.status == 200, await r.text()
        return sorted(n["Name"] for n in await r.json())

    assert await listed({"name": {"fro": True}}) == ["front"]
    assert await listed({"id": [second[:8]]}) == ["back"]
    assert await listed({"label": ["tier=web"]}) == ["front"]
    assert await listed({"driver": ["overlay"]}) == ["back", "front", "ingress"]
    assert await listed({"driver": ["bridge"]}) == []
    assert await listed({"scope": ["swarm"]}) == ["back", "front", "ingress"]
    assert await listed({"scope": ["local"]}) == []
    assert await listed({"type": ["custom"]}) == ["back", "front", "ingress"]
    assert await listed({"type": ["builtin"]}) == []
    assert await listed({"dangling": ["true"]}) == ["back", "front", "ingress"]


async def test_user_subnet_gateway_range_honoured(client: TestClient) -> None:
    ipam = {"Driver": "default", "Config": [{"Subnet": "172.28.0.0/16", "IPRange": "172.28.5.0/24",
                                             "Gateway": "172.28.5.254"}]}
    nid = await create(client, "custom", IPAM=ipam)
    net = await (await client.get(f"/networks/{nid}")).json()
    assert net["IPAM"]["Config"] == [{"Subnet": "172.28.0.0/16", "Gateway": "172.28.5.254", "IPRange": "172.28.5.0/24"}]
    # Go-style keys in any case are accepted, as the engine does.
    r = await client.post("/networks/create", json={"name": "lower", "driver": "overlay"})
    assert r.status == 201, await r.text()


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        ({"Name": ""}, 400, "network name is required"),
        ({"Driver": "bridge"}, 400, "invalid network driver 'bridge'"),
        ({"Driver": "macvlan"}, 400, "overlay"),
        ({"Scope": "local"}, 400, "invalid scope"),
        ({"Name": "bridge"}, 403, "pre-defined network"),
        ({"ConfigOnly": True}, 400, "config-only"),
        ({"ConfigFrom": {"Network": "x"}}, 400, "config-from"),
        ({"IPAM": {"Driver": "dhcp"}}, 400, "invalid IPAM driver"),
        ({"IPAM": {"Config": [{"Subnet": "10.1.0.5/24"}]}}, 400, "invalid subnet"),
        ({"IPAM": {"Config": [{"Subnet": "fd00::/64"}]}}, 400, "IPv6"),
        ({"IPAM": {"Config": [{"Subnet": "10.1.0.0/24", "Gateway": "10.2.0.1"}]}}, 400, "does not contain gateway"),
        ({"IPAM": {"Config": [{"Subnet": "10.1.0.0/24", "IPRange": "10.3.0.0/25"}]}}, 400, "does not contain range"),
        ({"IPAM": {"Config": [{"Gateway": "10.1.0.1"}]}}, 400, "needs a subnet"),
        ({"IPAM": {"Config": [{"Subnet": "10.0.0.0/16"}]}}, 400, "Pool overlaps"),
        ({"Name": "taken"}, 409, "network with name taken already exists"),
        ({"Bogus": 1}, 400, "Bogus"),
        ({"Internal": "yes"}, 400, "Expected `bool`"),
    ],
)
async def test_bad_create_changes_nothing(
    client: TestClient, manager: FakeManager, body: dict[str, Any], status: int, words: str
) -> None:
    await create(client, "taken")  # holds 10.0.0.0/24
    before = snapshot(manager)
    full = cli_body("fresh")
    full.update(body)
    r = await client.post("/networks/create", json=full)
    assert r.status == status, await r.text()
    assert words in (await r.json())["message"]
    assert snapshot(manager) == before


async def test_services_resolve_names_and_network_in_use(client: TestClient, manager: FakeManager) -> None:
    nid = await create(client, "front")
    spec = cli_spec("web")
    spec["TaskTemplate"]["Networks"] = [{"Target": "front", "Aliases": ["www"]}]
    spec["Networks"] = []
    r = await client.post("/services/create", json=spec)
    assert r.status == 201, await r.text()
    svc = await (await client.get("/services/web")).json()
    assert svc["Spec"]["TaskTemplate"]["Networks"] == [{"Target": nid, "Aliases": ["www"]}]
    # The deprecated ServiceSpec.Networks is moved into the task template.
    old = cli_spec("old", Networks=[{"Target": nid[:10]}])
    assert (await client.post("/services/create", json=old)).status == 201
    svc = await (await client.get("/services/old")).json()
    assert svc["Spec"]["TaskTemplate"]["Networks"] == [{"Target": nid}] and "Networks" not in svc["Spec"]
    # In use: 409 with Docker's wording; nothing removed.
    before = snapshot(manager)
    r = await client.delete("/networks/front")
    assert r.status == 409 and "network front is in use by service" in (await r.json())["message"]
    assert snapshot(manager) == before
    # Unknown network in a service: 404, nothing written.
    bad = cli_spec("nope")
    bad["TaskTemplate"]["Networks"] = [{"Target": "missing"}]
    r = await client.post("/services/create", json=bad)
    assert r.status == 404 and (await r.json())["message"] == "network missing not found"
    dup = cli_spec("dup")
    dup["TaskTemplate"]["Networks"] = [{"Target": "front"}, {"Target": nid}]
    assert (await client.post("/services/create", json=dup)).status == 400
    assert snapshot(manager) == before
    # Not dangling while used; remove once the services are gone.
    used = await (await client.get("/networks", params={"filters": json.dumps({"dangling": ["false"]})})).json()
    assert [n["Name"] for n in used] == ["front"]
    for name in ("web", "old"):
        assert (await client.delete(f"/services/{name}")).status == 200
    assert (await client.delete("/networks/front")).status == 204
    r = await client.get("/networks/front")
    assert r.status == 404 and (await r.json())["message"] == "network front not found"
    assert (await client.delete("/networks/front")).status == 404


async def test_prune_removes_unused_only(client: TestClient) -> None:
    await create(client, "used")
    await create(client, "idle", Labels={"keep": "1"})
    await create(client, "idle2")
    spec = cli_spec("web")
    spec["TaskTemplate"]["Networks"] = [{"Target": "used"}]
    assert (await client.post("/services/create", json=spec)).status == 201
    r = await client.post("/networks/prune", params={"filters": json.dumps({"label!": ["keep"]})})
    assert (await r.json()) == {"NetworksDeleted": ["idle2"]}
    r = await client.post("/networks/prune")
    assert (await r.json()) == {"NetworksDeleted": ["idle"]}
    # Prune never removes the ingress network.
    assert [n["Name"] for n in await (await client.get("/networks")).json()] == ["ingress", "used"]


async def test_not_in_swarm_is_503() -> None:
    async with TestClient(TestServer(create_app(FakeManager()))) as c:
        assert (await c.get("/networks")).status == 503
        assert (await c.post("/networks/create", json={"Name": "x"})).status == 503
