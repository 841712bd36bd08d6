"""Rollout and whole-fleet rollback: runs the rollout state machine over the real fleet.

One SSH connection per node serves every phase. Every phase is journaled (and
fsync'd) before it starts. Any failure on any node reverts the whole fleet to
its previous release with the gate closed.
"""

from __future__ import annotations

import dataclasses
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from deployctl import artifact as artifact_mod, commands, gate, rollout as sm
from deployctl.api import Context, raise_for_unreachable
from deployctl.commands import Probe
from deployctl.errors import (DeployctlError, HaltedError, InconsistentError, RolledBackError, UsageError)
from deployctl.executor import Call, NodeResult, SSHFleet
from deployctl.journal import encode, entry


@dataclass(frozen=True)
class RunResult:
    """What a rollout, rollback or recover did: its final state, time per phase, whether the gate opened."""

    state: sm.State
    timings: dict[str, float]
    gate_open: bool = False


@dataclass(frozen=True)
class PlanRow:
    """One node's line of a dry-run plan."""

    node: str
    current: str | None
    target: str
    upload_bytes: int
    note: str = ""


def load_artifact(ctx: Context, path: Path) -> artifact_mod.Artifact:
    """Load and check a signed artifact against the controller's pinned signing key."""
    pub = ctx.state_dir / "keys" / "signing_ed25519.pub"
    if not pub.exists():
        raise UsageError(f"no signing key at {pub}: build the artifact with `deployctl build` first")
    return artifact_mod.load(Path(path), pub)


def _outcomes(results: dict[str, NodeResult], parse=None) -> dict[str, sm.Outcome]:
    out = {}
    for name, r in results.items():
        if not r.ok:
            out[name] = sm.Outcome(False, r.error or commands.agent_error(r.stderr))
            continue
        try:
            if parse:
                parse(name, r.stdout)
            out[name] = sm.Outcome(True)
        except DeployctlError as exc:
            out[name] = sm.Outcome(False, str(exc))
    return out


class _Run:
    """One rollout or rollback in progress: its id, journal, timings and SSH fleet."""

    def __init__(self, ctx: Context, fleet: SSHFleet, action: str, digest: str):
        self.ctx, self.fleet, self.action, self.digest = ctx, fleet, action, digest
        self.id = uuid.uuid4().hex[:12]
        self.timings: dict[str, float] = {}
        self.names = [n.name for n in ctx.nodes]
        self.unreachable: dict[str, NodeResult] = {}  # nodes preflight could not reach
        self.gate_opened = False
        self.outcomes = {n: "ok" for n in self.names}  # per node, for the journal: "ok" or its first failure
        self.journal_start = ctx.journal.size()  # where this run's records begin

    def journal(self, phase: str, **fields) -> None:
        self.ctx.journal.append(entry(self.action, run=self.id, phase=phase, digest=self.digest, **fields))

    def phase(self, state: sm.State, work) -> sm.State:
        """Journal the phase, run `work()` -> outcomes, fold them into the state, time it, emit events."""
        self.journal(state.phase.value)
        self.ctx.emit("phase", phase=state.phase.value, status="start")
        start = time.monotonic()
        outcomes, probes = work()
        self.timings[state.phase.value] = time.monotonic() - start
        for node, o in sorted(outcomes.items()):
            self.ctx.emit("node", phase=state.phase.value, node=node, ok=o.ok, reason=o.reason)
            if not o.ok and self.outcomes.get(node) == "ok":
                self.outcomes[node] = f"failed in {state.phase.value}: {o.reason}"
        nxt = sm.advance(state, outcomes, probes)
        self.ctx.emit("phase", phase=state.phase.value, status="done", seconds=self.timings[state.phase.value],
                      failures=[f.describe() for f in nxt.failures])
        return nxt

    def node_journal(self, record: dict) -> None:
        """Append a failed run's outcome to every reachable node's own journal (best effort, reported).

        A run that succeeds needs no extra round trip: each node journaled its switch in the switch
        command, and each router journals the gate opening.
        """
        argv = commands.journal_append(self.ctx.root)
        res = self.fleet.run_all(lambda n: Call(commands.render(argv), encode(record), 30), self.names)
        missed = sorted(n for n, r in res.items() if not r.ok)
        if missed:
            self.ctx.emit("warning", message=f"node journal not written on: {', '.join(missed)}")


def _preflight(run: _Run, size: int) -> tuple[dict[str, sm.Outcome], dict[str, Probe]]:
    ctx = run.ctx
    # Each worker connects and probes its node at once: no barrier between handshakes and the probe.
    res = run.fleet.run_all(lambda n: Call(commands.render(commands.probe(ctx.root)), timeout=15))
    run.unreachable = {n: r for n, r in res.items() if r.error}
    probes: dict[str, Probe] = {}
    outcomes = _outcomes(res, lambda n, out: probes.__setitem__(n, commands.parse_probe(out)))
    for node, problem in sm.preflight_problems(probes, size, ctx.playbook.min_free_mb).items():
        outcomes[node] = sm.Outcome(False, problem)
    return outcomes, probes


def _gate_results(answers: dict[str, gate.Answer], down_is_closed: bool = False) -> dict[str, sm.Outcome]:
    """Outcomes of a gate request; for closing, a router that is not running counts as closed."""
    return {n: sm.Outcome(a.ok or (down_is_closed and a.down), "" if a.ok else a.reason())
            for n, a in answers.items()}


def _switch_and_restart(run: _Run, targets: dict[str, str | None], phase: str = "switch") -> dict[str, sm.Outcome]:
    ctx = run.ctx
    timeout = ctx.playbook.timeouts.command

    def call(node: str) -> Call:
        # The node journals the switch itself, in the same command (its previous release added there).
        record = encode(entry(run.action, run=run.id, phase=phase, digest=targets[node], node=node))
        return Call(commands.render(commands.activate(ctx.root, targets[node], ctx.playbook.service)), record,
                    timeout=timeout)

    return _outcomes(run.fleet.run_all(call, list(targets)))


def _health(run: _Run, targets: dict[str, str | None]) -> dict[str, sm.Outcome]:
    ctx = run.ctx
    nodes = [n for n in ctx.nodes if targets.get(n.name)]
    by_digest: dict[str, list] = {}
    for n in nodes:
        by_digest.setdefault(targets[n.name], []).append(n)
    out = {n: sm.Outcome(True) for n, d in targets.items() if not d}
    for digest, group in by_digest.items():
        for name, ans in gate.wait_running(group, digest, ctx.playbook.timeouts.health,
                                           ctx.playbook.service.health_path).items():
            running = ans.body.get("digest") if ans.ok else None
            ok = running == digest
            out[name] = sm.Outcome(ok, "" if ok else (ans.reason() if not ans.ok else
                                                      f"running digest {str(running)[:12]} != expected {digest[:12]}"))
    return out


def _halted_since(run: _Run) -> bool:
    """A halt issued while this run works wins: look for one journaled since the run started."""
    return any(rec.get("action") == "halt" for rec in run.ctx.journal.read(since=run.journal_start))


def _forward(run: _Run, art: artifact_mod.Artifact, payload: bytes) -> sm.State:
    ctx, state = run.ctx, sm.State(tuple(run.names), art.digest)
    timeout = ctx.playbook.timeouts.command
    token = ctx.token()
    steps = {
        sm.Phase.PREFLIGHT: lambda: _preflight(run, len(payload)),
        sm.Phase.CLOSE_GATE: lambda: (_gate_results(gate.close_gate(ctx.nodes, token), down_is_closed=True), None),
        sm.Phase.STAGE: lambda: (_outcomes(
            run.fleet.run_all(lambda n: Call(_stage_command(ctx, art.digest), payload, timeout)),
            lambda n, out: _expect_digest(commands.parse_stage(out), art.digest)), None),
        sm.Phase.SWITCH: lambda: (_switch_and_restart(run, {n: art.digest for n in run.names}), None),
        sm.Phase.HEALTH: lambda: (_settle(run, art.digest), None),
        sm.Phase.OPEN_GATE: lambda: (_open_gate(run, art.digest), None),
    }
    while state.phase in steps:
        if state.phase != sm.Phase.PREFLIGHT and _halted_since(run):
            state = sm.abort(state, "fleet", "halted while the rollout ran")
            break
        state = run.phase(state, steps[state.phase])
    return state


def _stage_command(ctx: Context, digest: str) -> str:
    """Stage the release, then prune old ones in the same command: beyond keep_releases, but never the
    new one, the current one (the previous release after the switch) or the last good one."""
    last_good = ctx.journal.last_good()
    protect = sorted({digest} | ({last_good} if last_good else set()))
    return commands.render([commands.stage(ctx.root, digest), commands.prune(ctx.root, ctx.playbook.keep_releases,
                                                                             protect)])


def _expect_digest(got: str, want: str) -> None:
    if got != want:
        raise DeployctlError(f"node staged {got[:12]}, expected {want[:12]}")


def _settle(run: _Run, digest: str) -> dict[str, sm.Outcome]:
    """Wait until every router of the run reports `digest`.

    A router computes its digest by hashing every file of its release folder when it starts, so a
    match is also a per-file check of the files on disk after the switch, done by the node itself
    before the gate opens: no second hashing pass over SSH (`verify` still does both).
    """
    return _health(run, {n: digest for n in run.names})


def _open_gate(run: _Run, digest: str) -> dict[str, sm.Outcome]:
    """Open every gate (reached only after every node reported `digest`); each router opens only for
    its own running digest, and any refusal closes them all again."""
    ctx = run.ctx
    answers = gate.open_gate(ctx.nodes, digest, ctx.token())
    outcomes = _gate_results(answers)
    run.gate_opened = all(o.ok for o in outcomes.values())
    if not run.gate_opened:
        gate.close_gate(ctx.nodes, ctx.token())
    return outcomes


def _revert(run: _Run, state: sm.State) -> sm.State:
    targets = sm.revert_targets(state)
    run.journal("revert", targets=targets)
    run.ctx.emit("phase", phase="revert", status="start")
    start = time.monotonic()
    gate.close_gate(run.ctx.nodes, run.ctx.token())
    outcomes = _switch_and_restart(run, targets, phase="revert")
    ok_nodes = {n: d for n, d in targets.items() if outcomes[n].ok}
    health = _health(run, ok_nodes)  # what went back must run again
    merged = {n: (outcomes[n] if not outcomes[n].ok else health.get(n, sm.Outcome(True))) for n in targets}
    run.timings["revert"] = time.monotonic() - start
    before = len(state.failures)
    state = sm.advance(state, {**{n: sm.Outcome(True) for n in state.nodes}, **merged})
    run.ctx.emit("phase", phase="revert", status="done", seconds=run.timings["revert"],
                 failures=[f.describe() for f in state.failures[before:]])
    return state


def _finish(run: _Run, state: sm.State, kind: str) -> RunResult:
    """Journal the end of a run (controller and nodes) and raise if it did not reach DONE."""
    if state.phase == sm.Phase.REVERT:
        state = _revert(run, state)
    refused = state.phase == sm.Phase.REVERTED and all(f.phase == sm.Phase.PREFLIGHT for f in state.failures)
    outcome = {sm.Phase.DONE: "ok", sm.Phase.REVERTED: "refused" if refused else "rolled-back"}.get(
        state.phase, "inconsistent")
    failures = [f.describe() for f in state.failures]
    nodes = {n: o for n, o in run.outcomes.items() if n in run.names}
    record = entry(run.action, run=run.id, phase="done", digest=run.digest, outcome=outcome, failures=failures,
                   nodes=nodes, previous=state.previous, timings={k: round(v, 3) for k, v in run.timings.items()})
    run.ctx.journal.append(record)
    if state.phase != sm.Phase.DONE:
        run.node_journal(record)
    if state.phase == sm.Phase.DONE:
        return RunResult(state, run.timings, run.gate_opened)
    first = state.failures[0].describe() if state.failures else "aborted"
    if refused and run.unreachable:
        raise_for_unreachable(run.unreachable, f"{kind} refused in preflight, nothing changed")
    if any("halted" in f for f in failures):
        raise HaltedError(f"{kind} aborted, fleet halted: {first}; gate stays closed")
    if refused:
        raise DeployctlError(f"{kind} refused in preflight, nothing changed: {first}")
    if state.phase == sm.Phase.REVERTED:
        raise RolledBackError(f"{kind} failed: {first}; every node is back on its previous release, gate closed")
    raise InconsistentError(f"{kind} failed: {'; '.join(failures)}; the fleet may be mixed, gate closed: "
                            "run `deployctl recover`")


def _locked(ctx: Context, command: str, break_lock: bool):
    """Take the deploy lock (journaling a broken stale one); return a context manager releasing it."""
    from contextlib import contextmanager

    @contextmanager
    def held():
        broken = ctx.lock.acquire(command, break_stale=break_lock)
        if broken:
            ctx.journal.append(entry("lock-broken", holder=broken.holder, pid=broken.pid, since=broken.since))
        try:
            yield
        finally:
            ctx.lock.release()

    return held()


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
        raise_for_unreachable(fleet.connect(), "plan")
        res = fleet.run_all(lambda n: Call(commands.render(commands.probe(ctx.root)), timeout=15))
    probes = {n: commands.parse_probe(r.stdout) for n, r in res.items() if r.ok}
    digest = art.digest if art else _rollback_target(ctx, probes, to)
    size = len(art.payload()) if art else 0
    rows = []
    for n in ctx.nodes:
        p = probes.get(n.name)
        if p is None:
            rows.append(PlanRow(n.name, None, digest, 0, f"cannot probe: {res[n.name].reason()}"))
            continue
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
        raise_for_unreachable(fleet.connect(), "rollback preflight")
        res = fleet.run_all(lambda n: Call(commands.render(commands.probe(ctx.root)), timeout=15))
        probes = {n: commands.parse_probe(r.stdout) for n, r in res.items() if r.ok}
        target = _rollback_target(ctx, probes, to)
        missing = sorted(n.name for n in chosen if target not in probes.get(n.name, Probe(None, (), 0, False)).releases)
        if missing:
            raise UsageError(f"rollback refused, nothing changed: release {target[:12]} is not on {', '.join(missing)}")
        run = _Run(ctx, fleet, "rollback", target)
        run.names = [n.name for n in chosen]
        run.journal("start", nodes=run.names, partial=bool(nodes))
        start = time.monotonic()
        state = sm.State(tuple(run.names), target, sm.Phase.SWITCH,
                         previous={n: probes[n].current for n in run.names})
        gate.close_gate(ctx.nodes, ctx.token())
        keep_closed = _keep_closed_reason(nodes, probes)
        for phase, work in ((sm.Phase.SWITCH, lambda: (_switch_and_restart(run, {n: target for n in run.names}), None)),
                            (sm.Phase.HEALTH, lambda: (_settle(run, target), None)),
                            (sm.Phase.OPEN_GATE, lambda: (_open_gate_unless(run, target, keep_closed), None))):
            if state.phase != phase:
                break
            state = run.phase(state, work)
        run.timings["total"] = time.monotonic() - start
        return _finish(run, state, "rollback")


def _keep_closed_reason(partial: list[str] | None, probes: dict[str, Probe]) -> str | None:
    """A partial rollback leaves the fleet mixed, and a halted fleet stays halted: the gate stays closed."""
    if partial:
        return "partial rollback: the fleet is mixed"
    halted = sorted(n for n, p in probes.items() if p.halted)
    return f"halted: {', '.join(halted)}" if halted else None


def _open_gate_unless(run: _Run, digest: str, reason: str | None) -> dict[str, sm.Outcome]:
    if reason is None:
        return _open_gate(run, digest)
    run.ctx.emit("warning", message=f"gate stays closed ({reason})")
    return {n: sm.Outcome(True) for n in run.names}


def _rollback_target(ctx: Context, probes: dict[str, Probe], to: str | None) -> str:
    """Return the release to go back to: `to` (if the fleet ever ran it) or the one before the current."""
    known = ctx.journal.known_digests()
    if to is not None:
        if to not in known:
            raise UsageError(f"rollback refused: the fleet never ran {to[:12]} (not in the journal)")
        return to
    currents = {p.current for p in probes.values()}
    done = [r for r in ctx.journal.read() if r.get("phase") == "done" and r.get("outcome") == "ok"]
    for rec in reversed(done):
        if rec.get("digest") not in currents:
            return rec["digest"]
    raise UsageError("rollback refused, nothing changed: no previous release in the fleet's history")


def interrupted(ctx: Context) -> str | None:
    """Describe an interrupted rollout/rollback (journal start without done, and its lock stale), if any."""
    run = ctx.journal.interrupted()
    held = ctx.lock.info()
    if run is None or (held is not None and not held.stale):
        return None
    return (f"interrupted {run.get('action')} (run {run.get('run')}, {str(run.get('digest'))[:12]}, "
            f"started {run.get('ts')} by {run.get('who')}): run `deployctl recover`")


def _refuse_if_interrupted(ctx: Context) -> None:
    message = interrupted(ctx)
    if message:
        raise InconsistentError(f"the fleet may be mixed after an {message}")


def recover(ctx: Context) -> RunResult:
    """Bring the fleet to one consistent release after an interrupted run, gate closed.

    The target is the last release the whole fleet ran (from the journal), which must be on every
    node; failing that, the release every node already has as `current`. Breaks only a stale lock.
    """
    with _locked(ctx, "recover", break_lock=True), ctx.ssh() as fleet:
        raise_for_unreachable(fleet.connect(), "recover")
        gate.close_gate(ctx.nodes, ctx.token())
        res = fleet.run_all(lambda n: Call(commands.render(commands.probe(ctx.root)), timeout=15))
        bad = {n: r for n, r in res.items() if not r.ok}
        if bad:
            raise InconsistentError("recover: cannot probe " + ", ".join(sorted(bad)))
        probes = {n: commands.parse_probe(r.stdout) for n, r in res.items()}
        target = _recover_target(ctx, probes)
        run = _Run(ctx, fleet, "recover", target)
        run.journal("start", interrupted=ctx.journal.interrupted())
        state = sm.State(tuple(run.names), target, sm.Phase.SWITCH, previous={n: p.current for n, p in probes.items()})
        for phase, work in ((sm.Phase.SWITCH, lambda: (_switch_and_restart(run, {n: target for n in run.names}), None)),
                            (sm.Phase.HEALTH, lambda: (_settle(run, target), None)),
                            (sm.Phase.OPEN_GATE, lambda: (_open_gate_unless(run, target, "recover"), None))):
            if state.phase != phase:
                break
            state = run.phase(state, work)
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
