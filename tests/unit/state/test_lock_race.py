"""The controller's deploy lock under concurrent takers and breakers (issue 11 item 2).

Six processes race for the lock 200 times, half of them with --break-lock, over a free lock and over a
stale one (left by a dead process of this host). Nobody lets go within a round, so "exactly one holder at
any moment" means: exactly one process took it, and the lock file names that process.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import socket
import time
from types import SimpleNamespace

from deployctl.errors import LockHeldError
from deployctl.ops import guards
from deployctl.state.journal import Journal
from deployctl.state.lock import Lock

WORKERS = 6
ROUNDS = 200
DEAD_PID = 2**22 + 4321  # above any pid_max: no process has it


def _worker(path, index, barrier, results):
    lock = Lock(path)
    for _ in range(ROUNDS):
        barrier.wait()
        try:
            lock.acquire(f"worker {index}", break_stale=index % 2 == 0)
            results.put((index, os.getpid()))
        except LockHeldError:
            results.put((index, None))
        except Exception as exc:  # noqa: BLE001 - reported to the test, which fails on it
            results.put((index, f"{type(exc).__name__}: {exc}"))


def _stale(path):
    tmp = path.with_name("stale.tmp")
    tmp.write_text(json.dumps({"holder": f"gone@{socket.gethostname()}", "pid": DEAD_PID, "since": time.time() - 60,
                               "command": "rollout"}))
    os.rename(tmp, path)


def test_many_takers_and_breakers_leave_exactly_one_holder(tmp_path):
    path = tmp_path / "state" / "deploy.lock"
    path.parent.mkdir()
    mp = multiprocessing.get_context("fork")
    barrier, results = mp.Barrier(WORKERS + 1), mp.Queue()
    procs = [mp.Process(target=_worker, args=(path, i, barrier, results), daemon=True) for i in range(WORKERS)]
    for p in procs:
        p.start()
    bad = []
    try:
        for n in range(ROUNDS):
            path.unlink(missing_ok=True)
            if n % 2:
                _stale(path)
            barrier.wait(timeout=60)
            got = [results.get(timeout=60) for _ in range(WORKERS)]
            errors = [r for _, r in got if isinstance(r, str)]
            winners = [r for _, r in got if isinstance(r, int)]
            holder = json.loads(path.read_text()) if path.exists() else None
            if errors or len(winners) != 1 or holder is None or holder["pid"] != winners[0]:
                bad.append((n, "stale" if n % 2 else "free", errors, winners, holder and holder["pid"]))
    finally:
        for p in procs:
            p.kill()
            p.join()
    assert bad == [], f"{len(bad)} of {ROUNDS} rounds went wrong, e.g. {bad[:3]}"
    assert [p.name for p in path.parent.iterdir() if p.name.startswith(".deploy.lock.")] == []  # no temp left


def test_interrupted_is_not_fooled_by_a_run_that_ends_while_it_reads(tmp_path):
    """A run that finishes between the journal read and the lock read is not an interrupted run."""
    journal, lock = Journal(tmp_path / "journal.jsonl"), Lock(tmp_path / "deploy.lock")
    lock.acquire("rollout")
    journal.append({"action": "rollout", "phase": "start", "run": "r1", "digest": "1" * 64})
    real = journal.interrupted

    class Racing:
        calls = 0

        def interrupted(self):
            seen = real()
            if Racing.calls == 0:  # the run ends right after the journal was read
                journal.append({"action": "rollout", "phase": "done", "run": "r1", "outcome": "ok"})
                lock.release()
            Racing.calls += 1
            return seen

    ctx = SimpleNamespace(journal=Racing(), lock=lock)
    # Read in the old order (journal, then lock) this said "interrupted rollout ... run `deployctl recover`".
    assert guards.interrupted(ctx) is None
    ctx.journal = journal
    lock.release()
    journal.append({"action": "rollout", "phase": "start", "run": "r2", "digest": "2" * 64})
    assert "interrupted rollout (run r2" in guards.interrupted(ctx)
