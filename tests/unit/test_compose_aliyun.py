"""Aliyun's service labels (compose/aliyun.py): scale, global, depends, rolling_updates and probe.*
become the ServiceSpec fields their Compose V3 keys fill; bad values, unknown ``aliyun.*`` labels,
unknown dependencies and cycles are errors naming the file's line and the label."""

from __future__ import annotations

from pathlib import Path

import pytest

from shoal import models as m
from shoal.compose import ComposeError, StackResources, load, to_stack
from shoal.extensions import parse_health_check

SECOND = 1_000_000_000


def stack(tmp_path: Path, text: str) -> StackResources:
    f = tmp_path / "docker-compose.yml"
    f.write_text(text)
    return to_stack(load([f], env={}), "aly")


def service(labels: str, extra: str = "", version: str = "2") -> str:
    """A file with service ``web`` carrying ``labels`` (lines of ``key: value``), plus ``db``."""
    body = "".join(f"      {line}\n" for line in labels.splitlines())
    return (f'version: "{version}"\nservices:\n  web:\n    image: busybox\n{extra}    labels:\n{body}'
            "  db:\n    image: busybox\n")


def test_scale_global_and_rolling_updates_map_to_the_spec(tmp_path: Path) -> None:
    res = stack(tmp_path, service("aliyun.scale: 3\naliyun.rolling_updates: 'true'\n"
                                  "aliyun.rolling_updates.parallelism: 2"))
    web = res.services["web"]
    assert web.Mode == m.ServiceMode(Replicated=m.ReplicatedService(Replicas=3))
    assert web.UpdateConfig == m.UpdateConfig(Parallelism=2, FailureAction="pause", Order="stop-first")
    assert res.warnings == []
    # One task at a time by default (Aliyun: the next container once the last is updated); false:
    # all at once, which is what Aliyun did without the label.
    one = stack(tmp_path, service("aliyun.rolling_updates: true")).services["web"].UpdateConfig
    assert one is not None and one.Parallelism == 1
    allat = stack(tmp_path, service("aliyun.rolling_updates: 'false'")).services["web"].UpdateConfig
    assert allat is not None and allat.Parallelism == 0
    glob = stack(tmp_path, service("aliyun.global: 'true'")).services["web"]
    assert glob.Mode == m.ServiceMode(Global=m.GlobalService())


def test_labels_as_a_list_and_numbers_as_values(tmp_path: Path) -> None:
    text = ('version: "2"\nservices:\n  web:\n    image: busybox\n    labels:\n'
            '      - "aliyun.scale=2"\n      - "aliyun.depends=db"\n  db:\n    image: busybox\n'
            '    labels:\n      aliyun.scale: 2\n')
    res = stack(tmp_path, text)
    assert res.services["web"].Mode.Replicated == m.ReplicatedService(Replicas=2)
    assert res.services["db"].Mode.Replicated == m.ReplicatedService(Replicas=2)
    assert res.order == [["db"], ["web"]]


def test_compose_keys_win_over_labels_with_a_warning(tmp_path: Path) -> None:
    """Aliyun's V3 templates use the deploy keys; a file setting both gets the key and a warning."""
    res = stack(tmp_path, service("aliyun.scale: 5\naliyun.rolling_updates: 'true'",
                                  extra="    deploy:\n      replicas: 2\n      update_config: {parallelism: 3}\n",
                                  version="3.8"))
    web = res.services["web"]
    assert web.Mode.Replicated == m.ReplicatedService(Replicas=2)
    assert web.UpdateConfig is not None and web.UpdateConfig.Parallelism == 3
    assert len(res.warnings) == 2
    assert any("docker-compose.yml:9: web: aliyun.scale: deploy.replicas is set too and wins" in w
               for w in res.warnings), res.warnings
    assert any("aliyun.rolling_updates: deploy.update_config is set too and wins" in w for w in res.warnings)
    v2 = stack(tmp_path, service("aliyun.scale: 5", extra="    scale: 4\n", version="2.4"))
    assert v2.services["web"].Mode.Replicated == m.ReplicatedService(Replicas=4)


def test_depends_orders_the_stack_and_waits_for_running_tasks(tmp_path: Path) -> None:
    text = ('version: "2"\nservices:\n  web:\n    image: busybox\n    labels:\n'
            "      aliyun.depends: 'db, cache'\n    depends_on: [cache]\n"
            "  db:\n    image: busybox\n  cache:\n    image: busybox\n")
    res = stack(tmp_path, text)
    assert res.order == [["cache", "db"], ["web"]]
    # depends_on's condition stays for the service it names; the label's dependency waits for every
    # task the dependency wants to run (healthy, with a probe).
    assert res.wait_for == {"web": {"cache": "service_started", "db": "service_healthy"}}


def test_url_probes_become_the_agent_check(tmp_path: Path) -> None:
    res = stack(tmp_path, service("aliyun.probe.url: http://container:8080/ping?x=1\n"
                                  "aliyun.probe.timeout_seconds: '10'\naliyun.probe.initial_delay_seconds: 3"))
    check = parse_health_check(res.services["web"].Labels)
    assert check is not None
    assert (check.port, check.request_line, check.interval_s) == (8080, "GET /ping?x=1 HTTP/1.0", 2.0)
    assert (check.response_timeout_s, check.initializing_timeout_s) == (10.0, 63.0)
    assert res.services["web"].TaskTemplate.ContainerSpec.Healthcheck is None
    tcp = parse_health_check(stack(tmp_path, service("aliyun.probe.url: tcp://container:3306")).services["web"].Labels)
    assert tcp is not None and (tcp.kind, tcp.port) == ("tcp", 3306)
    http80 = parse_health_check(stack(tmp_path, service("aliyun.probe.url: http://container/")).services["web"].Labels)
    assert http80 is not None and (http80.port, http80.request_line) == (80, "GET / HTTP/1.0")


def test_cmd_probes_become_the_engine_healthcheck(tmp_path: Path) -> None:
    res = stack(tmp_path, service("aliyun.probe.cmd: /check.sh\naliyun.probe.timeout_seconds: 5\n"
                                  "aliyun.probe.initial_delay_seconds: 7"))
    assert res.services["web"].TaskTemplate.ContainerSpec.Healthcheck == m.HealthConfig(
        Test=["CMD-SHELL", "/check.sh"], Interval=2 * SECOND, Timeout=5 * SECOND, StartPeriod=7 * SECOND)
    assert parse_health_check(res.services["web"].Labels) is None


def test_probe_settings_without_a_probe_are_ignored_with_a_warning(tmp_path: Path) -> None:
    res = stack(tmp_path, service("aliyun.probe.timeout_seconds: 5"))
    assert res.services["web"].TaskTemplate.ContainerSpec.Healthcheck is None
    assert parse_health_check(res.services["web"].Labels) is None
    assert res.warnings and "ignored without aliyun.probe.url or aliyun.probe.cmd" in res.warnings[0]


def test_other_helpers_labels_pass_through(tmp_path: Path) -> None:
    res = stack(tmp_path, service("aliyun.lb.port_8080: tcp://slbtest:8080\naliyun.routing.port_80: http://a.test\n"
                                  "aliyun.log_store_dbstdout: stdout\naliyun.auto_scaling.max_cpu: 70\n"
                                  "aliyun.gpu: 2", extra='    ports: ["8080:80"]\n'))
    labels = res.services["web"].TaskTemplate.ContainerSpec.Labels or {}
    assert labels["aliyun.lb.port_8080"] == "tcp://slbtest:8080"


@pytest.mark.parametrize(("labels", "line", "key", "fragment"), [
    ("aliyun.scael: 3", 6, "aliyun.scael", "unknown Aliyun label"),
    ("aliyun.probe.interval: 3", 6, "aliyun.probe.interval", "unknown Aliyun label"),
    ("aliyun.scale: three", 6, "aliyun.scale", "must be a whole number"),
    ("aliyun.scale: -1", 6, "aliyun.scale", "must be a whole number"),
    ("aliyun.global: yes please", 6, "aliyun.global", "must be true or false"),
    ("aliyun.global: 'true'\naliyun.scale: 2", 7, "aliyun.scale", "takes no count"),
    ("aliyun.rolling_updates: maybe", 6, "aliyun.rolling_updates", "must be true or false"),
    ("aliyun.rolling_updates.parallelism: 2", 6, "aliyun.rolling_updates.parallelism", "only with"),
    ("aliyun.rolling_updates: 'true'\naliyun.rolling_updates.parallelism: 0", 7,
     "aliyun.rolling_updates.parallelism", "at least 1"),
    ("aliyun.depends: db,nope", 6, "aliyun.depends", "undefined service 'nope'"),
    ("aliyun.depends: web", 6, "aliyun.depends", "cannot depend on itself"),
    ("aliyun.depends: ' , '", 6, "aliyun.depends", "names no service"),
    ("aliyun.probe.url: http://localhost:80/", 6, "aliyun.probe.url", "the word 'container'"),
    ("aliyun.probe.url: https://container/", 6, "aliyun.probe.url", "tcp or http"),
    ("aliyun.probe.url: tcp://container", 6, "aliyun.probe.url", "tcp://container:PORT"),
    ("aliyun.probe.url: tcp://container:99999", 6, "aliyun.probe.url", "99999"),
    ("aliyun.probe.url: tcp://container:0", 6, "aliyun.probe.url", "port"),
    ("aliyun.probe.url: tcp://container:1\naliyun.probe.cmd: 'true'", 7, "aliyun.probe.cmd", "not both"),
    ("aliyun.probe.cmd: 'true'\naliyun.probe.timeout_seconds: 1.5", 7, "aliyun.probe.timeout_seconds",
     "whole number of seconds"),
    ("aliyun.probe.cmd: 'true'\naliyun.probe.timeout_seconds: 0", 7, "aliyun.probe.timeout_seconds", "at least 1"),
])
def test_bad_labels_name_file_line_and_key(tmp_path: Path, labels: str, line: int, key: str, fragment: str) -> None:
    with pytest.raises(ComposeError) as e:
        stack(tmp_path, service(labels))
    assert e.value.line == line, str(e.value)
    assert e.value.key == f"services.web.labels.{key}"
    assert e.value.file is not None and e.value.file.name == "docker-compose.yml"
    assert fragment in str(e.value)


def test_a_list_label_error_points_at_its_item(tmp_path: Path) -> None:
    text = ('version: "2"\nservices:\n  web:\n    image: busybox\n    labels:\n'
            '      - "a=b"\n      - "aliyun.bogus=1"\n')
    with pytest.raises(ComposeError) as e:
        stack(tmp_path, text)
    assert (e.value.line, e.value.key) == (7, "services.web.labels[1]")


def test_a_cycle_through_the_label_names_the_label(tmp_path: Path) -> None:
    text = ('version: "2"\nservices:\n  a:\n    image: busybox\n    labels:\n      aliyun.depends: b\n'
            "  b:\n    image: busybox\n    depends_on: [a]\n")
    with pytest.raises(ComposeError) as e:
        stack(tmp_path, text)
    assert (e.value.line, e.value.key) == (6, "services.a.labels.aliyun.depends")
    assert "circular dependency: a -> b -> a" in str(e.value)


def test_conflicting_checks_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ComposeError, match="healthcheck too"):
        stack(tmp_path, service("aliyun.probe.cmd: 'true'", extra="    healthcheck:\n      test: 'true'\n",
                                version="2.4"))
    with pytest.raises(ComposeError, match="health_check too"):
        stack(tmp_path, service("aliyun.probe.url: tcp://container:80", extra="    health_check:\n      port: 80\n"))
    with pytest.raises(ComposeError, match="takes no count"):
        stack(tmp_path, service("aliyun.scale: 2", extra="    deploy:\n      mode: global\n", version="3.8"))


def test_a_cycle_closed_by_the_label_names_it_even_if_depends_on_starts_it(tmp_path: Path) -> None:
    text = ('version: "2"\nservices:\n  a:\n    image: busybox\n    depends_on: [b]\n'
            "  b:\n    image: busybox\n    labels:\n      - aliyun.depends=a\n")
    with pytest.raises(ComposeError) as e:
        stack(tmp_path, text)
    assert (e.value.line, e.value.key) == (9, "services.b.labels[0]")
    assert "b: aliyun.depends: circular dependency: a -> b -> a" in str(e.value)
