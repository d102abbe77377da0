"""A daemon whose engine does not answer still starts and serves the cluster (issue 10, item 9).

The daemon's ``--engine`` points at a socket path where nothing listens. The API answers, `swarm
init` works, `docker node ls` shows the node down with the reason, and a service's tasks wait with
"engine unavailable on 1 node". Then a small proxy starts listening at that path and forwards to
the machine's real dockerd: the engine has "come back", and without restarting the daemon the node
turns ready and the tasks run as real containers on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from tests.integration.conftest import wait_for
from tests.integration.shoal_process import ShoalProcess
from tests.integration.transport_env import listen_addr

REAL_ENGINE = "/var/run/docker.sock"


class EngineProxy:
    """A unix socket that forwards every connection to the real engine, in its own thread."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.server: asyncio.AbstractServer | None = None

    def start(self) -> None:
        self.thread.start()
        self.server = asyncio.run_coroutine_threadsafe(
            asyncio.start_unix_server(self._handle, path=str(self.path)), self.loop).result(5)

    def stop(self) -> None:
        async def close() -> None:
            assert self.server is not None
            self.server.close()
            for t in asyncio.all_tasks():
                if t is not asyncio.current_task():
                    t.cancel()

        asyncio.run_coroutine_threadsafe(close(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_unix_connection(REAL_ENGINE)

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, asyncio.CancelledError):
                pass
            finally:
                with contextlib.suppress(Exception):
                    dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))


@pytest.fixture
def engineless(tmp_path: Path) -> Iterator[tuple[ShoalProcess, Path]]:
    sock = tmp_path / "engine.sock"  # nothing listens here (yet)
    proc = ShoalProcess(tmp_path / "shoal", engine=f"unix://{sock}")
    proc.root.mkdir()
    proc.start()
    yield proc, sock
    with contextlib.suppress(docker.errors.APIError):
        proc.client().swarm.leave(force=True)
    proc.stop()


def service_tasks(client: docker.DockerClient, service_id: str) -> list[dict]:
    return client.api.tasks(filters={"service": service_id})


def test_a_daemon_without_its_engine_serves_and_picks_the_engine_up_when_it_comes(
    engineless: tuple[ShoalProcess, Path],
) -> None:
    shoal, sock = engineless
    client = shoal.client()
    assert client.ping()
    assert not any(c["Name"] == "Docker Engine (node runtime)" for c in client.version()["Components"])
    client.swarm.init(advertise_addr="127.0.0.1", listen_addr=listen_addr())

    # The node is there, down, and says why; the docker CLI shows it.
    reason = f"engine unavailable: cannot connect to unix://{sock}: No such file or directory"
    node = wait_for(lambda: (n := client.nodes.list()[0]) and n.attrs["Status"]["State"] == "down" and n)
    assert node.attrs["Status"]["Message"] == reason
    ls = shoal.docker_cli("node", "ls", "--format", "{{.Hostname}} {{.Status}} {{.ManagerStatus}}").stdout.split()
    assert ls[1:] == ["Down", "Leader"]
    inspect = shoal.docker_cli("node", "inspect", "self", "--format", "{{.Status.State}}|{{.Status.Message}}")
    assert inspect.stdout.strip() == f"down|{reason}"

    # The cluster API works: a service is created, its tasks wait with the reason.
    svc = client.services.create("busybox:latest", command=["sleep", "300"], name="patient",
                                 mode=docker.types.ServiceMode("replicated", replicas=2))
    why = "no suitable node (engine unavailable on 1 node)"
    wait_for(lambda: len(ts := service_tasks(client, svc.id)) == 2 and all(
        t["Status"]["State"] == "pending" and t["Status"].get("Err") == why for t in ts))

    # The engine comes (a proxy to the machine's dockerd appears at the path): no daemon restart.
    proxy = EngineProxy(sock)
    proxy.start()
    try:
        wait_for(lambda: client.nodes.list()[0].attrs["Status"]["State"] == "ready", timeout=20)
        node = client.nodes.list()[0]
        assert node.attrs["Status"]["Message"] == ""
        assert node.attrs["Description"]["Engine"]["EngineVersion"]  # described by the real engine now
        wait_for(lambda: sum(t["Status"]["State"] == "running" for t in service_tasks(client, svc.id)) == 2,
                 timeout=60)
        real = docker.APIClient(base_url=f"unix://{REAL_ENGINE}", version="1.41")
        try:
            containers = real.containers(filters={"label": f"shoal.service.id={svc.id}"})
        finally:
            real.close()
        assert len(containers) == 2
        # `docker version` names the engine underneath again once it answered.
        wait_for(lambda: any(c["Name"] == "Docker Engine (node runtime)" for c in client.version()["Components"]))
        svc.remove()
        client.swarm.leave(force=True)  # removes the task containers through the proxy
    finally:
        proxy.stop()
