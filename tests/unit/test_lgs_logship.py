"""Log collection: the agent's file tails (rotation, truncation, symlinks kept inside the container),
its bounds (bytes per interval and per batch, the stdout reader's back-pressure), the dispatcher's
check of who ships what, and the leader's collector pushing to a real HTTP receiver (aiohttp)."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestServer

from shoal.agent.executor.base import ContainerInfo
from shoal.agent.logship import FileStore, LogShipper, resolve_in_root
from shoal.dispatcher.dispatcher import Dispatcher
from shoal.dispatcher.protocol import LogMessage, LogOptions, LogRecord
from shoal.logstore.collector import LogCollector
from shoal.models import (
    ContainerSpec,
    LogSink,
    LogSinkSpec,
    NodeDescription,
    Task,
    TaskSpec,
    TaskStatus,
    Version,
)
from shoal.store import MemoryStore, NullBackend


def task(labels: dict[str, str], tid: str = "t1", node: str = "n1") -> Task:
    return Task(ID=tid, Version=Version(), CreatedAt="", UpdatedAt="", ServiceID="s1", NodeID=node, Slot=1,
                Spec=TaskSpec(ContainerSpec=ContainerSpec(Image="busybox", Labels=labels)),
                Status=TaskStatus(State="running"), DesiredState="running",
                ServiceAnnotations={"Name": "lgs_web"})


async def until(pred: Any, tries: int = 500) -> None:
    for _ in range(tries):
        if pred():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not met")


def lines_of(store: FileStore, budget: int = 1 << 20) -> list[str]:
    store.scan()
    return [line for _, line, _ in store.poll(budget, 0.0)[0]]


def test_lgs_tail_follows_rotation_by_rename_and_truncation(tmp_path: Path) -> None:
    logs = tmp_path / "var" / "log"
    logs.mkdir(parents=True)
    app = logs / "app.log"
    app.write_text("one\ntwo\nthr")
    fs = FileStore(str(tmp_path), "/var/log/*.log")
    assert lines_of(fs) == ["one", "two"]  # "thr" waits for its newline
    with app.open("a") as f:
        f.write("ee\nfour\n")
    app.rename(logs / "app.log.1")  # logrotate: rename, then a new file
    app.write_text("five\n")
    # The renamed file left the glob: its last lines are read through the open descriptor, once.
    assert sorted(lines_of(fs)) == ["five", "four", "three"]
    assert lines_of(fs) == [] and len(fs.tails) == 1
    app.write_text("6\n")  # copytruncate: the same file, shorter: read again from its start
    assert lines_of(fs) == ["6"]
    fs.close()


def test_lgs_tail_keeps_offset_when_a_matched_file_is_renamed_within_the_glob(tmp_path: Path) -> None:
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "a").write_text("x\n")
    fs = FileStore(str(tmp_path), "/logs/*")
    assert lines_of(fs) == ["x"]
    (tmp_path / "logs" / "a").rename(tmp_path / "logs" / "a.1")
    assert lines_of(fs) == []  # the same inode under a new name: not read twice
    fs.close()


def test_lgs_symlinks_resolve_inside_the_container_root(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "var" / "log").mkdir(parents=True)
    (root / "etc").mkdir()
    (root / "etc" / "hostname").write_text("inside\n")
    (root / "var" / "log" / "abs.log").symlink_to("/etc/hostname")  # the container's /etc, not the host's
    (root / "var" / "log" / "rel.log").symlink_to("../../../../../../etc/passwd")  # clamps at the root
    assert resolve_in_root(str(root), "/var/log/abs.log") == str(root / "etc" / "hostname")
    assert resolve_in_root(str(root), "/var/log/rel.log") is None  # no /etc/passwd in this root
    fs = FileStore(str(root), "/var/log/*.log")
    assert lines_of(fs) == ["inside"]
    fs.close()


class FakeEngine:
    """The executor calls the shipper makes: inspect (the container's pid) and a followed log stream."""

    def __init__(self, out_lines: int = 0) -> None:
        self.out_lines = out_lines

    async def inspect(self, cid: str) -> ContainerInfo:
        return ContainerInfo(id=cid, state="running", pid=os.getpid())  # /proc/<pid>/root is "/" here

    async def task_logs(self, t: Task, cid: str, options: LogOptions) -> AsyncIterator[LogMessage]:
        assert options.follow
        for i in range(self.out_lines):
            yield LogMessage(t.ID, t.ServiceID, t.NodeID, 2 if i % 2 else 1, "2026-01-02T03:04:05.5Z",
                             f"out {i}\n".encode())
        await asyncio.Event().wait()  # follow: the stream stays open


async def test_lgs_shipper_bounds_bytes_per_interval_and_per_batch(tmp_path: Path) -> None:
    (tmp_path / "big.log").write_text("".join(f"line {i:05d} " + "x" * 90 + "\n" for i in range(1000)))
    t = task({"aliyun.log_store_files": f"{tmp_path}/*.log"})
    batches: list[list[LogRecord]] = []

    async def send(records: list[LogRecord]) -> None:
        batches.append(records)

    shipper = LogShipper(FakeEngine(), lambda: [(t, "c1")], send, "n1", max_bytes=20_000, batch_bytes=5_000)
    await shipper._sync()
    await shipper._read_files()
    await shipper._ship()
    first = sum(len(b) for b in batches)
    assert 0 < first * 100 <= 20_000 + 200  # ~100-byte lines: one interval's budget, not the file
    assert all(sum(len(r.line) + 96 for r in b[:-1]) < 5_000 for b in batches)
    for _ in range(60):  # the rest follows, interval by interval, in order and without loss
        await shipper._read_files()
        await shipper._ship()
    got = [r.line[:10] for b in batches for r in b]
    assert got == [f"line {i:05d}" for i in range(1000)]
    r = batches[0][0]
    assert (r.service, r.task_id, r.store, r.node_id) == ("lgs_web", "t1", "files", "n1")
    assert r.source == f"{tmp_path}/big.log"


async def test_lgs_stdout_reader_waits_while_the_buffer_is_full() -> None:
    t = task({"aliyun.log_store_out": "stdout"})

    async def refuse(records: list[LogRecord]) -> None:
        raise ConnectionError("no session")

    shipper = LogShipper(FakeEngine(out_lines=5000), lambda: [(t, "c1")], refuse, "n1", buffer_bytes=10_000)
    await shipper._sync()
    for _ in range(50):
        await asyncio.sleep(0)
    await shipper._ship()  # refused: kept
    held = len(shipper.buffer)
    assert 0 < held < 200 and shipper.buffered < 10_000 + 200  # it stopped reading, it did not drop
    first = shipper.buffer[0]
    assert (first.source, first.line, first.store) == ("stdout", "out 0", "out")
    assert shipper.buffer[1].source == "stderr" and first.time == 1767323045.5
    shipper.running = lambda: []
    await shipper._sync()  # the task stopped: its reader ends
    assert not shipper._containers


async def test_lgs_dispatcher_keeps_only_the_nodes_own_tasks() -> None:
    store = MemoryStore(NullBackend())
    d = Dispatcher(store)
    with store.tx() as tx:
        from shoal.models import Node, NodeSpec, NodeStatus
        for nid in ("n1", "n2"):
            tx.create("node", Node(ID=nid, Version=Version(), CreatedAt="", UpdatedAt="", Spec=NodeSpec(),
                                   Description=NodeDescription(Hostname=nid), Status=NodeStatus(State="ready")))
        tx.create("task", task({}, "t1", "n1"))
        tx.create("task", task({}, "t2", "n2"))
    got: list[LogRecord] = []
    d.log_sink = got.extend
    sess = await d.register("n1", NodeDescription(Hostname="n1"), "127.0.0.1")
    mine = LogRecord(1.0, "wrong", "lgs_web", "t1", "n9", "app", "stdout", "mine")
    theirs = LogRecord(1.0, "s1", "lgs_web", "t2", "n1", "app", "stdout", "theirs")
    await d.ship_logs(sess.session_id, [mine, theirs])
    assert [(r.line, r.node_id, r.service_id) for r in got] == [("mine", "n1", "s1")]


async def test_lgs_collector_writes_files_and_pushes_to_loki_and_elasticsearch(tmp_path: Path) -> None:
    received: dict[str, list[Any]] = {"loki": [], "es": []}

    async def loki(request: web.Request) -> web.Response:
        received["loki"].append(await request.json())
        return web.Response(status=204)

    async def bulk(request: web.Request) -> web.Response:
        assert request.headers["Content-Type"] == "application/x-ndjson"
        received["es"].append([json.loads(x) for x in (await request.text()).splitlines()])
        return web.json_response({"errors": False, "items": []})

    app = web.Application()
    app.router.add_post("/loki/api/v1/push", loki)
    app.router.add_post("/_bulk", bulk)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    store = MemoryStore(NullBackend())
    with store.tx() as tx:
        for name, typ in (("lgs-loki", "loki"), ("lgs-es", "elasticsearch")):
            tx.create("logsink", LogSink(ID=name, Version=Version(), CreatedAt="", UpdatedAt="",
                                         Spec=LogSinkSpec(Name=name, Type=typ, URL=str(server.make_url("/")))))
    collector = LogCollector(store, tmp_path / "logstore")
    runner = asyncio.create_task(collector.run())
    try:
        await until(lambda: len(collector.outlets) == 3)
        collector.add([LogRecord(1_700_000_000.25, "s1", "lgs_web", "t1", "n1", "app", "stdout", "hello")])
        await until(lambda: received["loki"] and received["es"] and collector.idle)
    finally:
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)
        await server.close()
    stream = received["loki"][0]["streams"][0]
    assert stream["stream"]["service"] == "lgs_web" and stream["values"] == [["1700000000250000000", "hello"]]
    action, doc = received["es"][0]
    assert action == {"index": {"_index": "shoal-logs"}} and doc["message"] == "hello" and doc["store"] == "app"
    line = json.loads((tmp_path / "logstore" / "lgs_web" / "app.log").read_text())
    assert line["line"] == "hello" and line["time"] == "2023-11-14T22:13:20.250000Z"
