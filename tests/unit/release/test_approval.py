"""The two-person rule's plan document (release/approval.py): signatures, approvers, expiry, fleet state."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from deployctl.config.playbook import Approver
from deployctl.errors import UsageError
from deployctl.release import approval, signing

D1, D2, D3 = "1" * 64, "2" * 64, "3" * 64
NOW = 1_800_000_000


@pytest.fixture
def keys(tmp_path):
    out = {}
    for who in ("alice", "bob", "carol"):
        private, public = signing.generate_at(tmp_path / who, tmp_path / f"{who}.pub")
        out[who] = (signing.private_key(private), public.read_text().strip())
    return out


def write(tmp_path: Path, doc: dict) -> approval.Plan:
    path = tmp_path / "plan.json"
    path.write_bytes(approval.dumps(doc))
    return approval.load(path)


def made(tmp_path, keys, ttl=600) -> approval.Plan:
    doc = approval.new(keys["alice"][0], fleet="test-fleet", service="order-router", artifact="a.tar", digest=D2,
                       version="2.0.0", nodes={"node2": D1, "node1": D1}, now=NOW, ttl_s=ttl)
    return write(tmp_path, doc)


def approved(tmp_path, keys, approver="bob") -> approval.Plan:
    plan = made(tmp_path, keys)
    return write(tmp_path, approval.approve(plan, keys[approver][0], APPROVERS(keys), NOW + 1))


def APPROVERS(keys):  # noqa: N802
    return (Approver("bob", keys["bob"][1]), Approver("carol", keys["carol"][1]))


def check(plan, keys, now=NOW + 2, **kw):
    args = {"digest": D2, "fleet": "test-fleet", "nodes": ["node1", "node2"], **kw}
    return approval.check(plan, APPROVERS(keys), now, **args)


def test_a_plan_holds_the_digest_nodes_expiry_and_planner(tmp_path, keys):
    plan = made(tmp_path, keys)
    assert plan.body["digest"] == D2 and plan.nodes == {"node1": D1, "node2": D1}
    assert (plan.body["created"], plan.body["expires"]) == (NOW, NOW + 600)
    assert plan.planner == keys["alice"][1] and plan.approver is None


def test_a_good_plan_approved_by_a_listed_second_person_is_accepted(tmp_path, keys):
    plan = approved(tmp_path, keys)
    assert plan.approver == keys["bob"][1]
    assert check(plan, keys) == Approver("bob", keys["bob"][1])


def test_self_approval_is_refused_when_approving(tmp_path, keys):
    plan = made(tmp_path, keys)
    with pytest.raises(UsageError, match="^plan.json: approval refused: this key made the plan; a second person"):
        approval.approve(plan, keys["alice"][0], (Approver("alice", keys["alice"][1]),), NOW + 1)


def test_self_approval_written_by_hand_is_refused_at_rollout(tmp_path, keys):
    plan = made(tmp_path, keys)
    doc = {"plan": plan.body, "signatures": {**plan.signatures, "approver": plan.signatures["planner"]}}
    forged = write(tmp_path, doc)
    listed = (Approver("alice", keys["alice"][1]),)
    own_key = "^plan.json: rollout refused: the plan was approved by its own planner's key$"
    with pytest.raises(UsageError, match=own_key):
        approval.check(forged, listed, NOW + 2, digest=D2, fleet="test-fleet", nodes=["node1", "node2"])


def test_an_approver_not_in_the_playbook_is_refused(tmp_path, keys):
    plan = made(tmp_path, keys)
    with pytest.raises(UsageError, match="approval refused: key [0-9a-f]{12} is not among the playbook's approvers"):
        approval.approve(plan, keys["carol"][0], (Approver("bob", keys["bob"][1]),), NOW + 1)
    ok = write(tmp_path, approval.approve(plan, keys["carol"][0], (), NOW + 1))  # approve without a playbook list
    with pytest.raises(UsageError, match="rollout refused: approver key [0-9a-f]{12} is not among"):
        approval.check(ok, (Approver("bob", keys["bob"][1]),), NOW + 2, digest=D2, fleet="test-fleet",
                       nodes=["node1", "node2"])


def test_an_unapproved_plan_is_refused(tmp_path, keys):
    with pytest.raises(UsageError, match="rollout refused: the plan has no approval"):
        check(made(tmp_path, keys), keys)


def test_an_expired_plan_is_refused_for_approval_and_rollout(tmp_path, keys):
    plan = approved(tmp_path, keys)
    with pytest.raises(UsageError, match=r"^rollout refused: plan\.json: the plan expired 5 s ago: make a new one$"):
        check(plan, keys, now=NOW + 605)
    with pytest.raises(UsageError, match="the plan expired 0 s ago"):
        approval.approve(made(tmp_path, keys), keys["bob"][0], APPROVERS(keys), NOW + 600)


def test_a_plan_for_another_release_fleet_or_node_set_is_refused(tmp_path, keys):
    plan = approved(tmp_path, keys)
    with pytest.raises(UsageError, match="the plan is for release 222222222222, not 333333333333"):
        check(plan, keys, digest=D3)
    other_fleet = "the plan is for fleet test-fleet with nodes node1, node2, not this inventory"
    with pytest.raises(UsageError, match=other_fleet):
        check(plan, keys, fleet="other")
    with pytest.raises(UsageError, match="not this inventory"):
        check(plan, keys, nodes=["node1", "node2", "node3"])


def test_a_fleet_that_moved_since_the_plan_is_named_node_by_node(tmp_path, keys):
    plan = approved(tmp_path, keys)
    assert approval.stale(plan, {"node1": D1, "node2": D1}) == {}
    assert approval.stale(plan, {"node1": D1, "node2": D3}) == {
        "node2": "runs release 333333333333, the approved plan found 111111111111"}
    assert approval.stale(plan, {"node1": None, "node2": D1}) == {
        "node1": "runs release none, the approved plan found 111111111111"}


def test_a_plan_changed_after_signing_is_refused(tmp_path, keys):
    plan = approved(tmp_path, keys)
    doc = json.loads(plan.path.read_text())
    doc["plan"]["expires"] += 86400
    plan.path.write_text(json.dumps(doc))
    with pytest.raises(UsageError, match="^plan.json: the planner's signature does not hold: the plan was changed"):
        approval.load(plan.path)


@pytest.mark.parametrize("text, message", [
    ("not json", "plan.json: not a plan (not valid JSON)"),
    ("[]", "plan.json: not a plan (should have exactly the keys plan, signatures)"),
    ('{"plan": {}, "signatures": {}}', "plan.json: plan should have exactly the keys artifact, created, digest, "
                                       "expires, fleet, format, kind, nodes, planner, service, version"),
])
def test_malformed_plans_are_refused_with_one_line(tmp_path, text, message):
    (tmp_path / "plan.json").write_text(text)
    with pytest.raises(UsageError) as exc:
        approval.load(tmp_path / "plan.json")
    assert str(exc.value) == message


def test_expiry_is_bounded(keys):
    with pytest.raises(UsageError, match="--expires-in: should be between 1 and 604800 seconds"):
        approval.new(keys["alice"][0], fleet="f", service="s", artifact="a", digest=D1, version="1", nodes={"n": D1},
                     now=NOW, ttl_s=0)


def _playbook(tmp_path: Path, extra: str) -> Path:
    root = Path(__file__).resolve().parents[3]
    text = (root / "playbooks" / "router.yaml").read_text().replace("flag_registry: flags.yaml", "") + extra
    (tmp_path / "router.yaml").write_text(text)
    return tmp_path / "router.yaml"


def test_the_playbook_opts_in_and_lists_approvers(tmp_path):
    from deployctl.config.playbook import load_playbook
    from deployctl.errors import ConfigError

    book = load_playbook(_playbook(tmp_path, f"require_approval: true\napprovers:\n  - {{name: bob, key: '{D1}'}}\n"))
    assert book.require_approval and book.approvers == (Approver("bob", D1),)
    assert load_playbook(_playbook(tmp_path, "")).require_approval is False
    with pytest.raises(ConfigError, match="^router.yaml: approvers: missing: require_approval needs at least one"):
        load_playbook(_playbook(tmp_path, "require_approval: true\n"))
    with pytest.raises(ConfigError, match="^router.yaml: approvers/0/key: should be an ed25519 public key in 64"):
        load_playbook(_playbook(tmp_path, "approvers:\n  - {name: bob, key: abc}\n"))
    with pytest.raises(ConfigError, match="^router.yaml: require_approval: should be true or false"):
        load_playbook(_playbook(tmp_path, "require_approval: 'yes'\n"))
