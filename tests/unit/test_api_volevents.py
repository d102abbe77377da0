"""Merging every node's volumes and disk usage, Docker's event filters, and the swarm's events as
moby's daemon logs them (daemon/events.go)."""

from __future__ import annotations

import msgspec
import pytest

from shoal.api.clusterinfo import merge_df
from shoal.api.events import format_time, matches, parse_time, swarm_message
from shoal.api.volumes import merge_volumes
from shoal.errors import InvalidArgument
from shoal.models import NodeState
from shoal.orchestrator.testutils import make_node
from shoal.store import MemoryStore, NullBackend
from shoal.store.base import Action, Event


def test_local_volumes_carry_their_node_and_a_shared_driver_s_are_listed_once() -> None:
    merged = merge_volumes([
        ("b", [{"Name": "data", "Driver": "local"}, {"Name": "nfs1", "Driver": "nfs"}]),
        ("a", [{"Name": "data", "Driver": "local"}, {"Name": "nfs1", "Driver": "nfs"}]),
    ])
    assert [(v["Name"], v["Driver"]) for v in merged] == [("a/data", "local"), ("b/data", "local"), ("nfs1", "nfs")]


def test_disk_usage_is_summed_and_names_show_the_node() -> None:
    df = merge_df([
        ("a", {"LayersSize": 10, "Images": [{"Id": "i1"}], "Containers": [{"Names": ["/web"]}],
               "Volumes": [{"Name": "v", "Driver": "local"}], "BuildCache": None}),
        ("b", {"LayersSize": 5, "Images": [{"Id": "i1"}], "Containers": [], "Volumes": None, "BuilderSize": 7}),
    ])
    assert df["LayersSize"] == 15 and len(df["Images"]) == 2  # one copy on each node's disk
    assert df["Containers"][0]["Names"] == ["/a/web"] and df["Volumes"][0]["Name"] == "a/v"
    assert df["BuilderSize"] == 7 and df["BuildCache"] == []


def test_since_and_until_parse_as_the_cli_sends_them() -> None:
    assert parse_time("1700000000", "since") == 1_700_000_000_000_000_000
    assert parse_time("1700000000.5", "since") == 1_700_000_000_500_000_000
    assert parse_time(format_time(1_700_000_000_000_000_001), "until") == 1_700_000_000_000_000_001
    assert parse_time("", "since") is None
    with pytest.raises(InvalidArgument, match="invalid value for until"):
        parse_time("yesterday", "until")


SVC = {"Type": "service", "Action": "update", "scope": "swarm",
       "Actor": {"ID": "abc123", "Attributes": {"name": "web"}}}
CTR = {"Type": "container", "Action": "start", "scope": "local",
       "Actor": {"ID": "c0ffee", "Attributes": {"name": "front.1", "image": "busybox:latest", "team": "x"}}}


@pytest.mark.parametrize("filters, svc, ctr", [
    ({}, True, True),
    ({"type": ["service"]}, True, False),
    ({"event": ["update"]}, True, False),
    ({"service": ["web"]}, True, False),  # a filter on one kind excludes the others, as in moby
    ({"service": ["abc"]}, True, False),  # ID prefix
    ({"container": ["front.1"]}, False, True),
    ({"image": ["busybox"]}, False, True),  # the tag stripped
    ({"label": ["team=x"]}, False, True),
    ({"label": ["team=y"]}, False, False),
    ({"scope": ["swarm"]}, True, False),
    ({"node": ["n1"]}, False, False),
])
def test_docker_s_event_filters(filters: dict[str, list[str]], svc: bool, ctr: bool) -> None:
    assert (matches(filters, SVC), matches(filters, CTR)) == (svc, ctr)


def test_swarm_events_in_moby_s_shapes() -> None:
    store = MemoryStore(NullBackend())
    node = make_node(store, "host-1", node_id="n1")
    down = msgspec.structs.replace(node, Status=msgspec.structs.replace(node.Status, State=NodeState.DOWN))
    msg = swarm_message(Event("node", Action.UPDATE, down, node, 7))
    assert msg is not None
    assert msg["Type"] == "node" and msg["Action"] == "update" and msg["scope"] == "swarm"
    assert msg["Actor"] == {"ID": "n1", "Attributes": {"name": "host-1", "state.old": "ready", "state.new": "down"}}
    assert msg["time"] == msg["timeNano"] // 1_000_000_000
    gone = swarm_message(Event("node", Action.DELETE, node, node, 8), now_ns=42_000_000_000)
    assert gone is not None and gone["Action"] == "remove" and gone["timeNano"] == 42_000_000_000
    assert swarm_message(Event("task", Action.CREATE, node, None, 9)) is None  # Docker logs no task events
