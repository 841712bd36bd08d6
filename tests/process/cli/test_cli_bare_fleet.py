"""`fleet up|down|status --kind bare` on bad input and without a Docker engine: one line, its exit code, nothing
written; no Docker engine is needed (DOCKER_HOST points at no socket)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from deployctl.testfleet import fleetfiles

ROOT = Path(__file__).resolve().parents[3]


def cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "DOCKER_HOST": f"unix://{tmp_path}/no-such.sock", "DEPLOYCTL_STATE": str(tmp_path / "s")}
    return subprocess.run([str(ROOT / ".venv/bin/deployctl"), "-i", str(tmp_path / "bare.yaml"), *args], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=60)


def one_line(proc: subprocess.CompletedProcess, code: int, message: str) -> None:
    assert (proc.returncode, proc.stderr) == (code, f"deployctl: error: {message}\n"), proc.stderr


@pytest.mark.parametrize("command", ["up", "down", "status"])
def test_an_unknown_kind_is_a_usage_error(tmp_path, command):
    one_line(cli(tmp_path, "fleet", command, "--kind", "cloud"), 2, "--kind: should be node or bare, got 'cloud'")


@pytest.mark.parametrize("args, message", [
    (["--bastion-port", "2602"], "--bastion-port: 2602 is one of the nodes' SSH ports 2601-2603"),
    (["--bastion-port", "70000"], "--bastion-port: should be an integer between 1 and 65535"),
    (["--first-ssh-port", "0"], "--first-ssh-port: should be between 1 and 65533 for --nodes 3"),
    (["--project", "Bad Name"], "--project: should be a lowercase project name matching ^[a-z0-9][a-z0-9_-]*$, "
                                "got 'Bad Name'"),
])
def test_bad_numbers_write_nothing(tmp_path, args, message):
    compose = tmp_path / "compose-bare.yaml"
    one_line(cli(tmp_path, "fleet", "up", "--kind", "bare", "--nodes", "3", "--compose", str(compose), *args),
             2, message)
    assert not compose.exists() and not (tmp_path / "bare.yaml").exists() and not (tmp_path / "s").exists()


def test_an_ordinary_compose_file_is_not_a_bare_fleet(tmp_path):
    compose = tmp_path / "compose.yaml"
    compose.write_text(fleetfiles.compose_text(2))
    for command in ("up", "down", "status"):
        one_line(cli(tmp_path, "fleet", command, "--kind", "bare", "--compose", str(compose)), 2,
                 "compose.yaml: services/bastion: should run sshd with network_mode host and -p PORT "
                 "(write it with `deployctl fleet up --kind bare --nodes N`)")


def test_without_an_engine_each_command_says_so(tmp_path):
    compose = tmp_path / "compose-bare.yaml"
    for command in (["up", "--nodes", "2"], ["status"], ["down"]):
        proc = cli(tmp_path, "fleet", *command, "--kind", "bare", "--compose", str(compose))
        assert proc.returncode == 8, proc.stderr
        assert proc.stderr.startswith("deployctl: error: no Docker engine reachable") and proc.stderr.count("\n") == 1
    assert "proxy_jump: 'deploy@127.0.0.1:2600'" in (tmp_path / "bare.yaml").read_text()
    assert "name: deployctl-bare\n" in compose.read_text()
