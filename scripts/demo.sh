#!/usr/bin/env bash
# The main job, from nothing: install, start a Docker engine if none runs, bring
# up the eight-node fleet (image, keys, first release), then build the router
# from fleet/router, roll it out, verify every node and show the fleet.
# The fleet keeps running for you to use; `bash scripts/demo.sh down` removes
# it and stops the Docker engine if this script started one.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
dctl() { .venv/bin/deployctl "$@"; }

if [ "${1:-}" = down ]; then
  [ -x .venv/bin/deployctl ] && dctl fleet down || true
  bash scripts/dockerd.sh stop
  exit 0
fi

bash scripts/setup.sh
bash scripts/dockerd.sh start
dctl fleet up
artifact=$(dctl -q build --json | .venv/bin/python -c 'import json,sys; print(json.load(sys.stdin)["artifact"])')
dctl rollout "$artifact"
dctl verify
dctl status
echo
echo "The fleet is up. Try: .venv/bin/deployctl verify --json | halt | resume | history"
echo "Remove it all with: bash scripts/demo.sh down"
