"""Exit codes: one documented number per outcome, every error class mapped, and the CLI's one-line failures."""

from __future__ import annotations

import importlib
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from deployctl import errors
from deployctl.errors import DeployctlError, ExitCode

REPO = Path(__file__).resolve().parents[2]

# The numbers documented in errors.py (CI pipelines branch on these; changing one is a breaking change).
DOCUMENTED = {
    "OK": 0, "FAILED": 1, "USAGE": 2, "MISMATCH": 3, "UNREACHABLE": 4, "LOCKED": 5, "ROLLED_BACK": 6,
    "HALTED": 7, "NO_DOCKER": 8, "INCONSISTENT": 9, "HOST_KEY": 10,
}

ERROR_CODES = {
    "DeployctlError": ExitCode.FAILED,
    "UsageError": ExitCode.USAGE,
    "ConfigError": ExitCode.USAGE,
    "ArtifactError": ExitCode.USAGE,
    "MismatchError": ExitCode.MISMATCH,
    "UnreachableError": ExitCode.UNREACHABLE,
    "HostKeyError": ExitCode.HOST_KEY,
    "LockHeldError": ExitCode.LOCKED,
    "RolledBackError": ExitCode.ROLLED_BACK,
    "HaltedError": ExitCode.HALTED,
    "InconsistentError": ExitCode.INCONSISTENT,
    "DockerUnavailableError": ExitCode.NO_DOCKER,
    "NodeAnswerError": ExitCode.FAILED,  # remote/commands.py
    "JournalError": ExitCode.FAILED,
}

LIBRARY = [".".join(p.relative_to(REPO).with_suffix("").parts) for p in sorted((REPO / "deployctl").rglob("*.py"))
           if p.name != "__main__.py" and p.parent.name != "node"]


def all_subclasses(cls) -> set[type]:
    out = set()
    for sub in cls.__subclasses__():
        out |= {sub} | all_subclasses(sub)
    return out


def test_exit_codes_are_distinct():
    members = ExitCode.__members__  # includes aliases, which iterating the enum would hide
    values = [m.value for m in members.values()]
    assert len(values) == len(set(values))
    assert {name: int(m) for name, m in members.items()} == DOCUMENTED


def test_every_error_class_maps_to_its_documented_code():
    for name in LIBRARY:
        importlib.import_module(name)
    found = {cls.__name__: cls for cls in all_subclasses(DeployctlError) | {DeployctlError}
             if cls.__module__.startswith("deployctl.")}
    assert sorted(found) == sorted(ERROR_CODES), "a new error class needs its documented code here"
    for name, cls in found.items():
        assert cls.exit_code == ERROR_CODES[name], name
        assert cls("x").exit_code == ERROR_CODES[name], name
        assert isinstance(cls.exit_code, ExitCode)
        assert cls.__doc__ and len(cls.__doc__.strip().splitlines()) == 1, f"{name}: one-line docstring"


@pytest.mark.parametrize("name", [n for n in dir(errors) if n.endswith("Error") and n != "DeployctlError"])
def test_error_message_is_the_text(name):
    exc = getattr(errors, name)("node n3: something went wrong")
    assert str(exc) == exc.message == "node n3: something went wrong"


def deployctl(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "DEPLOYCTL_DEBUG"}
    env["DEPLOYCTL_STATE"] = str(cwd / "state")
    return subprocess.run([sys.executable, "-m", "deployctl", *args], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=120)


def one_line(proc: subprocess.CompletedProcess) -> str:
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("deployctl: error: ")
    return lines[0]


def test_cli_bogus_option_exits_usage(tmp_path):
    proc = deployctl("--bogus-option", cwd=tmp_path)
    assert proc.returncode == ExitCode.USAGE == 2
    assert "--bogus-option" in one_line(proc)
    assert proc.stdout == ""


def test_cli_missing_inventory_exits_usage(tmp_path):
    proc = deployctl("-i", "/nonexistent", "verify", cwd=tmp_path)
    assert proc.returncode == ExitCode.USAGE == 2
    assert "/nonexistent" in one_line(proc)
    assert proc.stdout == ""


@pytest.mark.parametrize("exc, words", [
    (ConnectionRefusedError(111, "Connection refused"), "connection refused"),
    (TimeoutError("timed out"), "timed out"),
    (socket.gaierror(-2, "Name or service not known"), "host name not resolved"),
    (NotADirectoryError(20, "Not a directory", "/tmp/x"), "Not a directory"),
    (PermissionError(13, "Permission denied", "/x"), "Permission denied"),
    (EOFError(), "connection closed"),
    (OSError("via bastion b: cannot reach h:1 from there"), "via bastion b: cannot reach h:1 from there"),
    (OSError(None, "Unable to connect to port 1 on 127.0.0.1"), "Unable to connect to port 1 on 127.0.0.1"),
])
def test_os_errors_are_described_in_words_without_class_names(exc, words):
    assert errors.describe_os_error(exc) == words


def test_paramikos_no_valid_connections_is_described_by_its_cause():
    class NoValidConnectionsError(OSError):  # as paramiko.ssh_exception has it: {address: OSError}
        def __init__(self, errors):
            super().__init__(None, "Unable to connect to port 1 on 127.0.0.1")
            self.errors = errors

    exc = NoValidConnectionsError({("127.0.0.1", 1): ConnectionRefusedError(111, "Connection refused")})
    assert errors.describe_os_error(exc) == "connection refused"


REFUSED = "unreachable at 127.0.0.1:{}: connection refused"


@pytest.mark.parametrize("names, line", [
    ([f"node{i}" for i in range(8, 0, -1)], "node1-node8"),
    (["node10", "node2", "node1", "node3", "web", "node9", "node5"], "node1-node3, node5, node9-node10, web"),
    (["a", "b"], "a, b"),
    (["db01", "db02", "db2"], "db01-db02, db2"),
])
def test_name_ranges(names, line):
    assert errors.name_ranges(names) == line


def test_a_fleet_wide_failure_is_one_grouped_line_without_addresses():
    reasons = {f"node{i}": REFUSED.format(2200 + i) for i in range(1, 9)}
    assert errors.grouped(reasons, 8) == "8 of 8 unreachable (connection refused): node1-node8"


def test_several_reasons_each_get_their_group():
    reasons = {"node1": REFUSED.format(1), "node2": REFUSED.format(2), "node5": "no SSH answer at [::1]:22 within 5s"}
    assert errors.grouped(reasons, 8) == ("3 of 8 unreachable: node1-node2 (connection refused); "
                                   "node5 (no SSH answer within 5s)")
