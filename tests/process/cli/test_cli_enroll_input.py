"""`deployctl enroll` refuses bad input in one line, exit 2, before any connection or change."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture
def files(tmp_path):
    inv = tmp_path / "inv.yaml"
    inv.write_text("fleet: f\nssh: {user: deploy}\nnodes:\n"
                   "  - {name: n1, host: 127.0.0.1, ssh_port: 1, router_port: 2, become: sudo}\n")
    return inv, tmp_path / "state"


def run(files, *args, env=None, quiet=False):
    inv, state = files
    return subprocess.run([sys.executable, "-m", "deployctl", *(["-q"] if quiet else []), "-i", str(inv),
                           "-p", str(ROOT / "playbooks" / "router.yaml"), "enroll", *args],
                          capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=60,
                          env={**os.environ, "DEPLOYCTL_STATE": str(state), **(env or {})})


@pytest.mark.parametrize("args, message", [
    (["n9"], "deployctl: error: enroll: no node 'n9' in inv.yaml"),
    (["--fingerprint", "n1=MD5:00"], "deployctl: error: --fingerprint n1=MD5:00: should be NODE=SHA256:<43 base64 "
                                     "characters>"),
    (["--fingerprint", "n2=SHA256:" + "A" * 43], f"deployctl: error: --fingerprint n2=SHA256:{'A' * 43}: no node "
                                                 "'n2' in the inventory"),
    (["--sudo-password-env", "NO_SUCH_VARIABLE_HERE"], "deployctl: error: --sudo-password-env: variable "
                                                       "NO_SUCH_VARIABLE_HERE is not set"),
])
def test_bad_input_is_one_line_exit_2_and_nothing_made(files, args, message):
    out = run(files, *args)
    assert (out.returncode, out.stderr.strip(), out.stdout) == (2, message, "")
    assert not files[1].exists()  # no key, token or journal made


def test_an_unreachable_node_is_a_value_named_in_one_line(files):
    out = run(files, "--dry-run", quiet=True)
    assert out.returncode == 4, out.stderr
    assert out.stderr == "deployctl: error: enroll: 1 of 1 unreachable (connection refused): n1\n"
