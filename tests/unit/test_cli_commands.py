"""The shoal CLI end to end against a small fake daemon (aiohttp on a unix socket, in a thread).

The fake keeps services, tasks and nodes in memory and records every request, so the tests check both
what the CLI sends and what it prints. Where the docker binary is installed, the same flags are also
sent by `docker service create` and the two bodies compared.
"""

from __future__ import annotations

import asyncio
import copy
import itertools
import json
import os
import re
import shutil
import struct
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from aiohttp import web
from typer.testing import CliRunner

from shoal.cli.main import app
from shoal.models import now_ts

SELF, OTHER = "node1aaaaaaaaaaaaaaaaaaaa1", "node2bbbbbbbbbbbbbbbbbbbb2"


class FakeDaemon:
    """Just enough of the swarm API for the CLI: every task starts running at once."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str, dict[str, str], Any]] = []
        self.services: dict[str, dict[str, Any]] = {}
        self.tasks: list[dict[str, Any]] = []
        self.ids = (f"{n:025d}" for n in itertools.count(1))
        self.swarm: dict[str, Any] = {
            "ID": "cluster1", "Version": {"Index": 1}, "Spec": {"Orchestration": {"TaskHistoryRetentionLimit": 5}},
            "JoinTokens": {"Worker": "SWMTKN-1-worker", "Manager": "SWMTKN-1-manager"},
        }
        self.nodes = [
            self._node(SELF, "alpha", "manager",
                       {"Leader": True, "Reachability": "reachable", "Addr": "10.0.0.1:2377"}),
            self._node(OTHER, "beta", "worker", None),
        ]

    @staticmethod
    def _node(node_id: str, host: str, role: str, manager: dict[str, Any] | None) -> dict[str, Any]:
        return {
            "ID": node_id, "Version": {"Index": 3}, "CreatedAt": now_ts(), "UpdatedAt": now_ts(),
            "Spec": {"Role": role, "Availability": "active", "Labels": {}},
            "Description": {"Hostname": host, "Platform": {"OS": "linux", "Architecture": "x86_64"},
                            "Resources": {"NanoCPUs": 2_000_000_000, "MemoryBytes": 1 << 30},
                            "Engine": {"EngineVersion": "20.10.24"}},
            "Status": {"State": "ready", "Addr": "10.0.0.1"},
            "ManagerStatus": manager,
        }

    # --- helpers

    def _service(self, ref: str) -> dict[str, Any]:
        for s in self.services.values():
            if ref in (s["ID"], s["Spec"].get("Name")) or s["ID"].startswith(ref):
                return s
        raise web.HTTPNotFound(text=json.dumps({"message": f"service {ref} not found"}),
                               content_type="application/json")

    def _spawn(self, svc: dict[str, Any]) -> None:
        """Make every slot run a task of the current spec; older tasks become history."""
        mode = svc["Spec"].get("Mode") or {}
        if "Global" in mode:
            want = [(0, n["ID"]) for n in self.nodes]
        else:
            replicas = (mode.get("Replicated") or {}).get("Replicas", 1)
            want = [(i, (SELF, OTHER)[i % 2]) for i in range(1, replicas + 1)]
        for t in self.tasks:
            if t["ServiceID"] == svc["ID"] and t["DesiredState"] == "running":
                stale = t["SpecVersion"] != svc["Version"]["Index"] or (t["Slot"], t["NodeID"]) not in want
                if stale:
                    t["DesiredState"] = "shutdown"
                    t["Status"] = {**t["Status"], "State": "shutdown", "Timestamp": now_ts()}
        have = {(t["Slot"], t["NodeID"]) for t in self.tasks
                if t["ServiceID"] == svc["ID"] and t["DesiredState"] == "running"}
        for slot, node in want:
            if (slot, node) in have:
                continue
            self.tasks.append({
                "ID": next(self.ids), "Version": {"Index": 1}, "CreatedAt": now_ts(), "UpdatedAt": now_ts(),
                "ServiceID": svc["ID"], "Slot": slot, "NodeID": node, "DesiredState": "running",
                "SpecVersion": svc["Version"]["Index"], "Spec": copy.deepcopy(svc["Spec"]["TaskTemplate"]),
                "Status": {"State": "running", "Message": "started", "Timestamp": now_ts(),
                           "PortStatus": {}},
            })

    # --- the API

    async def handle(self, req: web.Request) -> web.StreamResponse:
        path = re.sub(r"^/v[0-9.]+", "", req.path)
        raw = await req.read()
        body = json.loads(raw) if raw else None
        self.requests.append((req.method, path, dict(req.query), body))
        if path == "/_ping":
            return web.Response(text="OK", headers={"API-Version": "1.41", "OSType": "linux"})
        for method, pattern, fn in self.routes():
            m = re.fullmatch(pattern, path)
            if m and method == req.method:
                result = fn(req, body, *m.groups())
                if isinstance(result, web.StreamResponse):
                    return result
                return web.json_response(result) if result is not None else web.Response(status=200)
        return web.json_response({"message": f"page not found: {path}"}, status=404)

    def routes(self) -> list[tuple[str, str, Any]]:
        return [
            ("GET", "/info", lambda r, b: {"ServerVersion": "shoal-0.1.0", "Name": "alpha", "Swarm": {
                "NodeID": SELF, "LocalNodeState": "active", "ControlAvailable": True, "Nodes": 2, "Managers": 1,
                "Cluster": self.swarm, "RemoteManagers": [{"NodeID": SELF, "Addr": "10.0.0.1:2377"}]}}),
            ("GET", "/version", lambda r, b: {"Version": "0.1.0", "ApiVersion": "1.41", "MinAPIVersion": "1.24",
                                              "Os": "linux", "Arch": "amd64"}),
            ("GET", "/swarm", lambda r, b: self.swarm),
            ("POST", "/swarm/init", lambda r, b: SELF),
            ("POST", "/swarm/leave", lambda r, b: None),
            ("POST", "/swarm/update", self.swarm_update),
            ("GET", "/networks/([^/]+)", lambda r, b, name: {"Id": f"net-{name}", "Name": name}),
            ("GET", "/nodes", lambda r, b: self.nodes),
            ("GET", "/nodes/([^/]+)", lambda r, b, ref: self.node(ref)),
            ("POST", "/nodes/([^/]+)/update", self.node_update),
            ("DELETE", "/nodes/([^/]+)", lambda r, b, ref: self.node(ref) and None),
            ("POST", "/services/create", self.service_create),
            ("GET", "/services", self.service_list),
            ("GET", "/services/([^/]+)", lambda r, b, ref: self._service(ref)),
            ("POST", "/services/([^/]+)/update", self.service_update),
            ("DELETE", "/services/([^/]+)", self.service_delete),
            ("GET", "/services/([^/]+)/logs", self.logs),
            ("GET", "/tasks", self.task_list),
            ("GET", "/tasks/([^/]+)", self.task),
        ]

    def node(self, ref: str) -> dict[str, Any]:
        for n in self.nodes:
            if ref in (n["ID"], n["Description"]["Hostname"]):
                return n
        raise web.HTTPNotFound(text=json.dumps({"message": f"node {ref} not found"}), content_type="application/json")

    def node_update(self, req: web.Request, body: Any, ref: str) -> None:
        n = self.node(ref)
        if int(req.query["version"]) != n["Version"]["Index"]:
            raise web.HTTPConflict(text=json.dumps({"message": "update out of sequence"}),
                                   content_type="application/json")
        n["Spec"] = body
        n["Version"]["Index"] += 1

    def swarm_update(self, req: web.Request, body: Any) -> None:
        self.swarm["Spec"] = body
        self.swarm["Version"]["Index"] += 1
        if req.query.get("rotateWorkerToken") == "true":
            self.swarm["JoinTokens"]["Worker"] = "SWMTKN-1-rotated"

    def service_create(self, req: web.Request, body: Any) -> dict[str, Any]:
        svc = {"ID": next(self.ids), "Version": {"Index": 10}, "CreatedAt": now_ts(), "UpdatedAt": now_ts(),
               "Spec": body, "Endpoint": {"Ports": (body.get("EndpointSpec") or {}).get("Ports")}}
        self.services[svc["ID"]] = svc
        self._spawn(svc)
        return {"ID": svc["ID"], "Warnings": None}

    def service_update(self, req: web.Request, body: Any, ref: str) -> dict[str, Any]:
        svc = self._service(ref)
        if int(req.query["version"]) != svc["Version"]["Index"]:
            raise web.HTTPConflict(text=json.dumps({"message": "update out of sequence"}),
                                   content_type="application/json")
        template_changed = body["TaskTemplate"] != svc["Spec"]["TaskTemplate"]
        svc["Spec"] = body
        svc["Version"]["Index"] += 1
        if not template_changed:  # tasks keep running: make them match the new version
            for t in self.tasks:
                if t["ServiceID"] == svc["ID"]:
                    t["SpecVersion"] = svc["Version"]["Index"]
        self._spawn(svc)
        return {"Warnings": ["image busybox:2 could not be accessed on a registry"] if "busybox:2" in str(body)
                else None}

    def service_delete(self, req: web.Request, body: Any, ref: str) -> None:
        svc = self._service(ref)
        del self.services[svc["ID"]]

    def service_list(self, req: web.Request, body: Any) -> list[dict[str, Any]]:
        out = []
        for s in self.services.values():
            s = dict(s)
            running = [t for t in self.tasks if t["ServiceID"] == s["ID"] and t["Status"]["State"] == "running"]
            mode = s["Spec"].get("Mode") or {}
            desired = len(self.nodes) if "Global" in mode else (mode.get("Replicated") or {}).get("Replicas", 1)
            if req.query.get("status") == "true":
                s["ServiceStatus"] = {"RunningTasks": len(running), "DesiredTasks": desired, "CompletedTasks": 0}
            out.append(s)
        return out

    def task_list(self, req: web.Request, body: Any) -> list[dict[str, Any]]:
        filters = json.loads(req.query.get("filters", "{}"))
        tasks = self.tasks
        if "service" in filters:
            ids = {self._service(ref)["ID"] for ref in filters["service"]}
            tasks = [t for t in tasks if t["ServiceID"] in ids]
        if "desired-state" in filters:
            tasks = [t for t in tasks if t["DesiredState"] in filters["desired-state"]]
        return tasks

    def task(self, req: web.Request, body: Any, ref: str) -> dict[str, Any]:
        for t in self.tasks:
            if t["ID"] == ref:
                return t
        raise web.HTTPNotFound(text=json.dumps({"message": f"task {ref} not found"}), content_type="application/json")

    def logs(self, req: web.Request, body: Any, ref: str) -> web.Response:
        svc = self._service(ref)
        frames = b""
        for t in self.tasks:
            if t["ServiceID"] != svc["ID"] or t["DesiredState"] != "running":
                continue
            details = (f"com.docker.swarm.node.id={t['NodeID']},com.docker.swarm.service.id={svc['ID']},"
                       f"com.docker.swarm.task.id={t['ID']}")
            line = f"hello from slot {t['Slot']}\n"
            ts = "2024-05-01T10:00:00.000000001Z " if req.query.get("timestamps") == "true" else ""
            payload = f"{ts}{details} {line}".encode()
            frames += struct.pack(">BxxxL", 1, len(payload)) + payload
        return web.Response(body=frames, content_type="application/vnd.docker.raw-stream")


@pytest.fixture
def fake() -> Iterator[tuple[FakeDaemon, str]]:
    """A FakeDaemon serving on a short unix socket path (sun_path is limited to 108 bytes)."""
    fd = FakeDaemon()
    tmp = tempfile.mkdtemp(prefix="shoal-cli-")
    sock = os.path.join(tmp, "d.sock")
    app_ = web.Application()
    app_.router.add_route("*", "/{tail:.*}", fd.handle)
    runner = web.AppRunner(app_)
    loop = asyncio.new_event_loop()
    started = threading.Event()

    def serve() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(runner.setup())
        loop.run_until_complete(web.UnixSite(runner, sock).start())
        started.set()
        loop.run_forever()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    assert started.wait(10)
    try:
        yield fd, f"unix://{sock}"
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
        shutil.rmtree(tmp, ignore_errors=True)


def run(host: str, *args: str) -> Any:
    return CliRunner().invoke(app, ["-H", host, *args], env={"SHOAL_HOST": None, "DOCKER_HOST": None})


def created_bodies(fd: FakeDaemon) -> list[Any]:
    return [b for m, p, _, b in fd.requests if (m, p) == ("POST", "/services/create")]


# --------------------------------------------------------------------------- errors


def test_unreachable_daemon_is_one_line_exit_1() -> None:
    result = CliRunner().invoke(app, ["-H", "unix:///nonexistent/shoal.sock", "service", "ls"])
    assert result.exit_code == 1
    assert result.stderr == (
        "Cannot connect to the Shoal daemon at unix:///nonexistent/shoal.sock. Is the daemon running?\n"
    )
    assert "Traceback" not in result.output


def test_host_comes_from_the_environment() -> None:
    result = CliRunner().invoke(app, ["node", "ls"], env={"SHOAL_HOST": "tcp://127.0.0.1:9", "DOCKER_HOST": None})
    assert result.exit_code == 1
    assert result.stderr.strip() == "Cannot connect to the Shoal daemon at tcp://127.0.0.1:9. Is the daemon running?"


@pytest.mark.parametrize(
    "args",
    [
        ["service", "create", "--replicas", "-1", "busybox"],
        ["service", "create", "--restart-delay", "10", "busybox"],
        ["service", "create", "--limit-memory", "lots", "busybox"],
        ["service", "create", "-p", "target=80,mode=bridge", "busybox"],
        ["service", "create", "--mode", "global", "--replicas", "2", "busybox"],
        ["service", "scale", "web"],
        ["service", "create"],
        ["service", "frobnicate"],
    ],
)
def test_bad_flags_are_one_line_exit_2(args: list[str]) -> None:
    # The host does not exist: a usage error must be reported before any request is made.
    result = CliRunner().invoke(app, ["-H", "unix:///nonexistent/shoal.sock", *args])
    assert result.exit_code == 2, result.output
    assert len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.output
    assert result.stdout == ""


def test_daemon_error_is_one_line(fake: tuple[FakeDaemon, str]) -> None:
    _, host = fake
    result = run(host, "service", "inspect", "nosuch")
    assert result.exit_code == 1
    assert result.stderr == "Error response from daemon: service nosuch not found\n"


# --------------------------------------------------------------------------- services


def test_create_waits_and_prints_id(fake: tuple[FakeDaemon, str]) -> None:
    fd, host = fake
    result = run(host, "service", "create", "--name", "demo", "--replicas", "3", "-p", "8080:80",
                 "busybox:latest", "httpd", "-f", "-p", "80", "-h", "/var/www")
    assert result.exit_code == 0, result.output
    (svc,) = fd.services.values()
    assert result.stdout.strip().splitlines()[-1] == svc["ID"]
    (body,) = created_bodies(fd)
    assert body["TaskTemplate"]["ContainerSpec"]["Args"] == ["httpd", "-f", "-p", "80", "-h", "/var/www"]
    assert body["EndpointSpec"]["Ports"][0]["PublishedPort"] == 8080
    # it waited: it listed the service's running tasks at least once
    assert any(p == "/tasks" for _, p, _, _ in fd.requests)


def test_create_detach_does_not_poll(fake: tuple[FakeDaemon, str]) -> None:
    fd, host = fake
    result = run(host, "service", "create", "-d", "--network", "backend", "busybox")
    assert result.exit_code == 0, result.output
    assert not any(p == "/tasks" for _, p, _, _ in fd.requests)
    (body,) = created_bodies(fd)
    assert body["TaskTemplate"]["Networks"] == [{"Target": "net-backend"}]


DOCKER_CASES = [
    ["--name", "demo", "--replicas", "3", "-p", "8080:80", "busybox:latest", "httpd", "-f", "-p", "80"],
    ["--name", "web", "-e", "A=1", "-e", "B=2", "-e", "A=3", "-l", "tier=front", "-l", "x", "--container-label",
     "c=1", "--constraint", "node.role==worker", "--limit-cpu", "0.5", "--limit-memory", "512M", "--reserve-cpu",
     "0.25", "--reserve-memory", "64m", "--restart-condition", "on-failure", "--restart-max-attempts", "3",
     "--restart-window", "1m", "--mount", "type=bind,src=/a,dst=/b", "--workdir", "/w", "--user", "nobody",
     "--hostname", "h", "--host", "db:10.0.0.2", "--stop-grace-period", "3s", "--update-parallelism", "2",
     "--update-delay", "10s", "--update-order", "start-first", "-p", "published=53,target=53,protocol=udp,mode=host",
     "nginx"],
    ["--mode", "global", "--entrypoint", "sh -c", "busybox", "echo hi"],
    ["--mode", "replicated-job", "--replicas", "4", "busybox"],
    ["--health-cmd", "true", "--health-interval", "2s", "--rollback-parallelism", "3", "--endpoint-mode", "dnsrr",
     "--placement-pref", "spread=node.labels.zone", "--replicas-max-per-node", "2", "--limit-pids", "10",
     "--network", "name=backend,alias=db", "--init", "--tty", "--read-only", "--log-driver", "json-file",
     "--log-opt", "max-size=1m", "--group", "wheel", "busybox"],
    ["-p", "8080-8081:80-81", "-p", "70", "localhost:5000/foo/bar"],
]


def _normalize(body: dict[str, Any]) -> dict[str, Any]:
    """Drop what differs only by Go's omitempty (an empty port name, port 0, ForceUpdate 0), and sort
    ports: docker lists a port range in Go map order, which is random."""
    body = copy.deepcopy(body)
    body["TaskTemplate"].pop("ForceUpdate", None)
    endpoint = body.get("EndpointSpec") or {}
    for p in endpoint.get("Ports") or []:
        for key in ("Name", "PublishedPort"):
            if not p.get(key, 1):
                del p[key]
    if endpoint.get("Ports"):
        endpoint["Ports"].sort(key=lambda p: (p["TargetPort"], p["Protocol"]))
    return body


@pytest.mark.skipif(shutil.which("docker") is None, reason="the docker CLI is not installed")
@pytest.mark.parametrize("flags", DOCKER_CASES)
def test_create_sends_what_docker_cli_sends(fake: tuple[FakeDaemon, str], flags: list[str]) -> None:
    fd, host = fake
    docker = subprocess.run(
        ["docker", "-H", host, "service", "create", "-d", "--no-resolve-image", *flags],
        capture_output=True, text=True, timeout=60,
        env={**os.environ, "DOCKER_API_VERSION": "1.41", "DOCKER_CONFIG": tempfile.gettempdir() + "/shoal-nocfg"},
    )
    assert docker.returncode == 0, docker.stderr
    result = run(host, "service", "create", "-d", *flags)
    assert result.exit_code == 0, result.output
    theirs, ours = created_bodies(fd)
    assert _normalize(ours) == _normalize(theirs)


def test_ls_table(fake: tuple[FakeDaemon, str]) -> None:
    fd, host = fake
    created = run(host, "service", "create", "-d", "--name", "web", "--replicas", "2", "-p", "8080:80", "busybox")
    assert created.exit_code == 0
    assert run(host, "service", "create", "-d", "--name", "agent", "--mode", "global", "busybox").exit_code == 0
    result = run(host, "service", "ls")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["ID", "NAME", "MODE", "REPLICAS", "IMAGE", "PORTS"]
    agent, web_ = (line.split() for line in lines[1:])
    assert agent[1:] == ["agent", "global", "2/2", "busybox:latest"]
    assert web_[1:] == ["web", "replicated", "2/2", "busybox:latest", "*:8080->80/tcp"]
    ids = run(host, "service", "ls", "-q").stdout.split()
    assert sorted(ids) == sorted(fd.services)


def test_ps_names_slots_nodes_and_history(fake: tuple[FakeDaemon, str]) -> None:
    _, host = fake
    assert run(host, "service", "create", "-d", "--name", "web", "--replicas", "2", "busybox:1").exit_code == 0
    assert run(host, "service", "update", "-d", "--image", "busybox:2", "web").exit_code == 0
    result = run(host, "service", "ps", "web")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert re.split(r"\s{2,}", lines[0].strip()) == [
        "ID", "NAME", "IMAGE", "NODE", "DESIRED STATE", "CURRENT STATE", "ERROR", "PORTS"]
    rows = [re.split(r"\s{2,}", line.strip()) for line in lines[1:]]
    assert [r[1:5] for r in rows] == [
        ["web.1", "busybox:2", "beta", "Running"],
        ["\\_ web.1", "busybox:1", "beta", "Shutdown"],
        ["web.2", "busybox:2", "alpha", "Running"],
        ["\\_ web.2", "busybox:1", "alpha", "Shutdown"],
    ]
    assert rows[0][5].startswith("Running ") and rows[0][5].endswith(" ago")
    assert run(host, "service", "ps", "--no-trunc", "web").stdout.count(".1.") == 2


def test_inspect_json_and_pretty(fake: tuple[FakeDaemon, str]) -> None:
    _, host = fake
    run(host, "service", "create", "-d", "--name", "web", "--limit-memory", "512M", "-p", "8080:80", "busybox")
    result = run(host, "service", "inspect", "web")
    assert result.exit_code == 0
    (svc,) = json.loads(result.stdout)
    assert svc["Spec"]["Name"] == "web"
    pretty = run(host, "service", "inspect", "--pretty", "web").stdout
    assert "Name:" in pretty and "web" in pretty
    assert "Memory:" in pretty and "512MiB" in pretty
    assert "PublishedPort = 8080" in pretty


def test_scale_and_update(fake: tuple[FakeDaemon, str]) -> None:
    fd, host = fake
    run(host, "service", "create", "-d", "--name", "web", "busybox:1")
    run(host, "service", "create", "-d", "--name", "agent", "--mode", "global", "busybox")
    result = run(host, "service", "scale", "web=4", "agent=2")
    assert result.exit_code == 1
    assert "web scaled to 4" in result.stdout
    assert "agent: scale can only be used with replicated or replicated-job mode" in result.stderr
    web_ = fd._service("web")
    assert web_["Spec"]["Mode"]["Replicated"]["Replicas"] == 4
    running = [t for t in fd.tasks if t["ServiceID"] == web_["ID"] and t["DesiredState"] == "running"]
    assert len(running) == 4

    result = run(host, "service", "update", "--image", "busybox:2", "--env-add", "A=1", "--force", "web")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[0] == "web"
    assert "could not be accessed" in result.stderr  # the daemon's warnings are shown
    (_, _, query, body) = [r for r in fd.requests if r[1].endswith("/update")][-1]
    assert query["version"] == "11"
    c = body["TaskTemplate"]["ContainerSpec"]
    assert (c["Image"], c["Env"], body["TaskTemplate"]["ForceUpdate"]) == ("busybox:2", ["A=1"], 1)

    result = run(host, "service", "update", "--replicas", "-2", "web")
    assert result.exit_code == 2


def test_rm_reports_each(fake: tuple[FakeDaemon, str]) -> None:
    fd, host = fake
    run(host, "service", "create", "-d", "--name", "web", "busybox")
    result = run(host, "service", "rm", "web", "ghost")
    assert result.exit_code == 1
    assert result.stdout == "web\n"
    assert result.stderr == "Error response from daemon: service ghost not found\n"
    assert fd.services == {}


def test_logs_prefix_like_docker(fake: tuple[FakeDaemon, str]) -> None:
    fd, host = fake
    run(host, "service", "create", "-d", "--name", "web", "--replicas", "2", "busybox")
    result = run(host, "service", "logs", "web")
    assert result.exit_code == 0, result.output
    tasks = {t["Slot"]: t["ID"] for t in fd.tasks}
    assert result.stdout.splitlines() == [
        f"web.1.{tasks[1][:12]}@beta    | hello from slot 1",
        f"web.2.{tasks[2][:12]}@alpha    | hello from slot 2",
    ]
    stamped = run(host, "service", "logs", "-t", "--no-task-ids", "web").stdout.splitlines()
    assert stamped[0] == "2024-05-01T10:00:00.000000001Z web.1@beta    | hello from slot 1"
    (_, _, query, _) = [r for r in fd.requests if r[1].endswith("/logs")][-1]
    assert query["details"] == "true" and query["timestamps"] == "true"


# --------------------------------------------------------------------------- nodes, swarm, info


def test_node_ls_marks_self(fake: tuple[FakeDaemon, str]) -> None:
    _, host = fake
    result = run(host, "node", "ls")
    assert result.exit_code == 0, result.output
    lines = [re.split(r"\s{2,}", line.strip()) for line in result.stdout.splitlines()]
    assert lines[0] == ["ID", "HOSTNAME", "STATUS", "AVAILABILITY", "MANAGER STATUS", "ENGINE VERSION"]
    assert lines[1] == [f"{SELF} *", "alpha", "Ready", "Active", "Leader", "20.10.24"]
    assert lines[2] == [OTHER, "beta", "Ready", "Active", "20.10.24"]


def test_node_inspect_update_rm(fake: tuple[FakeDaemon, str]) -> None:
    fd, host = fake
    (node,) = json.loads(run(host, "node", "inspect", "self").stdout)
    assert node["ID"] == SELF
    assert "Hostname:" in run(host, "node", "inspect", "--pretty", "beta").stdout
    result = run(host, "node", "update", "--availability", "drain", "--label-add", "zone=a", "beta")
    assert result.exit_code == 0, result.output
    assert fd.node("beta")["Spec"] == {"Role": "worker", "Availability": "drain", "Labels": {"zone": "a"}}
    result = run(host, "node", "update", "--label-rm", "nope", "beta")
    assert result.exit_code == 2
    assert run(host, "node", "update", "--availability", "sleepy", "beta").exit_code == 2
    result = run(host, "node", "rm", "--force", "beta")
    assert (result.exit_code, result.stdout) == (0, "beta\n")
    assert fd.requests[-1][2] == {"force": "true"}


def test_swarm_commands(fake: tuple[FakeDaemon, str]) -> None:
    fd, host = fake
    result = run(host, "swarm", "init", "--advertise-addr", "10.0.0.1")
    assert result.exit_code == 0, result.output
    assert f"Swarm initialized: current node ({SELF}) is now a manager." in result.stdout
    assert "shoal swarm join --token SWMTKN-1-worker 10.0.0.1:2377" in result.stdout
    init_body = next(b for _, p, _, b in fd.requests if p == "/swarm/init")
    assert init_body["AdvertiseAddr"] == "10.0.0.1" and init_body["ListenAddr"] == "0.0.0.0:2377"

    assert run(host, "swarm", "join-token", "-q", "manager").stdout == "SWMTKN-1-manager\n"
    result = run(host, "swarm", "join-token", "--rotate", "-q", "worker")
    assert result.stdout == "SWMTKN-1-rotated\n"
    assert run(host, "swarm", "join-token", "admin").exit_code == 2

    assert run(host, "swarm", "update", "--task-history-limit", "2").stdout == "Swarm updated.\n"
    assert fd.swarm["Spec"]["Orchestration"]["TaskHistoryRetentionLimit"] == 2
    (swarm,) = json.loads(run(host, "swarm", "inspect").stdout)
    assert swarm["ID"] == "cluster1"
    assert run(host, "swarm", "leave", "--force").stdout == "Node left the swarm.\n"
    assert fd.requests[-1][2] == {"force": "true"}


def test_info_and_version(fake: tuple[FakeDaemon, str]) -> None:
    _, host = fake
    info = run(host, "info")
    assert info.exit_code == 0, info.output
    assert f"NodeID: {SELF}" in info.stdout and "Is Manager: true" in info.stdout
    version = run(host, "version")
    assert version.exit_code == 0
    assert "API version: 1.41 (minimum version 1.24)" in " ".join(version.stdout.split())
