"""`build`, `rollout` and its dry run: one signed artifact onto every node, or nothing changes.

A rollout walks PREFLIGHT -> CLOSE_GATE -> STAGE -> SWITCH -> HEALTH -> OPEN_GATE on the one phase
runner (run.py). Preflight, stage and switch are one command per node, each step answered on the
same SSH channel: the artifact goes down once all nodes passed preflight, the switch request once
all staged. Any failure on any node reverts the whole fleet to its previous release, gate closed.
"""

from __future__ import annotations

from pathlib import Path

from deployctl import artifact as artifact_mod, commands, phases as sm
from deployctl.context import Context
from deployctl.errors import DeployctlError
from deployctl.run import PlanRow, Run, RunResult, locked, outcomes, probe_all, refuse_if_interrupted
from deployctl.ssh import Call


def build(ctx: Context, out_dir: Path | None = None, source: Path | None = None) -> artifact_mod.Artifact:
    """Build the reproducible, signed artifact of the playbook's source into `out_dir` (./dist); return it."""
    out = Path(out_dir or Path.cwd() / "dist")
    art = artifact_mod.build(Path(source or ctx.playbook.source), out, ctx.playbook.name, ctx.signing_key())
    ctx.emit("built", artifact=str(art.path), digest=art.digest, version=art.version)
    return art


def rollout(ctx: Context, artifact_path: Path, break_lock: bool = False) -> RunResult:
    """Deploy the artifact to every node; return the RunResult, or raise naming the node and phase.

    On any failure the fleet goes back to its previous release with the gate closed (RolledBackError).
    """
    art = ctx.load_artifact(artifact_path)
    payload = art.payload()
    refuse_if_interrupted(ctx)
    with locked(ctx, f"rollout {art.digest[:12]}", break_lock), ctx.ssh() as fleet:
        ctx.keep_manifest(art)
        run = Run(ctx, fleet, "rollout", art.digest, version=art.version, artifact=art.path.name,
                  nodes=[n.name for n in ctx.nodes])
        state = run.walk(sm.State(tuple(run.names), art.digest), {
            sm.Phase.PREFLIGHT: lambda s: _preflight(run, art, len(payload)),
            sm.Phase.CLOSE_GATE: run.close_gates,
            sm.Phase.STAGE: lambda s: _stage(run, art.digest, payload),
            sm.Phase.SWITCH: run.switch,
            sm.Phase.HEALTH: run.settle,
            sm.Phase.OPEN_GATE: run.open_gates,
        })
        return run.finish(state)


def _preflight(run: Run, art: artifact_mod.Artifact, size: int) -> dict[str, sm.Outcome]:
    """Connect and start the rollout's one command on every node; it answers a probe at once and then
    waits for the artifact (see STAGE), so preflight changes nothing and stage starts no program."""
    ctx = run.ctx
    # Each worker connects and starts its node's command at once: no barrier between handshakes and probe.
    call = Call(_deploy_command(ctx, art.digest, size), None, timeout=min(15, ctx.playbook.timeouts.command))
    res = run.fleet.hold({n: call for n in run.names})
    run.unreachable = {n: r for n, r in res.items() if r.error}
    results = outcomes(res, lambda n, out: run.probes.__setitem__(n, commands.parse_probe_answer(out)))
    for node, problem in sm.preflight_problems(run.probes, size, ctx.playbook.min_free_mb).items():
        results[node] = sm.Outcome(False, problem)
    return results


def _stage(run: Run, digest: str, payload: bytes) -> dict[str, sm.Outcome]:
    """Send the artifact down every node's held command; each answers with the digest it staged."""
    def progress(node: str, sent: int, total: int) -> None:
        run.ctx.emit("upload", node=node, sent=sent, total=total)

    results = run.fleet.step({n: payload for n in run.names}, run.ctx.playbook.timeouts.command, progress)
    return outcomes(results, lambda n, out: _expect_digest(commands.parse_stage(out), digest))


def _deploy_command(ctx: Context, digest: str, size: int) -> str:
    """Probe, stage, prune and (on request) switch: pruning keeps keep_releases, and never the new
    release, the current one (the previous release after the switch) or the last good one."""
    last_good = ctx.journal.last_good()
    protect = sorted({digest} | ({last_good} if last_good else set()))
    return commands.render(commands.deploy(ctx.root, digest, size, ctx.playbook.keep_releases, protect))


def _expect_digest(got: str, want: str) -> None:
    if got != want:
        raise DeployctlError(f"node staged {got[:12]}, expected {want[:12]}")


def plan(ctx: Context, artifact_path: Path) -> list[PlanRow]:
    """Dry run of a rollout: read each node's current release and say what would change; change nothing."""
    art = ctx.load_artifact(artifact_path)
    with ctx.ssh() as fleet:
        probes = probe_all(ctx, fleet, "plan")
    size = len(art.payload())
    return [PlanRow(n.name, probes[n.name].current, art.digest, size,
                    "already current" if probes[n.name].current == art.digest else "") for n in ctx.nodes]
