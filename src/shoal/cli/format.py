"""Output helpers: docker's human durations and sizes, tables, and inspect-style JSON."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterable, Sequence
from typing import Any

from rich.console import Console
from rich.table import Table

from shoal.models import parse_ts

SECOND_NS = 1_000_000_000


def stdout() -> Console:
    """A console on the *current* sys.stdout (test runners swap it). Off a terminal it is wide, so
    piped tables are never wrapped or cut: scripts read them with awk."""
    tty = sys.stdout.isatty()
    return Console(file=sys.stdout, width=None if tty else 4096, highlight=False, soft_wrap=not tty)


def stderr() -> Console:
    return Console(file=sys.stderr, highlight=False)


def human_duration(seconds: float) -> str:
    """go-units' HumanDuration: "Less than a second", "5 seconds", "About a minute", "3 hours" ..."""
    s = int(seconds)
    if s < 1:
        return "Less than a second"
    if s == 1:
        return "1 second"
    if s < 60:
        return f"{s} seconds"
    minutes = int(seconds / 60)
    if minutes == 1:
        return "About a minute"
    if minutes < 60:
        return f"{minutes} minutes"
    hours = int(seconds / 3600 + 0.5)
    if hours == 1:
        return "About an hour"
    if hours < 48:
        return f"{hours} hours"
    if hours < 24 * 7 * 2:
        return f"{hours // 24} days"
    if hours < 24 * 30 * 2:
        return f"{hours // 24 // 7} weeks"
    if hours < 24 * 365 * 2:
        return f"{hours // 24 // 30} months"
    return f"{int(seconds / 3600) // 24 // 365} years"


def ago(ts: str, now: float | None = None) -> str:
    """"5 seconds ago" for an RFC 3339 timestamp, lower-cased as `docker service ps` prints it."""
    if not ts or ts.startswith("0001-"):
        return ""
    now = time.time() if now is None else now
    return human_duration(max(0.0, now - parse_ts(ts))).lower() + " ago"


def duration(ns: int | None) -> str:
    """Nanoseconds as Go prints a time.Duration: 0s, 500ms, 5s, 1m30s, 1h0m0s."""
    if not ns:
        return "0s"
    if ns < SECOND_NS:
        if ns % 1_000_000 == 0:
            return f"{ns // 1_000_000}ms"
        if ns % 1_000 == 0:
            return f"{ns // 1_000}µs"
        return f"{ns}ns"
    secs = ns / SECOND_NS
    h, rem = divmod(secs, 3600)
    m, s = divmod(rem, 60)
    s_txt = f"{s:.9f}".rstrip("0").rstrip(".")
    if h:
        return f"{int(h)}h{int(m)}m{s_txt}s"
    if m:
        return f"{int(m)}m{s_txt}s"
    return f"{s_txt}s"


def size(n: int) -> str:
    """Bytes in binary units, as `docker node inspect --pretty` prints memory: "1.5GiB"."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.4g}{unit}"
        value /= 1024
    return f"{n}B"  # pragma: no cover


def cpus(nano: int) -> str:
    return f"{nano / SECOND_NS:g}"


def trunc_id(obj_id: str, no_trunc: bool = False) -> str:
    return obj_id if no_trunc else obj_id[:12]


def pretty_state(state: str) -> str:
    """"running" -> "Running" (docker's PrettyPrint)."""
    return state[:1].upper() + state[1:]


def ports(ports: Iterable[dict[str, Any]] | None) -> str:
    """Published ports as docker lists them: "*:8080->80/tcp"."""
    out = []
    for p in ports or []:
        if not p.get("PublishedPort") and p.get("PublishMode", "ingress") == "ingress":
            continue
        out.append(f"*:{p.get('PublishedPort', 0)}->{p.get('TargetPort', 0)}/{p.get('Protocol', 'tcp')}")
    return ", ".join(out)


def align(text: str, width: int = 20) -> str:
    """Line up "Label:<TAB>value" lines in a column, as docker's --pretty output does."""
    out = []
    for line in text.splitlines():
        label, tab, value = line.partition("\t")
        out.append(f"{label:<{width}}{value.lstrip(chr(9))}" if tab else line)
    return "\n".join(out)


def print_table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> None:
    """A borderless table with docker's layout: upper-case headers, columns three spaces apart."""
    table = Table(box=None, show_edge=False, pad_edge=False, padding=(0, 3, 0, 0), header_style="bold")
    for h in headers:
        table.add_column(h, no_wrap=True, overflow="ellipsis")
    for row in rows:
        table.add_row(*row)
    console = stdout()
    with console.capture() as captured:
        console.print(table)
    # Rich pads the last column; scripts and diffs are happier without trailing blanks.
    sys.stdout.write("".join(line.rstrip() + "\n" for line in captured.get().splitlines()))


def print_json(objs: list[Any]) -> None:
    """`inspect` output: a JSON array, 4-space indent, like the docker CLI."""
    sys.stdout.write(json.dumps(objs, indent=4) + "\n")
