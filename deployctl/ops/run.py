"""The one phase runner: rollout, its revert, rollback and recover all walk the same loop.

A Run journals each phase (fsync'd) before it starts, runs it on every node, folds the per-node
outcomes into the pure state machine of model/phases.py, and stops at the first phase any node fails.
From SWITCH on, a failure sends the run to REVERT, which walks the same loop: every node that may
have switched goes back to its previous release, gate closed. SIGINT, SIGTERM and SIGHUP stop a
rollout the same way, between phases (Run.walk). What the outcomes and the run's end mean is
ops/results.py; the lock, the probes and the refusals before a run are ops/guards.py.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from itertools import takewhile

from deployctl.errors import InconsistentError, JournalError
from deployctl.model import phases
from deployctl.ops.context import Context
from deployctl.ops.results import CONTROLLER, Outcomes, RunResult, failure, gate_outcomes, outcomes, switched_to
from deployctl.remote import commands
from deployctl.remote.ssh import Call, Fleet, NodeResult
from deployctl.state.journal import encode, entry

# Phases before which a run that cannot journal has switched no node.
SAFE_TO_STOP = ("start", phases.Phase.PREFLIGHT.value, phases.Phase.CLOSE_GATE.value, phases.Phase.STAGE.value,
                phases.Phase.SWITCH.value)
Work = Callable[[phases.State], Outcomes]

# Signals that stop a run at its next safe point (between phases) instead of ending the process:
# Ctrl-C, `kill`, a closed terminal. SIGKILL cannot be caught; an interrupted run is then left to recover.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
# Test hook: with DEPLOYCTL_TEST_PAUSE=<file> and DEPLOYCTL_TEST_PAUSE_AT=<phase>[,<phase>...], a run
# writes the phase's name to <file> when that phase starts (journaled, not yet run) and waits until
# the file is removed (at most PAUSE_SECONDS): tests act on a run in a known phase without sleeps.
PAUSE_FILE, PAUSE_AT, PAUSE_SECONDS = "DEPLOYCTL_TEST_PAUSE", "DEPLOYCTL_TEST_PAUSE_AT", 60.0


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
        self.signals: list[tuple[str, str]] = []  # (signal name, phase it arrived in), in order of arrival
        self.current = phases.Phase.PREFLIGHT.value  # the phase running now, for a signal's record
        self.outcomes = {n: "ok" for n in self.names}  # per node, for the journal: "ok" or its first failure
        self.journal_start = ctx.journal.mark()  # where this run's records begin
        self.started = time.monotonic()
        # A rollout's overall deadline (playbook timeouts.rollout), on the controller's monotonic clock:
        # no node's clock is read. A rollback or recover has none: it is the way back.
        self.deadline_s = deadline
        self.deadline = None if deadline is None else self.started + deadline
        self.journal("start", **start, **({"deadline": deadline} if deadline is not None else {}))

    def journal(self, phase: str, **fields) -> None:
        """Journal a phase before it starts; a journal that cannot be written stops the run there."""
        try:
            self.ctx.journal.append(entry(self.action, run=self.id, phase=phase, digest=self.digest, **fields))
        except JournalError as exc:
            if phase in SAFE_TO_STOP:
                raise JournalError(f"{exc}; the {self.action} stopped before its {phase} phase, no node "
                                   "switched") from None
            raise InconsistentError(f"{exc}; the {self.action} stopped before its {phase} phase, the fleet may "
                                    "be mixed: run `deployctl recover` once the journal can be written") from None

    def halted_since(self) -> bool:
        """A halt issued while this run works wins: look for one journaled since the run started."""
        since = self.ctx.journal.read_from(self.journal_start)
        if since is None:  # the journal changed under the run: what follows the run's own start record
            since = takewhile(lambda r: (r.get("run"), r.get("phase")) != (self.id, "start"),
                              self.ctx.journal.newest_first())
        return any(rec.get("action") == "halt" for rec in since)

    def walk(self, state: phases.State, steps: dict[phases.Phase, Work], revert: bool = True) -> phases.State:
        """Run the state's phase while `steps` has one for it; a revert, once due, is walked too
        (unless `revert` is False: the run stops in REVERT and the caller decides).

        SIGINT, SIGTERM and SIGHUP are caught meanwhile: a run that stops on a halt (a rollout) stops
        at the end of the phase the signal arrived in, and reverts whatever may have switched; a
        rollback or recover goes on to its end, as it is the way back. A second signal changes nothing.
        """
        steps = {**steps, phases.Phase.REVERT: self.revert} if revert else steps
        with self._catching_signals():
            while True:
                if self.stop_on_halt and self.signals and state.phase in phases.FORWARD[1:]:
                    name, during = self.signals[0]
                    state = phases.abort(state, CONTROLLER, f"stopped by {name}", phases.Phase(during))
                    continue
                if state.phase not in steps:
                    return state
                if state.phase in phases.FORWARD[1:] and self.past_deadline():
                    state = phases.abort(state, "fleet", self.deadline_passed())
                    continue
                if self.stop_on_halt and state.phase in phases.FORWARD[1:] and self.halted_since():
                    state = phases.abort(state, "fleet", f"halted while the {self.action} ran")
                    continue
                state = self.phase(state, steps[state.phase])

    @contextmanager
    def _catching_signals(self) -> Iterator[None]:
        """Record STOP_SIGNALS on this run instead of dying of them (main thread only: elsewhere
        Python cannot install handlers, and the caller keeps its own)."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def record(signum: int, frame) -> None:  # only appends: no I/O in a handler
            self.signals.append((signal.Signals(signum).name, self.current))

        saved = {s: signal.signal(s, record) for s in STOP_SIGNALS}
        try:
            yield
        finally:
            for s, handler in saved.items():
                signal.signal(s, handler)

    def _pause(self, phase: str) -> None:
        """The DEPLOYCTL_TEST_PAUSE hook (see PAUSE_FILE); does nothing unless both variables are set."""
        path, at = os.environ.get(PAUSE_FILE), os.environ.get(PAUSE_AT, "").split(",")
        if not path or phase not in at:
            return
        # Written aside and renamed: whoever waits for the file never reads it before the phase is in it.
        with open(path + ".part", "w") as f:
            f.write(phase)
        os.replace(path + ".part", path)
        end = time.monotonic() + PAUSE_SECONDS
        while os.path.exists(path) and time.monotonic() < end:
            time.sleep(0.01)

    def phase(self, state: phases.State, work: Work) -> phases.State:
        """Journal the phase, run `work(state)` -> outcomes, fold them into the state, time it, emit events."""
        name = self.current = state.phase.value
        seen = len(self.signals)
        self.journal(name, **({"targets": phases.revert_targets(state)} if state.phase == phases.Phase.REVERT else {}),
                     **({"signals": [s for s, _ in self.signals]} if self.signals else {}))
        self.ctx.emit("phase", phase=name, status="start")
        self._pause(name)
        start = time.monotonic()
        results = work(state)
        self.timings[name] = time.monotonic() - start
        for node, o in sorted(results.items()):
            self.ctx.emit("node", phase=name, node=node, ok=o.ok, reason=o.reason)
            if not o.ok and self.outcomes.get(node) == "ok":
                self.outcomes[node] = f"failed in {name}: {o.reason}"
        if state.phase == phases.Phase.REVERT:  # nodes that needed no revert count as done
            results = {**{n: phases.Outcome(True) for n in state.nodes}, **results}
        nxt = phases.advance(state, results, self.probes if state.phase == phases.Phase.PREFLIGHT else None)
        if state.phase in phases.FORWARD and nxt.failures[len(state.failures):] and self.past_deadline():
            # The phase was cut short by the run's deadline: say so first, naming the nodes it waited on.
            late = sorted(f.node for f in nxt.failures[len(state.failures):])
            first = phases.Failure("fleet", state.phase, f"{self.deadline_passed()} waiting on {', '.join(late)}")
            nxt = dataclasses.replace(nxt, failures=state.failures + (first,) + nxt.failures[len(state.failures):])
        # Only this phase's failures: a forward phase starts with none, a revert after the run's own.
        self.ctx.emit("phase", phase=name, status="done", seconds=self.timings[name],
                      failures=[f.describe() for f in nxt.failures[len(state.failures):]])
        for sig, during in self.signals[seen:]:
            self.ctx.emit("warning", message=f"{sig} received during {during}: " + (
                "stopping after this phase" if self.stop_on_halt and state.phase in phases.FORWARD else
                f"the {self.action} goes on to its end" if not self.stop_on_halt else "the revert goes on to its end"))
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

    def close_gates(self, state: phases.State | None = None) -> Outcomes:
        """Close every gate of the fleet; a router that is not running counts as closed."""
        return gate_outcomes(self.ctx.routers.close_gate(self.ctx.nodes), down_is_closed=True)

    def switch(self, state: phases.State) -> Outcomes:
        """Switch and restart every node through the command held open on it (a rollout's `deploy`,
        a rollback's `retarget`): no new exec. Each node journals the switch itself."""
        digest = state.target
        lines = {n: commands.switch_request(digest, entry(self.action, run=self.id, phase="switch", digest=digest,
                                                          node=n), self.ctx.playbook.service, becomes(self.ctx, n))
                 for n in self.names}
        return outcomes(self.fleet.finish(lines, self.budget(self.ctx.playbook.timeouts.command)), switched_to(
            {n: digest for n in self.names}))

    def settle(self, state: phases.State) -> Outcomes:
        """Wait until every router of the run reports the target digest.

        A router computes its digest by hashing every file of its release folder when it starts, so a
        match is also a per-file check of the files on disk after the switch, done by the node itself
        before the gate opens: no second hashing pass over SSH (`verify` still does both).
        """
        return self._health({n: state.target for n in self.names}, self.budget(self.ctx.playbook.timeouts.health))

    def open_gates(self, state: phases.State, keep_closed: str | None = None) -> Outcomes:
        """Open every gate (only reached once every node reported the target), all or none.
        With `keep_closed` (a reason), or after a halt, the gates stay closed."""
        # A run that stops on a halt has just checked (Run.walk); one that goes on looks here.
        if keep_closed is None and not self.stop_on_halt and self.halted_since():
            keep_closed = "the fleet was halted during the run"
        if keep_closed is not None:
            self.ctx.emit("warning", message=f"gate stays closed ({keep_closed})")
            return {n: phases.Outcome(True) for n in self.names}
        results = gate_outcomes(self.ctx.routers.open_all_or_none(self.ctx.nodes, state.target))
        self.gate_opened = all(o.ok for o in results.values())
        return results

    def revert(self, state: phases.State) -> Outcomes:
        """Put every node that may have switched back on its previous release (gate closed), and
        wait until what went back runs again."""
        targets = phases.revert_targets(state)
        self.ctx.routers.close_gate(self.ctx.nodes)
        timeout, service = self.ctx.playbook.timeouts.command, self.ctx.playbook.service

        def call(node: str) -> Call:
            # The node journals the revert itself, in the same command.
            record = encode(entry(self.action, run=self.id, phase="revert", digest=targets[node], node=node))
            how = commands.activate(self.ctx.root, targets[node], service, becomes(self.ctx, node))
            return Call(commands.render(how), record, timeout)

        switched = outcomes(self.fleet.run_all(call, list(targets)), switched_to(targets))
        health = self._health({n: d for n, d in targets.items() if switched[n].ok}, self.ctx.playbook.timeouts.health)
        return {n: (switched[n] if not switched[n].ok else health.get(n, phases.Outcome(True))) for n in targets}

    def _health(self, targets: dict[str, str | None], timeout: float) -> Outcomes:
        """Wait up to `timeout` s until each node's router reports its target; a node with no target
        (stopped) passes."""
        out = {n: phases.Outcome(True) for n, d in targets.items() if not d}
        by_digest: dict[str, list] = {}
        for n in self.ctx.nodes:
            target = targets.get(n.name)
            if target:
                by_digest.setdefault(target, []).append(n)
        for digest, group in by_digest.items():
            for name, ans in self.ctx.routers.wait_running(group, digest, timeout).items():
                running = ans.body.get("digest") if ans.ok else None
                out[name] = phases.Outcome(running == digest, "" if running == digest else ans.reason() if not ans.ok
                                       else f"running digest {str(running)[:12]} != expected {digest[:12]}")
        return out

    # ---- the end ---------------------------------------------------------------------------------

    def finish(self, state: phases.State) -> RunResult:
        """Journal the end of the run (controller, and nodes if it failed); return or raise what happened."""
        self.timings["total"] = time.monotonic() - self.started
        refused = (state.phase == phases.Phase.REVERTED
                   and all(f.phase == phases.Phase.PREFLIGHT for f in state.failures))
        # "ok" means the whole fleet runs the release (journal.good_run): a forced partial run is not that.
        whole = set(self.names) == {n.name for n in self.ctx.nodes}
        outcome = {phases.Phase.DONE: "ok" if whole else "ok-partial",
                   phases.Phase.REVERTED: "refused" if refused else "rolled-back"}.get(state.phase, "inconsistent")
        failures = [f.describe() for f in state.failures]
        nodes = {n: o for n, o in self.outcomes.items() if n in self.names}
        record = entry(self.action, run=self.id, phase="done", digest=self.digest, outcome=outcome,
                       failures=failures, nodes=nodes, previous=state.previous,
                       timings={k: round(v, 3) for k, v in self.timings.items()},
                       **({"signals": [f"{s} during {p}" for s, p in self.signals]} if self.signals else {}))
        self.ctx.journal.append(record)
        if state.phase == phases.Phase.DONE:
            return RunResult(state, self.timings, self.gate_opened)
        self._node_journal(record)
        raise failure(self.action, state, refused, self.unreachable)

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


def becomes(ctx: Context, name: str) -> bool:
    """Whether node `name` logs in as a user that restarts the service with `sudo -n` (`become: sudo`)."""
    return any(n.name == name and n.become == "sudo" for n in ctx.nodes)
