"""`build`, `rollout` and its dry run: one signed artifact onto every node, or nothing changes.

A rollout walks PREFLIGHT -> CLOSE_GATE -> STAGE -> SWITCH -> HEALTH -> OPEN_GATE on the one phase
runner (run.py). Preflight, stage and switch are one command per node, each step answered on the
same SSH channel: the reuse plan goes with the command, each node's missing files once all nodes
passed preflight (content-addressed staging), the switch request once all staged. Any failure on
any node reverts the whole fleet to its previous release, gate closed.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

from deployctl.errors import DeployctlError, UsageError, check_folder
from deployctl.model import phases
from deployctl.ops.context import Context
from deployctl.ops.guards import hold_locked, interrupted, locked, refuse_if_interrupted, release_fleet
from deployctl.ops.results import PreviewRow, RunResult, outcomes
from deployctl.ops.run import Run
from deployctl.release import approval, flags
from deployctl.release import artifact as artifact_mod
from deployctl.remote import commands, replies
from deployctl.remote.ssh import Call, raise_for_unreachable


def build(ctx: Context, out_dir: Path | None = None, source: Path | None = None) -> artifact_mod.Artifact:
    """Build the reproducible, signed artifact of the playbook's source into `out_dir` (./dist); return it.

    With a flag registry in the playbook, a release using a flag missing from it or retired is refused
    (UsageError) before anything is written."""
    out = Path(out_dir or Path.cwd() / "dist")
    check_folder(out, "--out")  # before anything is built or signed
    check = None
    if ctx.playbook.flag_registry is not None:
        registry, label = flags.load(ctx.playbook.flag_registry), ctx.playbook.flag_registry.name
        check = lambda used, version: flags.check(registry, used, version, label)  # noqa: E731
    art = artifact_mod.build(Path(source or ctx.playbook.source), out, ctx.playbook.name, ctx.signing_key(), check)
    ctx.emit("built", artifact=str(art.path), digest=art.digest, version=art.version)
    return art


def rollout(ctx: Context, artifact_path: Path, break_lock: bool = False, plan: Path | None = None) -> RunResult:
    """Deploy the artifact to every node; return the RunResult, or raise naming the node and phase.

    With `plan` (required when the playbook says `require_approval`), only as an approved plan allows
    (approval.check; UsageError otherwise) and only onto the fleet as the plan found it (preflight).
    On any failure the fleet goes back to its previous release with the gate closed (RolledBackError).
    """
    art = ctx.load_artifact(artifact_path)
    payload = art.payload()
    approved, who = _approved(ctx, art, plan)
    # After an interrupted run, `recover` is the way back; `--break-lock` is the operator's explicit
    # word that this rollout supersedes it (when recover cannot pick one release, it says to do this).
    # Safe either way: every gate is closed first and opens only if all nodes run the new release.
    superseded = interrupted(ctx) if break_lock else None
    if not break_lock:
        refuse_if_interrupted(ctx)
    with locked(ctx, f"rollout {art.digest[:12]}", break_lock) as lock, ctx.ssh() as fleet:
        ctx.keep_manifest(art)
        if superseded:
            ctx.emit("warning", message=f"this rollout supersedes an {superseded.split(': run')[0]}")
        start: dict[str, Any] = {"version": art.version, "artifact": art.path.name,  # the journal's start record
                                 "nodes": [n.name for n in ctx.nodes], "fleet_lock": lock["id"], **who}
        if superseded:
            start["supersedes"] = superseded
        run = Run(ctx, fleet, "rollout", art.digest, deadline=ctx.playbook.timeouts.rollout, **start)
        try:
            state = run.walk(phases.State(tuple(run.names), art.digest), {
                phases.Phase.PREFLIGHT: lambda s: _preflight(run, art, len(payload), lock, approved),
                phases.Phase.CLOSE_GATE: run.close_gates,
                phases.Phase.STAGE: lambda s: _stage(run, art),
                phases.Phase.SWITCH: run.switch,
                phases.Phase.HEALTH: run.settle,
                phases.Phase.OPEN_GATE: run.open_gates,
            })
            return run.finish(state)
        finally:
            # A command still held releases the lock when the fleet closes; one that staged (and maybe
            # switched) or refused has ended, keeping it: release it on every node preflight reached. A
            # node it never reached never took this run's lock, so it is neither asked nor named.
            release_fleet(ctx, fleet, lock, [n for n in run.names if n not in run.unreachable])


def _approved(ctx: Context, art: artifact_mod.Artifact,
              plan: Path | None) -> tuple[approval.Plan | None, dict[str, str]]:
    """Return the approved plan (or None) and the identities to journal; UsageError if the playbook needs
    an approved plan and there is none, or the plan does not allow this rollout."""
    if plan is None:
        if ctx.playbook.require_approval:
            raise UsageError("rollout refused: the playbook requires an approved plan (two-person rule): "
                             "`deployctl plan ARTIFACT --out plan.json`, `deployctl approve plan.json --key KEY` "
                             "by an approver, then `deployctl rollout ARTIFACT --plan plan.json`")
        return None, {}
    loaded = approval.load(plan)
    approver = approval.check(loaded, ctx.playbook.approvers, time.time(), digest=art.digest,
                              fleet=ctx.inventory.fleet, nodes=[n.name for n in ctx.nodes])
    return loaded, {"plan": loaded.path.name, "planner": loaded.planner, "approver": approver.name,
                    "approver_key": approver.key}


def _preflight(run: Run, art: artifact_mod.Artifact, size: int, lock: dict | None = None,
               plan: approval.Plan | None = None) -> dict[str, phases.Outcome]:
    """Connect and start the rollout's one command on every node, with the reuse plan as its first
    input; it answers a probe at once and then looks for the files it already holds (see STAGE), so
    preflight changes nothing and stage starts no program."""
    ctx = run.ctx
    # Each worker connects and starts its node's command at once: no barrier between handshakes and probe.
    call = Call(_deploy_command(ctx, art.digest, lock), reuse_hints(ctx, art),
                timeout=run.budget(min(15, ctx.playbook.timeouts.command)))
    res = hold_locked(run.fleet, {n: call for n in run.names})
    run.unreachable = {n: r for n, r in res.items() if r.error}
    results = outcomes(res, lambda n, out: run.probes.__setitem__(n, commands.parse_probe_answer(out)))
    # Copies of reused files take room too: the whole artifact's size is needed, whatever is sent.
    for node, problem in phases.preflight_problems(run.probes, size, ctx.playbook.min_free_mb).items():
        results[node] = phases.Outcome(False, problem)
    if plan is not None:  # the fleet must be as the approved plan found it
        for node, problem in approval.stale(plan, {n: p.current for n, p in run.probes.items()}).items():
            results[node] = phases.Outcome(False, problem)
    return results


def _stage(run: Run, art: artifact_mod.Artifact) -> dict[str, phases.Outcome]:
    """Content-addressed staging: read which files each node already holds (it checked their sha256
    while the gates closed), send that node at once a tar of only the files it lacks (no wait for the
    other nodes' answers), and take its answer: the digest of the whole release it staged, checked
    file by file and against the signature."""
    ctx = run.ctx
    have: dict[str, frozenset[str]] = {}
    problems: dict[str, str] = {}
    uploads: dict[frozenset[str], bytes] = {}  # one copy per distinct need set, not one per node
    lock = threading.Lock()

    def upload_for(node: str, answer: bytes) -> bytes | None:
        try:
            have[node] = commands.parse_have(answer)[0]
        except DeployctlError as exc:
            problems[node] = str(exc)
            return None
        need = frozenset(art.files) - have[node]
        with lock:
            if need not in uploads:
                uploads[need] = commands.upload(art.subset(need))
            return uploads[need]

    def progress(node: str, done: int, total: int) -> None:
        ctx.emit("upload", node=node, sent=done, total=total)

    res = run.fleet.exchange({n: b"" for n in run.names}, upload_for, run.budget(ctx.playbook.timeouts.command),
                             progress)
    results = outcomes({n: first for n, (first, _) in res.items()})
    results.update({n: phases.Outcome(False, why) for n, why in problems.items()})
    results.update(outcomes({n: second for n, (_, second) in res.items() if second is not None},
                            lambda n, out: _expect_digest(commands.parse_stage(out), art.digest)))
    ctx.emit("step", message=_sending(art, have, {n: uploads[frozenset(art.files) - h] for n, h in have.items()}))
    return results


def _sending(art: artifact_mod.Artifact, have: dict[str, frozenset[str]], sent: dict[str, bytes]) -> str:
    reused = sum(len(h) for h in have.values())
    return (f"sent {sum(map(len, sent.values())) / 2**20:.2f} MiB to {len(sent)} nodes "
            f"({reused} of {len(art.files) * len(have)} files already on the nodes)")


# Smaller files are sent: copying one on the node (read, hash, write, fsync) costs about what
# receiving it does, and every fsync'd copy during preflight slows the other nodes' handshakes on a
# shared machine (a release whose only big file changed rolled out slower when small files were reused
# too: docs/distribution.md, "Figures behind the code").
MIN_REUSE_BYTES = 64 * 1024


def reuse_hints(ctx: Context, art: artifact_mod.Artifact, releases: int = 16) -> bytes:
    """The reuse plan line: for each file of the release of at least MIN_REUSE_BYTES, where a node
    may already hold it (release digest and path): in this release itself (a node that has it), then
    in the releases whose manifests the controller kept from its last `releases` rollouts, the same
    path first. A node checks every such file's sha256 before it uses it."""
    kept = sorted(ctx.state.manifests.glob("*.json"), key=lambda p: p.stat().st_mtime, reverse=True)[:releases]
    where: dict[str, list[tuple[str, str]]] = {}
    for path in kept:
        if path.stem != art.digest:
            for rel, sha in (ctx.manifest(path.stem) or {}).items():
                where.setdefault(sha, []).append((path.stem, rel))
    files = {rel: sha for rel, sha in art.files.items() if art.sizes[rel] >= MIN_REUSE_BYTES}
    hints = {rel: [(art.digest, rel)] + sorted(where.get(sha, []), key=lambda h: h[1] != rel)[:3]
             for rel, sha in files.items()}
    return commands.reuse_hints(files, hints, (art.manifest_bytes, art.signature))


def _deploy_command(ctx: Context, digest: str, lock: dict | None = None) -> str:
    """Probe, reuse, stage, prune and (on request) switch: pruning keeps keep_releases, and never the
    new release, the current one (the previous release after the switch) or the last good one."""
    last_good = ctx.journal.last_good()
    protect = sorted({digest} | ({last_good} if last_good else set()))
    return commands.render(commands.deploy(ctx.root, digest, ctx.playbook.keep_releases, protect, lock))


def _expect_digest(got: str, want: str) -> None:
    if got != want:
        raise DeployctlError(f"node staged {got[:12]}, expected {want[:12]}")


def preview(ctx: Context, artifact_path: Path) -> list[PreviewRow]:
    """Dry run of a rollout: each node's current release, what would change and how many bytes it
    would be sent (it hashes the files it could reuse where they are); changes nothing."""
    art = ctx.load_artifact(artifact_path)
    command = Call(commands.render(commands.have(ctx.root)), reuse_hints(ctx, art), timeout=60)
    with ctx.ssh() as fleet:
        res = fleet.run_all(lambda n: command)
    raise_for_unreachable(res, "plan")
    bad = sorted(n for n, r in res.items() if not r.ok)
    if bad:
        raise DeployctlError("plan: " + "; ".join(f"{n}: {commands.agent_error(res[n].stderr)}" for n in bad))
    answers = replies.each_node(lambda out: (commands.parse_probe_answer(out), commands.parse_have(out)),
                                {n: r.stdout for n, r in res.items()}, "plan")
    rows = []
    for n in ctx.nodes:
        probe, (have, _) = answers[n.name]
        note = ("already current" if probe.current == art.digest
                else f"{len(have)} of {len(art.files)} files on the node")
        rows.append(PreviewRow(n.name, probe.current, art.digest, len(art.subset(frozenset(art.files) - have)), note))
    return rows
