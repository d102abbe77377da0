"""Compose project → swarm ServiceSpecs."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from shoal import models as m
from shoal.compose import ComposeError, load, to_service_specs
from shoal.compose.convert import duration, parse_port, size

DATA = Path(__file__).parent / "compose"


def test_v3_deploy_mapping() -> None:
    p = load([DATA / "valid/v3.yml"], env={"TAG": "t"})
    specs = to_service_specs(p, "vote")
    s = specs["vote"]
    assert s.Name == "vote_vote"
    assert s.Labels == {"svc": "vote", "com.docker.stack.namespace": "vote"}
    c = s.TaskTemplate.ContainerSpec
    assert c.Image == "busybox:latest"
    assert c.Command == ["/bin/sh"] and c.Args == ["httpd", "-f", "-p", "80"]
    assert c.Labels == {"team": "blue", "com.docker.stack.namespace": "vote",
                        "io.rancher.stack.name": "vote", "io.rancher.stack_service.name": "vote/vote"}
    assert c.Env == ["PRICE=$5", "TAG=t"]
    assert (c.Hostname, c.User, c.Dir, c.StopSignal) == ("vote", "1000", "/srv", "SIGINT")
    assert c.StopGracePeriod == 90 * m.SECOND
    assert c.Healthcheck == m.HealthConfig(Test=["CMD-SHELL", "wget -q -O- localhost"], Interval=30 * m.SECOND,
                                           Timeout=5 * m.SECOND, Retries=3, StartPeriod=60 * m.SECOND)
    assert s.Mode.Replicated.Replicas == 3
    pl = s.TaskTemplate.Placement
    assert pl.Constraints == ["node.role == worker"] and pl.MaxReplicas == 2
    assert pl.Preferences == [m.PlacementPreference(Spread={"SpreadDescriptor": "node.labels.zone"})]
    r = s.TaskTemplate.Resources
    assert r.Limits == m.ResourceLimits(NanoCPUs=500_000_000, MemoryBytes=50 << 20)
    assert r.Reservations == m.ResourceReservations(NanoCPUs=250_000_000, MemoryBytes=20 << 20)
    rp = s.TaskTemplate.RestartPolicy
    assert rp == m.RestartPolicy(Condition=m.RestartCondition.ON_FAILURE, Delay=5 * m.SECOND, MaxAttempts=3,
                                 Window=120 * m.SECOND)
    assert s.UpdateConfig.Parallelism == 2 and s.UpdateConfig.Order == "start-first"
    assert s.UpdateConfig.FailureAction == "rollback" and s.UpdateConfig.Delay == 10 * m.SECOND
    assert s.RollbackConfig.Parallelism == 1
    assert s.EndpointSpec.Mode == "vip"
    assert s.EndpointSpec.Ports == [m.PortConfig(TargetPort=80, PublishedPort=5000),
                                    m.PortConfig(TargetPort=81, PublishedPort=5001, Protocol="udp", PublishMode="host")]
    assert specs["redis"].Mode == m.ServiceMode(Global=m.GlobalService())
    # The spec is valid for the control API: it round-trips through msgspec's strict decoding.
    assert msgspec.json.decode(msgspec.json.encode(s), type=m.ServiceSpec) == s


def test_v2_keys_and_warnings() -> None:
    p = load([DATA / "valid/v2.yml"], env={})
    app = to_service_specs(p, "st")["app"]
    assert app.Mode.Replicated.Replicas == 2
    assert app.TaskTemplate.Resources.Limits == m.ResourceLimits(NanoCPUs=500_000_000, MemoryBytes=64 << 20)
    assert app.TaskTemplate.Resources.Reservations.MemoryBytes == 32 << 20
    assert any("cpu_shares" in w and "v2.yml:9" in w for w in p.warnings)


def test_v1_links_warning_and_env_file() -> None:
    p = load([DATA / "valid/v1.yml"], env={})
    specs = to_service_specs(p, "s")
    assert specs["web"].TaskTemplate.ContainerSpec.Args == ["sleep", "1000"]
    assert any("links" in w and "v1.yml:6" in w for w in p.warnings)
    p = load([DATA / "valid/spec.yml"], env={}, profiles=["debug"])
    specs = to_service_specs(p, "s")
    assert specs["web"].TaskTemplate.ContainerSpec.Env == ["FROM_FILE=1"]
    assert any("container_name" in w and "spec.yml:10" in w for w in p.warnings)


def test_build_without_image_is_an_error(tmp_path: Path) -> None:
    f = tmp_path / "c.yml"
    f.write_text("services:\n  web:\n    build: .\n")
    with pytest.raises(ComposeError) as e:
        to_service_specs(load([f], env={}), "s")
    assert e.value.line == 3 and e.value.key == "services.web.build"


def test_units() -> None:
    assert duration("1m30s") == 90 * m.SECOND and duration("500ms") == 500_000_000 and duration(2) == 2 * m.SECOND
    assert size("64m") == 64 << 20 and size("1.5G") == int(1.5 * (1 << 30)) and size(10) == 10
    assert parse_port("127.0.0.1:8000-8001:80-81/udp") == [
        m.PortConfig(TargetPort=80, PublishedPort=8000, Protocol="udp"),
        m.PortConfig(TargetPort=81, PublishedPort=8001, Protocol="udp"),
    ]
    assert parse_port(9000) == [m.PortConfig(TargetPort=9000)]
    with pytest.raises(ValueError):
        duration("soon")


def test_aliyun_gpu_label_reserves_gpus_and_rancher_labels_reach_the_scheduler() -> None:
    from shoal.scheduler.expressions import parse_rules

    s = to_service_specs(load([DATA / "valid/aliyun-gpu.yml"], env={}), "ml")["train"]
    (gpu,) = s.TaskTemplate.Resources.Reservations.GenericResources
    assert gpu.DiscreteResourceSpec == {"Kind": "gpu", "Value": 2}
    labels = s.TaskTemplate.ContainerSpec.Labels
    assert labels["io.rancher.scheduler.affinity:container_label_ne"] == "app=train"
    assert parse_rules(None, labels)  # the scheduler reads the Rancher rule from the container labels
