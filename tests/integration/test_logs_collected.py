"""Issue 14 part 4 on a real engine: log drivers applied, and aliyun.log_store_* collected.

One swarm for the module. A service made with the real docker CLI (``--log-driver json-file
--log-opt max-size=1m --log-opt max-file=2``, which reaches the task's container as its LogConfig)
writes numbered lines to stdout and to a file inside the container; its labels name two log stores
(``stdout`` on the service, a glob on the containers, where Aliyun's Compose files put them). The
lines arrive in the leader's files, at a Loki and an Elasticsearch sink — a small aiohttp receiver
in this process recording what it is sent (Debian 12 packages neither: its ``loki`` is a genetics
tool) — and ``shoal logs query`` finds them by text and time. Then ``--log-driver none``.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import docker
import pytest
from aiohttp import web

from tests.integration.conftest import shoal_cli, wait_for
from tests.integration.shoal_process import ShoalProcess
from tests.integration.transport_env import listen_addr

NAME = "lgs-web"
SCRIPT = ("mkdir -p /var/log/app; i=0; while true; do echo lgs-out-$i; echo lgs-file-$i >> /var/log/app/a.log; "
          "i=$((i+1)); sleep 0.2; done")


class Receiver:
    """Loki's push and Elasticsearch's bulk endpoints, recording what they are sent."""

    def __init__(self) -> None:
        self.loki: list[dict[str, Any]] = []
        self.bulk: list[dict[str, Any]] = []
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    async def _loki(self, request: web.Request) -> web.Response:
        self.loki.append(await request.json())
        return web.Response(status=204)

    async def _bulk(self, request: web.Request) -> web.Response:
        lines = (await request.text()).splitlines()
        self.bulk.extend(json.loads(x) for x in lines[1::2])
        return web.json_response({"took": 1, "errors": False, "items": []})

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        app = web.Application()
        app.router.add_post("/loki/api/v1/push", self._loki)
        app.router.add_post("/_bulk", self._bulk)
        self._runner = web.AppRunner(app)
        self._loop.run_until_complete(self._runner.setup())
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        self._loop.run_until_complete(site.start())
        self.port = self._runner.addresses[0][1]
        self._ready.set()
        self._loop.run_forever()

    def start(self) -> None:
        self._thread.start()
        self._ready.wait(10)

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def loki_lines(self) -> list[tuple[dict[str, str], str]]:
        return [(s["stream"], v[1]) for push in list(self.loki) for s in push["streams"] for v in s["values"]]


@pytest.fixture(scope="module")
def cluster(shoal: ShoalProcess) -> Iterator[ShoalProcess]:
    client = shoal.client()
    client.swarm.init(advertise_addr="127.0.0.1", listen_addr=listen_addr())
    yield shoal
    try:
        client.swarm.leave(force=True)
    except docker.errors.APIError:
        pass


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    r.start()
    yield r
    r.stop()


def records(shoal: ShoalProcess, *args: str) -> list[dict[str, Any]]:
    out = shoal_cli(shoal, "logs", "query", "--json", *args).stdout
    return [json.loads(x) for x in out.splitlines()]


def test_lgs_log_stores_reach_files_sinks_and_query(cluster: ShoalProcess, receiver: Receiver) -> None:
    url = f"http://127.0.0.1:{receiver.port}"
    bad = shoal_cli(cluster, "logs", "sink", "add", "lgs-bad", "--type", "kafka", "--url", url, check=False)
    assert bad.returncode != 0 and "invalid sink type 'kafka'" in bad.stderr and "Traceback" not in bad.stderr
    shoal_cli(cluster, "logs", "sink", "add", "lgs-loki", "--type", "loki", "--url", url)
    shoal_cli(cluster, "logs", "sink", "add", "lgs-es", "--type", "elasticsearch", "--url", url, "--index", "lgs-idx")
    again = shoal_cli(cluster, "logs", "sink", "add", "lgs-loki", "--type", "loki", "--url", url, check=False)
    assert again.returncode != 0 and "already exists" in again.stderr
    assert "lgs-es" in shoal_cli(cluster, "logs", "sink", "ls").stdout
    started = time.time()
    client = cluster.client()
    try:
        cluster.docker_cli("service", "create", "-d", "--name", NAME,
                           "--label", "aliyun.log_store_out=stdout",
                           "--container-label", "aliyun.log_store_files=/var/log/app/*.log",
                           "--log-driver", "json-file", "--log-opt", "max-size=1m", "--log-opt", "max-file=2",
                           "--stop-grace-period", "1s",  # sh as PID 1 ignores SIGTERM: the update waits less
                           "busybox:latest", "sh", "-c", SCRIPT)
        bad_label = cluster.docker_cli("service", "create", "-d", "--name", "lgs-bad", "--label",
                                       "aliyun.log_store_x=relative/*.log", "busybox:latest", check=False)
        assert bad_label.returncode != 0 and "must be 'stdout' or an absolute path" in bad_label.stderr

        # Both stores in the leader's files, by service and store.
        root = cluster.data / "logstore" / NAME
        wait_for(lambda: (root / "files.log").exists() and "lgs-file-5" in (root / "files.log").read_text()
                 and "lgs-out-5" in (root / "out.log").read_text(), timeout=30)
        first = json.loads((root / "files.log").read_text().splitlines()[0])
        assert (first["service"], first["store"], first["source"], first["line"]) == \
            (NAME, "files", "/var/log/app/a.log", "lgs-file-0")

        # The task's container got the log driver as docker's own swarm gives it.
        task = client.services.get(NAME).tasks()[0]
        engine = docker.from_env()
        info = engine.api.inspect_container(task["Status"]["ContainerStatus"]["ContainerID"])
        assert info["HostConfig"]["LogConfig"] == {"Type": "json-file", "Config": {"max-file": "2", "max-size": "1m"}}

        # The sinks got them.
        wait_for(lambda: any(line == "lgs-file-3" for _, line in receiver.loki_lines())
                 and any(d["message"] == "lgs-out-3" for d in receiver.bulk), timeout=20)
        labels = next(s for s, line in receiver.loki_lines() if line == "lgs-file-3")
        assert (labels["service"], labels["store"], labels["source"]) == (NAME, "files", "/var/log/app/a.log")
        doc = next(d for d in receiver.bulk if d["message"] == "lgs-out-3")
        assert (doc["service"], doc["store"], doc["source"], doc["task"]) == (NAME, "out", "stdout", task["ID"])

        # `shoal logs query`: by text, store and time.
        hit = records(cluster, "--service", NAME, "--grep", "lgs-file-3")
        assert [(r["line"], r["store"], r["task"]) for r in hit] == [("lgs-file-3", "files", task["ID"])]
        assert started - 5 < hit[0]["ts"] < time.time()
        assert [r["line"] for r in records(cluster, "--store", "out", "--limit", "2", "--grep", "lgs-out-")][-1] \
            .startswith("lgs-out-")
        assert records(cluster, "--service", NAME, "--since", "10m", "--grep", "lgs-out-4")
        assert records(cluster, "--service", NAME, "--until", f"{started - 60:.0f}") == []
        res = shoal_cli(cluster, "logs", "query", "--since", "yesterday", check=False)
        assert res.returncode != 0 and "--since: invalid time 'yesterday'" in res.stderr
        assert "Traceback" not in res.stderr

        # --log-driver none reaches the new task's container (its output can then not be collected).
        cluster.docker_cli("service", "update", "-d", "--log-driver", "none", NAME)

        def none_container() -> str:
            for t in client.services.get(NAME).tasks(filters={"desired-state": "running"}):
                cid = (t["Status"].get("ContainerStatus") or {}).get("ContainerID")
                if cid and t["Status"]["State"] == "running":
                    return str(engine.api.inspect_container(cid)["HostConfig"]["LogConfig"]["Type"])
            return ""
        wait_for(lambda: none_container() == "none", timeout=30)
    finally:
        try:
            client.services.get(NAME).remove()
        except docker.errors.NotFound:
            pass
        shoal_cli(cluster, "logs", "sink", "rm", "lgs-loki", "lgs-es", check=False)
