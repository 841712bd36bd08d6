"""Fleet commands without a Docker engine: one line that says so and how to start one, exit 8."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]


@pytest.mark.parametrize("command", [["fleet", "up"], ["fleet", "down"], ["fleet", "status"]])
def test_fleet_commands_say_no_engine(tmp_path, command):
    env = {**os.environ, "DOCKER_HOST": f"unix://{tmp_path}/no-such.sock", "DEPLOYCTL_STATE": str(tmp_path / "s")}
    proc = subprocess.run([str(ROOT / ".venv/bin/deployctl"), *command], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 8, proc.stderr
    assert proc.stderr.startswith("deployctl: error: no Docker engine reachable") and proc.stderr.count("\n") == 1
    assert "scripts/dockerd.sh start" in proc.stderr
    assert not (tmp_path / "s" / "journal.jsonl").exists()
