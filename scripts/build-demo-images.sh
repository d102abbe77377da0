#!/usr/bin/env bash
# Build the demo applications' images (examples/*/) offline: no container registry is reachable,
# so the base image is a Debian bookworm root filesystem made by debootstrap and fed to
# `docker import`; every service image is then a plain `docker build` FROM that local base.
#
#   scripts/build-demo-images.sh [--push REGISTRY]     e.g. --push 127.0.0.1:5000
#
# Idempotent and quiet: the root filesystem tarball is cached under ~/.cache/shoal/, the base
# image is re-imported only when that tarball changes, and `docker build` reuses its layer cache,
# so a second run takes seconds. Prints the image names at the end.
set -euo pipefail

push=""
while [ $# -gt 0 ]; do
  case "$1" in
    --push) push="${2:?--push needs a registry, e.g. 127.0.0.1:5000}"; shift 2 ;;
    -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done

here="$(cd "$(dirname "$0")/.." && pwd)"
docker_cmd=(docker ${DOCKER_HOST:+-H "$DOCKER_HOST"})
suite=bookworm
# What the apps need at run time; postgres is added only to the db image (it pulls in ~200 MB).
packages=python3,python3-redis,python3-psycopg2,redis-server,ca-certificates
cache="${XDG_CACHE_HOME:-$HOME/.cache}/shoal"
key=$(printf '%s %s v1' "$suite" "$packages" | sha256sum | cut -c1-12)
tarball="$cache/demo-rootfs-$suite-$key.tar.gz"
base=shoal-demo/base

log=$(mktemp)
cleanup_dirs=()
cleanup() { rm -f "$log"; for d in "${cleanup_dirs[@]}"; do rm -rf "$d"; done; }
trap cleanup EXIT
# Run quietly; show the command's output only if it fails.
quiet() { if ! "$@" >"$log" 2>&1; then echo "failed: $*" >&2; tail -n 40 "$log" >&2; exit 1; fi; }

# The mirror comes from this machine's apt configuration (or DEBIAN_MIRROR), not from this file.
mirror() {
  if [ -n "${DEBIAN_MIRROR:-}" ]; then echo "$DEBIAN_MIRROR"; return; fi
  local uri
  uri=$(cat /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '/^URIs:/ {print $2}' \
        | grep -E '/debian/?$' | head -n1 || true)
  [ -n "$uri" ] || uri=$(grep -hE '^deb ' /etc/apt/sources.list 2>/dev/null | awk '{print $2}' \
        | grep -E '/debian/?$' | head -n1 || true)
  [ -n "$uri" ] || { echo "no Debian mirror in apt's sources; set DEBIAN_MIRROR" >&2; exit 1; }
  echo "$uri"
}

make_rootfs() {
  command -v debootstrap >/dev/null 2>&1 || {
    quiet apt-get update -qq
    quiet env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap
  }
  local root
  root=$(mktemp -d)
  cleanup_dirs+=("$root")
  quiet debootstrap --variant=minbase --include="$packages" "$suite" "$root" "$(mirror)"
  # Later installs (the db image's postgres) skip docs too.
  cat >"$root/etc/dpkg/dpkg.cfg.d/01-shoal-demo-nodoc" <<'EOF'
path-exclude /usr/share/doc/*
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
EOF
  echo 'APT::Install-Recommends "false";' >"$root/etc/apt/apt.conf.d/01-shoal-demo-norecommends"
  rm -rf "$root"/usr/share/{doc,man,info}/* "$root"/var/cache/apt/*.bin \
         "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* "$root"/tmp/* "$root"/var/cache/debconf/*-old
  find "$root/var/log" -type f -delete
  find "$root/usr/share/locale" -mindepth 1 -maxdepth 1 ! -name locale.alias -exec rm -rf {} +
  find "$root/usr/lib" -name __pycache__ -type d -prune -exec rm -rf {} +
  # Device nodes come from the engine at run time; a tarball with them is not importable everywhere.
  rm -rf "${root:?}/dev"/* "$root"/proc/* "$root"/sys/*
  mkdir -p "$cache"
  tar -C "$root" --numeric-owner -czf "$tarball.tmp" .
  mv "$tarball.tmp" "$tarball"
}

[ -s "$tarball" ] || make_rootfs

# Re-import the base only when the tarball differs from the one it was made from.
want=$(stat -c %Y-%s "$tarball")-$key
have=$("${docker_cmd[@]}" image inspect -f '{{index .Config.Labels "shoal.demo.rootfs"}}' "$base:latest" 2>/dev/null || true)
if [ "$have" != "$want" ]; then
  quiet "${docker_cmd[@]}" import \
    -c 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    -c 'ENV LANG=C.UTF-8 PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1' \
    -c "LABEL shoal.demo.rootfs=$want" \
    -c 'CMD ["python3"]' \
    "$tarball" "$base:latest"
fi

# One image per examples/<app>/<service>/Dockerfile, tagged shoal-demo/<app>-<service>:1.
# The services listed in `variants` also get a :2 built with --build-arg VERSION=2, so a rolling
# update has a real second image to move to.
variants=" voting-app/vote dockercoins/worker dockercoins/webui "
images=()
shopt -s nullglob
for dockerfile in "$here"/examples/*/*/Dockerfile; do
  dir=$(dirname "$dockerfile")
  service=$(basename "$dir")
  app=$(basename "$(dirname "$dir")")
  name="shoal-demo/$app-$service"
  quiet "${docker_cmd[@]}" build -q --build-arg VERSION=1 -t "$name:1" "$dir"
  images+=("$name:1")
  if [[ "$variants" == *" $app/$service "* ]]; then
    quiet "${docker_cmd[@]}" build -q --build-arg VERSION=2 -t "$name:2" "$dir"
    images+=("$name:2")
  fi
done

if [ -n "$push" ]; then
  pushed=()
  for image in "${images[@]}"; do
    quiet "${docker_cmd[@]}" tag "$image" "$push/$image"
    quiet "${docker_cmd[@]}" push "$push/$image"
    pushed+=("$push/$image")
  done
  images=("${pushed[@]}")
fi

printf '%s\n' "${images[@]}"
