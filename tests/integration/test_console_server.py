"""The web console's server side against a real daemon and engine (no browser: the UI's tests drive
one): the aggregate routes' shapes and figures, the change stream, the login (token → cookie, the
CSRF header), the Compose deploy with its errors' lines, and ``shoal console --url``'s local proxy."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest
import requests
from docker.types import ServiceMode

from tests.integration.conftest import free_port, leave_and_stop, wait_for
from tests.integration.shoal_process import ShoalProcess
from tests.integration.transport_env import listen_addr

pytestmark = pytest.mark.integration

SHOAL = str(Path(sys.executable).with_name("shoal"))



@pytest.fixture(scope="module")
def cs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ShoalProcess, docker.DockerClient]]:
    """One daemon for the module in a one-node swarm, with a service that runs (cs-web, 2 replicas)
    and one that cannot be placed (cs-stuck: a constraint no node meets)."""
    proc = ShoalProcess(tmp_path_factory.mktemp("console"), args=("-H", f"tcp://127.0.0.1:{free_port()}", "--tls"))
    proc.start()
    client = proc.client()
    try:
        client.swarm.init(advertise_addr="127.0.0.1", listen_addr=listen_addr())
        client.services.create("busybox:latest", ["sleep", "600"], name="cs-web", mode=ServiceMode("replicated", 2))
        client.services.create("busybox:latest", ["sleep", "600"], name="cs-stuck",
                               constraints=["node.labels.cs-nowhere==1"])
        wait_for(lambda: _get(proc, "/shoal/console/services").json()[1]["Running"] == 2, timeout=60)
        yield proc, client
    finally:
        leave_and_stop(proc)


def _api(proc: ShoalProcess) -> Any:
    return proc.client().api


def _get(proc: ShoalProcess, path: str, **kw: Any) -> requests.Response:
    api = _api(proc)
    url = api.base_url + path if path.startswith("/console/") else api._url(path)  # a page: no version prefix
    return api._get(url, **kw)  # type: ignore[no-any-return]


def _post(proc: ShoalProcess, path: str, **kw: Any) -> requests.Response:
    api = _api(proc)
    return api._post(api._url(path), **kw)  # type: ignore[no-any-return]


# ---------------------------------------------------------------------------- aggregates


def test_cs_overview_services_and_visualizer(cs: tuple[ShoalProcess, docker.DockerClient]) -> None:
    proc, client = cs
    ov = _get(proc, "/shoal/console/overview").json()
    assert ov["Nodes"]["ready"] == 1 and ov["Nodes"]["managers"] == 1 and ov["Nodes"]["active"] == 1
    assert ov["Services"]["total"] == 2 and ov["Services"]["converged"] == 1
    assert [s["Name"] for s in ov["Services"]["not_converged"]] == ["cs-stuck"]
    assert ov["Services"]["not_converged"][0]["Running"] == 0 and ov["Services"]["not_converged"][0]["Desired"] == 1
    assert ov["Tasks"]["running"] == 2 and ov["Tasks"]["pending"] == 1 and ov["Tasks"]["total"] == 3
    assert ov["Resources"]["NanoCPUs"] > 0 and ov["Resources"]["MemoryBytes"] > 0
    created = [e for e in ov["Events"] if e["Type"] == "service" and e["Action"] == "create"]
    assert {e["Actor"]["Attributes"]["name"] for e in created} == {"cs-web", "cs-stuck"}
    assert ov["Events"] == sorted(ov["Events"], key=lambda e: e["timeNano"])  # newest last

    rows = {r["Name"]: r for r in _get(proc, "/shoal/console/services").json()}
    web = rows["cs-web"]
    assert (web["Mode"], web["Image"], web["Running"], web["Desired"], web["Pending"]) == (
        "replicated", "busybox:latest", 2, 2, 0)
    assert web["ID"] == client.services.get("cs-web").id and web["Stack"] == "" and web["Ports"] == []
    assert rows["cs-stuck"]["Pending"] == 1 and rows["cs-stuck"]["Running"] == 0

    vis = _get(proc, "/shoal/console/visualizer").json()
    (node,) = vis["Nodes"]
    assert node["State"] == "ready" and node["Role"] == "manager" and node["TaskCount"] == 2
    assert sorted(t[0] for t in node["Tasks"]) == ["cs-web", "cs-web"] and not vis["Truncated"]
    assert {t[1] for t in node["Tasks"]} == {"running"}
    one = _get(proc, "/shoal/console/visualizer?per_node=1").json()
    assert one["Truncated"] and len(one["Nodes"][0]["Tasks"]) == 1 and one["Nodes"][0]["TaskCount"] == 2
    bad = _get(proc, "/shoal/console/visualizer?per_node=lots")
    assert bad.status_code == 400 and "per_node" in bad.json()["message"]


# ---------------------------------------------------------------------------- stream


class SSE:
    """A console stream read on a thread: (arrival time, event, data) in a queue."""

    def __init__(self, resp: requests.Response) -> None:
        self.resp = resp
        self.events: queue.Queue[tuple[float, str, dict[str, Any]]] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        buf = ""
        try:
            for chunk in self.resp.iter_content(chunk_size=None):
                buf += chunk.decode()
                while "\n\n" in buf:
                    block, buf = buf.split("\n\n", 1)
                    fields = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
                    if "event" in fields:
                        self.events.put((time.monotonic(), fields["event"], json.loads(fields.get("data", "{}"))))
        except Exception:  # the test hung up (see close): the reader just ends
            pass

    def close(self) -> None:
        """Hang up at once: requests' close() would first read the stream to its end (the next ping)."""
        sock = getattr(getattr(self.resp.raw, "_connection", None), "sock", None)
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        self.resp.close()

    def wait(self, pred: Any, timeout: float) -> tuple[float, str, dict[str, Any]]:
        deadline = time.monotonic() + timeout
        seen: list[tuple[str, dict[str, Any]]] = []
        while True:
            try:
                item = self.events.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no such event within {timeout} s; seen: {seen}") from None
            if pred(item[1], item[2]):
                return item
            seen.append(item[1:])


def test_cs_stream_delivers_a_scale_within_a_second(cs: tuple[ShoalProcess, docker.DockerClient]) -> None:
    proc, client = cs
    resp = _get(proc, "/shoal/console/stream", stream=True)
    assert resp.status_code == 200 and resp.headers["Content-Type"].startswith("text/event-stream")
    sse = SSE(resp)
    try:
        sse.wait(lambda ev, _: ev == "hello", 5)
        svc = client.services.get("cs-web")
        t0 = time.monotonic()
        svc.scale(3)  # what `service scale` sends: an update of the replicas
        at, _, data = sse.wait(lambda ev, d: ev == "change" and svc.id in d["ids"].get("service", []), 5)
        assert at - t0 < 1.0, f"the change came {at - t0:.2f} s after the scale"
        assert "service" in data["kinds"]
        # The new task comes as a task change: in the same batch (the orchestrator, the scheduler and
        # the agent can all write within the 250 ms), or in a later one.
        if "task" not in data["kinds"]:
            sse.wait(lambda ev, d: ev == "change" and "task" in d["kinds"], 5)
    finally:
        sse.close()
        client.services.get("cs-web").scale(2)


# ---------------------------------------------------------------------------- login


def test_cs_login_token_cookie_and_csrf_header(cs: tuple[ShoalProcess, docker.DockerClient]) -> None:
    proc, _ = cs
    minted = _post(proc, "/shoal/console/tokens").json()
    assert minted["Path"] == f"/console/login?token={minted['Token']}"
    login = _get(proc, minted["Path"], allow_redirects=False)
    assert login.status_code == 303 and login.headers["Location"] == "/console/"
    set_cookie = login.headers["Set-Cookie"]
    assert "HttpOnly" in set_cookie and "SameSite=Strict" in set_cookie and "Secure" not in set_cookie  # no TLS
    cookie = login.cookies["shoal_console"]
    jar = {"Cookie": f"shoal_console={cookie}"}
    assert _get(proc, "/shoal/console/overview", headers=jar).status_code == 200
    again = _get(proc, minted["Path"], allow_redirects=False)
    assert again.status_code == 401  # single use
    # A write with the cookie alone is refused; with the console's header it runs, audited as the console's.
    refused = _deploy(proc, VOTE, "name=cs-csrf&dryRun=1", headers=jar)
    assert refused.status_code == 403 and "X-Shoal-Console" in refused.json()["message"]
    ok = _deploy(proc, VOTE, "name=cs-csrf&dryRun=1", headers={**jar, "X-Shoal-Console": "1"})
    assert ok.status_code == 200 and ok.json()["DryRun"]
    audit = [json.loads(line) for line in (proc.data / "audit.log").read_text().splitlines()]
    mine = [e for e in audit if e["path"].endswith("/shoal/console/deploy") and e["via"] == "console"]
    assert [e["status"] for e in mine[-2:]] == [403, 200] and mine[-1]["user"] == "local"
    # A session makes no new credentials: a login token comes from the CLI's own.
    assert _post(proc, "/shoal/console/tokens", headers={**jar, "X-Shoal-Console": "1"}).status_code == 403
    stale = _get(proc, "/shoal/console/overview", headers={"Cookie": "shoal_console=abc.def"})
    assert stale.status_code == 401 and "shoal console --url" in stale.json()["message"]


# ---------------------------------------------------------------------------- deploy

VOTE = """\
services:
  redis:
    image: busybox:latest
    command: sleep 600
  worker:
    image: busybox:latest
    command: sleep 600
    deploy:
      replicas: 2
"""


def _deploy(proc: ShoalProcess, text: str, query: str, headers: dict[str, str] | None = None) -> requests.Response:
    return _post(proc, f"/shoal/console/deploy?{query}", data=text.encode(),
                 headers={"Content-Type": "application/yaml", **(headers or {})})


def test_cs_deploy_dry_run_then_for_real_and_errors_at_their_line(cs: tuple[ShoalProcess, docker.DockerClient]) -> None:
    proc, client = cs
    dry = _deploy(proc, VOTE, "name=cs-vote&dryRun=1")
    assert dry.status_code == 200, dry.text
    body = dry.json()
    assert body["DryRun"] and {(c["Name"], c["Action"]) for c in body["Changes"] if c["Kind"] == "service"} == {
        ("cs-vote_redis", "create"), ("cs-vote_worker", "create")}
    assert [p["Node"] for p in body["Plans"]["cs-vote_worker"]] == [client.info()["Name"]] * 2
    assert not client.services.list(filters={"name": "cs-vote_"})  # a dry run writes nothing

    unknown = _deploy(proc, VOTE.replace("    command: sleep 600\n  worker", "    comand: sleep 600\n  worker"),
                      "name=cs-vote&dryRun=1")
    assert unknown.status_code == 400 and unknown.json()["line"] == 4 and unknown.json()["column"] == 5
    assert "comand" in unknown.json()["message"]
    syntax = _deploy(proc, VOTE.replace("replicas: 2", "replicas: [2"), "name=cs-vote&dryRun=1")
    assert syntax.status_code == 400 and "YAML" in syntax.json()["message"] and syntax.json()["line"] >= 9
    outside = _deploy(proc, VOTE + "    env_file: /etc/passwd\n", "name=cs-vote&dryRun=1")
    assert outside.status_code == 400 and "/etc/passwd cannot be read" in outside.json()["message"]
    assert outside.json()["line"] == 10 and "allow-outside-files" not in outside.json()["message"]
    assert _deploy(proc, VOTE, "name=-bad&dryRun=1").status_code == 400
    assert _deploy(proc, "", "name=cs-vote&dryRun=1").status_code == 400
    assert not client.services.list(filters={"name": "cs-vote_"})

    real = _deploy(proc, VOTE, "name=cs-vote")
    assert real.status_code == 200 and not real.json()["DryRun"]
    try:
        names = {s.name for s in client.services.list(filters={"label": "com.docker.stack.namespace=cs-vote"})}
        assert names == {"cs-vote_redis", "cs-vote_worker"}
        rows = {r["Name"]: r for r in _get(proc, "/shoal/console/services").json()}
        assert rows["cs-vote_worker"]["Stack"] == "cs-vote" and rows["cs-vote_worker"]["Desired"] == 2
    finally:
        _api(proc)._delete(_api(proc)._url("/shoal/stacks/cs-vote"))


# ---------------------------------------------------------------------------- shoal console


def test_cs_shoal_console_url_proxies_and_streams(cs: tuple[ShoalProcess, docker.DockerClient]) -> None:
    proc, client = cs
    local = subprocess.Popen([SHOAL, "-H", proc.host, "console", "--url"], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env={**os.environ, "SHOAL_TOKEN": ""})
    try:
        assert local.stdout is not None
        url = local.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:") and "/console/login?token=" in url, url
        base = url.split("/console/", 1)[0]
        assert requests.get(base + "/shoal/console/overview", timeout=10).status_code == 401  # no cookie
        browser = requests.Session()
        login = browser.get(url, allow_redirects=False, timeout=10)
        assert login.status_code == 303
        assert browser.get(url, allow_redirects=False, timeout=10).status_code == 401  # one-time
        ov = browser.get(base + "/shoal/console/overview", timeout=10)
        assert ov.status_code == 200 and ov.json()["Services"]["total"] >= 2
        assert browser.get(base + "/v1.41/services", timeout=10).json()[0]["ID"]
        refused = browser.post(base + "/shoal/console/tokens", timeout=10)
        assert refused.status_code == 403
        # Streams pass through as they come: the stream's first events, then a change of a scale.
        resp = browser.get(base + "/shoal/console/stream", stream=True, timeout=10)
        sse = SSE(resp)
        try:
            sse.wait(lambda ev, _: ev == "hello", 5)
            svc = client.services.get("cs-web")
            t0 = time.monotonic()
            svc.scale(1)
            at, _, _ = sse.wait(lambda ev, d: ev == "change" and svc.id in d["ids"].get("service", []), 5)
            assert at - t0 < 1.5
        finally:
            sse.close()
            client.services.get("cs-web").scale(2)
    finally:
        local.send_signal(signal.SIGTERM)
        assert local.wait(timeout=10) == 0


def test_cs_shoal_console_errors_are_one_line(cs: tuple[ShoalProcess, docker.DockerClient], tmp_path: Path) -> None:
    proc, _ = cs
    gone = subprocess.run([SHOAL, "-H", f"unix://{tmp_path}/nothing.sock", "console", "--url"], capture_output=True,
                          text=True, timeout=30)
    assert gone.returncode == 1 and gone.stdout == ""
    assert gone.stderr.strip().splitlines() == [f"Cannot connect to the Shoal daemon at unix://{tmp_path}/nothing.sock."
                                                " Is the daemon running?"]
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        busy = subprocess.run([SHOAL, "-H", proc.host, "console", "--url", "--port", str(port)], capture_output=True,
                              text=True, timeout=30)
    assert busy.returncode == 1 and len(busy.stderr.strip().splitlines()) == 1
    assert f"port {port} on 127.0.0.1 is taken" in busy.stderr


@pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")  # --tls: the daemon's own cert
def test_cs_a_token_user_over_tls_on_the_manager_and_through_shoal_console(
        cs: tuple[ShoalProcess, docker.DockerClient]) -> None:
    """A user with an API token, over the daemon's --tls TCP listener: the manager's own login sets a
    Secure cookie, and `shoal console` proxies over TLS with the token (its identity, not an admin's)."""
    proc, _ = cs
    tcp = proc.args[1].replace("tcp://", "https://")
    assert _post(proc, "/shoal/users", json={"Name": "cs-olga", "Role": "viewer"}).status_code == 201
    token = _post(proc, "/shoal/users/cs-olga/tokens").json()["Token"]
    auth = {"Authorization": f"Bearer {token}"}
    minted = requests.post(tcp + "/shoal/console/tokens", headers=auth, verify=False, timeout=10).json()
    login = requests.get(tcp + minted["Path"], allow_redirects=False, verify=False, timeout=10)
    assert login.status_code == 303 and "Secure" in login.headers["Set-Cookie"]
    me = requests.get(tcp + "/shoal/whoami", cookies={"shoal_console": login.cookies["shoal_console"]},
                      verify=False, timeout=10).json()
    assert (me["Name"], me["Role"], me["Via"]) == ("cs-olga", "viewer", "console")

    local = subprocess.Popen([SHOAL, "-H", proc.args[1], "--tls", "console", "--url"], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env={**os.environ, "SHOAL_TOKEN": token})
    try:
        assert local.stdout is not None
        url = local.stdout.readline().strip()
        base = url.split("/console/", 1)[0]
        browser = requests.Session()
        assert browser.get(url, allow_redirects=False, timeout=10).status_code == 303
        me = browser.get(base + "/shoal/whoami", timeout=10).json()
        assert (me["Name"], me["Role"], me["Via"]) == ("cs-olga", "viewer", "token")
        refused = browser.post(base + "/shoal/console/deploy?name=cs-no", data=VOTE, timeout=10,
                               headers={"X-Shoal-Console": "1"})
        assert refused.status_code == 403  # the daemon's rule for a viewer, passed through
    finally:
        local.send_signal(signal.SIGTERM)
        assert local.wait(timeout=10) == 0
