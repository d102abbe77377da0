"""Stacks: a Compose project as one object that owns its services, networks, secrets and configs.

``docker stack deploy`` does this work in the client and leaves the daemon nothing but labels; Shoal
keeps a ``Stack`` object as well, so that a deploy is validated as a whole before anything is
written, a re-deploy changes only what changed (and removes what the file dropped, with prune),
a dry run can say what would change and where tasks would go, and services are created in
``depends_on`` order (the :class:`shoal.orchestrator.stacks.StackDeployer` finishes what a deploy
could not create at once). Everything a stack makes carries ``com.docker.stack.namespace``, so the
docker CLI's ``stack ls/ps/services/rm`` see Shoal stacks, and Shoal sees stacks the docker CLI made.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import msgspec

from shoal.controlapi import networks as netapi
from shoal.controlapi import secrets as secretapi
from shoal.controlapi.errors import invalid
from shoal.controlapi.lbroute import check_routing_conflicts
from shoal.controlapi.services import create_service, remove_service, service_status, update_service
from shoal.controlapi.users import TEAM_LABEL
from shoal.controlapi.validate import check_reservation_fits, validate_service_spec
from shoal.errors import InvalidArgument, NotFound
from shoal.ids import new_id
from shoal.models import (
    ConfigSpec,
    NetworkSpec,
    SecretSpec,
    Service,
    ServiceSpec,
    Stack,
    StackResources,
    StackSpec,
    StackStatus,
    TaskState,
    Version,
    now_ts,
)
from shoal.store import MemoryStore

NAMESPACE = "com.docker.stack.namespace"
# docker/cli's rule for stack names: they prefix every object name.
_STACK_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]*$")
CONDITIONS = ("service_started", "service_healthy", "service_completed_successfully")


@dataclass
class Change:
    kind: str  # service, network, secret, config
    name: str
    action: str  # create, update, unchanged, remove, wait (created once its dependencies are ready)
    detail: str = ""


@dataclass
class DeployResult:
    stack: Stack | None
    changes: list[Change] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    plans: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "ID": self.stack.ID if self.stack is not None else "",
            "Changes": [{"Kind": c.kind, "Name": c.name, "Action": c.action, "Detail": c.detail}
                        for c in self.changes],
            "Warnings": self.warnings,
            "Plans": self.plans,
        }


# --------------------------------------------------------------------------- look-ups


def owned(store: MemoryStore, kind: str, stack: str) -> list[Any]:
    """Objects of ``kind`` labelled as belonging to ``stack`` (services by their spec labels)."""
    return [o for o in store.list(kind) if (o.Spec.Labels or {}).get(NAMESPACE) == stack]


def get_stack(store: MemoryStore, name: str) -> Stack:
    for s in store.list("stack"):
        if s.Spec.Name == name or s.ID == name:
            return s
    raise NotFound(f"stack {name} not found")


def find_stack(store: MemoryStore, name: str) -> Stack | None:
    try:
        return get_stack(store, name)
    except NotFound:
        return None


def _by_name(store: MemoryStore, kind: str, name: str) -> Any | None:
    for o in store.list(kind):
        if o.Spec.Name == name:
            return o
    return None


def check_stack_name(name: str) -> None:
    if not name:
        raise InvalidArgument("stack name is required")
    if not _STACK_NAME.match(name) or len(name) > 63:
        raise InvalidArgument(f"invalid stack name {name!r}: use letters, digits, '_', '.' and '-', "
                              "starting with a letter or digit (at most 63 characters)")


# --------------------------------------------------------------------------- validation


def _labelled(labels: dict[str, str] | None, stack: str, team: str | None = None) -> dict[str, str]:
    """The stack's label on one of its objects, and the stack's team (``shoal.team``) when it has
    one: everything a stack makes belongs to its team, whatever the file says (authorization
    checks the stack's team only, so a file must not place an object in another)."""
    out = {**(labels or {}), NAMESPACE: stack}
    if team:
        out[TEAM_LABEL] = team
    return out


def _prepare(spec: StackSpec) -> StackResources:
    """Check the whole stack before anything is written; return its resources with every object
    labelled as the stack's and every service spec validated (Mode made explicit)."""
    check_stack_name(spec.Name)
    res = spec.Resources or StackResources()
    stack = spec.Name
    team = (spec.Labels or {}).get(TEAM_LABEL)
    services = res.Services or {}
    if not services:
        raise InvalidArgument(f"stack {stack}: the Compose file defines no service")
    checked: dict[str, ServiceSpec] = {}
    for key, svc in services.items():
        svc = msgspec.structs.replace(svc, Labels=_labelled(svc.Labels, stack, team))
        if not svc.Name:
            svc = msgspec.structs.replace(svc, Name=f"{stack}_{key}")
        try:
            checked[key] = validate_service_spec(svc)
        except InvalidArgument as e:
            raise type(e)(f"service {key}: {e}") from None
    order = res.Order or [list(services)]
    listed = [n for wave in order for n in wave]
    if sorted(listed) != sorted(services):
        raise InvalidArgument(f"stack {stack}: Order must list every service exactly once")
    seen: set[str] = set()
    for wave in order:
        for name in wave:
            for dep, cond in ((res.WaitFor or {}).get(name) or {}).items():
                if dep not in services:
                    raise InvalidArgument(f"service {name} depends on undefined service {dep}")
                if dep not in seen:
                    raise InvalidArgument(f"service {name} depends on {dep}, which Order places after it")
                if cond not in CONDITIONS:
                    raise InvalidArgument(f"service {name}: unknown depends_on condition {cond!r}")
        seen.update(wave)
    return msgspec.structs.replace(
        res,
        Services=checked,
        Networks={n: msgspec.structs.replace(s, Name=n, Labels=_labelled(s.Labels, stack, team))
                  for n, s in (res.Networks or {}).items()},
        Secrets={n: msgspec.structs.replace(s, Name=n, Labels=_labelled(s.Labels, stack, team))
                 for n, s in (res.Secrets or {}).items()},
        Configs={n: msgspec.structs.replace(s, Name=n, Labels=_labelled(s.Labels, stack, team))
                 for n, s in (res.Configs or {}).items()},
        Order=order,
    )


def _check_references(store: MemoryStore, res: StackResources) -> None:
    """Every network, secret and config a service names is the stack's own or exists (externals
    must exist already: Compose's ``external: true`` promises it)."""
    for kind, own, external in (
        ("network", res.Networks or {}, res.ExternalNetworks or []),
        ("secret", res.Secrets or {}, res.ExternalSecrets or []),
        ("config", res.Configs or {}, res.ExternalConfigs or []),
    ):
        for name in external:
            if _by_name(store, kind, name) is None and store.get(kind, name) is None:
                raise NotFound(f"{kind} {name} is declared as external, but could not be found; "
                               f"create it first (docker {kind} create)")
        known = set(own) | set(external)
        for key, svc in (res.Services or {}).items():
            for ref in _references(svc, kind):
                if ref not in known and _by_name(store, kind, ref) is None and store.get(kind, ref) is None:
                    raise NotFound(f"service {key}: {kind} {ref} not found")
    # A load balancer port or routed hostname another service holds (or two of the stack's own).
    check_routing_conflicts(store, (res.Services or {}).values())


def _references(svc: ServiceSpec, kind: str) -> list[str]:
    task = svc.TaskTemplate
    cs = task.ContainerSpec
    if kind == "network":
        return [n.Target for n in (task.Networks or svc.Networks or [])]
    if kind == "secret":
        return [r.SecretName or r.SecretID for r in (cs.Secrets if cs else None) or []]
    return [r.ConfigName or r.ConfigID for r in (cs.Configs if cs else None) or []]


# --------------------------------------------------------------------------- comparing specs


def _canonical(store: MemoryStore, spec: ServiceSpec) -> ServiceSpec:
    """A spec with network, secret and config references by name, so a stored (resolved) spec and
    one fresh from a Compose file (names only) compare equal when they mean the same thing."""
    def net_name(target: str) -> str:
        n = store.get("network", target)
        return n.Spec.Name if n is not None else target

    task = spec.TaskTemplate
    nets = task.Networks or spec.Networks
    if nets:
        nets = sorted((msgspec.structs.replace(n, Target=net_name(n.Target)) for n in nets),
                      key=lambda n: n.Target)
    cs = task.ContainerSpec
    if cs is not None and (cs.Secrets or cs.Configs):
        cs = msgspec.structs.replace(
            cs,
            Secrets=[msgspec.structs.replace(r, SecretID="", File=_file_key(r.File)) for r in cs.Secrets or []] or None,
            Configs=[msgspec.structs.replace(r, ConfigID="", File=_file_key(r.File)) for r in cs.Configs or []] or None,
        )
    task = msgspec.structs.replace(task, Networks=nets or None, ContainerSpec=cs)
    return msgspec.structs.replace(spec, TaskTemplate=task, Networks=None)


def _file_key(f: dict[str, Any] | None) -> dict[str, Any] | None:
    """A reference's file target, defaults spelled out (resolution fills them in)."""
    if f is None:
        return None
    return {"Name": f.get("Name", ""), "UID": str(f.get("UID") or "0"), "GID": str(f.get("GID") or "0"),
            "Mode": int(f.get("Mode") or 0o444)}


def _diff(old: ServiceSpec, new: ServiceSpec) -> str:
    """The top-level fields that differ, for dry runs and deploy output (``TaskTemplate.ContainerSpec.Image``)."""
    a, b = msgspec.to_builtins(old), msgspec.to_builtins(new)
    out: list[str] = []

    def walk(x: Any, y: Any, path: str, depth: int) -> None:
        if x == y:
            return
        if depth < 3 and isinstance(x, dict) and isinstance(y, dict):
            for k in sorted(set(x) | set(y)):
                walk(x.get(k), y.get(k), f"{path}.{k}" if path else k, depth + 1)
        else:
            out.append(path)

    walk(a, b, "", 0)
    return ", ".join(out)


# --------------------------------------------------------------------------- deploy


def deploy_stack(
    store: MemoryStore,
    spec: StackSpec,
    *,
    prune: bool = False,
    dry_run: bool = False,
    live_scheduler: Any = None,
) -> DeployResult:
    """Create or update a stack. Everything is checked before the first write; a dry run stops there
    and reports what would change and where new or changed services' tasks would go.

    A redeploy that names no team keeps the stack's (``shoal.team``): a team changes only when a
    deploy names another one."""
    existing = find_stack(store, spec.Name) if spec.Name else None
    kept_team = (existing.Spec.Labels or {}).get(TEAM_LABEL) if existing is not None else None
    if kept_team and not (spec.Labels or {}).get(TEAM_LABEL):
        spec = msgspec.structs.replace(spec, Labels={**(spec.Labels or {}), TEAM_LABEL: kept_team})
    res = _prepare(spec)
    _check_references(store, res)
    stack = spec.Name
    services = res.Services or {}
    for key, svc in services.items():
        try:
            check_reservation_fits(svc, store.list("node"), store.cluster())
        except InvalidArgument as e:
            raise type(e)(f"service {key}: {e}") from None

    result = DeployResult(stack=find_stack(store, stack))
    changes = result.changes
    for kind, wanted in (("network", res.Networks), ("secret", res.Secrets), ("config", res.Configs)):
        for name, want in (wanted or {}).items():
            cur = _by_name(store, kind, name)
            if cur is None:
                changes.append(Change(kind, name, "create"))
            elif kind != "network" and getattr(cur.Spec, "Data", None) not in ("", want.Data):
                # Swarm's secrets and configs are immutable; docker stack deploy fails the same way.
                raise InvalidArgument(f"{kind} {name} exists with other data; {kind}s cannot change: "
                                      f"give the new version another name")
            else:
                changes.append(Change(kind, name, "unchanged"))

    current = {s.Spec.Name: s for s in owned(store, "service", stack)}
    pending: list[str] = []
    creates: list[str] = []
    updates: list[tuple[Service, ServiceSpec]] = []
    for key in (k for wave in res.Order or [] for k in wave):
        svc = services[key]
        cur = current.get(svc.Name)
        if cur is None:
            deps = (res.WaitFor or {}).get(key) or {}
            if any(_dep_blocks(store, stack, dep, cond, set(pending) | set(creates)) for dep, cond in deps.items()):
                pending.append(key)
                changes.append(Change("service", svc.Name, "wait",
                                      "after " + ", ".join(f"{d} ({c})" for d, c in deps.items())))
            else:
                creates.append(key)
                changes.append(Change("service", svc.Name, "create"))
            continue
        # The file knows nothing of ForceUpdate (`service update --force`, cron runs): keep the
        # service's, as docker stack deploy does, so a re-deploy does not count as a change.
        svc = services[key] = msgspec.structs.replace(
            svc, TaskTemplate=msgspec.structs.replace(svc.TaskTemplate, ForceUpdate=cur.Spec.TaskTemplate.ForceUpdate))
        old, new = _canonical(store, cur.Spec), _canonical(store, svc)
        if old == new:
            changes.append(Change("service", svc.Name, "unchanged"))
        else:
            updates.append((cur, svc))
            changes.append(Change("service", svc.Name, "update", _diff(old, new)))
    wanted_names = {s.Name for s in services.values()}
    removes = [s for name, s in current.items() if name not in wanted_names]
    for s in removes:
        changes.append(Change("service", s.Spec.Name, "remove" if prune else "unchanged",
                              "" if prune else "not in the file any more (deploy with prune to remove it)"))
    if prune:
        for kind, wanted, external in (("network", res.Networks, res.ExternalNetworks),
                                       ("secret", res.Secrets, res.ExternalSecrets),
                                       ("config", res.Configs, res.ExternalConfigs)):
            for o in owned(store, kind, stack):
                if o.Spec.Name not in (wanted or {}) and o.Spec.Name not in (external or []):
                    changes.append(Change(kind, o.Spec.Name, "remove"))

    if dry_run:
        from shoal.scheduler import plan  # the scheduler imports the control API's validators

        hostnames = {n.ID: n.Description.Hostname for n in store.list("node")}
        updated = {cur.Spec.Name for cur, _ in updates}
        for key in [*creates, *pending, *(k for k, s in services.items() if s.Name in updated)]:
            svc = services[key]
            result.plans[svc.Name] = [
                {"Slot": p.slot, "NodeID": p.node_id or "", "Node": hostnames.get(p.node_id or "", ""),
                 "Reason": p.reason}
                for p in plan(store, svc, live=live_scheduler)
            ]
        return result

    # ---- writes: shared objects first (services refer to them), then the stack, then services
    for kind, wanted in (("network", res.Networks), ("secret", res.Secrets), ("config", res.Configs)):
        for name, want in (wanted or {}).items():
            if _by_name(store, kind, name) is None:
                _create(store, kind, want)
    stored = StackSpec(Name=stack, Labels=spec.Labels, Compose=spec.Compose, Resources=_without_data(res))
    status = StackStatus(State="deploying" if pending else "deployed",
                         Message=f"waiting for dependencies of {', '.join(pending)}" if pending else "",
                         Pending=pending or None, WaitingSince=now_ts() if pending else "")
    with store.tx() as tx:
        if result.stack is None:
            result.stack = Stack(ID=new_id(), Version=Version(), CreatedAt="", UpdatedAt="", Spec=stored,
                                 Status=status)
            tx.create("stack", result.stack)
        else:
            result.stack = msgspec.structs.replace(result.stack, Spec=stored, Status=status)
            tx.update("stack", result.stack)
    for key in creates:
        create_service(store, services[key])
    for cur, svc in updates:
        update_service(store, cur.ID, cur.Version.Index, svc)
    if prune:
        for s in removes:
            remove_service(store, s.ID)
        for c in changes:
            if c.action == "remove" and c.kind != "service":
                _remove(store, c.kind, c.name, result.warnings)
    result.stack = store.get("stack", result.stack.ID)
    return result


def _without_data(res: StackResources) -> StackResources:
    """What the stack object keeps: secrets' and configs' data live in their own objects only."""
    return msgspec.structs.replace(
        res,
        Secrets={n: msgspec.structs.replace(s, Data="") for n, s in (res.Secrets or {}).items()} or None,
        Configs={n: msgspec.structs.replace(s, Data="") for n, s in (res.Configs or {}).items()} or None,
    )


def _create(store: MemoryStore, kind: str, spec: NetworkSpec | SecretSpec | ConfigSpec) -> None:
    if kind == "network":
        assert isinstance(spec, NetworkSpec)
        netapi.create_network(store, spec)
    elif kind == "secret":
        assert isinstance(spec, SecretSpec)
        secretapi.create_secret(store, spec)
    else:
        assert isinstance(spec, ConfigSpec)
        secretapi.create_config(store, spec)


def _remove(store: MemoryStore, kind: str, name: str, warnings: list[str]) -> None:
    """Remove a stack's network, secret or config; one still used elsewhere stays, with a warning."""
    try:
        if kind == "network":
            netapi.remove_network(store, name)
        elif kind == "secret":
            secretapi.remove_secret(store, name)
        else:
            secretapi.remove_config(store, name)
    except (InvalidArgument, NotFound) as e:
        warnings.append(f"{kind} {name} kept: {e}")
    except Exception as e:  # Conflict (in use) and the like: keep it, say why
        warnings.append(f"{kind} {name} kept: {e}")


# --------------------------------------------------------------------------- dependencies


def _dep_blocks(store: MemoryStore, stack: str, dep: str, cond: str, not_yet: set[str]) -> bool:
    """True while dependency ``dep`` (a Compose service name) does not meet ``cond``."""
    if dep in not_yet:
        return True
    svc = store.service_by_name(f"{stack}_{dep}")
    if svc is None:
        return True
    return not dependency_met(store, svc, cond)


def dependency_met(store: MemoryStore, svc: Service, cond: str) -> bool:
    """service_started: a task runs; service_healthy: every wanted task runs (a task with a health
    check only reaches RUNNING once healthy); service_completed_successfully: a task completed."""
    tasks = store.tasks_of_service(svc.ID)
    if cond == "service_completed_successfully":
        return any(t.Status.State is TaskState.COMPLETE for t in tasks)
    running = sum(1 for t in tasks if t.Status.State is TaskState.RUNNING and t.DesiredState is TaskState.RUNNING)
    if cond == "service_healthy":
        desired = service_status(store, svc).DesiredTasks
        return running >= max(desired, 1)
    return running >= 1


# --------------------------------------------------------------------------- scale, remove, list


def scale_stack(store: MemoryStore, name: str, replicas: dict[str, int]) -> list[Service]:
    """``stack scale vote worker=3``: every name is checked before any service changes."""
    stack = get_stack(store, name)
    todo: list[tuple[Service, ServiceSpec]] = []
    for key, count in replicas.items():
        if not isinstance(count, int) or isinstance(count, bool) or count < 0:
            raise InvalidArgument(f"invalid replicas for {key}: {count!r} (a whole number, 0 or more)")
        svc = store.service_by_name(key) or store.service_by_name(f"{stack.Spec.Name}_{key}")
        if svc is None or (svc.Spec.Labels or {}).get(NAMESPACE) != stack.Spec.Name:
            raise NotFound(f"service {key} not found in stack {stack.Spec.Name}")
        mode = svc.Spec.Mode
        if mode is None or mode.Replicated is None:
            raise invalid(f"service {svc.Spec.Name} is not a replicated service; it cannot be scaled")
        new_mode = msgspec.structs.replace(mode, Replicated=msgspec.structs.replace(mode.Replicated, Replicas=count))
        todo.append((svc, msgspec.structs.replace(svc.Spec, Mode=new_mode)))
    out = [update_service(store, svc.ID, svc.Version.Index, spec) for svc, spec in todo]
    # Keep the stack's record in step, so inspect and a later dry run show the scaled counts.
    res = stack.Spec.Resources
    if res is not None and res.Services:
        by_name = {s.Spec.Name: s.Spec for s in out}
        services = {k: (msgspec.structs.replace(v, Mode=by_name[v.Name].Mode) if v.Name in by_name else v)
                    for k, v in res.Services.items()}
        new_spec = msgspec.structs.replace(stack.Spec, Resources=msgspec.structs.replace(res, Services=services))
        with store.tx() as tx:
            tx.update("stack", msgspec.structs.replace(stack, Spec=new_spec))
    return out


def remove_stack(store: MemoryStore, name: str) -> list[str]:
    """Remove a stack's services, then its networks, secrets and configs, then the stack object.
    Works for stacks the docker CLI deployed too (they exist only as labels). Returns warnings."""
    stack = find_stack(store, name)
    services = owned(store, "service", name)
    others = {k: owned(store, k, name) for k in ("network", "secret", "config")}
    if stack is None and not services and not any(others.values()):
        raise NotFound(f"stack {name} not found")
    warnings: list[str] = []
    with store.tx() as tx:
        for s in services:
            tx.delete("service", s.ID)
        if stack is not None:
            tx.delete("stack", stack.ID)
    for kind, objs in others.items():
        for o in objs:
            _remove(store, kind, o.Spec.Name, warnings)
    return warnings


def list_stacks(store: MemoryStore) -> list[dict[str, Any]]:
    """Every stack: Shoal's stack objects and namespaces found only on labels (docker stack deploy)."""
    counts: dict[str, int] = {}
    for s in store.list("service"):
        ns = (s.Spec.Labels or {}).get(NAMESPACE)
        if ns:
            counts[ns] = counts.get(ns, 0) + 1
    out = []
    objects = {s.Spec.Name: s for s in store.list("stack")}
    for name in sorted(set(counts) | set(objects)):
        st = objects.get(name)
        out.append({
            "Name": name,
            "ID": st.ID if st else "",
            "Services": counts.get(name, 0),
            "Orchestrator": "Swarm",
            "State": (st.Status.State if st and st.Status else "") or ("deployed" if st else "labels only"),
            "Message": st.Status.Message if st and st.Status else "",
            "CreatedAt": st.CreatedAt if st else "",
            "UpdatedAt": st.UpdatedAt if st else "",
        })
    return out
