"""rollback and recover on the in-memory fleet (fakefleet.py): an interrupted run and its recover, a rollback
to the newest good release or a named one, partial rollbacks, and their failures.

Like test_rollout.py, each test asserts the whole fleet's state afterwards, the exact error and exit code,
and the controller's journal records.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess

import fakefleet as ff
import pytest
from fakefleet import NODES, OTHERS, every_node, plain

from deployctl.config.playbook import Timeouts
from deployctl.errors import ExitCode, InconsistentError, RolledBackError, UnreachableError, UsageError
from deployctl.ops import control, guards
from deployctl.ops import rollback as rollback_mod
from deployctl.remote.replies import NodeAnswerError
from deployctl.state.journal import actor, entry


def short(d: str) -> str:
    return d[:12]


def halt_at(rig, phase, status="done"):
    rig.at(phase, lambda: control.halt(rig.ctx), status)


# ---- interrupted runs and recover ---------------------------------------------------------------------------------

class Crash(BaseException):
    """The controller dies (^C, OOM) in the middle of a run."""


def crash(rig, phase, status="start"):
    def die():
        raise Crash(phase)
    rig.at(phase, die, status)


def test_interrupted_rollout_blocks_runs_until_recover(live):
    a, b, c = (live.digest(i) for i in range(3))
    crash(live, "health")
    with pytest.raises(Crash):
        live.rollout(2)
    assert live.world.states() == every_node(c, "closed", [a, b, c])  # switched, never checked, gate closed
    start = next(r for r in reversed(live.journal()) if r.get("phase") == "start")
    message = (f"interrupted rollout (run {start['run']}, {short(c)}, started {start['ts']} by {actor()}): "
               "run `deployctl recover`")
    assert guards.interrupted(live.ctx) == message
    for attempt in (lambda: live.rollout(2), lambda: rollback_mod.rollback(live.ctx)):
        with pytest.raises(InconsistentError) as err:
            attempt()
        assert str(err.value) == f"the fleet may be mixed after an {message}"
    live.hooks.clear()
    since = len(live.journal())
    result = rollback_mod.recover(live.ctx)
    assert result.state.target == b and result.gate_open is False
    assert live.world.states() == every_node(b, "closed", [a, b, c])
    assert live.phases(since) == [("recover", "start", None), ("recover", "switch", None),
                                 ("recover", "health", None), ("recover", "open-gate", None),
                                 ("recover", "done", "ok")]
    assert plain(live.journal()[since])["interrupted"] == start
    assert ("warning", {"message": "gate stays closed (recover)"}) in live.events
    assert guards.interrupted(live.ctx) is None
    assert live.rollout(2).gate_open is True


def test_recover_with_a_router_answering_deep_json_ends_its_run_naming_that_node(live, monkeypatch):
    a, b, c = (live.digest(i) for i in range(3))
    crash(live, "health")
    with pytest.raises(Crash):
        live.rollout(2)
    live.hooks.clear()
    # The real HTTP client; node3's router answers "[" * 100000 to every request, gate close included.
    ff.over_http(live, monkeypatch, says={"node3": b"[" * 100_000})
    live.ctx.playbook = dataclasses.replace(live.ctx.playbook, timeouts=Timeouts(5, 60, 0.05))
    with pytest.raises(InconsistentError) as err:
        rollback_mod.recover(live.ctx)
    assert str(err.value) == ("recover failed: node3 failed in health: HTTP 200: answer is not JSON; the fleet may "
                              "be mixed, gate closed: run `deployctl recover`")
    assert live.world.states() == every_node(b, "closed", [a, b, c])
    done = live.journal()[-1]
    assert (done["action"], done["phase"], done["outcome"]) == ("recover", "done", "inconsistent")
    assert done["nodes"] == {**dict.fromkeys(OTHERS, "ok"), "node3": "failed in health: HTTP 200: answer is not JSON"}


def test_interrupted_run_with_its_lock_still_held_is_not_reported(live):
    crash(live, "switch")
    with pytest.raises(Crash):
        live.rollout(2)
    live.ctx.lock.path.write_text(json.dumps({"holder": actor(), "pid": os.getpid(), "since": 0, "command": "x"}))
    assert guards.interrupted(live.ctx) is None  # its process is alive: the run may still be going


def test_recover_falls_back_to_the_release_every_node_runs(live):
    a, b, c = (live.digest(i) for i in range(3))
    crash(live, "switch")
    with pytest.raises(Crash):
        live.rollout(2)
    live.hooks.clear()
    live.world["node3"].releases.pop(b)  # the last good release is gone from node3 ...
    live.world["node3"].current = live.world["node3"].running = a  # ... which (like all) runs a
    for n in OTHERS:
        live.world[n].current = live.world[n].running = a
    result = rollback_mod.recover(live.ctx)
    assert result.state.target == a
    assert live.world.states() == {**every_node(a, "closed", [a, b, c], nodes=OTHERS),
                                   "node3": every_node(a, "closed", [a, c])["node3"]}


def test_recover_refuses_when_no_release_is_common(live):
    a, b, c = (live.digest(i) for i in range(3))
    crash(live, "switch")
    with pytest.raises(Crash):
        live.rollout(2)
    live.hooks.clear()
    live.world["node3"].releases.pop(b)
    live.world["node3"].current = live.world["node3"].running = a
    since = len(live.journal())
    with pytest.raises(InconsistentError) as err:
        rollback_mod.recover(live.ctx)
    assert str(err.value) == (f"recover: the last good release {short(b)} is not on node3 and the nodes' current "
                              "releases differ: roll out a release to the whole fleet (`deployctl rollout ARTIFACT "
                              "--break-lock` supersedes the interrupted run)")
    assert live.phases(since) == []  # no run started; only the gates were closed
    assert live.world.ran("switch") == []
    assert {s["gate"] for s in live.world.states().values()} == {"closed"}
    # The way out it names: a plain rollout is still refused, one with --break-lock supersedes the
    # interrupted run (journaled) and brings the whole fleet to one release, gates open.
    with pytest.raises(InconsistentError):
        live.rollout(2)
    message = guards.interrupted(live.ctx)
    assert live.rollout(2, break_lock=True).gate_open is True
    assert {s["current"] for s in live.world.states().values()} == {c}
    assert plain(next(r for r in reversed(live.journal()) if r.get("phase") == "start"))["supersedes"] == message
    assert guards.interrupted(live.ctx) is None


def test_recover_that_fails_is_inconsistent_without_a_revert(live):
    crash(live, "health")
    with pytest.raises(Crash):
        live.rollout(2)
    live.hooks.clear()
    live.world.fail("node3", "switch")
    since = len(live.journal())
    with pytest.raises(InconsistentError) as err:
        rollback_mod.recover(live.ctx)
    assert str(err.value) == (f"recover failed: node3 failed in switch: {ff.FAULTS['switch']}; the fleet may be "
                              "mixed, gate closed: run `deployctl recover`")
    assert live.phases(since) == [("recover", "start", None), ("recover", "switch", None),
                                 ("recover", "done", "inconsistent")]
    a, b, c = (live.digest(i) for i in range(3))
    assert live.world.states() == {**every_node(b, "closed", [a, b, c], nodes=OTHERS),
                                   "node3": every_node(b, "closed", [a, b, c], running=None)["node3"]}


def test_recover_breaks_a_stale_lock_and_journals_it(live):
    dead = subprocess.Popen(["true"])
    dead.wait()
    live.ctx.lock.path.write_text(json.dumps({"holder": actor(), "pid": dead.pid, "since": 1.0, "command": "x"}))
    since = len(live.journal())
    rollback_mod.recover(live.ctx)
    assert plain(live.journal()[since]) == {"action": "lock-broken", "holder": actor(), "pid": dead.pid,
                                            "since": 1.0}
    assert live.ctx.lock.info() is None


# ---- rollback -------------------------------------------------------------------------------------------------------

def test_rollback_goes_to_the_newest_good_release_no_node_runs(three):
    a, b, c = (three.digest(i) for i in range(3))
    since, log = len(three.journal()), len(three.world.log)
    result = rollback_mod.rollback(three.ctx)
    assert result.state.target == b and result.gate_open is True
    assert three.world.states() == every_node(b, "open", [a, b, c])
    assert three.phases(since) == [("rollback", "start", None), ("rollback", "switch", None),
                                  ("rollback", "health", None), ("rollback", "open-gate", None),
                                  ("rollback", "done", "ok")]
    assert plain(three.journal()[since]) == {"action": "rollback", "phase": "start", "digest": b, "nodes": NODES,
                                             "partial": False}
    assert three.journal()[-1]["previous"] == dict.fromkeys(NODES, c)
    for n in NODES:
        assert plain(three.world[n].journal[-2]) == {"action": "rollback", "phase": "switch", "digest": b,
                                                      "node": n, "previous": c}
    ssh = [(k, n, w) for k, n, w in three.world.log[log:] if k != "http"]
    assert [e for e in ssh if e[0] != "unlock"] == [("hold", n, "retarget") for n in NODES] + [
        e for n in NODES for e in (("finish", n, "switch"), ("switch", n, b))]  # one held command, no upload
    assert [e[:2] for e in ssh if e[0] == "unlock"] == [("unlock", n) for n in NODES]  # the fleet lock, at the end
    assert all(three.world[n].lock is None for n in NODES)


def test_rollback_to_a_named_release(three):
    a, b, c = (three.digest(i) for i in range(3))
    result = rollback_mod.rollback(three.ctx, to=a)
    assert result.state.target == a
    assert three.world.states() == every_node(a, "open", [a, b, c])


def test_rollback_refuses_a_release_missing_on_a_node_and_changes_nothing(three):
    b = three.digest(1)
    three.world["node3"].releases.pop(b)
    three.world["node6"].releases.pop(b)
    before, journal = three.world.states(), three.ctx.state.journal.read_bytes()
    with pytest.raises(UsageError) as err:
        rollback_mod.rollback(three.ctx)
    assert err.value.exit_code == ExitCode.USAGE
    assert str(err.value) == f"rollback refused, nothing changed: release {short(b)} is not on node3, node6"
    assert three.world.states() == before  # gates still open: nothing was touched
    assert three.ctx.state.journal.read_bytes() == journal
    assert three.world.log[-16:] == [("hold", n, "retarget") for n in NODES] + [("end", n, "retarget") for n in NODES]


def test_rollback_to_a_unique_prefix_of_a_release(three):
    """Every table shows 12 characters of a digest: 8 or more of them name the release."""
    a, b, c = (three.digest(i) for i in range(3))
    assert rollback_mod.rollback(three.ctx, to=a[:8]).state.target == a
    assert rollback_mod.preview(three.ctx, to=b[:12])[0].target == b


AMBIGUOUS = ("12345678" + "a" * 56, "12345678" + "b" * 56)


@pytest.mark.parametrize("to, message", [
    ("abc", "--to: 'abc' is not a sha256 release digest (64 lowercase hex characters, or a unique prefix of at "
            "least 8)"),
    ("abcdef1", "--to: 'abcdef1' is not a sha256 release digest (64 lowercase hex characters, or a unique prefix "
                "of at least 8)"),
    ("f" * 64, f"rollback refused: the fleet never ran {'f' * 12} (not in the journal)"),
    ("ffffffff", "--to: no release known to the journal or the nodes starts with ffffffff"),
    ("12345678", f"--to: 12345678 is ambiguous ({AMBIGUOUS[0][:16]}, {AMBIGUOUS[1][:16]}): give more characters"),
])
def test_rollback_to_refusals(three, to, message):
    for digest in AMBIGUOUS:
        three.ctx.journal.append(entry("plan", digest=digest))
    before = three.world.states()
    with pytest.raises(UsageError) as err:
        rollback_mod.rollback(three.ctx, to=to)
    assert str(err.value) == message
    assert three.world.states() == before


def test_rollback_with_no_history_is_refused(rig):
    rig.rollout(0)
    with pytest.raises(UsageError) as err:
        rollback_mod.rollback(rig.ctx)
    assert str(err.value) == "rollback refused, nothing changed: no previous release in the fleet's history"


def test_partial_rollback_needs_force(three):
    with pytest.raises(UsageError) as err:
        rollback_mod.rollback(three.ctx, nodes=["node2"])
    assert str(err.value) == "rolling back only some nodes leaves the fleet mixed: add --force if you mean it"
    with pytest.raises(UsageError) as err:
        rollback_mod.rollback(three.ctx, nodes=["node9"], force=True)
    assert str(err.value) == "--node: not in the inventory: node9"
    assert len(three.world.connects) == 3  # refused before any connection


def test_forced_partial_rollback_moves_only_the_named_nodes_and_keeps_every_gate_closed(three):
    a, b, c = (three.digest(i) for i in range(3))
    result = rollback_mod.rollback(three.ctx, nodes=["node2", "node7"], force=True)
    assert result.gate_open is False and result.state.phase.value == "done"
    moved = ["node2", "node7"]
    assert three.world.states() == {**every_node(c, "closed", [a, b, c], nodes=[n for n in NODES if n not in moved]),
                                    **every_node(b, "closed", [a, b, c], nodes=moved)}
    assert plain(three.journal()[-5])["partial"] is True and three.journal()[-5]["nodes"] == moved
    assert ("warning", {"message": "gate stays closed (partial rollback: the fleet is mixed)"}) in three.events
    assert three.world.ran("end")[-6:] == [n for n in NODES if n not in moved]


def test_partial_rollback_is_not_the_fleets_last_good_release(three):
    c = three.digest(2)
    rollback_mod.rollback(three.ctx, nodes=["node2"], force=True)
    assert three.ctx.journal.last_good() == c
    assert three.ctx.journal.last_run()["outcome"] == "ok-partial"


def test_rollback_of_a_halted_fleet_keeps_the_gate_closed(three):
    a, b, c = (three.digest(i) for i in range(3))
    control.halt(three.ctx)
    result = rollback_mod.rollback(three.ctx)
    assert result.gate_open is False
    assert three.world.states() == every_node(b, "closed", [a, b, c], halted=True)
    assert ("warning", {"message": f"gate stays closed (halted: {', '.join(NODES)})"}) in three.events


def test_a_bad_probe_answer_refuses_the_rollback_naming_the_node(three, monkeypatch):
    before = three.world.states()
    monkeypatch.setattr(three.world["node3"], "probe_text", lambda: "root yes\ncurrent \nhalted no\nfree ²\n")
    with pytest.raises(NodeAnswerError) as err:
        rollback_mod.rollback(three.ctx)
    assert str(err.value) == "rollback preflight: bad answer from node3: probe: free should be a number of bytes"
    assert three.world.states() == before


def test_rollback_switch_failure_reverts_to_where_it_started(three):
    a, b, c = (three.digest(i) for i in range(3))
    three.world.fail("node3", "switch")
    with pytest.raises(RolledBackError) as err:
        rollback_mod.rollback(three.ctx)
    assert str(err.value) == (f"rollback failed: node3 failed in switch: {ff.FAULTS['switch']}; every node is back "
                              "on its previous release, gate closed")
    assert three.world.states() == every_node(c, "closed", [a, b, c])


def test_rollback_preflight_names_unreachable_and_refusing_nodes(three):
    before = three.world.states()
    three.world.fail("node4", "connect")
    with pytest.raises(UnreachableError) as err:
        rollback_mod.rollback(three.ctx)
    assert str(err.value) == "rollback preflight: 1 of 8 unreachable (connection refused): node4"
    assert err.value.nodes == {"node4": "unreachable at 127.0.0.1:2204: connection refused"}
    del three.world["node4"].faults["connect"]
    three.world.fail("node4", "probe")
    with pytest.raises(InconsistentError) as err:
        rollback_mod.rollback(three.ctx)
    assert str(err.value) == ("rollback preflight: cannot probe node4: exit 1: "
                              + json.dumps({"error": ff.FAULTS["probe"]}))
    assert three.world.states() == before


def test_rollback_restarts_a_router_that_was_down(three):
    a, b, c = (three.digest(i) for i in range(3))
    three.world["node3"].running = None  # crashed: its gate counts as closed, the rollback goes on
    assert rollback_mod.rollback(three.ctx).gate_open is True
    assert three.world.states() == every_node(b, "open", [a, b, c])


def test_halt_during_rollback_goes_on_with_the_gate_closed(three):
    a, b, c = (three.digest(i) for i in range(3))
    halt_at(three, "switch")
    result = rollback_mod.rollback(three.ctx)
    assert result.state.phase.value == "done" and result.gate_open is False
    assert three.world.states() == every_node(b, "closed", [a, b, c], halted=True)
    assert ("warning", {"message": "gate stays closed (the fleet was halted during the run)"}) in three.events
    assert three.journal()[-1]["outcome"] == "ok"
