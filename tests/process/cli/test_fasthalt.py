"""`deployctl halt` takes cli/fasthalt.py's door (no Typer, no pydantic) and says and does exactly what the
Typer command says and does: against a real router process, with bad input, and with --help."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
QUICK = [sys.executable, str(ROOT / ".venv" / "bin" / "deployctl")]  # the installed script: __main__.main
TYPER = [sys.executable, "-c", "import sys; from deployctl.cli.app import main; sys.argv[0] = 'deployctl'; main()"]


def run(door: list[str], *args: str, state_dir: Path, importtime: bool = False,
        inventory: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "DEPLOYCTL_STATE": str(state_dir), "NO_COLOR": "1"}
    env.pop("DEPLOYCTL_INVENTORY", None)
    if inventory is not None:
        env["DEPLOYCTL_INVENTORY"] = str(inventory)
    argv = [door[0], *(["-X", "importtime"] if importtime else []), *door[1:], *args]
    return subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)


def test_a_halt_through_either_door_halts_and_says_the_same(controller, node):
    folder, inventory = controller
    for door in (QUICK, TYPER):
        assert node.control("resume")[0] == 200
        proc = run(door, "-i", str(inventory), "halt", "--json", state_dir=folder)
        assert (proc.returncode, json.loads(proc.stdout), proc.stderr) == (0, {"node1": "halted"}, "")
        assert node.health()["halted"] is True
        assert node.control("resume")[0] == 200
        proc = run(door, "-q", f"--inventory={inventory}", "halt", state_dir=folder)
        assert (proc.returncode, proc.stdout, proc.stderr) == (0, "halted: node1\n", "")
    journal = [json.loads(line) for line in (folder / "journal.jsonl").read_text().splitlines()]
    assert [r["action"] for r in journal] == ["halt"] * 4


def test_both_doors_take_the_inventory_from_deployctl_inventory_and_i_wins(controller, node, tmp_path):
    folder, inventory = controller
    missing = tmp_path / "no-such-fleet.yaml"
    for door in (QUICK, TYPER):
        assert node.control("resume")[0] == 200
        proc = run(door, "-q", "halt", state_dir=folder, inventory=inventory)
        assert (proc.returncode, proc.stdout, proc.stderr) == (0, "halted: node1\n", "")
        assert node.health()["halted"] is True
        proc = run(door, "-q", "halt", state_dir=folder, inventory=missing)  # the variable is read, not a default
        assert proc.returncode != 0 and "no-such-fleet.yaml" in proc.stderr, proc.stderr
        assert node.control("resume")[0] == 200
        proc = run(door, "-q", "-i", str(inventory), "halt", state_dir=folder, inventory=missing)
        assert (proc.returncode, proc.stdout) == (0, "halted: node1\n"), proc.stderr


def test_the_fast_door_imports_no_typer_and_no_pydantic(controller):
    folder, inventory = controller
    proc = run(QUICK, "-i", str(inventory), "halt", "--json", state_dir=folder, importtime=True)
    assert proc.returncode == 0
    imported = {line.split("|")[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}
    assert "deployctl.cli.fasthalt" in imported and not imported & {"typer", "click", "pydantic", "rich", "paramiko"}


@pytest.mark.parametrize("args", [
    ["-i", "no-such.yaml", "halt"],
    ["--state-dir", "/nonexistent/x", "-i", "no-such.yaml", "halt", "--json"],
    ["halt", "--jsn"],
    ["halt", "extra"],
    ["-i"],
    ["halt", "--help"],
    ["--help"],
])
def test_bad_input_and_help_are_answered_as_typer_answers(tmp_path, args):
    quick, typer = (run(door, *args, state_dir=tmp_path / "s") for door in (QUICK, TYPER))
    assert (quick.returncode, quick.stdout, quick.stderr) == (typer.returncode, typer.stdout, typer.stderr)
    assert quick.returncode in (0, 2) and "Traceback" not in quick.stderr
