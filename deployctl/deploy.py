"""Rollout, whole-fleet rollback and recovery over the real fleet (the parts they share: runner.py).

One SSH connection per node serves every phase. Every phase is journaled (and
fsync'd) before it starts. Any failure on any node reverts the whole fleet to
its previous release with the gate closed.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

from deployctl import artifact as artifact_mod, commands, gate, rollout as sm
from deployctl.api import Context
from deployctl.commands import Probe
from deployctl.errors import DeployctlError, InconsistentError, UsageError
from deployctl.executor import Call
from deployctl.runner import (RunResult, _finish, _gate_results, _locked, _open_gate, _outcomes,
                              _refuse_if_interrupted, _Run, _settle, interrupted, load_artifact,
                              probe_all, probe_held, switch_held, switch_phases)

__all__ = ["PlanRow", "RunResult", "interrupted", "load_artifact", "plan", "recover", "rollback", "rollout"]


@dataclass(frozen=True)
class PlanRow:
    """One node's line of a dry-run plan."""

    node: str
    current: str | None
    target: str
    upload_bytes: int
    note: str = ""


def _preflight(run: _Run, art: artifact_mod.Artifact, size: int) -> tuple[dict[str, sm.Outcome], dict[str, Probe]]:
    """Connect and start the rollout's one command on every node; it answers a probe at once and then
    waits for the artifact (see STAGE), so preflight changes nothing and stage starts no program."""
    ctx = run.ctx
    # Each worker connects and starts its node's command at once: no barrier between handshakes and probe.
    call = Call(_deploy_command(ctx, art.digest, size), None, timeout=min(15, ctx.playbook.timeouts.command))
    res = run.fleet.hold({n: call for n in run.names})
    run.unreachable = {n: r for n, r in res.items() if r.error}
    probes: dict[str, Probe] = {}
    outcomes = _outcomes(res, lambda n, out: probes.__setitem__(n, commands.parse_probe_answer(out)))
    for node, problem in sm.preflight_problems(probes, size, ctx.playbook.min_free_mb).items():
        outcomes[node] = sm.Outcome(False, problem)
    return outcomes, probes


def _halted_since(run: _Run) -> bool:
    """A halt issued while this run works wins: look for one journaled since the run started."""
    return any(rec.get("action") == "halt" for rec in run.ctx.journal.read(since=run.journal_start))


def _forward(run: _Run, art: artifact_mod.Artifact, payload: bytes) -> sm.State:
    ctx, state = run.ctx, sm.State(tuple(run.names), art.digest)
    timeout = ctx.playbook.timeouts.command
    token = ctx.token()
    steps = {
        sm.Phase.PREFLIGHT: lambda: _preflight(run, art, len(payload)),
        sm.Phase.CLOSE_GATE: lambda: (_gate_results(gate.close_gate(ctx.nodes, token), down_is_closed=True), None),
        # Preflight, stage and switch are one command per node, each step answered on the same channel:
        # the artifact goes down once all nodes passed preflight, the switch request once all staged.
        sm.Phase.STAGE: lambda: (_outcomes(
            run.fleet.step({n: payload for n in run.names}, timeout),
            lambda n, out: _expect_digest(commands.parse_stage(out), art.digest)), None),
        sm.Phase.SWITCH: lambda: (switch_held(run, art.digest), None),
        sm.Phase.HEALTH: lambda: (_settle(run, art.digest), None),
        sm.Phase.OPEN_GATE: lambda: (_open_gate(run, art.digest), None),
    }
    while state.phase in steps:
        if state.phase != sm.Phase.PREFLIGHT and _halted_since(run):
            state = sm.abort(state, "fleet", "halted while the rollout ran")
            break
        state = run.phase(state, steps[state.phase])
    return state


def _deploy_command(ctx: Context, digest: str, size: int) -> str:
    """Probe, stage, prune and (on request) switch: pruning keeps keep_releases, and never the new
    release, the current one (the previous release after the switch) or the last good one."""
    last_good = ctx.journal.last_good()
    protect = sorted({digest} | ({last_good} if last_good else set()))
    return commands.render(commands.deploy(ctx.root, digest, size, ctx.playbook.keep_releases, protect))


def _expect_digest(got: str, want: str) -> None:
    if got != want:
        raise DeployctlError(f"node staged {got[:12]}, expected {want[:12]}")


def rollout(ctx: Context, artifact_path: Path, break_lock: bool = False) -> RunResult:
    """Deploy the artifact to every node; return the RunResult, or raise naming the node and phase.

    On any failure the fleet goes back to its previous release with the gate closed (RolledBackError).
    """
    art = load_artifact(ctx, artifact_path)
    payload = art.payload()
    _refuse_if_interrupted(ctx)
    _store_manifest(ctx, art)
    with _locked(ctx, f"rollout {art.digest[:12]}", break_lock), ctx.ssh() as fleet:
        run = _Run(ctx, fleet, "rollout", art.digest)
        run.journal("start", version=art.version, artifact=art.path.name, nodes=run.names)
        start = time.monotonic()
        state = _forward(run, art, payload)
        run.timings["total"] = time.monotonic() - start
        return _finish(run, state, "rollout")


def _store_manifest(ctx: Context, art: artifact_mod.Artifact) -> None:
    folder = ctx.state_dir / "manifests"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{art.digest}.json").write_bytes(art.manifest_bytes)


def plan(ctx: Context, artifact_path: Path | None = None, to: str | None = None) -> list[PlanRow]:
    """Dry run of a rollout (artifact_path) or a rollback (to, default the previous release).

    Reads each node's current release and says what would change; changes nothing.
    """
    art = load_artifact(ctx, artifact_path) if artifact_path else None
    if to is not None and not commands.HEX64.match(to):
        raise UsageError(f"--to: {to!r} is not a sha256 release digest")
    with ctx.ssh() as fleet:
        probes = probe_all(ctx, fleet, "plan")
    digest = art.digest if art else _rollback_target(ctx, probes, to)
    size = len(art.payload()) if art else 0
    rows = []
    for n in ctx.nodes:
        p = probes[n.name]
        missing = not art and digest not in p.releases
        note = "already current" if p.current == digest else ("target release missing" if missing else "")
        rows.append(PlanRow(n.name, p.current, digest, size, note))
    return rows


def rollback(ctx: Context, to: str | None = None, nodes: list[str] | None = None, force: bool = False,
             break_lock: bool = False) -> RunResult:
    """Switch the whole fleet (or, with force, the named nodes) to the previous release or `to`.

    Checks first that the target exists on every node; refuses and names the node otherwise.
    """
    if nodes and not force:
        raise UsageError("rolling back only some nodes leaves the fleet mixed: add --force if you mean it")
    if to is not None and not commands.HEX64.match(to):
        raise UsageError(f"--to: {to!r} is not a sha256 release digest")
    chosen = [n for n in ctx.nodes if not nodes or n.name in nodes]
    unknown = sorted(set(nodes or []) - {n.name for n in ctx.nodes})
    if unknown:
        raise UsageError(f"--node: not in the inventory: {', '.join(unknown)}")
    _refuse_if_interrupted(ctx)
    with _locked(ctx, "rollback", break_lock), ctx.ssh() as fleet:
        probes = probe_held(ctx, fleet, "rollback preflight")
        target = _rollback_target(ctx, probes, to)
        missing = sorted(n.name for n in chosen if target not in probes[n.name].releases)
        if missing:
            raise UsageError(f"rollback refused, nothing changed: release {target[:12]} is not on {', '.join(missing)}")
        run = _Run(ctx, fleet, "rollback", target)
        run.names = [n.name for n in chosen]
        run.journal("start", nodes=run.names, partial=bool(nodes))
        start = time.monotonic()
        state = sm.State(tuple(run.names), target, sm.Phase.SWITCH,
                         previous={n: probes[n].current for n in run.names})
        gate.close_gate(ctx.nodes, ctx.token())
        state = switch_phases(run, state, target, _keep_closed_reason(nodes, probes))
        run.timings["total"] = time.monotonic() - start
        return _finish(run, state, "rollback")


def _keep_closed_reason(partial: list[str] | None, probes: dict[str, Probe]) -> str | None:
    """A partial rollback leaves the fleet mixed, and a halted fleet stays halted: the gate stays closed."""
    if partial:
        return "partial rollback: the fleet is mixed"
    halted = sorted(n for n, p in probes.items() if p.halted)
    return f"halted: {', '.join(halted)}" if halted else None


def _rollback_target(ctx: Context, probes: dict[str, Probe], to: str | None) -> str:
    """Return the release to go back to: `to` (if the fleet ever ran it) or the newest one it ran that
    no node runs now. Reads the journal newest first and stops at the answer."""
    currents = {p.current for p in probes.values()}
    for rec in ctx.journal.newest_first():
        digest = rec.get("digest")
        if rec.get("phase") != "done" or rec.get("outcome") != "ok" or not isinstance(digest, str):
            continue
        if digest == to or (to is None and digest not in currents):
            return digest
    if to is not None:
        raise UsageError(f"rollback refused: the fleet never ran {to[:12]} (not in the journal)")
    raise UsageError("rollback refused, nothing changed: no previous release in the fleet's history")


def recover(ctx: Context) -> RunResult:
    """Bring the fleet to one consistent release after an interrupted run, gate closed.

    The target is the last release the whole fleet ran (from the journal), which must be on every
    node; failing that, the release every node already has as `current`. Breaks only a stale lock.
    """
    with _locked(ctx, "recover", break_lock=True), ctx.ssh() as fleet:
        gate.close_gate(ctx.nodes, ctx.token())
        probes = probe_held(ctx, fleet, "recover")
        target = _recover_target(ctx, probes)
        run = _Run(ctx, fleet, "recover", target)
        run.journal("start", interrupted=ctx.journal.interrupted())
        state = sm.State(tuple(run.names), target, sm.Phase.SWITCH, previous={n: p.current for n, p in probes.items()})
        state = switch_phases(run, state, target, "recover")
        if state.phase == sm.Phase.REVERT:  # a recovery that fails has nothing better to go back to
            state = dataclasses.replace(state, phase=sm.Phase.REVERT_FAILED)
        return _finish(run, state, "recover")


def _recover_target(ctx: Context, probes: dict[str, Probe]) -> str:
    last = ctx.journal.last_good()
    if last and all(last in p.releases for p in probes.values()):
        return last
    currents = {p.current for p in probes.values()}
    if len(currents) == 1 and None not in currents:
        return currents.pop()
    missing = sorted(n for n, p in probes.items() if last not in p.releases) if last else sorted(probes)
    raise InconsistentError(f"recover: the last good release {str(last)[:12]} is not on {', '.join(missing)} and "
                            "the nodes' current releases differ: roll out a release to the whole fleet")
