"""Loading a Compose project: files → interpolated, validated, extended, merged, profile-filtered.

Order per file, as Compose does: parse YAML → interpolate (``.env`` and the environment) →
validate against the schema of the file's version → resolve ``extends``. Then files merge in
order (later ones override), profiles pick the active services, and ``depends_on`` is checked.
"""

from __future__ import annotations

import io
import os
import re
from collections import ChainMap
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dotenv.parser import parse_stream
from dotenv.variables import parse_variables

from . import health as rancher_health
from . import rancher, schema
from .errors import ComposeError
from .files import MAX_FILE_BYTES, FileTooLarge, human_size, read_text, refusal
from .interpolate import Budget, interpolate
from .merge import deep_merge, merge_section, merge_service
from .source import KeyPath, Source, key_name, parse

SECTIONS = ("services", "networks", "volumes", "secrets", "configs")


@dataclass
class Project:
    """The normalised project: the merged sections of every file, v1 files moved under ``services``."""

    name: str
    working_dir: Path
    files: list[Path]
    format: str  # "v1", "2.x"/"3.x" (the version key), or "spec"
    services: dict[str, dict[str, Any]] = field(default_factory=dict)
    networks: dict[str, Any] = field(default_factory=dict)
    volumes: dict[str, Any] = field(default_factory=dict)
    secrets: dict[str, Any] = field(default_factory=dict)
    configs: dict[str, Any] = field(default_factory=dict)
    # Services left out because none of their profiles was asked for.
    disabled: dict[str, dict[str, Any]] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    sources: list[Source] = field(default_factory=list, repr=False)
    # For each service, the file that defined it last (relative paths and error lines refer to it).
    origin: dict[str, Path] = field(default_factory=dict)
    # Top-level ``x-`` keys (``x-shoal-*`` is Shoal's own), merged across files, kept for later use.
    extensions: dict[str, Any] = field(default_factory=dict)
    # Whether files the project names may lie outside ``working_dir`` (see files.py: refused by default).
    allow_outside_files: bool = False

    def locate(self, path: KeyPath) -> tuple[Path | None, int | None]:
        """The file and line that spell out ``path`` (the last file that does, as it wins the merge)."""
        for src in reversed(self.sources):
            line = src.lines.get(tuple(path))
            if line is not None:
                return src.path, line
        for src in reversed(self.sources):
            line = src.line_of(path)
            if line is not None:
                return src.path, line
        return (self.files[-1] if self.files else None), None

    def error(self, message: str, path: KeyPath) -> ComposeError:
        file, line = self.locate(path)
        return ComposeError(message, file, line, key_name(path))

    def confine(self, file: Path, path: KeyPath) -> None:
        """Refuse ``file``, named at ``path``, if it lies outside the project folder and that is not allowed."""
        why = refusal(file, self.working_dir, self.allow_outside_files)
        if why:
            raise self.error(why, path)

    def where(self, path: KeyPath) -> str:
        file, line = self.locate(path)
        return f"{file}:{line}" if line else str(file)

    def to_dict(self) -> dict[str, Any]:
        """The normalised file (Compose Specification shape), as ``docker-compose config`` prints it."""
        out: dict[str, Any] = {"name": self.name, "services": self.services}
        for s in SECTIONS[1:]:
            if getattr(self, s):
                out[s] = getattr(self, s)
        out.update(self.extensions)
        return out


def detect_format(data: dict[str, Any]) -> tuple[str, str | None]:
    """``("v1", None)``, ``("3.8", "3.8")`` or ``("spec", version-or-None)``."""
    version = data.get("version")
    if version is None:
        if "services" in data and isinstance(data["services"], dict):
            return "spec", None
        if not data or (all(isinstance(v, dict) for v in data.values()) and not set(data) & set(SECTIONS[1:])):
            return "v1", None
        return "spec", None
    version = str(version)
    if version in ("1", "1.0"):
        return "v1", None
    if re.fullmatch(r"[23](\.\d+)?", version) and schema.schema_name(version, False) != schema.SPEC:
        return version if "." in version else version + ".0", version
    return "spec", version


class _Loader:
    def __init__(self, env: dict[str, str], warnings: list[str], root: Path, allow_outside_files: bool,
                 stack_name: str, name_given: bool = True) -> None:
        self.env = env
        # Rancher's ${stack_name}: the project name, which a file's own top-level ``name:`` sets when
        # neither -p nor COMPOSE_PROJECT_NAME does (only a literal one: it is read before interpolation).
        self.stack_name = stack_name
        self.name_given = name_given
        self.warnings = warnings
        self.root = root
        self.allow_outside_files = allow_outside_files
        self.budget = Budget()  # one for all the files: substitutions add up across them
        self.files: dict[Path, tuple[Source, dict[str, Any], str]] = {}

    def confine(self, file: Path, src: Source, path: KeyPath) -> None:
        """Refuse ``file``, named at ``path`` of ``src``, outside the project folder unless allowed."""
        why = refusal(file, self.root, self.allow_outside_files)
        if why:
            raise src.error(why, path)

    def file(self, path: Path) -> tuple[Source, dict[str, Any], str]:
        """Parse, interpolate and validate one file (cached: ``extends`` may read a file twice)."""
        path = path.resolve()
        if path in self.files:
            return self.files[path]
        src = parse(path)
        fmt, version = detect_format(src.data)
        top = src.data.get("name") if fmt != "v1" else None
        if not self.name_given and isinstance(top, str) and "$" not in top:
            self.stack_name = _project_name(top)
        data = _numbers_in_labels(interpolate(src, self.env, self.warnings, self.budget, stack_name=self.stack_name,
                                              services_at=() if fmt == "v1" else ("services",)))
        if fmt == "v1":
            schema.validate(rancher_health.lift(data, src, ()), schema.V1, src)
            # v1: services at the top level; shift the line map under "services" too.
            data = {"services": data}
            src.lines.update({("services", *k): v for k, v in list(src.lines.items())})
        else:
            # The top-level ``name`` postdates the 1.29.2 schema of the Specification: check it here.
            checked = {k: v for k, v in data.items() if k != "name"}
            if "name" in data and not isinstance(data["name"], str):
                raise src.error("name must be a string", ("name",))
            if fmt == "spec":
                checked = _newer_spec_keys(checked, src)
            if "services" in checked:
                checked["services"] = rancher_health.lift(checked["services"], src, ("services",))
            schema.validate(checked, schema.schema_name(version, False), src)
        for name, svc in (data.get("services") or {}).items():
            _absolute_paths(svc, path.parent)
            if svc is None:
                raise src.error("service must be a mapping", ("services", name))
            for item in svc.get("env_file") or []:
                ef = Path(item["path"] if isinstance(item, dict) else item)
                self.confine(ef, src, ("services", name, "env_file"))
        self.files[path] = (src, data, fmt)
        return self.files[path]

    def service(self, path: Path, name: str, stack: list[tuple[Path, str]]) -> dict[str, Any]:
        """Service ``name`` of file ``path`` with its ``extends`` chain resolved."""
        src, data, _fmt = self.file(path)
        services = data.get("services") or {}
        svc = services.get(name)
        if svc is None:
            caller = stack[-1] if stack else None
            if caller:
                csrc = self.files[caller[0].resolve()][0]
                raise csrc.error(f"cannot extend service {name!r}: not found in {path}",
                                 ("services", caller[1], "extends"))
            raise ComposeError(f"no such service: {name}", path)
        ext = svc.get("extends")
        if ext is None:
            return svc
        here = (path.resolve(), name)
        if isinstance(ext, str):
            ext = {"service": ext}
        if ext.get("file"):
            self.confine(path.parent / ext["file"], src, ("services", name, "extends", "file"))
        target_file = (path.parent / ext["file"]).resolve() if ext.get("file") else path.resolve()
        target = (target_file, ext["service"])
        chain = [*stack, here]
        if target in chain:
            cycle = " -> ".join(f"{n} ({p.name})" for p, n in [*chain[chain.index(target):], target])
            raise src.error(f"circular reference in extends: {cycle}", ("services", name, "extends"))
        base = self.service(target_file, ext["service"], chain)
        own = {k: v for k, v in svc.items() if k != "extends"}
        # What Compose never inherits: links and volumes_from tie a service to its own file's neighbours.
        base = {k: v for k, v in base.items() if k not in ("links", "volumes_from", "depends_on")}
        return merge_service(base, own)


# Keys of the Compose Specification newer than the schema docker-compose 1.29.2 ships: checked
# here, then hidden from that schema. (secrets/configs from an environment variable; inline configs.)
def _numbers_in_labels(data: Any) -> Any:
    """Label values written as numbers (``aliyun.auto_scaling.max_cpu: 70``, as Aliyun's files do)
    become strings before validation, as docker-compose 1.29 takes them (its schema allows numbers;
    1.26's v3.0-3.x schemas did not). Booleans too (``aliyun.global: true``), spelled ``true``/``false``
    as docker compose v2 writes them. Services at the top level (v1) or under ``services``."""
    if not isinstance(data, dict):
        return data
    services = data.get("services") if isinstance(data.get("services"), dict) else data
    for svc in services.values():
        if not isinstance(svc, dict):
            continue
        deploy = svc.get("deploy")
        for holder in (svc, deploy if isinstance(deploy, dict) else None):
            labels = holder.get("labels") if holder is not None else None
            if isinstance(labels, dict):
                for k, v in labels.items():
                    if isinstance(v, bool):
                        labels[k] = "true" if v else "false"
                    elif isinstance(v, int | float):
                        labels[k] = str(v)
    return data


_NEWER_SPEC_KEYS = {"secrets": ("environment",), "configs": ("environment", "content")}


def _newer_spec_keys(data: dict[str, Any], src: Source) -> dict[str, Any]:
    out = dict(data)
    for section, keys in _NEWER_SPEC_KEYS.items():
        entries = data.get(section)
        if not isinstance(entries, dict):
            continue
        out[section] = dict(entries)
        for name, entry in entries.items():
            if not isinstance(entry, dict) or not set(keys) & set(entry):
                continue
            for key in keys:
                if key in entry and not isinstance(entry[key], str):
                    raise src.error(f"{key} must be a string", (section, name, key))
            out[section][name] = {k: v for k, v in entry.items() if k not in keys}
    return out


def _absolute_paths(svc: dict[str, Any] | None, base: Path) -> None:
    # env_file and build contexts are relative to the file that names them, so fix them at load time.
    if not isinstance(svc, dict):
        return
    ef = svc.get("env_file")
    if ef is not None:
        items = [ef] if isinstance(ef, str | dict) else ef
        fixed = []
        for item in items:
            if isinstance(item, dict):
                fixed.append({**item, "path": str(base / item["path"])})
            else:
                fixed.append(str(base / item))
        svc["env_file"] = fixed
    build = svc.get("build")
    if isinstance(build, str) and "://" not in build:
        svc["build"] = {"context": str(base / build)}
    elif isinstance(build, dict) and "context" in build and "://" not in str(build["context"]):
        svc["build"] = {**build, "context": str(base / build["context"])}


def load(
    files: list[Path],
    project_dir: Path | None = None,
    env: Mapping[str, str] | None = None,
    profiles: list[str] | None = None,
    project_name: str | None = None,
    allow_outside_files: bool = False,
    rancher_file: Path | None = None,
    env_file: Path | None = None,
) -> Project:
    """Load and merge ``files`` into a :class:`Project`; any bad input raises one ComposeError.

    Files the Compose files name (``.env``, ``env_file``, ``extends``, secrets' and configs' ``file``)
    must resolve inside ``project_dir`` (the first file's folder by default) unless
    ``allow_outside_files``; the files given here are the user's own choice and are not checked.
    ``rancher_file``: a rancher-compose.yml merged into the services (compose/rancher.py).
    ``env_file``: read instead of the project's ``.env`` (``--env-file``; the user's choice, not confined)."""
    if not files:
        raise ComposeError("no Compose file given")
    files = [Path(f) for f in files]
    project_dir = Path(project_dir) if project_dir else files[0].resolve().parent
    base_env = dict(os.environ if env is None else env)
    if env_file is not None and not Path(env_file).is_file():
        raise ComposeError("couldn't find env file", env_file)
    merged_env = (_dotenv(project_dir / ".env", project_dir, allow_outside_files) if env_file is None
                  else _dotenv(Path(env_file), project_dir, True))
    merged_env.update(base_env)  # the shell wins over .env, as in Compose
    warnings: list[str] = []
    given = project_name or merged_env.get("COMPOSE_PROJECT_NAME")
    loader = _Loader(merged_env, warnings, project_dir, allow_outside_files,
                     _project_name(given or project_dir.resolve().name), name_given=bool(given))

    sections: dict[str, dict[str, Any]] = {s: {} for s in SECTIONS}
    origin: dict[str, Path] = {}
    fmt = "spec"
    top_name = None
    extensions: dict[str, Any] = {}
    for f in files:
        src, data, fmt = loader.file(f)
        services = {n: loader.service(f, n, []) for n in (data.get("services") or {})}
        sections["services"] = merge_section(sections["services"], services, services=True)
        origin.update(dict.fromkeys(services, src.path))
        for s in SECTIONS[1:]:
            sections[s] = merge_section(sections[s], data.get(s) or {}, services=False)
        top_name = data.get("name", top_name)
        if fmt != "v1":
            extensions = deep_merge(extensions, {k: v for k, v in data.items() if k.startswith("x-")})

    name = _project_name(project_name or merged_env.get("COMPOSE_PROJECT_NAME") or top_name
                         or project_dir.resolve().name)
    if rancher_file is not None:
        rancher.apply(Path(rancher_file), sections["services"], merged_env, name, warnings, loader.budget)
    project = Project(name=name, working_dir=project_dir, files=files, format=fmt, env=merged_env,
                      warnings=warnings, sources=[loader.files[f.resolve()][0] for f in files], origin=origin,
                      extensions=extensions, allow_outside_files=allow_outside_files,
                      **{s: sections[s] for s in SECTIONS[1:]})
    _apply_profiles(project, sections["services"], profiles or [])
    _check_dependencies(project)
    return project


def _project_name(name: str) -> str:
    return re.sub(r"[^a-z0-9_-]", "", name.lower())


def _dotenv(path: Path, root: Path, allow_outside_files: bool) -> dict[str, str]:
    """The project's ``.env``, if there is one: inside the project folder (a symlink may point out) and bounded."""
    if not path.is_file():
        return {}
    why = refusal(path, root, allow_outside_files)
    if why:
        raise ComposeError(why, path)
    return {k: v for k, v in env_values(path).items() if v is not None}


def env_values(path: Path, key: str = "") -> dict[str, str | None]:
    """An env file's variables as python-dotenv reads them (``${VAR}`` from earlier lines, then the
    environment), with what they expand to bounded: a line ``B=${A}${A}`` doubles ``A``, so thirty
    such lines of a tiny file made gigabytes (python-dotenv has no bound). Counted before built."""
    text = read_env_file(path, key)
    out: dict[str, str | None] = {}
    env = ChainMap(out, os.environ)  # earlier lines win over the environment, as dotenv_values does
    total = 0
    for binding in parse_stream(io.StringIO(text)):
        if binding.key is None:
            continue
        if binding.value is None:
            out[binding.key] = None
            continue
        parts = [atom.resolve(env) for atom in parse_variables(binding.value)]
        total += sum(map(len, parts))
        if total > MAX_FILE_BYTES:
            raise ComposeError(f"its variables expand to more than {human_size(MAX_FILE_BYTES)}", path, key=key)
        out[binding.key] = "".join(parts)
    return out


def read_env_file(path: Path, key: str = "") -> str:
    """The text of a ``.env`` or ``env_file``, refused past the size bound or if not UTF-8 (as python-dotenv reads)."""
    try:
        return read_text(path)
    except FileTooLarge as e:
        raise ComposeError(str(e), path, key=key) from None
    except UnicodeDecodeError:
        raise ComposeError("not UTF-8 text", path, key=key) from None
    except OSError as e:
        raise ComposeError(f"cannot read file: {e.strerror}", path, key=key) from None


def _apply_profiles(project: Project, services: dict[str, dict[str, Any]], profiles: list[str]) -> None:
    wanted = set(profiles)
    for name, svc in services.items():
        own = svc.get("profiles") or []
        if not own or "*" in wanted or wanted & set(own):
            project.services[name] = svc
        else:
            project.disabled[name] = svc


def _check_dependencies(project: Project) -> None:
    for name, svc in project.services.items():
        deps = svc.get("depends_on") or []
        for dep in deps if isinstance(deps, list) else list(deps):
            if dep in project.services:
                continue
            path = ("services", name, "depends_on")
            if dep in project.disabled:
                profs = ", ".join(project.disabled[dep].get("profiles") or [])
                raise project.error(f"service {name!r} depends on {dep!r}, which is only in profile(s) {profs}", path)
            raise project.error(f"service {name!r} depends on undefined service {dep!r}", path)
        for link in svc.get("links") or []:
            target = str(link).split(":")[0]
            if target not in project.services:
                msg = f"service {name!r} links to undefined service {target!r}"
                raise project.error(msg, ("services", name, "links"))
