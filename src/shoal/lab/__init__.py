"""``shoal lab``: a multi-host Shoal cluster on one machine, for tests, benchmarks and demos.

    lab = Lab("/run/shoal-lab", hosts=4)
    lab.up()                 # host-1 … host-4, joined; lab.docker_host is the manager's API
    lab.cut("host-3"); lab.kill("h2"); lab.restore(3); lab.restore(2)
    lab.down()
"""

from shoal.lab.errors import LabError
from shoal.lab.lab import (
    DEFAULT_PRELOAD,
    DEFAULT_STATE_DIR,
    HostStatus,
    Lab,
    missing_requirements,
    parse_host,
)
from shoal.lab.state import BRIDGE, GATEWAY, REGISTRY, HostState, LabState, ProcRef

__all__ = [
    "BRIDGE",
    "DEFAULT_PRELOAD",
    "DEFAULT_STATE_DIR",
    "GATEWAY",
    "REGISTRY",
    "HostState",
    "HostStatus",
    "Lab",
    "LabError",
    "LabState",
    "ProcRef",
    "missing_requirements",
    "parse_host",
]
