"""The node agent for a `become: sudo` node: the service is stopped and restarted by running the service
manager's command (`sudo -n supervisorctl|systemctl ...` in production; a stand-in command here)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from agentproc import run

from deployctl.config.playbook import Service
from deployctl.remote import commands

DIGEST = "d" * 64


def node(tmp_path: Path) -> Path:
    root = tmp_path / "opt-router"
    (root / "releases" / DIGEST).mkdir(parents=True)
    (root / "state").mkdir()
    os.symlink(f"releases/{DIGEST}", root / "current")
    return root


def test_stop_by_command_journals_runs_it_and_removes_current(tmp_path):
    root, marker = node(tmp_path), tmp_path / "stopped"
    record = json.dumps({"action": "rollout", "phase": "revert", "digest": None}).encode()
    proc = run(commands.stop(str(root), argv=["sh", "-c", f"echo yes > {marker}"]), record)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {"stopped": f"echo yes > {marker}", "previous": DIGEST}
    assert marker.read_text() == "yes\n"
    assert not os.path.lexists(root / "current")
    journal = [json.loads(line) for line in (root / "state" / "journal.jsonl").read_text().splitlines()]
    assert journal == [{"action": "rollout", "phase": "revert", "digest": None, "previous": DIGEST}]


def test_a_failing_stop_command_is_one_error_line_and_keeps_current(tmp_path):
    root = node(tmp_path)
    proc = run(commands.stop(str(root), argv=["sh", "-c", "echo 'sudo: a password is required' >&2; exit 1"]))
    assert proc.returncode == 1 and proc.stdout == b""
    assert json.loads(proc.stderr) == {"error": "restart sh exited 1: sudo: a password is required"}
    assert os.path.islink(root / "current")


def test_stop_without_a_command_is_refused(tmp_path):
    root = node(tmp_path)
    proc = run(commands._agent("stop", str(root), "--run"))
    assert json.loads(proc.stderr) == {"error": "usage: stop ROOT SOCKET PROGRAM | stop ROOT --run ARGV..."}
    assert os.path.islink(root / "current")


def test_become_switch_request_restarts_with_sudo(tmp_path):
    """The held switch gets the manager's command behind `sudo -n`; the agent runs exactly that argv."""
    service = Service(None, None, "/health", None, "supervisord", "router")
    doc = json.loads(commands.switch_request(DIGEST, None, service, become=True))
    assert doc == {"digest": DIGEST, "record": None, "restart": ["sudo", "-n", "supervisorctl", "restart", "router"]}
