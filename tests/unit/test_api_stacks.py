"""/shoal/stacks over HTTP: shapes, status codes, and bad input that changes nothing."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from shoal.api import create_app
from shoal.api.testing import FakeManager
from shoal.models import InitRequest


def stack(name: str = "vote", image: str = "busybox:latest", **extra: Any) -> dict[str, Any]:
    web = {"TaskTemplate": {"ContainerSpec": {"Image": image}, "Networks": [{"Target": f"{name}_default"}]},
           "Mode": {"Replicated": {"Replicas": 2}}}
    return {"Name": name, "Compose": "services: {web: {image: busybox}}\n",
            "Resources": {"Services": {"web": web},
                          "Networks": {f"{name}_default": {"DriverConfiguration": {"Name": "overlay"}}},
                          "Secrets": {f"{name}_token": {"Data": "c2VjcmV0"}}, **extra}}


@pytest.fixture
async def manager() -> FakeManager:
    m = FakeManager()
    await m.init_swarm(InitRequest())
    return m


@pytest.fixture
async def client(manager: FakeManager) -> AsyncIterator[TestClient]:
    async with TestClient(TestServer(create_app(manager))) as c:
        yield c


async def test_deploy_list_inspect_update_remove(client: TestClient, manager: FakeManager) -> None:
    resp = await client.post("/shoal/stacks", json=stack())
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    assert {(c["Kind"], c["Name"], c["Action"]) for c in body["Changes"]} == {
        ("network", "vote_default", "create"), ("secret", "vote_token", "create"), ("service", "vote_web", "create")}
    svc = manager.store.service_by_name("vote_web")
    net = next(n for n in manager.store.list("network") if n.Spec.Name == "vote_default")
    assert [n.Target for n in svc.Spec.TaskTemplate.Networks] == [net.ID]  # names resolved to IDs
    assert net.Spec.Labels["com.docker.stack.namespace"] == "vote"

    rows = await (await client.get("/shoal/stacks")).json()
    assert [(r["Name"], r["Services"], r["State"]) for r in rows] == [("vote", 1, "deployed")]
    shown = await (await client.get("/shoal/stacks/vote")).json()
    assert shown["Spec"]["Resources"]["Secrets"]["vote_token"].get("Data", "") == ""  # data stays in the secret

    resp = await client.post("/shoal/stacks/vote/update", json=stack(image="busybox:2"))
    assert resp.status == 200
    assert [c["Action"] for c in (await resp.json())["Changes"] if c["Kind"] == "service"] == ["update"]
    version = shown["Version"]["Index"]
    resp = await client.post(f"/shoal/stacks/vote/update?version={version}", json=stack())
    assert resp.status == 409 and "out of sequence" in (await resp.json())["message"]

    resp = await client.post("/shoal/stacks/vote/scale", json={"web": 5})
    assert resp.status == 200 and manager.store.service_by_name("vote_web").Spec.Mode.Replicated.Replicas == 5

    assert (await client.delete("/shoal/stacks/vote")).status == 200
    assert manager.store.list("service") == []
    assert [n.Spec.Name for n in manager.store.list("network")] == ["ingress"]  # swarm init's, not the stack's
    assert manager.store.list("secret") == [] and manager.store.list("stack") == []
    assert (await client.delete("/shoal/stacks/vote")).status == 404


@pytest.mark.parametrize(
    ("path", "body", "status", "message"),
    [
        ("/shoal/stacks", b"{", 400, "truncated"),
        ("/shoal/stacks", {"Name": "x", "Bogus": 1}, 400, "Bogus"),
        ("/shoal/stacks", stack(name="bad name"), 400, "invalid stack name"),
        ("/shoal/stacks", stack(image="Not An Image"), 400, "service web"),
        ("/shoal/stacks", stack(ExternalNetworks=["proxy"]), 404, "external"),
        ("/shoal/stacks/nosuch/update", stack(name="nosuch"), 404, "stack nosuch not found"),
        ("/shoal/stacks/vote/update", stack(name="other"), 400, "does not match"),
        ("/shoal/stacks/nosuch/scale", {"web": 1}, 404, "not found"),
        ("/shoal/stacks/vote/scale", [1], 400, "service names and replica counts"),
        ("/shoal/stacks/vote/scale", {"web": "many"}, 400, "invalid replicas"),
    ],
)
async def test_bad_requests_change_nothing(client: TestClient, manager: FakeManager, path: str, body: Any,
                                           status: int, message: str) -> None:
    assert (await client.post("/shoal/stacks", json=stack())).status == 200
    before = manager.store.revision
    if isinstance(body, bytes):
        resp = await client.post(path, data=body, headers={"Content-Type": "application/json"})
    else:
        resp = await client.post(path, json=body)
    assert resp.status == status, await resp.text()
    assert message in (await resp.json())["message"]
    assert manager.store.revision == before


async def test_changed_secret_data_is_refused(client: TestClient, manager: FakeManager) -> None:
    assert (await client.post("/shoal/stacks", json=stack())).status == 200
    changed = stack()
    changed["Resources"]["Secrets"]["vote_token"]["Data"] = "b3RoZXI="
    before = manager.store.revision
    resp = await client.post("/shoal/stacks", json=changed)
    assert resp.status == 400 and "cannot change" in (await resp.json())["message"]
    assert manager.store.revision == before


async def test_dry_run_plans_and_writes_nothing(client: TestClient, manager: FakeManager) -> None:
    before = manager.store.revision
    resp = await client.post("/shoal/stacks?dryRun=1", json=stack())
    body = await resp.json()
    assert resp.status == 200 and len(body["Plans"]["vote_web"]) == 2
    assert all(p["Node"] == "manager-host" for p in body["Plans"]["vote_web"])
    assert manager.store.revision == before
