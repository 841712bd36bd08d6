"""`deployctl watch`: the running fleet read at least once a second, and breakers that halt it.

One SSH connection per node holds one command (commands.watch_loop) that answers a line per sweep
(the release `current` points to, when it was switched), and one kept-alive HTTP connection per node
reads the router's /health; both run at once in each sweep. The playbook's breakers (model/breakers.py)
judge every sweep; when one trips, the whole fleet is halted (control.halt, the same kill switch as
`deployctl halt`) before anything else, and the breaker is journaled with its figures.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Protocol

from deployctl.errors import DeployctlError, HaltedError, grouped
from deployctl.model import breakers, outliers
from deployctl.ops.context import Context
from deployctl.ops.control import halt
from deployctl.remote import commands
from deployctl.remote.routers import Answer, KeptHealth
from deployctl.remote.ssh import Call, Fleet, NodeResult
from deployctl.state.journal import entry


class HealthLinks(Protocol):
    """Repeated health reads, one node at a time (gate.KeptHealth; unit tests give a fake)."""

    def read(self, name: str) -> Answer: ...

    def close(self) -> None: ...


@dataclass
class Sweep:
    """One reading of the whole fleet: per node reading and rates, the outlier line, breakers tripped,
    and what the watch did (halted: "breaker", "key" or None; halt: node -> how it was halted)."""

    ts: float
    took: float
    readings: list[breakers.Reading]
    rates: dict[str, breakers.Rates]
    outliers: str
    trips: list[breakers.Trip] = field(default_factory=list)
    halted: str | None = None
    halt: dict[str, str] = field(default_factory=dict)

    def rows(self) -> list[dict]:
        """One dict per node: what the view and the JSON line show."""
        out = []
        for r in self.readings:
            h, rate = r.health or {}, self.rates.get(r.node, breakers.Rates())
            out.append({"node": r.node, "reachable": r.reachable, "release": r.release, "running": h.get("digest"),
                        "gate": r.gate, "halted": h.get("halted"), "orders_per_s": _round(rate.orders_per_s),
                        "child_orders_per_s": _round(rate.child_orders_per_s),
                        "child_orders_per_parent": _round(rate.child_orders_per_parent),
                        "rejects": h.get("rejected"), "errors": h.get("errors"),
                        "breaker": h.get("breaker"), "last_deploy": r.deployed_at, "problem": r.error})
        return out

    def unreachable(self) -> str | None:
        """One line naming the nodes whose router did not answer this sweep, grouped by reason
        ("2 of 8 unreachable (router not running: connection refused): node3-node4"); None if all did."""
        down = {r.node: r.error or "no answer" for r in self.readings if not r.reachable}
        return grouped(down, len(self.readings)) if down else None

    def to_dict(self) -> dict:
        """The JSON line written per sweep when stdout is not a terminal."""
        return {"ts": round(self.ts, 3), "sweep_s": round(self.took, 4), "outliers": self.outliers,
                "nodes": self.rows(), "trips": [t.to_dict() for t in self.trips], "halted": self.halted,
                "halt": self.halt}


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


class Watcher:
    """The held SSH commands and kept HTTP connections of one watch; `sweep()` reads every node once.

    Each node has its own SSH connection (ctx.ssh([node])): one that fails or times out is closed and
    opened again in the background after RETRY_S, so a slow moment does not blind the watch for good."""

    RETRY_S = 2.0

    def __init__(self, ctx: Context, links: HealthLinks, timeout: float = 1.0):
        self.ctx, self.links, self.timeout = ctx, links, timeout
        self.nodes = {n.name: n for n in ctx.nodes}
        self.names = list(self.nodes)
        self.fleets: dict[str, Fleet] = {}
        self.connecting: dict[str, Future] = {}
        self.retry_at: dict[str, float] = {}
        self.prev: dict[str, breakers.Reading] = {}
        self.memory = breakers.Memory()
        self._pool = ThreadPoolExecutor(max_workers=2 * max(1, len(self.names)), thread_name_prefix="watch")
        self._command = commands.render(commands.watch_loop(ctx.root))

    def _open(self, name: str) -> tuple[Fleet, NodeResult]:
        fleet = self.ctx.ssh([self.nodes[name]])
        connect = max(self.timeout, self.ctx.playbook.timeouts.connect)
        return fleet, fleet.hold({name: Call(self._command, b"\n", connect)})[name]

    def _disk(self, name: str, first: bool) -> tuple[str | None, float | None, str | None]:
        """Node `name`'s (release, switch time, problem): the held command's next line, or its reconnection."""
        if name in self.fleets:
            return self._take(name, self.fleets[name], self.fleets[name].step({name: b"\n"}, self.timeout)[name])
        if name not in self.connecting and time.monotonic() >= self.retry_at.get(name, 0.0):
            self.connecting[name] = self._pool.submit(self._open, name)
        future = self.connecting.get(name)
        if future is not None and (first or future.done()):
            del self.connecting[name]
            return self._take(name, *future.result())
        return None, None, "SSH connection lost: connecting again"

    def _take(self, name: str, fleet: Fleet, r: NodeResult) -> tuple[str | None, float | None, str | None]:
        try:
            if r.error or r.exit_code != 0:
                raise DeployctlError(r.error or f"watch command ended (exit {r.exit_code})")
            parsed = commands.parse_watch(r.stdout)
            self.fleets[name] = fleet
            return (*parsed, None)
        except DeployctlError as exc:
            self.fleets.pop(name, None)
            fleet.close()
            self.retry_at[name] = time.monotonic() + self.RETRY_S
            return None, None, str(exc)

    def sweep(self) -> Sweep:
        """Read every node once (SSH and HTTP at the same time); judge the playbook's breakers."""
        start, first = time.monotonic(), not self.prev
        health = {n: self._pool.submit(self.links.read, n) for n in self.names}
        disk = {n: self._pool.submit(self._disk, n, first) for n in self.names}
        readings = []
        for name in self.names:
            answer = health[name].result()
            release, switched, problem = disk[name].result()
            readings.append(breakers.Reading(name, time.monotonic(), answer.body if answer.ok else None, release,
                                             switched, problem if answer.ok else answer.reason()))
        rates = {r.node: breakers.rates(self.prev.get(r.node), r) for r in readings}
        self.prev = {r.node: r for r in readings}
        trips = breakers.check(self.ctx.playbook.breakers, readings, rates, self.memory, time.monotonic())
        return Sweep(time.time(), time.monotonic() - start, readings, rates, outlier_line(readings), trips)

    def close(self) -> None:
        """Close every SSH connection (a held command reads end of input and exits) and the workers."""
        for future in self.connecting.values():
            future.add_done_callback(lambda f: f.result()[0].close())
        for fleet in self.fleets.values():
            fleet.close()
        self._pool.shutdown(wait=False, cancel_futures=True)


def outlier_line(readings: list[breakers.Reading]) -> str:
    """The outlier report of one sweep in one line: "7 nodes run 8d65…; node8 runs 1a2b…"."""
    members = [outliers.Member(r.node, r.release, (r.health or {}).get("digest"), (r.health or {}).get("flags"),
                               reachable=r.reachable or r.release is not None) for r in readings]
    return "; ".join(g.line for g in outliers.group(members))


def halt_fleet(ctx: Context, sweep: Sweep, why: str) -> None:
    """Halt the whole fleet now (why: "breaker" or "key"); journal each tripped breaker with its figures."""
    sweep.halted = why
    try:
        sweep.halt = halt(ctx)
    except DeployctlError as exc:  # some node not halted: said on screen, journaled by halt itself
        sweep.halt = {"error": str(exc)}
    for trip in sweep.trips:
        ctx.journal.append(entry("breaker", **trip.to_dict(), halted=sweep.halt))


def watch(ctx: Context, on_sweep: Callable[[Sweep], None], interval: float = 1.0, sweeps: int | None = None,
          key: Callable[[float], str | None] | None = None, stop_on_trip: bool = False,
          links: HealthLinks | None = None) -> int:
    """Sweep the fleet every `interval` s, handing each Sweep to `on_sweep`, until `sweeps` are done or `key`
    gives "q"; "h" halts the fleet. A tripped breaker halts the fleet at once; with `stop_on_trip` the
    watch then ends with HaltedError naming it. Returns the number of sweeps made."""
    links = links or KeptHealth(ctx.nodes, ctx.playbook.service.health_path, timeout=1.0)
    wait = key or (lambda seconds: time.sleep(seconds))
    tripped: set[str] = set()
    done = 0
    watcher = Watcher(ctx, links, timeout=max(interval, 1.0))
    try:
        while sweeps is None or done < sweeps:
            began = time.monotonic()
            sweep = watcher.sweep()
            done += 1
            sweep.trips = [t for t in sweep.trips if t.breaker not in tripped]
            if sweep.trips:
                tripped.update(t.breaker for t in sweep.trips)
                halt_fleet(ctx, sweep, "breaker")
            on_sweep(sweep)
            if sweep.trips and stop_on_trip:
                raise HaltedError("watch: breaker tripped, fleet halted: "
                                  + "; ".join(t.line for t in sweep.trips))
            pressed = wait(max(0.0, interval - (time.monotonic() - began)))
            if pressed == "q":
                break
            if pressed == "h":
                halted = Sweep(time.time(), 0.0, sweep.readings, sweep.rates, sweep.outliers)
                halt_fleet(ctx, halted, "key")
                on_sweep(halted)
    finally:
        watcher.close()
        links.close()
    return done
