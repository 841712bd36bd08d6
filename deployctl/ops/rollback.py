"""`rollback --all` and `recover`: the whole fleet back onto one release it ran before, as one step.

Both check first: the target release must be on every node before any node switches (else refuse,
naming the node). Each node gets one `retarget` command that answers a probe and then waits; the
switch goes down the same channel, walked by the same phase runner as a rollout (run.py).
"""

from __future__ import annotations

import dataclasses

from deployctl.errors import InconsistentError, UsageError
from deployctl.model import phases
from deployctl.ops.context import Context
from deployctl.ops.guards import (
    check_digest,
    journal_digests,
    locked,
    probe_all,
    probe_held,
    refuse_if_interrupted,
    refuse_if_nodes_left,
    release_fleet,
    resolve_digest,
)
from deployctl.ops.results import PreviewRow, RunResult
from deployctl.ops.run import Run
from deployctl.remote.commands import Probe
from deployctl.state.journal import good_run


def rollback(ctx: Context, to: str | None = None, nodes: list[str] | None = None, force: bool = False,
             break_lock: bool = False) -> RunResult:
    """Switch the whole fleet (or, with force, the named nodes) to the previous release or `to`.

    Checks first that the target exists on every node; refuses and names the node otherwise.
    """
    chosen = _chosen(ctx, to, nodes, force)
    refuse_if_interrupted(ctx)
    refuse_if_nodes_left(ctx, "rollback")
    with locked(ctx, "rollback", break_lock) as lock, ctx.ssh() as fleet:
        probes = probe_held(ctx, fleet, "rollback preflight", lock)
        target = rollback_target(ctx, probes, to)
        missing = sorted(n for n in chosen if target not in probes[n].releases)
        if missing:  # the held commands release the fleet lock as the fleet closes
            raise UsageError(f"rollback refused, nothing changed: release {target[:12]} is not on {', '.join(missing)}")
        run = Run(ctx, fleet, "rollback", target, names=chosen, stop_on_halt=False, nodes=chosen,
                  partial=bool(nodes), fleet_lock=lock["id"])
        try:
            state = phases.State(tuple(run.names), target, phases.Phase.SWITCH,
                                 previous={n: probes[n].current for n in chosen})
            run.close_gates()  # whatever a router answers, the rollback goes on: it is the way out of a bad release
            state = run.walk(state, _switch_steps(run, _keep_closed_reason(nodes, probes)))
            return run.finish(state)
        finally:  # switched commands have ended, keeping the lock
            release_fleet(ctx, fleet, lock)


def _chosen(ctx: Context, to: str | None, nodes: list[str] | None, force: bool) -> list[str]:
    """Check the rollback's arguments; return the names of the nodes to roll back."""
    if nodes and not force:
        raise UsageError("rolling back only some nodes leaves the fleet mixed: add --force if you mean it")
    if to is not None:
        check_digest(to, "--to")
    unknown = sorted(set(nodes or []) - {n.name for n in ctx.nodes})
    if unknown:
        raise UsageError(f"--node: not in the inventory: {', '.join(unknown)}")
    return [n.name for n in ctx.nodes if not nodes or n.name in nodes]


def _switch_steps(run: Run, keep_closed: str | None) -> dict:
    """SWITCH (each node's `retarget` command waits for it), HEALTH, OPEN_GATE."""
    return {phases.Phase.SWITCH: run.switch, phases.Phase.HEALTH: run.settle,
            phases.Phase.OPEN_GATE: lambda s: run.open_gates(s, keep_closed)}


def _keep_closed_reason(partial: list[str] | None, probes: dict[str, Probe]) -> str | None:
    """A partial rollback leaves the fleet mixed, and a halted fleet stays halted: the gate stays closed."""
    if partial:
        return "partial rollback: the fleet is mixed"
    halted = sorted(n for n, p in probes.items() if p.halted)
    return f"halted: {', '.join(halted)}" if halted else None


def rollback_target(ctx: Context, probes: dict[str, Probe], to: str | None) -> str:
    """Return the release to go back to: `to` (if the fleet ever ran it; a unique prefix of a release the
    journal or a node knows will do) or the newest one it ran that no node runs now. Reads the journal
    newest first and stops at the answer; UsageError if none."""
    if to is not None and len(to) < 64:
        to = resolve_digest(to, journal_digests(ctx) | {r for p in probes.values() for r in p.releases}, "--to")
    currents = {p.current for p in probes.values()}
    for rec in ctx.journal.newest_first():
        digest = good_run(rec)
        if digest is not None and (digest == to or (to is None and digest not in currents)):
            return digest
    if to is not None:
        raise UsageError(f"rollback refused: the fleet never ran {to[:12]} (not in the journal)")
    raise UsageError("rollback refused, nothing changed: no previous release in the fleet's history")



def preview(ctx: Context, to: str | None = None) -> list[PreviewRow]:
    """Dry run of a rollback to `to` (default: the previous release); changes nothing."""
    if to is not None:
        check_digest(to, "--to")
    with ctx.ssh() as fleet:
        probes = probe_all(ctx, fleet, "plan")
    digest = rollback_target(ctx, probes, to)
    return [PreviewRow(n.name, probes[n.name].current, digest, 0,
                    "already current" if probes[n.name].current == digest
                    else "target release missing" if digest not in probes[n.name].releases else "")
            for n in ctx.nodes]


def recover(ctx: Context, break_lock: bool = False) -> RunResult:
    """Bring the fleet to one consistent release after an interrupted run, gate closed.

    The target is the last release the whole fleet ran (from the journal), which must be on every
    node; failing that, the release every node already has as `current`. Breaks only a stale lock
    (and, on the nodes, the fleet lock of the run whose stale lock it broke); with `break_lock`, any
    node's fleet lock.
    """
    refuse_if_nodes_left(ctx, "recover")
    with locked(ctx, "recover", break_lock=True, break_fleet=break_lock) as lock, ctx.ssh() as fleet:
        ctx.routers.close_gate(ctx.nodes)
        probes = probe_held(ctx, fleet, "recover", lock)
        target = _recover_target(ctx, probes)
        run = Run(ctx, fleet, "recover", target, stop_on_halt=False, interrupted=ctx.journal.interrupted(),
                  nodes=[n.name for n in ctx.nodes], fleet_lock=lock["id"])
        try:
            state = phases.State(tuple(run.names), target, phases.Phase.SWITCH,
                                 previous={n: p.current for n, p in probes.items()})
            state = run.walk(state, _switch_steps(run, "recover"), revert=False)
            if state.phase == phases.Phase.REVERT:  # a recovery that fails has nothing better to go back to
                state = dataclasses.replace(state, phase=phases.Phase.REVERT_FAILED)
            return run.finish(state)
        finally:
            release_fleet(ctx, fleet, lock)


def _recover_target(ctx: Context, probes: dict[str, Probe]) -> str:
    last = ctx.journal.last_good()
    if last and all(last in p.releases for p in probes.values()):
        return last
    currents = {p.current for p in probes.values()}
    only = next(iter(currents)) if len(currents) == 1 else None
    if only is not None:
        return only
    if last is None:
        raise InconsistentError("recover: no release the whole fleet ran is in the journal and the nodes' current "
                                "releases differ: roll out a release to the whole fleet "
                                "(`deployctl rollout ARTIFACT --break-lock` supersedes the interrupted run)")
    missing = sorted(n for n, p in probes.items() if last not in p.releases)
    raise InconsistentError(f"recover: the last good release {last[:12]} is not on {', '.join(missing)} and "
                            "the nodes' current releases differ: roll out a release to the whole fleet "
                                "(`deployctl rollout ARTIFACT --break-lock` supersedes the interrupted run)")
