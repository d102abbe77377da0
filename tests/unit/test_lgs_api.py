"""``/shoal/logs/*`` through the real API app: sinks (admins only, Docker's {"message"} on bad input,
the store untouched), and a query whose lines a viewer sees only for its teams' services."""

from __future__ import annotations

from pathlib import Path

from aiohttp.test_utils import TestClient, TestServer

from shoal.api import create_app
from shoal.api.auth import Security
from shoal.api.testing import FakeManager
from shoal.controlapi import users
from shoal.dispatcher.protocol import LogRecord
from shoal.logstore.files import FileSink
from shoal.models import InitRequest, Service, ServiceSpec, UserSpec, Version


def service(name: str, team: str | None) -> Service:
    labels = {users.TEAM_LABEL: team} if team else None
    return Service(ID=name + "-id", Version=Version(), CreatedAt="", UpdatedAt="",
                   Spec=ServiceSpec(Name=name, Labels=labels))


async def test_lgs_sinks_and_query_through_the_api(tmp_path: Path) -> None:
    manager = FakeManager()
    await manager.init_swarm(InitRequest(ListenAddr="0.0.0.0:2377"))
    manager.logstore_root = tmp_path  # type: ignore[attr-defined]
    with manager.store.tx() as tx:
        tx.create("service", service("lgs_api", "api"))
        tx.create("service", service("lgs_db", "db"))
    FileSink(tmp_path).write([
        LogRecord(100.0 + i, s + "-id", s, "t", "n", "app", "stdout", f"{s} {i}")
        for i in range(3) for s in ("lgs_api", "lgs_db")])
    users.put(manager.store, UserSpec(Name="lgsviewer", Role="viewer", Teams=["api"]))
    users.put(manager.store, UserSpec(Name="lgsadmin", Role="admin"))
    viewer, _ = users.create_token(manager.store, "lgsviewer", teams=["api"], role="viewer")
    admin, _ = users.create_token(manager.store, "lgsadmin", teams=[], role="admin")
    as_viewer = {"Authorization": f"Bearer {viewer}"}
    as_admin = {"Authorization": f"Bearer {admin}"}
    client = TestClient(TestServer(create_app(manager, Security(anonymous=None))))
    await client.start_server()
    try:
        # Sinks: admins only; a bad one is a 400 in Docker's shape and nothing is stored.
        body = {"Name": "lgs-l", "Type": "loki", "URL": "http://user:pw@127.0.0.1:3100"}
        assert (await client.post("/shoal/logs/sinks", json=body, headers=as_viewer)).status == 403
        resp = await client.post("/shoal/logs/sinks", json={**body, "Type": "kafka"}, headers=as_admin)
        assert resp.status == 400 and "invalid sink type 'kafka'" in (await resp.json())["message"]
        resp = await client.post("/shoal/logs/sinks", json={**body, "URL": "ftp://x"}, headers=as_admin)
        assert resp.status == 400 and "http(s)://host" in (await resp.json())["message"]
        resp = await client.post("/shoal/logs/sinks", json={**body, "Bogus": 1}, headers=as_admin)
        assert resp.status == 400
        assert manager.store.list("logsink") == []
        assert (await client.post("/shoal/logs/sinks", json=body, headers=as_admin)).status == 201
        assert (await client.post("/shoal/logs/sinks", json=body, headers=as_admin)).status == 409
        listed = await (await client.get("/shoal/logs/sinks", headers=as_admin)).json()
        assert [s["Spec"]["URL"] for s in listed] == ["http://user:***@127.0.0.1:3100"]  # no password shown
        assert (await client.delete("/shoal/logs/sinks/lgs-l", headers=as_admin)).status == 204
        assert (await client.delete("/shoal/logs/sinks/lgs-l", headers=as_admin)).status == 404

        # Query: an admin sees every service, a viewer its team's only.
        got = await (await client.get("/shoal/logs/query", headers=as_admin)).json()
        assert len(got) == 6
        got = await (await client.get("/shoal/logs/query", headers=as_viewer)).json()
        assert {r["service"] for r in got} == {"lgs_api"}
        resp = await client.get("/shoal/logs/query", params={"service": "lgs_db"}, headers=as_viewer)
        assert resp.status == 403 and "only of its teams' services" in (await resp.json())["message"]
        got = await (await client.get("/shoal/logs/query", params={"grep": "api 1", "since": "100.5"},
                                      headers=as_viewer)).json()
        assert [r["line"] for r in got] == ["lgs_api 1"]
        for params, text in (({"since": "soon"}, 'invalid value for "since"'), ({"limit": "0"}, '"limit"'),
                             ({"since": "200", "until": "100"}, '"until" is before "since"')):
            resp = await client.get("/shoal/logs/query", params=params, headers=as_admin)
            assert resp.status == 400 and text in (await resp.json())["message"]
    finally:
        await client.close()
