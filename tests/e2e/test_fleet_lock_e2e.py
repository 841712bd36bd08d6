"""The fleet deploy lock on the real nodes (issue 9 item 5): two controllers with their own state folders
roll out to the same fleet at once; exactly one proceeds, the other exits 5 naming the holder and host."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

from helpers import DCTL, ROOT, fleet_view, race

from deployctl.errors import ExitCode
from deployctl.state.journal import actor

LOCKED = "test -e /opt/router/state/deploy.lock && echo held || echo free"


def test_two_controllers_with_their_own_state_folders_exactly_one_proceeds(ctx, base_release, make_release,
                                                                           node_exec, tmp_path):
    arts = [make_release("8.2.0"), make_release("8.3.0")]
    second = tmp_path / "state-b"
    shutil.copytree(ctx.state_dir, second, ignore=shutil.ignore_patterns("deploy.lock", ".deploy.lock*"))
    procs, win, lose, outs = race(arts, [ctx.state_dir, second])
    err = outs[lose][1]
    assert err.count("\n") == 1 and err.startswith("deployctl: error: rollout refused, nothing changed: node")
    holder = f"fleet deploy lock held by {actor()} (pid {procs[win].pid})"
    assert f"{holder} running 'rollout {arts[win].digest[:12]}'" in err
    assert fleet_view(ctx) == {n.name: (arts[win].digest, arts[win].digest, "open", False) for n in ctx.nodes}
    assert {n.name: node_exec(n.name, LOCKED)[1].strip() for n in ctx.nodes} == {n.name: "free" for n in ctx.nodes}


def test_break_lock_takes_over_a_node_lock_and_the_node_journals_it(ctx, base_release, make_release, node_exec):
    holder = '{"holder": "carol@elsewhere", "pid": 77, "since": 1800000000, "command": "rollout x", "id": "gone"}'
    code, _ = node_exec("node4", f"mkdir /opt/router/state/deploy.lock && echo '{holder}' > "
                                 "/opt/router/state/deploy.lock/holder.json")
    assert code == 0
    art = make_release("8.4.0")
    env = {**os.environ, "DEPLOYCTL_STATE": str(ctx.state_dir)}
    proc = subprocess.run([DCTL, "-q", "rollout", str(art.path)], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == ExitCode.LOCKED
    assert proc.stderr == ("deployctl: error: rollout refused, nothing changed: node4: fleet deploy lock held by "
                           "carol@elsewhere (pid 77) running 'rollout x' since 2027-01-15 08:00:00 UTC (run gone)\n")
    assert fleet_view(ctx) == {n.name: (base_release.digest, base_release.digest, "open", False) for n in ctx.nodes}
    proc = subprocess.run([DCTL, "-q", "rollout", "--break-lock", str(art.path)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    code, text = node_exec("node4", "grep lock-broken /opt/router/state/journal.jsonl | tail -n 1")
    record = json.loads(text)
    assert code == 0 and record["broken"]["holder"] == "carol@elsewhere" and record["by"]["holder"] == actor()
    assert {n.name: node_exec(n.name, LOCKED)[1].strip() for n in ctx.nodes} == {n.name: "free" for n in ctx.nodes}
