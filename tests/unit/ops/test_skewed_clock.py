"""A node whose clock is more than the router's 30 s window off the controller's, on the fake fleet:
it can always be halted and its gate closed (signed again with its own clock, journaled with the
skew), but never opened or resumed; a rollout to it ends with the fleet back and the gate closed."""

from __future__ import annotations

import pytest

from deployctl.errors import DeployctlError, ExitCode
from deployctl.ops import control
from deployctl.ops import rollout as rollout_mod


def test_a_skewed_node_is_halted_and_the_skew_journaled(one):
    one.world["node3"].clock_skew = -95.0
    done = control.halt(one.ctx)
    assert done["node3"] == "halted (node clock -95 s off ours; signed with its clock)"
    assert all(done[n] == "halted" for n in done if n != "node3")
    assert all(n.halted and n.gate == "closed" for n in one.world.nodes.values())
    assert one.journal()[-1]["nodes"]["node3"] == done["node3"]


def test_a_skewed_node_is_never_resumed(one):
    one.world["node3"].clock_skew = 40.0
    control.halt(one.ctx)
    with pytest.raises(DeployctlError) as err:
        control.resume(one.ctx)
    assert err.value.exit_code == ExitCode.UNREACHABLE
    assert str(err.value).startswith("resume did not reach 1 of 8 nodes (HTTP 401: unauthorized: timestamp -40.0 s "
                                     "off this node's clock")
    assert str(err.value).endswith("): node3")
    assert one.world["node3"].halted and not any(n.halted for n in one.world.nodes.values() if n.name != "node3")


def test_a_rollout_to_a_skewed_node_never_opens_any_gate(one):
    one.world["node5"].clock_skew = 31.0
    with pytest.raises(DeployctlError) as err:
        rollout_mod.rollout(one.ctx, one.artifacts[1].path)
    assert err.value.exit_code == ExitCode.ROLLED_BACK
    assert "node5" in str(err.value) and "timestamp -31.0 s off" in str(err.value)
    assert all(n.gate == "closed" and n.running == one.digest(0) for n in one.world.nodes.values())
