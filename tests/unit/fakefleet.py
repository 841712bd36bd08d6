"""An in-memory fleet for unit tests of the orchestration: the two seams of Context, faked.

Modelled on pyinfra-dev/pyinfra src/pyinfra/connectors/fake.py: the code under test renders its real
commands, and FakeFleet (an ssh.Fleet) reads them back with shlex.split and answers as the node agent
(deployctl/node/agent.py) would: the same ops, the same JSON lines, errors as `{"error": ...}` on
stderr with exit 1. FakeRouters (routers.Routers' methods) answers as fleet/router's HTTP control does.
Every node's state (releases on disk, `current`, the running digest, halt flag, gate, free bytes, its
own journal) lives in a FakeNode; faults are injected per node and per phase with `World.fail`.
`over_http` puts the real HTTP client (routers.Routers) in front of FakeRouters over a fake socket, so a
node's router can answer hostile bytes; `fake_http` is that socket for tests without a World.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import http.client
import io
import json
import shlex
import shutil
import tarfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deployctl.config.inventory import Inventory, Node
from deployctl.config.playbook import Playbook, Service, Supervisor, Timeouts
from deployctl.ops import rollout as rollout_mod
from deployctl.ops.context import Context
from deployctl.release import artifact as artifact_mod
from deployctl.release import signing
from deployctl.remote import agentpack, commands, routers
from deployctl.remote.routers import Answer
from deployctl.remote.ssh import Call, NodeResult, Target
from deployctl.state.statedir import StateDir

ROOT = "/opt/router"
SOCKET, PROGRAM = "/var/run/supervisor.sock", "router"
GiB = 2 ** 30

# What a real node says when each fault happens (node agent error texts, paramiko/OS texts).
FAULTS = {
    "connect": "unreachable at {host}:{port}: connection refused",
    "host-key": "host key mismatch at {host}:{port}: got ssh-ed25519 SHA256:evil, pinned SHA256:good; "
                "refusing to connect",
    "probe": "PermissionError: [Errno 13] Permission denied: '/opt/router/releases'",
    "stage": "disk full: [Errno 28] No space left on device: '/opt/router/releases/.stage'",
    "switch": "supervisor: restart router: SPAWN_ERROR: router",
    "revert": "supervisor unreachable at /var/run/supervisor.sock: [Errno 2] No such file or directory",
    "journal": "OSError: [Errno 30] Read-only file system: '/opt/router/state/journal.jsonl'",
    "halt": "OSError: [Errno 30] Read-only file system: '/opt/router/state/.halted-1'",
    "hashes": "sha256sum: ./router.py: Input/output error",
    "gate-open": "digest mismatch: this node runs something else",
    "resume": "halt file could not be removed",
}
SSH_FAULTS = {"connect", "host-key"}

# shlex.split reads 25 kB of agent source one character at a time (75 ms a command): its quoted form is
# swapped for a placeholder first, so only the rest of the command line is split. A command that quotes
# the agent or the hashes script any other way is not recognised, and the test fails.
_QUOTED = {shlex.quote(agentpack.BOOT): "@AGENT@", shlex.quote(commands.HASHES_SH): "@HASHES_SH@"}
_PLAIN = {v: k for k, v in {agentpack.BOOT: "@AGENT@", commands.HASHES_SH: "@HASHES_SH@"}.items()}


@functools.lru_cache(maxsize=256)
def split(command: str) -> tuple[str, ...]:
    """shlex.split(command), fast for the agent and hashes-script tokens (and once per distinct command)."""
    for quoted, mark in _QUOTED.items():
        command = command.replace(quoted, mark)
    return tuple(_PLAIN.get(t, t) for t in shlex.split(command))


class Refused(Exception):
    """The node agent's Refused: one `{"error": ...}` line on stderr, exit 1."""


@dataclass
class FakeNode:
    """One node: what is on its disk (releases, `current`, state/) and what its router process is doing."""

    name: str
    ssh_port: int
    router_port: int
    signing_pub: str = ""  # state/signing.pub, pinned at `fleet up`
    host: str = "127.0.0.1"
    releases: dict[str, dict[str, str]] = field(default_factory=dict)  # digest -> {path: sha256}
    versions: dict[str, str] = field(default_factory=dict)  # digest -> router.json version
    mtimes: dict[str, int] = field(default_factory=dict)  # digest -> order staged (prune keeps the newest)
    current: str | None = None  # the release `current` points at
    running: str | None = None  # the digest the router process reports; None: not running
    gate: str = "closed"
    halted: bool = False  # state/halted exists
    answers: bool = True  # False: the router hangs (HTTP times out) though the process exists
    free: int = 4 * GiB
    journal: list[dict] = field(default_factory=list)  # state/journal.jsonl
    faults: dict[str, str] = field(default_factory=dict)  # fault -> the error text the node gives
    crash_on: set[str] = field(default_factory=set)  # releases the router dies on when started
    tampered: set[tuple[str, str]] = field(default_factory=set)  # (release, path) whose bytes were changed on disk
    sizes: dict[str, int] = field(default_factory=dict)  # sha256 -> bytes, of the files it was sent
    lock: dict | None = None  # state/deploy.lock/holder.json: the fleet deploy lock

    def take_lock(self, lock: dict | None) -> None:
        """As agent.take_lock: refused naming the holder unless free, ours, or breakable."""
        if not lock:
            return
        held, how = self.lock, lock.get("break")
        own_dead_run = isinstance(how, dict) and "holder" in how and held is not None and (
            (held["holder"], held["pid"]) == (how["holder"], how["pid"]))
        breakable = how == "any" or (isinstance(how, dict) and held is not None and (
            held["id"] in (how.get("ids") or ()) or own_dead_run))
        mine = {k: lock[k] for k in ("holder", "pid", "since", "command", "id")}
        if held and held["id"] != lock["id"] and not breakable:
            since = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(held["since"]))
            raise Refused(f"fleet deploy lock held by {held['holder']} (pid {held['pid']}) running "
                          f"'{held['command']}' since {since} (run {held['id']})")
        if held and held["id"] != lock["id"]:
            self.journal.append({"action": "lock-broken", "broken": held, "by": mine})
        self.lock = mine

    def release_lock(self, lock_id: str | None) -> bool:
        if lock_id and self.lock and self.lock["id"] == lock_id:
            self.lock = None
            return True
        return False
    # The node's clock minus the controller's: past the router's 30 s window its signed gate opens
    # and resumes are refused (401), while halt and gate close are signed again with its clock.
    clock_skew: float = 0.0

    def state(self) -> dict:
        """The node's whole state, for one assert."""
        return {"current": self.current, "running": self.running, "gate": self.gate, "halted": self.halted,
                "releases": sorted(self.releases)}

    def probe_text(self) -> str:
        """What agent.probe_text prints for this node."""
        lines = ["root yes", "current " + (f"releases/{self.current}" if self.current else ""),
                 "halted " + ("yes" if self.halted else "no"), "free %d" % self.free]
        return "\n".join(lines + ["release " + d for d in sorted(self.releases)]) + "\n"

    def bytes_of(self, have: dict[str, str]) -> int:
        """What the files `have` (path -> sha256) take on this node's disk: the agent's `bytes`."""
        return sum(self.sizes.get(sha, 0) for sha in have.values())

    def reuse(self, plan: dict, journal: bool = True) -> dict[str, str]:
        """agent.reuse: each hinted file the node holds with the right sha256; a tampered copy is
        journaled (not by the dry run, op `have`) and not used."""
        have = {}
        for rel, sha in sorted(plan["files"].items()):
            for old, old_rel in plan["hints"][rel]:
                if self.releases.get(old, {}).get(old_rel) is None:
                    continue
                found = "0" * 64 if (old, old_rel) in self.tampered else self.releases[old][old_rel]
                if found == sha:
                    have[rel] = sha
                    break
                if journal:
                    self.journal.append({"action": "stage", "event": "not-reused", "file": rel, "from": old,
                                         "from_file": old_rel, "expected": sha, "found": found})
        return have

    def restart(self) -> None:
        """supervisord restarts the router: it hashes `current` and starts with its gate closed."""
        self.gate = "closed"
        self.running = self.current if self.current and self.current not in self.crash_on else None

    def refuse(self, fault: str) -> None:
        if fault in self.faults:
            raise Refused(self.faults[fault])

    def switch_to(self, digest: str, record: dict | None) -> str | None:
        """agent.switch_to: journal the record with its previous release, then rename `current`."""
        if not commands.HEX64.match(digest):
            raise Refused("bad digest %r" % digest)
        if digest not in self.releases:
            raise Refused("release %s is not on this node" % digest[:12])
        previous = self.current
        if record is not None:
            self.journal.append(dict(record, previous=previous))
        self.current = digest
        return previous

    def switch_and_restart(self, digest: str, record: dict | None, fault: str) -> bytes:
        previous = self.switch_to(digest, record)
        self.running = None  # supervisord stopped it; the start may fail
        self.refuse(fault)
        self.restart()
        return _line({"previous": previous, "current": digest, "restarted": True})

    def health(self) -> dict:
        return {"service": "order-router", "version": self.versions.get(self.running), "digest": self.running,
                "gate": self.gate, "halted": self.halted}


def _line(doc: dict) -> bytes:
    return (json.dumps(doc, sort_keys=True) + "\n").encode()


@dataclass
class Held:
    """A command held open on a node: `deploy` (waiting for the artifact, then for the switch) or `retarget`."""

    op: str
    digest: str | None = None
    keep: int = 0
    protect: tuple[str, ...] = ()
    plan: dict | None = None  # the reuse plan sent with the command
    have: dict[str, str] | None = None  # files the node found it holds (path -> sha256), once answered
    staged: bool = False
    lock_id: str | None = None  # the fleet deploy lock it took, released if its input ends before a switch


class World:
    """Every FakeNode of the fleet, shared by each command's FakeFleet and by FakeRouters; logs what ran."""

    def __init__(self, nodes: list[FakeNode]):
        self.nodes = {n.name: n for n in nodes}
        self.log: list[tuple[str, str, str]] = []  # (kind, node, what), in order
        self.connects: list[list[str]] = []

    def __getitem__(self, name: str) -> FakeNode:
        return self.nodes[name]

    def fail(self, node: str, fault: str, message: str | None = None) -> None:
        """Make `node` fail `fault` (a key of FAULTS) with the real node's text, or `message`."""
        n = self.nodes[node]
        n.faults[fault] = message or FAULTS[fault].format(host=n.host, port=n.ssh_port)

    def connect(self, nodes: list[Node]) -> FakeFleet:
        """Context.connect: one FakeFleet per command, as SSHFleet opens one connection set per command."""
        self.connects.append([n.name for n in nodes])
        return FakeFleet(self, [Target(n.name, n.host, n.ssh_port, n.user) for n in nodes])

    def states(self) -> dict[str, dict]:
        return {name: n.state() for name, n in self.nodes.items()}

    def ran(self, kind: str) -> list[str]:
        """The nodes that ran `kind` (e.g. "switch", "step"), in order."""
        return [node for k, node, _ in self.log if k == kind]


class FakeFleet:
    """ssh.Fleet in memory: parses each rendered command and answers as node/agent.py would."""

    def __init__(self, world: World, targets: list[Target]):
        self.world, self.targets = world, targets
        self.held: dict[str, Held] = {}
        self.closed = False

    def __enter__(self) -> FakeFleet:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Every held command reads end of input: it changes nothing and exits."""
        for name in sorted(self.held):
            self.world.log.append(("end", name, self.held[name].op))
            self.world[name].release_lock(self.held[name].lock_id)
        self.held, self.closed = {}, True

    # ---- the Fleet protocol ----------------------------------------------------------------------

    def run(self, calls: dict[str, Call]) -> dict[str, NodeResult]:
        return {n: self._guard(n, self._run_one, c) for n, c in calls.items()}

    def run_all(self, make: Callable[[str], Call], names: Iterable[str] | None = None) -> dict[str, NodeResult]:
        return self.run({n: make(n) for n in ([t.name for t in self.targets] if names is None else names)})

    def hold(self, calls: dict[str, Call]) -> dict[str, NodeResult]:
        return {n: self._guard(n, self._hold_one, c) for n, c in calls.items()}

    def step(self, data: dict[str, bytes], timeout: float = 60.0, progress=None) -> dict[str, NodeResult]:
        out = {}
        for n, d in data.items():
            if progress:
                progress(n, len(d), len(d))
            out[n] = self._guard(n, self._step_one, d)
        return out

    def exchange(self, data: dict[str, bytes], reply, timeout: float = 60.0,
                 progress=None) -> dict[str, tuple[NodeResult, NodeResult | None]]:
        out = {}
        for n, d in data.items():  # node by node: each node's second step follows its own first answer
            first = self._guard(n, self._step_one, d)
            then = reply(n, first.stdout) if first.ok else None
            if then is not None and progress:
                progress(n, len(then), len(then))
            out[n] = (first, None if then is None else self._guard(n, self._step_one, then))
        return out

    def finish(self, lines: dict[str, bytes | None], timeout: float = 60.0) -> dict[str, NodeResult]:
        return {n: self._guard(n, self._finish_one, line) for n, line in lines.items()}

    # ---- one node ----------------------------------------------------------------------------------

    def _guard(self, name: str, work: Callable[[FakeNode, Any], bytes], arg: Any) -> NodeResult:
        """work(node, arg), like SSHFleet._guard: a connection failure is an error result; a Refused is
        exit 1 + JSON error."""
        assert not self.closed, "a closed fleet was used"
        node = self.world[name]
        for fault in SSH_FAULTS & set(node.faults):
            return NodeResult(name, error=node.faults[fault], host_key_refused=fault == "host-key")
        try:
            return NodeResult(name, 0, work(node, arg))
        except _Exit as exc:
            return NodeResult(name, 1, b"", f"{exc}\n".encode())
        except Refused as exc:
            self.held.pop(name, None)  # the agent exited
            return NodeResult(name, 1, b"", _line({"error": str(exc)}))
        except _NotHeld:
            return NodeResult(name, error="no command held on this node")

    def _agent(self, node: FakeNode, command: str) -> tuple[str, list[str]]:
        argv = list(split(command))
        assert argv[:4] == ["python3", "-I", "-S", "-c"] and tuple(argv[4:8]) == agentpack.agent_program(), argv[:4]
        if argv[-1].startswith("--lock="):
            argv.pop()
        assert len(argv) >= 10, argv[8:]
        assert argv[9] == ROOT, f"{node.name}: root {argv[9]!r}"
        return argv[8], argv[10:]

    def _hold_one(self, node: FakeNode, call: Call) -> bytes:
        op, args = self._agent(node, call.command)
        self.world.log.append(("hold", node.name, op))
        if op == "deploy":
            digest, keep, *protect = args
            if not keep.isdigit():
                raise Refused("bad size or keep argument")
            if not commands.HEX64.match(digest):
                raise Refused("bad digest %r" % digest)
            plan = json.loads(call.stdin)
            assert set(plan) == {"files", "hints", "manifest", "sig"} and set(plan["hints"]) == set(plan["files"]), plan
            held = Held(op, digest, int(keep), tuple(protect), plan)
        elif op == "retarget":
            assert not args, args
            held = Held(op)
        else:
            raise AssertionError(f"hold of {op!r}: only deploy and retarget are held")
        lock = _lock_of(call.command)
        node.take_lock(lock)
        held.lock_id = lock and lock["id"]
        node.refuse("probe")
        self.held[node.name] = held
        return _line({"probe": node.probe_text()})

    def _take(self, node: FakeNode) -> Held:
        if node.name not in self.held:
            raise _NotHeld()
        return self.held[node.name]

    def _step_one(self, node: FakeNode, data: bytes) -> bytes:
        held = self._take(node)
        assert held.op == "deploy" and not held.staged, held
        if held.have is None:  # the first step reads the answer to the reuse plan
            assert data == b"", data[:40]
            self.world.log.append(("reuse", node.name, held.digest))
            held.have = node.reuse(held.plan)
            return _line({"have": sorted(held.have), "bytes": node.bytes_of(held.have)})
        self.world.log.append(("step", node.name, held.digest))
        size, _, data = data.partition(b"\n")
        assert size.isdigit() and int(size) == len(data), (size, len(data))
        self.world.log.append(("sent", node.name, len(data)))
        node.refuse("stage")
        if len(data) > node.free:
            raise Refused("disk full: [Errno 28] No space left on device")
        files, version, sizes = _unpack(data, held.digest, node.signing_pub, tuple(sorted(held.have.items())))
        node.sizes.update(sizes)
        files = dict(files)
        reused = node.releases.get(held.digest) == files
        node.releases[held.digest], node.versions[held.digest] = files, version
        node.tampered = {t for t in node.tampered if t[0] != held.digest} if not reused else node.tampered
        if not reused:  # the order staged, per node (a cloned rig's log starts empty: not its length)
            node.mtimes[held.digest] = max(node.mtimes.values(), default=0) + 1
        _prune(node, held.keep, (held.digest,) + held.protect)  # after the answer on a real node
        held.staged = True
        return _line({"digest": held.digest, "files": len(files), "reused": reused, "copied": len(held.have)})

    def _finish_one(self, node: FakeNode, line: bytes | None) -> bytes:
        held = self._take(node)
        del self.held[node.name]  # whatever happens next, the command ends
        self.world.log.append(("finish", node.name, "end" if line is None else "switch"))
        if line is None or not line.strip():
            node.release_lock(held.lock_id)
            return b""
        if held.op == "deploy" and not held.staged:
            raise Refused("not a valid artifact tar: header checksum mismatch")  # the line read as a tar header
        doc = json.loads(line)
        assert set(doc) <= {"digest", "record", "supervisor", "restart"}, doc
        assert doc.get("supervisor") == [SOCKET, PROGRAM], doc
        if held.digest is not None and doc["digest"] != held.digest:
            raise Refused("switch request names %r, not the staged release" % (doc["digest"],))
        if doc.get("record") is not None and not isinstance(doc["record"], dict):
            raise Refused("journal record is not an object")
        self.world.log.append(("switch", node.name, doc["digest"]))
        return node.switch_and_restart(doc["digest"], doc.get("record"), "switch")

    def _run_one(self, node: FakeNode, call: Call) -> bytes:
        argv = list(split(call.command))
        if argv[:3] == ["sh", "-c", commands.UNLOCK_SH]:
            assert argv[3:5] == ["sh", ROOT] and len(argv) == 6, argv[3:]
            self.world.log.append(("unlock", node.name, argv[5]))
            return _line({"unlocked": node.release_lock(argv[5])})
        if argv[:3] == ["sh", "-c", commands.HASHES_SH]:
            assert argv[3:5] == ["sh", ROOT] and len(argv) == 6, argv[3:]
            self.world.log.append(("hashes", node.name, argv[5]))
            return self._hashes(node, argv[5])
        assert "&&" not in argv, "restart argv chains are not modelled: the fake fleet runs under supervisord"
        op, args = self._agent(node, call.command)
        self.world.log.append((op, node.name, " ".join(args[:1])))
        record = _record(call.stdin)
        if op == "switch":
            digest, *sup = args
            assert sup == [SOCKET, PROGRAM], sup
            return node.switch_and_restart(digest, record, "revert")
        if op == "stop":
            assert args == [SOCKET, PROGRAM], args
            previous = node.current
            if record is not None:
                node.journal.append(dict(record, previous=previous))
            node.refuse("revert")
            node.running, node.current = None, None
            return _line({"stopped": PROGRAM, "previous": previous})
        if op == "journal":
            node.refuse("journal")
            if record is None:
                raise Refused("journal record is not JSON")
            node.journal.append(record)
            return _line({"appended": len(json.dumps(record, sort_keys=True, separators=(",", ":")))})
        if op == "halt":
            node.refuse("halt")
            node.halted, node.gate = True, "closed"
            return _line({"halted": True})
        if op == "probe":
            node.refuse("probe")
            return node.probe_text().encode()
        if op == "have":
            node.refuse("probe")
            have = node.reuse(json.loads(call.stdin), journal=False)
            return _line({"probe": node.probe_text(), "have": sorted(have), "bytes": node.bytes_of(have)})
        raise AssertionError(f"op {op!r} is not modelled")

    def _hashes(self, node: FakeNode, which: str) -> bytes:
        node.refuse("hashes")
        digest = node.current if which == "current" else which
        if digest is None or digest not in node.releases:
            where = f"{ROOT}/current" if which == "current" else f"{ROOT}/releases/{which}"
            raise _Exit(f"no release at {where}")
        lines = ["current " + (f"releases/{node.current}" if node.current else ""),
                 "halted " + ("yes" if node.halted else "no")]
        lines += [f"{sha}  ./{path}" for path, sha in sorted(node.releases[digest].items())]
        return ("\n".join(lines) + "\n").encode()


def _lock_of(command: str) -> dict | None:
    last = split(command)[-1]
    return json.loads(last[len("--lock="):]) if last.startswith("--lock=") else None


class _NotHeld(Exception):
    pass


class _Exit(Refused):
    """A shell command's failure: its plain text on stderr (not the agent's JSON)."""


def _record(stdin: bytes | None) -> dict | None:
    """agent.read_record."""
    if not stdin or not stdin.strip():
        return None
    try:
        record = json.loads(stdin)
    except ValueError:
        raise Refused("journal record is not JSON") from None
    if not isinstance(record, dict):
        raise Refused("journal record is not an object")
    return record


@functools.lru_cache(maxsize=64)  # eight nodes get the same bytes: read them once (callers copy the dict)
def _unpack(data: bytes, digest: str, pinned: str,
            have: tuple[tuple[str, str], ...]) -> tuple[dict[str, str], str, dict[str, int]]:
    """Read the artifact tar as the agent does: hash files/, add the files the node already had, check
    the digest, then the signature. Return the release's files, its version and the sizes of the files
    sent (sha256 -> bytes)."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    meta, files, sizes = {}, {}, {}
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
        for m in tar:
            if m.isfile():
                body = tar.extractfile(m).read()
                if m.name.startswith("files/"):
                    files[m.name[len("files/"):]] = sha = hashlib.sha256(body).hexdigest()
                    sizes[sha] = len(body)
                else:
                    meta[m.name] = body
    have = dict(have)
    if set(files) & set(have):
        raise Refused("upload repeats a file the node already had: %s" % sorted(set(files) & set(have))[0])
    files.update(have)
    got = artifact_mod.digest_of(files)
    if got != digest:
        raise Refused("staged files hash to %s, expected %s" % (got, digest))
    try:
        Ed25519PublicKey.from_public_bytes(bytes.fromhex(pinned)).verify(
            bytes.fromhex(meta["manifest.sig"].decode()), meta["manifest.json"])
    except (InvalidSignature, ValueError, KeyError):
        raise Refused("manifest signature does not verify with the pinned key") from None
    manifest = json.loads(meta["manifest.json"])
    if manifest.get("digest") != digest or manifest.get("files") != files:
        raise Refused("signed manifest does not match the staged files")
    return dict(manifest["files"]), manifest["version"], sizes


def _prune(node: FakeNode, keep: int, protect: tuple[str, ...]) -> list[str]:
    """agent.prune: keep the `keep` newest releases, never a protected one or `current`."""
    keep_set = set(protect) | {node.current}
    names = sorted(node.releases, key=lambda d: node.mtimes.get(d, 0), reverse=True)
    removed = []
    for n in names:
        if n in keep_set:
            continue
        if len(keep_set & set(names)) < keep:
            keep_set.add(n)
            continue
        del node.releases[n]
        removed.append(n)
    return removed


class FakeRouters:
    """routers.Routers' methods over the World's routers, answering as fleet/router's HTTP API does."""

    def __init__(self, world: World):
        self.world = world

    def _ask(self, node: Node, action: str, handle: Callable[[FakeNode], tuple[int, dict]]) -> Answer:
        fake = self.world[node.name]
        self.world.log.append(("http", node.name, action))
        if fake.running is None:
            return Answer(node.name, 0, {}, f"router not running at {node.host}:{node.router_port}: "
                                            "connection refused", down=True)
        if not fake.answers:
            return Answer(node.name, 0, {}, f"router unreachable at {node.host}:{node.router_port}: timed out")
        skewed = abs(fake.clock_skew) > 30 and action not in ("health", "wait")
        if skewed and action in ("gate-open", "resume"):
            return Answer(node.name, 401, {"error": f"unauthorized: timestamp {-fake.clock_skew:+.1f} s off this "
                                                    "node's clock (window 30 s)"})
        status, body = handle(fake)
        if status == 200 and action in ("gate-open", "gate-close", "halt", "resume"):
            fake.journal.append({"action": action.split("-")[0], "source": "router", "digest": fake.running,
                                 "gate": fake.gate, "halted": fake.halted})
        return Answer(node.name, status, body, skew=round(fake.clock_skew, 1) if skewed else None)

    def health(self, nodes: list[Node], timeout: float = 2.0) -> dict[str, Answer]:
        return {n.name: self._ask(n, "health", lambda f: (200, f.health())) for n in nodes}

    def control(self, nodes: list[Node], action: str, body: dict | None = None,
                timeout: float = 2.0) -> dict[str, Answer]:
        if action == "gate":
            return {n.name: self._gate(n, (body or {}).get("action"), (body or {}).get("digest")) for n in nodes}
        handle = {"halt": _halt, "resume": _resume}[action]
        return {n.name: self._ask(n, action, handle) for n in nodes}

    def _gate(self, node: Node, action: str, digest: str | None) -> Answer:
        def handle(f: FakeNode) -> tuple[int, dict]:
            if action == "close":
                f.gate = "closed"
            elif "gate-open" in f.faults:
                return 409, {"error": f.faults["gate-open"]}
            elif f.halted:
                return 409, {"error": "halted: resume before opening the gate"}
            elif digest != f.running:
                return 409, {"error": f"digest mismatch: this node runs {f.running}"}
            else:
                f.gate = "open"
            return 200, f.health()

        return self._ask(node, f"gate-{action}", handle)

    def close_gate(self, nodes: list[Node]) -> dict[str, Answer]:
        return self.control(nodes, "gate", {"action": "close"})

    def open_all_or_none(self, nodes: list[Node], digest: str) -> dict[str, Answer]:
        # The same rule as routers.open_all_or_none (which speaks HTTP and cannot be reused here).
        answers = self.control(nodes, "gate", {"action": "open", "digest": digest})
        if not all(a.ok for a in answers.values()):
            self.close_gate(nodes)
        return answers

    def wait_running(self, nodes: list[Node], digest: str, deadline_s: float) -> dict[str, Answer]:
        # A router's digest is fixed once started: the last answer is the first one.
        return {n.name: self._ask(n, "wait", lambda f: (200, f.health())) for n in nodes}


def _halt(f: FakeNode) -> tuple[int, dict]:
    f.halted, f.gate = True, "closed"
    return 200, f.health()


def _resume(f: FakeNode) -> tuple[int, dict]:
    if "resume" in f.faults:
        return 500, {"error": f.faults["resume"]}
    f.halted = False
    return 200, f.health()


# ---- the real HTTP client, without a network ------------------------------------------------------------

class _Wire:
    """What http.client takes for a socket: it collects the request; its answer is `reply(request bytes)`."""

    def __init__(self, reply: Callable[[bytes], bytes]):
        self.reply, self.sent = reply, b""

    def sendall(self, data: bytes) -> None:
        self.sent += data

    def makefile(self, mode: str) -> io.BytesIO:
        return io.BytesIO(self.reply(self.sent))

    def close(self) -> None:
        pass


def http_answer(status: int, data: bytes) -> bytes:
    """A raw HTTP/1.1 answer with `status` and body `data`."""
    return b"HTTP/1.1 %d -\r\nContent-Length: %d\r\n\r\n%s" % (status, len(data), data)


def fake_http(monkeypatch, reply: Callable[[int, bytes], bytes]) -> None:
    """Make every http.client connection a _Wire: the raw answer to a request to port P is reply(P, request)."""

    class Connection(http.client.HTTPConnection):
        def connect(self) -> None:
            port = self.port
            self.sock = _Wire(lambda request: reply(port, request))

    monkeypatch.setattr(http.client, "HTTPConnection", Connection)


def over_http(rig: Rig, monkeypatch, says: dict[str, bytes] | None = None) -> None:
    """Put routers.Routers, the real HTTP client, in front of the World's routers: each request is written
    as HTTP, answered by FakeRouters and read back by http.client; a node in `says` answers those bytes
    instead (a hostile answerer on its router port), with HTTP 200."""
    fake, by_port = FakeRouters(rig.world), {n.router_port: n for n in rig.ctx.nodes}
    hostile = says or {}

    def reply(port: int, request: bytes) -> bytes:
        node = by_port[port]
        head, _, body = request.partition(b"\r\n\r\n")
        path = head.split(b" ", 2)[1].decode()
        if node.name in hostile:
            status, data = 200, hostile[node.name]
        else:
            doc = json.loads(body) if body else {}
            answer = (fake.health([node]) if path == rig.ctx.playbook.service.health_path
                      else fake.control([node], path.rsplit("/", 1)[-1], doc))[node.name]
            if answer.status == 0:
                raise (ConnectionRefusedError if answer.down else TimeoutError)(answer.error)
            status, data = answer.status, json.dumps(answer.body).encode()
        return http_answer(status, data)

    fake_http(monkeypatch, reply)
    rig.ctx.http = routers.Routers(lambda: "token", health_path=rig.ctx.playbook.service.health_path)


# ---- a whole test setup --------------------------------------------------------------------------------

NODES = [f"node{i}" for i in range(1, 9)]  # make_rig's eight nodes, in inventory order
OTHERS = [n for n in NODES if n != "node3"]  # every node but node3, the one most tests break


def plain(rec: dict) -> dict:
    """A journal record without what differs per run (time, who, run id, its fleet lock's id, timings)."""
    return {k: v for k, v in rec.items() if k not in ("ts", "who", "run", "timings", "fleet_lock")}


def every_node(digest: str | None, gate: str = "open", releases: Iterable[str] = (), halted: bool = False,
               running: str | None = "same", nodes: Iterable[str] = NODES) -> dict[str, dict]:
    """World.states() when every node is alike: `current` is `digest`, the router runs it (or `running`),
    with this gate and halt flag, and these releases on disk."""
    return {n: {"current": digest, "running": digest if running == "same" else running, "gate": gate,
                "halted": halted, "releases": sorted(releases)} for n in nodes}


@dataclass
class Rig:
    """A Context wired to a fresh World, its state folder, signed artifacts and the events it emitted."""

    ctx: Context
    world: World
    artifacts: list[artifact_mod.Artifact]
    events: list[tuple[str, dict]]
    hooks: list[Callable[..., None]] = field(default_factory=list)

    def journal(self) -> list[dict]:
        return list(self.ctx.journal.read())

    def clone(self, tmp: Path) -> Rig:
        """A copy of this rig (state folder under `tmp`, nodes, artifacts shared read-only): a fleet set up
        once by several rollouts serves many tests."""
        state = tmp / "state"
        shutil.copytree(self.ctx.state_dir, state)
        world = copy.deepcopy(self.world)
        world.log.clear()
        world.connects = [list(c) for c in self.world.connects]
        return _wire(self.ctx.inventory, self.ctx.playbook, state, world, self.artifacts)

    def phases(self, since: int = 0) -> list[tuple[str, str, Any]]:
        """(action, phase, outcome) of the controller's run records."""
        return [(r["action"], r.get("phase"), r.get("outcome")) for r in self.journal()[since:]]

    def digest(self, i: int) -> str:
        return self.artifacts[i].digest

    def rollout(self, i: int, **kw: Any):
        """rollout.rollout of artifact `i` on this rig's context (its result; it raises as the run does)."""
        return rollout_mod.rollout(self.ctx, self.artifacts[i].path, **kw)

    def at(self, phase: str, do: Callable[[], None], status: str = "done") -> None:
        """Call `do` once, when the run emits `phase` `status` (e.g. halt between stage and switch)."""
        fired = []

        def hook(kind: str, **data: Any) -> None:
            if kind == "phase" and data.get("phase") == phase and data.get("status") == status and not fired:
                fired.append(phase)
                do()

        self.hooks.append(hook)


def make_rig(tmp: Path, nodes: int = 8, versions: tuple[str, ...] = ("1.0.0", "1.1.0", "1.2.0"),
             keep: int = 3) -> Rig:
    """A fresh fleet of `nodes` empty nodes (root present, nothing installed, routers down), a state folder
    with a signing key, and one signed artifact per version built from a tiny source folder."""
    state = StateDir(tmp / "state")
    _, pub = signing.generate(state.keys)
    pinned = pub.read_text().strip()
    inv_nodes = tuple(Node(f"node{i}", "127.0.0.1", 2200 + i, 8100 + i, "root") for i in range(1, nodes + 1))
    inventory = Inventory("test-fleet", inv_nodes, 5.0, 8, tmp / "fleet.yaml")
    playbook = Playbook("order-router", tmp / "src", ROOT, keep,
                        Service(None, None, "/health", Supervisor(PROGRAM, SOCKET)), Timeouts(5, 60, 20), 64,
                        tmp / "router.yaml")
    world = World([FakeNode(n.name, n.ssh_port, n.router_port, pinned) for n in inv_nodes])
    artifacts = []
    for v in versions:
        src = tmp / f"src-{v}"
        (src / "lib").mkdir(parents=True)
        (src / "router.json").write_text(json.dumps({"version": v}) + "\n")
        (src / "router.py").write_text(f"print('order router {v}')\n")
        (src / "lib" / "book.py").write_text("BOOK = {}\n" + "# the same in every release\n" * 4096)
        artifacts.append(artifact_mod.build(src, tmp / "dist", "order-router", state.signing_key))
    return _wire(inventory, playbook, state.root, world, artifacts)


def _wire(inventory: Inventory, playbook: Playbook, state: Path, world: World,
          artifacts: list[artifact_mod.Artifact]) -> Rig:
    """The Context with both seams set to `world`, its events recorded and passed to the rig's hooks."""
    events: list[tuple[str, dict]] = []
    rig = Rig(None, world, artifacts, events)  # type: ignore[arg-type]

    def on_event(kind: str, **data: Any) -> None:
        events.append((kind, data))
        for hook in list(rig.hooks):
            hook(kind, **data)

    rig.ctx = Context(inventory, playbook, state, on_event, connect=world.connect, http=FakeRouters(world))
    return rig
