#!/usr/bin/env bash
# The lint CI runs before the tests: ruff (pyproject.toml's [tool.ruff]) and mypy over deployctl/
# ([tool.mypy]). Exits non-zero on the first that finds something.
set -euo pipefail
cd "$(dirname "$0")/.."
DEPLOYCTL_NO_APT=1 bash scripts/setup.sh
.venv/bin/ruff check deployctl tests bench scripts
.venv/bin/mypy
