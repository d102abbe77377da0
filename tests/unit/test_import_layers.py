"""Imports point down the layers: a module of src/shoal never imports one of a higher layer.

The layers, highest first (a unit is a package or module under ``shoal.``; the longest matching
name wins, so ``ca.authority`` is its own unit and the rest of ``ca`` another):

 1. cli                                   the shoal command (client side)
 2. daemon · bench · lab                  entry points: the daemon process, benchmarks, the multi-host lab
 3. manager                               assembles the store and the leader's components
 4. console                               the web console's routes and sessions: over the API's helpers
                                          and the Compose loader (a pasted file is converted on the manager);
                                          the daemon installs it on the API's app
 5. api · agent · compose                 the manager's HTTP API; the node's agent; Compose files (client
                                          side). Siblings: none of them imports another
 6. transport · metrics · logstore         gRPC between hosts (serves the dispatcher and the CA); Prometheus
                                          metrics; the leader's collected logs and their sinks
 7. orchestrator                          reconcilers; the cron scheduler writes through controlapi
 8. controlapi                            validation and the writes behind each API call
 9. dispatcher · ca.authority             agent sessions; the cluster's root CA (siblings)
10. scheduler
11. allocator                             IPAM, VIPs, ingress
12. ha                                    managers with failover (etcd terms), over the store
13. store
14. ca · dispatcher.protocol · dispatcher.sanity
                                          certificate/token helpers and the agent protocol's types, which
                                          the store, the allocator, the transport and the agent share
15. extensions · netmode · bounds         what labels mean (shoal.* extensions, network modes); API bounds
16. models · cronexpr · duration · errors · ids · looplag · shoal (the package itself)

Why this order: it is architecture.md's picture (clients → api → controlapi/orchestrator/scheduler →
store → models, the agent below the agent protocol) made strict. The agent sits high, beside api,
although it only needs the protocol's types: placing it there is what makes any import of agent/*
by the manager's layers (controlapi, orchestrator, scheduler ...) fail here. Units of one layer are
siblings and may not import each other either.

A violation that exists today and is out of scope for the change that found it goes in ALLOWED with a
one-line reason. The list only shrinks: an entry that no longer matches an import fails the test too.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src" / "shoal"

LAYERS: tuple[tuple[str, ...], ...] = (
    ("cli",),
    ("daemon", "bench", "lab"),
    ("manager",),
    ("console",),
    ("api", "agent", "compose"),
    ("transport", "metrics", "logstore"),
    ("orchestrator",),
    ("controlapi",),
    ("dispatcher", "ca.authority", "lbroute"),
    ("scheduler",),
    ("allocator",),
    ("ha",),
    ("store",),
    ("ca", "dispatcher.protocol", "dispatcher.sanity"),
    ("extensions", "netmode", "bounds"),
    ("models", "cronexpr", "duration", "errors", "ids", "looplag", ""),  # "": shoal/__init__.py
)

# (importing module, imported module): why it is allowed for now. Remove an entry when its import goes.
ALLOWED: dict[tuple[str, str], str] = {
    # The reconcile-loop base and task predicates live in orchestrator/, but the scheduler and the
    # allocator are reconcilers too; they belong in a lower module (store-level), a move of its own.
    ("shoal.scheduler.scheduler", "shoal.orchestrator.base"): "ReconcileLoop lives in orchestrator/",
    ("shoal.allocator.allocator", "shoal.orchestrator.base"): "ReconcileLoop lives in orchestrator/",
    ("shoal.scheduler.plan", "shoal.orchestrator.task"): "task predicates (is_runnable ...) live in orchestrator/",
    ("shoal.controlapi.tasks", "shoal.orchestrator.task"): "task predicates (is_runnable ...) live in orchestrator/",
    # `shoal store rotate-key` (offline) reads the etcd settings that ha.py defines.
    ("shoal.store.rotate", "shoal.ha"): "the offline key rotation reads ha.py's etcd settings",
}


def _rank() -> dict[str, tuple[int, str]]:
    out: dict[str, tuple[int, str]] = {}
    for i, layer in enumerate(LAYERS):
        for unit in layer:
            out["shoal" + ("." + unit if unit else "")] = (i, unit)
    return out


RANK = _rank()


def unit_of(module: str) -> tuple[int, str]:
    """(layer index, unit) of a module: the longest unit name that is the module or a package above it."""
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        hit = RANK.get(".".join(parts[:n]))
        if hit is not None:
            return hit
    raise AssertionError(f"{module} is in no layer: add its package to LAYERS in {Path(__file__).name}")


def _module_name(path: Path, root: Path = SRC) -> tuple[str, str]:
    """(module, its package) for a file under ``root`` (a ``shoal`` package directory)."""
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
        return ".".join(parts), ".".join(parts)
    return ".".join(parts), ".".join(parts[:-1])


def _is_module(name: str, root: Path) -> bool:
    rel = Path(*name.split("."))
    return (root.parent / rel).with_suffix(".py").is_file() or (root.parent / rel / "__init__.py").is_file()


def imports_of(path: Path, root: Path = SRC) -> list[tuple[str, int]]:
    """Every ``shoal`` module ``path`` imports (anywhere in it: functions and TYPE_CHECKING too, since
    those couple the layers as much), with its line."""
    _, package = _module_name(path, root)
    out: list[tuple[str, int]] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:  # `from shoal import extensions` imports a module, not the package
                sub = f"{target}.{alias.name}"
                out.append((sub if _is_module(sub, root) else target, node.lineno))
    return [(t, line) for t, line in out if t == "shoal" or t.startswith("shoal.")]


def violations(root: Path = SRC) -> dict[tuple[str, str], list[str]]:
    """(importer, imported) → where, for every import of a higher layer or of a sibling unit."""
    found: dict[tuple[str, str], list[str]] = {}
    for path in sorted(root.rglob("*.py")):
        module, _ = _module_name(path, root)
        layer, unit = unit_of(module)
        for target, line in imports_of(path, root):
            t_layer, t_unit = unit_of(target)
            if t_unit == unit or t_layer > layer:
                continue
            what = "a higher layer" if t_layer < layer else "a sibling in its layer"
            found.setdefault((module, target), []).append(
                f"{path.relative_to(root.parent)}:{line}: {module} imports {target}, {what} "
                f"({t_unit or 'shoal'} is in layer {t_layer + 1}, {unit or 'shoal'} in layer {layer + 1})"
            )
    return found


def test_ext_imports_point_down_the_layers() -> None:
    found = violations()
    new = [msg for key, msgs in sorted(found.items()) if key not in ALLOWED for msg in msgs]
    assert not new, "imports against the layers (see this test's docstring):\n" + "\n".join(new)


def test_ext_allow_list_only_shrinks() -> None:
    stale = sorted(set(ALLOWED) - set(violations()))
    assert not stale, f"no longer imported, remove from ALLOWED: {stale}"


def test_ext_every_module_has_a_layer() -> None:
    """A new top-level package must be placed in LAYERS, not silently pass."""
    modules = [_module_name(p)[0] for p in SRC.rglob("*.py")]
    assert len(modules) > 50
    for module in modules:
        unit_of(module)  # raises, naming the module


def test_ext_the_walker_reports_upward_sibling_and_relative_imports(tmp_path: Path) -> None:
    """On a small fake tree: what controlapi/health.py used to do (import agent/health.py) is reported
    with file, line and both layers, as are a relative upward import and a sibling import; downward
    imports are not."""
    root = tmp_path / "shoal"
    for d in ("controlapi", "agent", "api", "store"):
        (root / d).mkdir(parents=True)
        (root / d / "__init__.py").write_text("")
    (root / "__init__.py").write_text("")
    (root / "models.py").write_text("")
    (root / "agent" / "health.py").write_text("from shoal import models\n")
    (root / "store" / "memory.py").write_text("from .. import models\n")
    (root / "controlapi" / "health.py").write_text(
        "from shoal.agent.health import parse_check\nfrom ..store import memory\n"
    )
    (root / "store" / "bad.py").write_text("import os\n\n\ndef f():\n    from ..controlapi import health\n")
    (root / "api" / "bad.py").write_text("from shoal.agent import health\n")
    found = violations(root)
    assert sorted(found) == [
        ("shoal.api.bad", "shoal.agent.health"),
        ("shoal.controlapi.health", "shoal.agent.health"),
        ("shoal.store.bad", "shoal.controlapi.health"),
    ]
    assert found[("shoal.controlapi.health", "shoal.agent.health")] == [
        "shoal/controlapi/health.py:1: shoal.controlapi.health imports shoal.agent.health, a higher layer "
        "(agent is in layer 5, controlapi in layer 8)"
    ]
    assert "a sibling in its layer" in found[("shoal.api.bad", "shoal.agent.health")][0]
    assert found[("shoal.store.bad", "shoal.controlapi.health")][0].startswith("shoal/store/bad.py:5: ")
    assert unit_of("shoal.ca.authority")[1] == "ca.authority" and unit_of("shoal.ca.certs")[1] == "ca"
