#!/usr/bin/env bash
# Install the Debian packages Shoal needs that this machine lacks (shared by setup.sh and .ci/run).
# Checks commands, not package names, so an engine installed some other way is left alone;
# `apt-get update` runs only when something has to be installed. Needs root only in that case.
set -euo pipefail

# command-to-check:package. Add a line here when the project needs another tool.
needs=(
  dockerd:docker.io
  docker:docker.io
  curl:curl
  iptables:iptables
  file:file
  python3:python3
  # `shoal lab` (multi-host lab): namespaces, links, its registry
  ip:iproute2
  nsenter:util-linux
  unshare:util-linux
  umount:mount
  hostname:hostname
  docker-registry:docker-registry
  # tests/unit/test_compose_config_compat.py compares the Compose loader with `docker-compose config`
  docker-compose:docker-compose
  # the HA store's tests and `ManagedEtcd` run etcd members (Debian's 3.4)
  etcd:etcd-server
  # the HA tests check etcd's membership with the real etcdctl
  etcdctl:etcd-client
  # the routing mesh and VIPs: the node's kernel balancers (agent/network/mesh.py)
  nft:nftables
  # load balancers and the HTTP router of aliyun.lb.* / aliyun.routing.* labels (shoal/lbroute)
  haproxy:haproxy
  # shared volumes of `driver: nas` / `ossfs` (agent/volumes.py): sshfs mounts; the tests run an sshd
  sshfs:sshfs
  fusermount:fuse3
  sftp:openssh-client
  sshd:openssh-server
  # the web console's browser tests (tests/browser.py): headless Chromium driven by selenium
  chromium:chromium
  chromedriver:chromium-driver
)

missing=()
add() { [[ " ${missing[*]-} " == *" $1 "* ]] || missing+=("$1"); }
for pair in "${needs[@]}"; do
  command -v "${pair%%:*}" >/dev/null 2>&1 || add "${pair#*:}"
done
# The test image is built from a *static* busybox (Debian's `busybox` package is dynamic).
if ! { [ -x /bin/busybox ] && command -v file >/dev/null && ! file -L /bin/busybox | grep -q dynamic; }; then
  add busybox-static
fi
# Debian's python3 ships venv and ensurepip separately.
if ! command -v python3 >/dev/null || ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then
  add python3-venv
fi
[ -e /etc/ssl/certs/ca-certificates.crt ] || add ca-certificates

if [ ${#missing[@]} -eq 0 ]; then
  echo "system packages: all present"
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "missing packages (${missing[*]}); run as root to install them" >&2
  exit 1
fi
echo "installing: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
# openssh-server is here for the tests' own sshd: its package must not leave a system sshd listening.
# A policy-rc.d that refuses every start (Debian's convention) while we install, unless one exists.
own_policy=""
if [[ " ${missing[*]} " == *" openssh-server "* ]] && [ ! -e /usr/sbin/policy-rc.d ]; then
  printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d && own_policy=1
  trap 'rm -f /usr/sbin/policy-rc.d' EXIT
fi
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
if [[ " ${missing[*]} " == *" openssh-server "* ]] && command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
  # systemd starts units itself on boot: the sshd we just installed stays off (socket too)
  systemctl disable --now ssh.service ssh.socket >/dev/null 2>&1 || true
fi
[ -z "$own_policy" ] || rm -f /usr/sbin/policy-rc.d
echo "system packages: installed ${missing[*]}"
