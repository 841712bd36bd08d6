"""Terrapin (CVE-2023-48795, FAULTS.md row 16): no SSH work with a paramiko that lacks strict key exchange.

The feature is detected, not a version string: a paramiko whose Transport has no `strict_kex` switch is
refused before any connection, by the library and by the CLI (one line, exit 1). That the negotiation with
a real node does use strict kex is tests/e2e/test_terrapin_kex.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest

from deployctl.errors import DeployctlError, ExitCode
from deployctl.remote import ssh, sshconnect

ROOT = Path(__file__).resolve().parents[3]
REFUSAL = ("paramiko 3.3.1 lacks strict key exchange (Terrapin, CVE-2023-48795): install paramiko 3.4 or newer; "
           "no SSH work started")


class OldTransport:
    """paramiko 3.3's Transport: no strict_kex argument, nothing enforcing it."""

    def __init__(self, sock, default_window_size=None, default_max_packet_size=None, gss_kex=False,
                 gss_deleg_creds=True, disabled_algorithms=None, server_sig_algs=True):
        pass


OLD = SimpleNamespace(__version__="3.3.1", Transport=OldTransport)


def test_the_installed_paramiko_has_strict_kex():
    sshconnect.require_strict_kex()


def test_a_paramiko_without_strict_kex_is_refused_with_one_line():
    with pytest.raises(DeployctlError) as info:
        sshconnect.require_strict_kex(OLD)
    assert str(info.value) == REFUSAL and info.value.exit_code == ExitCode.FAILED


def test_a_version_string_alone_is_not_trusted():
    """A new-looking version number does not help a Transport that lacks the feature."""
    with pytest.raises(DeployctlError, match="lacks strict key exchange"):
        sshconnect.require_strict_kex(SimpleNamespace(__version__="9.9.9", Transport=OldTransport))


def test_the_fleet_refuses_before_any_connection(monkeypatch, tmp_path):
    monkeypatch.setattr(sshconnect, "import_paramiko", lambda: OLD)
    opened = []
    monkeypatch.setattr(sshconnect, "open_client", lambda *a, **k: opened.append(a))
    with pytest.raises(DeployctlError, match="lacks strict key exchange"):
        ssh.SSHFleet([ssh.Target("node1", "127.0.0.1", 1, "root")], tmp_path / "k", tmp_path / "kh")
    assert opened == []


def test_the_cli_refuses_to_start_ssh_work_with_an_old_paramiko(tmp_path):
    fake = tmp_path / "site" / "paramiko"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text(textwrap.dedent('''
        __version__ = "3.3.1"
        class Transport:
            def __init__(self, sock, default_window_size=None, gss_kex=False, disabled_algorithms=None):
                raise AssertionError("no connection may be tried")
        class SSHClient:
            def __init__(self):
                raise AssertionError("no connection may be tried")
    '''))
    state = tmp_path / "state"
    (state / "keys").mkdir(parents=True)
    for name in ("client_ed25519", "known_hosts", "token"):
        (state / "keys" / name).write_text("x\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "site"), "DEPLOYCTL_STATE": str(state)}
    proc = subprocess.run([sys.executable, "-m", "deployctl", "verify", "--expect", "a" * 64], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == ExitCode.FAILED, (proc.stdout, proc.stderr)
    assert proc.stderr.strip().splitlines() == [f"deployctl: error: {REFUSAL}"]
