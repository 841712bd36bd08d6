"""`deployctl build` against the flag registry, as a process: exit 2 and one line for unknown and retired flags."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
DCTL = str(ROOT / ".venv" / "bin" / "deployctl")


def _build(tmp_path: Path, flag_set: dict) -> subprocess.CompletedProcess:
    src = tmp_path / "router"
    shutil.copytree(ROOT / "fleet" / "router", src, ignore=shutil.ignore_patterns("__pycache__"))
    cfg = json.loads((src / "router.json").read_text())
    cfg.update(version="2.0.0", flags=flag_set)
    (src / "router.json").write_text(json.dumps(cfg))
    shutil.copy(ROOT / "playbooks" / "flags.yaml", tmp_path / "flags.yaml")
    text = (ROOT / "playbooks" / "router.yaml").read_text().replace("../fleet/router", "router")
    (tmp_path / "router.yaml").write_text(text)
    env = {**os.environ, "DEPLOYCTL_STATE": str(tmp_path / "state")}
    env.pop("DEPLOYCTL_DEBUG", None)
    return subprocess.run([DCTL, "-p", str(tmp_path / "router.yaml"), "build", "--out", str(tmp_path / "dist")],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=60)


@pytest.mark.parametrize("flag_set, message", [
    ({"price_improvement": False, "log_orders": False, "power_peg": True},
     "deployctl: error: release 2.0.0: flag 'power_peg' was retired in release 0.9.0"),
    ({"price_improvement": False, "log_orders": False, "turbo": True},
     "deployctl: error: release 2.0.0: flag 'turbo' is not in the flag registry flags.yaml"),
])
def test_build_refuses_unregistered_and_retired_flags(tmp_path, flag_set, message):
    proc = _build(tmp_path, flag_set)
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert proc.stderr.startswith(message) and proc.stderr.count("\n") == 1, proc.stderr
    assert not (tmp_path / "dist").exists()


def test_build_with_registered_flags_succeeds(tmp_path):
    proc = _build(tmp_path, {"price_improvement": True, "log_orders": False})
    assert proc.returncode == 0, proc.stderr
    assert len(list((tmp_path / "dist").glob("order-router-2.0.0-*.tar"))) == 1
