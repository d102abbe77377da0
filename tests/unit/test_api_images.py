"""The cluster's images (api/images.py) over two fake node engines: merged list and inspect, pull
and load to several nodes (progress prefixed by node, failures told once at the end), tag and
remove on the nodes that have the image, and the pure merging rules."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from shoal.api import create_app
from shoal.api.images import merge_image_lists, node_message, pick_inspect, split_messages
from shoal.api.testing import FakeManager, add_node
from shoal.errors import Conflict
from shoal.models import Node
from shoal.transport.tunnel import Pipe

BUSY = "sha256:" + "b" * 64
OLD_BUSY = "sha256:" + "0" * 64
ALPINE = "sha256:" + "a" * 64


class FakeEngine:
    """Just enough of one node's engine: its images by ID (with tags), and a log of what it was asked."""

    def __init__(self, name: str, images: dict[str, list[str]], pull_error: str = "") -> None:
        self.name, self.images, self.pull_error = name, images, pull_error
        self.calls: list[tuple[str, str, dict[str, str]]] = []
        self.loaded = b""

    def _find(self, ref: str) -> str | None:
        ref = ref if ":" in ref or ref.startswith("sha256") else ref + ":latest"
        for iid, tags in self.images.items():
            if ref in tags or iid == ref or iid.removeprefix("sha256:").startswith(ref.removeprefix("sha256:")):
                return iid
        return None

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.calls.append((request.method, request.path_qs, dict(request.headers)))
        path = request.path
        if path == "/images/json":
            return web.json_response([{"Id": i, "RepoTags": t or ["<none>:<none>"], "RepoDigests": None,
                                       "Created": 2 if i == BUSY else 1, "Containers": -1, "Size": 10}
                                      for i, t in self.images.items()])
        if path == "/images/create":
            image = request.query["fromImage"]
            if image == "denied":  # the registry said no before any progress
                return web.json_response({"message": "pull access denied for denied"}, status=404)
            resp = web.StreamResponse()
            await resp.prepare(request)
            await resp.write(json.dumps({"status": "Pulling from library/" + image, "id": "latest"}).encode() + b"\r\n")
            if self.pull_error:
                await resp.write(json.dumps({"errorDetail": {"message": self.pull_error},
                                             "error": self.pull_error}).encode() + b"\r\n")
            else:  # one message cut across two writes, as a real stream may be
                line = json.dumps({"status": "Status: Downloaded newer image for " + image}).encode() + b"\r\n"
                await resp.write(line[:10])
                await resp.write(line[10:])
                self.images[BUSY] = [image + ":latest"]
            return resp
        if path == "/images/load":
            self.loaded = await request.read()
            return web.json_response({"stream": "Loaded image: busybox:latest\n"})
        ref, _, action = path.removeprefix("/images/").rpartition("/")
        if request.method == "DELETE":
            ref, action = path.removeprefix("/images/"), ""
        iid = self._find(ref)
        if iid is None:
            return web.json_response({"message": f"No such image: {ref}"}, status=404)
        if action == "json":
            return web.json_response({"Id": iid, "RepoTags": self.images[iid], "RepoDigests": [], "Created": "x"})
        if action == "tag":
            self.images[iid].append(f"{request.query['repo']}:{request.query.get('tag') or 'latest'}")
            return web.Response(status=201)
        if request.method == "DELETE":
            if "busy" in self.name:
                return web.json_response({"message": "conflict: unable to remove repository reference (must force)"},
                                         status=409)
            del self.images[iid]
            return web.json_response([{"Untagged": ref}, {"Deleted": iid}])
        return web.json_response({"message": "page not found"}, status=404)


class EngineManager(FakeManager):
    def __init__(self) -> None:
        super().__init__()
        self.sockets: dict[str, str] = {}

    async def open_engine(self, node_id: str) -> Pipe:
        return await asyncio.open_unix_connection(self.sockets[node_id])


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[tuple[TestClient, EngineManager, dict[str, FakeEngine]]]:
    m = EngineManager()
    engines = {
        "node-a": FakeEngine("node-a", {BUSY: ["busybox:latest"], ALPINE: ["alpine:3"]}),
        "node-b": FakeEngine("node-b", {BUSY: ["busybox:latest", "mine:1"]}),
    }
    runners: list[web.AppRunner] = []
    async with TestClient(TestServer(create_app(m))) as client:
        await client.post("/swarm/init", json={"ListenAddr": "0.0.0.0:2377"})
        with m.store.tx() as tx:  # the init's own node has no engine in these tests
            for n in m.store.list("node"):
                tx.delete("node", n.ID)
        for name, engine in engines.items():
            node: Node = add_node(m.store, name)
            app = web.Application()
            app.router.add_route("*", "/{tail:.*}", engine.handle)
            runner = web.AppRunner(app)
            await runner.setup()
            sock = str(tmp_path / f"{name}.sock")
            await web.UnixSite(runner, sock).start()
            runners.append(runner)
            m.sockets[node.ID] = sock
        yield client, m, engines
    for r in runners:
        await r.cleanup()


async def test_images_are_listed_once_with_their_nodes(cluster: Any) -> None:
    client, _, _ = cluster
    resp = await client.get("/v1.41/images/json")
    assert resp.status == 200, await resp.text()
    by_id = {i["Id"]: i for i in await resp.json()}
    assert [i["Id"] for i in await resp.json()] == [BUSY, ALPINE]  # newest first
    assert by_id[BUSY]["Nodes"] == ["node-a", "node-b"]
    assert by_id[BUSY]["RepoTags"] == ["busybox:latest", "mine:1"]
    assert by_id[ALPINE]["Nodes"] == ["node-a"]
    # classic Swarm's node filter asks that node only; a bad filter is Docker's 400
    resp = await client.get("/images/json", params={"filters": json.dumps({"node": ["node-b"]})})
    assert [i["Nodes"] for i in await resp.json()] == [["node-b"]]
    resp = await client.get("/images/json", params={"filters": json.dumps({"colour": ["red"]})})
    assert resp.status == 400 and (await resp.json())["message"] == "invalid filter 'colour'"


async def test_inspect_tag_and_remove_go_to_the_nodes_that_have_the_image(cluster: Any) -> None:
    client, _, engines = cluster
    doc = await (await client.get("/images/alpine:3/json")).json()
    assert doc["Id"] == ALPINE and doc["Nodes"] == ["node-a"]
    resp = await client.get("/images/nothing/json")
    assert resp.status == 404 and await resp.json() == {"message": "No such image: nothing"}

    assert (await client.post("/images/busybox/tag", params={"repo": "cluster", "tag": "v1"})).status == 201
    assert all("cluster:v1" in e.images[BUSY] for e in engines.values())
    assert (await client.post("/images/alpine:3/tag", params={"repo": "a2"})).status == 201
    assert not any(c[1].startswith("/images/alpine:3/tag") for c in engines["node-b"].calls)  # not asked

    resp = await client.delete("/images/alpine:3")
    assert resp.status == 200 and await resp.json() == [{"Untagged": "alpine:3"}, {"Deleted": ALPINE}]
    assert ALPINE not in engines["node-a"].images


async def test_a_conflict_on_one_node_is_passed_on_naming_it(cluster: Any) -> None:
    client, _, engines = cluster
    engines["node-b"].name = "node-busy"  # this engine refuses removals with a 409
    resp = await client.delete("/images/busybox")
    assert resp.status == 409
    message = (await resp.json())["message"]
    assert message.startswith("node-b: conflict: unable to remove") and "(removed on 1 other node)" in message
    assert BUSY not in engines["node-a"].images and BUSY in engines["node-b"].images


async def test_pull_streams_every_node_s_progress_then_one_error(cluster: Any) -> None:
    client, _, engines = cluster
    engines["node-b"].pull_error = "pull access denied for secret, repository does not exist"
    resp = await client.post("/images/create", params={"fromImage": "secret", "tag": "latest"},
                             headers={"X-Registry-Auth": "e30="})
    assert resp.status == 200
    msgs, rest = split_messages(await resp.read())
    assert rest == b""
    assert {"status": "Pulling from library/secret", "id": "node-a: latest"} in msgs
    assert {"status": "node-a: Status: Downloaded newer image for secret"} in msgs
    assert msgs[-1]["error"] == ("pull failed on 1 of 2 nodes: node-b: pull access denied for secret, "
                                 "repository does not exist")
    assert sum(1 for msg in msgs if "error" in msg) == 1  # the CLI stops at the first
    for e in engines.values():  # the client's registry credentials reached every engine
        assert [c[2].get("X-Registry-Auth") for c in e.calls if c[1].startswith("/images/create")] == ["e30="]

    # `node` names the nodes a pull goes to
    resp = await client.post("/images/create", params={"fromImage": "other", "node": "node-a"})
    msgs, _ = split_messages(await resp.read())
    assert all("error" not in msg for msg in msgs)
    assert not any("fromImage=other" in c[1] for c in engines["node-b"].calls)
    resp = await client.post("/images/create", params={"fromImage": "other", "constraint": "node.hostname==zz"})
    assert resp.status == 503 and "no ready node matches node.hostname==zz" in (await resp.json())["message"]


async def test_a_pull_every_node_refuses_is_an_http_error(cluster: Any) -> None:
    client, _, _ = cluster
    resp = await client.post("/images/create", params={"fromImage": "denied", "node": "node-b"})
    assert resp.status == 404 and await resp.json() == {"message": "pull access denied for denied"}  # as one engine
    resp = await client.post("/images/create", params={"fromImage": "denied"})
    assert resp.status == 404 and (await resp.json())["message"] == (
        "node-a: pull access denied for denied; node-b: pull access denied for denied")
    resp = await client.post("/images/create", params={"fromImage": "x", "node": "nobody"})
    assert resp.status == 404 and (await resp.json())["message"] == "node nobody not found"
    resp = await client.post("/images/create")
    assert resp.status == 400


async def test_load_sends_the_tar_to_every_node(cluster: Any) -> None:
    client, _, engines = cluster
    tar = bytes(range(256)) * 2000  # several chunks
    resp = await client.post("/images/load", data=tar, params={"quiet": "1"},
                             headers={"Content-Type": "application/x-tar"})
    assert resp.status == 200
    msgs, _ = split_messages(await resp.read())
    assert msgs == [{"stream": "Loaded image: busybox:latest\n"}]  # once: the SDK parses this line
    assert all(e.loaded == tar for e in engines.values())


def test_merge_rules() -> None:
    merged = merge_image_lists([
        ("n2", [{"Id": "x", "RepoTags": ["<none>:<none>"], "Containers": 1, "Created": 5}]),
        ("n1", [{"Id": "x", "RepoTags": ["a:1"], "Containers": 2, "Created": 5}]),
    ])
    assert merged == [{"Id": "x", "RepoTags": ["a:1"], "RepoDigests": None, "Containers": 3, "Created": 5,
                       "Nodes": ["n1", "n2"]}]
    # a name meaning different images: the one on most nodes; an ID prefix doing so is ambiguous
    hits = [("n1", {"Id": OLD_BUSY}), ("n2", {"Id": BUSY}), ("n3", {"Id": BUSY})]
    assert pick_inspect("busybox", hits)["Nodes"] == ["n2", "n3"]
    with pytest.raises(Conflict, match="ambiguous"):
        pick_inspect("abc", hits)
    seen: set[str] = set()
    assert node_message("n1", {"error": "x"}, seen) is None
    assert node_message("n1", {"stream": "s"}, seen) == {"stream": "s"}
    assert node_message("n2", {"stream": "s"}, seen) is None
    assert node_message("n1", {"aux": {"ID": "y"}}, seen) == {"aux": {"ID": "y"}}
