"""Service specs built from flags, compared with what the docker CLI sends for the same flags."""

from __future__ import annotations

import pytest

from shoal.cli.parse import parse_mount, parse_publish
from shoal.cli.spec import (
    ServiceOptions,
    SpecError,
    UpdateOptions,
    UpdatePolicy,
    apply_update,
    build_spec,
    spec_from_json,
    spec_to_json,
)
from shoal.models import ServiceSpec

S = 1_000_000_000


def test_demo_matches_docker_cli() -> None:
    # `docker service create --name demo --replicas 3 -p 8080:80 busybox:latest httpd -f -p 80 -h /var/www`
    # sends this body (docker 20.10, captured; "Name" of the port and "ForceUpdate": 0 aside). The test
    # in test_cli_commands.py compares with the docker binary itself where it is installed.
    spec = build_spec(ServiceOptions(
        image="busybox:latest", args=["httpd", "-f", "-p", "80", "-h", "/var/www"], name="demo", replicas=3,
        publish=parse_publish("8080:80"),
    ))
    body = spec_to_json(spec)
    assert body == {
        "Name": "demo",
        "Labels": {},
        "TaskTemplate": {
            "ContainerSpec": {
                "Image": "busybox:latest",
                "Args": ["httpd", "-f", "-p", "80", "-h", "/var/www"],
                "Init": False,
                "DNSConfig": {},
            },
            "Resources": {"Limits": {}, "Reservations": {}},
            "Placement": {},
        },
        "Mode": {"Replicated": {"Replicas": 3}},
        "EndpointSpec": {
            "Mode": "vip",
            "Ports": [{"Name": "", "Protocol": "tcp", "TargetPort": 80, "PublishedPort": 8080,
                       "PublishMode": "ingress"}],
        },
    }
    # ...and the daemon's own model accepts it unchanged.
    assert spec_to_json(spec_from_json(body)) == body


def test_replicas_unset_is_left_to_the_daemon() -> None:
    body = spec_to_json(build_spec(ServiceOptions(image="busybox")))
    assert body["Mode"] == {"Replicated": {}}
    assert "UpdateConfig" not in body and "RestartPolicy" not in body["TaskTemplate"]


def test_entrypoint_is_command_and_positionals_are_args() -> None:
    c = build_spec(ServiceOptions(image="busybox", entrypoint="sh -c", args=["echo hi"])).TaskTemplate.ContainerSpec
    assert c is not None
    assert (c.Command, c.Args) == (["sh", "-c"], ["echo hi"])


def test_full_flag_set() -> None:
    opts = ServiceOptions(
        image="nginx", name="web", env=["A=1", "B=2", "A=3"], labels=["tier=front", "x"],
        container_labels=["c=1"], constraints=["node.role==worker"], limit_cpu=S // 2, limit_memory=512 << 20,
        reserve_cpu=S // 4, reserve_memory=64 << 20, restart_condition="on-failure", restart_max_attempts=3,
        restart_window=60 * S, mounts=[parse_mount("type=bind,src=/a,dst=/b")], workdir="/w", user="nobody",
        hostname="h", hosts=["db:10.0.0.2"], stop_grace_period=3 * S,
        update=UpdatePolicy(parallelism=2, delay=10 * S, order="start-first"),
        publish=parse_publish("published=53,target=53,protocol=udp,mode=host"),
    )
    body = spec_to_json(build_spec(opts))
    task = body["TaskTemplate"]
    c = task["ContainerSpec"]
    assert body["Labels"] == {"tier": "front", "x": ""}
    assert c["Image"] == "nginx:latest"
    assert c["Env"] == ["B=2", "A=3"]
    assert c["Labels"] == {"c": "1"}
    assert (c["Dir"], c["User"], c["Hostname"], c["StopGracePeriod"]) == ("/w", "nobody", "h", 3 * S)
    assert c["Hosts"] == ["10.0.0.2 db"]
    assert c["Mounts"] == [{"Type": "bind", "Source": "/a", "Target": "/b"}]
    assert task["Resources"] == {
        "Limits": {"NanoCPUs": S // 2, "MemoryBytes": 512 << 20},
        "Reservations": {"NanoCPUs": S // 4, "MemoryBytes": 64 << 20},
    }
    # Only some restart flags given: the rest are swarmkit's defaults, as the docker CLI fills them.
    assert task["RestartPolicy"] == {"Condition": "on-failure", "Delay": 5 * S, "MaxAttempts": 3, "Window": 60 * S}
    assert task["Placement"] == {"Constraints": ["node.role==worker"]}
    assert body["UpdateConfig"] == {
        "Parallelism": 2, "Delay": 10 * S, "FailureAction": "pause", "Monitor": 5 * S,
        "MaxFailureRatio": 0.0, "Order": "start-first",
    }
    assert body["EndpointSpec"]["Ports"][0]["PublishMode"] == "host"


def test_modes() -> None:
    assert spec_to_json(build_spec(ServiceOptions(image="i", mode="global")))["Mode"] == {"Global": {}}
    job = spec_to_json(build_spec(ServiceOptions(image="i", mode="replicated-job", replicas=4)))
    assert job["Mode"] == {"ReplicatedJob": {"MaxConcurrent": 4, "TotalCompletions": 4}}
    with pytest.raises(SpecError, match="replicas can only be used"):
        build_spec(ServiceOptions(image="i", mode="global", replicas=2))
    with pytest.raises(SpecError):
        build_spec(ServiceOptions(image="i", max_concurrent=2))


def test_healthcheck_flags() -> None:
    hc = spec_to_json(build_spec(ServiceOptions(image="i", health_cmd="true", health_interval=2 * S)))
    assert hc["TaskTemplate"]["ContainerSpec"]["Healthcheck"] == {"Test": ["CMD-SHELL", "true"], "Interval": 2 * S}
    none = spec_to_json(build_spec(ServiceOptions(image="i", no_healthcheck=True)))
    assert none["TaskTemplate"]["ContainerSpec"]["Healthcheck"] == {"Test": ["NONE"]}
    with pytest.raises(SpecError):
        build_spec(ServiceOptions(image="i", no_healthcheck=True, health_cmd="true"))


def _existing() -> ServiceSpec:
    return build_spec(ServiceOptions(
        image="busybox:1", name="web", replicas=2, env=["A=1", "B=2"], labels=["keep=1", "drop=1"],
        constraints=["node.role==manager"], publish=parse_publish("8080:80"),
        mounts=[parse_mount("type=bind,src=/a,dst=/data")],
    ))


def test_update_edits_lists_like_docker() -> None:
    spec = apply_update(_existing(), UpdateOptions(
        image="busybox:2", replicas=5, env=["A=9", "C=3"], env_rm=["B"], labels=["new=1"], label_rm=["drop"],
        constraints=["node.labels.ssd==true"], constraint_rm=["node.role==manager"],
        publish=parse_publish("9090:90/udp"), publish_rm=[(80, "tcp")],
        mounts=[parse_mount("type=bind,src=/b,dst=/data")],
    ))
    body = spec_to_json(spec)
    c = body["TaskTemplate"]["ContainerSpec"]
    assert c["Image"] == "busybox:2"
    assert c["Env"] == ["A=9", "C=3"]
    assert body["Labels"] == {"keep": "1", "new": "1"}
    assert body["Mode"] == {"Replicated": {"Replicas": 5}}
    assert body["TaskTemplate"]["Placement"]["Constraints"] == ["node.labels.ssd==true"]
    assert [(p["PublishedPort"], p["TargetPort"], p["Protocol"]) for p in body["EndpointSpec"]["Ports"]] == [
        (9090, 90, "udp")
    ]
    assert c["Mounts"] == [{"Type": "bind", "Source": "/b", "Target": "/data"}]
    assert "ForceUpdate" not in body["TaskTemplate"]


def test_update_policies_start_from_defaults_and_force_bumps() -> None:
    spec = apply_update(_existing(), UpdateOptions(update=UpdatePolicy(delay=S), restart_delay=2 * S, force=True))
    body = spec_to_json(spec)
    assert body["UpdateConfig"]["Delay"] == S and body["UpdateConfig"]["Parallelism"] == 1
    assert body["TaskTemplate"]["RestartPolicy"] == {"Condition": "any", "Delay": 2 * S, "MaxAttempts": 0}
    assert body["TaskTemplate"]["ForceUpdate"] == 1
    again = apply_update(spec, UpdateOptions(force=True))
    assert again.TaskTemplate.ForceUpdate == 2


def test_update_replicas_refused_for_global() -> None:
    spec = build_spec(ServiceOptions(image="i", mode="global"))
    with pytest.raises(SpecError):
        apply_update(spec, UpdateOptions(replicas=3))


def test_update_without_flags_changes_nothing() -> None:
    before = spec_to_json(_existing())
    assert spec_to_json(apply_update(_existing(), UpdateOptions())) == before
