"""The fleet deploy lock (issue 9 item 5): taken on the nodes by the rollout's and rollback's one command
per node, so two controllers with different state folders cannot both move the same fleet.

The controller side, on the fake fleet; the node side (the real agent as a process) is
tests/process/node/test_agent_lock.py.
"""

from __future__ import annotations

import os
import shutil
import time
import types
import uuid

import fakefleet as ff
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from deployctl.errors import ExitCode, LockHeldError, RolledBackError
from deployctl.ops import guards
from deployctl.ops import rollback as rollback_mod
from deployctl.ops import rollout as rollout_mod
from deployctl.state import journal
from deployctl.state.journal import Journal, actor


def lock(lock_id="L1", holder="alice@ctl-a", pid=111, **extra):
    return {"holder": holder, "pid": pid, "since": 1_800_000_000.0, "command": "rollout abc", "id": lock_id, **extra}


def someone_else(i=1):
    return lock("theirs", holder="carol@other-controller", pid=4242 + i)


class Clock:
    """guards' monotonic clock: a sleep moves it on at once, so a run waits out its whole LOCK_PATIENCE in
    no time. Wall-clock time (the fleet lock's `since`) is the real one."""

    START = 1000.0
    time = staticmethod(time.time)

    def __init__(self) -> None:
        self.now = self.START

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds

    @property
    def waited(self) -> float:
        return self.now - self.START


@pytest.fixture
def clock(monkeypatch) -> Clock:
    clock = Clock()
    monkeypatch.setattr(guards, "time", clock)
    return clock


def test_a_rollout_refused_by_one_node_lock_exits_5_naming_holder_and_host_and_releases_the_rest(one, clock):
    rig = one
    before = rig.world.states()
    rig.world["node5"].lock = someone_else()
    with pytest.raises(LockHeldError) as info:
        rollout_mod.rollout(rig.ctx, rig.artifacts[1].path)
    assert info.value.exit_code == ExitCode.LOCKED
    assert str(info.value).startswith("rollout refused, nothing changed: node5: fleet deploy lock held by "
                                      "carol@other-controller (pid 4243)")
    assert rig.world.states() == before
    assert [n for n in rig.world.nodes if rig.world[n].lock] == ["node5"]  # the other seven let go on close
    assert rig.world["node5"].lock == someone_else()
    assert not rig.ctx.lock.path.exists()
    assert clock.waited >= guards.LOCK_PATIENCE  # node5 was asked again until the patience ran out


def test_two_controllers_with_their_own_state_folders_one_proceeds(one, tmp_path):
    rig = one
    shutil.copytree(rig.ctx.state_dir, tmp_path / "b")
    second = ff.Rig(rig.ctx.__class__(rig.ctx.inventory, rig.ctx.playbook, tmp_path / "b", connect=rig.ctx.connect,
                                      http=rig.ctx.http), rig.world, rig.artifacts, [])
    outcome = {}

    def second_rolls_out_during_the_first(kind, **data):
        if kind == "phase" and data == {"phase": "stage", "status": "start"} and "second" not in outcome:
            try:
                rollout_mod.rollout(second.ctx, rig.artifacts[2].path)
                outcome["second"] = "ran"
            except LockHeldError as exc:
                outcome["second"] = str(exc)

    rig.ctx.on_event = second_rolls_out_during_the_first
    rollout_mod.rollout(rig.ctx, rig.artifacts[1].path)
    assert outcome["second"].startswith(f"rollout refused, nothing changed: node1: fleet deploy lock held by {actor()}")
    assert {s["current"] for s in rig.world.states().values()} == {rig.artifacts[1].digest}
    assert all(rig.world[n].lock is None for n in rig.world.nodes)  # released at the end


def test_a_failed_rollout_releases_the_lock_on_every_node(one):
    rig = one
    rig.world.fail("node3", "switch")
    with pytest.raises(RolledBackError):
        rollout_mod.rollout(rig.ctx, rig.artifacts[1].path)
    assert all(rig.world[n].lock is None for n in rig.world.nodes)


def test_a_rollback_finding_the_lock_held_exits_5(live, clock):
    rig = live
    rig.world["node2"].lock = someone_else()
    with pytest.raises(LockHeldError, match="rollback preflight refused, nothing changed: node2: fleet deploy lock "
                                            "held by carol@other-controller"):
        rollback_mod.rollback(rig.ctx)
    assert {s["current"] for s in rig.world.states().values()} == {rig.artifacts[1].digest}
    rollback_mod.rollback(rig.ctx, break_lock=True)  # --break-lock: taken over, journaled on the node
    assert {s["current"] for s in rig.world.states().values()} == {rig.artifacts[0].digest}
    assert any(r.get("action") == "lock-broken" for r in rig.world["node2"].journal)
    assert all(rig.world[n].lock is None for n in rig.world.nodes)


def test_two_controllers_that_split_the_fleet_the_one_holding_the_first_node_proceeds(one, clock):
    """The loser took node5 first; refused by node1, it ends its commands (releasing node5), and the winner,
    which holds node1, asks node5 again."""
    rig = one
    node5 = rig.world["node5"]
    node5.lock = someone_else()
    tries = []
    real = node5.take_lock

    def loser_lets_go_after_one_refusal(lock):
        tries.append(lock["id"])
        try:
            real(lock)
        finally:
            node5.lock = None  # the loser closed its fleet: its command on node5 read end of input

    node5.take_lock = loser_lets_go_after_one_refusal
    rollout_mod.rollout(rig.ctx, rig.artifacts[1].path)
    assert len(tries) == 2 and tries[0] == tries[1]
    assert clock.waited == pytest.approx(0.2)  # asked again once, a moment later
    assert {s["current"] for s in rig.world.states().values()} == {rig.artifacts[1].digest}


def test_a_rollout_refused_by_the_first_node_does_not_wait(rig, clock):
    rig.world["node1"].lock = someone_else()
    with pytest.raises(LockHeldError, match="node1: fleet deploy lock held by carol@other-controller"):
        rollout_mod.rollout(rig.ctx, rig.artifacts[0].path)
    assert clock.waited == 0


def test_a_node_left_holding_the_lock_of_a_finished_run_does_not_block_the_next(one, clock):
    """A node that could not be reached when a run ended (killed, restarted) keeps that run's lock. The
    controller's journal shows the run finished, so the next run replaces it (journaled on the node) at
    once; a lock whose run the journal does not show finished is still refused, once the run has asked
    that node again for its whole LOCK_PATIENCE (the test clock's sleeps take no time)."""
    rig = one
    start = next(r for r in reversed(rig.journal()) if r.get("phase") == "start")
    stale = {"holder": actor(), "pid": os.getpid(), "since": 1.0, "command": "rollout x", "id": start["fleet_lock"]}
    rig.world["node5"].lock = dict(stale)
    rollout_mod.rollout(rig.ctx, rig.artifacts[1].path)
    assert {s["current"] for s in rig.world.states().values()} == {rig.artifacts[1].digest}
    taker = next(r for r in reversed(rig.journal()) if r.get("phase") == "start")["fleet_lock"]
    assert [(r["broken"], r["by"]["id"]) for r in rig.world["node5"].journal if r["action"] == "lock-broken"] == [
        (stale, taker)]
    assert guards.finished_fleet_locks(rig.ctx)[-2] == start["fleet_lock"]
    assert clock.waited == 0
    rig.world["node5"].lock = dict(stale, id="not-a-finished-run")
    with pytest.raises(LockHeldError, match="^rollout refused, nothing changed: node5: fleet deploy lock held by "):
        rollout_mod.rollout(rig.ctx, rig.artifacts[2].path)
    assert guards.LOCK_PATIENCE <= clock.waited < guards.LOCK_PATIENCE + 0.5
    assert rig.world["node5"].lock["id"] == "not-a-finished-run"


def test_recover_takes_over_a_node_lock_of_the_run_it_recovers_from_after_its_stale_lock_is_gone(one):
    """A first recover that failed (a node down) already broke the dead rollout's controller lock; the
    node that was down still holds the dead run's lock. The next recover replaces it: the journal shows
    that run's lock id and no `done` for it, and recover holds the controller lock, so the run is dead."""
    rig = one

    def die(kind, **data):
        if kind == "phase" and data == {"phase": "health", "status": "start"}:
            raise KeyboardInterrupt
    rig.ctx.on_event = die
    with pytest.raises(KeyboardInterrupt):
        rollout_mod.rollout(rig.ctx, rig.artifacts[1].path)
    rig.ctx.on_event = lambda kind, **data: None
    rig.ctx.lock.path.unlink(missing_ok=True)  # broken by the first recover
    start = next(r for r in reversed(rig.journal()) if r.get("phase") == "start")
    rig.world["node5"].lock = {"holder": actor(), "pid": 1, "since": 1.0, "command": "rollout x",
                               "id": start["fleet_lock"]}
    rollback_mod.recover(rig.ctx)
    assert {s["current"] for s in rig.world.states().values()} == {rig.artifacts[0].digest}
    assert rig.world["node5"].lock is None


def _finished_fleet_locks_reference(records: list[dict], last: int, dead: bool) -> list[str]:
    """finished_fleet_locks as it was when it read the whole journal, oldest first."""
    started: dict = {}
    done: list[str] = []
    for rec in records:
        if rec.get("phase") == "start" and isinstance(rec.get("fleet_lock"), str):
            started[rec.get("run")] = rec["fleet_lock"]
        elif rec.get("phase") == "done" and rec.get("run") in started:
            done.append(started.pop(rec.get("run")))
    return (done + (list(started.values()) if dead else []))[-last:]


@settings(max_examples=200, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(runs=st.lists(st.tuples(st.booleans(), st.booleans()), max_size=40), last=st.integers(1, 20),
       dead=st.booleans())
def test_finished_fleet_locks_names_the_same_locks_as_a_read_of_the_whole_journal(tmp_path, runs, last, dead):
    """Runs one after another (as the controller lock has them), each with or without a fleet lock,
    finished or not, and other records between them."""
    path = tmp_path / f"j-{uuid.uuid4().hex}.jsonl"
    records = []
    for i, (locked, finished) in enumerate(runs):
        records.append({"action": "rollout", "phase": "start", "run": f"r{i}",
                        **({"fleet_lock": f"lock-{i}"} if locked else {})})
        records.append({"action": "rollout", "phase": "stage", "run": f"r{i}"})
        if finished:
            records.append({"action": "rollout", "phase": "done", "run": f"r{i}", "outcome": "ok"})
        records.append({"action": "halt"})
    path.write_bytes(b"".join(journal.checked_line(rec) for rec in records))  # as append writes them, unsynced
    ctx = types.SimpleNamespace(journal=Journal(path))
    assert guards.finished_fleet_locks(ctx, last, dead) == _finished_fleet_locks_reference(records, last, dead)


def test_finished_fleet_locks_reads_the_journal_only_back_to_the_runs_it_names(tmp_path, monkeypatch):
    path = tmp_path / "j.jsonl"
    with open(path, "ab") as f:
        for i in range(5000):
            for phase in ("start", "done"):
                rec = {"action": "rollout", "phase": phase, "run": f"r{i}", "fleet_lock": f"l{i}"}
                f.write(journal.encode(rec))
    parsed = []
    real = journal.parse_line
    monkeypatch.setattr(journal, "parse_line", lambda line: parsed.append(line) or real(line))
    ctx = types.SimpleNamespace(journal=Journal(path))
    assert guards.finished_fleet_locks(ctx) == [f"l{i}" for i in range(4984, 5000)]
    assert len(parsed) < 1000  # the last block or so, not the 10000 records of the file
