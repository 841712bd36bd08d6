"""The fake fleet's nodes against the real node agent: the same requests, the same answers.

tests/unit/fakefleet.py re-implements the ops of deployctl/node/agent.py in memory, so that the unit ring
can drive eight nodes through every phase of a run without a process. This contract holds the two
together. Each test sets up one node twice, as files under a temporary install root (the agent, run as a
node runs it) and as a FakeNode, sends both the same commands, built by remote/commands.py and taken
through the controller's own steps (run, hold, step, finish), and asserts that every answer is the same
to the byte (exit code, stdout, stderr), and so is the node afterwards: its releases and their files,
`current`, the halt flag, its journal and its fleet deploy lock.

What legitimately differs between the two, and nothing else, is normalised (`answer` and `Twin.request`):
- the install root: the agent's is a temporary folder, the fake's fakefleet.ROOT (/opt/router); the
  agent's answers say fakefleet.ROOT where they said its root;
- the supervisor socket a switch or stop names: the agent's is a stand-in supervisord on a unix socket
  here (Supervisord), the fake's fakefleet.SOCKET;
- a probe's `free` line: the bytes free on this machine's disk, against FakeNode.free;
- the order of the file lines of a hashes answer: find(1)'s, as this file system lists them.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import pytest

from deployctl.config.inventory import Node
from deployctl.config.playbook import Service, Supervisor
from deployctl.release import artifact, signing
from deployctl.remote import commands
from deployctl.remote.ssh import Call, NodeResult
from deployctl.state.statedir import StateDir

# fakefleet.py is the unit ring's (tests/unit): its conftest puts that folder on sys.path only when the
# unit ring is collected too.
UNIT = str(Path(__file__).resolve().parents[2] / "unit")
if UNIT not in sys.path:
    sys.path.append(UNIT)
import fakefleet as ff  # noqa: E402

NAME = "node1"
RECORD = {"action": "rollout", "phase": "switch", "node": NAME, "run": "r1"}
SERVICE = Service(None, None, "/health", Supervisor(ff.PROGRAM, ff.SOCKET))  # as the fake fleet's playbook


def lock(lock_id: str, holder: str = "alice@ctl-a", **extra) -> dict:
    return {"holder": holder, "pid": 111, "since": 1_800_000_000.0, "command": "rollout abc", "id": lock_id, **extra}


def answer(result: tuple[int | None, bytes, bytes], root: Path | None = None) -> tuple[int | None, bytes, bytes]:
    """(exit code, stdout, stderr) with the normalisations of the module docstring: the agent's `root`
    read as the fake's, a probe's `free` and the order of a hashes answer's file lines set aside."""
    if root is not None:
        result = tuple(x.replace(str(root).encode(), ff.ROOT.encode()) if isinstance(x, bytes) else x for x in result)
    code, out, err = result
    out = re.sub(rb"(^|\n|\\n)free \d+", rb"\1free N", out)
    if b"  ./" in out:  # a hashes answer: find's order is the file system's
        lines = out.splitlines()
        files = sorted((x for x in lines if b"  ./" in x), key=lambda x: x.split(b"  ./", 1)[1])
        out = b"\n".join([x for x in lines if b"  ./" not in x] + files) + b"\n"
    return code, out, err


class Supervisord:
    """A stand-in for supervisord's XML-RPC on a unix socket (for the agent's switch and stop): every
    call succeeds, and its method name is kept."""

    OK = (b"HTTP/1.0 200 OK\r\nContent-Type: text/xml\r\n\r\n<?xml version='1.0'?><methodResponse><params>"
          b"<param><value><boolean>1</boolean></value></param></params></methodResponse>")

    def __init__(self) -> None:
        self.folder = tempfile.mkdtemp(prefix="supervisord-")  # short: a socket path has 107 bytes at most
        self.path = os.path.join(self.folder, "supervisor.sock")
        self.calls: list[str] = []
        self.server = socket.socket(socket.AF_UNIX)
        self.server.bind(self.path)
        self.server.listen(8)
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            with conn:
                data = b""
                while b"</methodCall>" not in data:
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    data += chunk
                method = re.search(rb"<methodName>(.*?)</methodName>", data)
                self.calls.append(method.group(1).decode() if method else repr(data[:60]))
                conn.sendall(self.OK)

    def close(self) -> None:
        self.server.close()
        shutil.rmtree(self.folder, ignore_errors=True)


class Held:
    """The agent's held command (deploy, retarget) as a process, fed and read one step at a time."""

    def __init__(self, argv: list[str], stdin: bytes | None) -> None:
        self.proc = subprocess.Popen([sys.executable, *argv[1:]], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE)
        self._send(stdin)

    def _send(self, data: bytes | None) -> None:
        try:
            if data:
                self.proc.stdin.write(data)
                self.proc.stdin.flush()
        except BrokenPipeError:  # it refused and exited before reading: step() reads why
            pass

    def step(self, data: bytes) -> tuple[int | None, bytes, bytes]:
        """Send `data`, read the answer line (or, if the agent exits instead, its exit code and error)."""
        self._send(data)
        line = self.proc.stdout.readline()
        if line:
            return 0, line, b""
        return self.end()

    def end(self, data: bytes | None = None) -> tuple[int | None, bytes, bytes]:
        """Send the last line (None: only end of input), then wait for what is left and the exit code."""
        out, err = self.proc.communicate(data or b"", timeout=60)
        return self.proc.returncode, out, err


class Twin:
    """One node twice: the agent on an install root under a temporary folder, and a FakeNode."""

    def __init__(self, tmp_path: Path, pinned: str, supervisord: Supervisord) -> None:
        self.root, self.sup = tmp_path / "opt-router", supervisord
        (self.root / "releases").mkdir(parents=True)
        (self.root / "state").mkdir()
        (self.root / "state" / "signing.pub").write_text(pinned + "\n")
        self.node = ff.FakeNode(NAME, 2201, 8101, pinned)
        self.world = ff.World([self.node])
        self.fleet = self.world.connect([Node(NAME, "127.0.0.1", 2201, 8101, "root")])
        self.held: Held | None = None

    # ---- the same state on both ----------------------------------------------------------------------

    def install(self, art: artifact.Artifact, order: int) -> None:
        """Release `art` on the node's disk, staged `order`-th (prune keeps the newest)."""
        folder = self.root / "releases" / art.digest
        for rel, data in _files(art).items():
            (folder / rel).parent.mkdir(parents=True, exist_ok=True)
            (folder / rel).write_bytes(data)
        os.utime(folder, (1_000_000 + order, 1_000_000 + order))
        self.node.releases[art.digest] = dict(art.files)
        self.node.versions[art.digest] = art.version
        self.node.mtimes[art.digest] = order
        self.node.sizes.update({art.files[rel]: art.sizes[rel] for rel in art.files})

    def set_current(self, digest: str) -> None:
        os.symlink(f"releases/{digest}", self.root / "current")
        self.node.current = digest

    def halt_flag(self) -> None:
        (self.root / "state" / "halted").write_text("halted by deployctl\n")
        self.node.halted = True

    def hold_lock(self, doc: dict) -> None:
        (self.root / "state" / "deploy.lock").mkdir()
        (self.root / "state" / "deploy.lock" / "holder.json").write_text(json.dumps(doc, sort_keys=True))
        self.node.lock = dict(doc)

    # ---- the same requests to both ---------------------------------------------------------------------

    def request(self, build) -> tuple[list[str], list[str]]:
        """build(root, supervisor) for the agent (its root, the stand-in's socket) and for the fake."""
        return build(str(self.root), (self.sup.path, ff.PROGRAM)), build(ff.ROOT, (ff.SOCKET, ff.PROGRAM))

    def run(self, build, stdin: bytes | None = None) -> None:
        """A command that runs to its end (fleet.run); assert both answer alike."""
        real, fake = self.request(build)
        argv = [sys.executable, *real[1:]] if real[0] == "python3" else real
        proc = subprocess.run(argv, input=stdin or b"", capture_output=True, timeout=60)
        self.same((proc.returncode, proc.stdout, proc.stderr),
                  self.fleet.run({NAME: Call(commands.render(fake), stdin)})[NAME])

    def hold(self, build, stdin: bytes | None = None) -> None:
        """A held command's start (fleet.hold): its first answer, the probe."""
        real, fake = self.request(build)
        self.held = Held(real, stdin)
        self.same(self.held.step(b""), self.fleet.hold({NAME: Call(commands.render(fake), stdin)})[NAME])

    def step(self, data: bytes) -> bytes:
        """A held command's next step (fleet.step): send `data`, compare the answers; return the fake's."""
        fake = self.fleet.step({NAME: data})[NAME]
        self.same(self.held.step(data), fake)
        return fake.stdout

    def finish(self, line: bytes | None) -> None:
        """The end of a held command (fleet.finish): a switch request (naming the fake's supervisor socket,
        the stand-in's for the agent), or None (end of input)."""
        socket_path = json.dumps(ff.SOCKET).encode(), json.dumps(self.sup.path).encode()
        real = None if line is None else line.replace(*socket_path)
        self.same(self.held.end(real), self.fleet.finish({NAME: line})[NAME])
        self.held = None

    def same(self, real: tuple[int | None, bytes, bytes], fake: NodeResult) -> None:
        assert fake.error is None, fake.error
        assert answer(real, self.root) == answer((fake.exit_code, fake.stdout, fake.stderr))

    def alike(self) -> None:
        """Assert the node is the same on both: releases and their files, current, halt, journal, lock."""
        real, fake = self.state()
        assert real == fake

    def state(self) -> tuple[dict, dict]:
        """The node's disk as the agent left it, and the FakeNode: the same keys, to compare whole."""
        journal = self.root / "state" / "journal.jsonl"
        holder = self.root / "state" / "deploy.lock" / "holder.json"
        link = self.root / "current"
        real = {"current": os.readlink(link).split("/")[-1] if link.is_symlink() else None,
                "releases": {d.name: _hashes(d) for d in (self.root / "releases").iterdir()},
                "halted": (self.root / "state" / "halted").exists(),
                "journal": [json.loads(x) for x in journal.read_text().splitlines()] if journal.exists() else [],
                "lock": json.loads(holder.read_text()) if holder.exists() else None}
        fake = {"current": self.node.current, "releases": self.node.releases, "halted": self.node.halted,
                "journal": self.node.journal, "lock": self.node.lock}
        return real, fake


def _files(art: artifact.Artifact) -> dict[str, bytes]:
    """The files of `art`, read back from the source they were built from."""
    return {rel: (art.path.parent.parent / f"src-{art.version}" / rel).read_bytes() for rel in art.files}


def _hashes(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in folder.rglob("*") if p.is_file()}


# ---- the releases and the node ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[str, list[artifact.Artifact]]:
    """The pinned public key, and three signed releases: each changes router.json and router.py, and
    lib/book.py (64 KiB: a file the controller hints) is the same in all three."""
    tmp = tmp_path_factory.mktemp("releases")
    state = StateDir(tmp / "state")
    _, pub = signing.generate(state.keys)
    arts = []
    for v in ("1.0.0", "1.1.0", "1.2.0"):
        src = tmp / f"src-{v}"
        (src / "lib").mkdir(parents=True)
        (src / "router.json").write_text(json.dumps({"version": v}) + "\n")
        (src / "router.py").write_text(f"print('order router {v}')\n")
        (src / "lib" / "book.py").write_text("BOOK = {}\n" + "# the same in every release\n" * 2400)
        arts.append(artifact.build(src, tmp / "dist", "order-router", state.signing_key))
    return pub.read_text().strip(), arts


@pytest.fixture
def twin(tmp_path, built) -> Twin:
    supervisord = Supervisord()
    yield Twin(tmp_path, built[0], supervisord)
    supervisord.close()


@pytest.fixture
def arts(built) -> list[artifact.Artifact]:
    return built[1]


def plan(art: artifact.Artifact, *old: artifact.Artifact) -> bytes:
    """The reuse plan of a rollout: every file of `art`, hinted in `art` itself and then in `old`."""
    return commands.reuse_hints(dict(art.files), {rel: [(art.digest, rel)] + [(o.digest, rel) for o in old]
                                                  for rel in art.files}, (art.manifest_bytes, art.signature))


def upload(art: artifact.Artifact, have_line: bytes) -> bytes:
    """What the controller sends after the reuse answer: a tar of the files the node lacks."""
    have, _ = commands.parse_have(have_line)
    return commands.upload(art.subset(frozenset(art.files) - have))


# ---- probe, halt, journal, hashes: commands that run to their end -------------------------------------

def test_probe_of_an_empty_node_then_of_one_with_releases_current_and_the_halt_flag(twin, arts):
    twin.run(lambda root, sup: commands.probe(root))
    twin.install(arts[0], 1)
    twin.install(arts[1], 2)
    twin.set_current(arts[1].digest)
    twin.halt_flag()
    twin.run(lambda root, sup: commands.probe(root))
    twin.alike()


def test_halt_then_probe(twin, arts):
    twin.install(arts[0], 1)
    twin.run(lambda root, sup: commands.halt(root))
    twin.run(lambda root, sup: commands.probe(root))
    twin.alike()


@pytest.mark.parametrize("record", [json.dumps(RECORD).encode(), b'{"a": 1, "nested": {"b": [1, 2.5, null]}}',
                                    b"not json", b"[1, 2]", b""], ids=["record", "nested", "not-json", "list", "empty"])
def test_journal_append(twin, record):
    twin.run(lambda root, sup: commands.journal_append(root), record)
    twin.alike()


@pytest.mark.parametrize("which", ["current", "release", "missing-release", "no-current"])
def test_hashes(twin, arts, which):
    if which != "no-current":
        twin.install(arts[0], 1)
        twin.install(arts[1], 2)
        twin.set_current(arts[1].digest)
    digest = {"release": arts[0].digest, "missing-release": arts[2].digest}.get(which, "current")
    twin.run(lambda root, sup: commands.hashes(root, digest))


def test_have_answers_the_probe_and_the_files_the_node_holds_and_writes_nothing(twin, arts):
    twin.install(arts[0], 1)
    twin.set_current(arts[0].digest)
    twin.run(lambda root, sup: commands.have(root), plan(arts[1], arts[0]))
    twin.alike()


# ---- switch and stop, through supervisord ---------------------------------------------------------------

def test_switch_journals_renames_and_restarts_and_refuses_a_missing_release(twin, arts):
    twin.install(arts[0], 1)
    twin.install(arts[1], 2)
    twin.run(lambda root, sup: commands.switch(root, arts[0].digest, sup), json.dumps(RECORD).encode())
    twin.run(lambda root, sup: commands.switch(root, arts[1].digest, sup))
    twin.run(lambda root, sup: commands.switch(root, arts[2].digest, sup))
    twin.alike()
    assert twin.sup.calls == ["supervisor.stopProcess", "supervisor.startProcess"] * 2


def test_stop_journals_stops_and_removes_current(twin, arts):
    twin.install(arts[0], 1)
    twin.set_current(arts[0].digest)
    record = {"action": "rollout", "phase": "revert", "digest": None}
    twin.run(lambda root, sup: commands.stop(root, sup), json.dumps(record).encode())
    twin.alike()
    assert twin.sup.calls == ["supervisor.stopProcess"]


# ---- deploy: probe, reuse, stage, prune, switch; the fleet deploy lock -----------------------------------

def test_a_rollout_deploy_reuses_stages_prunes_switches_and_keeps_its_lock_until_unlock(twin, arts):
    for i, art in enumerate(arts[:2]):
        twin.install(art, i + 1)
    twin.set_current(arts[1].digest)
    new, mine = arts[2], lock("L2")
    twin.hold(lambda root, sup: commands.deploy(root, new.digest, 2, [new.digest], mine), plan(new, arts[1], arts[0]))
    have = twin.step(b"")
    assert commands.parse_have(have)[0] == {"lib/book.py"}  # what the node holds of the new release
    twin.step(upload(new, have))
    twin.finish(commands.switch_request(new.digest, RECORD, SERVICE))
    twin.alike()
    real, _ = twin.state()
    assert sorted(real["releases"]) == sorted([arts[1].digest, new.digest])  # keep 2: the oldest pruned
    assert real["lock"] == mine  # a switched command keeps the lock: the run's end releases it
    twin.run(lambda root, sup: commands.unlock(root, "L"))
    twin.run(lambda root, sup: commands.unlock(root, "L2"))
    twin.run(lambda root, sup: commands.unlock(root, "L2"))
    twin.alike()


def test_a_tampered_file_is_not_reused_and_the_node_journals_it(twin, arts):
    twin.install(arts[0], 1)
    twin.set_current(arts[0].digest)
    book = twin.root / "releases" / arts[0].digest / "lib" / "book.py"
    book.write_bytes(book.read_bytes().replace(b"BOOK = {}", b"BOOK = []"))  # same size, other bytes
    twin.node.releases[arts[0].digest]["lib/book.py"] = _hashes(book.parent)["book.py"]
    twin.hold(lambda root, sup: commands.deploy(root, arts[1].digest, 3), plan(arts[1], arts[0]))
    have = twin.step(b"")
    assert commands.parse_have(have)[0] == set()
    twin.step(upload(arts[1], have))
    twin.finish(None)
    twin.alike()


def test_a_deploy_whose_input_ends_after_the_reuse_answer_changes_nothing_and_lets_go_of_its_lock(twin, arts):
    twin.install(arts[0], 1)
    twin.set_current(arts[0].digest)
    twin.hold(lambda root, sup: commands.deploy(root, arts[1].digest, 3, [], lock("L1")), plan(arts[1], arts[0]))
    twin.step(b"")
    twin.finish(None)
    twin.alike()


def test_a_deploy_refuses_a_switch_to_another_release_than_it_staged(twin, arts):
    twin.hold(lambda root, sup: commands.deploy(root, arts[0].digest, 3), plan(arts[0]))
    twin.step(upload(arts[0], twin.step(b"")))
    twin.finish(commands.switch_request(arts[1].digest, None, SERVICE))
    twin.alike()


@pytest.mark.parametrize("digest, keep", [("../x", 3), ("a" * 64, -1)], ids=["bad-digest", "bad-keep"])
def test_a_deploy_with_bad_arguments_is_refused_before_its_probe(twin, digest, keep):
    twin.hold(lambda root, sup: commands.deploy(root, digest, keep))
    twin.alike()


@pytest.mark.parametrize("how", [None, "any", {"holder": "alice@ctl-a", "pid": 111}, {"ids": ["L1"]},
                                 {"holder": "alice@ctl-a", "pid": 999}],
                         ids=["refused", "break-any", "break-own-dead-run", "break-finished-run", "not-breakable"])
def test_a_node_lock_held_by_another_run_is_refused_naming_it_or_broken_and_journaled(twin, arts, how):
    twin.hold_lock(lock("L1"))
    mine = lock("L2", holder="bob@ctl-b", **({"break": how} if how else {}))
    twin.hold(lambda root, sup: commands.deploy(root, arts[0].digest, 3, [], mine), plan(arts[0]))
    if twin.held.proc.poll() is None:  # it took the lock: its input ends after the reuse answer
        twin.step(b"")
        twin.finish(None)
    twin.alike()


# ---- retarget: rollback's and recover's held command ------------------------------------------------------

@pytest.mark.parametrize("to", [0, 2, None], ids=["a-release-it-has", "a-release-it-lacks", "end-of-input"])
def test_retarget_answers_the_probe_then_switches_to_a_release_it_has(twin, arts, to):
    twin.install(arts[0], 1)
    twin.install(arts[1], 2)
    twin.set_current(arts[1].digest)
    twin.hold(lambda root, sup: commands.retarget(root, lock("L3")))
    line = None if to is None else commands.switch_request(arts[to].digest, {"action": "rollback"}, SERVICE)
    twin.finish(line)
    twin.alike()
