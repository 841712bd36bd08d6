"""The process ring's one rig: real processes on this machine, no Docker, no fleet.

- `root`: a node's install root in a temporary folder (releases/, state/ with the signing key pinned), for
  the node agent run as on a node (agentproc.py: `run`, `answer`, `refusal`, the artifacts it stages).
- `release`, `state`, `start`, `node`: the router of fleet/router/ as supervisord runs it (routerproc.py):
  a release folder copied from fleet/router, its state folder with the control token, and router
  processes on 127.0.0.1 (`start()` starts one more; `node` is one, ready to serve). Every process is
  stopped at teardown.
- `controller`: a controller whose inventory is one node, that router process (its SSH port unused), and a
  state folder holding the control token: enough for `deployctl halt` (cli/test_fasthalt.py,
  cli/test_cli_closed_streams.py).

The CLI tests (cli/) run `deployctl` itself against throw-away state folders. Test modules import
agentproc and routerproc, never this file: with a conftest.py in each ring, the module name `conftest`
is whichever of them pytest loaded last.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from agentproc import PUB_HEX
from routerproc import ROUTER_DIR, TOKEN, RouterProcess, shipped_files

from deployctl.testfleet.fleetfiles import inventory_text


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A node's install root with nothing installed: releases/, and state/ with the pinned signing key."""
    r = tmp_path / "opt-router"
    (r / "releases").mkdir(parents=True)
    (r / "state").mkdir()
    (r / "state" / "signing.pub").write_text(PUB_HEX + "\n")  # what `fleet up` pins on every node
    return r


@pytest.fixture
def release(tmp_path: Path) -> Path:
    """A release folder holding a copy of every file of fleet/router, like /opt/router/releases/<digest>/."""
    folder = tmp_path / "release"
    folder.mkdir()
    for name in shipped_files():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROUTER_DIR / name, folder / name)
    return folder


@pytest.fixture
def state(tmp_path: Path) -> Path:
    """The router's state folder, holding its control token."""
    folder = tmp_path / "state"
    folder.mkdir()
    token = folder / "token"
    token.write_text(TOKEN + "\n")
    token.chmod(0o600)
    return folder


@pytest.fixture
def start(release, state, tmp_path):
    """Start router processes (each ready to serve); all of them are stopped at teardown."""
    started = []

    def run():
        process = RouterProcess(release, state, tmp_path / f"router-{len(started)}.log")
        started.append(process)
        process.wait_ready()
        return process

    yield run
    for process in started:
        process.stop()


@pytest.fixture
def node(start) -> RouterProcess:
    """One router process, ready to serve (gate closed, not halted)."""
    return start()


@pytest.fixture
def controller(tmp_path, node):
    """An inventory of one node whose router is the local process, and a state folder holding its token."""
    folder = tmp_path / "controller"
    (folder / "keys").mkdir(parents=True)
    (folder / "keys" / "token").write_text(TOKEN + "\n")
    inventory = tmp_path / "fleet.yaml"
    inventory.write_text(inventory_text(1, 2201, int(node.url.rsplit(":", 1)[1])))
    return folder, inventory
