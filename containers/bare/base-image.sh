#!/usr/bin/env bash
# Build the bare node image's base, deployctl/bare-base:latest, locally: debootstrap a minimal
# Debian bookworm with what a plain server has (sshd, python3, sudo, supervisor, procps) and
# `docker import` it under that tag, so the Dockerfile's FROM resolves without a registry.
# The same recipe as ../base-image.sh, kept apart on purpose: that script is part of the
# node image's build folder, and changing it would rebuild deployctl/node:latest everywhere.
set -euo pipefail
TAG="${DEPLOYCTL_BARE_BASE_TAG:-deployctl/bare-base:latest}"
BASE_VERSION=1  # bump to rebuild the base on every machine
made=$(docker image inspect "$TAG" --format '{{index .Config.Labels "deployctl.made"}}/{{index .Config.Labels "deployctl.base"}}' 2>/dev/null || true)
if [ "$made" = "bare-base/$BASE_VERSION" ]; then
  echo "base image $TAG present"; exit 0
fi
[ -n "$made" ] && docker image rm -f "$TAG" >/dev/null  # an older base of ours: build it again
echo "building $TAG with debootstrap"
command -v debootstrap >/dev/null || { apt-get update -qq; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null; }
MIRROR="${DEPLOYCTL_DEBIAN_MIRROR:-$(sed -n 's/^URIs: *//p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -n1)}"
MIRROR="${MIRROR:-http://deb.debian.org/debian}"
root=$(mktemp -d /var/tmp/deployctl-bare-rootfs.XXXXXX)
trap 'rm -rf "$root" "$root.log"' EXIT
debootstrap --variant=minbase --include=openssh-server,python3,sudo,supervisor,procps \
  bookworm "$root" "$MIRROR" >"$root.log" 2>&1 || { tail -n 20 "$root.log"; exit 1; }
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
tar -C "$root" -c . | docker import --change "LABEL deployctl.made=bare-base deployctl.base=$BASE_VERSION" - "$TAG" >/dev/null
echo "base image $TAG built"
