"""A fleet where no node answers, through the real CLI: read-only commands still print their table or
JSON and exit 4; every command that needs the fleet says so in one grouped line, with no Python class
name, and warns of nothing it did not do.

The inventory points at 127.0.0.1 ports nothing listens on (below 1024, never bound by a test), so each
connection is refused at once: a real unreachable fleet without Docker.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from deployctl.state import keys
from deployctl.state.statedir import StateDir

ROOT = Path(__file__).resolve().parents[3]
DCTL = str(ROOT / ".venv" / "bin" / "deployctl")
PORTS = {"node1": (1, 2), "node2": (3, 4), "node3": (5, 6)}
INVENTORY = "fleet: t\nssh: {user: root, connect_timeout: 1, parallel: 3}\nnodes:\n" + "".join(
    f"  - {{name: {n}, host: 127.0.0.1, ssh_port: {s}, router_port: {r}}}\n" for n, (s, r) in PORTS.items())
CLASS_NAME = re.compile(r"\b[A-Z]\w*(Error|Exception)\b")
DIGEST = "a" * 64


@pytest.fixture(scope="module")
def fleet(tmp_path_factory) -> tuple[Path, Path]:
    """(inventory, state folder): the fleet's keys made as `fleet up` makes them, no node behind them."""
    tmp = tmp_path_factory.mktemp("down")
    inv = tmp / "fleet.yaml"
    inv.write_text(INVENTORY)
    keys.ensure(StateDir(tmp / "state"), [(n, "127.0.0.1", s) for n, (s, _) in PORTS.items()])
    return inv, tmp / "state"


def at_once(fleet, *argvs: list[str]) -> list[subprocess.CompletedProcess]:
    """Run `deployctl -i INV ARGV` for each argv on every core at once (the CLI's start is most of the time)."""
    inv, state = fleet
    env = {**os.environ, "DEPLOYCTL_STATE": str(state)}
    env.pop("DEPLOYCTL_DEBUG", None)

    def run(argv: list[str]) -> subprocess.CompletedProcess:
        return subprocess.run([DCTL, "-i", str(inv), *argv], capture_output=True, text=True, env=env, cwd=ROOT,
                              timeout=60, stdin=subprocess.DEVNULL)

    with concurrent.futures.ThreadPoolExecutor(os.cpu_count() or 2) as pool:
        return list(pool.map(run, argvs))


def test_read_only_commands_exit_4_and_still_print(fleet):
    status, status_json, gate, gate_json, watch = at_once(
        fleet, ["status"], ["status", "--json"], ["gate", "status"], ["gate", "status", "--json"],
        ["watch", "--sweeps", "1"])
    for proc in (status, status_json, gate, gate_json, watch):
        assert proc.returncode == 4, (proc.args, proc.returncode, proc.stderr)
        assert "Traceback" not in proc.stderr and not CLASS_NAME.search(proc.stdout + proc.stderr), proc.stderr
    assert "node1" in status.stdout and "node3" in status.stdout  # the table, printed
    doc = json.loads(status_json.stdout)
    assert [(r["node"], r["reachable"]) for r in doc["nodes"]] == [(n, False) for n in PORTS]
    assert doc["unreachable"] == "3 of 3 unreachable (connection refused): node1-node3"
    assert status_json.stderr == "deployctl: 3 of 3 unreachable (connection refused): node1-node3\n"
    assert "node2" in gate.stdout
    assert set(json.loads(gate_json.stdout)) == set(PORTS)
    assert gate_json.stderr == "deployctl: 3 of 3 unreachable (router not running: connection refused): node1-node3\n"
    # Not on a terminal: one JSON line per sweep on stdout, and stderr says which nodes it did not reach.
    assert [len(json.loads(line)["nodes"]) for line in watch.stdout.splitlines()] == [3]
    assert watch.stderr == ("deployctl: watch: 3 of 3 unreachable (router not running: connection refused): "
                            "node1-node3\n")


def test_a_fleet_wide_failure_is_one_grouped_line(fleet):
    procs = at_once(fleet, ["halt"], ["rollback", "--all"], ["gate", "close"], ["verify", "--expect", DIGEST, "--json"],
                    ["gate", "open", "--expect", DIGEST], ["rollback", "--all", "--dry-run"])
    halt, rollback, close, verify, gate_open, preview = procs
    for proc in procs:
        assert proc.returncode == 4, (proc.args, proc.returncode, proc.stderr)
        assert "Traceback" not in proc.stderr and not CLASS_NAME.search(proc.stdout + proc.stderr), proc.stderr
    assert halt.stderr == "deployctl: error: halt did not reach 3 of 3 nodes (connection refused): node1-node3\n"
    assert rollback.stderr == ("deployctl: error: rollback preflight: 3 of 3 unreachable (connection refused): "
                               "node1-node3\n")
    assert close.stderr == ("deployctl: error: gate close did not reach 3 of 3 nodes (router not running: "
                            "connection refused): node1-node3\n")
    assert gate_open.stderr == ("deployctl: error: gate stays closed: 3 of 3 nodes do not match (disk: "
                                "unreachable: connection refused): node1-node3\n")
    assert preview.stderr == "deployctl: error: plan: 3 of 3 unreachable (connection refused): node1-node3\n"
    # The detail per node is in --json: each node's own address and reason.
    assert [n["problems"][0] for n in json.loads(verify.stdout)["nodes"]] == [
        f"disk: unreachable at 127.0.0.1:{s}: connection refused" for s, _ in PORTS.values()]


def test_a_rollout_refused_in_preflight_warns_of_no_lock(fleet, tmp_path):
    (built,) = at_once(fleet, ["build", "--out", str(tmp_path)])
    assert built.returncode == 0, built.stderr
    (proc,) = at_once(fleet, ["rollout", built.stdout.splitlines()[0]])
    assert proc.returncode == 4, proc.stderr
    assert "lock" not in proc.stderr, proc.stderr
    assert proc.stderr.splitlines()[-1] == ("deployctl: error: rollout refused in preflight, nothing changed: 3 of 3 "
                                            "unreachable (connection refused): node1-node3")
    assert not CLASS_NAME.search(proc.stderr), proc.stderr
