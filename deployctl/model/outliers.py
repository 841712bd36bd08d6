"""The outlier report: nodes grouped by disk digest, running digest and flag set, one line per group.

"7 nodes run 8d65e1c2a3b4; node8 runs 1a2b3c4d5e6f: router.json changed, power_peg.py added": who
agrees, who differs, and how, file by file against the reference release (the expected release's
manifest, or else what the largest group holds). Pure: values in, values out.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class Member:
    """One node as read back: digests (None if unknown), running flags, and the files of its `current`."""

    node: str
    disk: str | None
    running: str | None
    flags: Mapping[str, bool] | None = None
    files: Mapping[str, str] | None = None
    reachable: bool = True


@dataclass(frozen=True)
class Group:
    """Nodes that agree on disk digest, running digest and flags; `reference` marks the release others are
    compared with; `differences` names what differs from it (files, running code, flags)."""

    nodes: tuple[str, ...]
    disk: str | None
    running: str | None
    flags: dict[str, bool] | None
    reference: bool
    differences: tuple[str, ...]
    line: str

    def to_dict(self) -> dict:
        """Return the documented --json shape of one group."""
        return {"nodes": list(self.nodes), "disk_digest": self.disk, "running_digest": self.running,
                "flags": self.flags, "reference": self.reference, "differences": list(self.differences),
                "line": self.line}


def file_changes(reference: Mapping[str, str], files: Mapping[str, str]) -> list[str]:
    """Return how `files` differ from `reference`, one "<path> changed|added|missing" per file, paths sorted."""
    out = [(p, "changed") for p in reference if p in files and files[p] != reference[p]]
    out += [(p, "missing") for p in reference if p not in files]
    out += [(p, "added") for p in files if p not in reference]
    return [f"{p} {what}" for p, what in sorted(out)]


def flag_changes(reference: Mapping[str, bool] | None, flags: Mapping[str, bool] | None) -> list[str]:
    """Return how running `flags` differ from `reference`: "flag x=true (release: false)", added or missing."""
    if reference is None or flags is None or dict(reference) == dict(flags):
        return []
    out = []
    for name in sorted(set(reference) | set(flags)):
        if name not in flags:
            out.append(f"flag {name} missing")
        elif name not in reference:
            out.append(f"flag {name}={str(flags[name]).lower()} added")
        elif flags[name] != reference[name]:
            out.append(f"flag {name}={str(flags[name]).lower()} (release: {str(reference[name]).lower()})")
    return out


def _short(digest: str | None) -> str:
    return digest[:12] if digest else "?"


def _who(nodes: tuple[str, ...]) -> tuple[str, bool]:
    """("7 nodes", plural) for three or more, else the names ("node7, node8", plural)."""
    return (f"{len(nodes)} nodes" if len(nodes) > 2 else ", ".join(nodes)), len(nodes) > 1


def _line(g_nodes: tuple[str, ...], disk: str | None, running: str | None, reachable: bool,
          differences: list[str]) -> str:
    who, plural = _who(g_nodes)
    if not reachable and disk is None and running is None:
        what = f"{'are' if plural else 'is'} unreachable"
    elif disk == running:
        what = f"{'run' if plural else 'runs'} {_short(running)}"
    else:
        what = f"{'have' if plural else 'has'} {_short(disk)} on disk, {'run' if plural else 'runs'} {_short(running)}"
    return f"{who} {what}" + (f": {', '.join(differences)}" if differences else "")


def group(members: list[Member], expected: str | None = None, expected_files: Mapping[str, str] | None = None,
          expected_flags: Mapping[str, bool] | None = None,
          manifests: Mapping[str, Mapping[str, str]] | None = None) -> list[Group]:
    """Group `members` by (disk, running, flags); the largest group first, ties in member order.

    The reference is the expected release (`expected`, its files and flags) when given, else the
    largest group. Every group not matching it lists its differences: files changed, added or
    missing on disk; the running code's files, when it runs another release whose manifest is in
    `manifests`; flags. Never raises for odd input: unknown parts are shown as '?'.
    """
    keyed: dict[tuple, list[Member]] = {}
    for m in members:
        flags = tuple(sorted(m.flags.items())) if isinstance(m.flags, Mapping) else None
        keyed.setdefault((m.disk, m.running, flags, m.reachable or m.disk is not None or m.running is not None),
                         []).append(m)
    ordered = sorted(keyed.values(), key=lambda ms: -len(ms))  # stable: ties keep member order
    if expected is None and ordered:
        first = ordered[0][0]
        expected, expected_flags = first.running or first.disk, first.flags
        expected_files = first.files if expected_files is None else expected_files
    out = []
    for ms in ordered:
        m = ms[0]
        differences: list[str] = []
        ref = (m.disk == expected and m.running == expected
               and (expected_flags is None or dict(m.flags or {}) == dict(expected_flags)))
        if not ref:
            if expected_files is not None and m.files is not None and m.disk != expected:
                differences += file_changes(expected_files, m.files)
            running_files = (manifests or {}).get(m.running or "")
            if expected_files is not None and running_files is not None and m.running not in (expected, m.disk):
                differences += [f"running {d}" for d in file_changes(expected_files, running_files)]
            differences += flag_changes(expected_flags, m.flags)
        reachable = any(x.reachable or x.disk or x.running for x in ms)
        names = tuple(x.node for x in ms)
        out.append(Group(names, m.disk, m.running, dict(m.flags) if isinstance(m.flags, Mapping) else None, ref,
                         tuple(differences), _line(names, m.disk, m.running, reachable, differences)))
    return out
