"""Rolling updates and rollbacks on a real engine, observed task by task.

Order, parallelism and delay are judged from the tasks' own timestamps (CreatedAt, and the
Status.Timestamp of the state each task ended in), not from polling, so the checks hold however
slowly this test happens to look. A broken image is a tag that does not exist (the pull fails fast).
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import docker
import pytest

from tests.integration.conftest import shoal_cli, wait_for
from tests.integration.shoal_process import ShoalProcess

pytestmark = pytest.mark.integration

IMAGE = "busybox:latest"
BROKEN = "busybox:nope"
# Stops at once on SIGTERM (a bare `sleep` as PID 1 would wait out the grace period); /tmp/ready
# appears 1.5 s after start, for the health check of the stop-first update.
COMMAND = ["sh", "-c", 'trap "exit 0" TERM; (sleep 1.5; touch /tmp/ready) & sleep 600 & wait']
FAST = ["--stop-grace-period", "1s", "--restart-delay", "1s"]


def ts(value: str) -> float:
    """Docker's RFC 3339 with nanoseconds → epoch seconds."""
    head, _, frac = value.rstrip("Z").partition(".")
    return datetime.fromisoformat(f"{head}.{(frac or '0')[:6]:0<6}+00:00").timestamp()


def tasks(client: docker.DockerClient, service: str) -> list[dict[str, Any]]:
    return client.api.tasks(filters={"service": service})


def service(client: docker.DockerClient, name: str) -> dict[str, Any]:
    return client.api.inspect_service(name)


def update_state(client: docker.DockerClient, name: str) -> str:
    return (service(client, name).get("UpdateStatus") or {}).get("State", "")


def running(client: docker.DockerClient, name: str) -> list[dict[str, Any]]:
    return [t for t in tasks(client, name) if t["DesiredState"] == "running" and t["Status"]["State"] == "running"]


def create(shoal: ShoalProcess, name: str, replicas: int, *flags: str) -> None:
    shoal_cli(shoal, "service", "create", "-d", "--name", name, "--replicas", str(replicas), *FAST, *flags,
              IMAGE, *COMMAND)


def slot_changes(client: docker.DockerClient, name: str, old_ids: set[str]) -> list[dict[str, float]]:
    """Per slot, when its replacement was created and ran and when its old task stopped."""
    by_slot: dict[int, dict[str, Any]] = {}
    for t in tasks(client, name):
        by_slot.setdefault(t["Slot"], {})["old" if t["ID"] in old_ids else "new"] = t
    out = []
    for slot, pair in sorted(by_slot.items()):
        # Seen once in CI (not reproduced since): a slot with no new task right after 4 new ones ran.
        assert "old" in pair and "new" in pair, {s: {k: (t["ID"], t["Status"]["State"], t["DesiredState"])
                                                     for k, t in p.items()} for s, p in by_slot.items()}
        old, new = pair["old"], pair["new"]
        assert old["Status"]["State"] in ("shutdown", "complete"), old["Status"]
        assert new["Status"]["State"] == "running", new["Status"]
        out.append({"slot": slot, "created": ts(new["CreatedAt"]), "ran": ts(new["Status"]["Timestamp"]),
                    "stopped": ts(old["Status"]["Timestamp"])})
    return out


def max_concurrent(changes: list[dict[str, float]]) -> int:
    """How many slots were changing at once, at most: a slot changes from its first event (the new
    task created or the old one stopped) until both its new task runs and its old task stopped."""
    edges = []
    for c in changes:
        edges += [(min(c["created"], c["stopped"]), 1), (max(c["ran"], c["stopped"]), -1)]
    level = peak = 0
    for _, step in sorted(edges, key=lambda e: (e[0], e[1])):
        level += step
        peak = max(peak, level)
    return peak


def batches_are_delayed(changes: list[dict[str, float]], delay: float) -> bool:
    """With parallelism 2 over 4 slots: the second batch starts a Delay after the first batch's new
    tasks run (as in swarmkit, a start-first slot's old task may still be stopping meanwhile)."""
    ordered = sorted(changes, key=lambda c: min(c["created"], c["stopped"]))
    first_done = max(c["ran"] for c in ordered[:2])
    second_start = min(min(c["created"], c["stopped"]) for c in ordered[2:])
    return second_start - first_done >= delay - 0.2


def test_rolling_update_task_by_task(shoal: ShoalProcess, swarm: docker.DockerClient) -> None:
    create(shoal, "roll", 4, "--update-parallelism", "2", "--update-delay", "2s", "--update-monitor", "1s",
           "--update-order", "start-first")
    wait_for(lambda: len(running(swarm, "roll")) == 4)

    # start-first, with --force (no change to the spec but ForceUpdate): every task is replaced.
    old = {t["ID"] for t in tasks(swarm, "roll")}
    shoal_cli(shoal, "service", "update", "-d", "--force", "roll")
    # Bounds for a loaded machine (CI runs this beside everything else); the waits end when it is done.
    wait_for(lambda: len(running(swarm, "roll")) == 4 and not old & {t["ID"] for t in running(swarm, "roll")},
             timeout=60)
    wait_for(lambda: all(t["Status"]["State"] != "running" for t in tasks(swarm, "roll") if t["ID"] in old))
    changes = slot_changes(swarm, "roll", old)
    assert max_concurrent(changes) <= 2, changes
    assert batches_are_delayed(changes, 2.0), changes
    for c in changes:
        assert c["ran"] <= c["stopped"], f"start-first: slot {c['slot']}'s new task ran before the old stopped"

    # stop-first, and the new spec has a health check: a new task is RUNNING only once healthy
    # (~1.5 s after it starts), and the next batch waits for that plus the delay.
    old = {t["ID"] for t in tasks(swarm, "roll")}
    shoal_cli(shoal, "service", "update", "-d", "--update-order", "stop-first", "--health-cmd", "test -f /tmp/ready",
              "--health-interval", "500ms", "roll")
    wait_for(lambda: len(running(swarm, "roll")) == 4 and not old & {t["ID"] for t in running(swarm, "roll")},
             timeout=90)
    changes = slot_changes(swarm, "roll", old)
    assert max_concurrent(changes) <= 2, changes
    assert batches_are_delayed(changes, 2.0), changes
    for c in changes:
        assert c["stopped"] <= c["created"], f"stop-first: slot {c['slot']}'s old task stopped first"
        assert c["ran"] - c["created"] >= 1.4, f"slot {c['slot']} was RUNNING before its health check passed"
    wait_for(lambda: update_state(swarm, "roll") == "completed", timeout=45)


def test_failure_pauses_the_update(shoal: ShoalProcess, swarm: docker.DockerClient) -> None:
    create(shoal, "pausy", 3, "--update-parallelism", "1", "--update-monitor", "1s",
           "--update-failure-action", "pause")
    wait_for(lambda: len(running(swarm, "pausy")) == 3)
    # Without -d the CLI follows the update, and stops with the reason when it pauses.
    res = shoal_cli(shoal, "service", "update", "--image", BROKEN, "pausy", check=False)
    assert res.returncode != 0 and "update paused" in res.stderr, res.stderr
    st = service(swarm, "pausy")["UpdateStatus"]
    assert st["State"] == "paused"
    assert st["Message"].startswith("update paused due to failure or early termination of task "), st
    failed = st["Message"].rsplit(" ", 1)[1]
    assert swarm.api.inspect_task(failed)["Spec"]["ContainerSpec"]["Image"] == BROKEN
    assert len([t for t in running(swarm, "pausy") if t["Spec"]["ContainerSpec"]["Image"] == IMAGE]) == 2
    ps = shoal_cli(shoal, "service", "ps", "pausy").stdout
    assert ps.splitlines()[0] == f"update: paused — {st['Message']}", ps
    # It stays paused (the failed slot keeps failing on restart; no other slot is touched) ...
    wait_for(lambda: sum(t["Spec"]["ContainerSpec"]["Image"] == BROKEN for t in tasks(swarm, "pausy")) >= 2)
    assert {t["Slot"] for t in tasks(swarm, "pausy") if t["Spec"]["ContainerSpec"]["Image"] == BROKEN} == {
        swarm.api.inspect_task(failed)["Slot"]}
    assert update_state(swarm, "pausy") == "paused"
    # ... until the next update, which starts again.
    shoal_cli(shoal, "service", "update", "-d", "--image", IMAGE, "pausy")
    wait_for(lambda: update_state(swarm, "pausy") == "completed", timeout=20)
    assert len(running(swarm, "pausy")) == 3


def test_automatic_rollback_on_a_broken_image(shoal: ShoalProcess, swarm: docker.DockerClient) -> None:
    create(shoal, "rolly", 3, "--update-parallelism", "1", "--update-monitor", "1s", "--update-failure-action",
           "rollback", "--rollback-parallelism", "0", "--rollback-monitor", "1s")
    wait_for(lambda: len(running(swarm, "rolly")) == 3)
    before = {t["ID"] for t in running(swarm, "rolly")}
    shoal_cli(shoal, "service", "update", "-d", "--image", BROKEN, "rolly")
    seen: list[str] = []

    def rolled_back() -> bool:
        st = service(swarm, "rolly").get("UpdateStatus") or {}
        if st.get("Message") and st["Message"] not in seen:
            seen.append(st["Message"])
        return st.get("State") == "rollback_completed"

    wait_for(rolled_back, timeout=30, interval=0.1)
    assert any(m.startswith("update rolled back due to failure or early termination of task ") for m in seen), seen
    assert seen[-1] == "rollback completed"
    svc = service(swarm, "rolly")
    assert svc["Spec"]["TaskTemplate"]["ContainerSpec"]["Image"] == IMAGE
    wait_for(lambda: len(running(swarm, "rolly")) == 3)
    assert all(t["Spec"]["ContainerSpec"]["Image"] == IMAGE for t in running(swarm, "rolly"))
    assert len(before & {t["ID"] for t in running(swarm, "rolly")}) == 2, "one slot was updated, then rolled back"


def test_manual_rollback(shoal: ShoalProcess, swarm: docker.DockerClient) -> None:
    create(shoal, "manual", 2, "--env", "V=1", "--update-parallelism", "0", "--update-monitor", "1s",
           "--rollback-parallelism", "0", "--rollback-monitor", "1s")
    wait_for(lambda: len(running(swarm, "manual")) == 2)

    def env() -> set[str]:
        return {json.dumps(t["Spec"]["ContainerSpec"].get("Env")) for t in running(swarm, "manual")}

    shoal_cli(shoal, "service", "update", "-d", "--env-add", "V=2", "manual")
    wait_for(lambda: update_state(swarm, "manual") == "completed" and env() == {'["V=2"]'}, timeout=20)
    # Shoal's CLI follows the rollback until it converges.
    shoal_cli(shoal, "service", "rollback", "manual")
    wait_for(lambda: update_state(swarm, "manual") == "rollback_completed", timeout=15)
    assert service(swarm, "manual")["UpdateStatus"]["Message"] == "rollback completed"
    wait_for(lambda: env() == {'["V=1"]'} and len(running(swarm, "manual")) == 2)
    # The docker CLI's `service rollback` swaps back (a manual rollback keeps the other spec).
    shoal.docker_cli("service", "rollback", "-d", "manual")
    wait_for(lambda: env() == {'["V=2"]'} and len(running(swarm, "manual")) == 2, timeout=20)
    wait_for(lambda: update_state(swarm, "manual") == "rollback_completed", timeout=15)
