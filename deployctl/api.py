"""The library API: what `deployctl` does, callable from Python. The CLI is a thin layer over this.

Nothing here prints: progress goes to the `on_event` callback of the Context
(a no-op by default), results come back as values, failures as DeployctlError.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from deployctl import commands, gate, verify as verify_mod
from deployctl.config import Inventory, Node, Playbook, load_inventory, load_playbook
from deployctl.errors import DeployctlError, ExitCode, HaltedError, HostKeyError, MismatchError, UnreachableError, UsageError
from deployctl.executor import Call, NodeResult, SSHFleet, Target
from deployctl.journal import Journal, Lock, entry
from deployctl.trust import Trust

Event = Callable[..., None]


def _quiet(kind: str, **data: Any) -> None:
    """The default event sink: the library never prints."""


@dataclass
class Context:
    """Everything a command needs: inventory, playbook, the controller's state folder, an event sink."""

    inventory: Inventory
    playbook: Playbook
    state_dir: Path
    on_event: Event = _quiet
    _token: str | None = field(default=None, repr=False)

    @property
    def trust(self) -> Trust:
        return Trust(self.state_dir)

    @property
    def journal(self) -> Journal:
        return Journal(self.state_dir / "journal.jsonl")

    @property
    def lock(self) -> Lock:
        return Lock(self.state_dir / "deploy.lock")

    @property
    def root(self) -> str:
        return self.playbook.install_root

    @property
    def nodes(self) -> list[Node]:
        return list(self.inventory.nodes)

    def token(self) -> str:
        if self._token is None:
            self._token = self.trust.token()
        return self._token

    def emit(self, kind: str, **data: Any) -> None:
        self.on_event(kind, **data)

    def ssh(self, nodes: list[Node] | None = None) -> SSHFleet:
        """Return an SSHFleet over `nodes` (all by default); use it as a context manager."""
        trust = self.trust
        if not trust.client_key.exists() or not trust.known_hosts.exists():
            raise UsageError(f"no fleet keys in {self.state_dir / 'keys'}: run `deployctl fleet up` first")
        targets = [Target(n.name, n.host, n.ssh_port, n.user) for n in (nodes or self.nodes)]
        return SSHFleet(targets, trust.client_key, trust.known_hosts,
                        min(self.inventory.connect_timeout, self.playbook.timeouts.connect), self.inventory.parallel)


def open_context(inventory: Path, playbook: Path, state_dir: Path | None = None, on_event: Event = _quiet) -> Context:
    """Load and validate inventory and playbook (before any connection); ConfigError on bad input."""
    state = Path(state_dir or os.environ.get("DEPLOYCTL_STATE") or ".deployctl").absolute()
    return Context(load_inventory(inventory), load_playbook(playbook), state, on_event)


def raise_for_unreachable(results: dict[str, NodeResult], what: str) -> None:
    """Raise HostKeyError or UnreachableError naming every node whose connection failed."""
    bad = {n: r for n, r in results.items() if r.error}
    if not bad:
        return
    names = "; ".join(f"{n}: {r.error}" for n, r in sorted(bad.items()))
    if any(r.host_key_refused for r in bad.values()):
        raise HostKeyError(f"{what}: {names}")
    raise UnreachableError(f"{what}: {names}")


# ---- verify ---------------------------------------------------------------------------------------

def observe(ctx: Context, fleet: SSHFleet, nodes: list[Node] | None = None) -> list[verify_mod.NodeObservation]:
    """Read back every node's files of `current` (SSH) and its router's health (HTTP), in parallel."""
    from concurrent.futures import ThreadPoolExecutor

    nodes = nodes or ctx.nodes
    with ThreadPoolExecutor(max_workers=1) as pool:
        health_f = pool.submit(gate.health, nodes, ctx.playbook.service.health_path)
        disk = fleet.run_all(lambda n: Call(commands.render(commands.hashes(ctx.root)),
                                            timeout=ctx.playbook.timeouts.command), [n.name for n in nodes])
        answers = health_f.result()
    return [_observation(n.name, disk[n.name], answers[n.name]) for n in nodes]


def _observation(node: str, r: NodeResult, h: gate.Answer) -> verify_mod.NodeObservation:
    obs = dict(node=node, health=h.body if h.ok else None, health_error=None if h.ok else h.reason(),
               unreachable=bool(r.error) or h.status == 0)
    if r.ok:
        try:
            parsed = commands.parse_hashes(r.stdout)
            obs.update(files=parsed.files, odd=parsed.odd, current=parsed.current)
        except DeployctlError as exc:
            obs.update(disk_error=str(exc))
    else:
        obs.update(disk_error=r.error or commands.agent_error(r.stderr))
    return verify_mod.NodeObservation(**obs)


def manifest_for(ctx: Context, digest: str | None) -> dict[str, str] | None:
    """Return the per-file manifest the controller kept for `digest`, if any."""
    import json

    if not digest:
        return None
    try:
        doc = json.loads((ctx.state_dir / "manifests" / f"{digest}.json").read_text())
        return doc["files"] if isinstance(doc.get("files"), dict) else None
    except (OSError, ValueError, KeyError):
        return None


def expected_digest(ctx: Context, expect: str | None) -> str:
    """Return `expect` if given (validated), else the last release the whole fleet ran; UsageError if neither."""
    if expect is not None:
        if not commands.HEX64.match(expect):
            raise UsageError(f"--expect: {expect!r} is not a sha256 release digest (64 lowercase hex characters)")
        return expect
    last = ctx.journal.last_good()
    if not last:
        raise UsageError("no successful rollout in the journal: pass --expect DIGEST")
    return last


def verify(ctx: Context, expect: str | None = None, fleet: SSHFleet | None = None) -> verify_mod.VerifyReport:
    """Return the fleet's VerifyReport against `expect` (default: the last good release). Never raises for drift."""
    digest = expected_digest(ctx, expect)
    if fleet is None:
        with ctx.ssh() as own:
            return verify(ctx, digest, own)
    report = verify_mod.report(observe(ctx, fleet), digest, manifest_for(ctx, digest))
    ctx.emit("verify", report=report)
    return report


# ---- gate, halt, resume ---------------------------------------------------------------------------

def gate_status(ctx: Context) -> dict[str, gate.Answer]:
    """Return every node's health answer (gate, halt, digest)."""
    return gate.health(ctx.nodes, ctx.playbook.service.health_path)


def gate_open(ctx: Context, expect: str | None = None) -> verify_mod.VerifyReport:
    """Verify the fleet; open every gate only if all match. MismatchError/UnreachableError/HaltedError otherwise."""
    report = verify(ctx, expect)
    if not report.ok:
        raise _refusal("gate stays closed", report)
    if any(n.halted for n in report.nodes):
        raise HaltedError("gate stays closed: the fleet is halted; run `deployctl resume` first")
    answers = gate.open_gate(ctx.nodes, report.expected, ctx.token())
    bad = {n: a for n, a in answers.items() if not a.ok}
    ctx.journal.append(entry("gate-open", digest=report.expected, outcome="ok" if not bad else "failed",
                             nodes={n: ("ok" if a.ok else a.reason()) for n, a in answers.items()}))
    if bad:
        gate.close_gate(ctx.nodes, ctx.token())  # never leave some open and some closed
        raise DeployctlError("gate open refused, all gates closed again: "
                             + "; ".join(f"{n}: {a.reason()}" for n, a in sorted(bad.items())))
    return report


def _refusal(what: str, report: verify_mod.VerifyReport) -> DeployctlError:
    bad = [n for n in report.nodes if not n.ok]
    text = "; ".join(f"{n.node}: {(n.problems or ('mismatch',))[0]}" for n in bad)
    cls = UnreachableError if report.exit_code == ExitCode.UNREACHABLE else MismatchError
    return cls(f"{what}: {len(bad)} of {len(report.nodes)} nodes do not match: {text}")


def gate_close(ctx: Context) -> dict[str, gate.Answer]:
    """Close every gate; UnreachableError naming the nodes that could not be told."""
    answers = gate.close_gate(ctx.nodes, ctx.token())
    ctx.journal.append(entry("gate-close", outcome="ok" if all(a.ok for a in answers.values()) else "partial",
                             nodes={n: ("ok" if a.ok else a.reason()) for n, a in answers.items()}))
    bad = {n: a for n, a in answers.items() if not a.ok}
    if bad:
        raise UnreachableError("gate close did not reach: " + "; ".join(f"{n}: {a.reason()}" for n, a in bad.items()))
    return answers


def halt(ctx: Context) -> dict[str, str]:
    """Kill switch: halt every router at once (no lock needed); return node -> how it was halted.

    Nodes whose router does not answer are halted on disk over SSH, so a restart stays halted.
    UnreachableError lists any node reached neither way.
    """
    answers = gate.control(ctx.nodes, "halt", ctx.token(), timeout=1.0)
    done = {n: "halted" for n, a in answers.items() if a.ok and a.body.get("halted") is True}
    missing = [n for n in ctx.nodes if n.name not in done]
    if missing:
        with ctx.ssh(missing) as fleet:
            res = fleet.run_all(lambda n: Call(commands.render(commands.halt(ctx.root)), timeout=5))
        for name, r in res.items():
            done[name] = "halted on disk (router not answering)" if r.ok else f"NOT HALTED: {r.error or r.reason()}"
    ctx.journal.append(entry("halt", outcome="ok" if all(v.startswith("halted") for v in done.values())
                             else "partial", nodes=done))
    bad = {n: v for n, v in done.items() if not v.startswith("halted")}
    if bad:
        raise UnreachableError("halt did not reach: " + "; ".join(f"{n}: {v}" for n, v in sorted(bad.items())))
    return dict(sorted(done.items()))


def resume(ctx: Context, expect: str | None = None) -> verify_mod.VerifyReport:
    """Lift the halt on every node, only if verify passes; the gate stays closed until `gate open`."""
    report = verify(ctx, expect)
    if not report.ok:
        raise _refusal("resume refused", report)
    answers = gate.control(ctx.nodes, "resume", ctx.token())
    ctx.journal.append(entry("resume", digest=report.expected,
                             nodes={n: ("ok" if a.ok else a.reason()) for n, a in answers.items()}))
    bad = {n: a for n, a in answers.items() if not a.ok}
    if bad:
        raise UnreachableError("resume did not reach: " + "; ".join(f"{n}: {a.reason()}" for n, a in bad.items()))
    return report


def history(ctx: Context, limit: int | None = None) -> list[dict]:
    """Return the controller's journal records, oldest first (the last `limit` if given)."""
    records = list(ctx.journal.read())
    return records[-limit:] if limit else records


def status(ctx: Context) -> list[dict]:
    """Return one row per node: release on disk, running digest, gate, halt, errors, last deploy."""
    last = next((r for r in ctx.journal.newest_first() if r.get("phase") == "done"), None)
    with ctx.ssh() as fleet:
        observations = observe(ctx, fleet)
    rows = []
    for obs in observations:
        h = obs.health or {}
        rows.append({
            "node": obs.node, "release": obs.current, "running": h.get("digest"), "gate": h.get("gate", "unknown"),
            "halted": h.get("halted"), "errors": h.get("errors"), "version": h.get("version"),
            "problem": obs.disk_error or obs.health_error,
            "last_deploy": f"{last.get('action')} {str(last.get('digest'))[:12]} {last.get('outcome')} {last.get('ts')}"
            if last else None,
        })
    return rows


def wait_for(predicate: Callable[[], bool], seconds: float, step: float = 0.05) -> bool:
    """Poll `predicate` until true or `seconds` pass (monotonic clock); return its last value."""
    end = time.monotonic() + seconds
    while not predicate():
        if time.monotonic() >= end:
            return False
        time.sleep(step)
    return True
