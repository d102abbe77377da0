"""Run a real ``shoal daemon`` process for integration tests, against the machine's dockerd."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import docker
import requests

# The kernel mesh's table of test daemons (see own_mesh_tables in conftest.py).
MESH_NAME = "shoal-test"


class ShoalProcess:
    """One daemon with its own socket and data root; can be stopped and started again."""

    def __init__(self, root: Path, engine: str | None = None, args: tuple[str, ...] = (),
                 env: dict[str, str] | None = None) -> None:
        self.root = root
        self.env = env or {}  # more environment for the daemon (after the defaults: it may override them)
        self.engine = engine  # --engine; None: the daemon's default (the machine's dockerd)
        self.args = args  # more `shoal daemon` options (e.g. --hostname)
        self.sock = root / "shoal.sock"
        self.data = root / "data"
        self.log = root / "shoal.log"
        self.host = f"unix://{self.sock}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 20.0) -> None:
        shoal = Path(sys.executable).with_name("shoal")
        engine = ["--engine", self.engine] if self.engine else []
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [str(shoal), "daemon", "-H", self.host, "--data-root", str(self.data), "--log-level", "info", *engine,
                 *self.args],
                stdout=out, stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1", "SHOAL_MESH_NAME": MESH_NAME, **self.env},
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"shoal daemon exited: {self.log.read_text()[-2000:]}")
            try:
                if self.client().ping():
                    return
            except (requests.exceptions.ConnectionError, docker.errors.APIError, FileNotFoundError):
                pass
            time.sleep(0.1)
        raise RuntimeError(f"shoal daemon did not answer in {timeout}s: {self.log.read_text()[-2000:]}")

    def client(self) -> docker.DockerClient:
        return docker.DockerClient(base_url=self.host, version="1.41", timeout=60)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def docker_cli(self, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """Run the machine's real ``docker`` CLI against this daemon."""
        res = subprocess.run(["docker", "-H", self.host, *args], capture_output=True, text=True, timeout=timeout)
        if check and res.returncode != 0:
            raise AssertionError(f"docker {' '.join(args)} failed ({res.returncode}): {res.stderr}")
        return res
