"""The two-person rule's refusals through the real CLI, with no fleet: exit 2, one line, nothing journaled."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from deployctl.release import approval, artifact, signing

ROOT = Path(__file__).resolve().parents[3]
DCTL = str(ROOT / ".venv" / "bin" / "deployctl")
INVENTORY = """fleet: t
nodes:
  - {name: n1, host: 127.0.0.1, ssh_port: 1, router_port: 2}
"""


@pytest.fixture
def setup(tmp_path):
    state = tmp_path / "state"
    signing.generate(state / "keys")
    art = artifact.build(ROOT / "fleet" / "router", tmp_path / "dist", "order-router",
                         state / "keys" / "signing_ed25519")
    alice, _ = signing.generate_at(tmp_path / "alice", tmp_path / "alice.pub")
    bob, bob_pub = signing.generate_at(tmp_path / "bob", tmp_path / "bob.pub")
    (tmp_path / "fleet.yaml").write_text(INVENTORY)
    book = (ROOT / "playbooks" / "router.yaml").read_text().replace("../fleet/router", str(ROOT / "fleet" / "router"))
    book = book.replace("flag_registry: flags.yaml", f"flag_registry: {ROOT / 'playbooks' / 'flags.yaml'}")
    book += f"require_approval: true\napprovers:\n  - {{name: bob, key: '{bob_pub.read_text().strip()}'}}\n"
    (tmp_path / "router.yaml").write_text(book)
    return tmp_path, state, art, alice, bob


def cli(tmp_path: Path, state: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "DEPLOYCTL_STATE": str(state)}
    env.pop("DEPLOYCTL_DEBUG", None)
    return subprocess.run([DCTL, "-i", str(tmp_path / "fleet.yaml"), "-p", str(tmp_path / "router.yaml"), *args],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=60)


def refused(proc: subprocess.CompletedProcess, start: str, state: Path) -> None:
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert proc.stderr.startswith(f"deployctl: error: {start}") and proc.stderr.count("\n") == 1, proc.stderr
    assert not (state / "journal.jsonl").exists()


def plan_file(tmp_path: Path, art, alice: Path, ttl: int, now: float | None = None) -> Path:
    doc = approval.new(signing.private_key(alice), fleet="t", service="order-router", artifact=art.path.name,
                       digest=art.digest, version=art.version, nodes={"n1": None}, now=now or time.time(), ttl_s=ttl)
    (tmp_path / "plan.json").write_bytes(approval.dumps(doc))
    return tmp_path / "plan.json"


def test_rollout_without_a_plan_is_refused(setup):
    tmp_path, state, art, _, _ = setup
    refused(cli(tmp_path, state, "rollout", str(art.path)),
            "rollout refused: the playbook requires an approved plan (two-person rule)", state)


def test_the_planner_approving_their_own_plan_is_refused(setup):
    tmp_path, state, art, alice, _ = setup
    plan = plan_file(tmp_path, art, alice, 600)
    before = plan.read_bytes()
    refused(cli(tmp_path, state, "approve", str(plan), "--key", str(alice)),
            "plan.json: approval refused: this key made the plan; a second person must approve it", state)
    assert plan.read_bytes() == before
    refused(cli(tmp_path, state, "rollout", str(art.path), "--plan", str(plan)),
            "plan.json: rollout refused: the plan has no approval", state)


def test_an_expired_approved_plan_is_refused(setup):
    tmp_path, state, art, alice, bob = setup
    plan = plan_file(tmp_path, art, alice, 60, now=time.time() - 120)
    loaded = approval.load(plan)
    plan.write_bytes(approval.dumps(approval.approve(loaded, signing.private_key(bob), (), loaded.body["created"])))
    refused(cli(tmp_path, state, "rollout", str(art.path), "--plan", str(plan)),
            "rollout refused: plan.json: the plan expired", state)
