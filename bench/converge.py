#!/usr/bin/env python3
"""Time to converge a 200-replica service: Shoal against Docker's own Swarm mode, same engine.

Each round creates the same service (busybox ``sleep``) first through Swarm mode on the machine's
dockerd, then through a Shoal daemon driving that same dockerd, and times create-request →
every replica running (as the API reports it: tasks in state ``running``). Between runs all the
service's containers are removed and awaited, so neither run competes with the other's clean-up.

Usage: bench/converge.py [--replicas 200] [--rounds 3] [--image busybox:latest]
The last lines are each side's runs and: converge: replicas=N shoal_s=S swarm_s=S ratio=R worst=R
(medians over the rounds; worst: the largest ratio of one round's Shoal and Swarm times).

The engine is left as found, even when the run is interrupted (Ctrl-C, SIGTERM, a timeout): out
of swarm mode, with no container of the bench's service, and no Shoal daemon running.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import docker

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tests.integration.shoal_process import ShoalProcess  # noqa: E402
from tests.integration.transport_env import listen_addr  # noqa: E402

ENGINE = "unix:///var/run/docker.sock"
SERVICE = "converge-bench"
LABELS = (f"com.docker.swarm.service.name={SERVICE}", f"shoal.service.name={SERVICE}")


class Interrupted(Exception):
    """SIGTERM/SIGHUP turned into an exception, so every ``finally`` below still cleans up."""


def _raise_interrupted(signum: int, _frame: object) -> None:
    raise Interrupted(f"signal {signum}")


def running_tasks(client: docker.DockerClient, service_id: str) -> int:
    tasks = client.api.tasks(filters={"service": service_id, "desired-state": "running"})
    return sum(1 for t in tasks if t["Status"]["State"] == "running")


def converge(client: docker.DockerClient, replicas: int, image: str, timeout: float = 600) -> float:
    """Create the service, wait for every replica to run, remove it; return the seconds taken."""
    t0 = time.monotonic()
    svc = client.services.create(image, command=["sleep", "3600"], name=SERVICE,
                                 mode=docker.types.ServiceMode("replicated", replicas=replicas))
    try:
        while running_tasks(client, svc.id) < replicas:
            if time.monotonic() - t0 > timeout:
                raise SystemExit(f"not converged within {timeout}s")
            time.sleep(0.1)
        return time.monotonic() - t0
    finally:
        svc.remove()


def wait_containers_gone(engine: docker.DockerClient, label: str, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while engine.containers.list(all=True, sparse=True, filters={"label": label}):
        if time.monotonic() > deadline:
            raise SystemExit(f"containers labelled {label} still present after {timeout}s")
        time.sleep(0.5)


def swarm_round(engine: docker.DockerClient, replicas: int, image: str) -> float:
    engine.swarm.init(advertise_addr="127.0.0.1", listen_addr=listen_addr())
    try:
        secs = converge(engine, replicas, image)
        wait_containers_gone(engine, LABELS[0])
        return secs
    finally:
        engine.swarm.leave(force=True)


def shoal_round(engine: docker.DockerClient, replicas: int, image: str) -> float:
    with tempfile.TemporaryDirectory(prefix="shoal-bench-") as tmp:
        proc = ShoalProcess(Path(tmp))
        proc.start()
        client = proc.client()
        try:
            client.swarm.init(advertise_addr="127.0.0.1", listen_addr=listen_addr())
            secs = converge(client, replicas, image)
            wait_containers_gone(engine, LABELS[1])
            return secs
        finally:
            with contextlib.suppress(docker.errors.APIError):
                client.swarm.leave(force=True)
            proc.stop()


def clean_engine(engine: docker.DockerClient) -> None:
    """Whatever a round left behind (it was interrupted): swarm mode, and the service's containers."""
    with contextlib.suppress(docker.errors.APIError):
        if engine.info().get("Swarm", {}).get("LocalNodeState") != "inactive":
            engine.swarm.leave(force=True)
    for label in LABELS:
        for c in engine.containers.list(all=True, sparse=True, filters={"label": label}):
            with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
                c.remove(force=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--replicas", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--image", default="busybox:latest")
    args = ap.parse_args()

    subprocess.run([str(ROOT / "scripts/build-test-image.sh"), args.image], check=True)
    engine = docker.DockerClient(base_url=ENGINE, version="1.41", timeout=300)
    if engine.info().get("Swarm", {}).get("LocalNodeState") != "inactive":
        raise SystemExit("the engine is already in a swarm; leave it first (docker swarm leave --force)")

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _raise_interrupted)
    shoal_s: list[float] = []
    swarm_s: list[float] = []
    try:
        for r in range(1, args.rounds + 1):
            swarm_s.append(swarm_round(engine, args.replicas, args.image))
            print(f"round {r}: swarm mode {swarm_s[-1]:.2f}s", flush=True)
            shoal_s.append(shoal_round(engine, args.replicas, args.image))
            print(f"round {r}: shoal      {shoal_s[-1]:.2f}s", flush=True)
    finally:
        # Ctrl-C or SIGTERM may land anywhere, even inside a round's own clean-up: check again.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        clean_engine(engine)

    sh, sw = statistics.median(shoal_s), statistics.median(swarm_s)
    worst = max(a / b for a, b in zip(shoal_s, swarm_s, strict=True))
    print(f"shoal runs: {', '.join(f'{s:.2f}' for s in shoal_s)}")
    print(f"swarm runs: {', '.join(f'{s:.2f}' for s in swarm_s)}")
    print(f"converge: replicas={args.replicas} shoal_s={sh:.2f} swarm_s={sw:.2f} ratio={sh / sw:.3f} worst={worst:.3f}")


if __name__ == "__main__":
    main()
