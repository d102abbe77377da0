"""System and swarm routes over HTTP: ping, version prefix, /version, /info, /swarm, errors."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from aiohttp.test_utils import TestClient, TestServer

import shoal
from shoal.api import create_app
from shoal.api.testing import FakeManager

ENGINE_INFO = {"NCPU": 2, "MemTotal": 4 << 30, "OperatingSystem": "Debian GNU/Linux 12", "Name": "host1",
               "KernelVersion": "6.1.0", "ServerVersion": "20.10.24"}


@pytest.fixture
def manager() -> FakeManager:
    return FakeManager(engine_info=dict(ENGINE_INFO))


@pytest.fixture
async def client(manager: FakeManager) -> AsyncIterator[TestClient]:
    async with TestClient(TestServer(create_app(manager))) as c:
        yield c


async def init(client: TestClient) -> str:
    resp = await client.post("/v1.41/swarm/init", json={"ListenAddr": "0.0.0.0:2377"})
    assert resp.status == 200, await resp.text()
    return await resp.json()


async def test_ping_headers(client: TestClient, manager: FakeManager) -> None:
    for path in ("/_ping", "/v1.41/_ping", "/v1.24/_ping"):
        resp = await client.get(path)
        assert resp.status == 200 and await resp.text() == "OK"
        h = resp.headers
        assert h["API-Version"] == "1.41"
        assert h["Docker-Experimental"] == "false"
        assert h["Swarm"] == "inactive"
        assert h["Cache-Control"] == "no-cache, no-store, must-revalidate"
        assert h["Pragma"] == "no-cache"
        assert h["Server"].startswith(f"Shoal/{shoal.__version__}")
    head = await client.head("/_ping")
    assert head.status == 200 and head.headers["API-Version"] == "1.41"
    await init(client)
    assert (await client.get("/_ping")).headers["Swarm"] == "active/manager"


async def test_version_prefix_limits(client: TestClient) -> None:
    resp = await client.get("/v1.50/_ping")
    assert resp.status == 400
    assert await resp.json() == {"message": "client version 1.50 is too new. Maximum supported API version is 1.41"}
    resp = await client.get("/v1.12/version")
    assert resp.status == 400
    assert (await resp.json())["message"].startswith("client version 1.12 is too old")
    assert (await client.get("/v1.40/version")).status == 200


async def test_unknown_route_is_404_json(client: TestClient) -> None:
    resp = await client.get("/v1.41/containers/json/bogus/route")
    assert resp.status == 404
    assert await resp.json() == {"message": "page not found"}
    assert resp.headers["Server"].startswith("Shoal/")


async def test_version(client: TestClient) -> None:
    body = await (await client.get("/version")).json()
    assert body["Platform"] == {"Name": "Shoal"}
    assert body["Version"] == shoal.__version__
    assert body["ApiVersion"] == "1.41" and body["MinAPIVersion"] == "1.24"
    assert body["GoVersion"].startswith("python3.")
    assert body["Os"] == "linux" and body["KernelVersion"] == "6.1.0"
    assert body["Components"][0]["Name"] == "Engine"
    assert body["Components"][0]["Details"]["ApiVersion"] == "1.41"


async def test_info_inactive_then_active(client: TestClient) -> None:
    body = await (await client.get("/info")).json()
    assert body["NCPU"] == 2 and body["MemTotal"] == 4 << 30 and body["Name"] == "host1"
    assert body["ServerVersion"] == shoal.__version__
    assert body["Swarm"]["LocalNodeState"] == "inactive"
    assert body["Swarm"]["ControlAvailable"] is False
    node_id = await init(client)
    sw = (await (await client.get("/v1.41/info")).json())["Swarm"]
    assert sw["NodeID"] == node_id and sw["LocalNodeState"] == "active" and sw["ControlAvailable"] is True
    assert sw["NodeAddr"] == "127.0.0.1"
    assert sw["Nodes"] == 1 and sw["Managers"] == 1
    assert sw["RemoteManagers"] == [{"NodeID": node_id, "Addr": "127.0.0.1:2377"}]
    cluster = sw["Cluster"]
    for key in ("ID", "Version", "CreatedAt", "UpdatedAt", "Spec", "TLSInfo", "RootRotationInProgress",
                "DefaultAddrPool", "SubnetSize", "DataPathPort"):
        assert key in cluster
    assert "JoinTokens" not in cluster


SWARM_ROUTES = [
    ("GET", "/swarm"),
    ("POST", "/swarm/update?version=1"),
    ("GET", "/swarm/unlockkey"),
    ("GET", "/nodes"),
    ("GET", "/nodes/x"),
    ("POST", "/nodes/x/update?version=1"),
    ("DELETE", "/nodes/x"),
    ("GET", "/services"),
    ("POST", "/services/create"),
    ("GET", "/services/x"),
    ("POST", "/services/x/update?version=1"),
    ("DELETE", "/services/x"),
    ("GET", "/services/x/logs?stdout=1"),
    ("GET", "/tasks"),
    ("GET", "/tasks/x"),
    ("GET", "/tasks/x/logs?stdout=1"),
]


@pytest.mark.parametrize(("method", "path"), SWARM_ROUTES)
async def test_swarm_routes_need_a_swarm(client: TestClient, method: str, path: str) -> None:
    resp = await client.request(method, "/v1.41" + path, json={})
    assert resp.status == 503
    assert (await resp.json())["message"].startswith("This node is not a swarm manager.")


async def test_swarm_lifecycle(client: TestClient, manager: FakeManager) -> None:
    node_id = await init(client)
    assert node_id == manager.node_id
    again = await client.post("/swarm/init", json={})
    assert again.status == 503 and "already part of a swarm" in (await again.json())["message"]

    sw = await (await client.get("/swarm")).json()
    worker, mgr = sw["JoinTokens"]["Worker"], sw["JoinTokens"]["Manager"]
    assert worker.startswith("SWMTKN-1-")
    resp = await client.post(f"/swarm/update?version={sw['Version']['Index']}&rotateWorkerToken=true", json=sw["Spec"])
    assert resp.status == 200, await resp.text()
    sw2 = await (await client.get("/swarm")).json()
    assert sw2["JoinTokens"]["Worker"] != worker and sw2["JoinTokens"]["Manager"] == mgr
    stale = await client.post(f"/swarm/update?version={sw['Version']['Index']}", json=sw["Spec"])
    assert stale.status == 409
    bad = await client.post("/swarm/update?version=abc", json=sw["Spec"])
    assert bad.status == 400 and "invalid swarm version 'abc'" in (await bad.json())["message"]
    assert await (await client.get("/swarm/unlockkey")).json() == {"UnlockKey": ""}

    join = await client.post("/swarm/join", json={"RemoteAddrs": ["10.0.0.1:2377"], "JoinToken": worker})
    assert join.status == 503

    no_force = await client.post("/swarm/leave")
    assert no_force.status == 503 and "--force" in (await no_force.json())["message"]
    assert (await client.post("/swarm/leave?force=1")).status == 200
    assert manager.node_id is None
    assert (await client.get("/swarm")).status == 503
    no_token = await client.post("/swarm/join", json={"RemoteAddrs": ["10.0.0.1:2377"]})
    assert no_token.status == 400 and "token" in (await no_token.json())["message"]
    join = await client.post("/swarm/join", json={"RemoteAddrs": ["10.0.0.1:2377"], "JoinToken": worker})
    assert join.status == 200
    assert [r.JoinToken for r in manager.join_requests] == [worker]


async def test_init_body_errors(client: TestClient, manager: FakeManager) -> None:
    resp = await client.post("/swarm/init", json={"ListenAddr": 5})
    assert resp.status == 400 and "Expected `str`" in (await resp.json())["message"]
    resp = await client.post("/swarm/init", data=b"{not json")
    assert resp.status == 400
    resp = await client.post("/swarm/init", json={"Bogus": True})
    assert resp.status == 400 and "unknown field `Bogus`" in (await resp.json())["message"]
    assert not manager.in_swarm


async def test_distribution_outside_a_swarm_is_a_fast_503(client: TestClient) -> None:
    # A node engine answers it (api/images.py); outside a swarm there is none to ask.
    resp = await client.get("/v1.41/distribution/docker.io/library/busybox:latest/json")
    assert resp.status == 503 and "not a swarm manager" in (await resp.json())["message"]


async def test_unexpected_exception_is_500(client: TestClient, manager: FakeManager,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    def boom() -> None:
        raise RuntimeError("kaboom")

    monkeypatch.setattr(manager, "require_swarm", boom)
    resp = await client.get("/services")
    assert resp.status == 500 and await resp.json() == {"message": "kaboom"}


async def test_manager_health_reports_the_store_and_tracked_objects() -> None:
    from aiohttp.test_utils import TestClient, TestServer

    from shoal.api.app import create_app
    from shoal.api.testing import FakeManager

    async with TestClient(TestServer(create_app(FakeManager()))) as c:
        body = await (await c.get("/shoal/debug/manager?objects=1")).json()
    assert body["Store"] == {"Revision": 0, "Durable": 0, "Error": "", "Problems": []}
    assert body["TrackedObjects"] and body["NodesMarkedDown"] == {}
