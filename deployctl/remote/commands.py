"""Pure builders for every remote action, each paired with the parser of its output (the answers'
shared grammar is remote/replies.py).

A builder returns an argv list (or a list of them for an `&&` chain); `render`
is the only place that turns argv into shell text, quoting every token. Node-side
work runs the controller's own copy of node/agent.py through `python3 -I -S -c BOOT`
(remote/agentpack.py).
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Sequence
from dataclasses import dataclass

from deployctl.config.playbook import Service
from deployctl.errors import DeployctlError
from deployctl.remote import replies
from deployctl.remote.agentpack import agent_program
from deployctl.remote.replies import HEX64, NodeAnswerError


def render(argv: list[str] | list[list[str]]) -> str:
    """Quote every token; a list of argv lists becomes an `&&` chain."""
    if argv and isinstance(argv[0], list):
        return " && ".join(render(a) for a in argv)
    return " ".join(shlex.quote(str(t)) for t in argv)


def _agent(op: str, root: str, *args: str) -> list[str]:
    return ["python3", "-I", "-S", "-c", *agent_program(), op, root, *args]


# Verify's read runs as shell with coreutils and findutils, not Python: starting an interpreter
# on eight small nodes at once would cost more than sha256sum itself. It prints "key value"
# lines for its parser; the root comes in as "$1", never spliced in.
HASHES_SH = """if [ "$2" = current ]; then d="$1/current"; else d="$1/releases/$2"; fi
cd "$d" 2>/dev/null || { echo "no release at $d" >&2; exit 1; }
echo "current $(readlink "$1/current" 2>/dev/null)"
if [ -e "$1/state/halted" ]; then echo "halted yes"; else echo "halted no"; fi
find . -mindepth 1 ! -type f ! -type d -printf 'odd %P\\n'
find . -type f -exec sha256sum {} +"""


def probe(root: str) -> list[str]:
    """Print the node's "key value" probe lines (parse_probe); `deploy` and `retarget` answer the same."""
    return _agent("probe", root)


def stage(root: str, digest: str, size: int, keep: int, protect: Sequence[str] = ()) -> list[str]:
    """Receive `size` bytes of artifact tar on stdin, check and stage them, prune beyond `keep` (never
    `protect`), answer; then wait on stdin for `switch_request` (or its end: no change)."""
    return _agent("stage", root, digest, str(size), str(keep), *protect)


def deploy(root: str, digest: str, keep: int, protect: Sequence[str] = (), lock: dict | None = None) -> list[str]:
    """A rollout's one command per node: take the fleet deploy `lock` (if given), answer a probe at once
    (parse_probe_answer), then take the reuse plan (reuse_hints) and answer what the node already has
    (parse_have), then the rest of the artifact (upload) and go on as `stage`. Closing its input at
    any wait changes nothing (and releases the lock)."""
    return _agent("deploy", root, digest, str(keep), *protect, *_lock_arg(lock))


def _lock_arg(lock: dict | None) -> list[str]:
    return ["--lock=" + json.dumps(lock, sort_keys=True, separators=(",", ":"))] if lock else []


# The end of a run: release the fleet deploy lock if it is still this run's (node_agent.take_lock
# writes holder.json with json.dumps(sort_keys=True), so the id reads `"id": "<id>"`). Shell, not
# the agent: no interpreter start on every node at the end of every run. Prints {"unlocked": bool}.
UNLOCK_SH = r"""l="$1/state/deploy.lock"; gone="$1/state/.deploy.lock-released-$$"
if grep -qF "\"id\": \"$2\"" "$l/holder.json" 2>/dev/null && mv "$l" "$gone"; then
  rm -rf "$gone"; echo '{"unlocked": true}'
else echo '{"unlocked": false}'; fi"""


def unlock(root: str, lock_id: str) -> list[str]:
    """Release the fleet deploy lock `lock_id` on the node, if it still holds it ({"unlocked": bool})."""
    return ["sh", "-c", UNLOCK_SH, "sh", root, lock_id]


LOCK_HELD = "fleet deploy lock held by "  # how a node's refusal to give the lock begins


def have(root: str) -> list[str]:
    """`rollout --dry-run`: given a reuse plan on stdin, answer the probe and which files the node holds
    (parse_probe_answer, parse_have on the same line); nothing is written."""
    return _agent("have", root)


def reuse_hints(files: dict[str, str], hints: dict[str, list[tuple[str, str]]],
               signed: tuple[bytes, str] | None = None) -> bytes:
    """The line telling a node which of the new release's files (path -> sha256) it may already hold,
    and where: [(release digest, path in it), ...] per file, best first. With `signed` (the manifest's
    bytes and its hex signature, as in the upload that follows), `deploy` checks the signature before
    it copies anything, while the gates close, instead of after the upload."""
    doc = {"files": files, "hints": {rel: [list(h) for h in hints[rel]] for rel in files}}
    if signed is not None:
        doc.update(manifest=signed[0].decode("utf-8"), sig=signed[1])
    return (json.dumps(doc, sort_keys=True, separators=(",", ":")) + "\n").encode()


def upload(tar: bytes) -> bytes:
    """What follows the reuse plan's answer: the size of the tar on its own line, then the tar."""
    return b"%d\n" % len(tar) + tar


def parse_have(stdout: bytes) -> tuple[frozenset[str], int]:
    """Parse a node's answer to the reuse plan: the paths it holds with the right sha256, their bytes."""
    doc = replies.json_doc(stdout, "reuse")
    have, size = doc.get("have"), doc.get("bytes")
    if not isinstance(have, list) or not all(isinstance(p, str) for p in have):
        raise NodeAnswerError("reuse: answer field 'have' should be a list of paths")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise NodeAnswerError("reuse: answer field 'bytes' should be a number of bytes")
    return frozenset(have), size


def retarget(root: str, lock: dict | None = None) -> list[str]:
    """Rollback's and recover's one command per node: take the fleet deploy `lock` (if given), answer a
    probe at once, then switch on request (`switch_request`) to a release already on the node.
    Closing its input changes nothing (and releases the lock)."""
    return _agent("retarget", root, *_lock_arg(lock))


def service_argv(service: Service, action: str, become: bool = False) -> list[str]:
    """`supervisorctl|systemctl ACTION UNIT` for the playbook's service manager; with `become`, behind
    `sudo -n` (enroll's sudoers rule allows exactly these commands, without a password)."""
    tool = "systemctl" if service.manager_name == "systemd" else "supervisorctl"
    return (["sudo", "-n"] if become else []) + [tool, action, service.unit_name]


def _restart_how(service: Service, become: bool, action: str = "restart") -> tuple[str, list[str]]:
    """("supervisor", [socket, program]) to restart over supervisord's socket (root logins), else
    ("argv", argv): the manager's command for a `become` login or a playbook without restart argv."""
    if become or (service.manager and service.supervisor is None and service.restart is None):
        return "argv", service_argv(service, action, become)
    if service.supervisor:
        return "supervisor", [service.supervisor.socket, service.supervisor.program]
    return "argv", list((service.restart if action == "restart" else service.stop) or ())


def switch_request(digest: str, record: dict | None, service: Service, become: bool = False) -> bytes:
    """The line that makes a held command switch to `digest` and restart: with the journal record and
    how to restart (with `become`, `sudo -n` and the service manager's own command)."""
    doc: dict = {"digest": digest, "record": record}
    kind, how = _restart_how(service, become)
    if how:
        doc["supervisor" if kind == "supervisor" else "restart"] = how
    return (json.dumps(doc, sort_keys=True, separators=(",", ":")) + "\n").encode()


def hashes(root: str, digest: str = "current") -> list[str]:
    return ["sh", "-c", HASHES_SH, "sh", root, digest]


# `deployctl watch`'s one held command per node: each input line asks for one answer line, the
# release `current` points to and when it was switched (node clock), "-" for what is missing.
WATCH_SH = """while read -r _; do c=$(readlink "$1/current") || c=-; m=$(stat -c %Y "$1/current" 2>/dev/null) || m=-
echo "${c##*/} $m"; done"""


def watch_loop(root: str) -> list[str]:
    return ["sh", "-c", WATCH_SH, "sh", root]


def parse_watch(line: bytes) -> tuple[str | None, float | None]:
    """Return (release digest or None, switch time or None) from one watch answer; DeployctlError if malformed."""
    parts = line.decode("utf-8", "replace").split()
    if (len(parts) != 2 or not (parts[0] == "-" or HEX64.match(parts[0]))
            or not re.fullmatch(r"-|[0-9]{1,12}", parts[1])):
        raise DeployctlError(f"watch: unexpected answer from the node: {line[:80]!r}")
    return (None if parts[0] == "-" else parts[0]), (None if parts[1] == "-" else float(parts[1]))


def switch(root: str, digest: str, supervisor: tuple[str, str] | None = None) -> list[str]:
    """Rename `current` to the release; with (socket, program), restart it through supervisord too."""
    return _agent("switch", root, digest, *(supervisor or ()))


def stop(root: str, supervisor: tuple[str, str] | None = None, argv: list[str] | None = None) -> list[str]:
    """Journal (record on stdin), stop the service (over supervisord's socket, or by running `argv`), remove
    `current`."""
    return _agent("stop", root, *(supervisor or ("--run", *(argv or ()))))


def activate(root: str, digest: str | None, service: Service, become: bool = False) -> list[str] | list[list[str]]:
    """Switch to `digest` and restart the service, or stop it when there is no release to go back to."""
    kind, how = _restart_how(service, become, "restart" if digest else "stop")
    supervisor = (how[0], how[1]) if kind == "supervisor" else None  # (socket, program)
    if digest is None:
        if supervisor:
            return stop(root, supervisor)
        return stop(root, argv=how) if (become or service.restart is None) else how
    return switch(root, digest, supervisor) if supervisor else [switch(root, digest), how]


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


def agent_error(stderr: bytes) -> str:
    """Return the one-line error a node agent printed, or the raw last line; clipped (replies.clip)."""
    text = stderr.decode(errors="replace").strip()
    try:
        return replies.clip(str(json.loads(text.splitlines()[-1])["error"]))
    except (ValueError, KeyError, IndexError, TypeError, RecursionError):
        return replies.clip(text.splitlines()[-1]) if text else "no error text"


def parse_probe(stdout: bytes) -> Probe:
    pairs = replies.kv_lines(stdout, "probe")
    if not replies.flag(pairs, "root", "probe"):
        return Probe(None, (), 0, False)
    free = replies.one(pairs, "free", "probe")
    if not re.fullmatch(r"[0-9]{1,20}", free):  # not str.isdigit: int() refuses "²" and 5000-digit numbers
        raise NodeAnswerError("probe: free should be a number of bytes")
    releases = tuple(sorted(v for k, v in pairs if k == "release" and HEX64.match(v)))  # others aren't releases
    unknown = {k for k, _ in pairs} - {"root", "current", "halted", "free", "release"}
    if unknown:
        raise NodeAnswerError(replies.clip(f"probe: unexpected lines {sorted(unknown)}"))
    return Probe(replies.release_name(replies.one(pairs, "current", "probe")), releases, int(free),
                 replies.flag(pairs, "halted", "probe"))


def parse_probe_answer(stdout: bytes) -> Probe:
    """Parse a held command's probe line: {"probe": TEXT}, TEXT being what `probe` prints."""
    text = replies.field(replies.json_doc(stdout, "probe"), "probe", str, "probe")
    return parse_probe(text.encode("utf-8", "surrogatepass"))  # a lone surrogate reads as "not UTF-8"


def parse_hashes(stdout: bytes) -> Hashes:
    """Parse `current`, `halted`, `odd PATH` lines and sha256sum's `HASH  ./PATH` lines.

    sha256sum marks a name it had to escape (backslash, newline) with a leading backslash: such a
    name is reported as odd, so it can never match a manifest.
    """
    pairs = replies.kv_lines(stdout, "hashes")
    files, odd = {}, []
    for key, value in pairs:
        if key in ("current", "halted"):
            continue
        if key == "odd":
            odd.append(value)
        elif key.startswith("\\"):
            odd.append("(unprintable name) " + value.lstrip(" *"))
        elif HEX64.match(key) and value.startswith(" ./"):
            files[value[3:]] = key
        else:
            raise NodeAnswerError(f"hashes: unreadable line {key[:20]!r}")
    return Hashes(replies.release_name(replies.one(pairs, "current", "hashes")), files, tuple(sorted(odd)),
                  replies.flag(pairs, "halted", "hashes"))


def parse_stage(stdout: bytes) -> str:
    """Return the digest the node computed for what it staged."""
    digest = replies.field(replies.json_doc(stdout, "stage"), "digest", str, "stage")
    if not HEX64.match(digest):
        raise NodeAnswerError("stage: answer field 'digest' is not a sha256")
    return digest


def parse_switch(stdout: bytes) -> tuple[str | None, str]:
    """Return (previous, current) release names from a switch."""
    doc = replies.json_doc(stdout, "switch")
    current = replies.field(doc, "current", str, "switch")
    if not HEX64.match(current):
        raise NodeAnswerError("switch: answer field 'current' is not a sha256")
    return replies.optional_str(doc, "previous", "switch"), current
