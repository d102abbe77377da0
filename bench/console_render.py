"""The console's render benchmark: open the overview in headless Chromium against a hollow-node
cluster (bench/scale.py's harness: 1,000 nodes, 100,000 tasks by default) and time it.

    .venv/bin/python bench/console_render.py [--nodes N] [--tasks T] [--loads 5]

Per load (a fresh browser each time, so nothing is cached): first paint and first contentful paint
(``performance.getEntriesByType('paint')``), and the time until the overview's numbers are on
screen (``window.__shoalOverviewShownAt``, set by views/overview.js once it has drawn them), all
from navigation start. Prints median and worst; the target is an overview usable in under 2 s.
It needs the console server's ``/shoal/console/overview`` (without it the page computes the numbers
from /nodes and /tasks, which is what the aggregate exists to avoid at this size).
"""

from __future__ import annotations

import argparse
import shutil
import socket
import statistics
import sys
import time

from shoal.bench.scale import ScaleConfig, hollow_cluster


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _driver(width: int = 1280, height: int = 900):  # type: ignore[no-untyped-def]
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                f"--window-size={width},{height}", "--disable-extensions", "--disable-background-networking"):
        opts.add_argument(arg)
    return webdriver.Chrome(options=opts, service=Service(shutil.which("chromedriver") or "/usr/bin/chromedriver"))


def load_once(url: str, timeout_s: float = 60.0) -> dict[str, float]:
    """One cold load of the overview: paint times and the time its numbers were shown (ms)."""
    drv = _driver()
    try:
        drv.get(url)
        deadline = time.monotonic() + timeout_s
        shown = None
        while time.monotonic() < deadline:
            shown = drv.execute_script("return window.__shoalOverviewShownAt || null")
            if shown:
                break
            time.sleep(0.02)
        if not shown:
            raise RuntimeError(f"the overview did not show its numbers within {timeout_s}s")
        paints = {e["name"]: e["startTime"] for e in drv.execute_script(
            "return performance.getEntriesByType('paint').map(e => ({name: e.name, startTime: e.startTime}))")}
        ok = drv.execute_script("return document.querySelector('[data-k=tasks-running]').textContent")
        return {"first_paint_ms": paints.get("first-paint", 0.0),
                "first_contentful_paint_ms": paints.get("first-contentful-paint", 0.0),
                "overview_shown_ms": float(shown), "tasks_running_shown": float(ok or 0)}
    finally:
        drv.quit()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Time the web console's overview on a hollow-node cluster.")
    p.add_argument("--nodes", type=int, default=1000)
    p.add_argument("--tasks", type=int, default=100_000)
    p.add_argument("--services", type=int, default=10)
    p.add_argument("--loads", type=int, default=5, help="cold loads of the overview (at least 3)")
    p.add_argument("--fleet-processes", type=int, default=2)
    p.add_argument("--timeout", type=float, default=900.0, help="for all tasks to run (s)")
    args = p.parse_args(argv)
    cfg = ScaleConfig(nodes=args.nodes, tasks=args.tasks, services=args.services, timeout_s=args.timeout)
    port = _port()
    with hollow_cluster(cfg, args.fleet_processes, ("-H", f"tcp://127.0.0.1:{port}", "--insecure-tcp"),
                        prefix="shoal-console-bench-"):
        url = f"http://127.0.0.1:{port}/console/#/overview"
        runs = [load_once(url) for _ in range(max(3, args.loads))]
        for key in ("first_paint_ms", "first_contentful_paint_ms", "overview_shown_ms"):
            vals = [r[key] for r in runs]
            print(f"  {key}: median {statistics.median(vals):.0f}, worst {max(vals):.0f} "
                  f"(runs: {' '.join(f'{v:.0f}' for v in vals)})")
        worst = max(r["overview_shown_ms"] for r in runs)
        print(f"console_render: nodes={cfg.nodes} tasks={cfg.tasks} overview_median_ms="
              f"{statistics.median(r['overview_shown_ms'] for r in runs):.0f} overview_worst_ms={worst:.0f} "
              f"tasks_running_shown={int(runs[-1]['tasks_running_shown'])} target_ms=2000")
        return 0 if worst < 2000 else 1


if __name__ == "__main__":
    sys.exit(main())
