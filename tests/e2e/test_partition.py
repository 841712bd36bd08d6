"""Slow and partitioned nodes during stage, switch and health (FAULTS rows 31, 32), and the rollout deadline.

Two faults on node5, injected when a phase starts (the run's own phase event):
- `pause`: `docker pause` of node5's container (of this fleet's compose project): SSH and router both
  go silent, TCP stays open; the node resumes later exactly where it stopped.
- `cut`: node5's router port is cut while SSH still works: an iptables DROP rule on port 8080 in the
  container's own network namespace, set from the host (`nsenter -t <pid> -n iptables`). No package is
  added to the node image, and the router keeps running: HTTP requests time out, as across a real
  partition (SIGSTOP of the router was the alternative; it also hangs HTTP, but a switch's restart
  through supervisord SIGKILLs the stopped process and so heals it, which a cut link does not).

Every test runs under the observer (no two open gates on different releases) and ends with the
fault healed, the run recovered if it left the fleet inconsistent, and the whole fleet on one release.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import time

import docker
import pytest
from helpers import at_phase, fleet_view, journal_size, node, records_since, run_phases, wait

from deployctl import api
from deployctl.config.playbook import Timeouts
from deployctl.errors import DeployctlError, ExitCode, InconsistentError, RolledBackError
from deployctl.remote import routers
from deployctl.testfleet import docker as docker_fleet

VICTIM = "node5"
OTHERS = [f"node{i}" for i in range(1, 9) if f"node{i}" != VICTIM]
AGENTS = "pgrep -f '^python3 -I -S -c' | wc -l"  # deployctl's node agents running on a node
pytestmark = pytest.mark.usefixtures("under_observer")


# Step timeouts of 8 s and 10 s: a router here restarts in under 0.2 s and a step takes under 1 s, so
# a healthy node is far inside them even on a loaded machine, and each fault test waits them out once
# or twice (the slow node), not 15 s + 20 s each time.
def quick(ctx, rollout: float = 600, command: float = 8, health: float = 10) -> api.Context:
    pb = dataclasses.replace(ctx.playbook, timeouts=Timeouts(connect=5, command=command, health=health,
                                                             rollout=rollout))
    return dataclasses.replace(ctx, playbook=pb, inventory=dataclasses.replace(ctx.inventory, connect_timeout=5))


class Fault:
    """One fault on one node's container: `start()` it, `heal()` it (idempotent)."""

    def __init__(self, kind: str, container):
        self.kind, self.c, self.on = kind, container, False

    def _iptables(self, op: str) -> None:
        pid = str(self.c.attrs["State"]["Pid"])
        subprocess.run(["nsenter", "-t", pid, "-n", "iptables", op, "INPUT", "-p", "tcp", "--dport", "8080",
                        "-j", "DROP"], check=True, capture_output=True, timeout=10)

    def start(self) -> float:
        """Start the fault; return when it took effect (time.monotonic(): at_phase's hook keeps it)."""
        self._start()
        return time.monotonic()

    def _start(self) -> None:
        self.c.reload()
        self.on = True
        if self.kind == "cut":
            self._iptables("-I")
            return
        for attempt in range(5):  # under load the cgroup freezer can fail ("unable to freeze"): try again
            try:
                self.c.pause()
                return
            except docker.errors.APIError:
                if attempt == 4:
                    raise
                time.sleep(0.2)

    def heal(self) -> None:
        if not self.on:
            return
        self.on = False
        if self.kind == "pause":
            self.c.reload()
            if self.c.status == "paused":
                self.c.unpause()
        else:
            self._iptables("-D")


@pytest.fixture
def fault(docker_spec):
    made: list[Fault] = []

    def make(kind: str) -> Fault:
        if kind == "cut" and (os.geteuid() != 0 or not shutil.which("nsenter") or not shutil.which("iptables")):
            pytest.skip("cutting a router port needs root, nsenter and iptables on the host")
        made.append(Fault(kind, docker_fleet.container(*docker_spec, VICTIM)))
        return made[-1]

    yield make
    for f in made:
        f.heal()


# What each fault in each phase must end with: the error class, and the phases the controller journals.
# A paused node cannot be reverted (its SSH is silent too), a cut one can, but its router cannot be seen
# running the old release again: both end inconsistent, gate closed, until `recover` (the honest answer:
# the controller cannot know what that node runs). In stage nothing has switched, so a paused node's
# failure is a plain rollback; a cut router port does not matter to stage and shows up in health.
EXPECT = {
    ("pause", "stage"): (RolledBackError, ["start", "preflight", "close-gate", "stage", "done"]),
    ("pause", "switch"): (InconsistentError, ["start", "preflight", "close-gate", "stage", "switch", "revert", "done"]),
    ("pause", "health"): (InconsistentError, ["start", "preflight", "close-gate", "stage", "switch", "health",
                                              "revert", "done"]),
    ("cut", "stage"): (InconsistentError, ["start", "preflight", "close-gate", "stage", "switch", "health", "revert",
                                           "done"]),
    ("cut", "switch"): (InconsistentError, ["start", "preflight", "close-gate", "stage", "switch", "health",
                                            "revert", "done"]),
    ("cut", "health"): (InconsistentError, ["start", "preflight", "close-gate", "stage", "switch", "health",
                                            "revert", "done"]),
}


@pytest.mark.parametrize("kind, phase", list(EXPECT), ids=[f"{k}-in-{p}" for k, p in EXPECT])
def test_a_slow_or_partitioned_node_in_a_phase_fails_bounded_and_the_fleet_ends_on_one_release(
        ctx, base_release, make_release, fault, node_exec, kind, phase):
    """FAULTS 31, 32: slow means failed, never a hang; only node5 is named; no gate opens on a mixed fleet;
    the others are back on the base release at once, and after healing, recover brings one release."""
    v2 = make_release(f"11.{['pause', 'cut'].index(kind)}.{['stage', 'switch', 'health'].index(phase)}")
    f = fault(kind)
    hook = at_phase(phase, f.start)
    offset = journal_size(ctx)
    error, phases = EXPECT[(kind, phase)]
    with pytest.raises(DeployctlError) as err:
        api.rollout(dataclasses.replace(quick(ctx), on_event=hook), v2.path)
    took = time.monotonic() - hook.fired[0]
    assert type(err.value) is error, str(err.value)
    msg = str(err.value)
    assert msg.startswith(f"rollout failed: {VICTIM} failed in "), msg
    assert all(n not in msg for n in OTHERS), msg
    # Bounded by the step timeouts: at most a switch (8 s), health (10 s) and a revert (8 s + 10 s).
    assert took < 50, f"{took:.1f} s after the fault"
    recs = records_since(ctx, offset)
    assert run_phases(recs) == phases
    assert recs[-1]["outcome"] == ("rolled-back" if error is RolledBackError else "inconsistent")

    view = fleet_view(ctx)
    assert {n: view[n] for n in OTHERS} == {n: (base_release.digest, base_release.digest, "closed", False)
                                             for n in OTHERS}
    f.heal()
    # Unpaused, node5 first finishes what it was sent: paused in switch, its rollout command (held since
    # preflight, so already there) reads the switch request and restarts the router through supervisord.
    # A /health before that is the old router, about to be stopped: wait until the command has ended (it
    # ends only after the restart), then for the router that runs now.
    assert wait(lambda: node_exec(VICTIM, AGENTS) == (0, "0\n"), 30)
    assert wait(lambda: routers.request(node(ctx, VICTIM), "GET", "/health", timeout=1).ok, 30)
    if error is InconsistentError:
        # Whatever node5 did once it could (a paused node reads the switch request it was sent), its
        # router starts with the gate closed; recover then brings the fleet to one release.
        assert fleet_view(ctx)[VICTIM][2] == "closed"
        api.recover(ctx)
    assert fleet_view(ctx) == {n.name: (base_release.digest, base_release.digest, "closed", False) for n in ctx.nodes}
    assert api.verify(ctx, base_release.digest).ok


def test_the_rollout_deadline_cuts_a_stage_stalled_on_a_paused_node(ctx, base_release, make_release, fault):
    """FAULTS 32: with a 60 s step timeout, the playbook's 10 s rollout deadline ends the run: one line naming
    the deadline and the node it waited on; nothing switched, fleet on the base release, journaled."""
    v2 = make_release("11.9.0")
    f = fault("pause")
    hook = at_phase("stage", f.start)
    offset = journal_size(ctx)
    start = time.monotonic()
    with pytest.raises(RolledBackError) as err:
        api.rollout(dataclasses.replace(quick(ctx, rollout=10, command=60), on_event=hook), v2.path)
    took = time.monotonic() - start
    assert err.value.exit_code == ExitCode.ROLLED_BACK
    assert str(err.value) == ("rollout failed: fleet failed in stage: the rollout deadline of 10 s (playbook "
                              f"timeouts.rollout) passed waiting on {VICTIM}; every node is back on its previous "
                              "release, gate closed")
    assert 9.5 < took < 25, f"rollout took {took:.1f} s with a 10 s deadline"
    recs = records_since(ctx, offset)
    assert run_phases(recs) == ["start", "preflight", "close-gate", "stage", "done"]
    assert recs[0]["deadline"] == 10
    assert recs[-1]["outcome"] == "rolled-back" and recs[-1]["failures"][0].startswith("fleet failed in stage: the "
                                                                                        "rollout deadline of 10 s")
    f.heal()
    assert wait(lambda: routers.request(node(ctx, VICTIM), "GET", "/health", timeout=1).ok, 30)
    assert fleet_view(ctx) == {n.name: (base_release.digest, base_release.digest, "closed", False) for n in ctx.nodes}
