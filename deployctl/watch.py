"""`deployctl watch`: the running fleet read at least once a second, and breakers that halt it.

One SSH connection per node holds one command (commands.watch_loop) that answers a line per sweep
(the release `current` points to, when it was switched), and one kept-alive HTTP connection per node
reads the router's /health; both run at once in each sweep. The playbook's breakers (breakers.py)
judge every sweep; when one trips, the whole fleet is halted (control.halt, the same kill switch as
`deployctl halt`) before anything else, and the breaker is journaled with its figures.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Protocol

from deployctl import breakers, commands, outliers
from deployctl.context import Context
from deployctl.control import halt
from deployctl.errors import DeployctlError, HaltedError
from deployctl.gate import Answer, KeptHealth
from deployctl.journal import entry
from deployctl.ssh import Call, Fleet


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

    def to_dict(self) -> dict:
        """The JSON line written per sweep when stdout is not a terminal."""
        return {"ts": round(self.ts, 3), "sweep_s": round(self.took, 4), "outliers": self.outliers,
                "nodes": self.rows(), "trips": [t.to_dict() for t in self.trips], "halted": self.halted,
                "halt": self.halt}


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


class Watcher:
    """The held SSH commands and kept HTTP connections of one watch; `sweep()` reads every node once."""

    def __init__(self, ctx: Context, fleet: Fleet, links: HealthLinks, timeout: float = 1.0):
        self.ctx, self.fleet, self.links, self.timeout = ctx, fleet, links, timeout
        self.names = [n.name for n in ctx.nodes]
        self.held: set[str] = set()
        self.prev: dict[str, breakers.Reading] = {}
        self.memory = breakers.Memory()
        self._pool = ThreadPoolExecutor(max_workers=max(1, len(self.names)), thread_name_prefix="watch")

    def _disk(self) -> dict[str, tuple[str | None, float | None, str | None]]:
        """Ask each held command for its line (the first sweep starts them); node -> (release, switched, error)."""
        if not self.prev:
            cmd = commands.render(commands.watch_loop(self.ctx.root))
            res = self.fleet.hold({n: Call(cmd, b"\n", max(self.timeout, self.ctx.playbook.timeouts.connect))
                                   for n in self.names})
        else:
            res = self.fleet.step({n: b"\n" for n in self.held}, self.timeout)
        out = {n: (None, None, "no SSH connection (lost earlier)") for n in self.names}
        self.held = set()
        for name, r in res.items():
            if r.error or r.exit_code != 0:
                out[name] = (None, None, r.error or f"watch command ended (exit {r.exit_code})")
                continue
            try:
                out[name] = (*commands.parse_watch(r.stdout), None)
                self.held.add(name)
            except DeployctlError as exc:
                out[name] = (None, None, str(exc))
        return out

    def sweep(self) -> Sweep:
        """Read every node once (SSH and HTTP at the same time); judge the playbook's breakers."""
        start = time.monotonic()
        health = {n: self._pool.submit(self.links.read, n) for n in self.names}
        disk = self._disk()
        readings = []
        for name in self.names:
            answer = health[name].result()
            release, switched, problem = disk[name]
            readings.append(breakers.Reading(name, time.monotonic(), answer.body if answer.ok else None, release,
                                             switched, problem if answer.ok else answer.reason()))
        rates = {r.node: breakers.rates(self.prev.get(r.node), r) for r in readings}
        self.prev = {r.node: r for r in readings}
        trips = breakers.check(self.ctx.playbook.breakers, readings, rates, self.memory, time.monotonic())
        return Sweep(time.time(), time.monotonic() - start, readings, rates, outlier_line(readings), trips)

    def close(self) -> None:
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
    links = links or KeptHealth(ctx.nodes, ctx.playbook.service.health_path, timeout=interval)
    wait = key or (lambda seconds: time.sleep(seconds))
    tripped: set[str] = set()
    done = 0
    with ctx.ssh() as fleet:
        watcher = Watcher(ctx, fleet, links, timeout=max(interval, 1.0))
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
