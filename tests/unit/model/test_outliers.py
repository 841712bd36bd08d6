"""The outlier report (model/outliers.py) and the flag checks of verify: pure, on values."""

from __future__ import annotations

from deployctl.errors import ExitCode
from deployctl.model import outliers, verify
from deployctl.release.manifest import digest_of

A = {"router.py": "1" * 64, "router.json": "2" * 64}
B = {"router.py": "1" * 64, "router.json": "3" * 64, "power_peg.py": "4" * 64}
DA, DB = digest_of(A), digest_of(B)
FLAGS = {"log_orders": False, "price_improvement": False}


def member(name, files=A, running=None, flags=FLAGS, reachable=True):
    disk = digest_of(files) if files is not None else None
    return outliers.Member(name, disk, running if running is not None else disk, flags, files, reachable)


def test_seven_agree_and_node8_is_named_with_its_file_changes():
    members = [member(f"node{i}") for i in range(1, 8)] + [member("node8", B)]
    groups = outliers.group(members, DA, A, FLAGS)
    assert [g.line for g in groups] == [f"7 nodes run {DA[:12]}",
                                        f"node8 runs {DB[:12]}: power_peg.py added, router.json changed"]
    assert [g.reference for g in groups] == [True, False]
    assert groups[1].to_dict() == {"nodes": ["node8"], "disk_digest": DB, "running_digest": DB, "flags": FLAGS,
                                   "reference": False, "differences": ["power_peg.py added", "router.json changed"],
                                   "line": groups[1].line}


def test_without_an_expected_release_the_largest_group_is_the_reference():
    members = [member("node1", B)] + [member(f"node{i}") for i in range(2, 5)]
    groups = outliers.group(members)
    assert [g.nodes for g in groups] == [("node2", "node3", "node4"), ("node1",)]
    assert groups[0].reference and groups[0].differences == ()
    assert groups[1].differences == ("power_peg.py added", "router.json changed")


def test_other_flags_split_a_group_and_are_named():
    members = [member("node1"), member("node2"), member("node3", flags={**FLAGS, "log_orders": True})]
    groups = outliers.group(members, DA, A, FLAGS)
    assert [g.line for g in groups] == [f"node1, node2 run {DA[:12]}",
                                        f"node3 runs {DA[:12]}: flag log_orders=true (release: false)"]


def test_new_files_on_disk_with_old_code_running_names_the_running_files():
    mixed = outliers.group([member("node1", B, running=DA)], DB, B, None, {DA: A})
    assert mixed[0].line == (f"node1 has {DB[:12]} on disk, runs {DA[:12]}: running power_peg.py missing, "
                             "running router.json changed")


def test_unreachable_nodes_form_their_own_group():
    members = [member("node1"), member("node2"), member("node3"), member("node4", None, running="", flags=None,
                                                                           reachable=False)]
    members[3] = outliers.Member("node4", None, None, None, None, False)
    groups = outliers.group(members, DA, A, FLAGS)
    assert [g.line for g in groups] == [f"3 nodes run {DA[:12]}", "node4 is unreachable"]


def test_file_and_flag_changes():
    assert outliers.file_changes({"a": "1", "b": "2"}, {"b": "3", "c": "4"}) == ["a missing", "b changed", "c added"]
    assert outliers.flag_changes({"x": True}, {"x": True}) == []
    assert outliers.flag_changes({"x": True, "y": False}, {"x": False, "z": True}) == [
        "flag x=false (release: true)", "flag y missing", "flag z=true added"]
    assert outliers.flag_changes(None, {"x": True}) == []


def obs(node, files=A, flags=FLAGS, digest=None):
    return verify.NodeObservation(node, files=files, current=digest_of(files),
                                  health={"digest": digest or digest_of(files), "gate": "open", "halted": False,
                                          "flags": flags})


def test_verify_fails_a_node_running_other_flags_than_the_manifest_records():
    rep = verify.report([obs("node1"), obs("node2", flags={**FLAGS, "log_orders": True})], DA, A, FLAGS)
    assert not rep.ok and rep.exit_code == ExitCode.MISMATCH
    bad = [n for n in rep.nodes if not n.ok]
    assert [n.node for n in bad] == ["node2"] and bad[0].disk_ok and bad[0].running_ok and not bad[0].flags_ok
    assert bad[0].problems == ("flags differ from the release's: flag log_orders=true (release: false)",)
    doc = rep.to_dict()
    assert [g["line"] for g in doc["groups"]] == [f"node1 runs {DA[:12]}",
                                                  f"node2 runs {DA[:12]}: flag log_orders=true (release: false)"]
    assert doc["nodes"][1]["flags"] == {**FLAGS, "log_orders": True} and doc["nodes"][1]["flags_ok"] is False


def test_verify_without_recorded_flags_fails_nodes_that_disagree():
    rep = verify.report([obs("node1"), obs("node2", flags={**FLAGS, "log_orders": True})], DA, A, None)
    assert rep.exit_code == ExitCode.MISMATCH
    assert [n.problems for n in rep.nodes] == [("flags disagree across nodes",)] * 2
    same = verify.report([obs("node1"), obs("node2")], DA, A, None)
    assert same.ok and [g["line"] for g in same.to_dict()["groups"]] == [f"node1, node2 run {DA[:12]}"]


def test_verify_matching_flags_pass():
    assert verify.report([obs("node1"), obs("node2")], DA, A, FLAGS).ok
