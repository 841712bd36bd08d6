#!/usr/bin/env bash
# The 2012 failure, replayed: naive (scp by hand, 2012) vs deployctl. Logic: scripts/knightmare.py.
# Options: --inventory FILE --compose FILE --playbook FILE --state DIR --json FILE (defaults: the main fleet).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
exec "$PY" scripts/knightmare.py "$@"
