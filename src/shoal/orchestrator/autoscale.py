"""The autoscaler: scales replicated services with an autoscaling policy on their tasks' usage.

Every ``eval_s`` it looks at each service whose labels carry a policy (shoal/extensions.py) and at
its usage now — the average over its running tasks' latest samples (dispatcher/stats.py), in
percent of each task's limit. Out when the average stays above the target for the policy's window;
in when the same load over one step fewer tasks would still stay under it (or, with Aliyun's
labels, when it stays below ``min_*``) for the window, and the cooldown has passed since the last
scaling; never past min/max (a service outside them is brought back at once). After scaling it
waits a window before it judges again, so the new tasks report first.

A decision is a write of the service's replicas, like ``docker service scale``: the replicated
orchestrator does the rest. The same write records ``Service.AutoscaleStatus`` (what, from what,
why, when), which `service inspect` shows and which makes the swarm's service update event carry
``autoscale.reason`` (api/events.py). Windows and the last scaling time are kept in memory; the
last scaling time survives a change of leader through AutoscaleStatus.At.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import msgspec

from shoal.dispatcher.stats import ServiceUsage
from shoal.errors import Conflict
from shoal.extensions import AutoscalePolicy, parse_autoscale
from shoal.models import AutoscaleStatus, ReplicatedService, Service, ServiceMode, parse_ts
from shoal.orchestrator.cron import format_ts
from shoal.store import MemoryStore

log = logging.getLogger(__name__)

EVAL_S = 2.0

Usage = Callable[[str], ServiceUsage | None]


@dataclass(slots=True)
class _Watch:
    """What the autoscaler remembers of one service between evaluations."""

    above_since: float | None = None
    below_since: float | None = None
    last_scaled: float = 0.0  # wall clock (epoch seconds), from AutoscaleStatus.At after a restart


@dataclass(frozen=True, slots=True)
class Decision:
    replicas: int
    reason: str


def _fmt(x: float) -> str:
    return f"{x:.0f}" if abs(x - round(x)) < 0.05 or x >= 10 else f"{x:.1f}"


def _under(value: float, high: float, low: float | None, what: str, tasks: int, step: int) -> str | None:
    """Why this metric lets the service lose ``step`` tasks, or None if it does not."""
    if low is not None:
        return f"average {what} {_fmt(value)}% of limit below {_fmt(low)}%" if value < low else None
    projected = value * tasks / max(tasks - step, 1)
    if projected >= high:
        return None
    return (f"average {what} {_fmt(value)}% of limit ({_fmt(projected)}% on {step} task(s) fewer, "
            f"under the target of {_fmt(high)}%)")


def decide(policy: AutoscalePolicy, replicas: int, usage: ServiceUsage | None, watch: _Watch,
           now: float) -> Decision | None:
    """The scaling this evaluation calls for, or None. Updates ``watch``'s windows."""
    lo, hi = policy.min_replicas, policy.max_replicas
    if replicas < lo:
        return Decision(lo, f"{replicas} replica(s) is below the autoscaling minimum of {lo}")
    if replicas > hi:
        return Decision(hi, f"{replicas} replica(s) is above the autoscaling maximum of {hi}")
    if usage is None or usage.tasks == 0:
        watch.above_since = watch.below_since = None
        return None
    cpu, mem = usage.cpu_limit_percent_avg, usage.mem_limit_percent_avg
    over: list[str] = []
    if policy.cpu_high is not None and cpu > policy.cpu_high:
        over.append(f"average CPU {_fmt(cpu)}% of limit above the target of {_fmt(policy.cpu_high)}%")
    if policy.mem_high is not None and mem > policy.mem_high:
        over.append(f"average memory {_fmt(mem)}% of limit above the target of {_fmt(policy.mem_high)}%")
    under: list[str] = []
    fewer = replicas - policy.step
    if not over and fewer >= 1:
        reasons = [_under(value, high, low, what, usage.tasks, policy.step)
                   for value, high, low, what in ((cpu, policy.cpu_high, policy.cpu_low, "CPU"),
                                                  (mem, policy.mem_high, policy.mem_low, "memory"))
                   if high is not None]
        if all(reasons):  # every configured metric must agree to scale in
            under = [r for r in reasons if r]
    settle = policy.window_s  # after any scaling: the new (or remaining) tasks report first
    if over:
        watch.below_since = None
        watch.above_since = watch.above_since if watch.above_since is not None else now
        if replicas >= hi:
            return None
        if now - watch.above_since >= policy.window_s and now - watch.last_scaled >= settle:
            target = min(hi, replicas + policy.step)
            return Decision(target, f"{'; '.join(over)} for {_fmt(now - watch.above_since)}s")
        return None
    watch.above_since = None
    if under:
        watch.below_since = watch.below_since if watch.below_since is not None else now
        if replicas <= lo:
            return None
        if now - watch.below_since >= policy.window_s and now - watch.last_scaled >= policy.cooldown_s:
            target = max(lo, replicas - policy.step)
            return Decision(target, f"{'; '.join(under)} for {_fmt(now - watch.below_since)}s")
        return None
    watch.below_since = None
    return None


class Autoscaler:
    """Runs on the leader beside the orchestrators; ``usage`` reads the dispatcher's stats book."""

    def __init__(self, store: MemoryStore, usage: Usage, *, eval_s: float = EVAL_S,
                 clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.usage = usage
        self.eval_s = eval_s
        self.clock = clock
        self._watch: dict[str, _Watch] = {}

    async def run(self) -> None:
        while True:
            try:
                self.evaluate()
            except Exception:  # one bad pass must not end autoscaling for every service
                log.exception("autoscaler pass failed")
            await asyncio.sleep(self.eval_s)

    def evaluate(self) -> list[tuple[str, Decision]]:
        """One pass over the services with a policy; returns the decisions it carried out."""
        now = self.clock()
        done: list[tuple[str, Decision]] = []
        seen: set[str] = set()
        for svc in self.store.list("service"):
            try:
                policy = parse_autoscale(svc.Spec.Labels)
            except ValueError:
                continue  # refused at create/update; an older one stays unscaled rather than guessed
            mode = svc.Spec.Mode
            if policy is None or mode is None or mode.Replicated is None:
                continue
            seen.add(svc.ID)
            watch = self._watch.get(svc.ID)
            if watch is None:
                watch = self._watch[svc.ID] = _Watch()
                st = svc.AutoscaleStatus
                if st is not None and st.At:
                    watch.last_scaled = parse_ts(st.At)
            replicas = mode.Replicated.Replicas or 0
            decision = decide(policy, replicas, self.usage(svc.ID), watch, now)
            if decision is None or decision.replicas == replicas:
                continue
            if self._scale(svc, replicas, decision, now):
                watch.last_scaled = now
                watch.above_since = watch.below_since = None
                done.append((svc.ID, decision))
        for sid in [s for s in self._watch if s not in seen]:
            del self._watch[sid]
        return done

    def _scale(self, svc: Service, replicas: int, decision: Decision, now: float) -> bool:
        st = svc.AutoscaleStatus or AutoscaleStatus()
        status = AutoscaleStatus(Replicas=decision.replicas, PreviousReplicas=replicas, Reason=decision.reason,
                                 At=format_ts(now), Decisions=st.Decisions + 1)
        spec = msgspec.structs.replace(
            svc.Spec, Mode=ServiceMode(Replicated=ReplicatedService(Replicas=decision.replicas)))
        try:
            with self.store.tx() as tx:
                tx.update("service", msgspec.structs.replace(svc, Spec=spec, AutoscaleStatus=status),
                          expected_version=svc.Version.Index)
        except Conflict:
            return False  # someone wrote the service meanwhile: judge it again next pass
        log.info("autoscaled service %s from %d to %d: %s", svc.Spec.Name, replicas, decision.replicas,
                 decision.reason)
        return True
