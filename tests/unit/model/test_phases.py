"""model/phases.py: the state machine, phase by phase, and a property that DONE needs every node in every phase."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from deployctl.model import phases
from deployctl.model.phases import FORWARD, Outcome, Phase, State
from deployctl.remote.commands import Probe

NODES = ("n1", "n2", "n3")
TARGET = "c" * 64
OLD = {"n1": "a" * 64, "n2": "b" * 64, "n3": None}
PROBES = {n: Probe(OLD[n], (OLD[n],) if OLD[n] else (), 10 * 2**30, False) for n in NODES}


def ok(nodes=NODES) -> dict[str, Outcome]:
    return {n: Outcome(True) for n in nodes}


def start() -> State:
    return State(NODES, TARGET)


def walk_to(phase: Phase) -> State:
    """A state at `phase`, reached by all-success advances from PREFLIGHT."""
    state = start()
    while state.phase != phase:
        state = phases.advance(state, ok(), PROBES if state.phase == Phase.PREFLIGHT else None)
    return state


def test_happy_path_phase_sequence():
    state, seen = start(), []
    while not state.finished:
        seen.append(state.phase)
        state = phases.advance(state, ok(), PROBES if state.phase == Phase.PREFLIGHT else None)
    assert seen + [state.phase] == [Phase.PREFLIGHT, Phase.CLOSE_GATE, Phase.STAGE, Phase.SWITCH, Phase.HEALTH,
                                    Phase.OPEN_GATE, Phase.DONE]
    assert state.failures == ()
    assert state.previous == OLD
    assert state.switched == frozenset(NODES)


def test_initial_state():
    state = start()
    assert (state.phase, state.previous, state.switched, state.failures, state.finished) == \
        (Phase.PREFLIGHT, {}, frozenset(), (), False)


@pytest.mark.parametrize("phase, expected", [
    (Phase.PREFLIGHT, Phase.REVERTED),
    (Phase.CLOSE_GATE, Phase.REVERTED),
    (Phase.STAGE, Phase.REVERTED),
    (Phase.SWITCH, Phase.REVERT),
    (Phase.HEALTH, Phase.REVERT),
    (Phase.OPEN_GATE, Phase.REVERT),
])
def test_one_node_failing_a_phase(phase, expected):
    state = walk_to(phase)
    results = {**ok(), "n2": Outcome(False, "boom")}
    nxt = phases.advance(state, results, PROBES if phase == Phase.PREFLIGHT else None)
    assert nxt.phase == expected
    assert nxt.failures == (phases.Failure("n2", phase, "boom"),)
    assert nxt.failures[0].describe() == f"n2 failed in {phase.value}: boom"
    assert nxt.finished == (expected == Phase.REVERTED)


@pytest.mark.parametrize("phase", FORWARD[:-1])
def test_missing_node_counts_as_failed(phase):
    state = walk_to(phase)
    nxt = phases.advance(state, ok(("n1", "n3")), PROBES if phase == Phase.PREFLIGHT else None)
    assert nxt.phase in (Phase.REVERT, Phase.REVERTED)
    assert nxt.failures == (phases.Failure("n2", phase, "no result"),)


def test_empty_results_fail_every_node():
    nxt = phases.advance(walk_to(Phase.STAGE), {})
    assert nxt.phase == Phase.REVERTED
    assert [f.node for f in nxt.failures] == list(NODES)


def test_results_for_unknown_nodes_are_ignored():
    nxt = phases.advance(walk_to(Phase.STAGE), {**ok(("n1", "n2")), "stranger": Outcome(True)})
    assert nxt.phase == Phase.REVERTED
    assert [f.node for f in nxt.failures] == ["n3"]


def test_every_node_switched_after_a_switch_failure():
    state = walk_to(Phase.SWITCH)
    assert state.switched == frozenset()
    nxt = phases.advance(state, {"n1": Outcome(False, "rename failed")})  # n2, n3: no result
    assert nxt.phase == Phase.REVERT
    assert nxt.switched == frozenset(NODES)
    assert phases.revert_targets(nxt) == OLD


def test_nothing_switched_when_stage_fails():
    nxt = phases.advance(walk_to(Phase.STAGE), {**ok(), "n3": Outcome(False, "disk full")})
    assert nxt.switched == frozenset()
    assert phases.revert_targets(nxt) == {}


def test_previous_comes_from_preflight_probes():
    nxt = phases.advance(start(), ok(), {"n1": PROBES["n1"], "n2": PROBES["n2"]})  # n3 probe missing
    assert nxt.previous == {"n1": "a" * 64, "n2": "b" * 64, "n3": None}


@pytest.mark.parametrize("phase", [Phase.HEALTH, Phase.OPEN_GATE])
def test_revert_targets_each_nodes_previous(phase):
    nxt = phases.advance(walk_to(phase), {**ok(), "n1": Outcome(False, "unhealthy")})
    assert nxt.phase == Phase.REVERT
    assert phases.revert_targets(nxt) == {"n1": "a" * 64, "n2": "b" * 64, "n3": None}


def _reverting() -> State:
    return phases.advance(walk_to(Phase.HEALTH), {**ok(), "n2": Outcome(False, "unhealthy")})


def test_revert_succeeds():
    state = _reverting()
    done = phases.advance(state, ok())
    assert done.phase == Phase.REVERTED and done.finished
    assert done.failures == state.failures  # the original failure is kept


def test_revert_fails():
    state = _reverting()
    done = phases.advance(state, {**ok(), "n3": Outcome(False, "switch back failed")})
    assert done.phase == Phase.REVERT_FAILED and done.finished
    assert done.failures == state.failures + (phases.Failure("n3", Phase.REVERT, "switch back failed"),)


def test_revert_missing_node_fails():
    done = phases.advance(_reverting(), ok(("n1", "n2")))
    assert done.phase == Phase.REVERT_FAILED
    assert done.failures[-1] == phases.Failure("n3", Phase.REVERT, "no result")


@pytest.mark.parametrize("phase, expected", [
    (Phase.PREFLIGHT, Phase.REVERTED),
    (Phase.CLOSE_GATE, Phase.REVERTED),
    (Phase.STAGE, Phase.REVERTED),
    (Phase.SWITCH, Phase.REVERTED),  # between phases: the switch has not run, nothing to revert
    (Phase.HEALTH, Phase.REVERT),
    (Phase.OPEN_GATE, Phase.REVERT),
])
def test_abort(phase, expected):
    state = walk_to(phase)
    nxt = phases.abort(state, "fleet", "halted while the rollout ran")
    assert nxt.phase == expected
    assert nxt.failures[-1] == phases.Failure("fleet", phase, "halted while the rollout ran")


def test_abort_keeps_earlier_failures():
    state = phases.State(NODES, TARGET, Phase.STAGE, failures=(phases.Failure("n1", Phase.STAGE, "x"),))
    nxt = phases.abort(state, "fleet", "deadline passed")
    assert [f.reason for f in nxt.failures] == ["x", "deadline passed"]


def test_abort_after_switch_reverts_switched_nodes():
    state = phases.State(NODES, TARGET, Phase.PREFLIGHT, previous=dict(OLD), switched=frozenset({"n1"}))
    nxt = phases.abort(state, "fleet", "halted")
    assert nxt.phase == Phase.REVERT
    assert phases.revert_targets(nxt) == {"n1": "a" * 64}


# --- preflight_problems ----------------------------------------------------------------------------------------

MiB = 2**20


def test_preflight_problems():
    probes = {
        "fit": Probe(None, (), 1000 * MiB, False),
        "halted": Probe(None, (), 1000 * MiB, True),
        "low": Probe(None, (), 50 * MiB, False),
        "one-byte-short": Probe(None, (), 74 * MiB - 1, False),
        "exact": Probe(None, (), 10 * MiB + 64 * MiB, False),
        "halted-and-low": Probe(None, (), 0, True),
    }
    problems = phases.preflight_problems(probes, need_bytes=10 * MiB, min_free_mb=64)
    assert problems == {
        "halted": "node is halted (run `deployctl resume` first)",
        "low": "only 50 MiB free, need 74 MiB",
        "one-byte-short": "only 73 MiB free, need 74 MiB",
        "halted-and-low": "node is halted (run `deployctl resume` first)",
    }


def test_preflight_low_disk_message():
    problems = phases.preflight_problems({"n1": Probe(None, (), 50 * MiB, False)}, need_bytes=30 * MiB, min_free_mb=64)
    assert problems == {"n1": "only 50 MiB free, need 94 MiB"}


def test_preflight_no_problems():
    assert phases.preflight_problems(PROBES, need_bytes=MiB, min_free_mb=64) == {}


# --- property -----------------------------------------------------------------------------------------------------

node_names = st.lists(st.sampled_from(["n1", "n2", "n3", "n4", "n5"]), min_size=1, max_size=5, unique=True)


@st.composite
def runs(draw):
    nodes = tuple(draw(node_names))
    # Each phase's results: any subset of the nodes (plus maybe a stranger), each ok or not.
    # All-ok is drawn often so that runs reach DONE, not only the failure branches.
    results = st.one_of(
        st.just({n: Outcome(True) for n in nodes}),
        st.dictionaries(st.sampled_from(list(nodes) + ["stranger"]),
                        st.builds(Outcome, st.booleans(), st.sampled_from(["", "boom"]))),
    )
    steps = draw(st.lists(results, min_size=0, max_size=10))
    return nodes, steps


@given(runs())
@settings(max_examples=500)
def test_done_only_if_every_node_succeeded_in_every_phase(run):
    nodes, steps = run
    state = State(nodes, TARGET)
    history = []
    for results in steps:
        if state.finished:
            break
        history.append((state.phase, results))
        state = phases.advance(state, results, {})
    if state.phase == Phase.DONE:
        assert [p for p, _ in history] == FORWARD[:-1]
        assert all(n in results and results[n].ok for _, results in history for n in nodes)
        assert state.failures == ()
    forward = [(p, r) for p, r in history if p in FORWARD]
    all_ok = all(all(n in r and r[n].ok for n in nodes) for _, r in forward)
    if all_ok and len(forward) == len(FORWARD) - 1:
        assert state.phase == Phase.DONE
    if not all_ok:
        assert state.phase != Phase.DONE
        assert state.failures
    if state.phase in (Phase.REVERT, Phase.REVERTED, Phase.REVERT_FAILED):
        assert state.failures
