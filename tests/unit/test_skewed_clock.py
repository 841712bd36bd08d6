"""A node whose clock is more than the router's 30 s window off the controller's, on the fake fleet:
it can always be halted and its gate closed (signed again with its own clock, journaled with the
skew), but never opened or resumed; a rollout to it ends with the fleet back and the gate closed."""

from __future__ import annotations

import pytest

import fakefleet as ff
from deployctl.ops import control
from deployctl.ops import rollout as rollout_mod
from deployctl.errors import DeployctlError, ExitCode


@pytest.fixture
def live(tmp_path) -> ff.Rig:
    rig = ff.make_rig(tmp_path)
    rollout_mod.rollout(rig.ctx, rig.artifacts[0].path)
    return rig


def test_a_skewed_node_is_halted_and_the_skew_journaled(live):
    live.world["node3"].clock_skew = -95.0
    done = control.halt(live.ctx)
    assert done["node3"] == "halted (node clock -95 s off ours; signed with its clock)"
    assert all(done[n] == "halted" for n in done if n != "node3")
    assert all(n.halted and n.gate == "closed" for n in live.world.nodes.values())
    assert live.journal()[-1]["nodes"]["node3"] == done["node3"]


def test_a_skewed_node_is_never_resumed(live):
    live.world["node3"].clock_skew = 40.0
    control.halt(live.ctx)
    with pytest.raises(DeployctlError) as err:
        control.resume(live.ctx)
    assert err.value.exit_code == ExitCode.UNREACHABLE
    assert "node3: HTTP 401: unauthorized: timestamp -40.0 s off this node's clock" in str(err.value)
    assert live.world["node3"].halted and not any(n.halted for n in live.world.nodes.values() if n.name != "node3")


def test_a_rollout_to_a_skewed_node_never_opens_any_gate(live):
    live.world["node5"].clock_skew = 31.0
    with pytest.raises(DeployctlError) as err:
        rollout_mod.rollout(live.ctx, live.artifacts[1].path)
    assert err.value.exit_code == ExitCode.ROLLED_BACK
    assert "node5" in str(err.value) and "timestamp -31.0 s off" in str(err.value)
    assert all(n.gate == "closed" and n.running == live.digest(0) for n in live.world.nodes.values())
