"""An invariant checker that runs beside a fault test (Jepsen-style): no two open gates on different releases.

While the test runs, a background thread sweeps every router's GET /health about
every 25 ms and records any sweep in which two nodes both have their gate open
while running different digests: the one state deployctl must never allow. It
also keeps the controller journal's bytes from the start, so the end can check
that nothing was lost or rewritten and that every line is one JSON object.

It watches until the test ends: should it reach MAX_RUN_S first, that is a
finding, not a silent stop. A node is given SWEEP_TIMEOUT_S to answer, so a slow
node is waited for rather than skipped; a node it cannot read in a sweep counts
as unknown for that sweep, and every unknown is reported with the test (a
report section "observer"): a test that kills or pauses a node shows it there.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field

import pytest

from deployctl.remote import routers

SWEEP_EVERY_S = 0.025
SWEEP_TIMEOUT_S = 2.0   # a slow node is waited for this long in each sweep, not skipped
MAX_RUN_S = 900.0       # a safety bound only: reaching it is reported as a problem


@dataclass
class Observer:
    """Sweeps the fleet's health in a thread until `stop()` or MAX_RUN_S; read the findings after `stop()`."""

    ctx: object
    journal_before: bytes = b""
    sweeps: int = 0
    mixed_open: list = field(default_factory=list)   # (seconds since start, {node: digest} of open gates)
    crashed: list = field(default_factory=list)      # an exception from the sweep thread is a finding too
    unknown: dict = field(default_factory=dict)      # node -> sweeps in which it could not be read
    ran_out: bool = False                            # stopped at MAX_RUN_S, before the test ended
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _t0: float = 0.0

    def start(self) -> Observer:
        path = self.ctx.journal.path
        self.journal_before = path.read_bytes() if path.exists() else b""
        self._t0 = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="observer", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        end = self._t0 + MAX_RUN_S
        try:
            while not self._stop.is_set():
                if time.monotonic() >= end:
                    self.ran_out = True
                    return
                answers = routers.health(self.ctx.nodes, timeout=SWEEP_TIMEOUT_S)
                for n, a in answers.items():
                    if not a.ok or a.body.get("gate") not in ("open", "closed"):
                        self.unknown[n] = self.unknown.get(n, 0) + 1
                open_ = {n: a.body.get("digest") for n, a in answers.items()
                         if a.ok and a.body.get("gate") == "open"}
                if len(set(open_.values())) > 1:
                    self.mixed_open.append((round(time.monotonic() - self._t0, 3), open_))
                self.sweeps += 1
                self._stop.wait(SWEEP_EVERY_S)
        except Exception as exc:  # reported by problems(), never lost in a thread
            self.crashed.append(repr(exc))

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)

    def problems(self) -> list[str]:
        """Return every invariant broken while the observer ran (empty when all held)."""
        found = [f"observer thread crashed: {c}" for c in self.crashed]
        if self._thread is not None and self._thread.is_alive():
            found.append("observer thread did not stop within 5 s")
        if self.sweeps == 0:
            found.append("observer made no sweep: the invariant was never checked")
        if self.ran_out:
            found.append(f"observer stopped after {MAX_RUN_S:.0f} s, before the test ended: the rest was not watched")
        for at, open_ in self.mixed_open[:5]:
            found.append(f"at +{at}s gates open on different releases: "
                         + ", ".join(f"{n}={str(d)[:12]}" for n, d in sorted(open_.items())))
        path = self.ctx.journal.path
        after = path.read_bytes() if path.exists() else b""
        if not after.startswith(self.journal_before):
            found.append(f"controller journal rewritten: the {len(self.journal_before)} bytes seen at the start "
                         "are no longer its prefix")
        if after and not after.endswith(b"\n"):
            found.append("controller journal does not end with a newline (a torn record)")
        for i, line in enumerate(after.splitlines(), 1):
            try:
                ok = isinstance(json.loads(line), dict)
            except ValueError:
                ok = False
            if not ok:
                found.append(f"controller journal line {i} is not a JSON object: {line[:80]!r}")
                break
        return found


    def summary(self) -> str:
        """One line: sweeps made, and each node that could not be read in some sweeps (state unknown)."""
        unknown = ", ".join(f"{n} unknown in {k} of {self.sweeps}" for n, k in sorted(self.unknown.items()))
        return f"{self.sweeps} sweeps; " + (unknown or "every node read in every sweep")


@pytest.fixture
def observer(request, ctx):
    """Watch the fleet during the test; fail at teardown if two open gates ever ran different releases.
    The sweeps and the nodes whose state was unknown are reported with the test ("observer" section)."""
    obs = Observer(ctx).start()
    yield obs
    obs.stop()
    request.node.add_report_section("teardown", "observer", obs.summary())
    problems = obs.problems()
    assert not problems, "\n".join(problems)
