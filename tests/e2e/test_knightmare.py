"""The 2012 failure replayed (scripts/knightmare.sh) on the e2e fleet: the naive deploy sends runaway
child orders from the stale node and nothing halts it; deployctl sends none and its breaker halts the fleet."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from helpers import COMPOSE, ROOT

from deployctl.remote import routers


def test_the_replay_naive_runs_away_deployctl_sends_no_runaway_child_order(ctx, base_release, tmp_path):
    figures = tmp_path / "knightmare.json"
    env = {**os.environ, "PYTHON": sys.executable}
    done = subprocess.run(["bash", str(ROOT / "scripts" / "knightmare.sh"), "--inventory", str(ctx.inventory.path),
                           "--compose", str(COMPOSE), "--state", str(ctx.state.root),
                           "--json", str(figures)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
    # scripts/test.sh prints the replay's table to the log from here rather than running it twice.
    (ctx.state_dir / "knightmare.log").write_text(done.stdout)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    res = json.loads(figures.read_text())
    line = [x for x in done.stdout.splitlines() if x.startswith("KNIGHTMARE ")]
    assert len(line) == 1 and json.loads(line[0][len("KNIGHTMARE "):]) == res
    naive, dc = res["naive"], res["deployctl"]
    assert naive["runaway_child_orders"] > 0 and naive["seconds_until_halted"] is None
    assert naive["nodes_took_orders_while_mixed"] == len(ctx.nodes)
    assert dc["runaway_child_orders"] == 0  # node8 may take a few orders on its old process before the restart
    assert dc["seconds_until_halted"] is not None and dc["watch_exit"] == 7
    assert (dc["build_v2_exit"], dc["rollout_unreachable_exit"], dc["verify_exit"]) == (2, 4, 3)
    assert dc["gate_open_exit"] != 0 and "power_peg" in done.stdout
    assert "runaway child orders" in done.stdout and "seconds until halted" in done.stdout
    # The fleet ends on the base release (the playbook's own build), every gate open, nothing halted.
    assert res["base_digest"] == base_release.digest
    health = routers.health(ctx.nodes)
    assert all(a.ok and a.body["digest"] == base_release.digest and a.body["gate"] == "open"
               and not a.body["halted"] for a in health.values())
