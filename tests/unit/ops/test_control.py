"""ops/control.py on the in-memory fleet: verify's exit codes, gate open/close, halt and resume, and their journal."""

from __future__ import annotations

import json

import fakefleet as ff
import pytest
from fakefleet import NODES, OTHERS

from deployctl.errors import DeployctlError, ExitCode, HaltedError, MismatchError, UnreachableError, UsageError
from deployctl.ops import control
from deployctl.remote.replies import MAX_REASON
from deployctl.state.journal import entry

HUGE = "x" * (1 << 20)  # a hostile node's error text, and how it reaches messages and journals:
CLIPPED = "x" * MAX_REASON + f"... [clipped, {len(HUGE)} characters in all]"


def plain(rec: dict) -> dict:
    return {k: v for k, v in rec.items() if k not in ("ts", "who")}


def gates(rig: ff.Rig) -> dict[str, str]:
    return {n: rig.world[n].gate for n in NODES}


# ---- verify ------------------------------------------------------------------------------------------------------

def test_verify_passes_when_every_node_matches_on_disk_and_running(live):
    b = live.digest(1)
    report = control.verify(live.ctx)
    assert report.ok and report.exit_code == ExitCode.OK and report.expected == b
    assert [(n.node, n.disk_digest, n.running_digest, n.gate, n.halted, n.problems) for n in report.nodes] == [
        (n, b, b, "open", False, ()) for n in NODES]
    assert ("verify", {"report": report}) in live.events
    assert live.world.ran("hashes") == NODES


def test_verify_takes_a_unique_prefix_of_a_known_release(live):
    b = live.digest(1)
    assert control.verify(live.ctx, b[:8]).expected == b
    assert control.gate_open(live.ctx, b[:12]).expected == b
    live.ctx.journal.append(entry("plan", digest=b[:8] + "0" * 56))  # a second release with the same prefix
    with pytest.raises(UsageError) as err:
        control.verify(live.ctx, b[:8])
    both = ", ".join(sorted([b[:16], b[:8] + "0" * 8]))
    assert str(err.value) == f"--expect: {b[:8]} is ambiguous ({both}): give more characters"
    with pytest.raises(UsageError) as err:
        control.resume(live.ctx, "0123abcd")
    assert str(err.value) == "--expect: no release known to the journal or the nodes starts with 0123abcd"
    assert control.verify(live.ctx, b[:9]).expected == b  # one more character tells them apart


def test_verify_names_the_drifted_file(live):
    b = live.digest(1)
    live.world["node3"].releases[b]["router.py"] = "0" * 64
    report = control.verify(live.ctx)
    assert report.exit_code == ExitCode.MISMATCH == 3
    bad = [n for n in report.nodes if not n.ok]
    assert [n.node for n in bad] == ["node3"]
    assert bad[0].drift == ("changed: router.py",)
    assert bad[0].problems == (f"disk digest {bad[0].disk_digest[:12]} != expected {b[:12]}",)
    assert bad[0].running_ok is True


def test_verify_clips_a_nodes_error_text(live):
    live.world.fail("node3", "hashes", HUGE)
    report = control.verify(live.ctx)
    assert report.nodes[2].problems == (f"disk: {CLIPPED}",)


def test_verify_catches_a_node_running_another_release(live):
    a, b = live.digest(0), live.digest(1)
    live.world["node3"].running = a  # the files are right, the process was never restarted
    report = control.verify(live.ctx)
    assert report.exit_code == ExitCode.MISMATCH
    assert [(n.node, n.problems) for n in report.nodes if not n.ok] == [
        ("node3", (f"running digest {a[:12]} != expected {b[:12]}",))]


def test_verify_unreachable_node(live):
    live.world.fail("node3", "connect")
    live.world["node3"].answers = False
    report = control.verify(live.ctx)
    assert report.exit_code == ExitCode.UNREACHABLE == 4
    node3 = report.nodes[2]
    assert node3.reachable is False and node3.problems == (
        "disk: unreachable at 127.0.0.1:2203: connection refused",
        "router: router unreachable at 127.0.0.1:8103: timed out")


def test_verify_host_key_refused(live):
    live.world.fail("node3", "host-key")
    live.world.fail("node6", "connect")
    report = control.verify(live.ctx)
    assert report.exit_code == ExitCode.HOST_KEY == 10
    assert [n.host_key_refused for n in report.nodes] == [n == "node3" for n in NODES]


def test_verify_unreachable_and_mismatch_is_a_mismatch(live):
    live.world.fail("node3", "connect")
    live.world["node5"].running = live.digest(0)
    assert control.verify(live.ctx).exit_code == ExitCode.MISMATCH


def test_verify_needs_an_expected_release(rig):
    with pytest.raises(UsageError) as err:
        control.verify(rig.ctx)
    assert str(err.value) == "no successful rollout in the journal: pass --expect DIGEST"
    with pytest.raises(UsageError) as err:
        control.verify(rig.ctx, "abc")
    assert str(err.value) == ("--expect: 'abc' is not a sha256 release digest (64 lowercase hex characters, or a "
                              "unique prefix of at least 8)")
    assert rig.world.connects == []


def test_verify_against_an_older_release(live):
    report = control.verify(live.ctx, live.digest(0))
    assert report.exit_code == ExitCode.MISMATCH and not any(n.ok for n in report.nodes)


# ---- gate open / close -------------------------------------------------------------------------------------------

@pytest.fixture
def closed(live) -> ff.Rig:
    control.gate_close(live.ctx)
    return live


def test_gate_close_closes_every_gate_and_journals_it(live):
    answers = control.gate_close(live.ctx)
    assert all(a.ok for a in answers.values()) and gates(live) == dict.fromkeys(NODES, "closed")
    assert plain(live.journal()[-1]) == {"action": "gate-close", "outcome": "ok", "nodes": dict.fromkeys(NODES, "ok")}


def test_gate_close_names_the_nodes_it_did_not_reach(live):
    live.world["node3"].answers = False
    with pytest.raises(UnreachableError) as err:
        control.gate_close(live.ctx)
    assert err.value.exit_code == 4
    reason = "router unreachable at 127.0.0.1:8103: timed out"
    assert str(err.value) == "gate close did not reach 1 of 8 nodes (router unreachable: timed out): node3"
    assert err.value.nodes == {"node3": reason}
    assert gates(live) == {**dict.fromkeys(OTHERS, "closed"), "node3": "open"}
    assert plain(live.journal()[-1]) == {"action": "gate-close", "outcome": "partial",
                                        "nodes": {**dict.fromkeys(OTHERS, "ok"), "node3": reason}}


def test_gate_open_opens_all_after_verify(closed):
    b = closed.digest(1)
    report = control.gate_open(closed.ctx)
    assert report.ok and gates(closed) == dict.fromkeys(NODES, "open")
    assert plain(closed.journal()[-1]) == {"action": "gate-open", "outcome": "ok", "digest": b,
                                           "nodes": dict.fromkeys(NODES, "ok")}


def test_gate_open_refuses_on_mismatch_and_asks_no_router(closed):
    b = closed.digest(1)
    closed.world["node3"].releases[b]["lib/book.py"] = "1" * 64
    closed.world.log.clear()
    with pytest.raises(MismatchError) as err:
        control.gate_open(closed.ctx)
    assert err.value.exit_code == 3
    disk = [n for n in control.verify(closed.ctx).nodes if n.node == "node3"][0].disk_digest
    assert str(err.value) == f"gate stays closed: 1 of 8 nodes do not match (disk digest {disk[:12]} != " \
                             f"expected {b[:12]}): node3"
    assert gates(closed) == dict.fromkeys(NODES, "closed")
    assert [w for k, _, w in closed.world.log if k == "http" and w.startswith("gate")] == []


def test_gate_open_refuses_with_an_unreachable_node(closed):
    closed.world.fail("node3", "connect")
    with pytest.raises(UnreachableError) as err:
        control.gate_open(closed.ctx)
    assert str(err.value) == ("gate stays closed: 1 of 8 nodes do not match (disk: unreachable: connection refused): "
                              "node3")
    assert err.value.nodes == {"node3": "disk: unreachable at 127.0.0.1:2203: connection refused"}
    assert gates(closed) == dict.fromkeys(NODES, "closed")


def test_gate_open_refuses_on_a_halted_fleet(closed):
    control.halt(closed.ctx)
    with pytest.raises(HaltedError) as err:
        control.gate_open(closed.ctx)
    assert err.value.exit_code == 7
    assert str(err.value) == "gate stays closed: the fleet is halted; run `deployctl resume` first"
    assert gates(closed) == dict.fromkeys(NODES, "closed")


def test_gate_open_is_all_or_none(closed):
    b = closed.digest(1)
    closed.world.fail("node3", "gate-open")
    with pytest.raises(DeployctlError) as err:
        control.gate_open(closed.ctx)
    assert type(err.value) is DeployctlError
    reason = f"HTTP 409: {ff.FAULTS['gate-open']}"
    assert str(err.value) == f"gate open refused, all gates closed again: 1 of 8 nodes ({reason}): node3"
    assert gates(closed) == dict.fromkeys(NODES, "closed")
    assert plain(closed.journal()[-1]) == {"action": "gate-open", "outcome": "partial", "digest": b,
                                           "nodes": {**dict.fromkeys(OTHERS, "ok"), "node3": reason}}


# ---- halt / resume -----------------------------------------------------------------------------------------------

def test_halt_reaches_every_router_without_ssh(live):
    connects = len(live.world.connects)
    assert control.halt(live.ctx) == dict.fromkeys(NODES, "halted")
    assert {n: (live.world[n].halted, live.world[n].gate) for n in NODES} == dict.fromkeys(NODES, (True, "closed"))
    assert len(live.world.connects) == connects
    assert plain(live.journal()[-1]) == {"action": "halt", "outcome": "ok", "nodes": dict.fromkeys(NODES, "halted")}
    assert plain(live.world["node1"].journal[-1]) == {"action": "halt", "source": "router", "digest": live.digest(1),
                                                      "gate": "closed", "halted": True}


@pytest.mark.parametrize("silent", ["down", "hangs"])
def test_halt_falls_back_to_ssh_for_a_router_that_does_not_answer(live, silent):
    if silent == "down":
        live.world["node3"].running = None
    else:
        live.world["node3"].answers = False
    done = control.halt(live.ctx)
    assert done == {**dict.fromkeys(OTHERS, "halted"), "node3": "halted on disk (router not answering)"}
    assert live.world["node3"].halted is True
    assert live.world.connects[-1] == ["node3"]  # only the silent node over SSH
    assert live.world.ran("halt") == ["node3"]
    assert plain(live.journal()[-1]) == {"action": "halt", "outcome": "ok", "nodes": done}


def test_halt_falls_back_to_ssh_for_a_router_answering_deep_json(live, monkeypatch):
    # The real HTTP client; node3's router answers "[" * 100000, which fits under the 1 MiB read cap.
    ff.over_http(live, monkeypatch, says={"node3": b"[" * 100_000})
    done = control.halt(live.ctx)
    assert done == {**dict.fromkeys(OTHERS, "halted"), "node3": "halted on disk (router not answering)"}
    assert [live.world[n].halted for n in NODES] == [True] * 8 and live.world.ran("halt") == ["node3"]
    assert plain(live.journal()[-1]) == {"action": "halt", "outcome": "ok", "nodes": done}


def test_halt_names_a_node_reached_neither_way(live):
    live.world["node3"].running = None
    live.world.fail("node3", "connect")
    live.world["node6"].answers = False
    live.world.fail("node6", "halt")
    with pytest.raises(UnreachableError) as err:
        control.halt(live.ctx)
    n3 = "NOT HALTED: unreachable at 127.0.0.1:2203: connection refused"
    n6 = "NOT HALTED: exit 1: " + json.dumps({"error": ff.FAULTS["halt"]})
    assert str(err.value) == f"halt did not reach 2 of 8 nodes: node3 (connection refused); node6 ({n6[12:]})"
    assert err.value.nodes == {"node3": n3[12:], "node6": n6[12:]}
    assert [live.world[n].halted for n in NODES] == [n not in ("node3", "node6") for n in NODES]
    record = plain(live.journal()[-1])
    assert record == {"action": "halt", "outcome": "partial",
                      "nodes": {**{n: "halted" for n in NODES if n not in ("node3", "node6")}, "node3": n3,
                                "node6": n6}}


def test_halt_and_resume_clip_a_nodes_error_text(live):
    """Through the SSH fallback (NodeResult.reason) and the router's answer (Answer.reason)."""
    live.world["node6"].answers = False
    live.world.fail("node6", "halt", HUGE)
    with pytest.raises(UnreachableError) as err:
        control.halt(live.ctx)
    raw = '{"error": "' + "x" * (MAX_REASON - 11) + f"... [clipped, {len(HUGE) + 13} characters in all]"
    assert str(err.value) == f"halt did not reach 1 of 8 nodes (exit 1: {raw}): node6"  # the agent's line, raw
    assert live.journal()[-1]["nodes"]["node6"] == f"NOT HALTED: exit 1: {raw}"
    live.world["node6"].answers = True
    live.world.fail("node3", "resume", HUGE)
    with pytest.raises(UnreachableError) as err:
        control.resume(live.ctx)
    assert str(err.value) == f"resume did not reach 1 of 8 nodes (HTTP 500: {CLIPPED}): node3"
    assert live.journal()[-1]["nodes"]["node3"] == f"HTTP 500: {CLIPPED}"


def test_resume_lifts_the_halt_and_leaves_the_gate_closed(live):
    control.halt(live.ctx)
    report = control.resume(live.ctx)
    assert report.ok
    assert {n: (live.world[n].halted, live.world[n].gate) for n in NODES} == dict.fromkeys(NODES, (False, "closed"))
    assert plain(live.journal()[-1]) == {"action": "resume", "outcome": "ok", "digest": live.digest(1),
                                        "nodes": dict.fromkeys(NODES, "ok")}


def test_resume_refused_unless_verify_passes(live):
    control.halt(live.ctx)
    live.world["node3"].running = live.digest(0)
    with pytest.raises(MismatchError) as err:
        control.resume(live.ctx)
    assert str(err.value) == (f"resume refused: 1 of 8 nodes do not match (running digest "
                              f"{live.digest(0)[:12]} != expected {live.digest(1)[:12]}): node3")
    assert all(live.world[n].halted for n in NODES)
    assert live.journal()[-1]["action"] == "halt"


def test_resume_names_the_nodes_it_did_not_reach(live):
    control.halt(live.ctx)
    live.world.fail("node3", "resume")
    with pytest.raises(UnreachableError) as err:
        control.resume(live.ctx)
    assert str(err.value) == f"resume did not reach 1 of 8 nodes (HTTP 500: {ff.FAULTS['resume']}): node3"
    assert [live.world[n].halted for n in NODES] == [n == "node3" for n in NODES]
    assert live.journal()[-1]["outcome"] == "partial"


# ---- status and history ---------------------------------------------------------------------------------------------

def test_status_has_one_row_per_node(live):
    b = live.digest(1)
    live.world["node3"].running = None
    doc = control.status(live.ctx)
    rows = doc["nodes"]
    assert [g["nodes"] for g in doc["groups"]] == [[n for n in NODES if n != "node3"], ["node3"]]
    assert doc["groups"][1]["line"] == f"node3 has {b[:12]} on disk, runs ?"
    assert [(r["node"], r["release"], r["running"], r["gate"], r["version"]) for r in rows] == [
        (n, b, None if n == "node3" else b, "unknown" if n == "node3" else "open", None if n == "node3" else "1.1.0")
        for n in NODES]
    assert rows[2]["problem"] == "router not running at 127.0.0.1:8103: connection refused"
    assert rows[0]["last_deploy"].startswith(f"rollout {b[:12]} ok ")


def test_history_is_the_journal_oldest_first(live):
    assert control.history(live.ctx) == live.journal()
    assert control.history(live.ctx, 1) == live.journal()[-1:]
