"""Write-behind persistence: order, merging, failures retried with back-off, bad objects and rows.

The backend here is the real SqliteBackend; faults are injected by wrapping its ``persist`` (a disk
that fails N times) — the integration test test_store_faults.py fills a real (tmpfs) disk.
"""

from __future__ import annotations

import asyncio
import sqlite3
from typing import Any

import msgspec
import pytest

from shoal.errors import StoreUnavailable
from shoal.models import Service, ServiceSpec, Task, TaskSpec, TaskState, TaskStatus, Version
from shoal.orchestrator.replicated import ReplicatedOrchestrator
from shoal.orchestrator.testutils import make_node, make_service, running, wait_for
from shoal.scheduler.scheduler import Scheduler
from shoal.store import MemoryStore, SqliteBackend
from shoal.store.writer import WriteBehind


def service(sid: str, name: str) -> Service:
    return Service(ID=sid, Version=Version(), CreatedAt="", UpdatedAt="", Spec=ServiceSpec(Name=name))


def task(tid: str, sid: str) -> Task:
    return Task(ID=tid, Version=Version(), CreatedAt="", UpdatedAt="", Spec=TaskSpec(), ServiceID=sid,
                Status=TaskStatus(State=TaskState.PENDING), DesiredState=TaskState.RUNNING)


class FlakyDisk(SqliteBackend):
    """The real sqlite backend, whose next ``failures`` persists fail as a full disk would."""

    def __init__(self, path: Any, failures: int = 0, delay_s: float = 0.0) -> None:
        super().__init__(path)
        self.failures = failures
        self.delay_s = delay_s
        self.calls: list[int] = []  # revision of each successful persist

    async def persist(self, revision: int, puts: list, deletes: list) -> list:
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if self.failures:
            self.failures -= 1
            raise sqlite3.OperationalError("database or disk is full")
        out = await super().persist(revision, puts, deletes)
        self.calls.append(revision)
        return out


async def test_commits_are_applied_at_once_and_durable_in_order(tmp_path) -> None:
    backend = FlakyDisk(tmp_path / "s.db", delay_s=0.05)
    store = MemoryStore(backend)
    for i in range(50):
        with store.tx() as tx:
            tx.create("task", task(f"t{i}", "s1"))
        assert store.get("task", f"t{i}") is not None  # memory first, at once
    with store.tx() as tx:
        tx.delete("task", "t7")
    await store.wait_durable(within=5)
    # 51 commits while each write takes 50 ms: merged into a few transactions, not 51.
    assert len(backend.calls) < 10 and backend.calls[-1] == store.revision == 51
    await store.close()
    again = MemoryStore(SqliteBackend(tmp_path / "s.db"))
    assert again.revision == 51 and again.count("task") == 49 and again.get("task", "t7") is None


async def test_a_failing_disk_is_retried_with_back_off_and_nothing_is_lost(tmp_path, caplog) -> None:
    backend = FlakyDisk(tmp_path / "s.db", failures=4)
    store = MemoryStore(backend)
    with store.tx() as tx:
        tx.create("service", service("s1", "web"))
    with pytest.raises(StoreUnavailable, match="database or disk is full"):
        await store.wait_durable(within=0.2)
    # While the disk fails, writes from the API are refused with the reason ...
    with pytest.raises(StoreUnavailable, match=r"not accepting writes.*disk is full"):
        store.writer.check_writable()
    # ... and the components' own commits go on in memory, queued behind the failed one.
    with store.tx() as tx:
        tx.create("task", task("t1", "s1"))
    await store.wait_durable(within=5)  # 0.1 + 0.2 + 0.4 + 0.8 s of back-off, then success
    assert store.writer.error is None
    store.writer.check_writable()
    assert backend.calls == [2]  # both commits in one transaction once the disk worked again
    assert sum("retrying with back-off" in r.message for r in caplog.records) == 1  # logged once, not per try
    await store.close()
    again = MemoryStore(SqliteBackend(tmp_path / "s.db"))
    assert again.get("service", "s1") is not None and again.get("task", "t1") is not None


async def test_one_object_that_cannot_be_encoded_does_not_block_its_batch(tmp_path) -> None:
    store = MemoryStore(SqliteBackend(tmp_path / "s.db"))
    bad = service("s2", "bad")
    bad.Spec.Labels = {"x": object()}  # type: ignore[dict-item]  # a component's bug
    with store.tx() as tx:
        tx.create("service", service("s1", "good"))
        tx.create("service", bad)
    await store.wait_durable(within=5)
    assert [(p.kind, p.id) for p in store.problems] == [("service", "s2")]
    assert "cannot be encoded" in store.problems[0].error
    await store.close()
    again = MemoryStore(SqliteBackend(tmp_path / "s.db"))
    assert again.get("service", "s1") is not None and again.get("service", "s2") is None


async def test_rows_that_cannot_be_decoded_are_reported_and_the_rest_loads(tmp_path) -> None:
    store = MemoryStore(SqliteBackend(tmp_path / "s.db"))
    with store.tx() as tx:
        tx.create("service", service("s1", "web"))
        tx.create("task", task("t1", "s1"))
    await store.close()
    db = sqlite3.connect(tmp_path / "s.db")
    db.execute("UPDATE objects SET data=? WHERE id='t1'", (msgspec.msgpack.encode({"ID": 7}),))
    db.execute("INSERT INTO objects VALUES ('volume', 'v1', x'80')")  # a kind from a newer Shoal
    db.commit()
    db.close()
    again = MemoryStore(SqliteBackend(tmp_path / "s.db"))
    assert again.get("service", "s1") is not None and again.get("task", "t1") is None
    assert {(p.kind, p.id) for p in again.problems} == {("task", "t1"), ("volume", "v1")}
    assert "cannot be decoded" in next(p.error for p in again.problems if p.id == "t1")
    # The rows are left as they are, for a fixed Shoal or an operator to read.
    await again.close()
    rows = sqlite3.connect(tmp_path / "s.db").execute("SELECT COUNT(*) FROM objects").fetchone()
    assert rows == (3,)


async def test_close_persists_what_is_queued(tmp_path) -> None:
    store = MemoryStore(FlakyDisk(tmp_path / "s.db", delay_s=0.2))
    with store.tx() as tx:
        tx.create("service", service("s1", "web"))
    await store.close()
    assert MemoryStore(SqliteBackend(tmp_path / "s.db")).get("service", "s1") is not None


async def test_wait_returns_for_revisions_already_durable(tmp_path) -> None:
    writer = WriteBehind(SqliteBackend(tmp_path / "s.db"), revision=5)
    await asyncio.wait_for(writer.wait(3), 1)
    await asyncio.wait_for(writer.wait(), 1)


class CommitFailsOnce:
    """Makes the next scheduler commits raise (a write the store refused) ``n`` times."""

    def __init__(self, store: MemoryStore, n: int) -> None:
        self.n = n
        self.attempts = 0
        self._commit = store.commit
        store.commit = self  # type: ignore[method-assign]

    def __call__(self, tx: Any) -> Any:
        if any(k == "task" and w[1].Status.State is TaskState.ASSIGNED for (k, _), w in tx._writes.items()):
            self.attempts += 1
            if self.n:
                self.n -= 1
                raise sqlite3.OperationalError("database or disk is full")
        return self._commit(tx)


async def test_a_pass_whose_commit_failed_is_retried_with_back_off(tmp_path, caplog) -> None:
    """Before: the scheduler retried from inside its own except clause (unbounded recursion, 80 MB of
    log when the write kept failing) and an orchestrator pass that failed was never retried."""
    store = MemoryStore(SqliteBackend(tmp_path / "s.db"))
    make_node(store, "n1")
    failing = CommitFailsOnce(store, n=3)
    async with running(ReplicatedOrchestrator(store), Scheduler(store)):
        svc = make_service(store, "web", replicas=2)

        def assigned() -> bool:
            return sum(t.Status.State is TaskState.ASSIGNED for t in store.tasks_of_service(svc.ID)) == 2

        await wait_for(assigned, within=5, what="both replicas assigned after the failures")
    assert failing.attempts == 4  # three failed passes, then the retry that succeeded
    failures = [r for r in caplog.records if "reconcile pass failed" in r.message]
    assert len(failures) == 3
    await store.close()
