"""What a run's nodes did, as the state machine reads it, and what a run returns or raises.

Per-node NodeResults and router Answers fold into phases.Outcome here (a parser raising
DeployctlError fails that node); a run that reaches DONE returns a RunResult, any other ends
with the one error `failure` picks, whose class carries the exit code. PreviewRow is a dry run's
line per node.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from deployctl.errors import DeployctlError, HaltedError, InconsistentError, LockHeldError, RolledBackError
from deployctl.model import phases
from deployctl.ops.guards import raise_if_fleet_locked
from deployctl.remote import commands, replies
from deployctl.remote.routers import Answer
from deployctl.remote.ssh import NodeResult, raise_for_unreachable

Outcomes = dict[str, phases.Outcome]
CONTROLLER = "controller"  # the node name of a failure that is the controller's own (a signal)


@dataclass(frozen=True)
class RunResult:
    """What a rollout, rollback or recover did: its final state, time per phase, whether the gate opened."""

    state: phases.State
    timings: dict[str, float]
    gate_open: bool = False


@dataclass(frozen=True)
class PreviewRow:
    """One node's line of a dry-run plan."""

    node: str
    current: str | None
    target: str
    upload_bytes: int
    note: str = ""


def outcomes(results: dict[str, NodeResult], parse: Callable[[str, bytes], object] | None = None) -> Outcomes:
    """Turn NodeResults into Outcomes; `parse(node, stdout)` raising DeployctlError fails that node."""
    out = {}
    for name, r in results.items():
        if not r.ok:
            out[name] = phases.Outcome(False, r.error or commands.agent_error(r.stderr))
            continue
        try:
            if parse:
                parse(name, r.stdout)
            out[name] = phases.Outcome(True)
        except DeployctlError as exc:
            out[name] = phases.Outcome(False, replies.clip(str(exc)))  # a parser may quote the node
    return out


def gate_outcomes(answers: dict[str, Answer], down_is_closed: bool = False) -> Outcomes:
    """Outcomes of a gate request; for closing, a router that is not running counts as closed."""
    return {n: phases.Outcome(a.ok or (down_is_closed and a.down), "" if a.ok else a.reason())
            for n, a in answers.items()}


def failure(kind: str, state: phases.State, refused: bool, unreachable: dict[str, NodeResult]) -> DeployctlError:
    """The error a run that did not reach DONE ends with; its class carries the exit code."""
    failures = [f.describe() for f in state.failures]
    first = failures[0] if failures else "aborted"
    if refused:
        try:
            raise_if_fleet_locked(f"{kind} refused", {f.node: f.reason for f in state.failures})
        except LockHeldError as exc:
            return exc
    stop = next((f for f in state.failures if f.node == CONTROLLER), None)
    if stop is not None and state.phase == phases.Phase.REVERTED:
        what = f"{kind} {stop.reason} during {stop.phase.value}"
        if state.switched:
            return RolledBackError(f"{what}: every node is back on its previous release, gate closed")
        gates = "gates untouched" if stop.phase == phases.Phase.PREFLIGHT else "gate closed"
        return DeployctlError(f"{what}: no node switched, every node is on its previous release, {gates}")
    if refused and unreachable:
        try:
            raise_for_unreachable(unreachable, f"{kind} refused in preflight, nothing changed", len(state.nodes))
        except DeployctlError as exc:
            return exc
    if any("halted" in f for f in failures) and state.phase == phases.Phase.REVERTED:
        return HaltedError(f"{kind} aborted, fleet halted: {first}; gate stays closed")
    if refused:
        return DeployctlError(f"{kind} refused in preflight, nothing changed: {first}")
    if state.phase == phases.Phase.REVERTED:
        return RolledBackError(f"{kind} failed: {first}; every node is back on its previous release, gate closed")
    return InconsistentError(f"{kind} failed: {'; '.join(failures)}; the fleet may be mixed, gate closed: "
                             "run `deployctl recover`")


def switched_to(targets: dict[str, str | None]) -> Callable[[str, bytes], None]:
    """Return the `parse` for outcomes() of a switch: DeployctlError unless the node's answer names its
    target (a node with no target was stopped, and answers nothing)."""

    def check(node: str, stdout: bytes) -> None:
        # A stop (no release to go back to) prints no switch answer; a switch must name its target.
        target = targets[node]
        if target is not None and commands.parse_switch(stdout)[1] != target:
            raise DeployctlError(f"node switched to something other than {target[:12]}")

    return check
