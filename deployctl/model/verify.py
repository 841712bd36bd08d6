"""Pure verification: the expected release against what each node has on disk and is running."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from deployctl.errors import ArtifactError, ExitCode
from deployctl.model import outliers
from deployctl.release.manifest import digest_of


@dataclass(frozen=True)
class NodeObservation:
    """What was read back from one node: disk files (or why not) and its router's health (or why not)."""

    node: str
    files: dict[str, str] | None = None
    odd: tuple[str, ...] = ()
    disk_error: str | None = None
    current: str | None = None
    health: dict | None = None
    health_error: str | None = None
    unreachable: bool = False  # SSH or HTTP could not reach the node at all
    host_key_refused: bool = False  # the node presented a host key other than the pinned one


@dataclass(frozen=True)
class NodeVerdict:
    """One node's verdict against the expected digest."""

    node: str
    disk_digest: str | None
    running_digest: str | None
    gate: str
    halted: bool | None
    disk_ok: bool
    running_ok: bool
    reachable: bool
    drift: tuple[str, ...] = ()
    problems: tuple[str, ...] = ()
    host_key_refused: bool = False
    flags: dict | None = None  # the flags the running router reports in /health
    flags_ok: bool = True  # they are the release's (as its manifest records), and no node runs others

    @property
    def ok(self) -> bool:
        return self.reachable and self.disk_ok and self.running_ok and self.flags_ok and not self.host_key_refused


@dataclass(frozen=True)
class VerifyReport:
    """The whole fleet's verdict; `ok` only when every inventory node matches on disk and running."""

    expected: str | None
    nodes: tuple[NodeVerdict, ...] = field(default_factory=tuple)
    groups: tuple[outliers.Group, ...] = ()  # the outlier report: nodes grouped by disk, running digest, flags

    @property
    def ok(self) -> bool:
        return self.expected is not None and bool(self.nodes) and all(n.ok for n in self.nodes)

    @property
    def exit_code(self) -> ExitCode:
        if self.ok:
            return ExitCode.OK
        if any(n.host_key_refused for n in self.nodes):  # a security incident, not an outage
            return ExitCode.HOST_KEY
        if any(not n.reachable for n in self.nodes) and all(n.disk_ok and n.running_ok and n.flags_ok
                                                             for n in self.nodes if n.reachable):
            return ExitCode.UNREACHABLE
        return ExitCode.MISMATCH

    def to_dict(self) -> dict:
        """Return the documented --json shape."""
        return {
            "ok": self.ok, "expected": self.expected, "exit_code": int(self.exit_code),
            "nodes": [
                {"node": n.node, "ok": n.ok, "reachable": n.reachable, "disk_digest": n.disk_digest,
                 "running_digest": n.running_digest, "disk_ok": n.disk_ok, "running_ok": n.running_ok,
                 "gate": n.gate, "halted": n.halted, "drift": list(n.drift), "problems": list(n.problems),
                 "host_key_refused": n.host_key_refused, "flags": n.flags, "flags_ok": n.flags_ok}
                for n in self.nodes
            ],
            "groups": [g.to_dict() for g in self.groups],
        }


def drift(expected: dict[str, str], actual: dict[str, str], odd: tuple[str, ...] = ()) -> tuple[str, ...]:
    """Name every file that differs: changed, missing, added, or not a regular file."""
    out = [f"changed: {p}" for p in sorted(expected) if p in actual and actual[p] != expected[p]]
    out += [f"missing: {p}" for p in sorted(expected) if p not in actual]
    out += [f"added: {p}" for p in sorted(actual) if p not in expected]
    out += [f"not a regular file: {p}" for p in odd]
    return tuple(out)


def running_flags(obs: NodeObservation) -> dict | None:
    """Return the flags the node's router reports in /health (name -> bool), or None if it reports none."""
    flags = (obs.health or {}).get("flags")
    return dict(flags) if isinstance(flags, dict) else None


def judge(obs: NodeObservation, expected: str | None, manifest: dict[str, str] | None,
          flags: Mapping[str, bool] | None = None) -> NodeVerdict:
    """Return the verdict for one node; unreadable or unknown state never counts as a match. `flags` are the
    release's (from its manifest): a router reporting others fails, named flag by flag."""
    problems: list[str] = []
    try:
        disk = digest_of(obs.files) if obs.files is not None else None
    except ArtifactError as exc:  # a file name no release can have: the disk cannot match
        disk = "0" * 64
        problems.append(f"disk: {exc}")
    if obs.disk_error:
        problems.append(f"disk: {obs.disk_error}")
    disk_ok = disk is not None and disk == expected and not obs.odd
    files_drift = drift(manifest, obs.files, obs.odd) if (manifest and obs.files is not None and not disk_ok) else ()
    if disk is not None and not disk_ok:
        problems.append(f"disk digest {disk[:12]} != expected {(expected or '?')[:12]}")
    h = obs.health or {}
    running = h.get("digest") if isinstance(h.get("digest"), str) else None
    if obs.health_error:
        problems.append(f"router: {obs.health_error}")
    elif running != expected:
        problems.append(f"running digest {(running or '?')[:12]} != expected {(expected or '?')[:12]}")
    gate = h["gate"] if h.get("gate") in ("open", "closed") else "unknown"
    halted = h.get("halted") if isinstance(h.get("halted"), bool) else None
    ran = running_flags(obs)
    flags_ok = flags is None or obs.health is None or ran == dict(flags)
    if not flags_ok:
        changes = outliers.flag_changes(flags, ran) if ran is not None else ["no flags reported"]
        problems.append("flags differ from the release's: " + ", ".join(changes))
    return NodeVerdict(
        obs.node, disk, running, gate, halted, disk_ok, running is not None and running == expected,
        reachable=not obs.unreachable, drift=files_drift, problems=tuple(problems),
        host_key_refused=obs.host_key_refused, flags=ran, flags_ok=flags_ok,
    )


def _disagreeing(verdicts: list[NodeVerdict]) -> list[NodeVerdict]:
    """Without the release's flags to compare with, nodes running different flag sets all fail."""
    seen = {tuple(sorted(v.flags.items())) for v in verdicts if v.flags is not None}
    if len(seen) < 2:
        return verdicts
    return [replace(v, flags_ok=False, problems=v.problems + ("flags disagree across nodes",))
            if v.flags is not None else v for v in verdicts]


def report(observations: list[NodeObservation], expected: str | None,
           manifest: dict[str, str] | None = None, flags: Mapping[str, bool] | None = None,
           manifests: Mapping[str, Mapping[str, str]] | None = None) -> VerifyReport:
    """Judge every node against `expected` (None: nothing to compare with, so nothing matches) and its
    `flags`, and group them (the outlier report; `manifests` of other releases name running code)."""
    verdicts = [judge(o, expected, manifest, flags) for o in observations]
    if flags is None:
        verdicts = _disagreeing(verdicts)
    return VerifyReport(expected, tuple(verdicts), tuple(outliers.group(members(observations, verdicts), expected,
                                                                         manifest, flags, manifests)))


def members(observations: list[NodeObservation], verdicts: list[NodeVerdict]) -> list[outliers.Member]:
    """Return each node as the outlier report sees it."""
    return [outliers.Member(o.node, v.disk_digest, v.running_digest, v.flags, o.files, not o.unreachable)
            for o, v in zip(observations, verdicts, strict=True)]
