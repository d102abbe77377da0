"""bench/mesh.py's server and load generator, run for real on loopback (the bench itself needs a lab)."""

from __future__ import annotations

import importlib.util
import json
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "mesh.py"


@pytest.fixture(scope="module")
def mesh() -> ModuleType:
    spec = importlib.util.spec_from_file_location("mesh_bench", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def server(mesh: ModuleType) -> Iterator[int]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-c", mesh.PY_SERVER, str(port)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and "listening" in proc.stdout.readline()
        yield port
    finally:
        proc.kill()
        proc.wait()


def load(mesh: ModuleType, targets: list[str], conns: int = 4, seconds: float = 0.5) -> dict[str, object]:
    cfg = json.dumps({"targets": targets, "conns": conns, "seconds": seconds})
    out = subprocess.run([sys.executable, "-c", mesh.LOADGEN, cfg], capture_output=True, text=True, check=True,
                         timeout=30).stdout
    result: dict[str, object] = json.loads(out)
    return result


def test_load_generator_against_the_python_server(mesh: ModuleType, server: int) -> None:
    r = load(mesh, [f"127.0.0.1:{server}"])
    requests = r["requests"]
    assert isinstance(requests, int) and requests > 10
    assert r["errors"] == {}
    assert r["answered"] == {socket.gethostname(): requests}  # the server names itself in every answer
    assert 0 < r["p50_ms"] <= r["p99_ms"] <= r["max_ms"]  # type: ignore[operator]


def test_refused_connections_are_errors_not_requests(mesh: ModuleType) -> None:
    r = load(mesh, [f"127.0.0.1:{free_port()}"], conns=2, seconds=0.2)
    assert r["requests"] == 0 and r["p99_ms"] is None
    assert list(r["errors"]) == ["ConnectionRefusedError"]  # type: ignore[call-overload]


def test_round_robin_over_targets(mesh: ModuleType, server: int) -> None:
    closed = free_port()
    r = load(mesh, [f"127.0.0.1:{server}", f"127.0.0.1:{closed}"], conns=1, seconds=0.3)
    refused = r["errors"]["ConnectionRefusedError"]  # type: ignore[index]
    assert abs(refused - r["requests"]) <= 1  # type: ignore[operator]  # one worker alternates


def test_summary_line(mesh: ModuleType) -> None:
    def res(rps: float, p99: float) -> dict[str, float]:
        return {"rps": rps, "p99_ms": p99}

    results = {"direct": [res(1000, 5), res(1200, 6), res(1100, 7)],
               "mesh": [res(900, 8), res(1000, 9), res(950, 10)],
               "vip": [res(1050, 6), res(1000, 6), res(990, 6)]}
    assert mesh.summarize(results, 16) == \
        "mesh: conns=16 direct_rps=1100 mesh_rps=950 ratio=0.864 vip_rps=1000 p99_ms=9.00"
    del results["vip"]
    assert mesh.summarize(results, 8).endswith("vip_rps=- p99_ms=9.00")
