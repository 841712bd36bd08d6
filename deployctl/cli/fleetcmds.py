"""`deployctl fleet up|down|status`: the Docker test fleets, through their own facade (deployctl.testfleet.api).

The facade, and the docker SDK behind it, load only when one of these commands runs.
"""

from __future__ import annotations

import importlib.util
import os
import time
from pathlib import Path

import typer

from deployctl import api
from deployctl.cli import output
from deployctl.cli.common import JSON, OPTS, context
from deployctl.errors import DockerUnavailableError, UsageError

fleet_app = typer.Typer(no_args_is_help=True, help="The Docker-composed test fleet of N nodes: up, down, status.")


def _testfleet():
    """The test fleets' facade; UsageError saying how to install it when the docker SDK is missing."""
    try:  # the [testfleet] extra; imported only when a fleet is reached
        missing = importlib.util.find_spec("docker") is None
    except (ImportError, ValueError):  # a finder that refuses it, or a half-imported module
        missing = True
    if missing:
        raise DockerUnavailableError("the test fleets need the docker SDK: pip install 'deployctl[testfleet]'")
    from deployctl.testfleet import api as testfleet

    return testfleet


COMPOSE = typer.Option(None, "--compose", help="The fleet's compose file (default: $DEPLOYCTL_COMPOSE, else "
                       "containers/compose.yaml; with --kind bare containers/compose-bare.yaml).")
KIND = typer.Option("node", "--kind", help="node: the fleet deployctl makes and installs; bare: plain Debian servers "
                    "with a deploy user and sudo, nothing of deployctl, reached through a bastion.")
_COMPOSE = {"node": Path("containers/compose.yaml"), "bare": Path("containers/compose-bare.yaml")}


def _given(value, default):
    return default if value is None else value


def _compose(kind: str, compose: Path | None) -> Path:
    if kind not in _COMPOSE:
        raise UsageError(f"--kind: should be node or bare, got {kind!r}")
    if compose is None and kind == "node" and os.environ.get("DEPLOYCTL_COMPOSE"):
        return Path(os.environ["DEPLOYCTL_COMPOSE"])
    return compose or _COMPOSE[kind]


@fleet_app.command("up")
def fleet_up(compose: Path | None = COMPOSE,
             nodes: int | None = typer.Option(None, "--nodes", help="Write the compose file and the inventory "
                                              "for this many nodes (1-64) first; default: use them as they are."),
             project: str | None = typer.Option(None, "--project", help="Docker project name (with --nodes; "
                                                "default deployctl-fleet, deployctl-bare with --kind bare)."),
             first_ssh_port: int | None = typer.Option(None, "--first-ssh-port", help="node1's SSH port "
                                                       "(with --nodes; default 2201, bare 2601)."),
             first_router_port: int | None = typer.Option(None, "--first-router-port",
                                                          help="node1's router port (with --nodes; default 8101, "
                                                          "bare 8601)."),
             kind: str = KIND,
             bastion_port: int = typer.Option(2600, "--bastion-port", help="--kind bare: the bastion's SSH port on "
                                              "127.0.0.1 (with --nodes)."),
             pin_nodes: bool = typer.Option(True, "--pin-nodes/--no-pin-nodes", help="--kind bare: pin the nodes' "
                                            "host keys in known_hosts (the bastion's always is).")) -> None:
    """Build the node image if needed, start the inventory's nodes, install the first release, wait until all answer.

    With --kind bare: start plain servers and their bastion, install only host keys and deploy's authorized key."""
    start = time.monotonic()
    testfleet = _testfleet()
    compose = _compose(kind, compose)
    if kind == "bare":
        return _bare_up(compose, nodes, project, first_ssh_port, first_router_port, bastion_port, pin_nodes, start)
    if nodes is not None:
        testfleet.write_fleet_files(OPTS["inventory"] or api.default_inventory(), compose, nodes,
                              _given(project, "deployctl-fleet"),
                              _given(first_ssh_port, 2201), _given(first_router_port, 8101))
    ctx = context()
    testfleet.fleet_up(ctx, compose)
    output.fleet_table(testfleet.fleet_status(ctx, compose))
    output.out.print(f"fleet up in {time.monotonic() - start:.1f}s")


def _bare_up(compose: Path, nodes: int | None, project: str | None, first_ssh_port: int | None,
             first_router_port: int | None, bastion_port: int, pin_nodes: bool, start: float) -> None:
    testfleet = _testfleet()
    if nodes is not None:  # the inventory: -i if given, else fleet/bare.yaml (the other is the node kind's)
        inventory = OPTS["inventory"] or Path("fleet/bare.yaml")
        testfleet.write_bare_fleet_files(inventory, compose, nodes, _given(project, "deployctl-bare"),
                                   _given(first_ssh_port, 2601), _given(first_router_port, 8601), bastion_port)
    sink = (lambda kind, **data: None) if OPTS.get("quiet") else output.progress
    fleet = testfleet.bare_fleet_up(compose, OPTS["state_dir"], pin_nodes, sink)
    output.bare_table(testfleet.bare_fleet_status(compose), fleet.fingerprints)
    output.out.print(f"bare fleet up in {time.monotonic() - start:.1f}s; sudo password of deploy: "
                     f"{testfleet.BARE_SUDO_PASSWORD}")


@fleet_app.command("down")
def fleet_down(compose: Path | None = COMPOSE, kind: str = KIND,
               keep_images: bool = typer.Option(False, "--keep-images", help="Keep the built images.")) -> None:
    """Remove everything `fleet up` made (containers, network, images); idempotent."""
    testfleet = _testfleet()
    compose = _compose(kind, compose)
    if kind == "bare":
        removed = testfleet.bare_fleet_down(compose, keep_images)
    else:
        removed = testfleet.fleet_down(context(), compose, keep_images)
    output.out.print("removed: " + (", ".join(removed) if removed else "nothing (fleet already down)"))


@fleet_app.command("status")
def fleet_status(compose: Path | None = COMPOSE, kind: str = KIND, json_out: bool = JSON) -> None:
    """A table of the nodes: container, sshd, router, running digest, gate (--kind bare: container and sshd)."""
    testfleet = _testfleet()
    compose = _compose(kind, compose)
    if kind == "bare":
        rows = testfleet.bare_fleet_status(compose)
        return output.dump(rows) if json_out else output.bare_table(rows)
    rows = testfleet.fleet_status(context(json_out), compose)
    output.dump(rows) if json_out else output.fleet_table(rows)
