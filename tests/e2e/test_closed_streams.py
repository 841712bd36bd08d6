"""Output can never hurt a run, on the eight real nodes: a rollout piped into `head -1` goes to its end,
and `halt` with all three standard streams closed halts every node. The process ring shows the same
on a router process and on an inventory nothing listens on (tests/process/cli/test_cli_closed_streams.py)."""

from __future__ import annotations

import subprocess

from helpers import DCTL, ROOT, env_of

from deployctl import api
from deployctl.remote import routers


def shell(ctx, script: str, *args: str) -> subprocess.CompletedProcess:
    """Run a bash `script` ($0 is deployctl, $1... are `args`) on ctx's state folder."""
    return subprocess.run(["bash", "-c", script, DCTL, *args], cwd=ROOT, env=env_of(ctx), capture_output=True,
                          text=True, timeout=300)


def test_a_rollout_piped_into_head_goes_to_its_end(ctx, base_release, make_release):
    v2 = make_release("2.0.0")
    proc = shell(ctx, '"$0" rollout "$1" 2>&1 | head -1; exit "${PIPESTATUS[0]}"', str(v2.path))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("\n") == 1 and "Traceback" not in proc.stdout + proc.stderr
    done = [r for r in ctx.journal.read() if r.get("action") == "rollout" and r.get("phase") == "done"][-1]
    assert (done["digest"], done["outcome"]) == (v2.digest, "ok")
    report = api.verify(ctx)
    assert report.ok and report.expected == v2.digest
    assert {a.body.get("gate") for a in routers.health(ctx.nodes).values()} == {"open"}
    assert not api.interrupted(ctx)  # the next rollout sees no interrupted run


def test_halt_with_all_three_streams_closed_halts_every_node(ctx, base_release):
    proc = shell(ctx, '"$0" halt <&- >&- 2>&-; echo "$?"')
    assert (proc.stdout, proc.stderr) == ("0\n", "")
    health = routers.health(ctx.nodes)
    assert len(health) == 8 and all(a.ok and a.body["halted"] is True for a in health.values())
    last = list(ctx.journal.read())[-1]
    assert (last["action"], last["outcome"]) == ("halt", "ok")
