"""rollout on the in-memory fleet (fakefleet.py): every phase, every failure, the journal (rollback and recover:
test_rollback.py).

Each test asserts the whole fleet's state afterwards (every node's `current`, running digest, gate, halt flag
and releases), the exact error and exit code, and the controller's journal records.
"""

from __future__ import annotations

import json
import subprocess

import fakefleet as ff
import pytest
from fakefleet import NODES, OTHERS, every_node, plain

from deployctl.errors import (
    ArtifactError,
    DeployctlError,
    ExitCode,
    HaltedError,
    HostKeyError,
    InconsistentError,
    LockHeldError,
    RolledBackError,
    UnreachableError,
)
from deployctl.ops import control, guards
from deployctl.ops import rollback as rollback_mod
from deployctl.ops import rollout as rollout_mod
from deployctl.remote import commands
from deployctl.remote.replies import MAX_REASON, NodeAnswerError
from deployctl.state.journal import actor

UNREACHABLE3 = "unreachable at 127.0.0.1:2203: connection refused"


def short(d: str) -> str:
    return d[:12]


FORWARD = [("rollout", p, None) for p in ("start", "preflight", "close-gate", "stage", "switch", "health",
                                          "open-gate")]


# ---- success --------------------------------------------------------------------------------------------------

def test_first_rollout_puts_every_node_on_the_release_and_opens_the_gate(rig):
    a = rig.digest(0)
    result = rig.rollout(0)
    assert result.state.phase.value == "done" and result.gate_open is True
    assert result.state.previous == dict.fromkeys(NODES)
    assert rig.world.states() == every_node(a, "open", [a])
    assert rig.phases() == FORWARD + [("rollout", "done", "ok")]
    start, done = rig.journal()[0], rig.journal()[-1]
    assert plain(start) == {"action": "rollout", "phase": "start", "digest": a, "version": "1.0.0",
                            "artifact": rig.artifacts[0].path.name, "nodes": NODES, "deadline": 600.0}
    assert plain(done) == {"action": "rollout", "phase": "done", "digest": a, "outcome": "ok", "failures": [],
                           "nodes": dict.fromkeys(NODES, "ok"), "previous": dict.fromkeys(NODES)}
    assert set(done["timings"]) == {"preflight", "close-gate", "stage", "switch", "health", "open-gate", "total"}
    # Each node journaled its own switch (in the switch command) and its router the gate opening.
    for n in NODES:
        assert [plain(r) for r in rig.world[n].journal] == [
            {"action": "rollout", "phase": "switch", "digest": a, "node": n, "previous": None},
            {"action": "gate", "source": "router", "digest": a, "gate": "open", "halted": False}]
        assert rig.world[n].journal[0]["run"] == start["run"]
    # One connection set, one held command per node: probe, artifact and switch on the same channel.
    assert rig.world.connects == [NODES]
    assert rig.world.ran("hold") == NODES and rig.world.ran("step") == NODES and rig.world.ran("switch") == NODES
    assert rig.ctx.lock.info() is None
    assert (rig.ctx.state.manifest(a)).exists()


def test_rollout_events_report_each_phase_and_node(rig):
    rig.rollout(0)
    phases = [(d["phase"], d["status"]) for k, d in rig.events if k == "phase"]
    assert phases == [(p, s) for p in ("preflight", "close-gate", "stage", "switch", "health", "open-gate")
                      for s in ("start", "done")]
    nodes = [(d["phase"], d["node"], d["ok"]) for k, d in rig.events if k == "node"]
    assert nodes == [(p, n, True) for p in ("preflight", "close-gate", "stage", "switch", "health", "open-gate")
                     for n in NODES]
    assert [(d["node"], d["sent"]) for k, d in rig.events if k == "upload"] == [
        (n, len(commands.upload(rig.artifacts[0].payload()))) for n in NODES]


@pytest.mark.parametrize("failure", [BrokenPipeError(32, "Broken pipe"), OSError(5, "Input/output error")],
                         ids=["EPIPE", "EIO"])
def test_a_sink_that_cannot_write_loses_its_events_never_the_run(live, failure):
    """The CLI's stderr piped into `head -1`, or a terminal gone: every event the sink gets fails to
    write. The run still goes to its end: every node switched, gate open, `done` journaled."""
    a, b = live.digest(0), live.digest(1)
    raised = []

    def cannot_write(kind, **data):
        raised.append(kind)
        raise failure

    live.hooks.append(cannot_write)
    result = live.rollout(2)
    c = live.digest(2)
    assert result.state.phase.value == "done" and result.gate_open is True
    assert live.world.states() == every_node(c, "open", [a, b, c])
    assert live.phases()[-1] == ("rollout", "done", "ok")
    assert {"phase", "node", "upload"} <= set(raised)  # the sink was called, and failed, all along


def test_upgrade_records_the_previous_release_on_every_node(live):
    a, b = live.digest(0), live.digest(1)
    assert live.world.states() == every_node(b, "open", [a, b])
    done = live.journal()[-1]
    assert done["previous"] == dict.fromkeys(NODES, a)
    for n in NODES:
        assert plain(live.world[n].journal[-2]) == {"action": "rollout", "phase": "switch", "digest": b, "node": n,
                                                     "previous": a}


def test_rollout_prunes_beyond_keep_but_never_the_last_good_release(tmp_path):
    rig = ff.make_rig(tmp_path, versions=("1.0.0", "1.1.0", "1.2.0", "1.3.0"))
    d = [rig.digest(i) for i in range(4)]
    for i in range(4):
        rig.rollout(i)
    assert rig.world.states() == every_node(d[3], "open", d[1:])


def test_rolling_out_the_running_release_again_reuses_it(live):
    a, b = live.digest(0), live.digest(1)
    live.rollout(1)
    assert live.world.states() == every_node(b, "open", [a, b])


# ---- preflight -------------------------------------------------------------------------------------------------

def assert_refused_nothing_changed(rig, before, since):
    assert rig.world.states() == before
    assert rig.phases(since) == [("rollout", "start", None), ("rollout", "preflight", None),
                                ("rollout", "done", "refused")]
    assert rig.world.ran("step") == [] and rig.world.ran("switch") == []
    assert rig.ctx.lock.info() is None


def test_unreachable_node_in_preflight_refuses_and_changes_nothing(live):
    before, since = live.world.states(), len(live.journal())
    live.world.fail("node3", "connect")
    with pytest.raises(UnreachableError) as err:
        live.rollout(2)
    assert err.value.exit_code == ExitCode.UNREACHABLE == 4
    assert str(err.value) == ("rollout refused in preflight, nothing changed: 1 of 8 unreachable (connection refused): "
                              "node3")
    assert err.value.nodes == {"node3": UNREACHABLE3}
    assert_refused_nothing_changed(live, before, since)
    done = live.journal()[-1]
    assert done["failures"] == [f"node3 failed in preflight: {UNREACHABLE3}"]
    assert done["nodes"] == {**dict.fromkeys(OTHERS, "ok"), "node3": f"failed in preflight: {UNREACHABLE3}"}
    # The reachable nodes journal the refusal; the warning names the node that could not.
    for n in OTHERS:
        assert plain(live.world[n].journal[-1]) == plain(done)
    assert ("warning", {"message": "node journal not written on: node3"}) in live.events
    assert live.world.ran("end") == OTHERS  # the held commands end unused


def test_a_rollout_refused_in_preflight_warns_of_no_lock_it_never_took(live):
    """The node preflight could not reach never had this run's lock: it is neither asked to release it nor
    named in a warning (it was, as "fleet deploy lock not released on: node3"); the others release theirs."""
    live.world.fail("node3", "connect")
    with pytest.raises(UnreachableError):
        live.rollout(2)
    assert [d["message"] for k, d in live.events if k == "warning" and "lock" in d["message"]] == []
    assert sorted(live.world.ran("unlock")) == OTHERS
    assert all(live.world[n].lock is None for n in NODES), {n: live.world[n].lock for n in NODES}


def test_a_failed_rollout_releases_the_lock_only_where_it_took_it(live):
    """Past preflight every node took the run's lock: a failure releases it on each of them."""
    live.world["node3"].crash_on.add(live.digest(2))
    with pytest.raises(RolledBackError):
        live.rollout(2)
    assert sorted(live.world.ran("unlock")) == NODES
    assert [d["message"] for k, d in live.events if k == "warning" and "lock" in d["message"]] == []


def test_host_key_refused_in_preflight_is_its_own_exit_code(live):
    before = live.world.states()
    live.world.fail("node5", "host-key")
    with pytest.raises(HostKeyError) as err:
        live.rollout(2)
    assert err.value.exit_code == ExitCode.HOST_KEY == 10
    assert str(err.value) == ("rollout refused in preflight, nothing changed: node5: host key mismatch at "
                              "127.0.0.1:2205: got ssh-ed25519 SHA256:evil, pinned SHA256:good; refusing to connect")
    assert live.world.states() == before


def test_probe_refused_in_preflight(live):
    before, since = live.world.states(), len(live.journal())
    live.world.fail("node3", "probe")
    with pytest.raises(DeployctlError) as err:
        live.rollout(2)
    assert type(err.value) is DeployctlError and err.value.exit_code == ExitCode.FAILED
    assert str(err.value) == ("rollout refused in preflight, nothing changed: node3 failed in preflight: "
                              f"{ff.FAULTS['probe']}")
    assert_refused_nothing_changed(live, before, since)


def test_a_bad_probe_answer_in_the_preview_names_the_node(live, monkeypatch):
    monkeypatch.setattr(live.world["node3"], "probe_text", lambda: "root yes\ncurrent \nhalted no\nfree lots\n")
    with pytest.raises(NodeAnswerError) as err:
        rollout_mod.preview(live.ctx, live.artifacts[2].path)
    assert str(err.value) == "plan: bad answer from node3: probe: free should be a number of bytes"


def test_halted_node_refuses_rollout_with_the_halted_code(live):
    live.world["node3"].halted, live.world["node3"].gate = True, "closed"
    before, since = live.world.states(), len(live.journal())
    with pytest.raises(HaltedError) as err:
        live.rollout(2)
    assert err.value.exit_code == ExitCode.HALTED == 7
    assert str(err.value) == ("rollout aborted, fleet halted: node3 failed in preflight: node is halted "
                              "(run `deployctl resume` first); gate stays closed")
    assert_refused_nothing_changed(live, before, since)


def test_node_short_of_disk_refuses_rollout(live):
    live.world["node3"].free = 10 * 2**20
    before, since = live.world.states(), len(live.journal())
    with pytest.raises(DeployctlError) as err:
        live.rollout(2)
    assert type(err.value) is DeployctlError
    assert str(err.value) == ("rollout refused in preflight, nothing changed: node3 failed in preflight: "
                              "only 10 MiB free, need 64 MiB")
    assert_refused_nothing_changed(live, before, since)


def test_every_unfit_node_is_named(live):
    live.world["node2"].free = 0
    live.world.fail("node6", "probe")
    with pytest.raises(DeployctlError):
        live.rollout(2)
    assert live.journal()[-1]["failures"] == [
        "node2 failed in preflight: only 0 MiB free, need 64 MiB",
        f"node6 failed in preflight: {ff.FAULTS['probe']}"]


# ---- close-gate and stage: nothing switched ----------------------------------------------------------------------

def test_close_gate_failure_rolls_back_before_any_upload(live):
    a, b = live.digest(0), live.digest(1)
    live.world["node3"].answers = False  # its router hangs: its gate cannot be closed
    since = len(live.journal())
    with pytest.raises(RolledBackError) as err:
        live.rollout(2)
    assert err.value.exit_code == ExitCode.ROLLED_BACK == 6
    assert str(err.value) == ("rollout failed: node3 failed in close-gate: router unreachable at 127.0.0.1:8103: "
                              "timed out; every node is back on its previous release, gate closed")
    assert live.world.states() == {**every_node(b, "closed", [a, b], nodes=OTHERS),
                                   "node3": every_node(b, "open", [a, b])["node3"]}
    assert live.phases(since) == FORWARD[:3] + [("rollout", "done", "rolled-back")]
    assert live.world.ran("step") == []


def test_stage_failure_rolls_back_and_no_node_switches(live):
    a, b, c = (live.digest(i) for i in range(3))
    live.world.fail("node3", "stage")
    since = len(live.journal())
    with pytest.raises(RolledBackError) as err:
        live.rollout(2)
    assert str(err.value) == (f"rollout failed: node3 failed in stage: {ff.FAULTS['stage']}; every node is back "
                              "on its previous release, gate closed")
    # The other nodes staged the release (unused); nobody switched; every gate closed.
    assert live.world.states() == {**every_node(b, "closed", [a, b, c], nodes=OTHERS),
                                   "node3": every_node(b, "closed", [a, b])["node3"]}
    assert live.world.ran("switch") == []
    assert live.world.ran("end") == OTHERS
    assert live.phases(since) == FORWARD[:4] + [("rollout", "done", "rolled-back")]
    done = live.journal()[-1]
    assert done["nodes"] == {**dict.fromkeys(OTHERS, "ok"), "node3": f"failed in stage: {ff.FAULTS['stage']}"}
    for n in NODES:
        assert plain(live.world[n].journal[-1]) == plain(done)


def test_a_mebibyte_of_agent_error_reaches_the_error_and_the_journals_clipped(live):
    """A hostile node's error text reaches the terminal and every journal as one short line."""
    huge = "\x1b[2J" + "x" * (1 << 20)
    live.world.fail("node3", "stage", huge)
    with pytest.raises(RolledBackError) as err:
        live.rollout(2)
    said = "?[2J" + "x" * (MAX_REASON - 4) + f"... [clipped, {len(huge)} characters in all]"
    assert str(err.value) == (f"rollout failed: node3 failed in stage: {said}; every node is back on its "
                              "previous release, gate closed")
    done = live.journal()[-1]
    assert done["failures"] == [f"node3 failed in stage: {said}"]
    assert done["nodes"]["node3"] == f"failed in stage: {said}"
    assert all(plain(live.world[n].journal[-1]) == plain(done) for n in NODES)


def test_node_that_pins_another_signing_key_refuses_the_artifact(live):
    live.world["node3"].signing_pub = "ab" * 32
    with pytest.raises(RolledBackError) as err:
        live.rollout(2)
    assert "node3 failed in stage: manifest signature does not verify with the pinned key;" in str(err.value)
    assert live.world.ran("switch") == []


# ---- switch, health, open-gate: revert ---------------------------------------------------------------------------

def assert_reverted(rig, since, failed_phase):
    a, b, c = (rig.digest(i) for i in range(3))
    assert rig.world.states() == every_node(b, "closed", [a, b, c])
    phases = [p for p in ("start", "preflight", "close-gate", "stage", "switch", "health", "open-gate")]
    expected = [("rollout", p, None) for p in phases[:phases.index(failed_phase) + 1]]
    assert rig.phases(since) == expected + [("rollout", "revert", None), ("rollout", "done", "rolled-back")]
    revert = rig.journal()[-2]
    assert revert["targets"] == dict.fromkeys(NODES, b)
    # Each node journaled its revert, naming what it went back from.
    for n in NODES:
        assert [plain(r) for r in rig.world[n].journal if r.get("phase") == "revert"] == [
            {"action": "rollout", "phase": "revert", "digest": b, "node": n, "previous": c}]


def test_switch_failure_reverts_every_node_to_its_previous_release(live):
    since = len(live.journal())
    live.world.fail("node3", "switch")
    with pytest.raises(RolledBackError) as err:
        live.rollout(2)
    assert err.value.exit_code == 6
    assert str(err.value) == (f"rollout failed: node3 failed in switch: {ff.FAULTS['switch']}; every node is back "
                              "on its previous release, gate closed")
    assert_reverted(live, since, "switch")
    assert live.journal()[-1]["nodes"] == {**dict.fromkeys(OTHERS, "ok"),
                                           "node3": f"failed in switch: {ff.FAULTS['switch']}"}


def test_health_failure_reverts(live):
    since = len(live.journal())
    live.world["node3"].crash_on.add(live.digest(2))  # the new router never comes up on node3
    with pytest.raises(RolledBackError) as err:
        live.rollout(2)
    assert str(err.value) == ("rollout failed: node3 failed in health: router not running at 127.0.0.1:8103: "
                              "connection refused; every node is back on its previous release, gate closed")
    assert_reverted(live, since, "health")


def test_open_gate_refused_reverts_with_every_gate_closed(live):
    since = len(live.journal())
    live.world.fail("node3", "gate-open")
    with pytest.raises(RolledBackError) as err:
        live.rollout(2)
    assert str(err.value) == (f"rollout failed: node3 failed in open-gate: HTTP 409: {ff.FAULTS['gate-open']}; "
                              "every node is back on its previous release, gate closed")
    assert_reverted(live, since, "open-gate")
    # All or none: the seven gates that opened were closed again before the revert.
    log = [(k, n, w) for k, n, w in live.world.log if k == "http" and w.startswith("gate-")]
    opens = [i for i, e in enumerate(log) if e[2] == "gate-open"]
    assert len(opens) == 8 and [e[2] for e in log[opens[-1] + 1:opens[-1] + 9]] == ["gate-close"] * 8


def test_failed_first_rollout_stops_the_service_it_started(rig):
    a = rig.digest(0)
    rig.world.fail("node3", "switch")
    with pytest.raises(RolledBackError):
        rig.rollout(0)
    # There was no release to go back to: the routers are stopped and `current` is removed, so that
    # nothing (a reboot, supervisord) starts the failed release again.
    assert rig.world.states() == every_node(None, "closed", [a], running=None)
    assert rig.world.ran("stop") == NODES
    assert [r["phase"] for r in rig.world["node1"].journal if r.get("phase") == "revert"] == ["revert"]


def test_failed_revert_is_inconsistent_and_recover_repairs_it(live):
    a, b, c = (live.digest(i) for i in range(3))
    live.world.fail("node3", "switch")
    live.world.fail("node5", "revert")
    with pytest.raises(InconsistentError) as err:
        live.rollout(2)
    assert err.value.exit_code == ExitCode.INCONSISTENT == 9
    assert str(err.value) == (f"rollout failed: node3 failed in switch: {ff.FAULTS['switch']}; node5 failed in "
                              f"revert: {ff.FAULTS['revert']}; the fleet may be mixed, gate closed: "
                              "run `deployctl recover`")
    states = live.world.states()
    assert states["node5"] == {"current": b, "running": None, "gate": "closed", "halted": False,
                               "releases": sorted([a, b, c])}
    assert {n: s for n, s in states.items() if n != "node5"} == every_node(b, "closed", [a, b, c],
                                                                      nodes=[n for n in NODES if n != "node5"])
    assert live.journal()[-1]["outcome"] == "inconsistent"
    assert guards.interrupted(live.ctx) is None  # the run finished (inconsistent), it was not interrupted
    # recover: the last good release (b) is on every node; node5's router starts again; gate stays closed.
    del live.world["node5"].faults["revert"], live.world["node3"].faults["switch"]
    result = rollback_mod.recover(live.ctx)
    assert result.state.target == b and result.gate_open is False
    assert live.world.states() == every_node(b, "closed", [a, b, c])


# ---- halt between phases -------------------------------------------------------------------------------------------

def halt_at(rig, phase, status="done"):
    rig.at(phase, lambda: control.halt(rig.ctx), status)


def test_halt_before_switch_aborts_with_nothing_switched(live):
    a, b, c = (live.digest(i) for i in range(3))
    halt_at(live, "stage")
    since = len(live.journal())
    with pytest.raises(HaltedError) as err:
        live.rollout(2)
    assert err.value.exit_code == 7
    assert str(err.value) == ("rollout aborted, fleet halted: fleet failed in switch: halted while the rollout "
                              "ran; gate stays closed")
    assert live.world.states() == every_node(b, "closed", [a, b, c], halted=True)
    assert live.world.ran("switch") == []
    assert live.phases(since) == FORWARD[:4] + [("halt", None, "ok"), ("rollout", "done", "rolled-back")]


@pytest.mark.parametrize("after, aborted_in", [("switch", "health"), ("health", "open-gate")])
def test_halt_after_switch_reverts_the_fleet(live, after, aborted_in):
    a, b, c = (live.digest(i) for i in range(3))
    halt_at(live, after)
    with pytest.raises(HaltedError) as err:
        live.rollout(2)
    assert str(err.value) == (f"rollout aborted, fleet halted: fleet failed in {aborted_in}: halted while the "
                              "rollout ran; gate stays closed")
    assert live.world.states() == every_node(b, "closed", [a, b, c], halted=True)
    assert live.journal()[-2]["targets"] == dict.fromkeys(NODES, b)


def test_halt_during_rollout_with_a_failed_revert_is_inconsistent(live):
    halt_at(live, "switch")
    live.world.fail("node2", "revert")
    with pytest.raises(InconsistentError) as err:
        live.rollout(2)
    assert str(err.value) == ("rollout failed: fleet failed in health: halted while the rollout ran; node2 failed "
                              f"in revert: {ff.FAULTS['revert']}; the fleet may be mixed, gate closed: "
                              "run `deployctl recover`")


# ---- the deploy lock ------------------------------------------------------------------------------------------------

def test_rollout_refused_while_the_lock_is_held(live):
    live.ctx.lock.path.write_text(json.dumps({"holder": actor(), "pid": 1, "since": 0.0, "command": "rollout x"}))
    before, journal = live.world.states(), live.ctx.state.journal.read_bytes()
    connects = len(live.world.connects)
    for attempt in (lambda: live.rollout(2), lambda: rollback_mod.rollback(live.ctx)):
        with pytest.raises(LockHeldError) as err:
            attempt()
        assert err.value.exit_code == ExitCode.LOCKED == 5
        assert str(err.value) == live.ctx.lock.info().describe()
        assert str(err.value).startswith(f"deploy lock held: {actor()} (pid 1) running 'rollout x' since ")
    assert live.world.states() == before
    assert live.ctx.state.journal.read_bytes() == journal
    assert len(live.world.connects) == connects
    assert live.ctx.lock.info().pid == 1  # not ours to release


def test_stale_lock_needs_break_lock(live):
    dead = subprocess.Popen(["true"])
    dead.wait()
    live.ctx.lock.path.write_text(json.dumps({"holder": actor(), "pid": dead.pid, "since": 0.0, "command": "x"}))
    with pytest.raises(LockHeldError) as err:
        live.rollout(2)
    assert str(err.value).endswith("(use --break-lock to take it over)")
    assert live.rollout(2, break_lock=True).gate_open is True
    assert [r["action"] for r in live.journal()].count("lock-broken") == 1


def test_artifact_signed_by_another_key_is_refused_before_any_connection(live, tmp_path):
    other = ff.make_rig(tmp_path / "other", versions=("9.0.0",))
    with pytest.raises(ArtifactError):
        rollout_mod.rollout(live.ctx, other.artifacts[0].path)
    assert len(live.world.connects) == 2
