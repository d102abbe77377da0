"""The ``lab`` fixture: a multi-host lab (``shoal.lab.Lab``, the code behind ``shoal lab``).

    @pytest.mark.lab(hosts=2, join=False)        # defaults: hosts=4, join=True, preload=busybox:latest,
                                                 # managers=1 (more: the store is etcd)
    def test_something(lab: Lab) -> None:
        client = docker.DockerClient(base_url=lab.docker_host)
        lab.cut("host-2") ...

One lab is built per session and shared by every test that asks for the same shape; a test asking
for another shape gets the old lab torn down and a new one built (the machine holds one lab at a
time: the bridge and addresses are fixed). Before each test the lab is healed (links up, stopped
dockerds and daemons restarted), so fault injection in one test does not leak into the next.
For a module- or session-scoped fixture of your own, call ``lab_pool.get(hosts=..., join=...)``.

Lab tests are skipped, with the reason, when not root or when a command the lab needs is missing.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from shoal.lab import DEFAULT_PRELOAD, Lab, LabError, missing_requirements

STATE_DIR = Path(os.environ.get("SHOAL_LAB_TEST_STATE", "/run/shoal-lab-test"))
MAIN_ENGINE_SOCK = "/var/run/docker.sock"
LAB_DAEMON_ARGS = ("--stats-interval", "2")  # task stats within seconds, not the default 10


def lab_unavailable() -> str | None:
    why = missing_requirements()
    if why is None and not os.path.exists(MAIN_ENGINE_SOCK):
        why = f"no dockerd at {MAIN_ENGINE_SOCK} to take the preload images from"
    return why


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    why = lab_unavailable()
    if why is None:
        return
    skip = pytest.mark.skip(reason=f"lab: {why}")
    for item in items:
        if "lab" in item.keywords:
            item.add_marker(skip)


class LabPool:
    """Holds the session's lab; builds another only when a test wants a different shape."""

    def __init__(self, state_dir: Path = STATE_DIR) -> None:
        self.state_dir = state_dir
        self.lab: Lab | None = None
        self.shape: tuple[int, bool, tuple[str, ...], int] | None = None

    def get(self, hosts: int = 4, join: bool = True, preload: Sequence[str] = DEFAULT_PRELOAD,
            managers: int = 1) -> Lab:
        shape = (hosts, join, tuple(preload), managers)
        if self.lab is not None and self.shape == shape:
            try:
                self.lab.heal()
                return self.lab
            except LabError:
                pass  # broken beyond healing (a test removed a namespace...): build a new one
        self.release()
        # A lab left at *our* state dir by an interrupted session is ours to remove.
        if (self.state_dir / "lab.json").exists():
            Lab(self.state_dir).down()
        lab = Lab(self.state_dir, hosts, preload, join=join, managers=managers, daemon_args=LAB_DAEMON_ARGS)
        try:
            lab.up()
        except LabError as e:
            with contextlib.suppress(LabError):
                lab.down()
            pytest.fail(f"lab up ({hosts} hosts, join={join}) failed: {e}", pytrace=False)
        self.lab, self.shape = lab, shape
        return lab

    def release(self) -> None:
        if self.lab is not None:
            lab, self.lab, self.shape = self.lab, None, None
            lab.down()


@pytest.fixture(scope="session")
def lab_pool() -> Iterator[LabPool]:
    pool = LabPool()
    yield pool
    pool.release()


LOG_LINES_ON_FAILURE = 25
# Set, a failed lab test's hosts' whole daemon logs are copied there (<dir>/<test>/<host>.log).
KEEP_LOGS = os.environ.get("SHOAL_LAB_KEEP_LOGS", "")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """A failed lab test shows the warnings and errors its hosts' daemons logged last: CI keeps
    only the test output, and the lab (with its logs) is gone by the time anyone looks."""
    outcome = yield
    rep = outcome.get_result()
    lab = getattr(item, "funcargs", {}).get("lab")
    if not rep.failed or not isinstance(lab, Lab):
        return
    for h in lab.hosts:
        log = Path(h.path) / "shoal.log"
        if KEEP_LOGS:
            with contextlib.suppress(OSError):
                keep = Path(KEEP_LOGS) / item.name
                keep.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(log, keep / f"{h.name}.log")
                shutil.copyfile(Path(h.path) / "dockerd.log", keep / f"{h.name}-dockerd.log")
        with contextlib.suppress(OSError):
            lines = [ln for ln in log.read_text(errors="replace").splitlines()[-2000:]
                     if " WARNING " in ln or " ERROR " in ln or "Traceback" in ln]
            if lines:
                tail = "\n".join(lines[-LOG_LINES_ON_FAILURE:])
                rep.sections.append((f"{h.name} shoal.log (warnings, errors)", tail))


@pytest.fixture
def lab(request: pytest.FixtureRequest, lab_pool: LabPool) -> Lab:
    marker = request.node.get_closest_marker("lab")
    kw = dict(marker.kwargs) if marker is not None else {}
    return lab_pool.get(kw.get("hosts", 4), kw.get("join", True), kw.get("preload", DEFAULT_PRELOAD),
                        kw.get("managers", 1))


def wait_for(predicate: Callable[[], Any], within: float = 60.0, interval: float = 0.25,
             why: Callable[[], str] | None = None) -> Any:
    """Poll until ``predicate`` returns something truthy; fail with its last value (and ``why()``)."""
    deadline = time.monotonic() + within
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"not within {within}s (last: {last!r})" + (f"; {why()}" if why else ""))
