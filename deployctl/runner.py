"""The machinery every fleet-changing run shares: journaled phases, switch and restart, health,
gate, revert to the previous releases, and the deploy lock. deploy.py builds rollout, rollback
and recover from these parts.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from deployctl import artifact as artifact_mod, commands, gate, rollout as sm
from deployctl.api import Context, raise_for_unreachable
from deployctl.errors import DeployctlError, HaltedError, InconsistentError, RolledBackError, UsageError
from deployctl.executor import Call, NodeResult, SSHFleet
from deployctl.journal import encode, entry


@dataclass(frozen=True)
class RunResult:
    """What a rollout, rollback or recover did: its final state, time per phase, whether the gate opened."""

    state: sm.State
    timings: dict[str, float]
    gate_open: bool = False


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

    return _outcomes(run.fleet.run_all(call, list(targets)), _switched_to(targets))


def switch_held(run: _Run, digest: str) -> dict[str, sm.Outcome]:
    """Switch and restart every node of the run through the command held open on it (a rollout's
    `deploy`, a rollback's `retarget`): no new exec. Each node journals the switch itself."""
    ctx = run.ctx
    lines = {n: commands.switch_request(digest, entry(run.action, run=run.id, phase="switch", digest=digest, node=n),
                                        ctx.playbook.service) for n in run.names}
    results = run.fleet.release(lines, ctx.playbook.timeouts.command)
    return _outcomes(results, _switched_to({n: digest for n in run.names}))


def _switched_to(targets: dict[str, str | None]):
    def check(node: str, stdout: bytes) -> None:
        # A stop (no release to go back to) prints no switch answer; a switch must name its target.
        if targets[node] is not None and commands.parse_switch(stdout)[1] != targets[node]:
            raise DeployctlError(f"node switched to something other than {targets[node][:12]}")

    return check


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


def _open_gate_unless(run: _Run, digest: str, reason: str | None) -> dict[str, sm.Outcome]:
    if reason is None:
        return _open_gate(run, digest)
    run.ctx.emit("warning", message=f"gate stays closed ({reason})")
    return {n: sm.Outcome(True) for n in run.names}


def switch_phases(run: _Run, state: sm.State, target: str, keep_closed: str | None) -> sm.State:
    """Run SWITCH, HEALTH and OPEN_GATE towards `target` (rollback, recover: each node's `retarget`
    command from probe_held waits for the switch request); stop at the first failure.

    With `keep_closed` (a reason), the gate is left closed instead of opened.
    """
    steps = ((sm.Phase.SWITCH, lambda: (switch_held(run, target), None)),
             (sm.Phase.HEALTH, lambda: (_settle(run, target), None)),
             (sm.Phase.OPEN_GATE, lambda: (_open_gate_unless(run, target, keep_closed), None)))
    for phase, work in steps:
        if state.phase != phase:
            break
        state = run.phase(state, work)
    return state


def probe_all(ctx: Context, fleet: SSHFleet, what: str) -> dict[str, commands.Probe]:
    """Probe every node (connecting as it goes); HostKeyError/UnreachableError naming any node not reached."""
    res = fleet.run_all(lambda n: Call(commands.render(commands.probe(ctx.root)), timeout=15))
    return _probes(res, what, commands.parse_probe)


def probe_held(ctx: Context, fleet: SSHFleet, what: str) -> dict[str, commands.Probe]:
    """probe_all through a `retarget` command left waiting on each node: switch_held can then switch
    it with no new exec; closing the fleet ends the ones not switched, changing nothing."""
    command = commands.render(commands.retarget(ctx.root))
    res = fleet.hold({t.name: Call(command, None, timeout=min(15, ctx.playbook.timeouts.command))
                      for t in fleet.targets})
    return _probes(res, what, commands.parse_probe_answer)


def _probes(res: dict[str, NodeResult], what: str, parse) -> dict[str, commands.Probe]:
    raise_for_unreachable(res, what)
    bad = sorted(n for n, r in res.items() if not r.ok)
    if bad:
        raise InconsistentError(f"{what}: cannot probe " + "; ".join(f"{n}: {res[n].reason()}" for n in bad))
    return {n: parse(r.stdout) for n, r in res.items()}


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
