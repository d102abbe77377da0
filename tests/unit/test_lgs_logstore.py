"""The leader's log store: file sink rotation, sink encoders (Loki, Elasticsearch), query filters."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from shoal import extensions as ext
from shoal.dispatcher.protocol import LogRecord
from shoal.logstore.files import FileSink, files_of, store_path
from shoal.logstore.query import LogQuery, parse_time, run_query
from shoal.logstore.sinks import es_bulk, loki_push, push_url
from shoal.models import LogSinkSpec


def rec(line: str, t: float = 1_700_000_000.0, service: str = "lgs_web", store: str = "app",
        source: str = "stdout", task: str = "t1") -> LogRecord:
    return LogRecord(time=t, service_id="s1", service=service, task_id=task, node_id="n1", store=store,
                     source=source, line=line)


def test_lgs_file_sink_writes_json_lines_per_store(tmp_path: Path) -> None:
    sink = FileSink(tmp_path)
    sink.write([rec("one"), rec("two", store="files", source="/var/log/a.log"), rec("three")])
    app = store_path(tmp_path, "lgs_web", "app")
    assert app == tmp_path / "lgs_web" / "app.log"
    lines = [json.loads(x) for x in app.read_text().splitlines()]
    assert [x["line"] for x in lines] == ["one", "three"]
    assert lines[0]["time"] == "2023-11-14T22:13:20.000000Z" and lines[0]["task"] == "t1"
    other = json.loads((tmp_path / "lgs_web" / "files.log").read_text())
    assert other["source"] == "/var/log/a.log"
    assert oct(os.stat(app).st_mode & 0o777) == "0o600"


def test_lgs_file_sink_rotates_by_size_and_keeps_order(tmp_path: Path) -> None:
    sink = FileSink(tmp_path, max_bytes=600, keep=2)
    for i in range(30):
        sink.write([rec(f"line {i:02d}", t=1_700_000_000.0 + i)])
    path = store_path(tmp_path, "lgs_web", "app")
    names = sorted(p.name for p in path.parent.iterdir())
    assert names == ["app.log", "app.log.1", "app.log.2"]  # the oldest beyond `keep` are gone
    assert all(p.stat().st_size <= 600 for p in path.parent.iterdir())
    got = [json.loads(x)["line"] for p in files_of(tmp_path) for x in p.read_text().splitlines()]
    assert got[-1] == "line 29" and got == sorted(got) and len(got) < 30


def test_lgs_store_names_cannot_escape_the_root(tmp_path: Path) -> None:
    assert store_path(tmp_path, "../etc", "../../passwd").parent.parent == tmp_path


def test_lgs_loki_push_groups_streams_by_labels() -> None:
    body = json.loads(loki_push([rec("a", t=1.5), rec("b", t=2.0), rec("c", store="other")]))
    streams = {s["stream"]["store"]: s for s in body["streams"]}
    assert streams["app"]["stream"] == {"job": "shoal", "service": "lgs_web", "store": "app", "source": "stdout",
                                        "task": "t1", "node": "n1"}
    assert streams["app"]["values"] == [["1500000000", "a"], ["2000000000", "b"]]
    assert streams["other"]["values"][0][1] == "c"


def test_lgs_es_bulk_is_ndjson_action_then_document() -> None:
    body = es_bulk([rec("hello \"x\""), rec("bye")], index="lgs-idx")
    assert body.endswith(b"\n")
    lines = [json.loads(x) for x in body.decode().splitlines()]
    assert lines[0] == {"index": {"_index": "lgs-idx"}} and lines[2] == lines[0]
    assert lines[1]["message"] == 'hello "x"' and lines[1]["@timestamp"] == "2023-11-14T22:13:20.000000Z"
    assert lines[3]["service"] == "lgs_web" and lines[3]["store"] == "app"


def test_lgs_push_urls() -> None:
    assert push_url(LogSinkSpec(Name="l", Type="loki", URL="http://h:3100/")) == "http://h:3100/loki/api/v1/push"
    assert push_url(LogSinkSpec(Name="l", Type="loki", URL="http://h/loki/api/v1/push")) == "http://h/loki/api/v1/push"
    assert push_url(LogSinkSpec(Name="e", Type="elasticsearch", URL="http://h:9200")) == "http://h:9200/_bulk"


def test_lgs_parse_time_takes_what_docker_since_takes() -> None:
    now = 1_700_000_600.0
    assert parse_time("1700000000.5", now) == 1_700_000_000.5
    assert parse_time("10m", now) == now - 600
    assert parse_time("1h30m", now) == now - 5400
    assert parse_time("2023-11-14T22:13:20Z", now) == 1_700_000_000.0
    assert parse_time("2023-11-14T23:13:20+01:00", now) == 1_700_000_000.0
    with pytest.raises(ValueError, match="invalid time 'yesterday'"):
        parse_time("yesterday", now)


def test_lgs_query_filters_by_service_store_time_text_and_limit(tmp_path: Path) -> None:
    sink = FileSink(tmp_path)
    sink.write([rec(f"web {i}", t=100.0 + i) for i in range(10)])
    sink.write([rec(f"db {i}", t=100.5 + i, service="lgs_db", store="slow") for i in range(10)])
    got = run_query(tmp_path, LogQuery(limit=0))
    assert len(got) == 20 and [r["ts"] for r in got] == sorted(r["ts"] for r in got)  # merged in time order
    assert [r["line"] for r in run_query(tmp_path, LogQuery(service="lgs_db", limit=3))] == ["db 7", "db 8", "db 9"]
    assert [r["line"] for r in run_query(tmp_path, LogQuery(grep="web 1"))] == ["web 1"]
    window = run_query(tmp_path, LogQuery(since=102.0, until=103.6))
    assert [r["line"] for r in window] == ["web 2", "db 2", "web 3", "db 3"]
    assert run_query(tmp_path, LogQuery(store="nope")) == []
    only_web = run_query(tmp_path, LogQuery(), allowed=lambda svc: svc == "lgs_web")
    assert {r["service"] for r in only_web} == {"lgs_web"}


def test_lgs_log_store_labels() -> None:
    got = ext.parse_log_stores({"aliyun.log_store_app": "stdout", "x": "y"},
                               {"aliyun.log_store_files": "/var/log/app/*.log"})
    assert got == {"app": "stdout", "files": "/var/log/app/*.log"}
    with pytest.raises(ValueError, match="absolute path"):
        ext.parse_log_stores({"aliyun.log_store_app": "var/log/x.log"})
    with pytest.raises(ValueError, match="store name"):
        ext.parse_log_stores({"aliyun.log_store_": "stdout"})
    with pytest.raises(ValueError, match=r"'\.\.'"):
        ext.parse_log_stores({"aliyun.log_store_a": "/var/../../etc/*"})
