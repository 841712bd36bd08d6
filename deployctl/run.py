"""The one phase runner: rollout, its revert, rollback and recover all walk the same loop.

A Run journals each phase (fsync'd) before it starts, runs it on every node, folds the per-node
outcomes into the pure state machine of phases.py, and stops at the first phase any node fails.
From SWITCH on, a failure sends the run to REVERT, which walks the same loop: every node that may
have switched goes back to its previous release, gate closed. The deploy lock, the probes that
start a run and the check for an interrupted run live here too.
"""

from __future__ import annotations

import dataclasses
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator

from deployctl import commands, phases as sm
from deployctl.context import Context
from deployctl.errors import DeployctlError, HaltedError, InconsistentError, RolledBackError, UsageError
from deployctl.gate import Answer
from deployctl.journal import encode, entry
from deployctl.ssh import Call, Fleet, NodeResult, raise_for_unreachable

Outcomes = dict[str, sm.Outcome]
Work = Callable[[sm.State], Outcomes]


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


def outcomes(results: dict[str, NodeResult], parse: Callable[[str, bytes], object] | None = None) -> Outcomes:
    """Turn NodeResults into Outcomes; `parse(node, stdout)` raising DeployctlError fails that node."""
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


def gate_outcomes(answers: dict[str, Answer], down_is_closed: bool = False) -> Outcomes:
    """Outcomes of a gate request; for closing, a router that is not running counts as closed."""
    return {n: sm.Outcome(a.ok or (down_is_closed and a.down), "" if a.ok else a.reason())
            for n, a in answers.items()}


class Run:
    """One rollout, rollback or recover in progress: its id, nodes, journal records, timings, fleet."""

    def __init__(self, ctx: Context, fleet: Fleet, action: str, digest: str, names: list[str] | None = None,
                 stop_on_halt: bool = True, deadline: float | None = None, **start: object):
        self.ctx, self.fleet, self.action, self.digest = ctx, fleet, action, digest
        self.id = uuid.uuid4().hex[:12]
        self.names = names or [n.name for n in ctx.nodes]
        self.stop_on_halt = stop_on_halt  # a rollout stops when halted; a rollback goes on, gate closed
        self.timings: dict[str, float] = {}
        self.probes: dict[str, commands.Probe] = {}  # set by a preflight step
        self.unreachable: dict[str, NodeResult] = {}  # nodes preflight could not reach
        self.gate_opened = False
        self.outcomes = {n: "ok" for n in self.names}  # per node, for the journal: "ok" or its first failure
        self.journal_start = ctx.journal.size()  # where this run's records begin
        self.started = time.monotonic()
        # A rollout's overall deadline (playbook timeouts.rollout), on the controller's monotonic clock:
        # no node's clock is read. A rollback or recover has none: it is the way back.
        self.deadline_s = deadline
        self.deadline = None if deadline is None else self.started + deadline
        self.journal("start", **start, **({"deadline": deadline} if deadline is not None else {}))

    def journal(self, phase: str, **fields) -> None:
        self.ctx.journal.append(entry(self.action, run=self.id, phase=phase, digest=self.digest, **fields))

    def halted_since(self) -> bool:
        """A halt issued while this run works wins: look for one journaled since the run started."""
        return any(rec.get("action") == "halt" for rec in self.ctx.journal.read(since=self.journal_start))

    def walk(self, state: sm.State, steps: dict[sm.Phase, Work], revert: bool = True) -> sm.State:
        """Run the state's phase while `steps` has one for it; a revert, once due, is walked too
        (unless `revert` is False: the run stops in REVERT and the caller decides)."""
        steps = {**steps, sm.Phase.REVERT: self.revert} if revert else steps
        while state.phase in steps:
            if state.phase in sm.FORWARD[1:] and self.past_deadline():
                state = sm.abort(state, "fleet", self.deadline_passed())
                continue
            if self.stop_on_halt and state.phase in sm.FORWARD[1:] and self.halted_since():
                state = sm.abort(state, "fleet", f"halted while the {self.action} ran")
                continue
            state = self.phase(state, steps[state.phase])
        return state

    def phase(self, state: sm.State, work: Work) -> sm.State:
        """Journal the phase, run `work(state)` -> outcomes, fold them into the state, time it, emit events."""
        name = state.phase.value
        self.journal(name, **({"targets": sm.revert_targets(state)} if state.phase == sm.Phase.REVERT else {}))
        self.ctx.emit("phase", phase=name, status="start")
        start = time.monotonic()
        results = work(state)
        self.timings[name] = time.monotonic() - start
        for node, o in sorted(results.items()):
            self.ctx.emit("node", phase=name, node=node, ok=o.ok, reason=o.reason)
            if not o.ok and self.outcomes.get(node) == "ok":
                self.outcomes[node] = f"failed in {name}: {o.reason}"
        if state.phase == sm.Phase.REVERT:  # nodes that needed no revert count as done
            results = {**{n: sm.Outcome(True) for n in state.nodes}, **results}
        nxt = sm.advance(state, results, self.probes if state.phase == sm.Phase.PREFLIGHT else None)
        if state.phase in sm.FORWARD and nxt.failures[len(state.failures):] and self.past_deadline():
            # The phase was cut short by the run's deadline: say so first, naming the nodes it waited on.
            late = sorted(f.node for f in nxt.failures[len(state.failures):])
            first = sm.Failure("fleet", state.phase, f"{self.deadline_passed()} waiting on {', '.join(late)}")
            nxt = dataclasses.replace(nxt, failures=state.failures + (first,) + nxt.failures[len(state.failures):])
        # Only this phase's failures: a forward phase starts with none, a revert after the run's own.
        self.ctx.emit("phase", phase=name, status="done", seconds=self.timings[name],
                      failures=[f.describe() for f in nxt.failures[len(state.failures):]])
        return nxt

    def past_deadline(self) -> bool:
        """Whether the run's overall deadline (if it has one) has passed."""
        return self.deadline is not None and time.monotonic() >= self.deadline

    def deadline_passed(self) -> str:
        return f"the {self.action} deadline of {self.deadline_s:g} s (playbook timeouts.rollout) passed"

    def budget(self, timeout: float) -> float:
        """`timeout` for one forward step, cut to what is left of the run's deadline (a moment at least,
        so the step itself fails and names its node)."""
        if self.deadline is None:
            return timeout
        return max(0.05, min(timeout, self.deadline - time.monotonic()))

    # ---- the steps every run shares -------------------------------------------------------------

    def close_gates(self, state: sm.State | None = None) -> Outcomes:
        """Close every gate of the fleet; a router that is not running counts as closed."""
        return gate_outcomes(self.ctx.routers.close_gate(self.ctx.nodes), down_is_closed=True)

    def switch(self, state: sm.State) -> Outcomes:
        """Switch and restart every node through the command held open on it (a rollout's `deploy`,
        a rollback's `retarget`): no new exec. Each node journals the switch itself."""
        digest = state.target
        lines = {n: commands.switch_request(digest, entry(self.action, run=self.id, phase="switch", digest=digest,
                                                          node=n), self.ctx.playbook.service) for n in self.names}
        return outcomes(self.fleet.finish(lines, self.budget(self.ctx.playbook.timeouts.command)), _switched_to(
            {n: digest for n in self.names}))

    def settle(self, state: sm.State) -> Outcomes:
        """Wait until every router of the run reports the target digest.

        A router computes its digest by hashing every file of its release folder when it starts, so a
        match is also a per-file check of the files on disk after the switch, done by the node itself
        before the gate opens: no second hashing pass over SSH (`verify` still does both).
        """
        return self._health({n: state.target for n in self.names}, self.budget(self.ctx.playbook.timeouts.health))

    def open_gates(self, state: sm.State, keep_closed: str | None = None) -> Outcomes:
        """Open every gate (only reached once every node reported the target), all or none.
        With `keep_closed` (a reason), or after a halt, the gates stay closed."""
        # A run that stops on a halt has just checked (Run.walk); one that goes on looks here.
        if keep_closed is None and not self.stop_on_halt and self.halted_since():
            keep_closed = "the fleet was halted during the run"
        if keep_closed is not None:
            self.ctx.emit("warning", message=f"gate stays closed ({keep_closed})")
            return {n: sm.Outcome(True) for n in self.names}
        results = gate_outcomes(self.ctx.routers.open_all_or_none(self.ctx.nodes, state.target))
        self.gate_opened = all(o.ok for o in results.values())
        return results

    def revert(self, state: sm.State) -> Outcomes:
        """Put every node that may have switched back on its previous release (gate closed), and
        wait until what went back runs again."""
        targets = sm.revert_targets(state)
        self.ctx.routers.close_gate(self.ctx.nodes)
        timeout, service = self.ctx.playbook.timeouts.command, self.ctx.playbook.service

        def call(node: str) -> Call:
            # The node journals the revert itself, in the same command.
            record = encode(entry(self.action, run=self.id, phase="revert", digest=targets[node], node=node))
            return Call(commands.render(commands.activate(self.ctx.root, targets[node], service)), record, timeout)

        switched = outcomes(self.fleet.run_all(call, list(targets)), _switched_to(targets))
        health = self._health({n: d for n, d in targets.items() if switched[n].ok}, self.ctx.playbook.timeouts.health)
        return {n: (switched[n] if not switched[n].ok else health.get(n, sm.Outcome(True))) for n in targets}

    def _health(self, targets: dict[str, str | None], timeout: float) -> Outcomes:
        """Wait up to `timeout` s until each node's router reports its target; a node with no target
        (stopped) passes."""
        out = {n: sm.Outcome(True) for n, d in targets.items() if not d}
        by_digest: dict[str, list] = {}
        for n in self.ctx.nodes:
            if targets.get(n.name):
                by_digest.setdefault(targets[n.name], []).append(n)
        for digest, group in by_digest.items():
            for name, ans in self.ctx.routers.wait_running(group, digest, timeout).items():
                running = ans.body.get("digest") if ans.ok else None
                out[name] = sm.Outcome(running == digest, "" if running == digest else ans.reason() if not ans.ok
                                       else f"running digest {str(running)[:12]} != expected {digest[:12]}")
        return out

    # ---- the end ---------------------------------------------------------------------------------

    def finish(self, state: sm.State) -> RunResult:
        """Journal the end of the run (controller, and nodes if it failed); return or raise what happened."""
        self.timings["total"] = time.monotonic() - self.started
        refused = state.phase == sm.Phase.REVERTED and all(f.phase == sm.Phase.PREFLIGHT for f in state.failures)
        # "ok" means the whole fleet runs the release (journal.good_run): a forced partial run is not that.
        whole = set(self.names) == {n.name for n in self.ctx.nodes}
        outcome = {sm.Phase.DONE: "ok" if whole else "ok-partial",
                   sm.Phase.REVERTED: "refused" if refused else "rolled-back"}.get(state.phase, "inconsistent")
        failures = [f.describe() for f in state.failures]
        nodes = {n: o for n, o in self.outcomes.items() if n in self.names}
        record = entry(self.action, run=self.id, phase="done", digest=self.digest, outcome=outcome,
                       failures=failures, nodes=nodes, previous=state.previous,
                       timings={k: round(v, 3) for k, v in self.timings.items()})
        self.ctx.journal.append(record)
        if state.phase == sm.Phase.DONE:
            return RunResult(state, self.timings, self.gate_opened)
        self._node_journal(record)
        raise _failure(self.action, state, refused, self.unreachable)

    def _node_journal(self, record: dict) -> None:
        """Append a failed run's outcome to every reachable node's own journal (best effort, reported).

        A run that succeeds needs no extra round trip: each node journaled its switch in the switch
        command, and each router journals the gate opening.
        """
        argv = commands.journal_append(self.ctx.root)
        res = self.fleet.run_all(lambda n: Call(commands.render(argv), encode(record), 30), self.names)
        missed = sorted(n for n, r in res.items() if not r.ok)
        if missed:
            self.ctx.emit("warning", message=f"node journal not written on: {', '.join(missed)}")


def _failure(kind: str, state: sm.State, refused: bool, unreachable: dict[str, NodeResult]) -> DeployctlError:
    """The error a run that did not reach DONE ends with; its class carries the exit code."""
    failures = [f.describe() for f in state.failures]
    first = failures[0] if failures else "aborted"
    if refused and unreachable:
        try:
            raise_for_unreachable(unreachable, f"{kind} refused in preflight, nothing changed")
        except DeployctlError as exc:
            return exc
    if any("halted" in f for f in failures) and state.phase == sm.Phase.REVERTED:
        return HaltedError(f"{kind} aborted, fleet halted: {first}; gate stays closed")
    if refused:
        return DeployctlError(f"{kind} refused in preflight, nothing changed: {first}")
    if state.phase == sm.Phase.REVERTED:
        return RolledBackError(f"{kind} failed: {first}; every node is back on its previous release, gate closed")
    return InconsistentError(f"{kind} failed: {'; '.join(failures)}; the fleet may be mixed, gate closed: "
                             "run `deployctl recover`")


def _switched_to(targets: dict[str, str | None]) -> Callable[[str, bytes], None]:
    def check(node: str, stdout: bytes) -> None:
        # A stop (no release to go back to) prints no switch answer; a switch must name its target.
        if targets[node] is not None and commands.parse_switch(stdout)[1] != targets[node]:
            raise DeployctlError(f"node switched to something other than {targets[node][:12]}")

    return check


# ---- before a run: lock, interrupted runs, probes ---------------------------------------------------

@contextmanager
def locked(ctx: Context, command: str, break_lock: bool) -> Iterator[None]:
    """Hold the deploy lock for the block (journaling a broken stale one); LockHeldError if taken."""
    broken = ctx.lock.acquire(command, break_stale=break_lock)
    if broken:
        ctx.journal.append(entry("lock-broken", holder=broken.holder, pid=broken.pid, since=broken.since))
    try:
        yield
    finally:
        ctx.lock.release()


def interrupted(ctx: Context) -> str | None:
    """Describe an interrupted rollout/rollback (journal start without done, and its lock stale), if any."""
    run = ctx.journal.interrupted()
    held = ctx.lock.info()
    if run is None or (held is not None and not held.stale):
        return None
    return (f"interrupted {run.get('action')} (run {run.get('run')}, {str(run.get('digest'))[:12]}, "
            f"started {run.get('ts')} by {run.get('who')}): run `deployctl recover`")


def refuse_if_interrupted(ctx: Context) -> None:
    """InconsistentError if an earlier run was interrupted: the fleet may be mixed."""
    message = interrupted(ctx)
    if message:
        raise InconsistentError(f"the fleet may be mixed after an {message}")


def refuse_if_nodes_left(ctx: Context, what: str) -> None:
    """UsageError if the last rollout, rollback or recover worked on nodes the inventory no longer lists:
    going back (or recovering) without them would leave them on another release, unseen and maybe
    taking orders. A node added since needs no check here: the target release is not on it."""
    for rec in ctx.journal.newest_first():
        if rec.get("phase") == "start" and rec.get("action") in ("rollout", "rollback", "recover"):
            names = rec.get("nodes")
            gone = sorted(set(names) - {n.name for n in ctx.nodes}) if isinstance(names, list) else []
            if gone:
                raise UsageError(f"{what} refused, nothing changed: {', '.join(gone)} took part in the last "
                                 f"{rec['action']} (run {rec.get('run')}) but {'is' if len(gone) == 1 else 'are'} "
                                 f"not in {ctx.inventory.path.name} now, and may still run its release: put "
                                 f"{'it' if len(gone) == 1 else 'them'} back in the inventory, or roll out to the "
                                 "fleet as it is now")
            return


def probe_all(ctx: Context, fleet: Fleet, what: str) -> dict[str, commands.Probe]:
    """Probe every node (connecting as it goes); HostKeyError/UnreachableError naming any node not reached."""
    res = fleet.run_all(lambda n: Call(commands.render(commands.probe(ctx.root)), timeout=15))
    return _probes(res, what, commands.parse_probe)


def probe_held(ctx: Context, fleet: Fleet, what: str) -> dict[str, commands.Probe]:
    """probe_all through a `retarget` command left waiting on each node: Run.switch can then switch
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
