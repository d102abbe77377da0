"""`--secret` / `--config` values of `shoal service create`, as the docker CLI reads them."""

from __future__ import annotations

import pytest

from shoal.cli.secret import parse_config_ref, parse_secret_ref
from shoal.cli.spec import ServiceOptions, build_spec
from shoal.models import ConfigReference, SecretReference


def test_short_and_long_forms() -> None:
    assert parse_secret_ref("pw") == SecretReference(SecretName="pw",
                                                     File={"Name": "pw", "UID": "0", "GID": "0", "Mode": 0o444})
    ref = parse_secret_ref("source=pw,target=/etc/pw,uid=1000,gid=10,mode=0400")
    assert ref.SecretName == "pw" and ref.File == {"Name": "/etc/pw", "UID": "1000", "GID": "10", "Mode": 0o400}
    assert parse_config_ref("src=app.conf").File == {"Name": "app.conf", "UID": "0", "GID": "0", "Mode": 0o444}


@pytest.mark.parametrize(("value", "message"), [
    ("target=/x", "source is required"),
    ("source=pw,mode=rw", "invalid mode"),
    ("source=pw,owner=me", "invalid field in secret request: owner"),
    ("source=pw,readonly", "must be a key=value pair"),
])
def test_bad_values(value: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_secret_ref(value)


def test_spec_carries_references() -> None:
    spec = build_spec(ServiceOptions(image="busybox", secrets=[parse_secret_ref("pw")],
                                     configs=[parse_config_ref("c")]))
    cs = spec.TaskTemplate.ContainerSpec
    assert cs is not None and cs.Secrets is not None and cs.Configs is not None
    assert cs.Secrets[0].SecretName == "pw" and cs.Configs == [ConfigReference(
        ConfigName="c", File={"Name": "c", "UID": "0", "GID": "0", "Mode": 0o444})]
    assert build_spec(ServiceOptions(image="busybox")).TaskTemplate.ContainerSpec.Secrets is None  # type: ignore[union-attr]
