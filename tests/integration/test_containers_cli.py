"""Classic Swarm's container API over the real engine, driven by the real docker CLI and SDK:
run (attached, --rm, exit codes), ps, inspect, exec (with stdin), logs, cp, stats, kill, rm —
for containers made through Shoal and for a service's task containers alike."""

from __future__ import annotations

import base64
import io
import json
import os
import socket
import subprocess
import tarfile

import docker
import pytest

from tests.integration.conftest import wait_for
from tests.integration.shoal_process import ShoalProcess

pytestmark = pytest.mark.integration


def test_run_attached_prints_and_exits_with_the_container_s_code(shoal: ShoalProcess,
                                                                  swarm: docker.DockerClient) -> None:
    res = shoal.docker_cli("run", "--rm", "busybox:latest", "sh", "-c", "echo hi; echo err >&2; exit 3", check=False)
    assert (res.returncode, res.stdout, res.stderr) == (3, "hi\n", "err\n")
    # --rm: nothing is left on the engine.
    names = shoal.docker_cli("ps", "-a", "--format", "{{.Names}} {{.Command}}").stdout
    assert "echo hi" not in names


def test_a_container_s_whole_life_through_the_cli(shoal: ShoalProcess, swarm: docker.DockerClient,
                                                  tmp_path) -> None:
    (node,) = swarm.nodes.list()
    host = node.attrs["Description"]["Hostname"]
    cid = shoal.docker_cli(
        "run", "-d", "--name", "shoal-ctr-cli", "-e", f"constraint:node=={host}", "--label", "shoal-ctr-test=1",
        "busybox:latest", "sh", "-c", "echo hello-from-shoal; sleep 600",
    ).stdout.strip()
    assert len(cid) == 64  # the engine's own ID
    try:
        out = shoal.docker_cli("ps", "--filter", "name=shoal-ctr-cli", "--format", "{{.ID}} {{.Names}} {{.Status}}")
        assert out.stdout.startswith(f"{cid[:12]} {host}/shoal-ctr-cli Up"), out.stdout  # classic Swarm's names

        info = json.loads(shoal.docker_cli("inspect", "shoal-ctr-cli").stdout)[0]
        assert info["Id"] == cid and info["State"]["Running"] is True
        assert info["Node"]["Name"] == host and info["Node"]["ID"] == node.id
        assert f"constraint:node=={host}" in info["Config"]["Env"]
        # node/name and an ID prefix find it too.
        assert shoal.docker_cli("inspect", "-f", "{{.Id}}", f"{host}/shoal-ctr-cli").stdout.strip() == cid
        assert shoal.docker_cli("inspect", "-f", "{{.Id}}", cid[:10]).stdout.strip() == cid

        assert wait_for(lambda: shoal.docker_cli("logs", "shoal-ctr-cli").stdout) == "hello-from-shoal\n"
        assert shoal.docker_cli("exec", "shoal-ctr-cli", "sh", "-c", "echo $((6*7))").stdout == "42\n"
        piped = subprocess.run(["docker", "-H", shoal.host, "exec", "-i", "shoal-ctr-cli", "tr", "a-z", "A-Z"],
                               input="through stdin\n", capture_output=True, text=True, timeout=60, check=True)
        assert piped.stdout == "THROUGH STDIN\n"  # stdin's end reached the process, its output came back
        # docker exec -it, on a terminal (script(1) gives the CLI one): a TTY inside, the exit code out.
        tty = subprocess.run(["script", "-qec", f"docker -H {shoal.host} exec -it shoal-ctr-cli sh -c 'tty; exit 7'",
                              "/dev/null"], capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
        assert tty.returncode == 7 and "/dev/pts/" in tty.stdout, (tty.returncode, tty.stdout, tty.stderr)

        # docker cp both ways (tar archives through the pipe).
        src = tmp_path / "note.txt"
        src.write_text("copied in\n")
        shoal.docker_cli("cp", str(src), "shoal-ctr-cli:/tmp/note.txt")
        assert shoal.docker_cli("exec", "shoal-ctr-cli", "cat", "/tmp/note.txt").stdout == "copied in\n"
        shoal.docker_cli("cp", "shoal-ctr-cli:/tmp/note.txt", str(tmp_path / "back.txt"))
        assert (tmp_path / "back.txt").read_text() == "copied in\n"

        stats = shoal.docker_cli("stats", "--no-stream", "--format", "{{.Name}} {{.PIDs}}", "shoal-ctr-cli").stdout
        assert stats.startswith("shoal-ctr-cli ") or stats.startswith(f"{host}/shoal-ctr-cli "), stats
        assert "sleep 600" in shoal.docker_cli("top", "shoal-ctr-cli").stdout

        res = shoal.docker_cli("rm", "shoal-ctr-cli", check=False)
        assert res.returncode != 0 and "cannot remove a running container" in res.stderr.lower()
        res = shoal.docker_cli("run", "-d", "--name", "shoal-ctr-cli", "busybox:latest", "true", check=False)
        assert res.returncode != 0 and "is already in use" in res.stderr

        shoal.docker_cli("kill", "shoal-ctr-cli")
        state = json.loads(shoal.docker_cli("inspect", "shoal-ctr-cli").stdout)[0]["State"]
        assert state["Status"] == "exited" and state["ExitCode"] == 137  # SIGKILL, as the engine says
        # Pruned on every engine (only ours: the engine is shared, so a label says which).
        pruned = shoal.docker_cli("container", "prune", "-f", "--filter", "label=shoal-ctr-test=1").stdout
        assert cid in pruned, pruned
    finally:
        shoal.docker_cli("rm", "-f", "shoal-ctr-cli", check=False)
    res = shoal.docker_cli("inspect", "--type", "container", "shoal-ctr-cli", check=False)
    assert res.returncode != 0 and "No such container" in res.stderr


def test_a_service_task_s_container_is_one_of_the_cluster_s(shoal: ShoalProcess, swarm: docker.DockerClient) -> None:
    """The README's tour: kill a task's container by label through Shoal; the service replaces it."""
    swarm.services.create("busybox:latest", ["sleep", "600"], name="ctr-svc", stop_grace_period=10**9)
    first = wait_for(lambda: shoal.docker_cli("ps", "-q", "-f", "label=shoal.service.name=ctr-svc").stdout.split())
    try:
        assert isinstance(first, list) and len(first) == 1
        shoal.docker_cli("kill", first[0])
        wait_for(lambda: (lambda ids: ids and ids != first)(
            shoal.docker_cli("ps", "-q", "-f", "label=shoal.service.name=ctr-svc").stdout.split()))
    finally:
        swarm.services.get("ctr-svc").remove()


def test_the_sdk_runs_execs_and_archives(shoal: ShoalProcess, swarm: docker.DockerClient) -> None:
    assert swarm.containers.run("busybox:latest", ["echo", "sdk"], remove=True) == b"sdk\n"
    c = swarm.containers.run("busybox:latest", ["sleep", "600"], detach=True, name="shoal-ctr-sdk")
    try:
        assert c.exec_run(["sh", "-c", "tty; echo x"], tty=True).output.startswith(b"/dev/pts/")
        code, _ = c.exec_run(["sh", "-c", "exit 5"])
        assert code == 5
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            data = b"from the sdk\n"
            member = tarfile.TarInfo("sdk.txt")
            member.size = len(data)
            tar.addfile(member, io.BytesIO(data))
        assert c.put_archive("/tmp", buf.getvalue())
        stream, stat = c.get_archive("/tmp/sdk.txt")
        assert stat["name"] == "sdk.txt" and stat["size"] == 13
        assert b"from the sdk" in b"".join(stream)
        assert c.stats(stream=False)["pids_stats"]["current"] >= 1
        c.pause()
        assert swarm.containers.get(c.id).status == "paused"
        c.unpause()
        c.rename("shoal-ctr-sdk2")
        assert swarm.containers.get("shoal-ctr-sdk2").id == c.id
        assert swarm.containers.list(filters={"name": "shoal-ctr-sdk2"})[0].id == c.id
    finally:
        c.remove(force=True)


def test_unsatisfiable_constraint_is_refused_and_nothing_made(shoal: ShoalProcess, swarm: docker.DockerClient) -> None:
    res = shoal.docker_cli("run", "-d", "--name", "shoal-ctr-nowhere", "-e", "constraint:node==no-such-host",
                           "busybox:latest", "sleep", "600", check=False)
    assert res.returncode != 0 and "Unable to find a node" in res.stderr and "Traceback" not in res.stderr
    assert "node==no-such-host" in res.stderr
    assert "shoal-ctr-nowhere" not in shoal.docker_cli("ps", "-a", "--format", "{{.Names}}").stdout
    # A filter the engines refuse is refused, in their words (not an empty list).
    res = shoal.docker_cli("ps", "--filter", "status=sleepy", check=False)
    engine = subprocess.run(["docker", "-H", "unix:///var/run/docker.sock", "ps", "--filter", "status=sleepy"],
                            capture_output=True, text=True, timeout=30)
    assert res.returncode != 0 and res.stderr == engine.stderr and "sleepy" in res.stderr, res.stderr
    res = shoal.docker_cli("ps", "--filter", "colour=blue", check=False)
    assert res.returncode != 0 and "invalid filter 'colour'" in res.stderr, res.stderr


def test_attach_over_a_websocket(shoal: ShoalProcess, swarm: docker.DockerClient) -> None:
    """``/containers/{id}/attach/ws``: the websocket upgrade passes through to the engine too (a raw
    socket client: the engine never answers a websocket close frame, so no library close is tried)."""
    c = swarm.containers.run("busybox:latest", ["sh", "-c", "while true; do echo tick; sleep 0.2; done"],
                             detach=True, name="shoal-ctr-ws")
    try:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(10)
            sock.connect(str(shoal.sock))
            sock.sendall((f"GET /v1.41/containers/{c.id}/attach/ws?stream=1&stdout=1 HTTP/1.1\r\n"
                          "Host: shoal\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
                          f"Sec-WebSocket-Key: {base64.b64encode(os.urandom(16)).decode()}\r\n"
                          "Sec-WebSocket-Version: 13\r\n\r\n").encode())
            got = b""
            while b"tick" not in got:
                chunk = sock.recv(4096)
                assert chunk, got
                got += chunk
        assert got.startswith(b"HTTP/1.1 101 ") and b"sec-websocket-accept" in got.lower()
    finally:
        c.remove(force=True)
