"""rancher-compose.yml: Rancher 1.x's per-service settings beside a docker-compose.yml.

rancher-compose read a second file (``-r``, by default ``rancher-compose.yml`` beside the Compose
file) whose services hold what Docker's file had no word for. Each key maps onto what Shoal has:

- ``scale: N`` → the service's replicas (it wins over ``deploy.replicas``, as in Rancher);
- ``start_on_create`` → accepted: ``up`` starts every service, as ``rancher-compose up`` does;
- ``health_check`` → the agent-run check (compose/health.py, the ``shoal.health.*`` labels);
- ``upgrade_strategy`` (``start_first``, ``batch_size``, ``interval_millis``) → ``update_config``
  (order start-first/stop-first, parallelism, delay): what a rolling update and ``compose upgrade`` use;
- ``retain_ip`` → accepted with a warning when true: a service keeps its name and virtual IP, tasks
  get new addresses;
- ``io.rancher.scheduler.global: 'true'`` (a label in docker-compose.yml) → a global service;
- ``lb_config`` of a Rancher load balancer service (``port_rules``) → the routing mesh: each rule
  publishes ``source_port`` on the target service's ``target_port`` and the balancer service itself
  is not run (the mesh balances). Host/path rules and TLS need an L7 proxy and are refused.

Anything else is an error naming the file, line and key, as the Compose loader's errors do.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from . import health as compose_health
from .interpolate import Budget, interpolate
from .source import KeyPath, Source, parse

RANCHER_FILE = "rancher-compose.yml"
KNOWN_KEYS = ("scale", "start_on_create", "health_check", "upgrade_strategy", "retain_ip", "lb_config")
STACK_LABEL = "io.rancher.stack.name"
STACK_SERVICE_LABEL = "io.rancher.stack_service.name"
_UPGRADE_KEYS = ("start_first", "batch_size", "interval_millis")
_PORT_RULE_KEYS = ("source_port", "target_port", "service", "protocol", "hostname", "path", "priority",
                   "selector", "backend_name")
_MESH_PROTOCOLS = ("tcp", "http", "udp")


def task_labels(stack: str, service: str) -> dict[str, str]:
    """The labels Rancher put on each container of a stack's service, which Shoal's tasks carry too."""
    return {STACK_LABEL: stack, STACK_SERVICE_LABEL: f"{stack}/{service}"}


GLOBAL_LABEL = "io.rancher.scheduler.global"


def is_global(labels: Any, deploy: dict[str, Any]) -> bool:
    """Rancher's ``io.rancher.scheduler.global: 'true'`` label: a task on every host, which is a global
    service (``deploy.mode`` given in the file wins; ``scale`` means nothing for it, as in Rancher)."""
    if "mode" in deploy:
        return False
    if isinstance(labels, list):
        labels = dict(str(item).partition("=")[::2] for item in labels)
    return isinstance(labels, dict) and str(labels.get(GLOBAL_LABEL, "")).lower() == "true"


def beside(compose_file: Path) -> Path | None:
    """The ``rancher-compose.yml`` in the folder of ``compose_file``, if there is one."""
    p = compose_file.parent / RANCHER_FILE
    return p if p.is_file() else None


def _services(src: Source, data: dict[str, Any]) -> tuple[dict[str, Any], KeyPath]:
    """The file's services and where they sit: under ``services`` (version 2) or at the top (v1)."""
    if "services" in data or "version" in data:
        for key in data:
            if key not in ("version", "services"):
                raise src.error(f"unsupported key {key!r} in {RANCHER_FILE} (Shoal reads version and services)",
                                (key,))
        services = data.get("services") or {}
        if not isinstance(services, dict):
            raise src.error("services must be a mapping", ("services",))
        return services, ("services",)
    return data, ()


def _bool(src: Source, value: Any, path: KeyPath) -> bool:
    if not isinstance(value, bool):
        raise src.error("must be true or false", path)
    return value


def _int(src: Source, value: Any, path: KeyPath, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise src.error(f"must be an integer of at least {minimum}", path)
    return value


def _upgrade(src: Source, cfg: Any, path: KeyPath) -> dict[str, Any]:
    """``upgrade_strategy`` → an ``update_config`` mapping (Rancher's defaults: batch 1, 2 s, stop-first)."""
    if not isinstance(cfg, dict):
        raise src.error("must be a mapping", path)
    for key in cfg:
        if key not in _UPGRADE_KEYS:
            raise src.error(f"unsupported key {key!r} (known: {', '.join(_UPGRADE_KEYS)})", (*path, key))
    out: dict[str, Any] = {"parallelism": 1, "delay": "2000ms", "order": "stop-first"}
    if "batch_size" in cfg:
        out["parallelism"] = _int(src, cfg["batch_size"], (*path, "batch_size"), 1)
    if "interval_millis" in cfg:
        out["delay"] = f"{_int(src, cfg['interval_millis'], (*path, 'interval_millis'), 0)}ms"
    if _bool(src, cfg.get("start_first", False), (*path, "start_first")):
        out["order"] = "start-first"
    return out


def _port_rules(src: Source, cfg: Any, path: KeyPath, stack: str,
                services: Mapping[str, Any]) -> list[tuple[str, str, KeyPath]]:
    """``lb_config.port_rules`` → ``(target service, "source:target/proto", where)`` for the mesh."""
    if not isinstance(cfg, dict):
        raise src.error("must be a mapping", path)
    for key in cfg:
        if key != "port_rules":
            raise src.error(f"unsupported key {key!r}: the routing mesh takes port_rules only (certificates, "
                            "stickiness and haproxy config need an L7 proxy)", (*path, key))
    rules = cfg.get("port_rules") or []
    if not isinstance(rules, list):
        raise src.error("must be a list", (*path, "port_rules"))
    out = []
    for i, rule in enumerate(rules):
        where = (*path, "port_rules", i)
        if not isinstance(rule, dict):
            raise src.error("must be a mapping", where)
        for key in rule:
            if key not in _PORT_RULE_KEYS:
                raise src.error(f"unsupported key {key!r} (known: {', '.join(_PORT_RULE_KEYS)})", (*where, key))
        for key in ("hostname", "path", "selector"):
            if rule.get(key):
                raise src.error(f"{key} rules need an L7 proxy; the routing mesh balances by port only",
                                (*where, key))
        proto = str(rule.get("protocol", "tcp")).lower()
        if proto not in _MESH_PROTOCOLS:
            raise src.error(f"protocol {proto!r}: the routing mesh forwards {', '.join(_MESH_PROTOCOLS)} "
                            "(TLS termination needs an L7 proxy)", (*where, "protocol"))
        source = _int(src, rule.get("source_port"), (*where, "source_port"), 1)
        target = _int(src, rule.get("target_port"), (*where, "target_port"), 1)
        service = str(rule.get("service") or "")
        if "/" in service:  # "stack/service": only this stack's services are reachable here
            other, _, service = service.partition("/")
            if other != stack:
                raise src.error(f"service {other}/{service} is in another stack; the mesh publishes this "
                                "stack's services", (*where, "service"))
        if service not in services:
            raise src.error(f"no such service {service!r} in the Compose files", (*where, "service"))
        out.append((service, f"{source}:{target}/{'udp' if proto == 'udp' else 'tcp'}", where))
    return out


def apply(path: Path, services: dict[str, dict[str, Any]], env: Mapping[str, str], stack: str,
          warnings: list[str], budget: Budget | None = None) -> Source:
    """Merge rancher-compose.yml at ``path`` into the loaded ``services`` (in place). Raises ComposeError."""
    src = parse(path)
    _services(src, src.data)  # shape errors before interpolation names them
    services_at = ("services",) if ("services" in src.data or "version" in src.data) else ()
    data = interpolate(src, env, warnings, budget, stack_name=stack, services_at=services_at)
    entries, at = _services(src, data)
    balancers: list[str] = []
    for name, cfg in entries.items():
        where = (*at, name)
        if name not in services:
            raise src.error(f"service {name!r} is not in the Compose files", where)
        if cfg is None:
            continue
        if not isinstance(cfg, dict):
            raise src.error("service must be a mapping", where)
        for key in cfg:
            if key not in KNOWN_KEYS:
                raise src.error(f"unsupported key {key!r} (Shoal maps {', '.join(KNOWN_KEYS)})", (*where, key))
        svc = dict(services[name])
        deploy = dict(svc.get("deploy") or {})
        if "scale" in cfg:
            deploy["replicas"] = _int(src, cfg["scale"], (*where, "scale"), 0)
            svc.pop("scale", None)
        if "start_on_create" in cfg:
            _bool(src, cfg["start_on_create"], (*where, "start_on_create"))
        if "retain_ip" in cfg and _bool(src, cfg["retain_ip"], (*where, "retain_ip")):
            warnings.append(f"{path}:{src.line_of((*where, 'retain_ip'))}: {name}: retain_ip: a task that is "
                            "replaced gets a new address; the service keeps its name and virtual IP")
        if "health_check" in cfg:
            compose_health.check({compose_health.RANCHER_KEY: cfg["health_check"]}, src, where)
            if compose_health.EXTENSION_KEY in svc:
                raise src.error(f"the Compose file gives {compose_health.EXTENSION_KEY} already",
                                (*where, "health_check"))
            svc[compose_health.RANCHER_KEY] = cfg["health_check"]
        if "upgrade_strategy" in cfg:
            deploy["update_config"] = {**(deploy.get("update_config") or {}),
                                       **_upgrade(src, cfg["upgrade_strategy"], (*where, "upgrade_strategy"))}
        if "lb_config" in cfg:
            for target, port, _rule in _port_rules(src, cfg["lb_config"], (*where, "lb_config"), stack, services):
                tsvc = services[target] if target != name else svc
                tsvc = {**tsvc, "ports": [*(tsvc.get("ports") or []), port]}
                if target == name:
                    svc = tsvc
                else:
                    services[target] = tsvc
            balancers.append(name)
        if deploy:
            svc["deploy"] = deploy
        services[name] = svc
    for name in balancers:  # the mesh balances: the haproxy container Rancher ran is not needed
        warnings.append(f"{path}: {name}: lb_config is published on the routing mesh; the load balancer "
                        "service itself is not run")
        del services[name]
    return src
