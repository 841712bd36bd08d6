"""`deployctl fleet ...` without the [testfleet] extra: one line naming what to install, exit 8; the
commands that deploy to real servers never need the docker SDK."""

from __future__ import annotations

import subprocess
import sys

# Run the CLI with the docker SDK unfindable, as after a plain `pip install deployctl`.
NO_DOCKER = """
import importlib.abc, sys
class NoDocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "docker" or name.startswith("docker."):
            raise ModuleNotFoundError("No module named 'docker'", name=name)
        return None
sys.meta_path.insert(0, NoDocker())
sys.argv[0] = "deployctl"
from deployctl.__main__ import main
main()
"""


def cli(tmp_path, *args):
    return subprocess.run([sys.executable, "-c", NO_DOCKER, "--state-dir", str(tmp_path / "s"), *args],
                          capture_output=True, text=True, timeout=60, cwd=tmp_path)


def test_fleet_commands_without_the_docker_sdk_say_what_to_install(tmp_path):
    for command in (["up"], ["down"], ["status"], ["up", "--kind", "bare"]):
        proc = cli(tmp_path, "fleet", *command)
        assert (proc.returncode, proc.stdout, proc.stderr) == (
            8, "", "deployctl: error: the test fleets need the docker SDK: pip install 'deployctl[testfleet]'\n")


def test_verify_and_halt_help_need_no_docker_sdk(tmp_path):
    for command in (["verify", "--help"], ["halt", "--help"], ["--version"]):
        proc = cli(tmp_path, *command)
        assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
