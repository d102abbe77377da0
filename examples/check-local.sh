#!/usr/bin/env bash
# End-to-end check of the demo apps on the local engine, without Shoal, docker-compose or stacks:
# each app gets its own user-defined bridge network and every container joins it with
# `--network-alias <service>`, which is what a cluster's service DNS provides. Then:
#   voting-app:  votes posted to vote are counted in result's /json (through redis, worker, db),
#                and are still there after the db container is replaced on the same volume;
#   dockercoins: the `hashes` counter in redis advances, and webui's /json reports it.
# Builds the images first (scripts/build-demo-images.sh, seconds when warm). Removes only the
# containers, networks and volume it created, also on failure or Ctrl-C.
set -euo pipefail

here="$(cd "$(dirname "$0")/.." && pwd)"
docker_cmd=(docker ${DOCKER_HOST:+-H "$DOCKER_HOST"})
d() { "${docker_cmd[@]}" "$@"; }
prefix="shoal-demo-check-$$"
containers=()
networks=()
volumes=()

cleanup() {
  local status=$?
  if [ $status -ne 0 ]; then
    for c in "${containers[@]}"; do
      echo "--- logs of $c" >&2
      d logs --tail 15 "$c" >&2 2>&1 || true
    done
  fi
  for c in "${containers[@]}"; do d rm -f -v "$c" >/dev/null 2>&1 || true; done
  for n in "${networks[@]}"; do d network rm "$n" >/dev/null 2>&1 || true; done
  for v in "${volumes[@]}"; do d volume rm "$v" >/dev/null 2>&1 || true; done
  exit $status
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# run APP SERVICE IMAGE [docker run options...]: one container for one service of one app.
run() {
  local app=$1 service=$2 image=$3
  shift 3
  local name="$prefix-$app-$service"
  containers+=("$name")
  d run -d --name "$name" --network "$prefix-$app" --network-alias "$service" "$@" "$image" >/dev/null
}

# The host port that a container's port 80 is published on (on loopback only).
port_of() { d port "$prefix-$1" 80/tcp | head -n1 | sed 's/.*://'; }

# wait_for SECONDS DESCRIPTION COMMAND...: retry COMMAND each second until it succeeds.
wait_for() {
  local limit=$1 what=$2 deadline=$((SECONDS + $1))
  shift 2
  until "$@" >/dev/null 2>&1; do
    if [ $SECONDS -ge $deadline ]; then echo "FAIL: $what (gave up after ${limit}s)" >&2; return 1; fi
    sleep 1
  done
}

bash "$here/scripts/build-demo-images.sh" >/dev/null

for app in voting-app dockercoins; do
  d network create "$prefix-$app" >/dev/null
  networks+=("$prefix-$app")
done
volumes+=("$prefix-db-data")
d volume create "$prefix-db-data" >/dev/null

# --- voting-app
v=shoal-demo/voting-app
run voting-app redis "$v-redis:1"
run voting-app db "$v-db:1" -e POSTGRES_PASSWORD=postgres -v "$prefix-db-data:/var/lib/postgresql/data"
run voting-app worker "$v-worker:1" -e DB_PASSWORD=postgres
run voting-app vote "$v-vote:1" -p 127.0.0.1::80
run voting-app result "$v-result:1" -e DB_PASSWORD=postgres -p 127.0.0.1::80
# --- dockercoins
c=shoal-demo/dockercoins
run dockercoins redis "$c-redis:1"
run dockercoins rng "$c-rng:1"
run dockercoins hasher "$c-hasher:1"
run dockercoins worker "$c-worker:1"
run dockercoins webui "$c-webui:1" -p 127.0.0.1::80

vote="http://127.0.0.1:$(port_of voting-app-vote)"
result="http://127.0.0.1:$(port_of voting-app-result)"
webui="http://127.0.0.1:$(port_of dockercoins-webui)"

wait_for 30 "vote answers" curl -fsS "$vote/healthz"
curl -fsS "$vote/" | grep -q '<form' || { echo "FAIL: vote's page has no form" >&2; exit 1; }
curl -fsS -b voter_id=check-a -d vote=a "$vote/" | grep -q 'You voted for' \
  || { echo "FAIL: vote did not take a vote" >&2; exit 1; }
curl -fsS -b voter_id=check-b -d vote=b "$vote/" >/dev/null
curl -fsS -b voter_id=check-c -d vote=a "$vote/" >/dev/null
# The same voter again: changes their vote, does not add one.
curl -fsS -b voter_id=check-c -d vote=b "$vote/" >/dev/null
counted() { curl -fsS "$result/json" | python3 -c '
import json, sys
t = json.load(sys.stdin)
sys.exit(0 if (t["a"], t["b"], t["total"]) == (1, 2, 3) else 1)'; }
wait_for 60 "result shows a=1 b=2 total=3" counted
# The votes live in the volume: a new db container on the same volume still has them.
d rm -f "$prefix-voting-app-db" >/dev/null
d run -d --name "$prefix-voting-app-db" --network "$prefix-voting-app" --network-alias db \
  -e POSTGRES_PASSWORD=postgres -v "$prefix-db-data:/var/lib/postgresql/data" "$v-db:1" >/dev/null
wait_for 60 "result shows the same votes after the db container is replaced" counted
echo "voting-app: ok   result $(curl -fsS "$result/json") (also after replacing the db container)"
d exec "$prefix-voting-app-db" pg_isready -U postgres >/dev/null \
  || { echo "FAIL: db healthcheck command" >&2; exit 1; }

hashes() { d exec "$prefix-dockercoins-redis" redis-cli get hashes; }
advanced() { [ "$(hashes)" -gt "$1" ] 2>/dev/null; }
wait_for 30 "dockercoins hashes counter starts" advanced 0
first=$(hashes)
wait_for 30 "dockercoins hashes counter advances past $first" advanced "$first"
webui_has_hashes() { curl -fsS "$webui/json" | python3 -c '
import json, sys
sys.exit(0 if json.load(sys.stdin)["hashes"] > 0 else 1)'; }
wait_for 15 "webui /json reports hashes" webui_has_hashes
curl -fsS "$webui/" | grep -q 'DockerCoin Miner' || { echo "FAIL: webui page" >&2; exit 1; }
echo "dockercoins: ok  hashes $first -> $(hashes), webui $(curl -fsS "$webui/json")"
