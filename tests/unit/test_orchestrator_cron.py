"""The cron scheduler against a real MemoryStore with a fake clock: times (DST included), the
concurrency policies, missed runs after an outage, history, and the schedule labels' checks."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import msgspec
import pytest

from shoal.controlapi.extensions import check_schedule_labels
from shoal.cronexpr import parse_cron
from shoal.errors import InvalidArgument
from shoal.extensions import parse_schedule
from shoal.ids import new_id
from shoal.models import (
    ContainerSpec,
    JobStatus,
    ReplicatedJob,
    Service,
    ServiceMode,
    ServiceSpec,
    Task,
    TaskSpec,
    TaskState,
    TaskStatus,
    Version,
)
from shoal.orchestrator.cron import CronScheduler, FastClock, clock_from_env, format_ts
from shoal.orchestrator.testutils import make_store, set_task_state
from shoal.store import MemoryStore

PARIS = ZoneInfo("Europe/Paris")


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


class FakeJobs:
    """Plays controlapi.update_service + the jobs orchestrator: each run is a new JobIteration with
    ``width`` pending tasks (desired state complete), as a Swarm replicated job's iteration."""

    def __init__(self, clock: Clock, width: int = 2) -> None:
        self.clock = clock
        self.width = width
        self.runs: list[float] = []
        self.fail = False

    def __call__(self, store: MemoryStore, svc: Service, started_at: str) -> None:
        if self.fail:
            raise RuntimeError("update out of sequence")
        self.runs.append(self.clock())
        it = (svc.JobStatus.JobIteration.Index if svc.JobStatus else 0) + 1
        tt = svc.Spec.TaskTemplate
        spec = msgspec.structs.replace(svc.Spec, TaskTemplate=msgspec.structs.replace(tt, ForceUpdate=it))
        with store.tx() as tx:
            js = JobStatus(JobIteration=Version(it), LastExecution=started_at)
            tx.update("service", msgspec.structs.replace(svc, Spec=spec, JobStatus=js))
            for slot in range(self.width):
                tx.create("task", Task(
                    ID=new_id(), Version=Version(), CreatedAt="", UpdatedAt="", Spec=spec.TaskTemplate,
                    ServiceID=svc.ID, Status=TaskStatus(State=TaskState.PENDING), DesiredState=TaskState.COMPLETE,
                    Slot=slot, JobIteration=Version(it),
                ))


def ts(*args: int, tz: ZoneInfo = PARIS) -> float:
    return dt.datetime(*args, tzinfo=tz).timestamp()


def make_job(store: MemoryStore, labels: dict[str, str], *, created: float, last: float | None = None) -> Service:
    spec = ServiceSpec(
        Name="backup", Labels=labels,
        TaskTemplate=TaskSpec(ContainerSpec=ContainerSpec(Image="busybox:latest")),
        Mode=ServiceMode(ReplicatedJob=ReplicatedJob(MaxConcurrent=2, TotalCompletions=2)),
    )
    svc = Service(ID=new_id(), Version=Version(), CreatedAt=format_ts(created), UpdatedAt="", Spec=spec,
                  JobStatus=JobStatus(LastExecution=format_ts(last)) if last is not None else None)
    with store.tx() as tx:
        tx.create("service", svc)
    return svc


class Rig:
    """A scheduler driven by hand: ``advance`` moves the fake clock and runs a pass."""

    def __init__(self, labels: dict[str, str], start: float, *, last: float | None = None) -> None:
        self.store = make_store()
        self.clock = Clock(start)
        self.jobs = FakeJobs(self.clock)
        self.svc = make_job(self.store, labels, created=start - 1 if last is None else last - 3600, last=last)
        self.watch = self.store.watch("service", "task")
        self.sched = CronScheduler(self.store, clock=self.clock, trigger=self.jobs)
        self.sched.reconcile_all()
        self.pump()

    def pump(self) -> None:
        self.sched.handle(self.watch.drain())

    def advance(self, to: float) -> None:
        self.clock.t = to
        self.sched.tick()
        self.pump()

    def run_until(self, end: float) -> None:
        """Jump from one due time to the next until ``end`` (years of schedule in milliseconds)."""
        while (nxt := self.entry.next_at) <= end:
            self.advance(nxt)
            self.finish_all()

    @property
    def entry(self):
        return self.sched.entries[self.svc.ID]

    def tasks(self) -> list[Task]:
        return self.store.tasks_of_service(self.svc.ID)

    def finish_all(self, state: TaskState = TaskState.COMPLETE) -> None:
        live = [t.ID for t in self.tasks() if t.Status.State.order <= TaskState.RUNNING.order]
        if live:
            set_task_state(self.store, live, state)
        self.pump()

    def local_runs(self) -> list[str]:
        return [dt.datetime.fromtimestamp(r, PARIS).strftime("%m-%d %H:%M%z") for r in self.jobs.runs]


# --------------------------------------------------------------------------- times


def test_daily_at_fixed_time_across_both_dst_changes_in_paris() -> None:
    rig = Rig({"shoal.schedule": "30 2 * * *", "shoal.schedule.timezone": "Europe/Paris"}, ts(2026, 3, 27, 12))
    rig.run_until(ts(2026, 3, 31, 12))
    # 29 March: 02:30 does not exist (02:00 -> 03:00); the run happens at the jump, as cron does.
    assert rig.local_runs() == ["03-28 02:30+0100", "03-29 03:00+0200", "03-30 02:30+0200", "03-31 02:30+0200"]
    rig.jobs.runs.clear()
    rig.advance(ts(2026, 10, 24, 12))  # a long gap: one (missed) run, then on schedule again
    rig.finish_all()
    rig.jobs.runs.clear()
    rig.run_until(ts(2026, 10, 27, 12))
    # 25 October: 02:30 happens twice (03:00 -> 02:00); a fixed-hour job runs once.
    assert rig.local_runs() == ["10-25 02:30+0200", "10-26 02:30+0100", "10-27 02:30+0100"]


def test_hourly_runs_at_every_real_hour_when_the_clock_goes_back() -> None:
    rig = Rig({"shoal.schedule": "0 * * * *", "shoal.schedule.timezone": "Europe/Paris"},
              ts(2026, 10, 25, 0, 30))
    rig.run_until(ts(2026, 10, 25, 4, 30))
    assert rig.local_runs() == ["10-25 01:00+0200", "10-25 02:00+0200", "10-25 02:00+0100",
                                "10-25 03:00+0100", "10-25 04:00+0100"]
    assert all(b - a == 3600 for a, b in zip(rig.jobs.runs, rig.jobs.runs[1:], strict=False))


def test_every_five_minutes_in_utc_and_last_execution_recorded() -> None:
    start = ts(2026, 6, 1, 10, 1, tz=ZoneInfo("UTC"))
    rig = Rig({"shoal.schedule": "*/5 * * * *"}, start)
    rig.advance(start + 3 * 60)
    assert rig.jobs.runs == []
    rig.advance(start + 4 * 60)  # 10:05
    assert rig.jobs.runs == [start + 240]
    svc = rig.store.get("service", rig.svc.ID)
    assert svc.JobStatus.LastExecution == format_ts(start + 240)
    assert svc.JobStatus.JobIteration.Index == 1
    assert rig.entry.next_at == start + 540


# --------------------------------------------------------------------------- concurrency


def test_forbid_skips_a_run_while_the_previous_one_runs() -> None:
    start = ts(2026, 6, 1, 10, 0, 30)
    rig = Rig({"shoal.schedule": "* * * * *", "shoal.schedule.concurrency": "forbid"}, start)
    rig.advance(start + 30)
    assert len(rig.jobs.runs) == 1
    set_task_state(rig.store, [t.ID for t in rig.tasks()], TaskState.RUNNING)
    rig.pump()
    rig.advance(start + 90)
    assert len(rig.jobs.runs) == 1 and rig.entry.last_outcome.startswith("skipped")
    rig.finish_all()
    rig.advance(start + 150)
    assert len(rig.jobs.runs) == 2 and rig.entry.last_outcome == "started"


async def test_replace_stops_the_running_iteration_and_starts_a_new_one() -> None:
    """With the real control API and job orchestrator: the new run (one service write, stamped
    with the scheduler's clock) makes the job orchestrator stop what still runs of the old one."""
    from shoal.controlapi.services import create_service
    from shoal.orchestrator.jobs import JobOrchestrator
    from shoal.orchestrator.testutils import make_node, running, wait_for
    from shoal.scheduler import Scheduler

    store = make_store()
    make_node(store, "n1")
    svc = create_service(store, ServiceSpec(
        Name="minutely", Labels={"shoal.schedule": "* * * * *", "shoal.schedule.concurrency": "replace"},
        TaskTemplate=TaskSpec(ContainerSpec=ContainerSpec(Image="busybox:latest")),
        Mode=ServiceMode(ReplicatedJob=ReplicatedJob(MaxConcurrent=2, TotalCompletions=2)),
    ))
    clock = Clock(ts(2026, 6, 1, 10, 0, 30))
    sched = CronScheduler(store, clock=clock)

    def of_run(it: int) -> list[Task]:
        return [t for t in store.tasks_of_service(svc.ID) if t.JobIteration and t.JobIteration.Index == it]

    async with running(JobOrchestrator(store), Scheduler(store)):
        sched.reconcile_all()
        clock.t = sched.entries[svc.ID].next_at + 1
        sched.tick()
        await wait_for(lambda: len(of_run(1)) == 2 and all(t.NodeID for t in of_run(1)), what="first run")
        set_task_state(store, [t.ID for t in of_run(1)], TaskState.RUNNING)
        writes = store.watch("service")
        clock.t = sched.entries[svc.ID].next_at + 1
        sched.tick()
        assert len(writes.drain()) == 1  # the run and its LastExecution: one write
        writes.close()
        assert sched.entries[svc.ID].last_outcome == "started (replaced the previous run)"
        await wait_for(lambda: all(t.DesiredState is TaskState.SHUTDOWN for t in of_run(1)), what="old run stopped")
        await wait_for(lambda: len(of_run(2)) == 2, what="second run")
        assert store.get("service", svc.ID).JobStatus.LastExecution == format_ts(clock.t)


def test_allow_never_kills_nor_skips_the_run_waits_for_the_previous_one() -> None:
    start = ts(2026, 6, 1, 10, 0, 30)
    rig = Rig({"shoal.schedule": "* * * * *", "shoal.schedule.concurrency": "allow"}, start)
    rig.advance(start + 30)
    first = [t.ID for t in rig.tasks()]
    set_task_state(rig.store, first, TaskState.RUNNING)
    rig.pump()
    rig.advance(start + 90)
    rig.advance(start + 150)  # a second due time while waiting joins the waiting run
    assert len(rig.jobs.runs) == 1 and rig.entry.waiting
    assert all(rig.store.get("task", i).DesiredState is TaskState.COMPLETE for i in first)
    set_task_state(rig.store, first[:1], TaskState.COMPLETE)
    rig.pump()
    assert len(rig.jobs.runs) == 1  # one task of the previous run still runs
    set_task_state(rig.store, first[1:], TaskState.FAILED)
    rig.pump()
    assert rig.jobs.runs == [start + 30, start + 150] and not rig.entry.waiting


# --------------------------------------------------------------------------- missed runs


@pytest.mark.parametrize(("policy", "runs"), [("run-once", 1), ("skip", 0)])
def test_runs_missed_during_a_manager_outage(policy: str, runs: int) -> None:
    last = ts(2026, 6, 1, 10, 0)
    # The manager comes back at 13:20: 11:00, 12:00 and 13:00 were missed.
    rig = Rig({"shoal.schedule": "@hourly", "shoal.schedule.missed": policy}, ts(2026, 6, 1, 13, 20), last=last)
    assert len(rig.jobs.runs) == runs
    assert rig.entry.last_outcome == ("started (missed run)" if runs else "missed")
    assert rig.entry.next_at == ts(2026, 6, 1, 14, 0)
    rig.finish_all()
    rig.advance(ts(2026, 6, 1, 14, 0))
    assert len(rig.jobs.runs) == runs + 1


def test_a_short_outage_is_not_a_missed_run() -> None:
    # Back 20 s after 11:00: that run is late, not missed, so even "skip" runs it.
    rig = Rig({"shoal.schedule": "@hourly", "shoal.schedule.missed": "skip"}, ts(2026, 6, 1, 11, 0, 20),
              last=ts(2026, 6, 1, 10, 0))
    assert len(rig.jobs.runs) == 1 and rig.entry.last_outcome == "started"


def test_restart_without_a_missed_time_waits_for_the_next() -> None:
    rig = Rig({"shoal.schedule": "@hourly"}, ts(2026, 6, 1, 10, 30), last=ts(2026, 6, 1, 10, 0, 1))
    assert rig.jobs.runs == [] and rig.entry.next_at == ts(2026, 6, 1, 11, 0)


def test_the_last_run_survives_a_restart_through_the_service() -> None:
    start = ts(2026, 6, 1, 10, 59)
    rig = Rig({"shoal.schedule": "@hourly"}, start)
    rig.advance(ts(2026, 6, 1, 11, 0))
    rig.finish_all()
    rig.sched.stopped()
    # A new leader at 11:30 (same store) knows 11:00 ran, so nothing is due until 12:00.
    again = CronScheduler(rig.store, clock=Clock(ts(2026, 6, 1, 11, 30)), trigger=rig.jobs)
    again.reconcile_all()
    assert len(rig.jobs.runs) == 1 and again.entries[rig.svc.ID].next_at == ts(2026, 6, 1, 12, 0)


# --------------------------------------------------------------------------- history and upkeep


def test_history_keeps_the_newest_finished_iterations() -> None:
    start = ts(2026, 6, 1, 10, 0, 30)
    rig = Rig({"shoal.schedule": "* * * * *", "shoal.schedule.history": "2"}, start)
    rig.run_until(start + 5 * 60)
    assert len(rig.jobs.runs) == 5
    assert sorted({t.JobIteration.Index for t in rig.tasks()}) == [4, 5]
    rig.advance(start + 6 * 60)  # iteration 6 runs: 2 finished ones are kept beside it
    assert sorted({t.JobIteration.Index for t in rig.tasks()}) == [4, 5, 6]


def test_history_zero_keeps_only_a_running_iteration() -> None:
    start = ts(2026, 6, 1, 10, 0, 30)
    rig = Rig({"shoal.schedule": "* * * * *", "shoal.schedule.history": "0"}, start)
    rig.advance(start + 30)
    assert len(rig.tasks()) == 2
    rig.finish_all()
    assert rig.tasks() == []


def test_a_changed_schedule_counts_from_now_and_a_removed_job_is_forgotten() -> None:
    start = ts(2026, 6, 1, 10, 0, 30)
    rig = Rig({"shoal.schedule": "@daily"}, start)
    assert rig.entry.next_at == ts(2026, 6, 2, 0, 0, tz=ZoneInfo("UTC"))
    svc = rig.store.get("service", rig.svc.ID)
    with rig.store.tx() as tx:
        tx.update("service", msgspec.structs.replace(
            svc, Spec=msgspec.structs.replace(svc.Spec, Labels={"shoal.schedule": "*/10 * * * *"})))
    rig.pump()
    assert rig.entry.next_at == start + 570
    with rig.store.tx() as tx:
        tx.delete("service", svc.ID)
    rig.pump()
    assert rig.sched.entries == {}


def test_a_failed_start_is_retried_while_on_time() -> None:
    start = ts(2026, 6, 1, 10, 0, 30)
    rig = Rig({"shoal.schedule": "* * * * *"}, start)
    rig.jobs.fail = True
    rig.advance(start + 30)
    assert rig.entry.last_outcome.startswith("failed") and rig.entry.next_at == start + 31
    rig.jobs.fail = False
    rig.advance(start + 31)
    assert rig.jobs.runs == [start + 31]


def test_services_without_a_schedule_are_ignored() -> None:
    store = make_store()
    spec = ServiceSpec(Name="web", TaskTemplate=TaskSpec(ContainerSpec=ContainerSpec(Image="nginx")))
    with store.tx() as tx:
        tx.create("service", Service(ID=new_id(), Version=Version(), CreatedAt="", UpdatedAt="", Spec=spec))
    sched = CronScheduler(store, clock=Clock(0.0), trigger=FakeJobs(Clock(0.0)))
    sched.reconcile_all()
    assert sched.entries == {}


def test_test_clock_from_the_environment() -> None:
    import time

    assert clock_from_env({}) is time.time
    fast = clock_from_env({"SHOAL_TEST_CRON_SPEED": "30"})
    assert isinstance(fast, FastClock) and fast.speed == 30
    with pytest.raises(ValueError):
        clock_from_env({"SHOAL_TEST_CRON_SPEED": "0"})


# --------------------------------------------------------------------------- labels


def test_cron_syntax() -> None:
    assert parse_cron("*/5  *  * * *") == "*/5 * * * *"
    assert parse_cron("@DAILY") == "@daily"
    assert parse_cron("0 9 * * mon-fri") == "0 9 * * mon-fri"
    for bad, words in [("61 * * * *", "invalid cron expression"), ("* * * *", "has 4 fields"),
                       ("* * * * * *", "has 6 fields"), ("@reboot", "unknown cron macro"), ("", "empty"),
                       ("0 0 30 2 *", "0 0 30 2 *"), ("a b c d e", "invalid")]:
        with pytest.raises(ValueError, match=words):
            parse_cron(bad)


def test_schedule_labels_defaults_and_errors() -> None:
    s = parse_schedule({"shoal.schedule": "@hourly"})
    assert (s.concurrency, s.history, s.missed, str(s.tz)) == ("forbid", 3, "run-once", "UTC")
    assert parse_schedule({"other": "x"}) is None
    for labels, words in [
        ({"shoal.schedule": "@hourly", "shoal.schedule.timezone": "Mars/Olympus"}, "unknown time zone"),
        ({"shoal.schedule": "@hourly", "shoal.schedule.concurrency": "queue"}, "expected one of allow"),
        ({"shoal.schedule": "@hourly", "shoal.schedule.missed": "all"}, "expected one of run-once"),
        ({"shoal.schedule": "@hourly", "shoal.schedule.history": "-1"}, "expected 0 to"),
        ({"shoal.schedule": "@hourly", "shoal.schedule.history": "x"}, "whole number"),
        ({"shoal.schedule": "@hourly", "shoal.schedule.tz": "UTC"}, "unknown schedule label"),
        ({"shoal.schedule.timezone": "UTC"}, "needs a shoal.schedule label"),
    ]:
        with pytest.raises(ValueError, match=words):
            parse_schedule(labels)


def test_check_schedule_labels_is_a_400_and_needs_a_job() -> None:
    job = ServiceMode(ReplicatedJob=ReplicatedJob(MaxConcurrent=1, TotalCompletions=1))
    ok = ServiceSpec(Name="j", Labels={"shoal.schedule": "@hourly"}, Mode=job)
    check_schedule_labels(ok)
    with pytest.raises(InvalidArgument, match="invalid cron expression") as e:
        check_schedule_labels(msgspec.structs.replace(ok, Labels={"shoal.schedule": "99 * * * *"}))
    assert e.value.status == 400 and "label shoal.schedule: invalid cron expression '99 * * * *'" in str(e.value)
    with pytest.raises(InvalidArgument, match=r"label shoal\.schedule\.timezone: unknown time zone"):
        check_schedule_labels(msgspec.structs.replace(
            ok, Labels={"shoal.schedule": "@hourly", "shoal.schedule.timezone": "Mars/Olympus"}))
    with pytest.raises(InvalidArgument, match="needs a job mode"):
        check_schedule_labels(msgspec.structs.replace(ok, Mode=None))



def test_the_real_trigger_is_a_forced_update_through_the_control_api() -> None:
    import time

    from shoal.controlapi.services import create_service

    store = make_store()
    spec = ServiceSpec(
        Name="minutely", Labels={"shoal.schedule": "* * * * *"},
        TaskTemplate=TaskSpec(ContainerSpec=ContainerSpec(Image="busybox:latest")),
        Mode=ServiceMode(ReplicatedJob=ReplicatedJob(MaxConcurrent=1, TotalCompletions=1)),
    )
    svc = create_service(store, spec)
    clock = Clock(time.time())
    sched = CronScheduler(store, clock=clock)  # default trigger: controlapi.update_service
    sched.reconcile_all()
    clock.t = sched.entries[svc.ID].next_at + 5
    sched.tick()
    after = store.get("service", svc.ID)
    assert after.Spec.TaskTemplate.ForceUpdate == 1
    assert after.JobStatus.JobIteration.Index == svc.JobStatus.JobIteration.Index + 1
    assert after.JobStatus.LastExecution == format_ts(clock.t)
