#!/usr/bin/env bash
# Build the node image's base locally when no registry can be reached:
# debootstrap a minimal Debian bookworm (with the node's packages already in
# it) and `docker import` it under the tag the Dockerfile's FROM names, so the
# build resolves it without pulling. On a machine that can pull, this is skipped.
set -euo pipefail
TAG="${DEPLOYCTL_BASE_TAG:-debian:bookworm-slim}"
BASE_VERSION=2  # 2: rsync added (bench/bench_delta.py compares with it)
made=$(docker image inspect "$TAG" --format '{{index .Config.Labels "deployctl.made"}}/{{index .Config.Labels "deployctl.base"}}' 2>/dev/null || true)
if [ "$made" = "base/$BASE_VERSION" ] || { [ -n "$made" ] && [ "${made%%/*}" != base ]; }; then
  echo "base image $TAG present"; exit 0  # ours and current, or not ours (pulled: the Dockerfile adds what lacks)
fi
[ -n "$made" ] && docker image rm -f "$TAG" >/dev/null  # an older base of ours: build it again
if timeout 60 docker pull "$TAG" >/dev/null 2>&1; then
  echo "base image $TAG pulled"; exit 0
fi
echo "no registry reachable: building $TAG with debootstrap"
command -v debootstrap >/dev/null || { apt-get update -qq; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null; }
MIRROR="${DEPLOYCTL_DEBIAN_MIRROR:-$(sed -n 's/^URIs: *//p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -n1)}"
MIRROR="${MIRROR:-http://deb.debian.org/debian}"
root=$(mktemp -d /var/tmp/deployctl-rootfs.XXXXXX)
trap 'rm -rf "$root"' EXIT
debootstrap --variant=minbase --include=openssh-server,python3,supervisor,procps,rsync \
  bookworm "$root" "$MIRROR" >"$root.log" 2>&1 || { tail -n 20 "$root.log"; exit 1; }
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* "$root".log
tar -C "$root" -c . | docker import --change "LABEL deployctl.made=base deployctl.base=$BASE_VERSION" - "$TAG" >/dev/null
echo "base image $TAG built"
