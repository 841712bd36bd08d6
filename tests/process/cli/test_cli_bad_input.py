"""The bad-input corpus through the real CLI: one clear line, exit 2, nothing touched.

Every case runs `deployctl` as a process against a throw-away state folder and an inventory whose
ports nothing listens on, so a case that wrongly got as far as connecting could not change the
fleet; each asserts it never got there (no journal, no lock, no connection attempt reported).
"""

from __future__ import annotations

import concurrent.futures
import io
import json
import os
import subprocess
import tarfile
from pathlib import Path

import pytest

from deployctl.release import artifact, signing

ROOT = Path(__file__).resolve().parents[3]
DCTL = str(ROOT / ".venv" / "bin" / "deployctl")

GOOD_INVENTORY = """fleet: t
ssh: {user: root, connect_timeout: 1, parallel: 2}
nodes:
  - {name: n1, host: 127.0.0.1, ssh_port: 1, router_port: 2}
  - {name: n2, host: 127.0.0.1, ssh_port: 3, router_port: 4}
"""

BAD_INVENTORIES = {
    "wrong type": (GOOD_INVENTORY.replace("ssh_port: 1", "ssh_port: one"),
                   "fleet.yaml: nodes/0/ssh_port: should be an integer"),
    "unknown key": (GOOD_INVENTORY.replace("ssh_port: 1,", "ssh_port: 1, prot: 5,"),
                    "fleet.yaml: nodes/0: unknown key 'prot'"),
    "duplicate node name": (GOOD_INVENTORY.replace("name: n2", "name: n1"),
                            "fleet.yaml: nodes/1/name: duplicate node name 'n1'"),
    "duplicate yaml key": (GOOD_INVENTORY.replace("fleet: t\n", "fleet: t\nfleet: u\n"),
                           "fleet.yaml: duplicate key 'fleet' (line 2)"),
    "port out of range": (GOOD_INVENTORY.replace("router_port: 4", "router_port: 70000"),
                          "fleet.yaml: nodes/1/router_port: should be between 1 and 65535"),
    "empty fleet": ("fleet: t\nnodes: []\n", "fleet.yaml: nodes: should not be empty"),
    "shell metacharacters in a host": (GOOD_INVENTORY.replace("host: 127.0.0.1, ssh_port: 3",
                                                              "host: '127.0.0.1;id', ssh_port: 3"),
                                       "fleet.yaml: nodes/1/host: should be a hostname or IP address, "
                                       "got '127.0.0.1;id'"),
    "not yaml": ("nodes: [\n", None),
    "empty file": ("", None),
}


def run(*args: str, state: Path, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    env = {**os.environ, "DEPLOYCTL_STATE": str(state)}
    env.pop("DEPLOYCTL_DEBUG", None)
    return subprocess.run([DCTL, *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=60)


def assert_refused(proc: subprocess.CompletedProcess, state: Path, message: str | None = None) -> None:
    args = proc.args[1:]  # which command, in every failure
    assert proc.returncode == 2, (args, proc.returncode, proc.stderr)
    assert proc.stderr.startswith("deployctl: error: ") and proc.stderr.count("\n") == 1, (args, proc.stderr)
    assert "Traceback" not in proc.stderr + proc.stdout, args
    if message is not None:
        assert proc.stderr == f"deployctl: error: {message}\n", args
    assert not (state / "journal.jsonl").exists() and not (state / "deploy.lock").exists(), args


@pytest.fixture
def state(tmp_path: Path) -> Path:
    return tmp_path / "state"


def at_once(*argvs: list[str], state: Path) -> list[subprocess.CompletedProcess]:
    """run() each argv, on every core at once (a CLI start is most of each case's time)."""
    with concurrent.futures.ThreadPoolExecutor(os.cpu_count() or 2) as pool:
        return list(pool.map(lambda argv: run(*argv, state=state), argvs))


@pytest.mark.parametrize("case", sorted(BAD_INVENTORIES))
def test_bad_inventory(tmp_path, state, case):
    """Each command that reads the inventory refuses it: verify, halt, rollback --all, status."""
    text, message = BAD_INVENTORIES[case]
    inv = tmp_path / "fleet.yaml"
    inv.write_text(text)
    commands = [["verify"], ["halt"], ["rollback", "--all"], ["status"]]
    for proc in at_once(*(["-i", str(inv), *c] for c in commands), state=state):
        assert_refused(proc, state, message)


@pytest.mark.parametrize("old, new, message", [
    ("keep_releases: 3", "keep_releases: '3'", "router.yaml: keep_releases: should be an integer"),
    ("keep_releases: 3", "keep_releases: 3\nkeep_releases: 4", "router.yaml: duplicate key 'keep_releases' (line 10)"),
    ("install_root: /opt/router", "install_root: /opt/$(reboot)",
     "router.yaml: install_root: should be an absolute normalized path of [A-Za-z0-9._/-], got '/opt/$(reboot)'"),
    ("min_free_mb: 64", "min_free_mb: 64\nextra: 1", "router.yaml: unknown key 'extra'"),
])
def test_bad_playbook(tmp_path, state, old, new, message):
    text = (ROOT / "playbooks" / "router.yaml").read_text()
    assert old in text
    book = tmp_path / "router.yaml"
    book.write_text(text.replace(old, new).replace("source: ../fleet/router", f"source: {ROOT / 'fleet/router'}"))
    inv = tmp_path / "fleet.yaml"
    inv.write_text(GOOD_INVENTORY)
    assert_refused(run("-i", str(inv), "-p", str(book), "verify", state=state), state, message)


@pytest.mark.parametrize("args, fragment", [
    (["rollout"], "Missing argument"),
    (["verify", "--expect", "abc"], "--expect: 'abc' is not a sha256 release digest"),
    (["verify", "--expect", "A" * 64], "is not a sha256 release digest"),
    (["rollback"], "say --all, or --node NAME --force"),
    (["rollback", "--all", "--node", "n1"], "say --all, or --node NAME --force"),
    (["rollback", "--node", "n1"], "add --force if you mean it"),
    (["rollback", "--all", "--to", "zz"], "--to: 'zz' is not a sha256 release digest"),
    (["verify", "--expect", "0123abcd"], "--expect: no release known to the journal or the nodes starts with 0123abcd"),
    (["gate", "open", "--expect", "0123abcd"], "--expect: no release known to the journal or the nodes starts with"),
    (["resume", "--expect", "0123abc"], "--expect: '0123abc' is not a sha256 release digest"),
    (["history", "--limit", "0"], "--limit"),
    (["gate", "sideways"], "No such command"),
    (["nonsense"], "No such command"),
    (["verify", "--bogus"], "No such option"),
])
def test_bad_arguments(tmp_path, state, args, fragment):
    inv = tmp_path / "fleet.yaml"
    inv.write_text(GOOD_INVENTORY)
    proc = run("-i", str(inv), *args, state=state)
    assert_refused(proc, state)
    assert fragment in proc.stderr


def _signed_state(state: Path) -> Path:
    (state / "keys").mkdir(parents=True)
    signing.generate(state / "keys")
    (state / "keys" / "client_ed25519").write_text("unused")
    (state / "keys" / "known_hosts").write_text("")
    return state


def _tar(members: list[tuple[str, bytes]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _artifacts(tmp_path: Path, state: Path) -> dict[str, tuple[bytes, str]]:
    src = tmp_path / "src"
    src.mkdir()
    (src / "router.json").write_text(json.dumps({"version": "1.0.0"}))
    (src / "router.py").write_text("print('x')\n")
    good = artifact.build(src, tmp_path / "dist", "router", state / "keys" / "signing_ed25519")
    data = good.path.read_bytes()
    other_keys = tmp_path / "other"
    other_keys.mkdir()
    signing.generate(other_keys)
    foreign = artifact.build(src, tmp_path / "dist2", "router", other_keys / "signing_ed25519").path.read_bytes()
    return {
        "empty file": (b"", "not a valid tar archive"),
        "not a tar": (b"hello world" * 100, "not a valid tar archive"),
        "truncated": (data[: len(data) // 2], ""),
        "tampered file": (data.replace(b"print('x')", b"print('y')"), ""),
        "signed by another key": (foreign, "signature"),
        "unsigned": (_tar([(n, d) for n, d in _members(data) if n != "manifest.sig"]), "manifest.sig"),
        "path traversal": (_tar(_members(data) + [("files/../../etc/passwd", b"x")]), ""),
        "absolute path": (_tar(_members(data) + [("/etc/passwd", b"x")]), ""),
    }


def _members(data: bytes) -> list[tuple[str, bytes]]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return [(m.name, tar.extractfile(m).read()) for m in tar.getmembers() if m.isreg()]


def test_bad_artifacts_are_refused_before_any_connection(tmp_path, state):
    _signed_state(state)
    inv = tmp_path / "fleet.yaml"
    inv.write_text(GOOD_INVENTORY)
    cases = []
    for case, (data, fragment) in _artifacts(tmp_path, state).items():
        path = tmp_path / f"{case.replace(' ', '-')}.tar"
        path.write_bytes(data)
        cases += [(case, path, fragment, ["-i", str(inv), "rollout", *extra, str(path)])
                  for extra in ([], ["--dry-run"])]
    for (case, path, fragment, _), proc in zip(cases, at_once(*(argv for *_, argv in cases), state=state), strict=True):
        assert_refused(proc, state)
        assert path.name in proc.stderr and fragment in proc.stderr, (case, proc.stderr)


def test_missing_artifact_file(tmp_path, state):
    _signed_state(state)
    inv = tmp_path / "fleet.yaml"
    inv.write_text(GOOD_INVENTORY)
    proc = run("-i", str(inv), "rollout", str(tmp_path / "nope.tar"), state=state)
    assert_refused(proc, state)
    assert "nope.tar" in proc.stderr


def test_paths_that_cannot_be_used_are_one_line_exit_2(tmp_path, state):
    """A file where a folder is expected, a FIFO (which used to hang), a device or a folder where a file
    is expected: each named in one line, exit 2, before anything is read, built or connected."""
    inv = tmp_path / "fleet.yaml"
    inv.write_text(GOOD_INVENTORY)
    a_file, fifo = tmp_path / "a-file", tmp_path / "fifo"
    a_file.write_text("")
    os.mkfifo(fifo)
    ssh_fifo_inv = tmp_path / "sub" / "fleet.yaml"
    ssh_fifo_inv.parent.mkdir()
    ssh_fifo_inv.write_text(GOOD_INVENTORY.replace("parallel: 2}", f"parallel: 2, ssh_config: {fifo}}}"))
    cases = {
        ("--state-dir", str(a_file), "status"): f"state folder {a_file}: a file, not a folder",
        ("--state-dir", f"{a_file}/sub", "history"): f"state folder {a_file}/sub: {a_file} is a file, not a folder",
        ("build", "--out", str(a_file)): f"--out {a_file}: a file, not a folder",
        ("build", "--out", f"{a_file}/x"): f"--out {a_file}/x: {a_file} is a file, not a folder",
        ("-i", str(fifo), "verify"): f"{fifo}: a FIFO, not a regular file",
        ("-i", "/dev/null", "status"): "/dev/null: a device, not a regular file",
        ("-i", str(tmp_path), "halt"): f"{tmp_path}: a folder, not a regular file",
        ("-p", str(fifo), "verify"): f"{fifo}: a FIFO, not a regular file",
        ("-i", str(ssh_fifo_inv), "status"): f"fleet.yaml: nodes/0/host: ssh config: {fifo}: a FIFO, not a "
                                             "regular file",
        ("keygen", f"{a_file}/key"): f"key folder {a_file}: a file, not a folder",
    }
    argvs = [["-i", str(inv), *argv] if "-i" not in argv else list(argv) for argv in cases]
    for (argv, message), proc in zip(cases.items(), at_once(*argvs, state=state), strict=True):
        assert_refused(proc, state, message)
        assert not any(p.name.startswith(".") for p in tmp_path.iterdir()), argv  # no temporary file left


def test_artifact_plan_and_key_paths_that_cannot_be_used(tmp_path, state):
    _signed_state(state)
    inv = tmp_path / "fleet.yaml"
    inv.write_text(GOOD_INVENTORY)
    fifo, a_file = tmp_path / "fifo", tmp_path / "a-file"
    os.mkfifo(fifo)
    a_file.write_text("")
    _artifacts(tmp_path, state)
    art = str(next((tmp_path / "dist").glob("*.tar")))
    cases = {
        ("rollout", str(fifo)): f"{fifo}: a FIFO, not a regular file",
        ("rollout", "--dry-run", "/dev/zero"): "/dev/zero: a device, not a regular file",
        ("rollout", art, "--plan", str(fifo)): f"{fifo}: a FIFO, not a regular file",
        ("approve", str(fifo), "--key", str(a_file)): f"{fifo}: a FIFO, not a regular file",
        ("plan", art, "--out", "plan.json", "--key", str(fifo)): f"{fifo}: a FIFO, not a regular file",
        ("plan", art, "--out", f"{a_file}/plan.json"): f"--out {a_file}: a file, not a folder",
        ("plan", art, "--out", str(tmp_path)): f"--out {tmp_path}: a folder, not a file",
    }
    procs = at_once(*(["-i", str(inv), *argv] for argv in cases), state=state)
    for (argv, message), proc in zip(cases.items(), procs, strict=True):
        assert proc.returncode == 2, (argv, proc.stderr)
        assert proc.stderr == f"deployctl: error: {message}\n", argv
        assert not (state / "journal.jsonl").exists(), argv
