"""End-to-end fixtures: the eight real nodes (Docker containers with sshd), reached only on 127.0.0.1.

Every test here leaves the fleet as it found it: all containers running, not
halted, every node on the base release with the gate open. When a test fails,
the nodes' router and sshd logs are printed.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path

import pytest
from helpers import (
    COMPOSE,
    INVENTORY,
    ROOT,
    revive,
    under_observer,  # noqa: F401 - a fixture, for the modules that use it (helpers.py)
)
from observer import observer  # noqa: F401 - a fixture, for under_observer and the tests that ask for it

from deployctl import api
from deployctl.errors import DeployctlError
from deployctl.remote import routers
from deployctl.testfleet import api as testfleet_api
from deployctl.testfleet import docker as docker_fleet
from deployctl.testfleet import fleet as testfleet
from deployctl.testfleet import fleetfiles


def pytest_collection_modifyitems(items):
    for item in items:
        if "tests/e2e/" in str(item.fspath).replace(os.sep, "/"):
            item.add_marker(pytest.mark.e2e)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, f"rep_{rep.when}", rep)


@pytest.fixture(scope="session")
def ctx() -> api.Context:
    state = Path(os.environ.get("DEPLOYCTL_STATE") or ROOT / ".deployctl")
    return api.open_context(INVENTORY, ROOT / "playbooks" / "router.yaml", state)


@pytest.fixture(scope="session")
def docker_spec():
    return docker_fleet.client(), fleetfiles.load_spec(COMPOSE)


@pytest.fixture(scope="session")
def base_release(ctx, tmp_path_factory):
    """The fleet/router build every test starts and ends on (fleet up makes it current)."""
    testfleet_api.fleet_up(ctx, COMPOSE)
    art = api.build(ctx, tmp_path_factory.mktemp("dist"))
    _restore(ctx, art)
    return art


@pytest.fixture(scope="session")
def make_release(ctx, tmp_path_factory):
    """Build a distinct signed release: the router with another version and optional extra files."""
    made = {}

    def make(version: str, extra: dict[str, bytes] | None = None):
        key = (version, tuple(sorted((extra or {}).items())))
        if key not in made:
            src = tmp_path_factory.mktemp("src") / "router"
            shutil.copytree(ROOT / "fleet" / "router", src)
            cfg = json.loads((src / "router.json").read_text())
            cfg["version"] = version
            (src / "router.json").write_text(json.dumps(cfg, indent=2) + "\n")
            for rel, data in (extra or {}).items():
                (src / rel).parent.mkdir(parents=True, exist_ok=True)
                (src / rel).write_bytes(data)
            made[key] = api.build(ctx, tmp_path_factory.mktemp("dist"), src)
        return made[key]

    return make


def _restore(ctx: api.Context, art) -> None:
    """Bring the fleet back to `art`, running, not halted, gate open; cheap when it already is."""
    revive(ctx, docker_fleet.client(), fleetfiles.load_spec(COMPOSE))
    ctx.lock.path.unlink(missing_ok=True)
    health = routers.health(ctx.nodes)
    if all(a.ok and a.body.get("digest") == art.digest and a.body.get("gate") == "open" and not a.body.get("halted")
           for a in health.values()) and api.verify(ctx, art.digest).ok:
        return
    if any(a.ok and a.body.get("halted") for a in health.values()) or not all(a.ok for a in health.values()):
        api.halt(ctx)  # a node whose router is down must not come back un-halted while others are halted
        routers.control(ctx.nodes, "resume", ctx.token())
    # A fault test may leave a node with a small releases folder: restoring must not need the reserve.
    roomy = dataclasses.replace(ctx, playbook=dataclasses.replace(ctx.playbook, min_free_mb=0))
    api.rollout(roomy, art.path, break_lock=True)


@pytest.fixture(autouse=True)
def fleet(request, ctx, base_release):
    """Each e2e test gets the healthy fleet and leaves it healthy; logs are dumped when it fails."""
    yield ctx
    failed = getattr(request.node, "rep_call", None) is not None and request.node.rep_call.failed
    if failed:
        for node in ctx.nodes:
            try:
                print(f"----- {node.name} logs -----\n{testfleet.logs(COMPOSE, node.name, 30)}")
            except DeployctlError as exc:
                print(f"----- {node.name}: {exc}")
    _restore(ctx, base_release)


@pytest.fixture
def node_exec(docker_spec):
    """Run a shell command inside a node's container (for injecting faults); returns (exit code, output)."""
    dc, spec = docker_spec

    def run(node: str, script: str) -> tuple[int, str]:
        code, out = docker_fleet.container(dc, spec, node).exec_run(["sh", "-c", script])
        return code, out.decode(errors="replace")

    return run
