"""Before a run: the controller and fleet deploy locks, the refusals (an interrupted run, nodes left
out of the inventory) and the probes that start a rollout, rollback or recover.
"""

from __future__ import annotations

import os
import re
import time
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from deployctl.errors import InconsistentError, LockHeldError, UsageError
from deployctl.ops.context import Context
from deployctl.remote import commands, replies
from deployctl.remote.ssh import Call, Fleet, NodeResult, raise_for_unreachable
from deployctl.state.journal import actor, entry


@contextmanager
def locked(ctx: Context, command: str, break_lock: bool, break_fleet: bool | None = None) -> Iterator[dict]:
    """Hold the controller's deploy lock for the block (journaling a broken stale one); LockHeldError if
    taken. Yields the fleet deploy lock to take on the nodes (commands.deploy/retarget; release_fleet):
    with `break_fleet` (default: `break_lock`) it breaks any node's lock, else only the lock of the
    controller run whose stale lock was just broken here (same holder and pid)."""
    broken = ctx.lock.acquire(command, break_stale=break_lock)
    if broken:
        ctx.journal.append(entry("lock-broken", holder=broken.holder, pid=broken.pid, since=broken.since))
    fleet_lock = {"holder": actor(), "pid": os.getpid(), "since": round(time.time(), 3), "command": command,
                  "id": uuid.uuid4().hex[:16]}
    if break_lock if break_fleet is None else break_fleet:
        fleet_lock["break"] = "any"
    else:
        # A node that could not be reached when a run ended (killed, restarted) keeps that run's lock:
        # the journal shows the run finished, so the lock is stale and this command may replace it.
        finished = finished_fleet_locks(ctx, dead=command == "recover")
        how: dict = {"holder": broken.holder, "pid": broken.pid} if broken else {}
        if finished:
            how["ids"] = finished
        if how:
            fleet_lock["break"] = how
    try:
        yield fleet_lock
    finally:
        ctx.lock.release()


def finished_fleet_locks(ctx: Context, last: int = 16, dead: bool = False) -> list[str]:
    """The fleet lock ids of this controller's last `last` runs that the journal shows finished (a `done`
    record): a node lock left by one of them is stale. With `dead` (recover, which holds the controller
    lock, so no run of this controller is alive), also those of runs that never finished, which come
    first within the `last`.

    Read newest first: without `dead` it stops at the `last`-th finished run, not at the journal's
    start (parsing the whole history of a busy controller was a measurable cost of every rollout)."""
    ended: set = set()
    finished: list[str] = []  # newest first
    unfinished: list[str] = []
    for rec in ctx.journal.newest_first():
        if rec.get("phase") == "done":
            ended.add(rec.get("run"))
        elif rec.get("phase") == "start" and isinstance(rec.get("fleet_lock"), str):
            (finished if rec.get("run") in ended else unfinished).append(rec["fleet_lock"])
            if not dead and len(finished) >= last:
                break
    never = unfinished[:last] if dead else []
    return finished[:last - len(never)][::-1] + never[::-1]


def release_fleet(ctx: Context, fleet: Fleet, lock: dict, names: list[str] | None = None) -> None:
    """Release the fleet deploy lock on the nodes this run took it on (`names`, default: every node of the
    fleet), a failed or reverted run too; a node not reached keeps it, named in a warning (`--break-lock`
    takes it over). A node where the run never took the lock is never named."""
    call = lambda n: Call(commands.render(commands.unlock(ctx.root, lock["id"])), timeout=15)  # noqa: E731
    res = fleet.run_all(call, names)
    # A node whose connection dropped during the run (restarted, say) is asked once more on a new
    # connection: removing this run's own lock (matched by its id) is safe on whatever the node is now.
    dropped = [n for n in ctx.nodes if res.get(n.name) is not None and res[n.name].error]
    if dropped:
        with ctx.ssh(dropped) as again:
            res.update(again.run_all(call))
    missed = sorted(n for n, r in res.items() if not r.ok)
    if missed:
        ctx.emit("warning", message=f"fleet deploy lock not released on: {', '.join(missed)}")


LOCK_PATIENCE = 10.0  # seconds a run holding the designated node waits for a loser to let go of the rest


def hold_locked(fleet: Fleet, calls: dict[str, Call]) -> dict[str, NodeResult]:
    """fleet.hold(calls) for commands that take the fleet deploy lock. The first node is the designated
    one: two controllers starting together may each take part of the fleet, and the one holding the
    first node wins. It asks the nodes it was refused again (for up to LOCK_PATIENCE seconds) while
    the loser, refused by the first node, ends its commands, which releases them."""
    res = fleet.hold(calls)
    first, deadline = next(iter(calls)), time.monotonic() + LOCK_PATIENCE
    while res[first].ok and time.monotonic() < deadline:
        waiting = [n for n, r in res.items() if not r.ok and not r.error
                   and commands.LOCK_HELD in commands.agent_error(r.stderr)]
        if not waiting:
            break
        time.sleep(0.2)
        res.update(fleet.hold({n: calls[n] for n in waiting}))
    return res


def raise_if_fleet_locked(what: str, reasons: dict[str, str]) -> None:
    """LockHeldError naming the holder and host if a node refused because another run holds its lock."""
    held = sorted((n, r) for n, r in reasons.items() if commands.LOCK_HELD in r)
    if held:
        raise LockHeldError(f"{what}, nothing changed: {held[0][0]}: {held[0][1]}"
                            + (f" (and {len(held) - 1} more nodes)" if len(held) > 1 else ""))


def interrupted(ctx: Context) -> str | None:
    """Describe an interrupted rollout/rollback (journal start without done, and its lock stale), if any."""
    # Lock, journal, lock, journal: a run that took or left the lock between two reads is seen, and
    # the answer is used only when neither changed meanwhile (a run takes the lock before its start
    # record and writes its done record before it lets go).
    for _ in range(10):
        held = ctx.lock.info()
        if held is not None and not held.stale:
            return None  # a run holds the lock: in progress, not interrupted
        run = ctx.journal.interrupted()
        if ctx.lock.info() == held and ctx.journal.interrupted() == run:
            break
    else:
        return None  # runs keep starting and ending: none of them is interrupted
    if run is None:
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


PREFIX = re.compile(r"[0-9a-f]{8,64}\Z")  # a release digest, or a unique prefix of at least 8 of its characters


def check_digest(given: str, option: str) -> str:
    """Return `given` if it is a release digest or a prefix of one (8 to 64 lowercase hex characters);
    UsageError naming the option otherwise."""
    if not PREFIX.match(given):
        raise UsageError(f"{option}: {given!r} is not a sha256 release digest (64 lowercase hex characters, or a "
                         "unique prefix of at least 8)")
    return given


def resolve_digest(given: str, known: Iterable[str], option: str) -> str:
    """Return the release digest `given` names: itself if whole (64 characters), else the one release in
    `known` it is a prefix of; UsageError, one line, if it names none or several."""
    check_digest(given, option)
    if len(given) == 64:
        return given
    found = sorted({d for d in known if isinstance(d, str) and len(d) == 64 and d.startswith(given)})
    if not found:
        raise UsageError(f"{option}: no release known to the journal or the nodes starts with {given}")
    if len(found) > 1:
        raise UsageError(f"{option}: {given} is ambiguous ({', '.join(d[:16] for d in found[:4])}"
                         f"{', ...' if len(found) > 4 else ''}): give more characters")
    return found[0]


def journal_digests(ctx: Context) -> set[str]:
    """Every release digest the controller has seen: its journal's records and its kept manifests."""
    known = {rec.get("digest") for rec in ctx.journal.read()}
    known |= {p.stem for p in ctx.state.manifests.glob("*.json")} if ctx.state.manifests.is_dir() else set()
    return {d for d in known if isinstance(d, str)}


def probe_all(ctx: Context, fleet: Fleet, what: str) -> dict[str, commands.Probe]:
    """Probe every node (connecting as it goes); HostKeyError/UnreachableError naming any node not reached."""
    res = fleet.run_all(lambda n: Call(commands.render(commands.probe(ctx.root)), timeout=15))
    return _probes(res, what, commands.parse_probe)


def probe_held(ctx: Context, fleet: Fleet, what: str, lock: dict | None = None) -> dict[str, commands.Probe]:
    """probe_all through a `retarget` command left waiting on each node (taking the fleet deploy `lock`
    there first): Run.switch can then switch it with no new exec; closing the fleet ends the ones not
    switched, changing nothing. LockHeldError naming the holder if a node's lock is another run's."""
    command = commands.render(commands.retarget(ctx.root, lock))
    calls = {t.name: Call(command, None, timeout=min(15, ctx.playbook.timeouts.command)) for t in fleet.targets}
    res = hold_locked(fleet, calls) if lock else fleet.hold(calls)
    return _probes(res, what, commands.parse_probe_answer)


def _probes(res: dict[str, NodeResult], what: str, parse) -> dict[str, commands.Probe]:
    raise_for_unreachable(res, what)
    raise_if_fleet_locked(f"{what} refused", {n: commands.agent_error(r.stderr) for n, r in res.items()
                                              if not r.ok and not r.error})
    bad = sorted(n for n, r in res.items() if not r.ok)
    if bad:
        raise InconsistentError(f"{what}: cannot probe " + "; ".join(f"{n}: {res[n].reason()}" for n in bad))
    return replies.each_node(parse, {n: r.stdout for n, r in res.items()}, what)
