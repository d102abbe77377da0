"""`shoal job`: scheduled jobs (create, ls, runs, run, rm).

A scheduled job is a replicated-job service with ``shoal.schedule*`` labels (shoal/extensions.py);
these commands are a thin layer over the service API, so `docker service ls/ps/inspect` see the same
objects. The spec comes from cli/spec.py's builder (the one `service create` uses) with the job mode
and the labels added; the daemon validates the schedule (a bad one is its 400, printed as is).
"""

from __future__ import annotations

import datetime as dt
import time
from collections import defaultdict
from typing import Annotated, Any

import typer

from shoal.cli import format as fmt
from shoal.cli.client import Client, CLIError, client_of, delete_each
from shoal.cli.parse import flag, parse_choice, parse_env, parse_label, parse_uint
from shoal.cli.spec import ServiceOptions, SpecError, build_spec, spec_to_json
from shoal.extensions import (
    CONCURRENCY_POLICIES,
    MISSED_POLICIES,
    SCHEDULE_CONCURRENCY_LABEL,
    SCHEDULE_HISTORY_LABEL,
    SCHEDULE_LABEL,
    SCHEDULE_MISSED_LABEL,
    SCHEDULE_TIMEZONE_LABEL,
    parse_schedule,
)
from shoal.models import parse_ts

app = typer.Typer(help="Manage scheduled jobs", no_args_is_help=True)

UInt = Annotated[int | None, typer.Option(parser=flag(parse_uint))]


def scheduled_labels(
    schedule: str, timezone: str | None, concurrency: str | None, history: int | None, missed: str | None
) -> list[str]:
    """The ``--label`` strings that carry a schedule (only the settings given; the daemon has defaults)."""
    out = [f"{SCHEDULE_LABEL}={schedule}"]
    for key, value in ((SCHEDULE_TIMEZONE_LABEL, timezone), (SCHEDULE_CONCURRENCY_LABEL, concurrency),
                       (SCHEDULE_HISTORY_LABEL, history), (SCHEDULE_MISSED_LABEL, missed)):
        if value is not None:
            out.append(f"{key}={value}")
    return out


@app.command(context_settings={"allow_interspersed_args": False})
def create(
    ctx: typer.Context,
    image: Annotated[str, typer.Argument(metavar="IMAGE")],
    command: Annotated[list[str] | None, typer.Argument(metavar="[COMMAND] [ARG...]")] = None,
    schedule: Annotated[str, typer.Option("--schedule", help='Cron expression, e.g. "*/5 * * * *" or @daily')] = "",
    timezone: Annotated[str | None, typer.Option(help="IANA time zone of the schedule (default UTC)")] = None,
    concurrency: Annotated[
        str | None, typer.Option(parser=flag(parse_choice(*CONCURRENCY_POLICIES)),
                                 help="A run due while the last one runs: forbid (skip), replace, allow (wait)")
    ] = None,
    history: Annotated[int | None, typer.Option(parser=flag(parse_uint), help="Finished runs to keep")] = None,
    missed: Annotated[
        str | None, typer.Option(parser=flag(parse_choice(*MISSED_POLICIES)),
                                 help="After a manager outage: run-once or skip")
    ] = None,
    name: Annotated[str, typer.Option("--name", help="Job name")] = "",
    replicas: Annotated[int | None, typer.Option(parser=flag(parse_uint), help="Completions per run")] = None,
    max_concurrent: UInt = None,
    env: Annotated[list[str] | None, typer.Option("--env", "-e", parser=flag(parse_env))] = None,
    label: Annotated[list[str] | None, typer.Option("--label", "-l", parser=flag(parse_label))] = None,
    constraint: Annotated[list[str] | None, typer.Option()] = None,
    entrypoint: Annotated[str | None, typer.Option()] = None,
) -> None:
    """Create a job that runs on a schedule (a replicated job with shoal.schedule labels)."""
    if not schedule:
        raise CLIError('--schedule is required (e.g. --schedule "*/5 * * * *")', 2)
    opts = ServiceOptions(
        image=image, args=command or None, entrypoint=entrypoint, name=name, mode="replicated-job",
        replicas=replicas, max_concurrent=max_concurrent, env=env or [], constraints=constraint or [],
        labels=[*(label or []), *scheduled_labels(schedule, timezone, concurrency, history, missed)],
    )
    try:
        spec = build_spec(opts)
    except SpecError as e:
        raise CLIError(str(e), 2) from None
    resp = client_of(ctx).post("/services/create", body=spec_to_json(spec))
    print(resp["ID"])


def _jobs(c: Client) -> list[dict[str, Any]]:
    return list(c.get("/services", params={"filters": {"label": [SCHEDULE_LABEL]}}))


def _job(c: Client, ref: str) -> dict[str, Any]:
    svc: dict[str, Any] = c.get("/services/{0}", ref)
    if SCHEDULE_LABEL not in (svc["Spec"].get("Labels") or {}):
        raise CLIError(f"Error: service {ref} is not a scheduled job (it has no {SCHEDULE_LABEL} label)")
    return svc


def _iteration(task: dict[str, Any]) -> int:
    return int((task.get("JobIteration") or {}).get("Index", -1))


def _counts(tasks: list[dict[str, Any]]) -> dict[str, int]:
    out: dict[str, int] = defaultdict(int)
    for t in tasks:
        out[t["Status"]["State"]] += 1
    return out


def run_status(tasks: list[dict[str, Any]]) -> str:
    """One word and counts for a run: running, completed, failed (a failed task that was retried and
    then completed still shows in the failed count: it is history)."""
    if not tasks:
        return "-"
    n = _counts(tasks)
    done, failed = n.get("complete", 0), sum(n.get(s, 0) for s in ("failed", "rejected", "orphaned"))
    live = sum(v for s, v in n.items() if s not in ("complete", "failed", "rejected", "orphaned", "shutdown"))
    word = "running" if live else ("failed" if failed and not done else "completed")
    parts = [f"{done} completed"] + ([f"{failed} failed"] if failed else []) + ([f"{live} running"] if live else [])
    return f"{word} ({', '.join(parts)})"


def _local(ts: float, tz: Any) -> str:
    """A time in the job's zone (UTC when it has none), to the second."""
    return dt.datetime.fromtimestamp(ts, tz or dt.UTC).strftime("%Y-%m-%d %H:%M:%S %Z")


def next_run(labels: dict[str, str], last: float, now: float) -> str:
    """The next scheduled time as the daemon computes it: the first one after the later of now and
    the last run (a daemon running the test-only fast cron clock records runs ahead of real time)."""
    try:
        sched = parse_schedule(labels)
    except ValueError:
        return "?"
    if sched is None:
        return "-"
    return _local(sched.next_after(max(now, last)), sched.tz)


@app.command("ls")
def ls(ctx: typer.Context) -> None:
    """List scheduled jobs: schedule, last run, next run, and how the last run went."""
    c = client_of(ctx)
    now = time.time()
    rows = []
    for svc in sorted(_jobs(c), key=lambda s: s["Spec"]["Name"]):
        labels = svc["Spec"].get("Labels") or {}
        js = svc.get("JobStatus") or {}
        last = parse_ts(js.get("LastExecution", ""))
        current = int((js.get("JobIteration") or {}).get("Index", 0))
        tasks = [t for t in c.get("/tasks", params={"filters": {"service": [svc["ID"]]}}) if _iteration(t) == current]
        tz_name = labels.get(SCHEDULE_TIMEZONE_LABEL)
        sched = labels[SCHEDULE_LABEL] + (f" ({tz_name})" if tz_name is not None else "")
        try:
            tz = parse_schedule(labels).tz  # type: ignore[union-attr]
        except ValueError:
            tz = None
        rows.append((
            # Iteration 0 is the service's creation, not a run: a scheduled job waits for its time.
            svc["Spec"]["Name"], sched, _local(last, tz) if last and current else "-", next_run(labels, last, now),
            run_status(tasks),
        ))
    fmt.print_table(["NAME", "SCHEDULE", "LAST RUN", "NEXT RUN", "LAST RUN STATUS"], rows)


@app.command("runs")
def runs(ctx: typer.Context, job: Annotated[str, typer.Argument(metavar="JOB")]) -> None:
    """The runs of a job still in the task history: start, tasks completed / failed."""
    c = client_of(ctx)
    svc = _job(c, job)
    by_iter: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for t in c.get("/tasks", params={"filters": {"service": [svc["ID"]]}}):
        by_iter[_iteration(t)].append(t)
    rows = []
    for it in sorted(by_iter, reverse=True):
        tasks = by_iter[it]
        n = _counts(tasks)
        start = min(parse_ts(t["CreatedAt"]) for t in tasks)
        rows.append((
            str(it), _local(start, None), str(len(tasks)), str(n.get("complete", 0)),
            str(sum(n.get(s, 0) for s in ("failed", "rejected", "orphaned"))), run_status(tasks),
        ))
    fmt.print_table(["RUN", "STARTED", "TASKS", "COMPLETED", "FAILED", "STATUS"], rows)


@app.command("run")
def run(ctx: typer.Context, job: Annotated[str, typer.Argument(metavar="JOB")]) -> None:
    """Run a job now (a new iteration, as `docker service update --force` does)."""
    c = client_of(ctx)
    svc = _job(c, job)
    spec = svc["Spec"]
    template = spec.setdefault("TaskTemplate", {})
    template["ForceUpdate"] = int(template.get("ForceUpdate", 0)) + 1
    c.post("/services/{0}/update", svc["ID"], body=spec, params={"version": svc["Version"]["Index"]})
    print(spec["Name"])


@app.command("rm")
def rm(ctx: typer.Context, jobs: Annotated[list[str], typer.Argument(metavar="JOB...")]) -> None:
    """Remove scheduled jobs (their tasks and containers go with them)."""
    c = client_of(ctx)
    for ref in jobs:
        _job(c, ref)
    delete_each(c, "/services/{0}", jobs)
