"""Circuit breakers over `deployctl watch`'s sweeps: readings in, rates and tripped breakers out. Pure.

Each sweep reads every node once (release on disk, router health); rates are counter differences
between two sweeps of the same router process divided by the time between them. A breaker that
trips names itself, the node(s), the figure and the limit: `watch` halts the whole fleet on it
(SEC order on Knight Capital ¶19: 97 alert emails informed; nothing acted).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from deployctl.config.playbook import Breakers

COUNTERS = ("orders", "child_orders", "rejected", "errors")


@dataclass(frozen=True)
class Reading:
    """One node as one sweep found it. `health` is the router's /health body, None if it did not answer."""

    node: str
    t: float  # the controller's monotonic clock, never the node's
    health: dict | None
    release: str | None = None  # digest of the release `current` points to (SSH), None if unknown
    deployed_at: float | None = None  # when `current` was last switched (node clock, epoch seconds)
    error: str | None = None

    @property
    def reachable(self) -> bool:
        return self.health is not None

    @property
    def gate(self) -> str:
        return (self.health or {}).get("gate", "unknown")


@dataclass(frozen=True)
class Rates:
    """A node's rates between two sweeps; None where there is no earlier reading of the same process."""

    orders_per_s: float | None = None
    child_orders_per_s: float | None = None
    child_orders_per_parent: float | None = None
    errors_per_s: float | None = None
    rejects_per_s: float | None = None


@dataclass(frozen=True)
class Trip:
    """A tripped breaker: its playbook name, the node(s), the figure seen and the limit."""

    breaker: str
    nodes: tuple[str, ...]
    figure: float
    limit: float
    line: str

    def to_dict(self) -> dict:
        return {"breaker": self.breaker, "nodes": list(self.nodes), "figure": self.figure, "limit": self.limit,
                "line": self.line}


@dataclass
class Memory:
    """What the breakers remember across sweeps: when each node went unreachable and its last gate seen."""

    down_since: dict[str, float] = field(default_factory=dict)
    last_gate: dict[str, str] = field(default_factory=dict)


def rates(prev: Reading | None, cur: Reading) -> Rates:
    """Return cur's rates since prev; empty Rates if either lacks health, the router restarted, or no time passed."""
    if prev is None or prev.health is None or cur.health is None or cur.t <= prev.t:
        return Rates()
    if prev.health.get("pid") != cur.health.get("pid"):
        return Rates()  # another process: its counters started again at 0
    try:
        d = {k: float(cur.health[k]) - float(prev.health[k]) for k in COUNTERS}
    except (KeyError, TypeError, ValueError):
        return Rates()
    if any(v < 0 for v in d.values()):
        return Rates()
    dt = cur.t - prev.t
    per_parent = d["child_orders"] / max(d["orders"], 1.0) if d["child_orders"] else 0.0
    return Rates(d["orders"] / dt, d["child_orders"] / dt, per_parent, d["errors"] / dt, d["rejected"] / dt)


def _digests(r: Reading) -> set[str]:
    return {d for d in (r.release, (r.health or {}).get("digest")) if isinstance(d, str)}


def check(cfg: Breakers | None, readings: list[Reading], node_rates: dict[str, Rates], memory: Memory,
          now: float) -> list[Trip]:
    """Return every breaker `readings` trip (empty if none or no breakers); updates `memory` for the next sweep."""
    for r in readings:
        if r.reachable:
            memory.down_since.pop(r.node, None)
            memory.last_gate[r.node] = r.gate
        else:
            memory.down_since.setdefault(r.node, now)
    if cfg is None:
        return []
    trips = []
    for name, attr, unit in (("child_orders_per_parent", "child_orders_per_parent", "child orders per parent order"),
                             ("child_orders_per_s", "child_orders_per_s", "child orders/s"),
                             ("errors_per_s", "errors_per_s", "errors/s")):
        limit = getattr(cfg, name)
        if limit is None:
            continue
        over = {n: getattr(x, attr) for n, x in node_rates.items() if getattr(x, attr) is not None
                and getattr(x, attr) > limit}
        if over:
            worst = max(over, key=over.__getitem__)
            trips.append(Trip(name, tuple(sorted(over)), round(over[worst], 2), limit,
                              f"{name}: {worst} at {over[worst]:.1f} {unit}, above {limit:g}"
                              + (f" ({len(over)} nodes over)" if len(over) > 1 else "")))
    if cfg.gate_open_while_mixed:
        seen = set().union(*(_digests(r) for r in readings)) if readings else set()
        open_on = tuple(r.node for r in readings if r.gate == "open")
        if len(seen) > 1 and open_on:
            trips.append(Trip("gate_open_while_mixed", open_on, float(len(seen)), 1.0,
                              f"gate_open_while_mixed: gate open on {', '.join(open_on)} while the fleet holds "
                              f"{len(seen)} digests ({', '.join(sorted(d[:12] for d in seen))})"))
    if cfg.unreachable_gate_open_s is not None:
        gone = {n: now - t for n, t in memory.down_since.items()
                if memory.last_gate.get(n) == "open" and now - t > cfg.unreachable_gate_open_s}
        if gone:
            worst = max(gone, key=gone.__getitem__)
            trips.append(Trip("unreachable_gate_open_s", tuple(sorted(gone)), round(gone[worst], 2),
                              cfg.unreachable_gate_open_s,
                              f"unreachable_gate_open_s: {worst} unreachable for {gone[worst]:.1f} s with its gate "
                              f"last seen open, above {cfg.unreachable_gate_open_s:g} s"))
    return trips
