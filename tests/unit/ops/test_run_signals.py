"""SIGINT, SIGTERM and SIGHUP sent to the controller in each phase, on the in-memory fleet (fakefleet.py).

The signal is raised in this very process (the run's walk catches it in the main thread) when a phase
starts; the run must stop at the end of that phase, revert whatever may have switched, journal which
signal stopped it, and raise; a second signal changes nothing; a rollback goes on to its end.
"""

from __future__ import annotations

import signal

import fakefleet as ff
import pytest
from fakefleet import NODES, every_node

from deployctl.errors import DeployctlError, ExitCode, RolledBackError
from deployctl.ops import guards, run
from deployctl.ops import rollback as rollback_mod
from deployctl.ops import rollout as rollout_mod

BEFORE_SWITCH = ["preflight", "close-gate", "stage"]
AFTER_SWITCH = ["switch", "health", "open-gate"]
SIGNALS = ["SIGINT", "SIGTERM", "SIGHUP"]


def send_at(rig: ff.Rig, phase: str, *names: str) -> None:
    """Raise each signal in this process when `phase` starts (as `kill` or Ctrl-C would, from outside)."""
    rig.at(phase, lambda: [signal.raise_signal(signal.Signals[n]) for n in names], status="start")


def warnings(rig: ff.Rig) -> list[str]:
    return [d["message"] for k, d in rig.events if k == "warning"]


@pytest.mark.parametrize("sig", SIGNALS)
@pytest.mark.parametrize("phase", BEFORE_SWITCH)
def test_a_signal_before_the_switch_stops_the_rollout_and_no_node_switches(live, phase, sig):
    a, b, c = (live.digest(i) for i in range(3))
    send_at(live, phase, sig)
    since = len(live.journal())
    with pytest.raises(DeployctlError) as err:
        rollout_mod.rollout(live.ctx, live.artifacts[2].path)
    assert type(err.value) is DeployctlError and err.value.exit_code == ExitCode.FAILED
    gates = "gates untouched" if phase == "preflight" else "gate closed"
    assert str(err.value) == (f"rollout stopped by {sig} during {phase}: no node switched, every node is on its "
                              f"previous release, {gates}")
    staged = [a, b, c] if phase == "stage" else [a, b]
    assert live.world.states() == every_node(b, "open" if phase == "preflight" else "closed", staged)
    assert live.world.ran("switch") == []
    recs = live.journal()[since:]
    upto = ["start", "preflight", "close-gate", "stage"][:["start", *BEFORE_SWITCH].index(phase) + 1]
    assert [r["phase"] for r in recs] == upto + ["done"]  # nothing after the phase the signal came in
    done = recs[-1]
    assert done["outcome"] == ("refused" if phase == "preflight" else "rolled-back")
    assert done["failures"] == [f"controller failed in {phase}: stopped by {sig}"]
    assert done["signals"] == [f"{sig} during {phase}"]
    assert f"{sig} received during {phase}: stopping after this phase" in warnings(live)
    assert guards.interrupted(live.ctx) is None and not live.ctx.lock.path.exists()


@pytest.mark.parametrize("sig", SIGNALS)
@pytest.mark.parametrize("phase", AFTER_SWITCH)
def test_a_signal_after_the_switch_reverts_the_whole_fleet(live, phase, sig):
    a, b, c = (live.digest(i) for i in range(3))
    send_at(live, phase, sig)
    since = len(live.journal())
    with pytest.raises(RolledBackError) as err:
        rollout_mod.rollout(live.ctx, live.artifacts[2].path)
    assert err.value.exit_code == ExitCode.ROLLED_BACK
    assert str(err.value) == (f"rollout stopped by {sig} during {phase}: every node is back on its previous "
                              "release, gate closed")
    assert live.world.states() == every_node(b, "closed", [a, b, c])
    recs = live.journal()[since:]
    forward = ["start", "preflight", "close-gate", "stage", "switch", "health", "open-gate"]
    assert [r["phase"] for r in recs] == forward[:forward.index(phase) + 1] + ["revert", "done"]
    assert recs[-2]["targets"] == dict.fromkeys(NODES, b) and recs[-2]["signals"] == [sig]
    assert recs[-1]["outcome"] == "rolled-back"
    assert recs[-1]["failures"] == [f"controller failed in {phase}: stopped by {sig}"]
    assert guards.interrupted(live.ctx) is None and not live.ctx.lock.path.exists()


def test_ctrl_c_twice_and_again_during_the_revert_still_reverts_the_whole_fleet(live):
    a, b, c = (live.digest(i) for i in range(3))
    send_at(live, "health", "SIGINT", "SIGINT")
    send_at(live, "revert", "SIGINT")
    with pytest.raises(RolledBackError) as err:
        rollout_mod.rollout(live.ctx, live.artifacts[2].path)
    assert str(err.value).startswith("rollout stopped by SIGINT during health: ")
    assert live.world.states() == every_node(b, "closed", [a, b, c])
    assert live.journal()[-1]["signals"] == ["SIGINT during health"] * 2 + ["SIGINT during revert"]
    assert warnings(live) == ["SIGINT received during health: stopping after this phase"] * 2 + [
        "SIGINT received during revert: the revert goes on to its end"]


def test_a_signal_during_a_rollback_lets_it_finish_the_way_back(three):
    a, b, c = (three.digest(i) for i in range(3))
    send_at(three, "switch", "SIGTERM")
    result = rollback_mod.rollback(three.ctx)
    assert result.state.phase.value == "done" and result.gate_open
    assert three.world.states() == every_node(b, "open", [a, b, c])
    assert three.journal()[-1]["signals"] == ["SIGTERM during switch"]
    assert "SIGTERM received during switch: the rollback goes on to its end" in warnings(three)


def test_the_signal_handlers_are_put_back_after_the_run(live):
    before = {s: signal.getsignal(s) for s in run.STOP_SIGNALS}
    send_at(live, "stage", "SIGHUP")
    with pytest.raises(DeployctlError):
        rollout_mod.rollout(live.ctx, live.artifacts[2].path)
    assert {s: signal.getsignal(s) for s in run.STOP_SIGNALS} == before


def test_the_pause_hook_holds_a_run_at_the_start_of_the_phase_it_names(live, tmp_path, monkeypatch):
    import threading
    import time

    marker = tmp_path / "paused"
    monkeypatch.setenv(run.PAUSE_FILE, str(marker))
    monkeypatch.setenv(run.PAUSE_AT, "close-gate,switch")
    seen = []

    def release_each() -> None:
        for _ in range(2):
            end = time.monotonic() + 30
            while not marker.exists() and time.monotonic() < end:
                time.sleep(0.01)
            seen.append((marker.read_text(), live.journal()[-1]["phase"], live.world.ran("switch")))
            marker.unlink()

    t = threading.Thread(target=release_each)
    t.start()
    rollout_mod.rollout(live.ctx, live.artifacts[2].path)
    t.join(30)
    # Paused after the phase was journaled and before it ran: no node had switched while held at switch.
    assert seen == [("close-gate", "close-gate", []), ("switch", "switch", [])]
    assert not marker.exists()
