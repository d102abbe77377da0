"""Shoal's CLI for jobs: --total-completions, and `service ls` showing a run's progress as docker does."""

from __future__ import annotations

from typing import Any

from shoal.cli.service import _replicas
from tests.unit.test_cli_commands import FakeDaemon, created_bodies, fake, run  # noqa: F401 (fixture)


def test_total_completions_is_docker_s_replicas_for_a_job(fake: tuple[FakeDaemon, str]) -> None:  # noqa: F811
    fd, host = fake
    result = run(host, "service", "create", "-d", "--mode", "replicated-job", "--max-concurrent", "2",
                 "--total-completions", "5", "busybox")
    assert result.exit_code == 0, result.output
    (body,) = created_bodies(fd)
    assert body["Mode"] == {"ReplicatedJob": {"MaxConcurrent": 2, "TotalCompletions": 5}}


def test_total_completions_needs_a_replicated_job(fake: tuple[FakeDaemon, str]) -> None:  # noqa: F811
    fd, host = fake
    for flags in (["--total-completions", "3"], ["--mode", "replicated-job", "--replicas", "2",
                                                 "--total-completions", "3"]):
        result = run(host, "service", "create", "-d", *flags, "busybox")
        assert result.exit_code == 2 and "total-completions" in result.output
    assert created_bodies(fd) == []


def _svc(mode: dict[str, Any], running: int, desired: int, completed: int) -> dict[str, Any]:
    return {"Spec": {"Mode": mode},
            "ServiceStatus": {"RunningTasks": running, "DesiredTasks": desired, "CompletedTasks": completed}}


def test_ls_shows_job_progress_like_docker() -> None:
    job = {"ReplicatedJob": {"MaxConcurrent": 2, "TotalCompletions": 4}}
    assert _replicas(_svc(job, 2, 2, 1)) == "2/2 (1/4 completed)"
    assert _replicas(_svc({"GlobalJob": {}}, 1, 2, 3)) == "1/2 (3/5 completed)"
