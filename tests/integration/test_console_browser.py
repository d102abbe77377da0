"""The web console in a real headless Chromium against a real daemon and engine: one daemon (plain
TCP, anonymous admin: --insecure-tcp, so no login step) and one browser for the module.

What a user does: open the overview (its numbers are the API's), deploy a stack by pasting a Compose
file (preview, confirm, converge), scale a service and watch the replicas follow without a reload,
force an update and an image update and watch them finish, read a service's logs, and see a broken
Compose file's error at its line. Screenshots go to docs/img/ for the README.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest
import requests

from tests.browser import js_errors, make_driver, wait_until
from tests.integration.conftest import wait_for
from tests.integration.shoal_process import ShoalProcess
from tests.integration.transport_env import listen_addr

pytestmark = pytest.mark.integration

IMG = Path(__file__).resolve().parents[2] / "docs" / "img"
STACK = "cuvote"
# The voting app's shape with busybox stand-ins (its images are not on this offline machine).
COMPOSE = """\
services:
  vote:
    image: busybox:latest
    command: ["sh", "-c", "echo vote up; while true; do echo cu-vote-line; sleep 1; done"]
    stop_grace_period: 1s
    deploy:
      replicas: 2
  worker:
    image: busybox:latest
    command: ["sleep", "3600"]
    stop_grace_period: 1s
    deploy:
      update_config:
        monitor: 1s
"""
BROKEN = """\
services:
  vote:
    image: busybox:latest
    deploy:
      replicas: lots
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Console:
    def __init__(self, proc: ShoalProcess, port: int, driver: Any) -> None:
        self.proc, self.port, self.driver = proc, port, driver
        self.base = f"http://127.0.0.1:{port}"
        self.client = docker.DockerClient(base_url=f"tcp://127.0.0.1:{port}", version="1.41", timeout=60)

    def api(self, path: str, **params: Any) -> Any:
        resp = requests.get(self.base + path, params=params, timeout=10)
        resp.raise_for_status()
        return resp.json()

    def open(self, route: str) -> None:
        self.driver.get(f"{self.base}/console/#/{route}")
        self.wait_view(route.split("/")[0].rstrip("s") if "/" in route else route)

    def wait_view(self, name: str) -> None:
        wait_until(self.driver, lambda d: d.execute_script(
            "const v = document.querySelector('section.view'); return v && v.dataset.view;") in (name, name + "s"),
            what=f"view {name}")

    def css(self, selector: str) -> Any:
        return self.driver.find_element("css selector", selector)

    def text(self, selector: str) -> str:
        # innerText read in the page, not through a WebElement: live refreshes redraw the elements
        return str(self.driver.execute_script(
            "const e = document.querySelector(arguments[0]); return e ? e.innerText.trim() : '';", selector))

    def wait_text(self, selector: str, predicate: Any, timeout: float = 60.0, what: str = "") -> str:
        return wait_until(self.driver, lambda d: (lambda t: t if predicate(t) else None)(self.text(selector)),
                          timeout, what or selector)


@pytest.fixture(scope="module")
def console(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Console]:
    port = _free_port()
    proc = ShoalProcess(tmp_path_factory.mktemp("cu"), args=("-H", f"tcp://127.0.0.1:{port}", "--insecure-tcp"))
    proc.start()
    driver = None
    try:
        proc.client().swarm.init(advertise_addr="127.0.0.1", listen_addr=listen_addr())
        driver = make_driver()
        IMG.mkdir(parents=True, exist_ok=True)
        yield Console(proc, port, driver)
    finally:
        if driver is not None:
            driver.quit()
        try:
            proc.client().swarm.leave(force=True)
        except docker.errors.APIError:
            pass
        proc.stop()


def _deploy_route(c: Console) -> bool:
    """Whether this daemon converts Compose files itself (the console server's deploy route)."""
    resp = requests.post(f"{c.base}/shoal/console/deploy", params={"name": "cuprobe", "dryRun": 1},
                         data="services: {}\n", headers={"X-Shoal-Console": "1"}, timeout=10)
    return not (resp.status_code == 404 and "page not found" in resp.text)


def test_cu_overview_numbers_are_the_apis(console: Console) -> None:
    c = console
    # sleep as PID 1 ignores SIGTERM: a short grace period and monitor keep the updates below quick
    c.client.services.create("busybox:latest", ["sleep", "3600"], name="cuov", stop_grace_period=10**9,
                             update_config=docker.types.UpdateConfig(monitor=10**9))
    wait_for(lambda: any(t["Status"]["State"] == "running" for t in c.client.api.tasks({"service": "cuov"})))
    c.open("overview")
    wait_until(c.driver, lambda d: c.text("[data-k=tasks-running]") not in ("", "0"), what="overview numbers")
    nodes = c.api("/nodes")
    services = c.api("/services")
    running = [t for t in c.api("/tasks", filters=json.dumps({"desired-state": ["running"]}))
               if t["Status"]["State"] == "running"]
    assert c.text("[data-k=nodes-total]") == str(len(nodes))
    assert c.text("[data-k=nodes-ready]") == str(sum(n["Status"]["State"] == "ready" for n in nodes))
    assert c.text("[data-k=services-total]") == str(len(services))
    assert c.text("[data-k=tasks-running]") == str(len(running))
    assert c.text("#user") == "anonymous (admin)"
    assert not [e for e in js_errors(c.driver) if "404" not in e]  # 404s: aggregate routes not on this daemon


def test_cu_deploy_a_stack_from_a_pasted_compose_file(console: Console) -> None:
    c = console
    if not _deploy_route(c):
        pytest.skip("this daemon has no POST /shoal/console/deploy yet (the console server's part)")
    c.open("deploy")
    c.css("#stack-name").send_keys(STACK)
    c.driver.execute_script("const t = document.getElementById('compose-text'); t.value = arguments[0];"
                            "t.dispatchEvent(new Event('input'));", COMPOSE)
    c.css("#deploy-preview-btn").click()
    wait_until(c.driver, lambda d: d.find_elements("css selector", "[data-change='create:service:cuvote_vote']"),
               what="the dry run's diff")
    assert c.driver.find_elements("css selector", "[data-change='create:service:cuvote_worker']")
    assert "cuvote_vote" in c.text("#deploy-plan")
    assert not c.client.services.list(filters={"name": "cuvote_vote"})  # a preview writes nothing
    c.css("#deploy-confirm").click()
    c.wait_view("stack")
    c.wait_text("[data-service=cuvote_vote] .replicas", lambda t: t.startswith("2/2"), what="vote 2/2")
    c.wait_text("[data-service=cuvote_worker] .replicas", lambda t: t.startswith("1/1"), what="worker 1/1")
    c.open("overview")
    wait_until(c.driver, lambda d: c.text("[data-k=services-total]") == "3", what="overview with the stack")
    c.driver.save_screenshot(str(IMG / "console-overview.png"))


def _service(c: Console, name: str) -> dict[str, Any]:
    found = [s for s in c.api("/services") if s["Spec"]["Name"] == name]
    assert found, f"no service {name}"
    return found[0]


def test_cu_scale_follows_live_without_reload(console: Console) -> None:
    c = console
    name = "cuvote_vote" if _service_exists(c, "cuvote_vote") else "cuov"
    svc = _service(c, name)
    c.open(f"services/{svc['ID']}")
    c.wait_text("[data-k=replicas]", lambda t: "/" in t and t.split("/")[0] == t.split("/")[1], what="converged")
    c.driver.execute_script("window.__cuNoReload = 1")
    field = c.css("#scale-replicas")
    field.clear()
    field.send_keys("3")
    c.css("#scale-apply").click()
    c.wait_text("[data-k=replicas]", lambda t: t == "3/3", what="3/3 live")
    assert c.driver.execute_script("return window.__cuNoReload") == 1  # the same page: no reload
    # a change made elsewhere (the API) shows up too
    spec = c.client.services.get(svc["ID"])
    spec.scale(1)
    c.wait_text("[data-k=replicas]", lambda t: t == "1/1", what="1/1 after an API scale")
    assert c.driver.execute_script("return window.__cuNoReload") == 1


def _update_attr(c: Console, attr: str) -> str:
    # read in the page: the element is redrawn at every live refresh (a WebElement would go stale)
    return str(c.driver.execute_script(
        "const e = document.querySelector('[data-k=update-state]'); return e ? e.getAttribute(arguments[0]) : '';",
        attr) or "")


def _update_state(c: Console) -> str:
    return _update_attr(c, "data-state")


def _update_started(c: Console) -> str:
    return _update_attr(c, "data-started")


def _service_exists(c: Console, name: str) -> bool:
    return any(s["Spec"]["Name"] == name for s in c.api("/services"))


def test_cu_force_update_and_image_update_finish(console: Console) -> None:
    c = console
    name = "cuvote_worker" if _service_exists(c, "cuvote_worker") else "cuov"
    svc = _service(c, name)
    c.open(f"services/{svc['ID']}")
    c.wait_text("[data-k=replicas]", lambda t: t == "1/1", what="running")
    started = _update_started(c)
    c.css("#force-update").click()
    wait_until(c.driver, lambda d: _update_started(c) != started and _update_state(c) == "completed", 90,
               "the force update finished")
    assert c.client.services.get(svc["ID"]).attrs["Spec"]["TaskTemplate"].get("ForceUpdate", 0) >= 1
    image = c.css("#update-image")
    image.clear()
    image.send_keys("busybox")  # busybox:latest by another name: a new spec, an image the engine has
    started = _update_started(c)
    c.css("#update-apply").click()
    wait_until(c.driver, lambda d: _update_started(c) != started and _update_state(c) == "completed", 90,
               "the image update finished")
    assert c.text("[data-k=image]") == "busybox"
    c.driver.save_screenshot(str(IMG / "console-service.png"))


def test_cu_read_a_services_logs(console: Console) -> None:
    c = console
    if not _service_exists(c, "cuvote_vote"):
        c.client.services.create("busybox:latest", ["sh", "-c", "while true; do echo cu-vote-line; sleep 1; done"],
                                 name="cuvote_vote")
    svc = _service(c, "cuvote_vote")
    c.open(f"logs/{svc['ID']}")
    c.wait_text("#logs-output", lambda t: "cu-vote-line" in t, what="log lines")
    first = c.text("#logs-output").count("cu-vote-line")
    c.wait_text("#logs-output", lambda t: t.count("cu-vote-line") > first, what="followed lines")
    assert "cuvote_vote." in c.text("#logs-output")  # each line says its task
    c.css("#logs-filter").send_keys("no-such-text")
    wait_until(c.driver, lambda d: "cu-vote-line" not in c.text("#logs-output"), what="filtered")


def test_cu_a_broken_compose_file_shows_its_line(console: Console) -> None:
    c = console
    if not _deploy_route(c):
        pytest.skip("this daemon has no POST /shoal/console/deploy yet (the console server's part)")
    c.open("deploy")
    c.css("#stack-name").send_keys("cubroken")
    c.driver.execute_script("const t = document.getElementById('compose-text'); t.value = arguments[0];"
                            "t.dispatchEvent(new Event('input'));", BROKEN)
    c.css("#deploy-preview-btn").click()
    c.wait_text("#deploy-error", lambda t: t.startswith("Line 5"), what="the error at line 5")
    assert c.driver.find_element("css selector", ".gutter span.bad").text == "5"
    assert c.css("#deploy-confirm").get_attribute("disabled") is not None


def test_cu_narrow_screen_is_one_column(console: Console) -> None:
    c = console
    narrow = make_driver((390, 844))
    try:
        narrow.get(f"{c.base}/console/#/services")
        wait_until(narrow, lambda d: d.find_elements("css selector", "td[data-label=Name]"), what="services list")
        assert narrow.execute_script("return document.documentElement.scrollWidth") <= 390 + 1
        assert not narrow.find_element("id", "nav").is_displayed()
        narrow.find_element("id", "nav-toggle").click()
        assert narrow.find_element("id", "nav").is_displayed()
    finally:
        narrow.quit()
