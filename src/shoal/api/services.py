"""``/services`` routes."""

from __future__ import annotations

from typing import Any

import msgspec
from aiohttp import web

from shoal import controlapi
from shoal.api.common import decode_body, empty_response, json_response, query_bool, query_version, swarm_manager
from shoal.controlapi.services import SERVICE_FILTERS, insert_defaults
from shoal.errors import InvalidArgument
from shoal.models import PullOptions, Service, ServiceSpec, Task, TaskSpec

REGISTRY_AUTH = "X-Registry-Auth"


# --------------------------------------------------------------------------- --with-registry-auth


def _with_pull_options(spec: ServiceSpec, options: PullOptions | None) -> ServiceSpec:
    """The spec with the registry auth to keep (as moby does, in ``ContainerSpec.PullOptions``); a
    ``PullOptions`` in the client's body is not Docker's and is dropped."""
    cs = spec.TaskTemplate.ContainerSpec
    if cs is None or cs.PullOptions == options:
        return spec
    task = msgspec.structs.replace(spec.TaskTemplate, ContainerSpec=msgspec.structs.replace(cs, PullOptions=options))
    return msgspec.structs.replace(spec, TaskTemplate=task)


def _header_auth(request: web.Request) -> PullOptions | None:
    auth = request.headers.get(REGISTRY_AUTH, "").strip()
    return PullOptions(RegistryAuth=auth) if auth else None


def _hidden_task_spec(spec: TaskSpec) -> TaskSpec:
    cs = spec.ContainerSpec
    if cs is None or cs.PullOptions is None:
        return spec
    return msgspec.structs.replace(spec, ContainerSpec=msgspec.structs.replace(cs, PullOptions=None))


def _hidden_spec(spec: ServiceSpec | None) -> ServiceSpec | None:
    if spec is None:
        return None
    task = _hidden_task_spec(spec.TaskTemplate)
    return spec if task is spec.TaskTemplate else msgspec.structs.replace(spec, TaskTemplate=task)


def shown_service(svc: Service) -> Service:
    """A service as the API shows it: without the registry credentials (moby's API types have no
    ``PullOptions``, so Docker never shows them either)."""
    spec, prev = _hidden_spec(svc.Spec), _hidden_spec(svc.PreviousSpec)
    if spec is svc.Spec and prev is svc.PreviousSpec:
        return svc
    return msgspec.structs.replace(svc, Spec=spec, PreviousSpec=prev)


def shown_task(task: Task) -> Task:
    """A task as the API shows it: without its service's registry credentials."""
    spec = _hidden_task_spec(task.Spec)
    return task if spec is task.Spec else msgspec.structs.replace(task, Spec=spec)


def shown(objs: list[Any]) -> list[Any]:
    return [shown_service(o) if isinstance(o, Service) else shown_task(o) for o in objs]


def service_json(svc: Service) -> dict[str, Any]:
    """A service in Docker's shape: without its registry credentials (:func:`shown_service`),
    ``ForceUpdate`` always in a TaskTemplate (moby's field has no omitempty; our specs omit zero
    values), ``ServiceStatus`` only when asked for."""
    out: dict[str, Any] = msgspec.to_builtins(shown_service(svc))
    for key in ("Spec", "PreviousSpec"):
        spec = out.get(key)
        if isinstance(spec, dict):
            spec.setdefault("TaskTemplate", {}).setdefault("ForceUpdate", 0)
    for key in ("ServiceStatus", "JobStatus", "UpdateStatus", "PreviousSpec"):  # omitempty in moby
        if out.get(key) is None:
            out.pop(key, None)
    return out


# --------------------------------------------------------------------------- routes


async def list_services(request: web.Request) -> web.Response:
    manager = swarm_manager(request)
    filters = controlapi.parse_filters(request.query.get("filters"), SERVICE_FILTERS)
    services = controlapi.list_services(manager.store, filters, status=query_bool(request, "status"))
    return json_response([service_json(s) for s in services])


async def create(request: web.Request) -> web.Response:
    manager = swarm_manager(request)
    spec = _with_pull_options(await decode_body(request, ServiceSpec), _header_auth(request))
    svc = controlapi.create_service(manager.store, spec)
    return json_response({"ID": svc.ID, "Warnings": []}, status=201)


async def inspect(request: web.Request) -> web.Response:
    manager = swarm_manager(request)
    svc = controlapi.get_service(manager.store, request.match_info["id"])
    if query_bool(request, "insertDefaults"):
        svc = msgspec.structs.replace(svc, Spec=insert_defaults(svc.Spec))
    return json_response(service_json(svc))


async def update(request: web.Request) -> web.Response:
    manager = swarm_manager(request)
    version = query_version(request, "service")
    spec = await decode_body(request, ServiceSpec)
    options = _header_auth(request)
    if options is None:  # no new credentials: keep the ones the spec (or the previous one) has, as moby does
        cur = controlapi.get_service(manager.store, request.match_info["id"])
        source = request.query.get("registryAuthFrom", "") or "spec"
        if source == "spec":
            kept = cur.Spec
        elif source == "previous-spec":
            kept = cur.PreviousSpec
        else:
            raise InvalidArgument("unsupported registryAuthFrom value")
        cs = kept.TaskTemplate.ContainerSpec if kept is not None else None
        options = cs.PullOptions if cs is not None else None
    spec = _with_pull_options(spec, options)
    controlapi.update_service(
        manager.store, request.match_info["id"], version, spec, rollback=request.query.get("rollback") or None
    )
    return json_response({"Warnings": []})


async def remove(request: web.Request) -> web.Response:
    manager = swarm_manager(request)
    controlapi.remove_service(manager.store, request.match_info["id"])
    return empty_response()
