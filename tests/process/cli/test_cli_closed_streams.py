"""Output can never hurt a run (cli/streams.py): `deployctl` with stdout, stderr or all three standard
streams closed (cron, a daemon, `>&-`), or writing into a pipe whose reader has gone (`| head -1`: EPIPE),
does its work to the end, journals it, exits with its own code and prints no traceback.

`halt` runs against a real router process (the `controller` rig of conftest.py). A rollout cannot use a
real fleet here: it runs against an inventory whose ports nothing listens on, so it journals its start,
is refused in preflight (exit 4) and journals its `done`, all while every line it writes fails.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from deployctl.release import artifact, signing

ROOT = Path(__file__).resolve().parents[3]
QUICK = [sys.executable, str(ROOT / ".venv" / "bin" / "deployctl")]  # the installed script: __main__.main
TYPER = [sys.executable, "-c", "import sys; from deployctl.cli.app import main; sys.argv[0] = 'deployctl'; main()"]

UNREACHABLE = """fleet: t
ssh: {user: root, connect_timeout: 1, parallel: 2}
nodes:
  - {name: n1, host: 127.0.0.1, ssh_port: 1, router_port: 2}
  - {name: n2, host: 127.0.0.1, ssh_port: 3, router_port: 4}
"""

# How the standard streams are broken: closed descriptors, and descriptors on a pipe with no reader.
MODES = {
    "stdout closed": {"closed": (1,)},
    "stderr closed": {"closed": (2,)},
    "all three closed": {"closed": (0, 1, 2)},
    "stdout into a gone reader": {"gone": (1,)},
    "2>&1 into a gone reader": {"gone": (1, 2)},
}


def run(argv: list[str], state: Path, closed: tuple[int, ...] = (), gone: tuple[int, ...] = ()):
    """Run `argv` with the descriptors `closed` closed and those `gone` on a pipe whose read end is closed
    before the process starts (every write there fails with EPIPE); return (exit code, captured stderr),
    the stderr None when it was not captured."""
    env = {**os.environ, "DEPLOYCTL_STATE": str(state), "NO_COLOR": "1"}
    env.pop("DEPLOYCTL_DEBUG", None)
    env.pop("DEPLOYCTL_INVENTORY", None)
    read_end, write_end = os.pipe()
    os.close(read_end)
    streams = {fd: (write_end if fd in gone else subprocess.PIPE) for fd in (1, 2)}

    def close_them() -> None:  # in the child, after its stdin, stdout and stderr are in place
        for fd in closed:
            os.close(fd)

    try:
        proc = subprocess.run(argv, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=streams[1],
                              stderr=streams[2], text=True, timeout=60, preexec_fn=close_them)
    finally:
        os.close(write_end)
    captured = 2 not in closed and 2 not in gone
    assert "Traceback" not in (proc.stdout or "") + (proc.stderr or "")
    return proc.returncode, proc.stderr if captured else None


def test_no_stream_is_touched_at_import(tmp_path):
    """Importing the CLI with all three streams closed (sys.stdout is None then) raises nothing."""
    code = "import deployctl.__main__, deployctl.cli.app, deployctl.cli.fasthalt, deployctl.cli.output"
    assert run([sys.executable, "-c", code], tmp_path, closed=(0, 1, 2)) == (0, None)


def test_with_the_standard_descriptors_closed_no_file_the_run_opens_takes_their_number(tmp_path):
    """Else the journal, opened first, would be descriptor 0, 1 or 2, and whatever writes there, in it."""
    opened = tmp_path / "opened"
    code = ("import os, sys; from deployctl.cli import streams; streams.protect(); "
            "fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT); os.write(fd, str(fd).encode())")
    assert run([sys.executable, "-c", code, str(opened)], tmp_path, closed=(0, 1, 2)) == (0, None)
    assert int(opened.read_text()) > 2


def journal(state: Path) -> list[dict]:
    return [json.loads(line) for line in (state / "journal.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("door, mode", [(QUICK, mode) for mode in sorted(MODES)] + [
    (TYPER, "all three closed"), (TYPER, "2>&1 into a gone reader")],
    ids=lambda v: "typer door" if v is TYPER else "fast door" if v is QUICK else v)
def test_halt_halts_and_exits_0_whatever_became_of_its_streams(controller, node, door, mode):
    folder, inventory = controller
    code, stderr = run([*door, "-i", str(inventory), "halt"], folder, **MODES[mode])
    assert (code, stderr or "") == (0, "")
    assert node.health()["halted"] is True
    assert [(r["action"], r["outcome"], r["nodes"]) for r in journal(folder)] == [("halt", "ok", {"node1": "halted"})]


def test_halt_json_into_a_gone_reader_exits_0(controller, node):
    folder, inventory = controller
    assert run([*QUICK, "-i", str(inventory), "halt", "--json"], folder, gone=(1,)) == (0, "")
    assert node.health()["halted"] is True


@pytest.fixture
def unreachable(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A state folder with keys, an inventory whose ports nothing listens on, and an artifact signed for it."""
    state = tmp_path / "state"
    signing.generate(state / "keys")
    (state / "keys" / "client_ed25519").write_text("unused")
    (state / "keys" / "known_hosts").write_text("")
    src = tmp_path / "src"
    src.mkdir()
    (src / "router.json").write_text(json.dumps({"version": "1.0.0"}))
    (src / "router.py").write_text("print('x')\n")
    art = artifact.build(src, tmp_path / "dist", "router", state / "keys" / "signing_ed25519")
    inventory = tmp_path / "fleet.yaml"
    inventory.write_text(UNREACHABLE)
    return state, inventory, art.path


@pytest.mark.parametrize("mode", sorted(MODES))
def test_a_rollout_whose_every_line_fails_still_journals_its_end_and_exits_with_its_code(unreachable, mode):
    state, inventory, art = unreachable
    code, stderr = run([*QUICK, "-i", str(inventory), "rollout", str(art)], state, **MODES[mode])
    assert code == 4, stderr
    if stderr is not None:
        assert stderr.splitlines()[-1].startswith("deployctl: error: rollout refused in preflight, nothing changed")
    records = journal(state)
    assert [(r["phase"], r.get("outcome")) for r in records] == [("start", None), ("preflight", None),
                                                                  ("done", "refused")]
    # So the next rollout sees no interrupted run (it used to say "the fleet may be mixed", exit 9).
    code, stderr = run([*QUICK, "-q", "-i", str(inventory), "rollout", str(art)], state)
    assert code == 4 and "may be mixed" not in stderr, stderr


@pytest.mark.parametrize("args, mode", [
    (["--version"], "stdout closed"), (["--version"], "stdout into a gone reader"),
    (["--help"], "2>&1 into a gone reader"), ([], "stdout into a gone reader"),
    (["history", "--json"], "stdout into a gone reader"), (["history"], "2>&1 into a gone reader"),
], ids=lambda v: v if isinstance(v, str) else " ".join(v) or "no arguments")
def test_what_stdout_cannot_take_changes_no_exit_code(tmp_path, args, mode):
    """A command whose whole answer is on stdout: the answer is lost, the code is still 0; the interpreter
    exits without a BrokenPipeError on its last flush."""
    assert run([*QUICK, *args], tmp_path / "state", **MODES[mode]) == (0, None if "2>&1" in mode else "")


def test_enroll_with_stdin_closed_asks_nothing_and_fails_only_on_the_fleet(unreachable):
    """With stdin closed (sys.stdin is None), enroll is not interactive: it goes on to the nodes."""
    state, inventory, _ = unreachable
    code, stderr = run([*QUICK, "-i", str(inventory), "enroll"], state, closed=(0,))
    assert code == 4, stderr
    assert stderr.splitlines()[-1] == "deployctl: error: enroll: 2 of 2 unreachable (connection refused): n1-n2"
