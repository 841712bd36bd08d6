"""The rollout's overall deadline (playbook timeouts.rollout) on the in-memory fleet (fakefleet.py).

The run's clock is the controller's monotonic clock; these tests replace run.py's `time` with a clock
that a phase hook moves forward, so no test depends on how fast this machine is.
"""

from __future__ import annotations

import dataclasses
import time
import types

import fakefleet as ff
import pytest
from fakefleet import NODES

from deployctl.config.playbook import load_playbook
from deployctl.errors import ConfigError, RolledBackError
from deployctl.ops import rollback as rollback_mod
from deployctl.ops import rollout as rollout_mod
from deployctl.ops import run as run_mod

DEADLINE = 30.0


class Clock:
    """A monotonic clock that stands still until a test moves it."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


@pytest.fixture
def live(live, monkeypatch) -> ff.Rig:
    """conftest's `live` (every node on release 1, release 0 kept, gates open) with a 30 s rollout deadline,
    on a test clock."""
    timeouts = dataclasses.replace(live.ctx.playbook.timeouts, rollout=DEADLINE)
    live.ctx.playbook = dataclasses.replace(live.ctx.playbook, timeouts=timeouts)
    live.clock = Clock()
    monkeypatch.setattr(run_mod, "time", types.SimpleNamespace(monotonic=live.clock.monotonic, time=time.time,
                                                               sleep=time.sleep))
    return live


def late(rig: ff.Rig, phase: str, seconds: float, status: str = "start") -> None:
    """When `phase` reaches `status`, the clock jumps `seconds` ahead (the phase took that long)."""
    rig.at(phase, lambda: setattr(rig.clock, "now", rig.clock.now + seconds), status)


def states(rig: ff.Rig, digest: str, gate: str) -> dict:
    return ff.every_node(digest, gate, [rig.digest(i) for i in range(3)])


def last_run(rig: ff.Rig) -> list[str]:
    """The phases the controller journaled for the last run."""
    run = rig.journal()[-1]["run"]
    return [r["phase"] for r in rig.journal() if r.get("run") == run]


def done(rig: ff.Rig) -> dict:
    return rig.journal()[-1]


def test_a_deadline_passed_during_stage_stops_before_the_switch_and_nothing_switches(live):
    b = live.digest(1)
    late(live, "stage", DEADLINE + 1)
    with pytest.raises(RolledBackError) as err:
        rollout_mod.rollout(live.ctx, live.artifacts[2].path)
    assert str(err.value) == ("rollout failed: fleet failed in switch: the rollout deadline of 30 s (playbook "
                              "timeouts.rollout) passed; every node is back on its previous release, gate closed")
    assert err.value.exit_code == 6
    assert live.world.ran("switch") == []
    assert live.world.states() == states(live, b, "closed")
    assert last_run(live) == ["start", "preflight", "close-gate", "stage", "done"]
    rec = done(live)
    assert (rec["phase"], rec["outcome"]) == ("done", "rolled-back")
    assert rec["failures"] == [
        "fleet failed in switch: the rollout deadline of 30 s (playbook timeouts.rollout) passed"]


def test_a_deadline_passed_during_health_reverts_every_node_journaled(live):
    b = live.digest(1)
    late(live, "health", DEADLINE)
    with pytest.raises(RolledBackError) as err:
        rollout_mod.rollout(live.ctx, live.artifacts[2].path)
    assert str(err.value).startswith("rollout failed: fleet failed in open-gate: the rollout deadline of 30 s")
    assert live.world.states() == states(live, b, "closed")
    assert last_run(live) == ["start", "preflight", "close-gate", "stage", "switch", "health", "revert", "done"]
    rec = done(live)
    assert rec["outcome"] == "rolled-back" and rec["previous"] == dict.fromkeys(NODES, b)
    assert live.journal()[-2]["targets"] == dict.fromkeys(NODES, b)


def test_a_phase_that_fails_after_the_deadline_names_the_deadline_first_and_the_nodes_it_waited_on(live):
    b = live.digest(1)
    late(live, "stage", DEADLINE + 5)
    live.world.fail("node3", "stage")
    with pytest.raises(RolledBackError) as err:
        rollout_mod.rollout(live.ctx, live.artifacts[2].path)
    assert str(err.value) == ("rollout failed: fleet failed in stage: the rollout deadline of 30 s (playbook "
                              "timeouts.rollout) passed waiting on node3; every node is back on its previous "
                              "release, gate closed")
    assert done(live)["failures"] == [
        "fleet failed in stage: the rollout deadline of 30 s (playbook timeouts.rollout) passed waiting on node3",
        f"node3 failed in stage: {ff.FAULTS['stage']}"]
    assert live.world.states()["node1"]["current"] == b


def test_a_rollout_within_its_deadline_succeeds(live):
    c = live.digest(2)
    late(live, "health", DEADLINE - 1)
    rollout_mod.rollout(live.ctx, live.artifacts[2].path)
    assert live.world.states() == states(live, c, "open")


def test_each_step_gets_at_most_what_is_left_of_the_deadline(live, monkeypatch):
    seen: list[tuple[str, float]] = []
    step, exchange, finish = ff.FakeFleet.step, ff.FakeFleet.exchange, ff.FakeFleet.finish

    def spy_step(self, data, timeout=60.0, progress=None):
        seen.append(("step", timeout))
        return step(self, data, timeout, progress)

    def spy_exchange(self, data, reply, timeout=60.0, progress=None):
        seen.append(("exchange", timeout))
        return exchange(self, data, reply, timeout, progress)

    def spy_finish(self, lines, timeout=60.0):
        seen.append(("finish", timeout))
        return finish(self, lines, timeout)

    monkeypatch.setattr(ff.FakeFleet, "step", spy_step)
    monkeypatch.setattr(ff.FakeFleet, "exchange", spy_exchange)
    monkeypatch.setattr(ff.FakeFleet, "finish", spy_finish)
    late(live, "stage", 25)  # 5 s of the 30 left: less than the 60 s step timeout
    rollout_mod.rollout(live.ctx, live.artifacts[2].path)
    assert seen == [("exchange", 5.0), ("finish", 5.0)]


def test_a_rollback_has_no_deadline(live):
    a, b = live.digest(0), live.digest(1)
    late(live, "switch", DEADLINE * 10)
    rollback_mod.rollback(live.ctx)
    assert live.world.states() == {n: {**s, "releases": sorted([a, b])} for n, s in states(live, a, "open").items()}


def test_the_playbook_sets_the_deadline_and_refuses_a_bad_one(tmp_path):
    from pathlib import Path

    real = Path(__file__).resolve().parents[3] / "playbooks" / "router.yaml"
    assert load_playbook(real).timeouts.rollout == 600.0
    text = real.read_text().replace("  rollout: 600 ", "  rollout: 45 ")
    (tmp_path / "a.yaml").write_text(text)
    assert load_playbook(tmp_path / "a.yaml").timeouts.rollout == 45.0
    for bad, problem in (("0", "should be greater than 0"), ("soon", "should be a number"),
                         (".inf", "should be a finite number")):
        (tmp_path / "b.yaml").write_text(text.replace("  rollout: 45 ", f"  rollout: {bad} "))
        with pytest.raises(ConfigError) as err:
            load_playbook(tmp_path / "b.yaml")
        assert str(err.value) == f"b.yaml: timeouts/rollout: {problem}"


def test_exchange_bounds_both_steps_by_one_timeout(tmp_path):
    """SSHFleet.exchange's second step gets what is left of the timeout, not the whole of it again."""
    from deployctl.remote import ssh

    seen = []

    def step_one(name, call, progress=None):
        seen.append(call.timeout)
        time.sleep(0.3)
        return 0, b"line\n", b""

    with ssh.SSHFleet([ssh.Target("node1", "127.0.0.1", 1, "root")], tmp_path / "k", tmp_path / "kh") as fleet:
        fleet._step_one = step_one
        res = fleet.exchange({"node1": b""}, lambda n, line: b"next\n", timeout=1.0)
    first, second = res["node1"]
    assert first.ok and second is not None and second.ok
    assert seen[0] == 1.0
    assert 0 < seen[1] <= 0.75
