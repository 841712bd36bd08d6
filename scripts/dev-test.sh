#!/usr/bin/env bash
# The fast loop: the unit and process rings, no Docker and no fleet (under a minute on two cores).
# Arguments go to pytest: `bash scripts/dev-test.sh -k journal -x`. The whole suite is scripts/test.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
DEPLOYCTL_NO_APT=1 bash scripts/setup.sh
exec .venv/bin/python -m pytest -q -p no:cacheprovider tests/unit tests/process "$@"
