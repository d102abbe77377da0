"""Job services in the control API: moby's defaults, JobStatus, a new run on every update."""

from __future__ import annotations

import msgspec
import pytest

from shoal import controlapi
from shoal.api.testing import add_task
from shoal.errors import InvalidArgument
from shoal.models import (
    ContainerSpec,
    GlobalJob,
    ReplicatedJob,
    ReplicatedService,
    ServiceMode,
    ServiceSpec,
    TaskSpec,
    TaskState,
    UpdateConfig,
    Version,
)
from shoal.store import MemoryStore, NullBackend


def spec(mode: ServiceMode, name: str = "job", **kw: object) -> ServiceSpec:
    return ServiceSpec(Name=name, TaskTemplate=TaskSpec(ContainerSpec=ContainerSpec(Image="busybox")), Mode=mode, **kw)


@pytest.fixture
def store() -> MemoryStore:
    return MemoryStore(NullBackend())


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        (ReplicatedJob(), (1, 1)),
        (ReplicatedJob(MaxConcurrent=3), (3, 3)),
        (ReplicatedJob(TotalCompletions=5), (1, 5)),
        (ReplicatedJob(MaxConcurrent=2, TotalCompletions=7), (2, 7)),
    ],
)
def test_replicated_job_defaults_are_moby_s(store: MemoryStore, given: ReplicatedJob,
                                            expected: tuple[int, int]) -> None:
    svc = controlapi.create_service(store, spec(ServiceMode(ReplicatedJob=given)))
    job = store.get("service", svc.ID).Spec.Mode.ReplicatedJob
    assert (job.MaxConcurrent, job.TotalCompletions) == expected


def test_jobs_get_a_job_status_services_do_not(store: MemoryStore) -> None:
    for i, mode in enumerate((ServiceMode(ReplicatedJob=ReplicatedJob()), ServiceMode(GlobalJob=GlobalJob()))):
        svc = controlapi.create_service(store, spec(mode, name=f"job{i}"))
        assert svc.JobStatus is not None
        assert svc.JobStatus.JobIteration.Index == 0 and svc.JobStatus.LastExecution
    plain = controlapi.create_service(store, spec(ServiceMode(Replicated=ReplicatedService(1)), name="web"))
    assert plain.JobStatus is None


def test_every_update_starts_a_new_run_rollback_too(store: MemoryStore) -> None:
    svc = controlapi.create_service(store, spec(ServiceMode(ReplicatedJob=ReplicatedJob(MaxConcurrent=2))))
    first = svc.JobStatus.LastExecution
    tmpl = msgspec.structs.replace(svc.Spec.TaskTemplate, ForceUpdate=1)
    forced = msgspec.structs.replace(svc.Spec, TaskTemplate=tmpl)
    up = controlapi.update_service(store, svc.ID, svc.Version.Index, forced)
    assert up.JobStatus.JobIteration.Index == 1 and up.JobStatus.LastExecution >= first
    back = controlapi.update_service(store, svc.ID, up.Version.Index, up.Spec, rollback="previous")
    assert back.JobStatus.JobIteration.Index == 2
    assert store.get("service", svc.ID).JobStatus.JobIteration.Index == 2


def test_a_job_may_not_have_an_update_config_and_nothing_is_stored(store: MemoryStore) -> None:
    bad = spec(ServiceMode(GlobalJob=GlobalJob()), UpdateConfig=UpdateConfig(Parallelism=1))
    with pytest.raises(InvalidArgument, match="Jobs may not have an update config"):
        controlapi.create_service(store, bad)
    assert store.count("service") == 0


def test_mode_cannot_change_between_job_and_service(store: MemoryStore) -> None:
    svc = controlapi.create_service(store, spec(ServiceMode(ReplicatedJob=ReplicatedJob())))
    with pytest.raises(InvalidArgument):
        controlapi.update_service(store, svc.ID, svc.Version.Index,
                                  spec(ServiceMode(Replicated=ReplicatedService(1))))
    assert store.get("service", svc.ID).JobStatus.JobIteration.Index == 0


def test_job_status_counts_the_current_run_only(store: MemoryStore) -> None:
    svc = controlapi.create_service(store, spec(ServiceMode(ReplicatedJob=ReplicatedJob(MaxConcurrent=3,
                                                                                       TotalCompletions=5))))
    for state in (TaskState.COMPLETE, TaskState.COMPLETE, TaskState.RUNNING):
        _job_task(store, svc.ID, 0, state)
    _job_task(store, svc.ID, 1, TaskState.RUNNING)  # a later run's task does not count now
    status = controlapi.service_status(store, store.get("service", svc.ID))
    assert (status.RunningTasks, status.DesiredTasks, status.CompletedTasks) == (1, 3, 2)
    listed = controlapi.list_services(store, {"mode": ["replicated-job"]}, status=True)
    assert [s.ServiceStatus.CompletedTasks for s in listed] == [2]


def _job_task(store: MemoryStore, sid: str, it: int, state: TaskState) -> None:
    svc = store.get("service", sid)
    t = add_task(store, svc, slot=len(store.tasks_of_service(sid)) + 1, node_id="n1", state=state)
    with store.tx() as tx:
        tx.update("task", msgspec.structs.replace(store.get("task", t.ID), JobIteration=Version(it)))
