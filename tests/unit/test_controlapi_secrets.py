"""Secrets and configs in the control API and over HTTP: every rule, every error, store untouched on failure."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pytest
from aiohttp.test_utils import TestClient, TestServer

from shoal import controlapi
from shoal.api import create_app
from shoal.api.testing import FakeManager
from shoal.controlapi import secrets as ops
from shoal.errors import Conflict, InvalidArgument, NotFound
from shoal.models import (
    ConfigReference,
    ConfigSpec,
    ContainerSpec,
    Driver,
    InitRequest,
    SecretReference,
    SecretSpec,
    ServiceSpec,
    TaskSpec,
)
from shoal.store import MemoryStore, NullBackend


def b64(data: bytes | str) -> str:
    return base64.b64encode(data.encode() if isinstance(data, str) else data).decode()


@pytest.fixture
def store() -> MemoryStore:
    return MemoryStore(NullBackend())


def snapshot(store: MemoryStore) -> tuple[int, bytes]:
    objs = {k: sorted(store.list(k), key=lambda o: o.ID) for k in ("secret", "config", "service")}
    return store.revision, msgspec.json.encode(objs)


def service(name: str = "web", secrets: list[SecretReference] | None = None,
            configs: list[ConfigReference] | None = None) -> ServiceSpec:
    cs = ContainerSpec(Image="busybox:latest", Secrets=secrets, Configs=configs)
    return ServiceSpec(Name=name, TaskTemplate=TaskSpec(ContainerSpec=cs))


# --------------------------------------------------------------------------- create


def test_create_stores_canonical_data_and_answers_without_it(store: MemoryStore) -> None:
    s = controlapi.create_secret(store, SecretSpec(Name="db.pass", Labels={"a": "1"}, Data=b64("hunter2")))
    assert store.get("secret", s.ID).Spec.Data == b64("hunter2")
    assert s.Version.Index == store.revision and s.CreatedAt
    shown = controlapi.list_secrets(store)
    assert [x.Spec.Data for x in shown] == [""] and shown[0].Spec.Labels == {"a": "1"}
    assert ops.redacted(s).Spec.Data == "" and b"hunter2" not in msgspec.json.encode(ops.redacted(s))
    c = controlapi.create_config(store, ConfigSpec(Name="nginx.conf", Data=b64("server {}")))
    assert controlapi.list_configs(store)[0].Spec.Data == b64("server {}")
    assert controlapi.get_config(store, c.ID).ID == c.ID


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (SecretSpec(Name="", Data=b64("x")), "name must be provided"),
        (SecretSpec(Name="-bad", Data=b64("x")), "invalid name, only 64 [a-zA-Z0-9-_.] characters allowed"),
        (SecretSpec(Name="bad-", Data=b64("x")), "the start and end character must be [a-zA-Z0-9]"),
        (SecretSpec(Name="has space", Data=b64("x")), "invalid name"),
        (SecretSpec(Name="a" * 65, Data=b64("x")), "invalid name"),
        (SecretSpec(Name="ok", Data=""), "secret data must be larger than 0 and less than 512000 bytes"),
        (SecretSpec(Name="ok", Data=b64(b"x" * 512000)), "less than 512000 bytes"),
        (SecretSpec(Name="ok", Data="not base64!"), "illegal base64 data"),
        (SecretSpec(Name="ok", Data=b64("x"), Driver=Driver(Name="vault")), "secret driver 'vault'"),
        (SecretSpec(Name="ok", Data=b64("x"), Templating=Driver(Name="golang")), "templating driver"),
    ],
)
def test_create_rejects_bad_secret_specs(store: MemoryStore, spec: SecretSpec, message: str) -> None:
    before = snapshot(store)
    with pytest.raises(InvalidArgument) as err:
        controlapi.create_secret(store, spec)
    assert err.value.message.startswith("rpc error: code = InvalidArgument desc = ")
    assert message in err.value.message
    assert snapshot(store) == before


def test_size_limits_are_swarmkits(store: MemoryStore) -> None:
    controlapi.create_secret(store, SecretSpec(Name="a" * 64, Data=b64(b"x" * 511_999)))
    with pytest.raises(InvalidArgument, match="config data must be larger than 0 and less than 1024000 bytes"):
        controlapi.create_config(store, ConfigSpec(Name="big", Data=b64(b"x" * 1024000)))
    controlapi.create_config(store, ConfigSpec(Name="big", Data=b64(b"x" * 600_000)))


def test_duplicate_name_is_409_per_kind(store: MemoryStore) -> None:
    controlapi.create_secret(store, SecretSpec(Name="dup", Data=b64("1")))
    before = snapshot(store)
    with pytest.raises(Conflict) as err:
        controlapi.create_secret(store, SecretSpec(Name="dup", Data=b64("2")))
    assert err.value.message == "rpc error: code = AlreadyExists desc = secret dup already exists"
    assert snapshot(store) == before
    controlapi.create_config(store, ConfigSpec(Name="dup", Data=b64("3")))  # another namespace
    with pytest.raises(Conflict, match="config dup already exists"):
        controlapi.create_config(store, ConfigSpec(Name="dup", Data=b64("4")))


# --------------------------------------------------------------------------- inspect, list


def test_get_by_id_name_prefix_and_errors(store: MemoryStore) -> None:
    a = controlapi.create_secret(store, SecretSpec(Name="alpha", Data=b64("1")))
    b = controlapi.create_secret(store, SecretSpec(Name="beta", Data=b64("2")))
    assert controlapi.get_secret(store, a.ID).ID == a.ID
    assert controlapi.get_secret(store, "beta").ID == b.ID
    assert controlapi.get_secret(store, b.ID[:6]).ID == b.ID
    with pytest.raises(NotFound, match=r"^secret nope not found$"):
        controlapi.get_secret(store, "nope")
    with pytest.raises(NotFound, match="config alpha not found"):
        controlapi.get_config(store, "alpha")
    with pytest.raises(NotFound):
        controlapi.get_secret(store, "")
    # Two IDs sharing a prefix: ambiguous (400), as moby answers.
    while True:
        c = controlapi.create_secret(store, SecretSpec(Name=f"c{store.revision}", Data=b64("3")))
        if c.ID[0] in (a.ID[0], b.ID[0]):
            break
    with pytest.raises(InvalidArgument, match="is ambiguous"):
        controlapi.get_secret(store, c.ID[0])


def test_list_filters_or_names_and_and_labels(store: MemoryStore) -> None:
    a = controlapi.create_secret(store, SecretSpec(Name="app-db", Labels={"env": "prod", "x": ""}, Data=b64("1")))
    controlapi.create_secret(store, SecretSpec(Name="app-cache", Labels={"env": "dev"}, Data=b64("2")))
    controlapi.create_secret(store, SecretSpec(Name="other", Data=b64("3")))

    def q(**f: list[str]) -> list[str]:
        return [s.Spec.Name for s in controlapi.list_secrets(store, f)]

    assert q() == ["app-cache", "app-db", "other"]
    assert q(name=["app"]) == ["app-cache", "app-db"]
    assert q(names=["app"]) == []
    assert q(names=["other"]) == ["other"]
    assert q(names=["other"], name=["app-d"]) == ["app-db", "other"]  # swarmkit ORs these
    assert q(id=[a.ID[:8]]) == ["app-db"]
    assert q(label=["env=prod"]) == ["app-db"]
    assert q(label=["env"]) == ["app-cache", "app-db"]
    assert q(label=["env", "x"], name=["app"]) == ["app-db"]
    with pytest.raises(InvalidArgument, match="invalid filter 'mode'"):
        controlapi.parse_filters('{"mode": ["x"]}', ops.SECRET_FILTERS)


# --------------------------------------------------------------------------- update


def test_update_labels_only(store: MemoryStore) -> None:
    s = controlapi.create_secret(store, SecretSpec(Name="s", Labels={"a": "1"}, Data=b64("v")))
    v = s.Version.Index
    new = controlapi.update_secret(store, "s", v, SecretSpec(Name="s", Labels={"b": "2"}))
    assert new.Spec.Labels == {"b": "2"} and base64.b64decode(store.get("secret", s.ID).Spec.Data) == b"v"
    # The same data sent back is no change.
    controlapi.update_secret(store, s.ID, new.Version.Index, SecretSpec(Name="s", Data=b64("v")))
    assert store.get("secret", s.ID).Spec.Labels is None
    before = snapshot(store)
    cur = store.get("secret", s.ID).Version.Index
    for bad in (SecretSpec(Name="renamed"), SecretSpec(Name="s", Data=b64("other")),
                SecretSpec(Name="s", Driver=Driver(Name="vault"))):
        with pytest.raises(InvalidArgument, match="only updates to Labels are allowed"):
            controlapi.update_secret(store, s.ID, cur, bad)
    with pytest.raises(Conflict, match="update out of sequence"):
        controlapi.update_secret(store, s.ID, v, SecretSpec(Name="s", Labels={"c": "3"}))
    with pytest.raises(NotFound):
        controlapi.update_secret(store, "gone", cur, SecretSpec(Name="gone"))
    assert snapshot(store) == before
    c = controlapi.create_config(store, ConfigSpec(Name="c", Data=b64("d")))
    with pytest.raises(InvalidArgument, match="only updates to Labels are allowed"):
        controlapi.update_config(store, c.ID, c.Version.Index, ConfigSpec(Name="c", Data=b64("e")))
    assert controlapi.update_config(store, c.ID, c.Version.Index, ConfigSpec(Name="c", Labels={"k": "v"})).Spec.Data


# --------------------------------------------------------------------------- service references, remove


def test_references_resolve_by_id_or_name_with_defaults(store: MemoryStore) -> None:
    s = controlapi.create_secret(store, SecretSpec(Name="pw", Data=b64("p")))
    c = controlapi.create_config(store, ConfigSpec(Name="conf", Data=b64("c")))
    spec = service(
        secrets=[SecretReference(SecretName="pw"),
                 SecretReference(SecretID=s.ID, File={"Name": "/etc/pw", "UID": "1000", "Mode": 0o400})],
        configs=[ConfigReference(ConfigName="conf"), ConfigReference(ConfigID=c.ID, ConfigName="conf",
                                                                     File={"name": "/x.conf"})],
    )
    out = controlapi.resolve_service_references(store, spec).TaskTemplate.ContainerSpec
    assert out is not None and out.Secrets is not None and out.Configs is not None
    assert out.Secrets[0] == SecretReference(SecretID=s.ID, SecretName="pw",
                                             File={"Name": "pw", "UID": "0", "GID": "0", "Mode": 0o444})
    assert out.Secrets[1].File == {"Name": "/etc/pw", "UID": "1000", "GID": "0", "Mode": 0o400}
    assert out.Configs[0] == ConfigReference(ConfigID=c.ID, ConfigName="conf",
                                             File={"Name": "conf", "UID": "0", "GID": "0", "Mode": 0o444})
    assert out.Configs[1].File is not None and out.Configs[1].File["Name"] == "/x.conf"
    assert controlapi.resolve_service_references(store, service()) == service()


@pytest.mark.parametrize(
    ("refs", "error", "message"),
    [
        ([SecretReference(SecretName="nope")], NotFound, "desc = secret not found: nope"),
        ([SecretReference(SecretName="nope"), SecretReference(SecretName="nada")], NotFound,
         "secrets not found: nope, nada"),
        ([SecretReference(SecretID="0000", SecretName="pw")], NotFound, "secret not found: pw"),
        ([SecretReference(SecretName="pw"), SecretReference(SecretName="pw")], InvalidArgument,
         "secret references 'pw' and 'pw' have a conflicting target: 'pw'"),
        ([SecretReference(SecretName="pw", File={"Mode": "rw"})], InvalidArgument, "invalid file mode"),
        ([SecretReference(SecretName="pw", File={"UID": "root"})], InvalidArgument, "must be numeric"),
        ([SecretReference(SecretName="pw", File={"Owner": "x"})], InvalidArgument, "unknown file target field"),
        ([SecretReference()], NotFound, "secret not found"),
    ],
)
def test_bad_references_fail_create_and_update(
    store: MemoryStore, refs: list[SecretReference], error: type[Exception], message: str
) -> None:
    controlapi.create_secret(store, SecretSpec(Name="pw", Data=b64("p")))
    svc = controlapi.create_service(store, service("ok"))
    before = snapshot(store)
    with pytest.raises(error, match=message):
        controlapi.create_service(store, service("web", secrets=refs))
    with pytest.raises(error, match=message):
        controlapi.update_service(store, svc.ID, svc.Version.Index, service("ok", secrets=refs))
    assert snapshot(store) == before


def test_unknown_config_reference_is_404(store: MemoryStore) -> None:
    with pytest.raises(NotFound, match="config not found: missing"):
        controlapi.create_service(store, service(configs=[ConfigReference(ConfigName="missing")]))


def test_remove_refuses_while_a_service_uses_it(store: MemoryStore) -> None:
    s = controlapi.create_secret(store, SecretSpec(Name="pw", Data=b64("p")))
    c = controlapi.create_config(store, ConfigSpec(Name="conf", Data=b64("c")))
    a = controlapi.create_service(store, service("api", secrets=[SecretReference(SecretName="pw")],
                                                 configs=[ConfigReference(ConfigName="conf")]))
    with pytest.raises(Conflict) as err:
        controlapi.remove_secret(store, "pw")
    assert err.value.message == ("rpc error: code = InvalidArgument desc = secret 'pw' is in use by the "
                                 "following service: api")
    controlapi.create_service(store, service("web", secrets=[SecretReference(SecretID=s.ID)]))
    before = snapshot(store)
    with pytest.raises(Conflict, match="in use by the following services: api, web"):
        controlapi.remove_secret(store, s.ID)
    with pytest.raises(Conflict, match="config 'conf' is in use by the following service: api"):
        controlapi.remove_config(store, c.ID[:5])
    with pytest.raises(NotFound, match="secret gone not found"):
        controlapi.remove_secret(store, "gone")
    assert snapshot(store) == before
    controlapi.remove_service(store, "web")
    cur = controlapi.get_service(store, a.ID)
    controlapi.update_service(store, a.ID, cur.Version.Index, service("api"))
    controlapi.remove_secret(store, "pw")
    controlapi.remove_config(store, "conf")
    assert store.list("secret") == [] and store.list("config") == []


# --------------------------------------------------------------------------- HTTP


@pytest.fixture
async def client() -> AsyncIterator[tuple[TestClient, FakeManager]]:
    m = FakeManager()
    await m.init_swarm(InitRequest())
    async with TestClient(TestServer(create_app(m))) as c:
        yield c, m


async def test_http_round_trip(client: tuple[TestClient, FakeManager]) -> None:
    c, m = client
    r = await c.post("/v1.41/secrets/create", json={"Name": "pw", "Labels": {"a": "b"}, "Data": b64("hunter2")})
    assert r.status == 201
    sid = (await r.json())["ID"]
    for path in (f"/secrets/{sid}", "/secrets/pw", f"/secrets/{sid[:5]}"):
        r = await c.get(path)
        body = await r.json()
        assert r.status == 200 and body["ID"] == sid and body["Spec"]["Name"] == "pw"
        assert "Data" not in body["Spec"] and "hunter2" not in await r.text()
    r = await c.get("/secrets", params={"filters": '{"name": {"p": true}}'})
    listed = await r.json()
    assert [s["ID"] for s in listed] == [sid] and "Data" not in listed[0]["Spec"]
    version = body["Version"]["Index"]
    r = await c.post(f"/secrets/{sid}/update", params={"version": str(version)},
                     json={"Name": "pw", "Labels": {"new": "1"}})
    assert r.status == 200
    r = await c.post(f"/secrets/{sid}/update", params={"version": str(version)}, json={"Name": "pw"})
    assert r.status == 409 and "update out of sequence" in (await r.json())["message"]
    r = await c.post(f"/secrets/{sid}/update", params={"version": "x"}, json={"Name": "pw"})
    assert r.status == 400 and "invalid secret version" in (await r.json())["message"]
    r = await c.post("/configs/create", json={"Name": "conf", "Data": b64("k=v")})
    cid = (await r.json())["ID"]
    r = await c.get("/configs/conf")
    assert (await r.json())["Spec"]["Data"] == b64("k=v")
    r = await c.delete(f"/secrets/{sid}")
    assert r.status == 204 and m.store.list("secret") == []
    r = await c.delete(f"/configs/{cid}")
    assert r.status == 204


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "message"),
    [
        ("post", "/secrets/create", {"Name": "pw", "Data": b64("x")}, 409, "secret pw already exists"),
        ("post", "/secrets/create", {"Name": "x y", "Data": b64("x")}, 400, "invalid name"),
        ("post", "/secrets/create", {"Name": "ok"}, 400, "secret data must be larger than 0"),
        ("post", "/secrets/create", {"Name": "ok", "Data": b64("x"), "Bogus": 1}, 400, "Bogus"),
        ("post", "/secrets/create", None, 400, "EOF"),
        ("post", "/configs/create", {"Name": "c", "Data": b64("x"), "Driver": {}}, 400, "Driver"),
        ("get", "/secrets/nope", None, 404, "secret nope not found"),
        ("get", "/configs/nope", None, 404, "config nope not found"),
        ("delete", "/secrets/pw", None, 409, "secret 'pw' is in use by the following service: web"),
        ("delete", "/configs/nope", None, 404, "config nope not found"),
        ("get", "/secrets?filters=%7B%22bad%22%3A%5B%22x%22%5D%7D", None, 400, "invalid filter 'bad'"),
    ],
)
async def test_http_errors(client: tuple[TestClient, FakeManager], method: str, path: str, body: Any,
                           status: int, message: str) -> None:
    c, m = client
    controlapi.create_secret(m.store, SecretSpec(Name="pw", Data=b64("p")))
    controlapi.create_service(m.store, service("web", secrets=[SecretReference(SecretName="pw")]))
    before = snapshot(m.store)
    kw: dict[str, Any] = {"json": body} if body is not None else {}
    r = await getattr(c, method)(path, **kw)
    assert r.status == status
    assert message in (await r.json())["message"]
    assert snapshot(m.store) == before


async def test_http_needs_a_swarm() -> None:
    async with TestClient(TestServer(create_app(FakeManager()))) as c:
        for path in ("/secrets", "/configs"):
            r = await c.get(path)
            assert r.status == 503 and "not a swarm manager" in (await r.json())["message"]


def test_config_templating_golang_is_kept_and_other_drivers_are_400() -> None:
    store = MemoryStore(NullBackend())
    data = base64.b64encode(b"name={{.Service.Name}}").decode()
    cfg = ops.create_config(store, ConfigSpec(Name="t", Data=data, Templating=Driver(Name="golang")))
    assert cfg.Spec.Templating == Driver(Name="golang")
    before = store.revision
    with pytest.raises(InvalidArgument, match="templating driver 'jinja' is not supported"):
        ops.create_config(store, ConfigSpec(Name="u", Data=data, Templating=Driver(Name="jinja")))
    with pytest.raises(InvalidArgument, match="templating driver 'golang' is not supported"):
        ops.create_secret(store, SecretSpec(Name="s", Data=data, Templating=Driver(Name="golang")))
    assert store.revision == before
