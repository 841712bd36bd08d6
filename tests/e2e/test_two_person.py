"""The two-person rule on the real fleet: a good plan is accepted, a stale or expired one refused."""

from __future__ import annotations

import dataclasses
import time

import pytest
from helpers import fleet_view

from deployctl import api
from deployctl.config.playbook import Approver
from deployctl.errors import DeployctlError, UsageError


@pytest.fixture
def guarded(ctx, tmp_path):
    """The fleet's context with require_approval on and bob's key the one approver; alice plans."""
    alice, bob = tmp_path / "alice", tmp_path / "bob"
    api.keygen(alice)
    bob_pub = api.keygen(bob)
    book = dataclasses.replace(ctx.playbook, require_approval=True, approvers=(Approver("bob", bob_pub),))
    return dataclasses.replace(ctx, playbook=book), alice, bob, bob_pub


def test_a_good_plan_is_accepted_and_both_identities_are_journaled(guarded, base_release, make_release, tmp_path):
    g, alice, bob, bob_pub = guarded
    v2 = make_release("2.0.0-plan")
    with pytest.raises(UsageError, match="requires an approved plan"):
        api.rollout(g, v2.path)
    plan = tmp_path / "plan.json"
    doc = api.make_plan(g, v2.path, plan, alice, 120)
    assert set(doc["plan"]["nodes"].values()) == {base_release.digest}
    api.approve_plan(g, plan, bob)
    api.rollout(g, v2.path, plan=plan)
    assert {v[:2] for v in fleet_view(g).values()} == {(v2.digest, v2.digest)}
    start = [r for r in g.journal.read() if r.get("action") == "rollout" and r.get("phase") == "start"][-1]
    assert (start["planner"], start["approver"], start["approver_key"]) == (doc["plan"]["planner"], "bob", bob_pub)


def test_a_plan_for_another_fleet_state_is_refused_in_preflight(guarded, ctx, base_release, make_release, tmp_path):
    g, alice, bob, _ = guarded
    v2, v3 = make_release("2.0.0-plan"), make_release("3.0.0-plan")
    plan = tmp_path / "plan.json"
    api.make_plan(g, v2.path, plan, alice, 300)
    api.approve_plan(g, plan, bob)
    api.rollout(ctx, v3.path)  # the fleet moves on after the plan was approved (no approval needed in ctx)
    before = fleet_view(ctx)
    with pytest.raises(DeployctlError, match="the approved plan found") as exc:
        api.rollout(g, v2.path, plan=plan)
    assert "refused in preflight, nothing changed" in str(exc.value)
    assert fleet_view(ctx) == before and {v[:2] for v in before.values()} == {(v3.digest, v3.digest)}


def test_an_expired_plan_is_refused_before_any_node_is_touched(guarded, base_release, make_release, tmp_path):
    g, alice, bob, _ = guarded
    v2 = make_release("2.0.0-plan")
    plan = tmp_path / "plan.json"
    api.make_plan(g, v2.path, plan, alice, 2)
    api.approve_plan(g, plan, bob)
    time.sleep(2.1)
    journal = list(g.journal.read())
    with pytest.raises(UsageError, match=r"^rollout refused: plan\.json: the plan expired \d+ s ago"):
        api.rollout(g, v2.path, plan=plan)
    assert list(g.journal.read()) == journal
    assert {v[:2] for v in fleet_view(g).values()} == {(base_release.digest, base_release.digest)}
