"""The rollout state machine: (state, node results) -> next state. No I/O.

A rollout walks PREFLIGHT -> CLOSE_GATE -> STAGE -> SWITCH -> HEALTH -> OPEN_GATE -> DONE.
Any node failing any phase sends the run to REVERT: every node that may have
switched goes back to its previous release, and the gate stays closed. The run
never moves forward with fewer than all nodes.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Protocol


class Fitness(Protocol):
    """What a node's probe says about its fitness for a release (commands.Probe has these fields).
    Read-only, so that a frozen dataclass fits."""

    @property
    def current(self) -> str | None: ...

    @property
    def free(self) -> int: ...

    @property
    def halted(self) -> bool: ...


class Phase(str, enum.Enum):
    PREFLIGHT = "preflight"
    CLOSE_GATE = "close-gate"
    STAGE = "stage"
    SWITCH = "switch"
    HEALTH = "health"
    OPEN_GATE = "open-gate"
    DONE = "done"
    REVERT = "revert"
    REVERTED = "reverted"
    REVERT_FAILED = "revert-failed"


FORWARD = [Phase.PREFLIGHT, Phase.CLOSE_GATE, Phase.STAGE, Phase.SWITCH, Phase.HEALTH, Phase.OPEN_GATE, Phase.DONE]
# From SWITCH on a node's `current` may have changed, so a failure there must revert.
MAY_HAVE_SWITCHED = {Phase.SWITCH, Phase.HEALTH, Phase.OPEN_GATE}


@dataclass(frozen=True)
class Outcome:
    """A node's result in one phase: ok, or the one-line reason it failed."""

    ok: bool
    reason: str = ""


@dataclass(frozen=True)
class Failure:
    node: str
    phase: Phase
    reason: str

    def describe(self) -> str:
        return f"{self.node} failed in {self.phase.value}: {self.reason}"


@dataclass(frozen=True)
class State:
    """Where a run stands: target digest, each node's previous release, the first failures, what switched."""

    nodes: tuple[str, ...]
    target: str
    phase: Phase = Phase.PREFLIGHT
    previous: dict[str, str | None] = field(default_factory=dict)
    switched: frozenset[str] = frozenset()
    failures: tuple[Failure, ...] = ()

    @property
    def finished(self) -> bool:
        return self.phase in (Phase.DONE, Phase.REVERTED, Phase.REVERT_FAILED)


def preflight_problems(probes: Mapping[str, Fitness], need_bytes: int, min_free_mb: int) -> dict[str, str]:
    """Return node -> problem for every node not fit to receive the release (halted, short of disk)."""
    problems = {}
    for node, p in probes.items():
        if p.halted:
            problems[node] = "node is halted (run `deployctl resume` first)"
        elif p.free < need_bytes + min_free_mb * 2**20:
            problems[node] = f"only {p.free // 2**20} MiB free, need {need_bytes // 2**20 + min_free_mb} MiB"
    return problems


def advance(state: State, results: dict[str, Outcome], probes: Mapping[str, Fitness] | None = None) -> State:
    """Fold one phase's per-node outcomes into the state and return the next state.

    A node missing from `results` counts as failed: unknown is never success.
    """
    failed = [
        Failure(n, state.phase, results[n].reason if n in results else "no result")
        for n in state.nodes if n not in results or not results[n].ok
    ]
    if state.phase == Phase.PREFLIGHT and probes is not None:
        state = replace(state, previous={n: probes[n].current if n in probes else None for n in state.nodes})
    if state.phase in (Phase.SWITCH,):
        # A switch that failed midway may still have renamed: revert it too.
        state = replace(state, switched=frozenset(state.nodes))
    if state.phase == Phase.REVERT:
        return replace(state, phase=Phase.REVERT_FAILED if failed else Phase.REVERTED,
                       failures=state.failures + tuple(failed))
    if failed:
        next_phase = Phase.REVERT if state.phase in MAY_HAVE_SWITCHED else Phase.REVERTED
        return replace(state, phase=next_phase, failures=tuple(failed))
    return replace(state, phase=FORWARD[FORWARD.index(state.phase) + 1])


def abort(state: State, node: str, reason: str, phase: Phase | None = None) -> State:
    """Stop a run from outside (halt seen, deadline passed, a signal): revert if anything may have
    switched. The failure is recorded in `phase` (default: the phase the run was about to start)."""
    failure = Failure(node, phase or state.phase, reason)
    # Only nodes recorded as (maybe) switched need reverting; between phases that set is exact.
    next_phase = Phase.REVERT if state.switched else Phase.REVERTED
    return replace(state, phase=next_phase, failures=state.failures + (failure,))


def revert_targets(state: State) -> dict[str, str | None]:
    """Return node -> release to go back to, for every node that may have switched."""
    return {n: state.previous.get(n) for n in state.nodes if n in state.switched}
