"""The web console in a real headless Chromium against a real daemon and engine: one daemon (plain
TCP, anonymous admin: --insecure-tcp, so no login step) and one browser for the module.

What a user does: open the overview (its numbers are the API's), deploy the voting app
(examples/voting-app, its images built offline by scripts/build-demo-images.sh) by pasting its
Compose file (preview with the placement plan, confirm, converge), scale vote and watch the replicas
follow without a reload, roll vote from v1 to v2 and watch the update finish, force an update, update
an image and roll it back, cast a vote and read it in vote's and worker's followed logs, and see a
broken Compose file's error at its line. Screenshots are taken on the way; they replace the README's
(docs/img/) only when asked: SHOAL_SCREENSHOTS=docs/img, so that a test run leaves the tree as it was.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest
import requests

from tests.browser import js_errors, make_driver, wait_until
from tests.integration.conftest import free_port, leave_and_stop, wait_for
from tests.integration.shoal_process import ShoalProcess
from tests.integration.transport_env import listen_addr

pytestmark = pytest.mark.integration

IMG = Path(os.environ.get("SHOAL_SCREENSHOTS") or Path(tempfile.gettempdir()) / "shoal-console-screenshots")
IMG.mkdir(parents=True, exist_ok=True)
STACK = "cuvote"
VOTING_APP = Path(__file__).resolve().parents[2] / "examples" / "voting-app" / "docker-compose.yml"
SERVICES = ("vote", "redis", "worker", "db", "result")
IMAGES = [f"shoal-demo/voting-app-{s}:1" for s in SERVICES] + ["shoal-demo/voting-app-vote:2"]
# The Compose file's 5000/5001, moved: the routing mesh takes a published port on every address of the
# host, and the lab tests (run beside these in CI) keep their registry on the lab bridge's port 5000.
VOTE_PORT, RESULT_PORT = 15010, 15011


def _missing_images() -> list[str]:
    try:
        have = {t for i in docker.from_env().images.list() for t in i.tags}
    except docker.errors.DockerException:
        return IMAGES
    return [i for i in IMAGES if i not in have]


def _need_voting_app() -> None:
    missing = _missing_images()
    if missing:
        pytest.skip(f"the voting app's images are not built (scripts/build-demo-images.sh): {', '.join(missing)}")


BROKEN = """\
services:
  vote:
    image: busybox:latest
    deploy:
      replicas: lots
"""



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
    port = free_port()
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
        leave_and_stop(proc)


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


def test_cu_deploy_the_voting_app_from_a_pasted_compose_file(console: Console) -> None:
    c = console
    _need_voting_app()
    c.open("deploy")
    c.css("#stack-name").send_keys(STACK)
    c.driver.execute_script("const t = document.getElementById('compose-text'); t.value = arguments[0];"
                            "t.dispatchEvent(new Event('input'));",
                            VOTING_APP.read_text().replace('"5000:80"', f'"{VOTE_PORT}:80"')
                            .replace('"5001:80"', f'"{RESULT_PORT}:80"'))
    c.css("#deploy-preview-btn").click()
    # (services with depends_on are created once what they wait for runs: "wait" rather than "create")
    wait_until(c.driver, lambda d: d.find_elements("css selector", f"[data-change$=':service:{STACK}_vote']"),
               what="the dry run's diff")
    for svc in SERVICES:
        assert c.driver.find_elements("css selector", f"[data-change$=':service:{STACK}_{svc}']"), svc
        assert f"{STACK}_{svc}" in c.text("#deploy-plan")
    assert "after redis" in c.text(f"[data-change='wait:service:{STACK}_vote']")
    assert not c.client.services.list(filters={"name": f"{STACK}_vote"})  # a preview writes nothing
    c.css("#deploy-confirm").click()
    c.wait_view("stack")
    c.wait_text(f"[data-service={STACK}_vote] .replicas", lambda t: t.startswith("2/2"), 240, "vote 2/2")
    for svc in ("redis", "worker", "db", "result"):
        c.wait_text(f"[data-service={STACK}_{svc}] .replicas", lambda t: t.startswith("1/1"), 120, f"{svc} 1/1")
    c.open("overview")
    wait_until(c.driver, lambda d: c.text("[data-k=services-total]") == str(len(c.api("/services"))),
               what="overview with the stack")
    c.driver.save_screenshot(str(IMG / "console-overview.png"))


def _service(c: Console, name: str) -> dict[str, Any]:
    found = [s for s in c.api("/services") if s["Spec"]["Name"] == name]
    assert found, f"no service {name}"
    return found[0]


def test_cu_scale_follows_live_without_reload(console: Console) -> None:
    c = console
    name = f"{STACK}_vote" if _service_exists(c, f"{STACK}_vote") else "cuov"
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
    c.client.services.get(svc["ID"]).scale(2)
    c.wait_text("[data-k=replicas]", lambda t: t == "2/2", 90, "2/2 after an API scale")
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


def test_cu_a_rolling_update_of_vote_finishes(console: Console) -> None:
    """vote v1 → v2 from the service page (rolling: one task at a time, each healthy before the next),
    followed on the page until it completes."""
    c = console
    if not _service_exists(c, f"{STACK}_vote"):
        pytest.skip("the voting app is not deployed (see the deploy test)")
    svc = _service(c, f"{STACK}_vote")
    c.open(f"services/{svc['ID']}")
    c.wait_text("[data-k=replicas]", lambda t: t == "2/2", 60, "vote running")
    image = c.css("#update-image")
    image.clear()
    image.send_keys("shoal-demo/voting-app-vote:2")
    started = _update_started(c)
    c.css("#update-apply").click()
    wait_until(c.driver, lambda d: _update_started(c) != started and _update_state(c) == "updating", 30,
               "the update under way")
    wait_until(c.driver, lambda d: _update_state(c) == "completed", 180, "the rolling update finished")
    assert c.text("[data-k=image]") == "shoal-demo/voting-app-vote:2"
    c.wait_text("[data-k=replicas]", lambda t: t == "2/2", 60, "vote running again")
    c.driver.save_screenshot(str(IMG / "console-service.png"))


def test_cu_force_update_image_update_and_rollback(console: Console) -> None:
    c = console
    if not _service_exists(c, "cuov"):
        c.client.services.create("busybox:latest", ["sleep", "3600"], name="cuov", stop_grace_period=10**9,
                                 update_config=docker.types.UpdateConfig(monitor=10**9))
    svc = _service(c, "cuov")
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
    started = _update_started(c)
    wait_until(c.driver, lambda d: not d.find_element("id", "rollback").get_attribute("disabled"), 10,
               "rollback enabled (a previous spec)")
    c.css("#rollback").click()
    wait_until(c.driver, lambda d: d.find_elements("css selector", "dialog.confirm[open] button.danger"), 10,
               "the confirmation")
    c.css("dialog.confirm[open] button.danger").click()  # (its Cancel has the focus: Enter would not roll back)
    wait_until(c.driver, lambda d: _update_started(c) != started and _update_state(c) == "rollback_completed", 90,
               "the rollback finished")
    assert c.text("[data-k=image]") == "busybox:latest"


def _vote(choice: str) -> bool:
    try:
        resp = requests.post(f"http://127.0.0.1:{VOTE_PORT}/", data={"vote": choice}, timeout=5)
    except requests.RequestException:
        return False
    return resp.status_code == 200


def test_cu_a_vote_shows_in_the_followed_logs(console: Console) -> None:
    c = console
    if not _service_exists(c, f"{STACK}_vote"):
        pytest.skip("the voting app is not deployed (see the deploy test)")
    vote, worker = _service(c, f"{STACK}_vote"), _service(c, f"{STACK}_worker")
    c.open(f"logs/{vote['ID']}")
    c.wait_text("#logs-output", lambda t: "listening on" in t, what="vote's first lines")
    assert f"{STACK}_vote." in c.text("#logs-output")  # each line says its task
    wait_for(lambda: _vote("a"), timeout=60)  # through the routing mesh's published port
    c.wait_text("#logs-output", lambda t: '"POST / HTTP' in t, what="the vote's request, followed")
    c.css("#logs-filter").send_keys("no-such-text")
    wait_until(c.driver, lambda d: "listening on" not in c.text("#logs-output"), what="filtered")
    c.open(f"logs/{worker['ID']}")
    c.wait_text("#logs-output", lambda t: "processed vote for 'a'" in t, 60, "the worker's line for the vote")


def test_cu_create_from_the_form_label_a_node_and_remove_with_confirmation(console: Console) -> None:
    """The everyday rest: a service from the form (its placement asked first), a node label added and
    removed and the node paused and made active again, and the service removed after confirming."""
    c = console
    c.open("create")
    c.css("#svc-name").send_keys("cuform")
    c.css("#svc-image").send_keys("busybox:latest")
    replicas = c.css("#svc-replicas")
    replicas.clear()
    replicas.send_keys("2")
    c.css("#svc-command").send_keys('sh -c "sleep 3600"')
    c.css("#svc-constraints").send_keys("node.labels.cu-zone==a")
    c.css("#svc-plan").click()  # no node has the label yet: the plan says why nothing would run
    wait_until(c.driver, lambda d: "cu-zone" in c.text("main"), what="the plan's reason")
    c.css("#svc-create").click()
    c.wait_view("service")
    svc = _service(c, "cuform")
    assert svc["Spec"]["TaskTemplate"]["ContainerSpec"]["Args"][-1] == "sleep 3600"
    assert svc["Spec"]["Mode"]["Replicated"]["Replicas"] == 2

    node = c.api("/nodes")[0]
    c.open(f"nodes/{node['ID']}")
    c.css("#node-label-key").send_keys("cu-zone")
    c.css("#node-label-value").send_keys("a")
    c.css("#node-label-add").click()
    wait_until(c.driver, lambda d: "cu-zone=a" in c.text("main"), what="the label shown")
    assert c.api(f"/nodes/{node['ID']}")["Spec"]["Labels"]["cu-zone"] == "a"
    wait_for(lambda: len([t for t in c.client.api.tasks({"service": "cuform"})
                          if t["Status"]["State"] == "running"]) == 2, timeout=60)  # placeable now
    c.driver.execute_script("const s = document.getElementById('node-availability'); s.value = 'pause';"
                            "s.dispatchEvent(new Event('change'));")
    c.css("#node-availability-apply").click()
    c.wait_text("[data-k=node-availability]", lambda t: t == "pause", what="paused")
    c.driver.execute_script("const s = document.getElementById('node-availability'); s.value = 'active';"
                            "s.dispatchEvent(new Event('change'));")
    c.css("#node-availability-apply").click()
    c.wait_text("[data-k=node-availability]", lambda t: t == "active", what="active again")
    c.css("button[aria-label='Remove label cu-zone']").click()
    wait_until(c.driver, lambda d: "cu-zone" not in (c.api(f"/nodes/{node['ID']}")["Spec"].get("Labels") or {}),
               what="the label removed")

    c.open(f"services/{svc['ID']}")
    c.css("#remove-service").click()
    wait_until(c.driver, lambda d: d.find_elements("css selector", "dialog.confirm[open]"), 10, "the confirmation")
    c.css("dialog.confirm[open] button:not(.danger)").click()  # Cancel: nothing happens
    assert _service_exists(c, "cuform")
    c.css("#remove-service").click()
    wait_until(c.driver, lambda d: d.find_elements("css selector", "dialog.confirm[open] button.danger"), 10,
               "the confirmation again")
    c.css("dialog.confirm[open] button.danger").click()
    wait_until(c.driver, lambda d: not _service_exists(c, "cuform"), what="the service removed")


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


def test_cu_keyboard_and_labels(console: Console) -> None:
    """Usable from the keyboard: the skip link is reached (Enter puts the focus on the page and leaves the
    view as it is), the navigation's links are reached and followed with Enter;
    and every form control of the busiest pages has an accessible name."""
    from selenium.webdriver.common.keys import Keys  # (here: the module skips, not fails, without selenium)

    c = console
    c.open("overview")  # a view puts the focus on the page (main); the skip link and the menu are before it

    def back_to(pred_js: str) -> None:
        for _ in range(40):
            c.driver.switch_to.active_element.send_keys(Keys.SHIFT, Keys.TAB)
            if c.driver.execute_script(pred_js):
                return
        raise AssertionError(f"not reached with Shift+Tab: {pred_js}")

    back_to("return document.activeElement.classList.contains('skip')")
    c.driver.switch_to.active_element.send_keys(Keys.ENTER)
    assert c.driver.execute_script("return document.activeElement.id") == "main"
    assert c.driver.execute_script("return document.querySelector('section.view').dataset.view") == "overview"
    back_to("return document.activeElement.getAttribute('href') === '#/services'")
    c.driver.switch_to.active_element.send_keys(Keys.ENTER)
    c.wait_view("services")
    unnamed = """
        return [...document.querySelectorAll('main input, main select, main textarea, main button')]
          .filter((e) => !(e.labels && e.labels.length) && !e.getAttribute('aria-label')
                         && !e.getAttribute('aria-labelledby') && !(e.tagName === 'BUTTON' && e.innerText.trim()))
          .map((e) => e.outerHTML);"""
    service = f"services/{_service(c, 'cuov')['ID']}" if _service_exists(c, "cuov") else "services"
    for route in ("create", "deploy", service, f"nodes/{c.api('/nodes')[0]['ID']}"):
        c.open(route)
        wait_until(c.driver, lambda d: d.find_elements("css selector", "main input, main select, main button"),
                   what=f"the controls of {route}")
        assert c.driver.execute_script(unnamed) == [], route


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
