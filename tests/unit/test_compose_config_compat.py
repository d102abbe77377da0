"""Shoal's normalised Compose model against ``docker-compose config`` (Debian's docker-compose 1.29.2).

Every valid file of the corpus (tests/unit/compose/, plus the demo apps in examples/) goes through
both, with the same environment and the same ``.env``; the outputs are compared on the keys both
define. Every invalid file must be rejected by both. The few files where Shoal and docker-compose
1.29 disagree by design are listed in DIVERGENT with the reason, and the divergence itself is
asserted, so it cannot change unnoticed.

Representation differences normalised before comparing (docker-compose side unless said):

- ``$`` comes back escaped as ``$$``: unescaped.
- ``ports``: short strings (``8080:80/tcp``, ``9000/tcp``) or long mappings → one
  ``(target, published or None, protocol, mode)`` tuple per port (ranges expanded), as a sorted list.
- ``volumes``: short strings (bind mounts made absolute, ``:rw`` appended) or long mappings →
  ``(type, source, target, read_only)`` tuples.
- ``networks``: ``null`` vs ``{}`` options; ``depends_on``: always a mapping with its condition.
- ``command``/``entrypoint``: a string is split as a shell would (``shlex``); ``healthcheck.test``:
  a string is ``["CMD-SHELL", string]``.
- Scalars in ``deploy``/``healthcheck``/``environment``: compared as strings, numbers as floats
  (docker-compose prints ``cpus: 0.25`` for ``"0.25"``).
- Profiles: ``docker-compose config`` prints every service whatever its profiles, so Shoal loads
  with ``profiles=["*"]`` here.
- Top-level sections: their key sets (plus ``external``) are compared, not their spelling.
- Top-level ``x-`` keys: docker-compose config drops them and Shoal keeps them (``x-shoal-*`` are
  for later features), so only service-level ``x-`` keys, which both keep, are compared.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from shoal.compose import ComposeError, load, normalised, to_stack

DATA = Path(__file__).parent / "compose"
EXAMPLES = Path(__file__).parents[2] / "examples"
DOCKER_COMPOSE = shutil.which("docker-compose")

pytestmark = pytest.mark.skipif(DOCKER_COMPOSE is None, reason="docker-compose (1.29, Debian's package) is not "
                                "installed; scripts/install-deps.sh installs it")


@dataclass(frozen=True)
class Case:
    files: tuple[str, ...]  # relative to DATA (or absolute)
    env: tuple[tuple[str, str], ...] = ()
    note: str = field(default="", compare=False)

    @property
    def paths(self) -> list[Path]:
        return [DATA / f for f in self.files]

    def __str__(self) -> str:
        return "+".join(self.files)


# One of each format at least: v1 (no version), 2.x, 3.x, the Compose Specification.
VALID = [
    Case(("valid/v1.yml",)),
    Case(("valid/v1_more.yml",)),
    Case(("valid/aliyun-gpu.yml",)),
    Case(("valid/v2.yml",)),
    Case(("valid/v2_networks.yml",)),
    Case(("valid/v3.yml",), (("TAG", "x"),)),
    Case(("valid/v3.yml",), (("REPLICAS", "7"), ("TAG", "y"))),
    Case(("stack/docker-compose.yml",)),
    Case(("valid/spec_full.yml",), (("LEVEL", "debug"),)),
    Case(("valid/spec_full.yml",)),
    Case(("dotenv/docker-compose.yml",)),
    Case(("dotenv/docker-compose.yml",), (("TAG", "shell"), ("WHO", "me"))),
    Case(("extends/app.yml",)),
    Case(("profiles/p.yml",)),
    *[Case((str(f),)) for f in sorted(EXAMPLES.glob("*/docker-compose.yml"))],
]

INVALID = [
    *[Case((f"invalid/{f.name}",)) for f in sorted((DATA / "invalid").glob("*.yml"))
      if f"invalid/{f.name}" not in {"invalid/v2_bad.yml", "invalid/v3_network.yml", "invalid/v3_extension.yml"}],
    Case(("extends/loop.yml",)),
    Case(("multi/base.yml", "multi/override.yml")),  # "other" volume never declared
]

# Files the two judge differently, on purpose: (case, Shoal accepts?, reason).
DIVERGENT = [
    (Case(("valid/spec.yml",)), True,
     "a top-level name: postdates docker-compose 1.29's Compose Specification schema"),
    (Case(("invalid/v2_bad.yml",)), False,
     "docker-compose 1.27+ validates 2.x and 3.x files against the Compose Specification; Shoal uses "
     "the schema of the file's version (deploy is not a 2.0 key), as docker stack deploy does for 3.x"),
    (Case(("invalid/v3_extension.yml",)), False,
     "x- keys inside a service need 3.7+ (2.4) by the versioned schemas docker stack deploy and Shoal use"),
    (Case(("invalid/v3_network.yml",)), False,
     "docker-compose config leaves undefined networks to `up`; docker stack deploy and Shoal reject them"),
]


def _env(case: Case) -> dict[str, str]:
    return dict(case.env)


def _run(case: Case) -> tuple[int, str]:
    cmd = [str(DOCKER_COMPOSE)]
    for p in case.paths:
        cmd += ["-f", str(p)]
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/root"), **_env(case)}
    done = subprocess.run([*cmd, "config"], capture_output=True, text=True, env=env, cwd=case.paths[0].parent,
                          timeout=60, check=False)
    return done.returncode, done.stdout if done.returncode == 0 else done.stderr


@cache
def _docker_compose() -> dict[Case, tuple[int, str]]:
    """``docker-compose config`` for every case, two at a time (each is a ~0.3 s Python start)."""
    cases = list(dict.fromkeys([*VALID, *INVALID, *(c for c, _, _ in DIVERGENT)]))
    with ThreadPoolExecutor(max_workers=2) as pool:
        return dict(zip(cases, pool.map(_run, cases), strict=True))


def _shoal(case: Case) -> dict[str, Any]:
    project = load(case.paths, env=_env(case), profiles=["*"])
    to_stack(project, "compat")  # references (volumes, networks, secrets, depends_on cycles) are checked here
    return normalised(project)


# --------------------------------------------------------------------------- normalising both sides


def _unescape(value: Any) -> Any:
    if isinstance(value, str):
        return value.replace("$$", "$")
    if isinstance(value, list):
        return [_unescape(v) for v in value]
    if isinstance(value, dict):
        return {k: _unescape(v) for k, v in value.items()}
    return value


def _scalar(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _scalar(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_scalar(v) for v in value]
    if isinstance(value, bool):
        return str(value).lower()
    text = "" if value is None else str(value)
    try:
        return float(text)
    except ValueError:
        return text


def _ports(ports: list[Any]) -> list[tuple[int, int | None, str, str]]:
    out = []
    for p in ports:
        if isinstance(p, dict):
            out.append((int(p["target"]), int(p["published"]) if p.get("published") else None,
                        p.get("protocol", "tcp"), p.get("mode", "ingress")))
            continue
        text, _, proto = str(p).partition("/")
        parts = text.split(":")  # [ip:][published:]target, ranges as a-b
        target, published = parts[-1], parts[-2] if len(parts) > 1 else ""
        t0, _, t1 = target.partition("-")
        targets = range(int(t0), int(t1 or t0) + 1)
        if published:
            p0, _, _p1 = published.partition("-")
            pubs: list[int | None] = [int(p0) + i for i in range(len(targets))]
        else:
            pubs = [None] * len(targets)
        out += [(t, pub, proto or "tcp", "ingress") for t, pub in zip(targets, pubs, strict=True)]
    return sorted(out, key=str)


def _volumes(vols: list[Any]) -> list[tuple[str, str, str, bool]]:
    out = []
    for v in vols:
        if isinstance(v, dict):
            out.append((v.get("type", "volume"), str(v.get("source") or ""), v["target"], bool(v.get("read_only"))))
            continue
        parts = str(v).split(":")
        if len(parts) == 1:
            out.append(("volume", "", parts[0], False))
            continue
        kind = "bind" if parts[0].startswith(("/", ".", "~")) else "volume"
        out.append((kind, parts[0], parts[1], len(parts) > 2 and "ro" in parts[2].split(",")))
    return out


def _command(value: Any) -> list[str] | None:
    if value is None:
        return None
    return shlex.split(value) if isinstance(value, str) else [str(v) for v in value]


def _service(svc: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if "image" in svc:
        out["image"] = svc["image"]
    for key in ("command", "entrypoint"):
        if key in svc:
            out[key] = _command(svc[key])
    if svc.get("environment"):
        out["environment"] = _scalar(dict(svc["environment"]))
    if svc.get("ports"):
        out["ports"] = _ports(svc["ports"])
    if svc.get("volumes"):
        out["volumes"] = _volumes(svc["volumes"])
    if svc.get("networks"):
        nets = svc["networks"]
        nets = dict.fromkeys(nets) if isinstance(nets, list) else nets
        out["networks"] = {k: {"aliases": sorted((v or {}).get("aliases") or [])} for k, v in nets.items()}
    if "deploy" in svc:
        out["deploy"] = _scalar(svc["deploy"])
    if "healthcheck" in svc:
        hc = dict(svc["healthcheck"])
        if isinstance(hc.get("test"), str):
            hc["test"] = ["CMD-SHELL", hc["test"]]
        out["healthcheck"] = _scalar(hc)
    if svc.get("depends_on"):
        deps = svc["depends_on"]
        deps = {d: None for d in deps} if isinstance(deps, list) else deps
        out["depends_on"] = {k: (v or {}).get("condition", "service_started") for k, v in deps.items()}
    out.update({k: _scalar(v) for k, v in svc.items() if k.startswith("x-")})
    return out


def _model(doc: dict[str, Any]) -> dict[str, Any]:
    doc = _unescape(doc)
    out: dict[str, Any] = {"services": {n: _service(s) for n, s in (doc.get("services") or {}).items()}}
    for section in ("networks", "volumes", "secrets", "configs"):
        out[section] = {k: bool((v or {}).get("external")) for k, v in (doc.get(section) or {}).items()}
    return out


# --------------------------------------------------------------------------- the comparisons


@pytest.mark.parametrize("case", VALID, ids=str)
def test_valid_files_match_docker_compose_config(case: Case) -> None:
    rc, out = _docker_compose()[case]
    assert rc == 0, f"docker-compose rejects {case}: {out}"
    theirs = _model(yaml.safe_load(out))
    ours = _model(_shoal(case))
    assert theirs["services"].keys() == ours["services"].keys()
    for name in theirs["services"]:
        assert ours["services"][name] == theirs["services"][name], f"service {name}"
    for key in ("networks", "volumes", "secrets", "configs"):
        assert ours[key] == theirs[key], key


@pytest.mark.parametrize("case", INVALID, ids=str)
def test_invalid_files_are_rejected_by_both(case: Case) -> None:
    rc, out = _docker_compose()[case]
    assert rc != 0, f"docker-compose accepts {case}:\n{out}"
    with pytest.raises(ComposeError) as err:
        _shoal(case)
    assert err.value.file is not None and err.value.line is not None  # located, unlike most of docker-compose's


@pytest.mark.parametrize(("case", "shoal_accepts", "why"), DIVERGENT, ids=[str(c) for c, _, _ in DIVERGENT])
def test_known_divergences(case: Case, shoal_accepts: bool, why: str) -> None:
    rc, _out = _docker_compose()[case]
    assert (rc == 0) != shoal_accepts, why
    if shoal_accepts:
        _shoal(case)
    else:
        with pytest.raises(ComposeError):
            _shoal(case)


def test_the_corpus_covers_every_format() -> None:
    formats = {load(c.paths, env=_env(c), profiles=["*"]).format.split(".")[0] for c in VALID}
    assert {"v1", "2", "3", "spec"} <= formats
    bad = {f.name for f in (DATA / "invalid").glob("*.yml")}
    assert {"v1_bad.yml", "v2_bad.yml", "v2_condition.yml", "schema.yml", "v3_volume.yml", "spec_bad.yml"} <= bad
