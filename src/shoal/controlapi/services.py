"""Services: create, update (and manual rollback), remove, list with filters and status."""

from __future__ import annotations

import msgspec

from shoal.controlapi.errors import already_exists, invalid, precondition, unimplemented
from shoal.controlapi.filters import Filters, match_labels, match_prefix
from shoal.controlapi.lbroute import check_routing_conflicts
from shoal.controlapi.names import random_name
from shoal.controlapi.networks import resolve_service_networks
from shoal.controlapi.ports import allocate_endpoint
from shoal.controlapi.resolve import get_service
from shoal.controlapi.secrets import resolve_service_references
from shoal.controlapi.validate import check_reservation_fits, mode_kind, validate_service_spec
from shoal.errors import InvalidArgument
from shoal.ids import new_id
from shoal.models import (
    SECOND,
    JobStatus,
    Placement,
    ResourceRequirements,
    RestartCondition,
    RestartPolicy,
    Service,
    ServiceSpec,
    ServiceStatus,
    TaskSpec,
    TaskState,
    UpdateConfig,
    UpdateStatus,
    Version,
    now_ts,
)
from shoal.store import MemoryStore

SERVICE_FILTERS = ("id", "label", "mode", "name", "runtime")


def _resolve(store: MemoryStore, spec: ServiceSpec) -> ServiceSpec:
    """Networks, secrets and configs named in the spec → their IDs (404 for an unknown one)."""
    return resolve_service_references(store, resolve_service_networks(store, spec))


def create_service(store: MemoryStore, spec: ServiceSpec) -> Service:
    """Validate, allocate ports and store a new service. Nothing is written if any check fails."""
    if not spec.Name:
        # Docker names an anonymous service itself (moby's spec conversion does it).
        name = random_name()
        while store.service_by_name(name) is not None:
            name = random_name()
        spec = msgspec.structs.replace(spec, Name=name)
    spec = _resolve(store, validate_service_spec(spec))
    check_reservation_fits(spec, store.list("node"), store.cluster())
    if store.service_by_name(spec.Name) is not None:
        raise already_exists(f"name conflicts with an existing object: service {spec.Name} already exists")
    check_routing_conflicts(store, [spec])
    endpoint = allocate_endpoint(store, spec, None)
    svc = Service(ID=new_id(), Version=Version(), CreatedAt="", UpdatedAt="", Spec=spec, Endpoint=endpoint)
    if mode_kind(spec).endswith("-job"):
        svc.JobStatus = JobStatus(JobIteration=Version(0), LastExecution=now_ts())  # the first run starts now
    with store.tx() as tx:
        tx.create("service", svc)
    return svc


def update_service(
    store: MemoryStore, ref: str, version: int, spec: ServiceSpec, rollback: str | None = None,
    *, job_started_at: str | None = None,
) -> Service:
    """Replace a service's spec (the old one becomes PreviousSpec), or swap back with rollback=previous.

    ``version`` must be the service's current ``Version.Index``: a stale writer gets 409.
    """
    cur = get_service(store, ref)
    if rollback == "previous":
        if cur.PreviousSpec is None:
            raise precondition(f"service {cur.ID} does not have a previous spec")
        new_spec, prev_spec = cur.PreviousSpec, cur.Spec
        status: UpdateStatus | None = UpdateStatus(
            State="rollback_started", Message="manually requested rollback", StartedAt=now_ts()
        )
    elif rollback:
        raise InvalidArgument(f"unrecognized rollback option {rollback}")
    else:
        new_spec = _resolve(store, validate_service_spec(spec))
        check_reservation_fits(new_spec, store.list("node"), store.cluster())
        if new_spec.Name != cur.Spec.Name:
            raise unimplemented("renaming services is not supported")
        if mode_kind(new_spec) != mode_kind(cur.Spec):
            raise invalid("service mode change is not allowed")
        check_routing_conflicts(store, [new_spec])
        prev_spec, status = cur.Spec, None
        new_spec = _same_template_kept(new_spec, cur.Spec)
    endpoint = allocate_endpoint(store, new_spec, cur)
    new = msgspec.structs.replace(
        cur, Spec=new_spec, PreviousSpec=prev_spec, Endpoint=endpoint, UpdateStatus=status
    )
    if cur.JobStatus is not None:
        # Swarm: every update of a job (a --force, a scale, the cron scheduler's trigger) is a new run.
        # ``job_started_at``: the cron scheduler's own clock, so its bookkeeping needs no second write.
        new.JobStatus = JobStatus(JobIteration=Version(cur.JobStatus.JobIteration.Index + 1),
                                  LastExecution=job_started_at or now_ts())
    with store.tx() as tx:
        tx.update("service", new, expected_version=version)
    return new


def remove_service(store: MemoryStore, ref: str) -> None:
    """Delete a service; the orchestrator then shuts its tasks down (DesiredState=REMOVE)."""
    svc = get_service(store, ref)
    with store.tx() as tx:
        tx.delete("service", svc.ID)


def service_status(store: MemoryStore, svc: Service) -> ServiceStatus:
    """Running/desired/completed counts, from the store's per-service counters (no task walk)."""
    if svc.JobStatus is not None:
        return _job_status(store, svc)
    running, completed, desired_running = store.task_counts(svc.ID)
    mode = svc.Spec.Mode
    if mode is not None and mode.Replicated is not None:
        desired = mode.Replicated.Replicas or 0
    elif mode is not None and mode.ReplicatedJob is not None:
        total = mode.ReplicatedJob.TotalCompletions or 0
        desired = min(mode.ReplicatedJob.MaxConcurrent or 0, max(total - completed, 0))
    else:
        # Global services (and jobs): one task per eligible node, and the orchestrator keeps exactly
        # those tasks' desired state at running.
        desired = desired_running
    return ServiceStatus(RunningTasks=running, DesiredTasks=desired, CompletedTasks=completed)


def _job_status(store: MemoryStore, svc: Service) -> ServiceStatus:
    """A job's counts cover its current run only (swarmkit's ListServiceStatuses): running and
    completed tasks of this JobIteration; desired is MaxConcurrent for a replicated job, and for a
    global job the tasks of this run still to complete (the CLI shows desired+completed as the total)."""
    assert svc.JobStatus is not None
    it = svc.JobStatus.JobIteration.Index
    running = completed = pending = 0
    for t in store.tasks_of_service(svc.ID):
        if t.JobIteration is None or t.JobIteration.Index != it:
            continue
        state = t.Status.State
        running += state is TaskState.RUNNING
        completed += state is TaskState.COMPLETE
        pending += state is not TaskState.COMPLETE and t.DesiredState.order <= TaskState.RUNNING.order
    job = svc.Spec.Mode.ReplicatedJob if svc.Spec.Mode is not None else None
    desired = (1 if job.MaxConcurrent is None else job.MaxConcurrent) if job is not None else pending
    return ServiceStatus(RunningTasks=running, DesiredTasks=desired, CompletedTasks=completed)


def list_services(store: MemoryStore, filters: Filters | None = None, status: bool = False) -> list[Service]:
    """Services matching Docker's filters (id and name are prefixes); with ``status``, counts too."""
    filters = filters or {}
    names = filters.get("name")
    ids, labels, modes = filters.get("id"), filters.get("label"), filters.get("mode")
    runtimes = filters.get("runtime")
    out: list[Service] = []
    for s in store.list("service"):
        if ids and not match_prefix(s.ID, ids):
            continue
        if names and not match_prefix(s.Spec.Name, names):
            continue
        if labels and not match_labels(s.Spec.Labels, labels):
            continue
        if modes and mode_kind(s.Spec) not in modes:
            continue
        if runtimes and (s.Spec.TaskTemplate.Runtime or "container") not in runtimes:
            continue
        out.append(msgspec.structs.replace(s, ServiceStatus=service_status(store, s)) if status else s)
    return out


_DEFAULT_UPDATE = UpdateConfig(Parallelism=1, FailureAction="pause", Monitor=5 * SECOND, Order="stop-first")


def _update_defaults(cfg: UpdateConfig | None) -> UpdateConfig:
    if cfg is None:
        return _DEFAULT_UPDATE
    return cfg if cfg.Monitor else msgspec.structs.replace(cfg, Monitor=_DEFAULT_UPDATE.Monitor)


def _same_template_kept(new: ServiceSpec, cur: ServiceSpec) -> ServiceSpec:
    """An update whose task template differs from the current one only by spelling out defaults
    keeps the current template, so no task is taken for out of date: the Docker SDK's ``scale()``
    sends back the spec it read with ``insertDefaults=true``, and a scale must not roll every task."""
    if new.TaskTemplate == cur.TaskTemplate:
        return new
    if _template_defaults(new.TaskTemplate) != _template_defaults(cur.TaskTemplate):
        return new
    return msgspec.structs.replace(new, TaskTemplate=cur.TaskTemplate)


def insert_defaults(spec: ServiceSpec) -> ServiceSpec:
    """``GET /services/{id}?insertDefaults=true``: what swarmkit's defaults.InterpolateService fills
    in where the spec is silent — the values the service runs with anyway (`docker service inspect`
    uses it to show them, and `service update --rollback` to compare)."""
    return msgspec.structs.replace(spec, TaskTemplate=_template_defaults(spec.TaskTemplate),
                                   UpdateConfig=_update_defaults(spec.UpdateConfig),
                                   RollbackConfig=_update_defaults(spec.RollbackConfig))


def _template_defaults(tt: TaskSpec) -> TaskSpec:
    cs = tt.ContainerSpec
    if cs is not None:
        cs = msgspec.structs.replace(
            cs, StopGracePeriod=cs.StopGracePeriod if cs.StopGracePeriod is not None else 10 * SECOND,
            DNSConfig=cs.DNSConfig if cs.DNSConfig is not None else {})
    rp = tt.RestartPolicy
    if rp is None:
        rp = RestartPolicy(Condition=RestartCondition.ANY, Delay=5 * SECOND, MaxAttempts=0)
    elif rp.Delay is None:
        rp = msgspec.structs.replace(rp, Delay=5 * SECOND)
    return msgspec.structs.replace(tt, ContainerSpec=cs, RestartPolicy=rp,
                                   Resources=tt.Resources if tt.Resources is not None else ResourceRequirements(),
                                   Placement=tt.Placement if tt.Placement is not None else Placement())
