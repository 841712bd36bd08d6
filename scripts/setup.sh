#!/usr/bin/env bash
# Install what deployctl needs on a Debian machine (root): debootstrap for the
# local base image, rsync for the delta benchmark, and a virtualenv in .venv with
# deployctl with its test-fleet extra (the docker SDK), its test tools and its lint tools.
# Idempotent; sourced by demo.sh and test.sh.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
# rsync: bench/bench_delta.py compares content-addressed staging with it (the nodes have it too).
# DEPLOYCTL_NO_APT=1 (the fast loop, the lint): no Debian packages, only the virtualenv.
if [ -z "${DEPLOYCTL_NO_APT:-}" ] && { ! command -v debootstrap || ! command -v rsync; } >/dev/null 2>&1 \
   && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq debootstrap rsync >/dev/null
fi
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
stamp=.venv/.deployctl-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  .venv/bin/pip install -q --disable-pip-version-check -e '.[test,testfleet,dev]' 2>&1 | grep -v "^WARNING: Location" || true
  .venv/bin/python -c "import deployctl.cli.app, paramiko, docker, hypothesis" 
  touch "$stamp"
fi
# Byte-compile deployctl now: this machine kind sets PYTHONDONTWRITEBYTECODE=1, so an editable
# install would recompile every module on every command (about 30 ms each time). A source edited
# later is still seen: Python checks each .pyc against its source and ignores a stale one.
.venv/bin/python -m compileall -q deployctl >/dev/null
