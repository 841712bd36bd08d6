#!/usr/bin/env bash
# The fast loop: the unit and process rings, no Docker and no fleet (under a minute on two cores).
# The two rings run as two pytest processes at once, one per core, each printing when it ends.
# Arguments go to both: `bash scripts/dev-test.sh -k journal -x`. The whole suite is scripts/test.sh.
set -uo pipefail
cd "$(dirname "$0")/.."
DEPLOYCTL_NO_APT=1 bash scripts/setup.sh || exit 1
logs=$(mktemp -d)
trap 'rm -rf "$logs"' EXIT
.venv/bin/python -m pytest -q -p no:cacheprovider tests/process "$@" >"$logs/process" 2>&1 &
process=$!
.venv/bin/python -m pytest -q -p no:cacheprovider tests/unit "$@" >"$logs/unit" 2>&1
unit=$?
wait "$process"
proc=$?
echo "----- tests/unit -----"; cat "$logs/unit"
echo "----- tests/process -----"; cat "$logs/process"
# 5 is pytest's "no test collected": a -k that selects tests of one ring only is not a failure.
if [ "$unit" = 5 ] && [ "$proc" = 5 ]; then exit 5; fi
[ "$unit" = 5 ] && unit=0
[ "$proc" = 5 ] && proc=0
[ "$unit" = 0 ] && exit "$proc"
exit "$unit"
