"""Aliyun's ``aliyun.lb.port_*`` and ``aliyun.routing.*`` labels in Compose files.

Aliyun reads them from a service's ``labels:`` (container labels in Compose's terms); the manager
reads them from the service's own labels (lbroute/keeper.py), so they are copied there, wherever
the file put them. A malformed one, or a load-balanced port the service does not publish, is an
error with the file, line and label here, rather than a 400 from the manager naming no line.
"""

from __future__ import annotations

from typing import Any

from shoal import models as m
from shoal.lbroute.labels import LB_PREFIX, LabelError, is_routing_label, parse
from shoal.lbroute.plan import match_port

from .errors import ComposeError


def service_labels(project: Any, name: str, labels: dict[str, str], deploy_labels: dict[str, str],
                   ports: list[m.PortConfig]) -> dict[str, str]:
    """The routing labels to add to the service's labels (``deploy.labels`` win over ``labels``).
    ``project`` is the loader's Project (its ``error(message, key path)`` finds the line)."""
    where = {k: ("services", name, "labels", k) for k in labels if is_routing_label(k)}
    where |= {k: ("services", name, "deploy", "labels", k) for k in deploy_labels if is_routing_label(k)}
    out = {k: labels[k] for k in labels if is_routing_label(k)}
    out |= {k: deploy_labels[k] for k in deploy_labels if is_routing_label(k)}
    if not out:
        return {}
    try:
        cfg = parse(out)
    except LabelError as e:
        raise _error(project, e.message, where[e.key]) from None
    for b in cfg.bindings:
        if match_port(b.port, ports) is None:
            key = f"{LB_PREFIX}{b.port}"
            raise _error(project, f"the service publishes no TCP port {b.port} (add it to ports: the load "
                                  "balancer sends to the published port)", where[key])
    return out


def _error(project: Any, message: str, path: tuple[str, ...]) -> ComposeError:
    err: ComposeError = project.error(message, path)
    return err
