"""Secrets and configs: create, inspect, list, update (labels), remove; and a service's references.

Swarmkit's ``controlapi/secret.go`` and ``config.go``, whose rules and wording Docker relays: names
of at most 64 ``[a-zA-Z0-9-_.]`` characters, data required and bounded, only Labels may change, and
nothing referenced by a service may be removed. The two kinds differ only in their size limit and
in that a secret's data is never shown back, so one set of functions serves both, keyed by
:class:`Kind`. Data is kept as Docker's JSON carries it (base64) and decoded only to check it.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass
from typing import Any, Literal

import msgspec

from shoal.controlapi.errors import already_exists, invalid, rpc
from shoal.controlapi.filters import Filters, match_labels
from shoal.controlapi.resolve import _unique
from shoal.errors import Conflict, NotFound
from shoal.ids import new_id
from shoal.models import (
    Config,
    ConfigReference,
    ConfigSpec,
    Secret,
    SecretReference,
    SecretSpec,
    ServiceSpec,
    Version,
)
from shoal.store import MemoryStore

SECRET_FILTERS = ("id", "label", "name", "names")
CONFIG_FILTERS = SECRET_FILTERS

MAX_SECRET_SIZE = 500 * 1024  # swarmkit's MaxSecretSize; data must be shorter than this
MAX_CONFIG_SIZE = 1000 * 1024  # swarmkit's MaxConfigSize (raised from 500 KB in swarmkit v2)
DEFAULT_FILE_MODE = 0o444  # what `docker service create --secret` sends, and swarmkit's default

_NAME = re.compile(r"^[a-zA-Z0-9]+(?:[a-zA-Z0-9-_.]*[a-zA-Z0-9])?$")
_BAD_NAME = (
    "invalid name, only 64 [a-zA-Z0-9-_.] characters allowed, and the start and end character must be [a-zA-Z0-9]"
)

KindName = Literal["secret", "config"]
AnySpec = SecretSpec | ConfigSpec
AnyObj = Secret | Config


@dataclass(frozen=True, slots=True)
class Kind:
    """What differs between secrets and configs."""

    name: KindName
    max_size: int
    obj: type[Any]


SECRET = Kind("secret", MAX_SECRET_SIZE, Secret)
CONFIG = Kind("config", MAX_CONFIG_SIZE, Config)
KINDS: dict[str, Kind] = {"secret": SECRET, "config": CONFIG}


def decode_data(data: str) -> bytes:
    """Base64 (standard alphabet, padded, as Go's encoding/json writes ``[]byte``) → bytes; 400 if not."""
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as e:
        raise invalid(f"illegal base64 data: {e}") from None


def _check_name(name: str) -> None:
    if not name:
        raise invalid("name must be provided")
    if len(name) > 64 or not _NAME.match(name):
        raise invalid(_BAD_NAME)


def _by_name(store: MemoryStore, kind: Kind, name: str) -> AnyObj | None:
    # Secrets and configs are few (hundreds at most): a scan costs less than an index kept in sync.
    for obj in store.list(kind.name):
        if obj.Spec.Name == name:
            return obj
    return None


# --------------------------------------------------------------------------- create, get, list


def create(store: MemoryStore, kind: Kind, spec: AnySpec) -> AnyObj:
    """Validate and store a new secret or config; 400 on a bad spec, 409 when the name is taken."""
    _check_name(spec.Name)
    if isinstance(spec, SecretSpec) and spec.Driver is not None and spec.Driver.Name:
        # Swarm would store the reference and fail every task later; say so now instead.
        raise invalid(f"secret driver {spec.Driver.Name!r} is not available: Shoal stores secret data itself")
    if spec.Templating is not None and spec.Templating.Name and (
            isinstance(spec, SecretSpec) or spec.Templating.Name != "golang"):
        # Configs: Go templates, rendered by the agent per task (agent/template.py).
        raise invalid(f"templating driver {spec.Templating.Name!r} is not supported")
    data = decode_data(spec.Data)
    if len(data) >= kind.max_size or len(data) < 1:
        raise invalid(f"{kind.name} data must be larger than 0 and less than {kind.max_size} bytes")
    if _by_name(store, kind, spec.Name) is not None:
        raise already_exists(f"{kind.name} {spec.Name} already exists")
    # Re-encoded, so every stored copy has one canonical form whatever padding or alphabet was sent.
    templating = spec.Templating if spec.Templating is not None and spec.Templating.Name else None
    spec = msgspec.structs.replace(spec, Data=base64.b64encode(data).decode(), Templating=templating)
    obj = kind.obj(ID=new_id(), Version=Version(), CreatedAt="", UpdatedAt="", Spec=spec)
    with store.tx() as tx:
        tx.create(kind.name, obj)
    return obj


def create_secret(store: MemoryStore, spec: SecretSpec) -> Secret:
    out: Secret = create(store, SECRET, spec)
    return out


def create_config(store: MemoryStore, spec: ConfigSpec) -> Config:
    out: Config = create(store, CONFIG, spec)
    return out


def get(store: MemoryStore, kind: Kind, ref: str) -> AnyObj:
    """By full ID, then exact name, then unique ID prefix (moby's ``getSecret``); 404 otherwise."""
    if ref:
        obj = store.get(kind.name, ref) or _by_name(store, kind, ref)
        if obj is not None:
            return obj
        return _unique(kind.name, ref, [o for o in store.list(kind.name) if o.ID.startswith(ref)])
    return _unique(kind.name, ref, [])


def get_secret(store: MemoryStore, ref: str) -> Secret:
    out: Secret = get(store, SECRET, ref)
    return out


def get_config(store: MemoryStore, ref: str) -> Config:
    out: Config = get(store, CONFIG, ref)
    return out


def redacted(secret: Secret) -> Secret:
    """The secret as the API shows it: everything but its data (swarmkit clears it on every read)."""
    if not secret.Spec.Data:
        return secret
    return msgspec.structs.replace(secret, Spec=msgspec.structs.replace(secret.Spec, Data=""))


def list_objects(store: MemoryStore, kind: Kind, filters: Filters | None = None) -> list[AnyObj]:
    """Docker's filters as swarmkit applies them: ``names`` (exact), ``name`` and ``id`` (prefixes)
    match if *any* of them matches; every ``label`` must hold as well."""
    filters = filters or {}
    names, name_prefixes, id_prefixes = filters.get("names"), filters.get("name"), filters.get("id")
    labels = filters.get("label")
    out: list[AnyObj] = []
    for obj in store.list(kind.name):
        if names or name_prefixes or id_prefixes:
            hit = (
                (names is not None and obj.Spec.Name in names)
                or (name_prefixes is not None and any(obj.Spec.Name.startswith(p) for p in name_prefixes))
                or (id_prefixes is not None and any(obj.ID.startswith(p) for p in id_prefixes))
            )
            if not hit:
                continue
        if labels and not match_labels(obj.Spec.Labels, labels):
            continue
        out.append(obj)
    out.sort(key=lambda o: (o.Spec.Name, o.ID))
    return out


def list_secrets(store: MemoryStore, filters: Filters | None = None) -> list[Secret]:
    """Secrets matching ``filters``, data removed."""
    return [redacted(s) for s in list_objects(store, SECRET, filters)]


def list_configs(store: MemoryStore, filters: Filters | None = None) -> list[Config]:
    return list(list_objects(store, CONFIG, filters))


# --------------------------------------------------------------------------- update, remove


def update(store: MemoryStore, kind: Kind, ref: str, version: int, spec: AnySpec) -> AnyObj:
    """Change a secret's or config's labels; anything else is 400, a stale ``version`` 409."""
    cur = get(store, kind, ref)
    changed = spec.Name != cur.Spec.Name
    if spec.Data:
        # Constant-time compare is moot here: the caller already holds both values' lengths.
        changed = changed or decode_data(spec.Data) != base64.b64decode(cur.Spec.Data)
    if spec.Templating is not None and spec.Templating != cur.Spec.Templating:
        changed = True
    if isinstance(spec, SecretSpec) and spec.Driver is not None and spec.Driver != cur.Spec.Driver:
        changed = True
    if changed:
        raise invalid("only updates to Labels are allowed")
    new = msgspec.structs.replace(cur, Spec=msgspec.structs.replace(cur.Spec, Labels=spec.Labels))
    with store.tx() as tx:
        tx.update(kind.name, new, expected_version=version)
    return new


def update_secret(store: MemoryStore, ref: str, version: int, spec: SecretSpec) -> Secret:
    out: Secret = update(store, SECRET, ref, version, spec)
    return out


def update_config(store: MemoryStore, ref: str, version: int, spec: ConfigSpec) -> Config:
    out: Config = update(store, CONFIG, ref, version, spec)
    return out


def _refs(spec: ServiceSpec, kind: Kind) -> list[Any]:
    cs = spec.TaskTemplate.ContainerSpec
    if cs is None:
        return []
    return list((cs.Secrets if kind is SECRET else cs.Configs) or [])


def _ref_id(ref: Any) -> str:
    return str(ref.SecretID if isinstance(ref, SecretReference) else ref.ConfigID)


def users(store: MemoryStore, kind: Kind, oid: str) -> list[str]:
    """Names of the services whose spec references the object (swarmkit's ByReferencedSecretID)."""
    return sorted(s.Spec.Name for s in store.list("service") if any(_ref_id(r) == oid for r in _refs(s.Spec, kind)))


def remove(store: MemoryStore, kind: Kind, ref: str) -> None:
    """Delete a secret or config; 409 while a service references it, naming the services."""
    obj = get(store, kind, ref)
    names = users(store, kind, obj.ID)
    if names:
        noun = "service" if len(names) == 1 else "services"
        # Swarmkit's wording (its code says InvalidArgument); the status is the precise one, 409.
        raise Conflict(rpc("InvalidArgument", f"{kind.name} '{obj.Spec.Name}' is in use by the following "
                                              f"{noun}: {', '.join(names)}"))
    with store.tx() as tx:
        tx.delete(kind.name, obj.ID)


def remove_secret(store: MemoryStore, ref: str) -> None:
    remove(store, SECRET, ref)


def remove_config(store: MemoryStore, ref: str) -> None:
    remove(store, CONFIG, ref)


# --------------------------------------------------------------------------- service references

_FILE_KEYS = {"name": "Name", "uid": "UID", "gid": "GID", "mode": "Mode"}


def _file_target(raw: dict[str, Any] | None, default_name: str, what: str) -> dict[str, Any]:
    """A reference's File target with Docker's defaults filled in (name, uid/gid "0", mode 0444)."""
    out: dict[str, Any] = {}
    for key, value in (raw or {}).items():
        canon = _FILE_KEYS.get(key.lower())
        if canon is None:
            raise invalid(f"malformed {what} reference: unknown file target field {key!r}")
        out[canon] = value
    name, uid, gid = out.get("Name") or default_name, out.get("UID") or "0", out.get("GID") or "0"
    mode = out.get("Mode", DEFAULT_FILE_MODE)
    if not isinstance(name, str) or not isinstance(uid, str) or not isinstance(gid, str):
        raise invalid(f"malformed {what} reference: file target Name, UID and GID must be strings")
    if not uid.isdigit() or not gid.isdigit():
        raise invalid(f"malformed {what} reference: file target UID and GID must be numeric")
    if isinstance(mode, bool) or not isinstance(mode, int) or not 0 <= mode <= 0o7777:
        raise invalid(f"malformed {what} reference: invalid file mode {mode!r}")
    if "\x00" in name:
        raise invalid(f"malformed {what} reference: invalid target file name provided")
    return {"Name": name, "UID": uid, "GID": gid, "Mode": mode}


def _resolve_one(store: MemoryStore, kind: Kind, ref_id: str, ref_name: str) -> AnyObj | None:
    """The object a reference means: by ID when one is given (its name must then agree), else by
    exact name, as ``docker stack deploy`` sends names only."""
    if ref_id:
        obj = store.get(kind.name, ref_id)
        if obj is not None and (not ref_name or obj.Spec.Name == ref_name):
            return obj
        return None
    return _by_name(store, kind, ref_name) if ref_name else None


def _resolve_refs(store: MemoryStore, kind: Kind, refs: list[Any]) -> list[Any]:
    missing: list[str] = []
    out: list[Any] = []
    targets: dict[str, str] = {}
    for ref in refs:
        is_secret = isinstance(ref, SecretReference)
        rid, rname = (ref.SecretID, ref.SecretName) if is_secret else (ref.ConfigID, ref.ConfigName)
        obj = _resolve_one(store, kind, rid, rname)
        if obj is None:
            missing.append(rname or rid)
            continue
        name = obj.Spec.Name
        if is_secret:
            file = _file_target(ref.File, name, kind.name)
            new: Any = SecretReference(SecretID=obj.ID, SecretName=name, File=file)
        elif ref.Runtime is not None and ref.File is None:
            # A runtime target (a credential spec) is no file in the container.
            out.append(ConfigReference(ConfigID=obj.ID, ConfigName=name, Runtime=ref.Runtime))
            continue
        else:
            file = _file_target(ref.File, name, kind.name)
            new = ConfigReference(ConfigID=obj.ID, ConfigName=name, File=file, Runtime=ref.Runtime)
        prev = targets.get(file["Name"])
        if prev is not None:
            raise invalid(f"{kind.name} references '{prev}' and '{name}' have a conflicting target: '{file['Name']}'")
        targets[file["Name"]] = name
        out.append(new)
    if missing:
        noun = kind.name if len(missing) == 1 else kind.name + "s"
        # Swarmkit's words; 404 because the thing named does not exist.
        raise NotFound(rpc("InvalidArgument", f"{noun} not found: {', '.join(missing)}"))
    return out


def resolve_service_references(store: MemoryStore, spec: ServiceSpec) -> ServiceSpec:
    """Every secret and config a service mounts → an existing object, with ID and name both filled
    and the file target's defaults made explicit, so agents never guess. 404 for an unknown one."""
    cs = spec.TaskTemplate.ContainerSpec
    if cs is None or not (cs.Secrets or cs.Configs):
        return spec
    secrets = _resolve_refs(store, SECRET, list(cs.Secrets or [])) if cs.Secrets else cs.Secrets
    configs = _resolve_refs(store, CONFIG, list(cs.Configs or [])) if cs.Configs else cs.Configs
    new_cs = msgspec.structs.replace(cs, Secrets=secrets, Configs=configs)
    return msgspec.structs.replace(spec, TaskTemplate=msgspec.structs.replace(spec.TaskTemplate, ContainerSpec=new_cs))
