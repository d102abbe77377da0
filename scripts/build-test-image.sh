#!/usr/bin/env bash
# Build the offline test image `busybox:latest` from Debian's busybox-static:
# no registry is reachable, so the image is a one-binary root filesystem fed to `docker import`.
set -euo pipefail
tag="${1:-busybox:latest}"
docker_cmd=(docker ${DOCKER_HOST:+-H "$DOCKER_HOST"})
if "${docker_cmd[@]}" image inspect "$tag" >/dev/null 2>&1; then
  exit 0
fi
bb=/bin/busybox
[ -x "$bb" ] || { echo "busybox-static is not installed (apt-get install busybox-static)" >&2; exit 1; }
file "$bb" 2>/dev/null | grep -q dynamic && { echo "$bb is not static; install busybox-static" >&2; exit 1; }
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,etc,tmp,var/www,root,proc,sys,dev}
cp "$bb" "$root/bin/busybox"
# One symlink per applet, as the busybox image does.
for applet in $("$bb" --list); do
  [ "$applet" = busybox ] || ln -sf /bin/busybox "$root/bin/$applet"
done
echo 'root:x:0:0:root:/root:/bin/sh' > "$root/etc/passwd"
echo 'nobody:x:65534:65534:nobody:/:/bin/false' >> "$root/etc/passwd"
echo 'root:x:0:' > "$root/etc/group"
echo '<h1>shoal</h1>' > "$root/var/www/index.html"
tar -C "$root" -c . | "${docker_cmd[@]}" import \
  -c 'CMD ["sh"]' -c 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  - "$tag" >/dev/null
echo "built $tag"
