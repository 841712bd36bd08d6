"""model/verify.py: expected digest against every node's disk and running digest, drift, exit codes, --json shape."""

from __future__ import annotations

import hashlib

import pytest

from deployctl.errors import ExitCode
from deployctl.model import verify
from deployctl.model.verify import NodeObservation, report
from deployctl.release.manifest import digest_of


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


MANIFEST = {"router.py": sha("router"), "router.json": sha("config"), "lib/util.py": sha("util")}
EXPECTED = digest_of(MANIFEST)
OLD_FILES = {**MANIFEST, "router.py": sha("old router")}
OLD = digest_of(OLD_FILES)
NODES = ["n1", "n2", "n3"]


def health(digest: str | None = EXPECTED, gate: str = "open", halted: bool = False) -> dict:
    return {"digest": digest, "gate": gate, "halted": halted, "status": "ok"}


def good(node: str) -> NodeObservation:
    return NodeObservation(node, files=dict(MANIFEST), current=EXPECTED, health=health())


def fleet(**changed: NodeObservation) -> list[NodeObservation]:
    return [changed.get(n, good(n)) for n in NODES]


def verdict(rep, node):
    return next(v for v in rep.nodes if v.node == node)


def test_all_match():
    rep = report(fleet(), EXPECTED, MANIFEST)
    assert rep.ok and rep.exit_code == ExitCode.OK == 0
    for v in rep.nodes:
        assert (v.ok, v.disk_ok, v.running_ok, v.reachable) == (True, True, True, True)
        assert (v.disk_digest, v.running_digest, v.gate, v.halted) == (EXPECTED, EXPECTED, "open", False)
        assert v.drift == () and v.problems == ()


def test_one_changed_file():
    files = {**MANIFEST, "lib/util.py": sha("edited on the node")}
    rep = report(fleet(n2=NodeObservation("n2", files=files, health=health())), EXPECTED, MANIFEST)
    assert not rep.ok and rep.exit_code == ExitCode.MISMATCH == 3
    v = verdict(rep, "n2")
    assert (v.ok, v.disk_ok, v.running_ok) == (False, False, True)
    assert v.disk_digest == digest_of(files)
    assert v.drift == ("changed: lib/util.py",)
    assert v.problems == (f"disk digest {digest_of(files)[:12]} != expected {EXPECTED[:12]}",)
    assert all(verdict(rep, n).ok for n in ("n1", "n3"))


def test_added_file():
    files = {**MANIFEST, "backdoor.py": sha("evil")}
    rep = report(fleet(n1=NodeObservation("n1", files=files, health=health())), EXPECTED, MANIFEST)
    assert rep.exit_code == ExitCode.MISMATCH
    assert verdict(rep, "n1").drift == ("added: backdoor.py",)


def test_missing_file():
    files = {k: v for k, v in MANIFEST.items() if k != "router.json"}
    rep = report(fleet(n3=NodeObservation("n3", files=files, health=health())), EXPECTED, MANIFEST)
    assert rep.exit_code == ExitCode.MISMATCH
    assert verdict(rep, "n3").drift == ("missing: router.json",)


def test_drift_lists_every_kind_in_order():
    files = {"router.py": sha("x"), "lib/util.py": MANIFEST["lib/util.py"], "z.txt": sha("z"), "a.txt": sha("a")}
    assert verify.drift(MANIFEST, files, ("link",)) == (
        "changed: router.py", "missing: router.json", "added: a.txt", "added: z.txt", "not a regular file: link")


def test_odd_entries_fail_even_when_files_match():
    obs = NodeObservation("n2", files=dict(MANIFEST), odd=("lib/link", "pipe"), health=health())
    rep = report(fleet(n2=obs), EXPECTED, MANIFEST)
    v = verdict(rep, "n2")
    assert v.disk_digest == EXPECTED and not v.disk_ok and not v.ok
    assert v.drift == ("not a regular file: lib/link", "not a regular file: pipe")
    assert rep.exit_code == ExitCode.MISMATCH


def test_new_files_old_process():
    # disk updated, router never restarted: still serving the old release
    rep = report(fleet(n1=NodeObservation("n1", files=dict(MANIFEST), health=health(OLD))), EXPECTED, MANIFEST)
    v = verdict(rep, "n1")
    assert (v.disk_ok, v.running_ok, v.ok) == (True, False, False)
    assert v.running_digest == OLD and v.drift == ()
    assert v.problems == (f"running digest {OLD[:12]} != expected {EXPECTED[:12]}",)
    assert rep.exit_code == ExitCode.MISMATCH


def test_old_files_new_process():
    rep = report(fleet(n1=NodeObservation("n1", files=dict(OLD_FILES), health=health())), EXPECTED, MANIFEST)
    v = verdict(rep, "n1")
    assert (v.disk_ok, v.running_ok, v.ok) == (False, True, False)
    assert v.disk_digest == OLD and v.drift == ("changed: router.py",)
    assert rep.exit_code == ExitCode.MISMATCH


def test_router_down():
    rep = report(fleet(n2=NodeObservation("n2", files=dict(MANIFEST), health_error="connection refused")),
                 EXPECTED, MANIFEST)
    v = verdict(rep, "n2")
    assert (v.disk_ok, v.running_ok, v.ok, v.reachable) == (True, False, False, True)
    assert (v.running_digest, v.gate, v.halted) == (None, "unknown", None)
    assert v.problems == ("router: connection refused",)
    assert rep.exit_code == ExitCode.MISMATCH


def test_unreadable_disk():
    rep = report(fleet(n2=NodeObservation("n2", disk_error="no release at /opt/router/current", health=health())),
                 EXPECTED, MANIFEST)
    v = verdict(rep, "n2")
    assert (v.disk_digest, v.disk_ok, v.ok) == (None, False, False)
    assert v.problems == ("disk: no release at /opt/router/current",)
    assert rep.exit_code == ExitCode.MISMATCH


def _unreachable(node: str) -> NodeObservation:
    return NodeObservation(node, disk_error="ssh: timed out", health_error="timed out", unreachable=True)


def test_unreachable_node_rest_match():
    rep = report(fleet(n3=_unreachable("n3")), EXPECTED, MANIFEST)
    assert not rep.ok and rep.exit_code == ExitCode.UNREACHABLE == 4
    v = verdict(rep, "n3")
    assert (v.reachable, v.ok, v.disk_ok, v.running_ok) == (False, False, False, False)


def test_unreachable_plus_mismatch_is_mismatch():
    bad = NodeObservation("n1", files=dict(OLD_FILES), health=health(OLD))
    rep = report(fleet(n1=bad, n3=_unreachable("n3")), EXPECTED, MANIFEST)
    assert rep.exit_code == ExitCode.MISMATCH


def test_all_unreachable():
    rep = report([_unreachable(n) for n in NODES], EXPECTED, MANIFEST)
    assert not rep.ok and rep.exit_code == ExitCode.UNREACHABLE


def test_reachable_but_flagged_unreachable_never_matches():
    obs = NodeObservation("n1", files=dict(MANIFEST), health=health(), unreachable=True)
    rep = report(fleet(n1=obs), EXPECTED, MANIFEST)
    assert not verdict(rep, "n1").ok and not rep.ok


def test_expected_none_is_never_ok():
    obs = [NodeObservation(n, files=dict(MANIFEST), health={"gate": "open", "halted": False}) for n in NODES]
    rep = report(obs, None)
    assert not rep.ok and rep.exit_code == ExitCode.MISMATCH
    assert not any(v.ok or v.disk_ok or v.running_ok for v in rep.nodes)


def test_no_nodes_is_not_ok():
    rep = report([], EXPECTED)
    assert not rep.ok and rep.exit_code != ExitCode.OK


def test_without_manifest_no_drift():
    rep = report(fleet(n1=NodeObservation("n1", files=dict(OLD_FILES), health=health())), EXPECTED)
    assert verdict(rep, "n1").drift == () and rep.exit_code == ExitCode.MISMATCH


@pytest.mark.parametrize("h, gate, halted, running", [
    ({"digest": EXPECTED, "gate": "closed", "halted": True}, "closed", True, EXPECTED),
    ({"digest": 5, "gate": "ajar", "halted": "yes"}, "unknown", None, None),
    ({}, "unknown", None, None),
])
def test_health_fields_are_read_strictly(h, gate, halted, running):
    v = verdict(report([NodeObservation("n1", files=dict(MANIFEST), health=h)], EXPECTED), "n1")
    assert (v.gate, v.halted, v.running_digest) == (gate, halted, running)
    assert v.running_ok == (running == EXPECTED)


def test_to_dict_shape():
    rep = report(fleet(n2=NodeObservation("n2", files={**MANIFEST, "x": sha("x")}, health=health())),
                 EXPECTED, MANIFEST)
    doc = rep.to_dict()
    assert set(doc) == {"ok", "expected", "exit_code", "nodes", "groups"}
    assert (doc["ok"], doc["expected"], doc["exit_code"]) == (False, EXPECTED, 3)
    assert type(doc["exit_code"]) is int
    assert [n["node"] for n in doc["nodes"]] == NODES
    keys = {"node", "ok", "reachable", "disk_digest", "running_digest", "disk_ok", "running_ok", "gate", "halted",
            "drift", "problems", "host_key_refused", "flags", "flags_ok"}
    for n in doc["nodes"]:
        assert set(n) == keys
        assert isinstance(n["drift"], list) and isinstance(n["problems"], list)
    n2 = doc["nodes"][1]
    assert n2["drift"] == ["added: x"] and n2["ok"] is False


@pytest.mark.parametrize("name", ["evil\\name.py", "evil\nname.py"])
def test_node_with_unhashable_file_name_is_a_mismatch(name):
    files = {**MANIFEST, name: sha("evil")}
    rep = report(fleet(n1=NodeObservation("n1", files=files, health=health())), EXPECTED, MANIFEST)
    assert rep.exit_code == ExitCode.MISMATCH
    assert f"added: {name}" in verdict(rep, "n1").drift


def test_a_refused_host_key_exits_10_even_beside_an_outage_or_a_mismatch():
    """A host key other than the pinned one is a security incident: the CI gate must not read it as an outage."""
    refused = NodeObservation("n2", disk_error="host key mismatch", unreachable=True, host_key_refused=True)
    rep = report(fleet(n2=refused), EXPECTED, MANIFEST)
    assert (rep.ok, rep.exit_code) == (False, ExitCode.HOST_KEY)
    assert rep.to_dict()["nodes"][1]["host_key_refused"] is True
    mixed = report(fleet(n2=refused, n3=NodeObservation("n3", unreachable=True)), EXPECTED, MANIFEST)
    assert mixed.exit_code == ExitCode.HOST_KEY
    unreachable = fleet(n3=NodeObservation("n3", unreachable=True))
    assert report(unreachable, EXPECTED, MANIFEST).exit_code == ExitCode.UNREACHABLE
