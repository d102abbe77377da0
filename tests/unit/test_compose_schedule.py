"""``x-shoal-schedule`` in a Compose file → ``shoal.schedule*`` labels and a job mode."""

from __future__ import annotations

from pathlib import Path

import pytest

from shoal import models as m
from shoal.compose import ComposeError, load, to_service_specs


def specs(tmp_path: Path, text: str) -> dict[str, m.ServiceSpec]:
    f = tmp_path / "compose.yml"
    f.write_text(text)
    return to_service_specs(load([f], env={}), "app")


def test_a_cron_string_makes_a_one_completion_replicated_job(tmp_path: Path) -> None:
    spec = specs(tmp_path, "services:\n  backup:\n    image: busybox\n    command: echo hi\n"
                           "    x-shoal-schedule: '*/5 * * * *'\n")["backup"]
    assert spec.Labels["shoal.schedule"] == "*/5 * * * *"
    assert spec.Mode == m.ServiceMode(ReplicatedJob=m.ReplicatedJob(MaxConcurrent=1, TotalCompletions=1))


def test_a_mapping_with_every_setting_and_replicas(tmp_path: Path) -> None:
    spec = specs(tmp_path, (
        "services:\n  report:\n    image: busybox\n    deploy:\n      replicas: 3\n"
        "    x-shoal-schedule:\n      cron: '0 6 * * mon-fri'\n      timezone: Europe/Paris\n"
        "      concurrency: replace\n      history: 5\n      missed: skip\n"
    ))["report"]
    labels = spec.Labels or {}
    assert {k: v for k, v in labels.items() if k.startswith("shoal.schedule")} == {
        "shoal.schedule": "0 6 * * mon-fri", "shoal.schedule.timezone": "Europe/Paris",
        "shoal.schedule.concurrency": "replace", "shoal.schedule.history": "5", "shoal.schedule.missed": "skip",
    }
    assert spec.Mode.ReplicatedJob == m.ReplicatedJob(MaxConcurrent=3, TotalCompletions=3)


def test_global_mode_becomes_a_global_job(tmp_path: Path) -> None:
    spec = specs(tmp_path, "services:\n  prune:\n    image: busybox\n    deploy:\n      mode: global\n"
                           "    x-shoal-schedule: '@daily'\n")["prune"]
    assert spec.Mode == m.ServiceMode(GlobalJob=m.GlobalJob())


def test_services_without_it_are_unchanged(tmp_path: Path) -> None:
    spec = specs(tmp_path, "services:\n  web:\n    image: nginx\n")["web"]
    assert spec.Mode.Replicated is not None and "shoal.schedule" not in (spec.Labels or {})


@pytest.mark.parametrize(("value", "fragment"), [
    ("'61 * * * *'", "invalid cron expression"),
    ("\n      cron: '@daily'\n      timezone: Moon/Base", "unknown time zone"),
    ("\n      cron: '@daily'\n      concurrency: queue", "concurrency='queue'"),
    ("\n      timezone: UTC", "a cron key is required"),
    ("\n      cron: '@daily'\n      every: 5", "unsupported key 'every'"),
    ("[1, 2]", "must be a cron expression or a mapping"),
])
def test_bad_schedules_are_errors_at_their_line(tmp_path: Path, value: str, fragment: str) -> None:
    with pytest.raises(ComposeError) as e:
        specs(tmp_path, f"services:\n  job:\n    image: busybox\n    x-shoal-schedule: {value}\n")
    assert "compose.yml:4" in str(e.value) and fragment in str(e.value)
