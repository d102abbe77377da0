"""The scale benchmark's pure helpers (the benchmark itself needs a daemon: run `shoal bench scale`)."""

from __future__ import annotations

import os
import socket

from shoal.bench.scale import ScaleResult, free_port_pair, pct, peak_rss_mb, replicas_per_service


def test_replicas_split_evenly_and_sum_to_the_total() -> None:
    assert replicas_per_service(10, 3) == [4, 3, 3]
    assert replicas_per_service(5, 10) == [1, 1, 1, 1, 1]
    assert sum(replicas_per_service(100_000, 7)) == 100_000


def test_percentiles() -> None:
    values = [float(i) for i in range(1, 101)]
    assert pct(values, 50) == 50.5
    assert 98.9 < pct(values, 99) < 99.1
    assert pct([], 99) == 0.0 and pct([7.0], 99) == 7.0


def test_free_port_pair_is_bindable() -> None:
    port = free_port_pair()
    with socket.socket() as a, socket.socket() as b:
        a.bind(("127.0.0.1", port))
        b.bind(("127.0.0.1", port + 1))


def test_peak_rss_of_this_process_and_the_summary_line() -> None:
    assert peak_rss_mb(os.getpid()) > 1
    r = ScaleResult(nodes=3, tasks=10, all_running_s=1.25, placements_per_s=8, place_ms=[5.0, 7.0],
                    services_ms=[1.0], nodes_ms=[2.0], rss_mb=99.6, false_down=2,
                    loop_lag={"p50_ms": 1.0, "p99_ms": 12.34, "max_ms": 40.0})
    assert r.line().startswith("scale: nodes=3 tasks=10 all_running_s=1.2 placements_per_s=8 place_p99_ms=")
    assert r.line().endswith("rss_mb=100 false_down=2 loop_lag_p99_ms=12.3 metrics_p99_ms=0.0")
    assert "GET /nodes" in r.report()
