"""Validation against Compose's published JSON schemas (never a hand-written validator).

Where the schemas come from: the ``docker-compose`` wheels on PyPI ship them, but that package pins
an old PyYAML and docker SDK that conflict with Shoal's, so it is never installed. Instead
:func:`fetch` runs ``pip download --no-deps`` for two wheels and copies the JSON files out of the
zips into a cache directory (``$SHOAL_COMPOSE_SCHEMAS``, else ``$XDG_CACHE_HOME/shoal/compose-schemas``,
outside the repository so nothing needs to be git-ignored):

- docker-compose 1.26.2: ``config_schema_v1.json`` and ``config_schema_v2.0 … v3.8.json``
- docker-compose 1.29.2: ``compose_spec.json`` (the Compose Specification)

``python -m shoal.compose.schema`` (or scripts/fetch-compose-schemas.sh) fills the cache ahead of
time; otherwise the first load fetches it. If neither works, loading fails with a clear error.
Validation uses ``jsonschema`` (4.x), without format checks, as docker-compose's own type checks
of ``ports``/``duration`` are done when the file is mapped to services.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import zipfile
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import jsonschema.exceptions

from .errors import ComposeError
from .source import KeyPath, Source

WHEELS: dict[str, list[str]] = {
    "1.26.2": ["config_schema_v1.json"]
    + [f"config_schema_v2.{m}.json" for m in range(5)]
    + [f"config_schema_v3.{m}.json" for m in range(9)],
    "1.29.2": ["compose_spec.json"],
}
SPEC = "compose_spec.json"
V1 = "config_schema_v1.json"


def schema_dir() -> Path:
    explicit = os.environ.get("SHOAL_COMPOSE_SCHEMAS")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "shoal" / "compose-schemas"


def fetch(dest: Path | None = None) -> Path:
    """Download the docker-compose wheels (no dependencies) and extract their schema files."""
    dest = dest or schema_dir()
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        for version, names in WHEELS.items():
            if all((dest / n).exists() for n in names):
                continue
            cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
                   "--dest", tmp, f"docker-compose=={version}"]
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
            wheels = list(Path(tmp).glob(f"docker_compose-{version}-*.whl"))
            if done.returncode != 0 or not wheels:
                raise ComposeError(f"cannot download docker-compose {version} for its JSON schemas: "
                                   f"{done.stderr.strip()[-300:]}")
            with zipfile.ZipFile(wheels[0]) as z:
                for n in names:
                    (dest / n).write_bytes(z.read(f"compose/config/{n}"))
    return dest


def _strip_ids(value: Any) -> Any:
    # The schemas label sub-schemas with draft-04 ``id: "#/definitions/x"``; newer resolvers read
    # those as base URIs and break ``$ref``. They are labels only, so drop them.
    if isinstance(value, dict):
        return {k: _strip_ids(v) for k, v in value.items() if not (k == "id" and isinstance(v, str))}
    if isinstance(value, list):
        return [_strip_ids(v) for v in value]
    return value


@cache
def _validator(name: str) -> Any:
    path = schema_dir() / name
    if not path.exists():
        try:
            fetch()
        except (ComposeError, OSError, subprocess.SubprocessError) as e:
            raise ComposeError(f"the Compose JSON schema {name} is not available in {schema_dir()} ({e}); "
                               "run scripts/fetch-compose-schemas.sh or set SHOAL_COMPOSE_SCHEMAS") from None
    if not path.exists():
        raise ComposeError(f"the Compose JSON schema {name} is missing from {schema_dir()}")
    schema = _strip_ids(json.loads(path.read_text()))
    schema.pop("$schema", None)
    cls = jsonschema.Draft4Validator if name != SPEC else jsonschema.Draft7Validator
    return cls(schema)


def schema_name(version: str | None, v1: bool) -> str:
    """The schema for a file's ``version`` key; unknown minor versions fall back to the Specification."""
    if v1:
        return V1
    if version is None:
        return SPEC
    m = re.fullmatch(r"([23])(?:\.(\d+))?", version)
    if m:
        name = f"config_schema_v{m.group(1)}.{m.group(2) or 0}.json"
        if name in WHEELS["1.26.2"]:
            return name
    return SPEC


_UNEXPECTED = re.compile(r"\('([^']+)' was unexpected\)|\('([^']+)', |'([^']+)' does not match any of the regexes")


def validate(data: dict[str, Any], name: str, src: Source) -> None:
    """Raise a ComposeError for the most relevant schema violation, located at its key."""
    validator = _validator(name)
    error = jsonschema.exceptions.best_match(validator.iter_errors(data))
    if error is None:
        return
    path: KeyPath = tuple(error.absolute_path)
    message = error.message
    if error.validator == "additionalProperties":
        m = _UNEXPECTED.search(message)
        if m:
            key = m.group(1) or m.group(2) or m.group(3)
            path = (*path, key)
            message = f"unsupported key {key!r} (not allowed by {name})"
            if key.startswith("x-"):
                message += ("; extension keys need version 3.4+ (2.0+) at the top level and 2.4, 3.7+ or "
                            "the Compose Specification inside services, networks and volumes")
    elif error.validator in ("oneOf", "anyOf") and error.context:
        deeper = min(error.context, key=lambda e: -len(e.absolute_path))
        message = f"{message} ({deeper.message})"
    raise src.error(message, path)


if __name__ == "__main__":
    print(fetch())
