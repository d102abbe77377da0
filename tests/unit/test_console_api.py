"""The console's routes in process (FakeManager, the real app with the console installed): sessions
through api/auth.py for store users (viewer, operator), what a viewer's pages leave out, the console
deploy's team rule, and the change stream's batching."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator

import pytest
from aiohttp.test_utils import TestClient, TestServer

from shoal.api import create_app
from shoal.api.auth import Security
from shoal.api.testing import FakeManager, add_node
from shoal.console import api as console
from shoal.controlapi import secrets, users
from shoal.models import InitRequest, SecretSpec, UserSpec
from shoal.orchestrator.testutils import make_service

FILE = b"services:\n  web:\n    image: busybox:latest\n"


@pytest.fixture
async def cli() -> AsyncIterator[tuple[TestClient, FakeManager]]:
    m = FakeManager()
    await m.init_swarm(InitRequest())
    app = console.install(create_app(m, Security(anonymous=None)))  # no anonymous admin: every caller is someone
    async with TestClient(TestServer(app)) as c:
        yield c, m


async def _login(c: TestClient, m: FakeManager, name: str, role: str, teams: list[str] | None = None) -> dict[str, str]:
    users.put(m.store, UserSpec(Name=name, Role=role, Teams=teams))
    token, _ = users.create_token(m.store, name)
    minted = await (await c.post("/shoal/console/tokens", headers={"Authorization": f"Bearer {token}"})).json()
    resp = await c.get(minted["Path"], allow_redirects=False)
    assert resp.status == 303
    return {"Cookie": f"shoal_console={resp.cookies['shoal_console'].value}"}


async def test_cs_a_viewer_session_reads_without_secrets_and_ends_with_its_user(
        cli: tuple[TestClient, FakeManager]) -> None:
    c, m = cli
    assert (await c.get("/shoal/console/overview")).status == 401  # nobody
    jar = await _login(c, m, "vic", "viewer")
    secrets.create_secret(m.store, SecretSpec(Name="cs-db-password", Data=base64.b64encode(b"x").decode()))
    make_service(m.store, "cs-web", replicas=2)
    for _ in range(50):  # the swarm's event log follows the store's watch
        ov = await (await c.get("/shoal/console/overview", headers=jar)).json()
        if any(e["Type"] == "service" for e in ov["Events"]):
            break
        await asyncio.sleep(0.02)
    assert {e["Type"] for e in ov["Events"]} >= {"service"} and "secret" not in {e["Type"] for e in ov["Events"]}
    assert ov["Services"]["total"] == 1 and ov["Services"]["not_converged"][0]["Desired"] == 2
    rows = await (await c.get("/v1.41/shoal/console/services", headers=jar)).json()
    assert [(r["Name"], r["Running"], r["Desired"]) for r in rows] == [("cs-web", 0, 2)]
    # A viewer may read, not write: a real deploy is refused, a dry run (a read) is not.
    write = {**jar, "X-Shoal-Console": "1"}
    assert (await c.post("/shoal/console/deploy?name=cs-s", data=FILE, headers=write)).status == 403
    assert (await c.post("/shoal/console/deploy?name=cs-s&dryRun=1", data=FILE, headers=write)).status == 200
    users.remove(m.store, "vic")
    gone = await c.get("/shoal/console/overview", headers=jar)
    assert gone.status == 401 and "console" in (await gone.json())["message"]


async def test_cs_an_operator_deploys_only_into_its_teams(cli: tuple[TestClient, FakeManager]) -> None:
    c, m = cli
    jar = {**await _login(c, m, "opa", "operator", ["web"]), "X-Shoal-Console": "1"}
    assert (await c.post("/shoal/console/deploy?name=cs-s", data=FILE, headers=jar)).status == 403  # no team
    assert (await c.post("/shoal/console/deploy?name=cs-s&team=db", data=FILE, headers=jar)).status == 403
    ok = await c.post("/shoal/console/deploy?name=cs-s&team=web", data=FILE, headers=jar)
    assert ok.status == 200, await ok.text()
    svc = m.store.service_by_name("cs-s_web")
    assert svc is not None and svc.Spec.Labels[users.TEAM_LABEL] == "web"
    again = await c.post("/shoal/console/deploy?name=cs-s", data=FILE.replace(b"latest", b"1.36"), headers=jar)
    assert again.status == 200  # a redeploy naming no team keeps the stack's, which is the operator's
    bad = await c.post("/shoal/console/deploy?name=cs-s&team=web", data=b"services:\n  web:\n    imag: x\n",
                       headers=jar)
    assert bad.status == 400 and (await bad.json())["line"] == 3


async def test_cs_the_stream_batches_changes_and_names_their_ids(cli: tuple[TestClient, FakeManager]) -> None:
    c, m = cli
    jar = await _login(c, m, "ada", "admin")
    resp = await c.get("/shoal/console/stream", headers=jar)
    assert resp.status == 200 and resp.headers["Content-Type"] == "text/event-stream"

    async def event() -> tuple[str, dict[str, object]]:
        block = b""
        while not block.endswith(b"\n\n") or b"event:" not in block:
            block += await resp.content.readline()
        lines = dict(line.split(": ", 1) for line in block.decode().splitlines() if ": " in line)
        return lines["event"], json.loads(lines["data"])

    assert (await event())[0] == "hello"
    svcs = [make_service(m.store, f"cs-{i}", replicas=1) for i in range(3)]  # three commits in a burst
    kind, data = await asyncio.wait_for(event(), 2)
    assert kind == "change" and data["kinds"] == ["service"]
    assert sorted(data["ids"]["service"]) == sorted(s.ID for s in svcs)  # one message for the burst
    resp.close()


async def test_cs_the_visualizer_answers_each_revision_once(cli: tuple[TestClient, FakeManager]) -> None:
    c, m = cli
    jar = await _login(c, m, "ada", "admin")
    first = await (await c.get("/shoal/console/visualizer", headers=jar)).read()
    cache = c.server.app[console.VISUALIZER_CACHE]
    assert list(cache.values()) == [first]
    assert await (await c.get("/shoal/console/visualizer", headers=jar)).read() == first
    add_node(m.store, "cs-node-2")  # a change: the next answer is computed again, and shows it
    second = await (await c.get("/shoal/console/visualizer", headers=jar)).json()
    assert [n["Hostname"] for n in second["Nodes"]] == ["cs-node-2", "manager-host"]
    assert len(cache) == 1
