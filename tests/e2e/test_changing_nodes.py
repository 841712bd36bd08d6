"""Nodes that change under a run: restarted mid-rollout, reimaged (new host key, lost state), and `recover`
itself interrupted or run while a node is down. (The inventory changing between a rollout and a rollback
or recover is tested on the fake fleet: tests/unit/ops/test_inventory_change.py.)

Faults are injected through Docker on this fleet's own containers; deployctl reaches nodes only on
127.0.0.1. Every test runs under the observer and ends with every node revived and one release.
"""

from __future__ import annotations

import dataclasses
import signal
import subprocess

import pytest
from helpers import (
    COMPOSE,
    DCTL,
    ROOT,
    at_phase,
    cli,
    cli_rollout,
    env_of,
    fleet_view,
    journal_size,
    node,
    on_base,
    records_since,
    run_phases,
    wait,
    wait_record,
)

from deployctl import api
from deployctl.config.playbook import Timeouts
from deployctl.errors import ExitCode, HostKeyError, InconsistentError, RolledBackError, UnreachableError, UsageError
from deployctl.remote import routers
from deployctl.state import keys
from deployctl.testfleet import docker as docker_fleet
from deployctl.testfleet import fleet as testfleet

VICTIM = "node5"
OTHERS = [f"node{i}" for i in range(1, 9) if f"node{i}" != VICTIM]
pytestmark = pytest.mark.usefixtures("under_observer")


def quick(ctx) -> api.Context:
    pb = dataclasses.replace(ctx.playbook, timeouts=Timeouts(connect=5, command=15, health=8))
    return dataclasses.replace(ctx, playbook=pb, inventory=dataclasses.replace(ctx.inventory, connect_timeout=5))


def up(ctx, name: str = VICTIM) -> bool:
    return wait(lambda: routers.request(node(ctx, name), "GET", "/health", timeout=1).ok, 60)


# ---- a node restarted mid-rollout (container restart, its disk kept) -----------------------------------

def test_a_node_restarted_during_stage_fails_the_rollout_and_comes_back_on_its_release(
        ctx, base_release, make_release, docker_spec):
    v2 = make_release("12.0.0")
    c = docker_fleet.container(*docker_spec, VICTIM)
    hook = at_phase("stage", lambda: c.restart(timeout=5))
    offset = journal_size(ctx)
    with pytest.raises(RolledBackError) as err:
        api.rollout(dataclasses.replace(quick(ctx), on_event=hook), v2.path)
    msg = str(err.value)
    assert msg.startswith(f"rollout failed: {VICTIM} failed in stage: ") and all(n not in msg for n in OTHERS), msg
    recs = records_since(ctx, offset)
    assert run_phases(recs) == ["start", "preflight", "close-gate", "stage", "done"]
    assert up(ctx)
    # Its disk was kept: still the base release, router restarted with the gate closed (as every start).
    assert fleet_view(ctx) == {n.name: on_base(base_release, "closed") for n in ctx.nodes}
    api.rollout(ctx, v2.path)  # a rerun succeeds, and the restart left nothing behind that is in the way
    assert fleet_view(ctx) == {n.name: (v2.digest, v2.digest, "open", False) for n in ctx.nodes}


def test_a_node_restarted_at_the_switch_cannot_be_reverted_in_the_run_and_recover_brings_one_release(
        ctx, base_release, make_release, docker_spec):
    """A connection that dropped is never reopened within a command (the node may not be the one we
    spoke to): the run ends inconsistent, gate closed, and `recover` brings one release."""
    v2 = make_release("12.1.0")
    c = docker_fleet.container(*docker_spec, VICTIM)
    hook = at_phase("switch", lambda: c.restart(timeout=5))
    with pytest.raises(InconsistentError) as err:
        api.rollout(dataclasses.replace(quick(ctx), on_event=hook), v2.path)
    msg = str(err.value)
    assert msg.startswith(f"rollout failed: {VICTIM} failed in switch: "), msg
    assert f"{VICTIM} failed in revert: " in msg and all(n not in msg for n in OTHERS), msg
    assert up(ctx)
    view = fleet_view(ctx)
    assert {n: view[n] for n in OTHERS} == {n: on_base(base_release, "closed") for n in OTHERS}
    assert view[VICTIM][2] == "closed"
    api.recover(ctx)
    assert fleet_view(ctx) == {n.name: on_base(base_release, "closed") for n in ctx.nodes}


# ---- a node reimaged: new host key, then lost state ---------------------------------------------------

def test_a_reimaged_node_is_refused_by_its_host_key_then_needs_a_rollout_not_a_rollback(
        ctx, base_release, make_release, docker_spec):
    dc, spec = docker_spec
    v2 = make_release("12.2.0")
    api.rollout(ctx, v2.path)
    pinned = testfleet._node_files(ctx)[VICTIM]
    fresh = keys.new_keypair(f"{VICTIM}-reimaged")
    nspec = next(n for n in spec.nodes if n.service == VICTIM)
    image = docker_fleet.ensure_image(dc, spec)
    assert docker_fleet.start_node(dc, spec, nspec, image, dataclasses.replace(
        pinned, host_key=fresh.private_openssh, host_pub=fresh.public_line)) == "created"
    assert testfleet.wait_for(lambda: testfleet.sshd_answers("127.0.0.1", node(ctx, VICTIM).ssh_port), 60, 0.2)

    offset = journal_size(ctx)
    v3 = make_release("12.3.0")
    with pytest.raises(HostKeyError) as err:
        api.rollout(quick(ctx), v3.path)
    assert err.value.exit_code == ExitCode.HOST_KEY
    assert VICTIM in str(err.value) and all(n not in str(err.value) for n in OTHERS)
    assert run_phases(records_since(ctx, offset)) == ["start", "preflight", "done"]
    view = fleet_view(ctx)
    assert {n: view[n] for n in OTHERS} == {n: (v2.digest, v2.digest, "open", False) for n in OTHERS}

    # The operator re-pins it (here: the node comes back with the pinned key) and it has lost its state.
    testfleet.replace_node(ctx, COMPOSE, VICTIM, {})
    with pytest.raises(UsageError) as err:
        api.rollback(ctx)
    assert str(err.value) == f"rollback refused, nothing changed: release {base_release.digest[:12]} is not on {VICTIM}"
    with pytest.raises(InconsistentError) as err:
        api.recover(ctx)
    assert f"is not on {VICTIM}" in str(err.value)
    api.rollout(ctx, v3.path)  # the reimaged node is sent the whole artifact
    assert fleet_view(ctx) == {n.name: (v3.digest, v3.digest, "open", False) for n in ctx.nodes}


# ---- recover interrupted, and recover while a node is down --------------------------------------------

def _interrupted_rollout(ctx, art, phase: str = "health") -> dict:
    offset = journal_size(ctx)
    proc = cli_rollout(ctx.state_dir, art)
    try:
        seen = wait_record(ctx, offset, lambda r: r.get("phase") == phase and r.get("digest") == art.digest, 60, proc)
    finally:
        proc.kill()
        _, err = proc.communicate(timeout=10)
    assert seen, f"the rollout never journaled {phase}: {err}"
    assert api.interrupted(ctx), f"killed too late: {run_phases(records_since(ctx, offset))}"
    return seen


def test_a_recover_killed_midway_is_itself_seen_and_a_second_recover_brings_one_release(
        ctx, base_release, make_release):
    _interrupted_rollout(ctx, make_release("12.4.0"))
    offset = journal_size(ctx)
    proc = subprocess.Popen([DCTL, "-q", "recover"], cwd=ROOT, env=env_of(ctx), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        seen = wait_record(ctx, offset, lambda r: r.get("action") == "recover" and r.get("phase") == "switch", 60, proc)
    finally:
        proc.kill()
        _, err = proc.communicate(timeout=10)
    assert seen, f"recover never journaled its switch: exit {proc.returncode}: {err}"
    assert proc.returncode == -signal.SIGKILL
    v = cli(ctx, "verify")
    assert f"interrupted recover (run {seen['run']}" in v.stderr, v.stderr
    rec = cli(ctx, "-q", "recover")
    assert rec.returncode == 0, rec.stderr
    assert fleet_view(ctx) == {n.name: on_base(base_release, "closed") for n in ctx.nodes}
    assert api.interrupted(ctx) is None


def test_recover_while_a_node_is_down_names_it_changes_nothing_and_works_once_it_is_back(
        ctx, base_release, make_release, docker_spec):
    _interrupted_rollout(ctx, make_release("12.5.0"))
    c = docker_fleet.container(*docker_spec, VICTIM)
    c.stop(timeout=5)
    with pytest.raises(UnreachableError) as err:
        api.recover(ctx)
    assert err.value.exit_code == ExitCode.UNREACHABLE
    assert VICTIM in str(err.value) and all(n not in str(err.value) for n in OTHERS)
    assert api.interrupted(ctx)  # still to be recovered
    view = fleet_view(ctx)
    assert all(view[n][2] == "closed" for n in OTHERS)  # recover closed every gate it could reach first
    c.start()
    assert up(ctx)
    api.recover(ctx)
    assert fleet_view(ctx) == {n.name: on_base(base_release, "closed") for n in ctx.nodes}
    assert api.interrupted(ctx) is None


# ---- the inventory changed between a rollout and a rollback -------------------------------------------

def test_a_rollback_without_a_node_that_took_part_in_the_rollout_is_refused_and_nothing_changes(
        ctx, base_release, make_release):
    """Before this refusal the seven listed nodes went back and opened their gates on the base release
    while node8, dropped from the inventory, kept serving the new one: the observer, which watches all
    eight, sees two open gates on different releases."""
    v2 = make_release("12.6.0")
    api.rollout(ctx, v2.path)
    seven = dataclasses.replace(ctx, inventory=dataclasses.replace(
        ctx.inventory, nodes=tuple(n for n in ctx.inventory.nodes if n.name != "node8")))
    with pytest.raises(UsageError) as err:
        api.rollback(seven)
    assert err.value.exit_code == ExitCode.USAGE
    assert str(err.value).startswith("rollback refused, nothing changed: node8 took part in the last rollout (run ")
    assert fleet_view(ctx) == {n.name: (v2.digest, v2.digest, "open", False) for n in ctx.nodes}
