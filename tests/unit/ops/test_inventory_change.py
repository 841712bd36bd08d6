"""The inventory changed between a rollout and a rollback or recover (a node removed, a node added),
on the in-memory fleet (fakefleet.py)."""

from __future__ import annotations

import dataclasses

import fakefleet as ff
import pytest
from fakefleet import NODES

from deployctl.config.inventory import Node
from deployctl.errors import InconsistentError, UsageError
from deployctl.ops import rollback as rollback_mod
from deployctl.ops import rollout as rollout_mod


def without(rig: ff.Rig, name: str) -> None:
    inv = rig.ctx.inventory
    rig.ctx.inventory = dataclasses.replace(inv, nodes=tuple(n for n in inv.nodes if n.name != name))


def with_new_node(rig: ff.Rig, name: str = "node9") -> None:
    """A node added to the inventory: a fresh machine with nothing installed."""
    inv = rig.ctx.inventory
    rig.ctx.inventory = dataclasses.replace(inv, nodes=inv.nodes + (Node(name, "127.0.0.1", 2209, 8109, "root"),))
    rig.world.nodes[name] = ff.FakeNode(name, 2209, 8109, rig.world["node1"].signing_pub)


def test_rollback_with_a_node_removed_since_the_rollout_is_refused_and_changes_nothing(live):
    before, journal = live.world.states(), live.journal()
    run = journal[-1]["run"]
    without(live, "node8")
    with pytest.raises(UsageError) as err:
        rollback_mod.rollback(live.ctx)
    assert str(err.value) == (f"rollback refused, nothing changed: node8 took part in the last rollout (run {run}) "
                              "but is not in fleet.yaml now, and may still run its release: put it back in the "
                              "inventory, or roll out to the fleet as it is now")
    assert err.value.exit_code == 2
    assert live.world.states() == before and live.journal() == journal


def test_once_the_fleet_as_it_is_now_ran_a_rollout_rollback_works_again(live):
    a, b, c = (live.digest(i) for i in range(3))
    without(live, "node8")
    rollout_mod.rollout(live.ctx, live.artifacts[2].path)
    rollback_mod.rollback(live.ctx)
    states = live.world.states()
    assert {n: states[n]["current"] for n in NODES} == {**dict.fromkeys(NODES[:7], b), "node8": b}
    assert states["node8"]["releases"] == sorted([a, b])  # untouched by both runs


def test_recover_of_a_run_interrupted_on_a_node_removed_since_is_refused(live):
    live.at("switch", lambda: (_ for _ in ()).throw(KeyboardInterrupt()), status="start")
    with pytest.raises(KeyboardInterrupt):
        rollout_mod.rollout(live.ctx, live.artifacts[2].path)
    live.ctx.lock.path.unlink(missing_ok=True)  # released on the way out (a dead controller leaves it stale)
    run = next(r for r in reversed(live.journal()) if r.get("phase") == "start")["run"]
    before = live.world.states()
    without(live, "node3")
    with pytest.raises(UsageError) as err:
        rollback_mod.recover(live.ctx)
    assert str(err.value).startswith(f"recover refused, nothing changed: node3 took part in the last rollout "
                                     f"(run {run}) but is not in fleet.yaml now")
    assert live.world.states() == before


def test_rollback_with_a_node_added_since_is_refused_naming_it(live):
    a = live.digest(0)
    with_new_node(live)
    before = live.world.states()
    with pytest.raises(UsageError) as err:
        rollback_mod.rollback(live.ctx)
    assert str(err.value) == f"rollback refused, nothing changed: release {a[:12]} is not on node9"
    assert live.world.states() == before


def test_recover_with_a_node_added_since_is_refused_and_a_rollout_brings_it_in(live):
    b, c = live.digest(1), live.digest(2)
    with_new_node(live)
    with pytest.raises(InconsistentError) as err:
        rollback_mod.recover(live.ctx)
    assert str(err.value) == (f"recover: the last good release {b[:12]} is not on node9 and the nodes' current "
                              "releases differ: roll out a release to the whole fleet (`deployctl rollout ARTIFACT "
                              "--break-lock` supersedes the interrupted run)")
    rollout_mod.rollout(live.ctx, live.artifacts[2].path)
    assert {n: s["current"] for n, s in live.world.states().items()} == dict.fromkeys(NODES + ["node9"], c)
