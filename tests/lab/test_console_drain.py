"""Drain a node from the web console (2 hosts) and see its tasks move: the browser reaches the
manager's unix-socket API through ``shoal console --url`` (the local console, logged in by its
one-time link), picks ``drain`` on host-2's page, confirms, and the page shows host-2 empty while
the service stays at its replicas on host-1. Written by the console UI helper; run by the lead
(lab tests need root and the lab's namespaces)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import docker
import pytest

from shoal.lab import Lab
from tests.browser import make_driver, wait_until

pytestmark = pytest.mark.lab

SHOAL = str(Path(sys.executable).with_name("shoal"))


@pytest.mark.lab(hosts=2, join=True)
def test_cu_drain_a_node_from_the_browser_moves_its_tasks(lab: Lab) -> None:
    client = docker.DockerClient(base_url=lab.docker_host, version="1.41", timeout=60)
    host2 = lab.host("host-2")
    svc = client.services.create("busybox:latest", ["sleep", "3600"], name="cudrain",
                                 stop_grace_period=10**9,
                                 mode=docker.types.ServiceMode("replicated", replicas=4))
    console = subprocess.Popen([SHOAL, "-H", lab.docker_host, "console", "--url", "--no-browser", "--port", "0"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ})
    driver = None
    try:
        def on(node_id: str) -> int:
            return sum(1 for t in svc.tasks({"desired-state": "running"})
                       if t.get("NodeID") == node_id and t["Status"]["State"] == "running")

        deadline = time.monotonic() + 90
        while on(host2.node_id) == 0 or sum(on(h.node_id) for h in lab.hosts) < 4:
            assert time.monotonic() < deadline, "the service never ran 4 tasks with some on host-2"
            time.sleep(0.5)
        assert console.stdout is not None
        url = console.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:"), (url, console.stderr.read() if console.poll() is not None else "")
        driver = make_driver()
        driver.get(url)  # the one-time link: swapped for the local console's cookie, then /console/
        base = url.split("/console/")[0]
        driver.get(f"{base}/console/#/nodes/{host2.node_id}")
        wait_until(driver, lambda d: d.execute_script(
            "return [...document.querySelectorAll('td[data-label=Task]')].length") > 0, 30, "host-2's tasks listed")
        driver.execute_script("document.getElementById('node-availability').value = 'drain'")
        driver.find_element("id", "node-availability-apply").click()
        wait_until(driver, lambda d: d.find_elements("css selector", "dialog.confirm button.danger"), 10, "confirm")
        driver.find_element("css selector", "dialog.confirm button.danger").click()
        shown = "const e = document.querySelector('[data-k=node-availability]'); return e && e.innerText.trim()"
        wait_until(driver, lambda d: d.execute_script(shown) == "drain", 30, "the page shows drain")
        wait_until(driver, lambda d: d.execute_script(
            "return document.querySelectorAll('td[data-label=Task]').length") == 0, 90, "host-2 empty on the page")
        host1 = lab.host("host-1")
        deadline = time.monotonic() + 90
        while on(host1.node_id) < 4:
            assert time.monotonic() < deadline, "the tasks did not all move to host-1"
            time.sleep(0.5)
        assert client.nodes.get(host2.node_id).attrs["Spec"]["Availability"] == "drain"
    finally:
        if driver is not None:
            driver.quit()
        console.terminate()
        console.wait(timeout=10)
        svc.remove()
        node = client.nodes.get(host2.node_id)
        spec = node.attrs["Spec"]
        node.update({**spec, "Availability": "active"})
