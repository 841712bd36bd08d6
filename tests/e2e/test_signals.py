"""Signals and halts that reach `deployctl rollout` (a real process) in a known phase, on the real nodes.

The rollout runs with the DEPLOYCTL_TEST_PAUSE hook (run.py): it writes the phase's name to a file
when the phase starts (journaled, not yet run) and waits until the file is removed, so each test
acts in the phase it names, without sleeps. Every test runs under the observer (no two open gates
on different releases, the journal only grows).
"""

from __future__ import annotations

import itertools
import os
import signal
import subprocess

import pytest
from helpers import DCTL, ROOT, fleet_view, journal_size, wait

from deployctl import api
from deployctl.errors import ExitCode
from deployctl.remote import routers

# Each phase with one signal; together every signal twice (the fake-fleet tests cover every pair).
CASES = [("preflight", "SIGTERM"), ("close-gate", "SIGINT"), ("stage", "SIGHUP"),
         ("switch", "SIGTERM"), ("health", "SIGINT"), ("open-gate", "SIGHUP")]
FORWARD = ["start", "preflight", "close-gate", "stage", "switch", "health", "open-gate"]


pytestmark = pytest.mark.usefixtures("under_observer")


_RUNS = itertools.count()


class Paused:
    """A CLI process (`deployctl -q <args>`) that pauses at the start of each phase in `at`."""

    def __init__(self, ctx, tmp_path, at: list[str], *args: str):
        # Each run has its own marker: a killed run's last phase name must not be read as this one's.
        self.marker = tmp_path / f"paused-{next(_RUNS)}"
        env = {**os.environ, "DEPLOYCTL_STATE": str(ctx.state_dir), "DEPLOYCTL_TEST_PAUSE": str(self.marker),
               "DEPLOYCTL_TEST_PAUSE_AT": ",".join(at)}
        self.proc = subprocess.Popen([DCTL, "-q", *args], cwd=ROOT, env=env, text=True,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def wait_for(self, phase: str, seconds: float = 60) -> None:
        """Wait until the run is paused at the start of `phase`."""
        def there() -> bool:
            try:
                return self.marker.read_text() == phase
            except FileNotFoundError:
                return False
        assert wait(lambda: there() or self.proc.poll() is not None, seconds) and there(), \
            f"the run never paused at {phase}: {self.proc.poll()} {self.proc.stderr.read() if self.proc.poll() else ''}"

    def go_on(self) -> None:
        self.marker.unlink()

    def send(self, name: str) -> None:
        self.proc.send_signal(signal.Signals[name])

    def end(self, seconds: float = 90) -> tuple[int, str]:
        try:
            _, err = self.proc.communicate(timeout=seconds)
        finally:
            self.proc.kill()
        return self.proc.returncode, err


def run_records(ctx, offset: int, action: str = "rollout") -> list[dict]:
    import json
    recs = [json.loads(line) for line in ctx.journal.path.read_bytes()[offset:].splitlines() if line.strip()]
    return [r for r in recs if r.get("action") == action]


@pytest.mark.parametrize("phase, sig", CASES)
def test_a_signal_in_each_phase_stops_the_rollout_reverts_and_journals_it(ctx, base_release, make_release, tmp_path,
                                                                           phase, sig):
    """A rollout signalled in a phase stops at its end, reverts if it switched, journals the signal, exits non-zero."""
    art = make_release("11.3.0")
    offset = journal_size(ctx)
    run = Paused(ctx, tmp_path, [phase], "rollout", str(art.path))
    run.wait_for(phase)
    run.send(sig)
    run.go_on()
    code, err = run.end()

    switched = phase in ("switch", "health", "open-gate")
    assert code == (ExitCode.ROLLED_BACK if switched else ExitCode.FAILED), err
    what = (f"deployctl: error: rollout stopped by {sig} during {phase}: " + (
        "every node is back on its previous release, gate closed" if switched else
        "no node switched, every node is on its previous release, "
        + ("gates untouched" if phase == "preflight" else "gate closed")))
    assert err == what + "\n"
    gate_state = "open" if phase == "preflight" else "closed"
    assert fleet_view(ctx) == {n.name: (base_release.digest, base_release.digest, gate_state, False)
                               for n in ctx.nodes}
    recs = run_records(ctx, offset)
    upto = FORWARD[:FORWARD.index(phase) + 1]
    assert [r["phase"] for r in recs] == upto + (["revert"] if switched else []) + ["done"]
    done = recs[-1]
    assert done["failures"] == [f"controller failed in {phase}: stopped by {sig}"]
    assert done["signals"] == [f"{sig} during {phase}"]
    assert done["outcome"] == ("refused" if phase == "preflight" else "rolled-back")
    assert api.interrupted(ctx) is None and not ctx.lock.path.exists()


def test_ctrl_c_twice_then_again_during_the_revert_leaves_one_release_gate_closed(ctx, base_release, make_release,
                                                                               tmp_path, observer):
    """A second Ctrl-C (and a third, during the revert) never leaves a mixed fleet with an open gate."""
    art = make_release("11.4.0")
    offset = journal_size(ctx)
    run = Paused(ctx, tmp_path, ["open-gate", "revert"], "rollout", str(art.path))
    run.wait_for("open-gate")
    run.send("SIGINT")
    run.send("SIGINT")
    run.go_on()  # the gates open on the new release, then the run stops and reverts
    run.wait_for("revert")
    run.send("SIGINT")
    run.go_on()
    code, err = run.end()
    assert code == ExitCode.ROLLED_BACK, err
    assert err == ("deployctl: error: rollout stopped by SIGINT during open-gate: every node is back on its previous "
                   "release, gate closed\n")
    assert fleet_view(ctx) == {n.name: (base_release.digest, base_release.digest, "closed", False) for n in ctx.nodes}
    # Two signals sent back to back may reach Python as one (pending signals do not queue): one or two.
    got = run_records(ctx, offset)[-1]["signals"]
    assert got in (["SIGINT during open-gate"] * n + ["SIGINT during revert"] for n in (1, 2)), got
    assert observer.sweeps > 0 and not observer.mixed_open


# ---- 4: halt in every phase after the switch; halt and resume racing with recover ------------------------

@pytest.mark.parametrize("phase", ["switch", "health", "open-gate"])
def test_a_halt_in_a_phase_after_the_switch_reverts_and_leaves_the_fleet_halted(ctx, base_release, make_release,
                                                                              tmp_path, phase):
    """FAULTS 26 in switch, health and open-gate: the run reverts, exits 7, every node halted on the old release."""
    art = make_release("11.5.0")
    offset = journal_size(ctx)
    run = Paused(ctx, tmp_path, [phase], "rollout", str(art.path))
    run.wait_for(phase)
    halted = api.halt(ctx)
    run.go_on()
    code, err = run.end()
    # A router restarting by the switch is halted on disk and comes up halted.
    assert all(h in ("halted", "halted on disk (router not answering)") for h in halted.values()), halted
    assert code == ExitCode.HALTED, err
    assert err.startswith("deployctl: error: rollout aborted, fleet halted: ") and err.count("\n") == 1, err
    assert err.endswith("gate stays closed\n"), err
    assert fleet_view(ctx) == {n.name: (base_release.digest, base_release.digest, "closed", True) for n in ctx.nodes}
    recs = run_records(ctx, offset)
    assert [r["phase"] for r in recs][-2:] == ["revert", "done"] and recs[-1]["outcome"] == "rolled-back"
    assert api.interrupted(ctx) is None and not ctx.lock.path.exists()


def _interrupted_rollout(ctx, art, tmp_path) -> None:
    """A rollout SIGKILLed after its switch: the journal shows it interrupted, the nodes run `art`."""
    run = Paused(ctx, tmp_path, ["health"], "rollout", str(art.path))
    run.wait_for("health")
    run.proc.kill()
    run.end()
    assert api.interrupted(ctx)


@pytest.mark.parametrize("racer", ["halt", "resume"])
def test_halt_or_resume_racing_with_recover(ctx, base_release, make_release, tmp_path, racer):
    """recover is the way back: a halt during it leaves the fleet halted, on one release, gate closed; a
    resume during it is refused while the fleet is mixed or lifts nothing that opens a gate."""
    _interrupted_rollout(ctx, make_release("11.6.0"), tmp_path)
    if racer == "resume":
        api.halt(ctx)
    offset = journal_size(ctx)
    rec = Paused(ctx, tmp_path, ["health"], "recover")
    rec.wait_for("health")  # every node switched back, routers restarting
    raced = subprocess.run([DCTL, "-q", racer], cwd=ROOT, env={**os.environ, "DEPLOYCTL_STATE": str(ctx.state_dir)},
                           capture_output=True, text=True, timeout=60)
    rec.go_on()
    code, err = rec.end()
    assert code == 0, err
    view = fleet_view(ctx)
    assert {v[:3] for v in view.values()} == {(base_release.digest, base_release.digest, "closed")}
    if racer == "halt":
        assert raced.returncode == 0, raced.stderr
        assert all(v[3] is True for v in view.values())
    else:
        # resume verifies first: it passes only if every node already runs one release; either way no gate opens.
        assert raced.returncode in (0, ExitCode.MISMATCH, ExitCode.UNREACHABLE), raced.stderr
        if raced.returncode == 0:
            assert not any(v[3] for v in view.values()), view
    recs = run_records(ctx, offset, "recover")
    assert recs[-1]["phase"] == "done" and recs[-1]["outcome"] == "ok"
    assert api.interrupted(ctx) is None
    assert all(a.body.get("gate") == "closed" for a in routers.health(ctx.nodes).values())
