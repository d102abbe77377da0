"""`shoal job` helpers: the labels a create sends, a run's status line, the next run shown by ls."""

from __future__ import annotations

import datetime as dt

from shoal.cli.job import next_run, run_status, scheduled_labels


def test_only_given_settings_become_labels() -> None:
    assert scheduled_labels("*/5 * * * *", None, None, None, None) == ["shoal.schedule=*/5 * * * *"]
    assert scheduled_labels("@daily", "Europe/Paris", "replace", 0, "skip") == [
        "shoal.schedule=@daily", "shoal.schedule.timezone=Europe/Paris", "shoal.schedule.concurrency=replace",
        "shoal.schedule.history=0", "shoal.schedule.missed=skip",
    ]


def test_run_status() -> None:
    def task(state: str) -> dict[str, object]:
        return {"Status": {"State": state}}

    assert run_status([]) == "-"
    assert run_status([task("complete"), task("complete")]) == "completed (2 completed)"
    assert run_status([task("running"), task("complete")]) == "running (1 completed, 1 running)"
    assert run_status([task("failed"), task("failed")]) == "failed (0 completed, 2 failed)"
    assert run_status([task("failed"), task("complete")]) == "completed (1 completed, 1 failed)"


def test_next_run_in_the_jobs_zone_after_now_or_the_last_run() -> None:
    now = dt.datetime(2026, 6, 1, 10, 2, tzinfo=dt.UTC).timestamp()
    labels = {"shoal.schedule": "*/5 * * * *", "shoal.schedule.timezone": "Europe/Paris"}
    assert next_run(labels, 0.0, now) == "2026-06-01 12:05:00 CEST"
    assert next_run(labels, now + 600, now) == "2026-06-01 12:15:00 CEST"
    assert next_run({"shoal.schedule": "nope"}, 0.0, now) == "?"
