"""Names the lab accepts (no root needed)."""

from __future__ import annotations

import pytest

from shoal.lab import LabError, parse_host
from shoal.lab.engine import plain_name, registry_name, split_ref


@pytest.mark.parametrize("name", ["host-3", "h3", "3", 3, " host-3 "])
def test_host_names(name: str | int) -> None:
    assert parse_host(name) == 3


@pytest.mark.parametrize("name", ["host3", "hx", "node-3", "", "-1"])
def test_bad_host_names(name: str) -> None:
    with pytest.raises(LabError, match="unknown host"):
        parse_host(name)


@pytest.mark.parametrize(("image", "plain", "remote"), [
    ("busybox:latest", "busybox:latest", "10.77.0.254:5000/busybox:latest"),
    ("busybox", "busybox:latest", "10.77.0.254:5000/busybox:latest"),
    ("library/busybox:1.36", "library/busybox:1.36", "10.77.0.254:5000/library/busybox:1.36"),
    ("localhost:5000/web:v2", "localhost:5000/web:v2", "10.77.0.254:5000/web:v2"),
    ("ghcr.io/acme/tool", "ghcr.io/acme/tool:latest", "10.77.0.254:5000/acme/tool:latest"),
])
def test_image_names(image: str, plain: str, remote: str) -> None:
    assert plain_name(image) == plain
    assert registry_name(image, "10.77.0.254:5000") == remote


def test_digests_are_refused() -> None:
    with pytest.raises(LabError, match="by tag, not by digest"):
        split_ref("busybox@sha256:" + "0" * 64)
