"""POST /shoal/plan: where a service's tasks would go, and why not, without writing anything."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from aiohttp.test_utils import TestClient, TestServer

from shoal.api import create_app
from shoal.api.testing import FakeManager, add_node
from shoal.models import InitRequest, NodeState

SPEC = {"Name": "web", "TaskTemplate": {"ContainerSpec": {"Image": "busybox"}}, "Mode": {"Replicated": {"Replicas": 4}}}


@pytest.fixture
async def manager() -> FakeManager:
    m = FakeManager()
    await m.init_swarm(InitRequest())
    return m


@pytest.fixture
async def client(manager: FakeManager) -> AsyncIterator[TestClient]:
    async with TestClient(TestServer(create_app(manager))) as c:
        yield c


async def test_plan_spreads_and_explains_without_writing(client: TestClient, manager: FakeManager) -> None:
    add_node(manager.store, "a", labels={"zone": "b"})
    add_node(manager.store, "c", labels={"zone": "a"})
    add_node(manager.store, "d", state=NodeState.DOWN, labels={"zone": "b"})
    before = manager.store.revision
    resp = await client.post("/shoal/plan", json=SPEC)
    assert resp.status == 200, await resp.text()
    rows = await resp.json()
    assert [r["Slot"] for r in rows] == [1, 2, 3, 4]
    placed = sorted(r["Node"] for r in rows)
    # Spread over the three ready nodes (the down one gets nothing): 2 + 1 + 1.
    assert "d" not in placed and set(placed) == {"a", "c", "manager-host"}
    assert max(placed.count(n) for n in set(placed)) == 2 and all(r["Reason"] == "" for r in rows)
    zoned = {**SPEC, "TaskTemplate": {**SPEC["TaskTemplate"], "Placement": {"Constraints": ["node.labels.zone==z"]}}}
    rows = await (await client.post("/shoal/plan", json=zoned)).json()
    assert all(r["NodeID"] == "" and "no suitable node" in r["Reason"] for r in rows)
    assert manager.store.revision == before and manager.store.count("service") == 0


async def test_plan_refuses_what_create_would_refuse(client: TestClient, manager: FakeManager) -> None:
    resp = await client.post("/shoal/plan", json={**SPEC, "Bogus": 1})
    assert resp.status == 400
    resp = await client.post("/shoal/plan", json={**SPEC, "TaskTemplate": {"ContainerSpec": {}}})
    assert resp.status == 400 and "image" in (await resp.json())["message"]
