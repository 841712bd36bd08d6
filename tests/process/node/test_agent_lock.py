"""The fleet deploy lock on the node (issue 9 item 5): the node agent, run as a process on a temporary
install root, takes it in `deploy` and `retarget` before its probe, refuses naming the holder, breaks it
only as asked (journaled on the node), and lets go on end of input or `unlock`. The controller side is
tests/unit/ops/test_fleet_lock.py."""

from __future__ import annotations

import json
import os
import subprocess

import pytest
from agentproc import DIGEST, A, refusal, release_folder, run

from deployctl.config.playbook import Service
from deployctl.remote import commands

SVC = Service(None, None, "/health", None)


def lock(lock_id="L1", holder="alice@ctl-a", pid=111, **extra):
    return {"holder": holder, "pid": pid, "since": 1_800_000_000.0, "command": "rollout abc", "id": lock_id, **extra}


def held(root):
    path = root / "state" / "deploy.lock" / "holder.json"
    return json.loads(path.read_text()) if path.exists() else None


def test_deploy_takes_the_lock_before_its_probe_and_releases_it_when_its_input_ends(root):
    proc = run(commands.deploy(str(root), DIGEST, 3, lock=lock()), b"")
    assert proc.returncode == 0 and list(json.loads(proc.stdout.splitlines()[0])) == ["probe"]
    assert held(root) is None and sorted(os.listdir(root / "state")) == ["signing.pub"]  # released, no temp left


def test_a_held_lock_is_refused_naming_the_holder_and_host(root):
    (root / "state" / "deploy.lock").mkdir()
    (root / "state" / "deploy.lock" / "holder.json").write_text(json.dumps(lock("L1")))
    for argv in (commands.deploy(str(root), DIGEST, 3, lock=lock("L2", holder="bob@ctl-b")),
                 commands.retarget(str(root), lock=lock("L2", holder="bob@ctl-b"))):
        error = refusal(run(argv, b""))
        assert error == ("fleet deploy lock held by alice@ctl-a (pid 111) running 'rollout abc' since "
                         "2027-01-15 08:00:00 UTC (run L1)")
    assert held(root) == lock("L1")


def test_a_switched_command_keeps_the_lock_until_unlock(root):
    release_folder(root, A)
    request = commands.switch_request(A, {"action": "rollback"}, SVC)
    assert run(commands.retarget(str(root), lock=lock()), request).returncode == 0
    assert held(root) == lock()
    assert unlock(root, "other") == {"unlocked": False}
    assert unlock(root, "L") == {"unlocked": False}  # a prefix of the id is not the id
    assert held(root) == lock()
    assert unlock(root, "L1") == {"unlocked": True}
    assert held(root) is None and sorted(os.listdir(root / "state")) == ["journal.jsonl", "signing.pub"]
    assert unlock(root, "L1") == {"unlocked": False}


def unlock(root, lock_id):
    proc = subprocess.run(commands.unlock(str(root), lock_id), capture_output=True, timeout=30)
    assert proc.returncode == 0 and proc.stderr == b"", proc.stderr
    return json.loads(proc.stdout)


@pytest.mark.parametrize("how", ["any", {"holder": "alice@ctl-a", "pid": 111}])
def test_break_lock_replaces_it_and_journals_it_on_the_node(root, how):
    (root / "state" / "deploy.lock").mkdir()
    (root / "state" / "deploy.lock" / "holder.json").write_text(json.dumps(lock("L1")))
    mine = lock("L2", holder="bob@ctl-b", pid=222, **{"break": how})
    request = commands.switch_request("0" * 64, None, SVC)  # any refusal after the probe: lock kept
    run(commands.retarget(str(root), lock=mine), request)
    assert held(root) == {k: v for k, v in mine.items() if k != "break"}
    records = [json.loads(x) for x in (root / "state" / "journal.jsonl").read_text().splitlines()]
    assert records == [{"action": "lock-broken", "broken": lock("L1"), "by": held(root)}]


def test_recover_breaks_only_the_lock_of_the_run_it_recovers_from(root):
    (root / "state" / "deploy.lock").mkdir()
    (root / "state" / "deploy.lock" / "holder.json").write_text(json.dumps(lock("L1")))
    other = lock("L2", holder="bob@ctl-b", pid=222, **{"break": {"holder": "alice@ctl-a", "pid": 999}})
    assert "held by alice@ctl-a" in refusal(run(commands.retarget(str(root), lock=other), b""))
    assert held(root) == lock("L1")
