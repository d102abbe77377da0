"""The voting app (examples/voting-app) as a stack on the real engine: five services on two overlay
networks, a named volume for postgres, start order from depends_on; votes cast on the vote page
reach the result page through redis, the worker and the db. Then a rolling upgrade of vote."""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import docker
import pytest

from tests.integration.conftest import shoal_cli, wait_for
from tests.integration.shoal_process import ShoalProcess

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "examples" / "voting-app" / "docker-compose.yml"
# Its ports 5000/5001, moved: the routing mesh takes a published port on every address of the host,
# and the lab tests (run beside these in CI) keep their registry on the lab bridge's port 5000.
VOTE, RESULT = 15000, 15001


def compose_text(vote_image: str = "voting-app-vote:1") -> str:
    return (COMPOSE.read_text().replace('"5000:80"', f'"{VOTE}:80"').replace('"5001:80"', f'"{RESULT}:80"')
            .replace("voting-app-vote:1", vote_image))
IMAGES = [f"shoal-demo/voting-app-{s}:1" for s in ("vote", "redis", "worker", "db", "result")]


def _missing() -> list[str]:
    try:
        have = {t for i in docker.from_env().images.list() for t in i.tags}
    except docker.errors.DockerException:
        return IMAGES
    return [i for i in [*IMAGES, "shoal-demo/voting-app-vote:2"] if i not in have]


def http(url: str, data: dict[str, str] | None = None) -> str:
    body = urllib.parse.urlencode(data).encode() if data is not None else None
    try:
        with urllib.request.urlopen(url, data=body, timeout=5) as resp:
            return resp.read().decode()
    except (urllib.error.URLError, ConnectionError, TimeoutError) as e:
        return f"error: {e}"


@pytest.mark.skipif(bool(_missing()), reason="demo images not built: run scripts/build-demo-images.sh")
def test_voting_app(shoal: ShoalProcess, swarm: docker.DockerClient, tmp_path: Path) -> None:
    engine = docker.from_env()
    vote_url, result_url = f"http://127.0.0.1:{VOTE}", f"http://127.0.0.1:{RESULT}"
    try:
        v1 = tmp_path / "v1" / "docker-compose.yml"
        v1.parent.mkdir()
        v1.write_text(compose_text())
        out = shoal_cli(shoal, "stack", "deploy", "-c", str(v1), "vote").stdout
        assert "Creating network vote_front" in out and "Creating network vote_back" in out
        assert "Waiting to create service vote_worker" in out  # depends_on: redis, db

        for voter, choice in (("v1", "a"), ("v2", "b"), ("v3", "b")):
            wait_for(lambda v=voter, c=choice: "error" not in http(f"{vote_url}/", {"vote": c, "voter": v}))
        tally = wait_for(lambda: (t := json.loads(http(f"{result_url}/json") or "{}")).get("total") == 3 and t,
                         timeout=60)
        assert tally["a"] == 1 and tally["b"] == 2

        # The db keeps its data in the stack's named volume.
        assert engine.volumes.get("vote_db-data").attrs["Labels"]["com.docker.stack.namespace"] == "vote"

        # Rolling upgrade of the vote front end only.
        v2 = tmp_path / "docker-compose.yml"
        v2.write_text(compose_text("voting-app-vote:2"))
        out = shoal_cli(shoal, "stack", "upgrade", "vote", "-c", str(v2)).stdout
        assert "Updating service vote_vote" in out and "vote_db" not in out
        assert "(v2)" in http(f"{vote_url}/")
        assert json.loads(http(f"{result_url}/json"))["total"] == 3
    finally:
        shoal_cli(shoal, "stack", "rm", "vote", check=False)
        wait_for(lambda: not engine.containers.list(
            sparse=True, all=True, filters={"label": "com.docker.stack.namespace=vote"}), timeout=60)
        try:
            engine.volumes.get("vote_db-data").remove(force=True)
        except docker.errors.NotFound:
            pass
