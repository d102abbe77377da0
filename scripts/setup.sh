#!/usr/bin/env bash
# From a fresh Debian 12 machine to a running Shoal cluster with a demo service, in one command:
#
#     sudo bash scripts/setup.sh
#
# Safe to run again: every step checks first and skips what is already done. Steps: system packages,
# dockerd, ./.venv, the offline test image, the Shoal daemon (background, pid file), swarm init, and
# the demo (3 busybox httpd replicas published on port 8080).
set -euo pipefail
cd "$(dirname "$0")/.."

sock=/run/shoal/shoal.sock
host="unix://$sock"
pidfile=/run/shoal/shoal.pid
log=/var/log/shoal/shoal.log
engine="${SHOAL_ENGINE:-unix:///var/run/docker.sock}"
data_root="${SHOAL_DATA_ROOT:-/var/lib/shoal}"
shoal=(.venv/bin/shoal -H "$host")

step() { printf '\n==> %s\n' "$*"; }
die() { echo "setup: $*" >&2; exit 1; }
ping_daemon() { curl -fsS --max-time 2 --unix-socket "$sock" http://localhost/_ping >/dev/null 2>&1; }

[ "$(id -u)" -eq 0 ] || die "run me as root: sudo bash scripts/setup.sh"

step "system packages"
bash scripts/install-deps.sh

step "docker engine"
SHOAL_ENGINE="$engine" bash scripts/start-dockerd.sh

step "python environment (.venv)"
bash scripts/make-venv.sh

step "test image busybox:latest"
DOCKER_HOST="$engine" bash scripts/build-test-image.sh && echo "busybox:latest is present"

step "shoal daemon"
mkdir -p /run/shoal /var/log/shoal
if ping_daemon; then
  echo "already running at $host (pid $(cat "$pidfile" 2>/dev/null || echo unknown))"
else
  if [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
    echo "pid $(cat "$pidfile") is starting; waiting for it"
  else
    setsid nohup .venv/bin/shoal daemon -H "$host" --data-root "$data_root" --engine "$engine" \
      >>"$log" 2>&1 </dev/null &
    echo $! >"$pidfile"
    echo "started pid $(cat "$pidfile") (log: $log)"
  fi
  for _ in $(seq 60); do
    ping_daemon && break
    kill -0 "$(cat "$pidfile")" 2>/dev/null || { tail -n 20 "$log" >&2; die "the daemon exited; see $log"; }
    sleep 1
  done
  ping_daemon || { tail -n 20 "$log" >&2; die "the daemon did not answer on $sock within 60 s"; }
  echo "answering on $host"
fi

step "swarm"
state=$(curl -fsS --unix-socket "$sock" http://localhost/v1.41/info \
  | .venv/bin/python -c 'import json, sys; print(json.load(sys.stdin)["Swarm"]["LocalNodeState"])')
if [ "$state" = active ]; then
  echo "this node is already in a swarm"
else
  addr="${SHOAL_ADVERTISE_ADDR:-$(hostname -I 2>/dev/null | awk '{print $1}')}"
  "${shoal[@]}" swarm init ${addr:+--advertise-addr "$addr"}
fi

step "demo service (3 x busybox httpd on port 8080)"
if "${shoal[@]}" service inspect demo >/dev/null 2>&1; then
  echo "service demo exists; making sure it runs 3 replicas"
  timeout 180 "${shoal[@]}" service scale demo=3 || die "demo did not reach 3 running replicas in 180 s"
else
  timeout 180 "${shoal[@]}" service create --name demo --replicas 3 -p 8080:80 \
    busybox:latest httpd -f -p 80 -h /var/www || die "demo did not reach 3 running replicas in 180 s"
fi
echo
"${shoal[@]}" service ps demo
echo
echo "curl localhost:8080 says:"
curl -fsS --retry 15 --retry-delay 1 --retry-connrefused --max-time 5 http://localhost:8080/ \
  || die "nothing answered on localhost:8080"

cat <<MSG

Shoal is running. Try:
  docker -H $host service ls
  .venv/bin/shoal -H $host service ps demo      (or: export SHOAL_HOST=$host)
  .venv/bin/shoal -H $host service scale demo=5
  .venv/bin/shoal -H $host service logs demo
Stop the daemon:   kill \$(cat $pidfile)
Daemon log:        $log
MSG
