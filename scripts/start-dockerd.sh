#!/usr/bin/env bash
# Make sure the node's Docker engine answers, starting dockerd if needed (shared by setup.sh and
# .ci/run). With systemd as PID 1 it asks systemd; in a container without an init it starts dockerd
# itself, detached, logging to /var/log/shoal/dockerd.log. Waits up to DOCKERD_TIMEOUT (60) seconds.
set -euo pipefail

engine="${SHOAL_ENGINE:-unix:///var/run/docker.sock}"
timeout_s="${DOCKERD_TIMEOUT:-60}"
log_dir=/var/log/shoal
log="$log_dir/dockerd.log"

ready() { docker -H "$engine" info >/dev/null 2>&1; }

if ready; then
  echo "dockerd is ready ($engine)"
  exit 0
fi
command -v dockerd >/dev/null || { echo "dockerd is not installed (apt-get install docker.io)" >&2; exit 1; }
[ "$(id -u)" -eq 0 ] || { echo "dockerd is not running at $engine and starting it needs root" >&2; exit 1; }

if [ "$(cat /proc/1/comm 2>/dev/null)" = systemd ]; then
  systemctl start docker
elif ! pgrep -x dockerd >/dev/null; then
  # A pid file left by a dockerd that died stops the next one from starting.
  if [ -f /var/run/docker.pid ] && ! kill -0 "$(cat /var/run/docker.pid)" 2>/dev/null; then
    rm -f /var/run/docker.pid
  fi
  mkdir -p "$log_dir"
  echo "starting dockerd (log: $log)"
  setsid nohup dockerd >>"$log" 2>&1 </dev/null &
fi

deadline=$((SECONDS + timeout_s))
until ready; do
  if ((SECONDS >= deadline)); then
    echo "dockerd did not become ready at $engine within ${timeout_s}s" >&2
    [ -f "$log" ] && { echo "--- last lines of $log:" >&2; tail -n 20 "$log" >&2; }
    exit 1
  fi
  sleep 1
done
echo "dockerd is ready ($engine)"
