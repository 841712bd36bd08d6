#!/usr/bin/env bash
# Build the node image's base locally when no registry can be reached:
# debootstrap a minimal Debian bookworm (with the node's packages already in
# it) and `docker import` it under the tag the Dockerfile's FROM names, so the
# build resolves it without pulling. On a machine that can pull, this is skipped.
set -euo pipefail
TAG="${DEPLOYCTL_BASE_TAG:-debian:bookworm-slim}"
if docker image inspect "$TAG" >/dev/null 2>&1; then
  echo "base image $TAG present"; exit 0
fi
if timeout 60 docker pull "$TAG" >/dev/null 2>&1; then
  echo "base image $TAG pulled"; exit 0
fi
echo "no registry reachable: building $TAG with debootstrap"
command -v debootstrap >/dev/null || { apt-get update -qq; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null; }
MIRROR="${DEPLOYCTL_DEBIAN_MIRROR:-$(sed -n 's/^URIs: *//p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -n1)}"
MIRROR="${MIRROR:-http://deb.debian.org/debian}"
root=$(mktemp -d /var/tmp/deployctl-rootfs.XXXXXX)
trap 'rm -rf "$root"' EXIT
debootstrap --variant=minbase --include=openssh-server,python3,supervisor,procps \
  bookworm "$root" "$MIRROR" >"$root.log" 2>&1 || { tail -n 20 "$root.log"; exit 1; }
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* "$root".log
tar -C "$root" -c . | docker import --change "LABEL deployctl.made=base" - "$TAG" >/dev/null
echo "base image $TAG built"
