"""The store: versioned writes, atomic batches, indexes, watches, and durability in sqlite."""

from __future__ import annotations

import msgspec
import pytest

from shoal.errors import Conflict
from shoal.models import Service, ServiceSpec, Task, TaskSpec, TaskState, TaskStatus, Version
from shoal.store import Action, MemoryStore, NullBackend, SqliteBackend


def service(sid: str, name: str) -> Service:
    return Service(ID=sid, Version=Version(), CreatedAt="", UpdatedAt="", Spec=ServiceSpec(Name=name))


def task(tid: str, sid: str, node: str = "") -> Task:
    return Task(ID=tid, Version=Version(), CreatedAt="", UpdatedAt="", Spec=TaskSpec(), ServiceID=sid,
                Status=TaskStatus(State=TaskState.PENDING), DesiredState=TaskState.RUNNING, NodeID=node)


def test_batch_bumps_versions_and_indexes() -> None:
    store = MemoryStore(NullBackend())
    with store.tx() as tx:
        tx.create("service", service("s1", "web"))
        tx.create("task", task("t1", "s1", "n1"))
        tx.create("task", task("t2", "s1"))
    assert store.revision == 1
    assert store.get("service", "s1").Version.Index == 1
    assert store.get("service", "s1").CreatedAt
    assert store.service_by_name("web").ID == "s1"
    assert {t.ID for t in store.tasks_of_service("s1")} == {"t1", "t2"}
    assert [t.ID for t in store.tasks_on_node("n1")] == ["t1"]
    # Moving a task to another node moves it in the index.
    moved = msgspec.structs.replace(store.get("task", "t2"), NodeID="n1")
    with store.tx() as tx:
        tx.update("task", moved)
    assert {t.ID for t in store.tasks_on_node("n1")} == {"t1", "t2"}
    assert store.get("task", "t2").Version.Index == 2


def test_stale_version_is_a_conflict_and_changes_nothing() -> None:
    store = MemoryStore(NullBackend())
    with store.tx() as tx:
        tx.create("service", service("s1", "web"))
    before = store.get("service", "s1")
    renamed = msgspec.structs.replace(before, Spec=ServiceSpec(Name="other"))
    with pytest.raises(Conflict), store.tx() as tx:
        tx.create("task", task("t1", "s1"))
        tx.update("service", renamed, expected_version=before.Version.Index + 7)
    assert store.revision == 1
    assert store.get("service", "s1") is before
    assert store.get("task", "t1") is None  # the whole batch was dropped


def test_watch_sees_one_batch_per_commit() -> None:
    store = MemoryStore(NullBackend())
    w = store.watch("task")
    with store.tx() as tx:
        tx.create("service", service("s1", "web"))
        tx.create("task", task("t1", "s1"))
        tx.create("task", task("t2", "s1"))
    with store.tx() as tx:
        tx.delete("task", "t1")
    batches = [w.queue.get_nowait(), w.queue.get_nowait()]
    assert [len(b) for b in batches] == [2, 1]
    assert batches[1][0].action is Action.DELETE and batches[1][0].obj.ID == "t1"
    assert store.tasks_of_service("s1")[0].ID == "t2"
    # A late watcher can replay from a revision.
    late = store.watch("task", since=1)
    assert [e.obj.ID for e in late.drain()] == ["t1"]
    w.close()
    late.close()


async def test_sqlite_survives_a_restart(tmp_path) -> None:
    path = tmp_path / "state.db"
    store = MemoryStore(SqliteBackend(path))
    with store.tx() as tx:
        tx.create("service", service("s1", "web"))
        tx.create("task", task("t1", "s1", "n1"))
    with store.tx() as tx:
        tx.delete("task", "t1")
    await store.close()
    again = MemoryStore(SqliteBackend(path))
    assert again.revision == 2
    assert again.get("service", "s1").Spec.Name == "web"
    assert again.get("task", "t1") is None
    assert again.service_by_name("web").Version.Index == 1


async def test_wipe_forgets_everything(tmp_path) -> None:
    store = MemoryStore(SqliteBackend(tmp_path / "s.db"))
    with store.tx() as tx:
        tx.create("service", service("s1", "web"))
    await store.wipe()
    assert store.count("service") == 0
    await store.close()
    assert MemoryStore(SqliteBackend(tmp_path / "s.db")).count("service") == 0


def test_task_counters_follow_every_write() -> None:
    store = MemoryStore(NullBackend())
    with store.tx() as tx:
        for i in range(6):
            tx.create("task", task(f"t{i}", "s1", "n1"))
    assert store.task_counts("s1") == (0, 0, 6)

    def set_state(tid: str, state: TaskState, desired: TaskState = TaskState.RUNNING) -> None:
        cur = store.get("task", tid)
        with store.tx() as tx:
            tx.update("task", msgspec.structs.replace(cur, Status=TaskStatus(State=state), DesiredState=desired))

    for tid in ("t0", "t1", "t2"):
        set_state(tid, TaskState.RUNNING)
    set_state("t3", TaskState.COMPLETE)
    set_state("t4", TaskState.RUNNING, desired=TaskState.SHUTDOWN)  # on its way out: not counted running
    with store.tx() as tx:
        tx.delete("task", "t5")
    recount = (
        sum(t.Status.State == "running" and t.DesiredState == "running" for t in store.tasks_of_service("s1")),
        sum(t.Status.State == "complete" for t in store.tasks_of_service("s1")),
        sum(t.DesiredState == "running" for t in store.tasks_of_service("s1")),
    )
    assert store.task_counts("s1") == recount == (3, 1, 4)


async def test_reloaded_tasks_share_their_spec(tmp_path) -> None:
    store = MemoryStore(SqliteBackend(tmp_path / "s.db"))
    with store.tx() as tx:
        for i in range(3):
            tx.create("task", task(f"t{i}", "s1"))
    await store.close()
    again = MemoryStore(SqliteBackend(tmp_path / "s.db"))
    specs = {id(t.Spec) for t in again.tasks_of_service("s1")}
    assert len(specs) == 1
