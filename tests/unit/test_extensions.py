"""shoal/extensions.py: every shoal.* label extension parsed at once, with the texts the API has always given."""

from __future__ import annotations

import dataclasses
import datetime as dt

import pytest

from shoal import extensions as ext
from shoal.controlapi.validate import check_swarm_labels, validate_service_spec
from shoal.errors import InvalidArgument
from shoal.models import ContainerSpec, GlobalService, ServiceMode, ServiceSpec, TaskSpec


def _spec(labels: dict[str, str], mode: ServiceMode | None = None) -> ServiceSpec:
    return ServiceSpec(Name="ext-svc", Labels=labels, Mode=mode,
                       TaskTemplate=TaskSpec(ContainerSpec=ContainerSpec(Image="busybox:latest")))


def test_ext_no_labels_means_defaults() -> None:
    got = ext.service_extensions(None)
    assert got == ext.ServiceExtensions(
        scheduling=ext.Scheduling(priority=0, strategy=None), health=None, update=ext.UpdateStrategy("rolling"),
        schedule=None, autoscale=None,
    )
    assert not got.update.blue_green
    assert ext.service_extensions({"unrelated": "x", "shoal.team": "a"}) == got


def test_ext_every_extension_typed_at_once() -> None:
    got = ext.service_extensions({
        "shoal.priority": " 7 ",
        "shoal.strategy": "BinPack",
        "shoal.health.port": "8080",
        "shoal.health.request-line": "GET /healthz HTTP/1.1",
        "shoal.health.interval": "2000",  # milliseconds, as rancher-compose.yml wrote them
        "shoal.health.response-timeout": "1m30s",
        "shoal.health.strategy": "None",
        "shoal.update-strategy": "blue-green",
        "shoal.schedule": "*/5   * * * *",
        "shoal.schedule.timezone": "Europe/Paris",
        "shoal.schedule.concurrency": "replace",
        "shoal.schedule.history": "0",
        "shoal.schedule.missed": "skip",
    })
    assert got.scheduling == ext.Scheduling(priority=7, strategy="binpack")
    assert got.health == ext.HealthCheck(port=8080, request_line="GET /healthz HTTP/1.1", interval_s=2.0,
                                         response_timeout_s=90.0, strategy="none")
    assert got.health.kind == "http"
    assert got.update.blue_green
    sched = got.schedule
    assert sched is not None
    assert (sched.expr, str(sched.tz), sched.concurrency, sched.history, sched.missed) == (
        "*/5 * * * *", "Europe/Paris", "replace", 0, "skip")
    start = dt.datetime(2026, 3, 1, 12, 1, tzinfo=dt.UTC).timestamp()
    assert sched.next_after(start) == start + 4 * 60
    with pytest.raises(dataclasses.FrozenInstanceError):
        got.scheduling.priority = 1  # type: ignore[misc]


# The exact texts callers have always seen (the API prefixes "label "); the first bad extension wins,
# in the control API's order: scheduling, health, update strategy, schedule.
@pytest.mark.parametrize(("labels", "message"), [
    ({"shoal.priority": "-1"}, "invalid priority '-1': must be an integer >= 0"),
    ({"shoal.priority": "high", "shoal.health.port": "x"}, "invalid priority 'high': must be an integer >= 0"),
    ({"shoal.strategy": "fill"}, "invalid strategy 'fill': must be one of spread, binpack, random"),
    ({"shoal.health.interval": "2s"}, "shoal.health.port is required with the other shoal.health.* labels"),
    ({"shoal.health.port": "70000"}, "shoal.health.port='70000': must be a port number (1-65535)"),
    ({"shoal.health.port": "80", "shoal.health.interval": "soon"},
     "shoal.health.interval='soon': invalid duration 'soon': use a Go duration (2s, 500ms) or milliseconds"),
    ({"shoal.health.port": "80", "shoal.health.request-line": "GET healthz"},
     "shoal.health.request-line='GET healthz': expected 'METHOD /path [HTTP/1.0|HTTP/1.1]'"),
    ({"shoal.health.port": "80", "shoal.health.strategy": "restart"},
     "shoal.health.strategy='restart': must be one of recreate, none"),
    ({"shoal.health.port": "80", "shoal.update-strategy": "canary"},
     "shoal.update-strategy: unknown update strategy 'canary' (expected rolling or blue-green)"),
    ({"shoal.bluegreen": "standby"}, "shoal.bluegreen is reserved for Shoal's blue-green releases"),
    ({"shoal.schedule.timezone": "UTC"}, "shoal.schedule.timezone needs a shoal.schedule label"),
    ({"shoal.schedule": "* * *"},
     "shoal.schedule: cron expression '* * *' has 3 fields; expected 5 (minute hour day-of-month month "
     "day-of-week)"),
    ({"shoal.schedule": "@daily", "shoal.schedule.timezone": "Mars/Olympus"},
     "shoal.schedule.timezone: unknown time zone 'Mars/Olympus' (expected an IANA name such as Europe/Paris)"),
    ({"shoal.schedule": "@daily", "shoal.schedule.history": "1001"},
     "shoal.schedule.history='1001': expected 0 to 1000"),
])
def test_ext_errors_keep_their_texts(labels: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError) as e:
        ext.service_extensions(labels)
    assert str(e.value) == message


def test_ext_control_api_wraps_them_unchanged() -> None:
    """The 400s the API answers with: the same texts behind "label " (schedule in swarmkit's rpc form)."""
    cases = [
        ({"shoal.priority": "x"}, None, "label invalid priority 'x': must be an integer >= 0"),
        ({"shoal.health.port": "0"}, None, "label shoal.health.port='0': must be at least 1"),
        ({"shoal.update-strategy": "blue-green"}, ServiceMode(Global=GlobalService()),
         "label shoal.update-strategy: blue-green releases are for replicated services only"),
        ({"shoal.schedule": "@hourly"}, None,
         "rpc error: code = InvalidArgument desc = label shoal.schedule needs a job mode (replicated-job or "
         "global-job)"),
    ]
    for labels, mode, message in cases:
        with pytest.raises(InvalidArgument) as e:
            validate_service_spec(_spec(labels, mode))
        assert e.value.message == message
    with pytest.raises(InvalidArgument) as e:
        check_swarm_labels({"shoal.strategy": "spread", "shoal.memory-overcommit": "0.5"})
    assert e.value.message == "label invalid overcommit ratio '0.5': must be a number >= 1"


def test_ext_lenient_readers_fall_back() -> None:
    """The scheduler and agent never wedge on a label stored before a check existed."""
    bad = {"shoal.strategy": "fill", "shoal.priority": "high", "shoal.cpu-overcommit": "inf",
           "shoal.memory-overcommit": "2.5"}
    assert ext.ClusterSettings.from_labels(bad) == ext.ClusterSettings("spread", 1.0, 2.5)
    assert ext.task_priority(bad) == 0
    assert ext.task_strategy(bad, "binpack") == "binpack"
    with pytest.raises(ValueError, match="invalid strategy 'fill'"):
        ext.parse_cluster_settings(bad)
    assert ext.parse_cluster_settings({"shoal.cpu-overcommit": "1.5"}) == ext.ClusterSettings("spread", 1.5, 1.0)
