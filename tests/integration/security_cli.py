"""Running Shoal's CLI as a given API user (a token), for the authorization tests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def shoal_as(host: str, token: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200", "SHOAL_TOKEN": token}
    return subprocess.run([str(Path(sys.executable).with_name("shoal")), "-H", host, *args], capture_output=True,
                          text=True, timeout=60, env=env)
