"""Pure builders for every remote action, each paired with the parser of its output.

A builder returns an argv list (or a list of them for an `&&` chain); `render`
is the only place that turns argv into shell text, quoting every token. Node-side
work runs the controller's own copy of node_agent.py through `python3 -I -c`.
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

from deployctl.config import Service
from deployctl.errors import DeployctlError

AGENT = (Path(__file__).with_name("node_agent.py")).read_text()
HEX64 = re.compile(r"[0-9a-f]{64}\Z")  # use with .match: \Z, unlike $, refuses a trailing newline


class NodeAnswerError(DeployctlError):
    """A node's answer could not be understood."""


def render(argv: list[str] | list[list[str]]) -> str:
    """Quote every token; a list of argv lists becomes an `&&` chain."""
    if argv and isinstance(argv[0], list):
        return " && ".join(render(a) for a in argv)
    return " ".join(shlex.quote(str(t)) for t in argv)


def _agent(op: str, root: str, *args: str) -> list[str]:
    return ["python3", "-I", "-S", "-c", AGENT, op, root, *args]


def probe(root: str) -> list[str]:
    return _agent("probe", root)


def stage(root: str, digest: str) -> list[str]:
    return _agent("stage", root, digest)


def hashes(root: str, digest: str = "current") -> list[str]:
    return _agent("hashes", root, digest)


def switch(root: str, digest: str, supervisor: tuple[str, str] | None = None) -> list[str]:
    """Rename `current` to the release; with (socket, program), restart it through supervisord too."""
    return _agent("switch", root, digest, *(supervisor or ()))


def stop(root: str, supervisor: tuple[str, str]) -> list[str]:
    return _agent("stop", root, *supervisor)


def activate(root: str, digest: str | None, service: Service) -> list[str] | list[list[str]]:
    """Switch to `digest` and restart the service, or stop it when there is no release to go back to."""
    sup = (service.supervisor.socket, service.supervisor.program) if service.supervisor else None
    if digest is None:
        return stop(root, sup) if sup else list(service.stop)
    return switch(root, digest, sup) if sup else [switch(root, digest), list(service.restart)]


def prune(root: str, keep: int, protect: list[str]) -> list[str]:
    return _agent("prune", root, str(keep), *protect)


def journal_append(root: str) -> list[str]:
    return _agent("journal", root)


def halt(root: str) -> list[str]:
    return _agent("halt", root)


@dataclass(frozen=True)
class Probe:
    """What preflight learns about a node."""

    current: str | None
    releases: tuple[str, ...]
    free: int
    halted: bool


@dataclass(frozen=True)
class Hashes:
    """A node's files of one release, as it has them on disk."""

    current: str | None
    files: dict[str, str]
    odd: tuple[str, ...]
    halted: bool


def _json(stdout: bytes, what: str) -> dict:
    try:
        doc = json.loads(stdout.decode().strip().splitlines()[0])
    except (UnicodeDecodeError, ValueError, IndexError, RecursionError):
        raise NodeAnswerError(f"{what}: unreadable answer {stdout[:80]!r}") from None
    if not isinstance(doc, dict):
        raise NodeAnswerError(f"{what}: answer is not an object")
    return doc


def _field(doc: dict, key: str, kind, what: str):
    value = doc.get(key)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise NodeAnswerError(f"{what}: answer field {key!r} missing or of the wrong type")
    return value


def _optional_str(doc: dict, key: str, what: str) -> str | None:
    value = doc.get(key)
    if value is not None and not isinstance(value, str):
        raise NodeAnswerError(f"{what}: answer field {key!r} of the wrong type")
    return value


def agent_error(stderr: bytes) -> str:
    """Return the one-line error a node agent printed, or the raw last line."""
    text = stderr.decode(errors="replace").strip()
    try:
        return str(json.loads(text.splitlines()[-1])["error"])
    except (ValueError, KeyError, IndexError, TypeError, RecursionError):
        return text.splitlines()[-1] if text else "no error text"


def parse_probe(stdout: bytes) -> Probe:
    doc = _json(stdout, "probe")
    current = doc.get("current")
    if current is not None and not isinstance(current, str):
        raise NodeAnswerError("probe: answer field 'current' of the wrong type")
    releases = _field(doc, "releases", list, "probe")
    if not all(isinstance(r, str) and HEX64.match(r) for r in releases):
        raise NodeAnswerError("probe: answer field 'releases' holds a non-digest")
    return Probe(current, tuple(releases), _field(doc, "free", int, "probe"), _field(doc, "halted", bool, "probe"))


def parse_hashes(stdout: bytes) -> Hashes:
    doc = _json(stdout, "hashes")
    files = _field(doc, "files", dict, "hashes")
    if not all(isinstance(k, str) and isinstance(v, str) and HEX64.match(v) for k, v in files.items()):
        raise NodeAnswerError("hashes: answer field 'files' is not a path -> sha256 map")
    current = _optional_str(doc, "current", "hashes")
    odd = _field(doc, "odd", list, "hashes")
    if not all(isinstance(o, str) for o in odd):
        raise NodeAnswerError("hashes: answer field 'odd' holds a non-string")
    return Hashes(current, files, tuple(odd), _field(doc, "halted", bool, "hashes"))


def parse_stage(stdout: bytes) -> str:
    """Return the digest the node computed for what it staged."""
    digest = _field(_json(stdout, "stage"), "digest", str, "stage")
    if not HEX64.match(digest):
        raise NodeAnswerError("stage: answer field 'digest' is not a sha256")
    return digest


def parse_switch(stdout: bytes) -> tuple[str | None, str]:
    """Return (previous, current) release names from a switch."""
    doc = _json(stdout, "switch")
    current = _field(doc, "current", str, "switch")
    if not HEX64.match(current):
        raise NodeAnswerError("switch: answer field 'current' is not a sha256")
    return _optional_str(doc, "previous", "switch"), current
