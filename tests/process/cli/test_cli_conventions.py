"""The conventions users expect of a Typer tool: --version, shell completion, clean --help."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
DCTL = str(ROOT / ".venv" / "bin" / "deployctl")
COMMANDS = [[], ["build"], ["rollout"], ["verify"], ["rollback"], ["recover"], ["halt"], ["resume"], ["history"],
            ["status"], ["gate"], ["gate", "open"], ["gate", "close"], ["gate", "status"], ["fleet"],
            ["fleet", "up"], ["fleet", "down"], ["fleet", "status"]]


def run(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([DCTL, *args], cwd=ROOT, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "COLUMNS": "200", **(env or {})})


def test_version_prints_the_package_version():
    version = re.search(r'^version = "([^"]+)"', (ROOT / "pyproject.toml").read_text(), re.M).group(1)
    proc = run("--version")
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, f"deployctl {version}\n", "")


def test_show_completion_prints_a_bash_completion_script():
    proc = run("--show-completion", "bash", env={"SHELL": "/bin/bash"})
    assert proc.returncode == 0, proc.stderr
    assert "_deployctl_completion()" in proc.stdout and "_DEPLOYCTL_COMPLETE=complete_bash" in proc.stdout


@pytest.mark.parametrize("words, cword, expected", [
    ("deployctl ro", 1, ["rollout", "rollback"]),
    ("deployctl fleet ", 2, ["up", "down", "status"]),
    ("deployctl rollback --a", 2, ["--all"]),
])
def test_completion_completes_commands_and_options(words, cword, expected):
    proc = run(env={"_DEPLOYCTL_COMPLETE": "complete_bash", "COMP_WORDS": words, "COMP_CWORD": str(cword)})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == expected


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "top")
def test_help_shows_no_bool_metavar_and_no_fixed_node_count(command):
    proc = run(*command, "--help")
    assert proc.returncode == 0, proc.stderr
    assert "Usage: deployctl" in proc.stdout
    assert "<bool>" not in proc.stdout
    assert not re.search(r"\beight\b", proc.stdout, re.I)  # the inventory decides how many nodes there are


def test_help_still_shows_the_type_of_options_that_take_a_value():
    proc = run("--help")
    assert re.search(r"--inventory\s+-i\s+<path>", proc.stdout), proc.stdout


@pytest.mark.parametrize("command", [[], ["gate"], ["fleet"]], ids=lambda c: " ".join(c) or "top")
def test_no_arguments_print_the_help_and_exit_0(command):
    """As kubectl, git and Kamal do: `deployctl` alone (or a command group alone) is a request for help."""
    proc = run(*command)
    assert (proc.returncode, proc.stderr) == (0, ""), proc.stderr
    assert "Usage: deployctl" in proc.stdout
    assert proc.stdout.rstrip() == run(*command, "--help").stdout.rstrip()  # the same help, blank lines aside
