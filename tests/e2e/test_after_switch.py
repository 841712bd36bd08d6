"""Failures after the switch, on the real nodes: a new release whose router crash-loops, and a revert that
fails on a node that is still reachable (its supervisord's socket gone, or the previous release missing).

Each ends with every node that can be on the previous release there, every gate closed, and the cause
named in the one-line error. Every test runs under the observer.
"""

from __future__ import annotations

import dataclasses

import pytest
from helpers import at_phase, fleet_view, heal

from deployctl import api
from deployctl.config.playbook import Timeouts
from deployctl.errors import ExitCode, InconsistentError, RolledBackError
from deployctl.remote import commands
from deployctl.remote.ssh import Call

# A router that starts, never serves, and dies 0.3 s later each time supervisord starts it
# (startretries), until supervisord gives up (FATAL). It does not die at once: supervisord answers
# startProcess only on its next loop, and a process already gone by then fails the restart itself
# ("SPAWN_ERROR: Exited too quickly"), in switch on that node rather than in health on every node
# (CI saw this on node2). Either way the fleet goes back; these tests are about health.
CRASH = {"router.py": b"import sys, time\ntime.sleep(0.3)\nsys.stderr.write('router: refusing to start\\n')\n"
                      b"sys.exit(3)\n"}
SOCKET = "/var/run/supervisor.sock"


@pytest.fixture(autouse=True)
def _every_test(observer, ctx, docker_spec, base_release):
    """helpers.under_observer, and then a node left on the crashing release is put back on the base
    release before conftest's restore (which halts the fleet when a router does not answer, and a halt on
    disk outlives it)."""
    yield observer
    heal(ctx, docker_spec)
    if any(v[:2] != (base_release.digest,) * 2 for v in fleet_view(ctx).values()):
        roomy = dataclasses.replace(ctx, playbook=dataclasses.replace(ctx.playbook, min_free_mb=0))
        api.rollout(roomy, base_release.path, break_lock=True)


def quick(ctx, **kw) -> api.Context:
    """Short timeouts: a router that never comes up fails health in seconds, not 20."""
    pb = dataclasses.replace(ctx.playbook, timeouts=Timeouts(connect=3, command=30, health=6))
    return dataclasses.replace(ctx, playbook=pb, **kw)


def current_on(ctx, name: str) -> str | None:
    node = next(n for n in ctx.nodes if n.name == name)
    with ctx.ssh([node]) as f:
        r = f.run_all(lambda n: Call(commands.render(commands.probe(ctx.root)), timeout=15))[name]
    assert r.ok, r.reason()
    return commands.parse_probe(r.stdout).current


def test_a_release_whose_router_crash_loops_is_rolled_back_everywhere(ctx, base_release, make_release):
    """The switch succeeds, no router comes up: health fails on every node, the fleet goes back, gate closed."""
    bad = make_release("12.0.0", CRASH)
    with pytest.raises(RolledBackError) as err:
        api.rollout(quick(ctx), bad.path)
    assert err.value.exit_code == ExitCode.ROLLED_BACK
    assert str(err.value).startswith("rollout failed: node1 failed in health: router not running at 127.0.0.1:"), \
        str(err.value)
    assert str(err.value).endswith("every node is back on its previous release, gate closed")
    assert fleet_view(ctx) == {n.name: (base_release.digest, base_release.digest, "closed", False) for n in ctx.nodes}
    done = list(ctx.journal.read())[-1]
    assert done["outcome"] == "rolled-back"
    assert sorted(f.split(" ")[0] for f in done["failures"]) == sorted(n.name for n in ctx.nodes)


def test_a_revert_that_finds_the_previous_release_gone_names_it_and_the_rest_go_back(
        ctx, base_release, make_release, node_exec):
    """Revert fails on node3 (its previous release removed after the switch): exit 9 naming node3 and why;
    the seven others are back on the previous release; every gate closed."""
    bad = make_release("12.0.0", CRASH)
    hook = at_phase("revert", lambda: node_exec("node3", f"rm -rf /opt/router/releases/{base_release.digest}"))
    with pytest.raises(InconsistentError) as err:
        api.rollout(quick(ctx, on_event=hook), bad.path)
    assert hook.fired and hook.fired[0][0] == 0, hook.fired
    assert err.value.exit_code == ExitCode.INCONSISTENT
    assert f"node3 failed in revert: release {base_release.digest[:12]} is not on this node" in str(err.value)
    assert str(err.value).endswith("the fleet may be mixed, gate closed: run `deployctl recover`")
    view = fleet_view(ctx)
    assert {n: v for n, v in view.items() if n != "node3"} == {
        n.name: (base_release.digest, base_release.digest, "closed", False) for n in ctx.nodes if n.name != "node3"}
    assert view["node3"][0] == bad.digest and view["node3"][1] is None  # its router down: nothing takes orders
    assert list(ctx.journal.read())[-1]["outcome"] == "inconsistent"


def test_a_revert_whose_supervisor_is_unreachable_names_it_and_the_rest_go_back(
        ctx, base_release, make_release, node_exec):
    """Revert fails on node3 (supervisord's socket gone, sshd still answers): `current` goes back, the
    restart is refused and named; exit 9; the seven others run the previous release; every gate closed."""
    bad = make_release("12.0.0", CRASH)
    hook = at_phase("revert", lambda: node_exec("node3", f"mv {SOCKET} {SOCKET}.off"))
    try:
        with pytest.raises(InconsistentError) as err:
            api.rollout(quick(ctx, on_event=hook), bad.path)
    finally:
        node_exec("node3", f"[ -e {SOCKET}.off ] && mv {SOCKET}.off {SOCKET}")
    assert hook.fired and hook.fired[0][0] == 0, hook.fired
    assert err.value.exit_code == ExitCode.INCONSISTENT
    assert f"node3 failed in revert: supervisor unreachable at {SOCKET}: " in str(err.value), str(err.value)
    view = fleet_view(ctx)
    assert {n: v for n, v in view.items() if n != "node3"} == {
        n.name: (base_release.digest, base_release.digest, "closed", False) for n in ctx.nodes if n.name != "node3"}
    # On disk it is back. Nothing restarted its router for it; supervisord's own retries of the crashing
    # router may have started the previous release from `current` by now: either way its gate is closed.
    assert view["node3"][0] == base_release.digest, view["node3"]
    assert view["node3"][1:] in ((None, None, None), (base_release.digest, "closed", False)), view["node3"]
    # With its supervisor back, recover brings node3 up on the previous release too, gate closed.
    api.recover(ctx)
    assert fleet_view(ctx) == {n.name: (base_release.digest, base_release.digest, "closed", False) for n in ctx.nodes}
    assert current_on(ctx, "node3") == base_release.digest
