"""Autoscaling: the policy labels (Shoal's and Aliyun's), the decisions on a fake clock, and the
autoscaler's writes against a real MemoryStore (replicas, AutoscaleStatus, the event's reason)."""

from __future__ import annotations

import pytest

from shoal.api.events import swarm_message
from shoal.controlapi.validate import validate_service_spec
from shoal.dispatcher.stats import ServiceUsage
from shoal.errors import InvalidArgument
from shoal.extensions import AutoscalePolicy, parse_autoscale
from shoal.models import ContainerSpec, GlobalService, ServiceMode, ServiceSpec, TaskSpec
from shoal.orchestrator.autoscale import Autoscaler, _Watch, decide
from shoal.orchestrator.testutils import make_service, make_store

SHOAL = {"shoal.autoscale.max": "5", "shoal.autoscale.cpu-target": "70", "shoal.autoscale.window": "10s",
         "shoal.autoscale.cooldown": "1m"}


def usage(cpu: float, tasks: int = 1, mem: float = 0.0) -> ServiceUsage:
    return ServiceUsage(tasks=tasks, cpu_percent_avg=cpu, cpu_limit_percent_avg=cpu, cpu_percent_sum=cpu * tasks,
                        mem_bytes_avg=0, mem_bytes_sum=0, mem_limit_percent_avg=mem, net_rx_bytes_sum=0,
                        net_tx_bytes_sum=0)


def test_shoal_labels() -> None:
    p = parse_autoscale(SHOAL)
    assert p == AutoscalePolicy(min_replicas=1, max_replicas=5, cpu_high=70.0, window_s=10.0, cooldown_s=60.0)
    assert parse_autoscale({"other": "x"}) is None


def test_aliyun_labels_as_documented() -> None:
    p = parse_autoscale({"aliyun.auto_scaling.max_cpu": "70", "aliyun.auto_scaling.step": "2"})
    assert p is not None and (p.cpu_high, p.cpu_low, p.step, p.min_replicas, p.max_replicas, p.source) == \
        (70.0, None, 2, 1, 10, "aliyun")
    p = parse_autoscale({"aliyun.auto_scaling.max_memory": "80", "aliyun.auto_scaling.min_memory": "20",
                         "aliyun.auto_scaling.min_instances": "2", "aliyun.auto_scaling.max_instances": "4"})
    assert p is not None and (p.mem_high, p.mem_low, p.min_replicas, p.max_replicas) == (80.0, 20.0, 2, 4)


@pytest.mark.parametrize(("labels", "error"), [
    ({"shoal.autoscale.cpu-target": "70"}, "shoal.autoscale.max is required"),
    ({"shoal.autoscale.max": "3"}, "needs shoal.autoscale.cpu-target or shoal.autoscale.memory-target"),
    ({**SHOAL, "shoal.autoscale.cpu-target": "lots"}, "expected a percentage"),
    ({**SHOAL, "shoal.autoscale.min": "9"}, "minimum (9) is above the maximum (5)"),
    ({**SHOAL, "shoal.autoscale.window": "soon"}, "expected a duration"),
    ({**SHOAL, "shoal.autoscale.stepp": "1"}, "unknown autoscaling label shoal.autoscale.stepp"),
    ({**SHOAL, "aliyun.auto_scaling.max_cpu": "70"}, "not both"),
    ({"aliyun.auto_scaling.max_cpu": "30", "aliyun.auto_scaling.min_cpu": "50"}, "must be below"),
    ({**SHOAL, "shoal.autoscale.max": "100000"}, "expected 1 to 10000"),
])
def test_bad_policies_are_refused_with_the_reason(labels: dict[str, str], error: str) -> None:
    with pytest.raises(ValueError, match=error.replace("(", r"\(").replace(")", r"\)")):
        parse_autoscale(labels)


def test_the_api_refuses_a_bad_or_misplaced_policy() -> None:
    spec = ServiceSpec(Name="a", TaskTemplate=TaskSpec(ContainerSpec=ContainerSpec(Image="busybox")), Labels=SHOAL)
    validate_service_spec(spec)
    with pytest.raises(InvalidArgument, match="replicated services only"):
        validate_service_spec(ServiceSpec(Name="a", TaskTemplate=spec.TaskTemplate, Labels=SHOAL,
                                          Mode=ServiceMode(Global=GlobalService())))
    with pytest.raises(InvalidArgument, match="is required"):
        validate_service_spec(ServiceSpec(Name="a", TaskTemplate=spec.TaskTemplate,
                                          Labels={"shoal.autoscale.cpu-target": "50"}))


def test_out_after_the_window_then_waits_for_new_tasks_and_stops_at_max() -> None:
    p = parse_autoscale(SHOAL)
    assert p is not None
    w = _Watch()
    assert decide(p, 1, usage(95), w, 100.0) is None  # the window starts
    assert decide(p, 1, usage(95), w, 105.0) is None
    d = decide(p, 1, usage(95), w, 110.0)
    assert d is not None and d.replicas == 2 and "average CPU 95% of limit above the target of 70%" in d.reason
    w.last_scaled, w.above_since = 110.0, None
    assert decide(p, 2, usage(95, 2), w, 120.0) is None  # the window starts again, and settles first
    assert decide(p, 2, usage(95, 2), w, 130.0) is not None
    assert decide(p, 5, usage(99, 5), w, 500.0) is None  # at the maximum
    assert decide(p, 5, usage(99, 5), w, 600.0) is None


def test_in_only_when_fewer_tasks_stay_under_the_target_and_after_the_cooldown() -> None:
    p = parse_autoscale(SHOAL)
    assert p is not None
    w = _Watch(last_scaled=0.0)
    # 40 % on 2 tasks is 80 % on 1: above 70, so it keeps 2.
    assert decide(p, 2, usage(40, 2), w, 1000.0) is None
    assert decide(p, 2, usage(40, 2), w, 1100.0) is None and w.below_since is None
    # 30 % on 2 tasks is 60 % on 1: in, once the window has passed ...
    assert decide(p, 2, usage(30, 2), w, 1200.0) is None
    d = decide(p, 2, usage(30, 2), w, 1210.0)
    assert d is not None and d.replicas == 1 and "60% on 1 task(s) fewer" in d.reason
    # ... and the cooldown: a scaling 30 s ago holds it back.
    w2 = _Watch(last_scaled=1190.0)
    decide(p, 2, usage(30, 2), w2, 1200.0)
    assert decide(p, 2, usage(30, 2), w2, 1215.0) is None
    assert decide(p, 2, usage(30, 2), w2, 1250.0) is not None
    assert decide(p, 1, usage(1, 1), _Watch(), 5000.0) is None  # never below the minimum


def test_bounds_apply_at_once_without_stats() -> None:
    p = parse_autoscale({**SHOAL, "shoal.autoscale.min": "2"})
    assert p is not None
    d = decide(p, 1, None, _Watch(), 0.0)
    assert d is not None and d.replicas == 2 and "below the autoscaling minimum of 2" in d.reason
    d = decide(p, 9, None, _Watch(), 0.0)
    assert d is not None and d.replicas == 5


def test_aliyun_min_cpu_is_the_scale_in_threshold_and_memory_must_agree() -> None:
    p = parse_autoscale({"aliyun.auto_scaling.max_cpu": "70", "aliyun.auto_scaling.min_cpu": "30",
                         "aliyun.auto_scaling.max_memory": "80", "aliyun.auto_scaling.step": "2"})
    assert p is not None
    w = _Watch()
    decide(p, 4, usage(20, 4, mem=90), w, 0.0)  # memory above its target: out, not in
    assert w.above_since == 0.0 and w.below_since is None
    w = _Watch()
    decide(p, 4, usage(20, 4, mem=10), w, 0.0)
    d = decide(p, 4, usage(20, 4, mem=10), w, 200.0)
    assert d is not None and d.replicas == 2 and "below 30%" in d.reason


def test_the_autoscaler_writes_replicas_status_and_an_event_reason() -> None:
    store = make_store()
    svc = make_service(store, "busy", replicas=1, Labels={**SHOAL, "shoal.autoscale.window": "1s"})
    calm = make_service(store, "calm", replicas=1)
    now = [1000.0]
    seen: dict[str, ServiceUsage | None] = {svc.ID: usage(99), calm.ID: usage(99)}
    auto = Autoscaler(store, seen.get, clock=lambda: now[0])
    events = store.watch("service")
    assert auto.evaluate() == []
    now[0] += 2
    done = auto.evaluate()
    assert [sid for sid, _ in done] == [svc.ID]
    cur = store.get("service", svc.ID)
    assert cur.Spec.Mode.Replicated.Replicas == 2 and cur.PreviousSpec is None
    st = cur.AutoscaleStatus
    assert st is not None and (st.Replicas, st.PreviousReplicas, st.Decisions) == (2, 1, 1) and st.At
    assert store.get("service", calm.ID).AutoscaleStatus is None  # no policy: never touched
    msgs = [swarm_message(e) for e in events.drain()]
    attrs = [m["Actor"]["Attributes"] for m in msgs if m is not None and m["Actor"]["ID"] == svc.ID]
    assert any(a.get("replicas.new") == "2" and "above the target" in a.get("autoscale.reason", "") for a in attrs)
    # A new leader's autoscaler takes the last scaling time from the status: the cooldown holds.
    seen[svc.ID] = usage(1, 2)
    fresh = Autoscaler(store, seen.get, clock=lambda: now[0])
    assert fresh.evaluate() == []  # the window starts
    now[0] += 5
    assert fresh.evaluate() == []  # the window has passed, the cooldown (1m from the status) not yet
    now[0] += 60
    assert [d.replicas for _, d in fresh.evaluate()] == [1]
