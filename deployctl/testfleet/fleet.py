"""`deployctl fleet up|down|status`: the Docker-composed test fleet of N nodes on this machine.

`up --nodes N` writes the compose file and the inventory for N nodes, builds the node image if
needed, starts the nodes with their keys installed, and rolls the playbook's source out to them.
Only testfleet/docker.py talks to Docker. A user's real fleet never goes through this module.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

from deployctl.config.inventory import Inventory
from deployctl.errors import ConfigError, DeployctlError, UnreachableError
from deployctl.ops.context import Context
from deployctl.ops.guards import probe_all
from deployctl.ops.rollout import build, rollout
from deployctl.state import keys
from deployctl.testfleet import docker as docker_fleet
from deployctl.testfleet import fleetfiles
from deployctl.testfleet.docker import sshd_answers, wait_for
from deployctl.testfleet.fleetfiles import inventory_text

CONTAINERS = Path(__file__).resolve().parents[2] / "containers"  # the node image's build folder


def write_files(inventory: Path, compose: Path, nodes: int, project: str = "deployctl-fleet",
                first_ssh_port: int = 2201, first_router_port: int = 8101) -> None:
    """Write the inventory and the compose file of an N-node test fleet; ConfigError on bad numbers."""
    compose, inventory = Path(compose), Path(inventory)
    context = os.path.relpath(CONTAINERS, compose.absolute().parent)
    texts = {compose: fleetfiles.compose_text(nodes, project, first_ssh_port, first_router_port, context),
             inventory: inventory_text(nodes, first_ssh_port, first_router_port)}
    fleetfiles.write_texts(texts)


def _check_matches_inventory(inventory: Inventory, spec: fleetfiles.FleetSpec) -> None:
    """The compose file and the inventory must describe the same nodes on the same ports."""
    published = {n.service: dict((c, h) for h, c in n.ports) for n in spec.nodes}
    for node in inventory.nodes:
        ports = published.get(node.name)
        if ports is None:
            raise ConfigError(f"compose.yaml: services: no node {node.name!r} (it is in {inventory.path.name})")
        if ports.get(22) != node.ssh_port or ports.get(8080) != node.router_port:
            raise ConfigError(f"compose.yaml: services/{node.name}/ports: should publish 127.0.0.1:{node.ssh_port}:22 "
                              f"and 127.0.0.1:{node.router_port}:8080 as {inventory.path.name} says")


def fleet_up(ctx: Context, compose: Path, timeout: float = 120) -> dict[str, str]:
    """Build the image if needed, start the nodes, install the first release, wait until all answer.

    Idempotent: matching running nodes are kept as they are, nodes the compose file no longer lists
    are removed. Returns node -> what was done.
    """
    spec = fleetfiles.load_spec(compose)
    _check_matches_inventory(ctx.inventory, spec)
    dc = docker_fleet.client()
    ctx.emit("step", message="node image")
    image_id = docker_fleet.ensure_image(dc, spec)
    for name in docker_fleet.remove_extra(dc, spec):
        ctx.emit("step", message=f"removed {name}: not in {compose.name} any more")
    files = _node_files(ctx)
    done = {}
    for node in spec.nodes:
        if node.service in files:
            done[node.service] = docker_fleet.start_node(dc, spec, node, image_id, files[node.service])
            ctx.emit("node", phase="up", node=node.service, ok=True, reason=done[node.service])
    slow = [n.name for n in ctx.nodes
            if not wait_for(functools.partial(sshd_answers, n.host, n.ssh_port), timeout, 0.1)]
    if slow:
        raise UnreachableError(f"fleet up: sshd did not answer within {timeout:g}s on {', '.join(slow)}")
    _install_first_release(ctx)
    return done


def _node_files(ctx: Context) -> dict[str, fleetfiles.NodeFiles]:
    """Return what each inventory node gets installed: its host key, our client key, the token, the signing key."""
    pairs = keys.ensure(ctx.state, [(n.name, n.host, n.ssh_port) for n in ctx.nodes])
    client_pub, token = keys.client_public_line(ctx.state), ctx.state.token()
    ctx.signing_key()
    signing_pub = ctx.state.signing_pub.read_text().strip()
    return {name: fleetfiles.NodeFiles(k.private_openssh, k.public_line, client_pub, token, signing_pub)
            for name, k in pairs.items()}


def replace_node(ctx: Context, compose: Path, name: str, tmpfs: dict[str, str]) -> None:
    """Recreate one node with tmpfs mounts (fault tests: a small disk); it starts with no release.

    A later `fleet_up` puts the ordinary node back.
    """
    spec = fleetfiles.load_spec(compose)
    dc = docker_fleet.client()
    node = next(n for n in spec.nodes if n.service == name)
    docker_fleet.start_node(dc, spec, node, docker_fleet.ensure_image(dc, spec), _node_files(ctx)[name], tmpfs)
    target = next(n for n in ctx.nodes if n.name == name)
    if not wait_for(lambda: sshd_answers(target.host, target.ssh_port), 60, 0.1):
        raise UnreachableError(f"{name}: sshd did not answer after replacing the node")


def _install_first_release(ctx: Context) -> None:
    """Roll out the playbook's source unless every node already runs one same release."""
    with ctx.ssh() as fleet:
        currents = {p.current for p in probe_all(ctx, fleet, "fleet up").values()}
    health = ctx.routers.health(ctx.nodes)
    running = {a.body.get("digest") if a.ok else None for a in health.values()}
    only = next(iter(currents)) if len(currents) == 1 else None
    if only is not None and running == currents:
        ctx.emit("step", message=f"every node runs {only[:12]}: nothing to install")
        return
    art = build(ctx)
    ctx.emit("step", message=f"installing release {art.digest[:12]} on every node")
    rollout(ctx, art.path)


def fleet_down(ctx: Context, compose: Path, keep_images: bool = False) -> list[str]:
    """Remove every container of the compose file's project (however many nodes it had), its network
    and (unless keep_images) the images `up` made; idempotent."""
    return docker_fleet.down(docker_fleet.client(), fleetfiles.load_spec(compose), keep_images)


def fleet_status(ctx: Context, compose: Path) -> list[dict]:
    """Return one row per node: container state, ports, sshd answering, router health."""
    spec = fleetfiles.load_spec(compose)
    states = docker_fleet.states(docker_fleet.client(), spec)
    health = ctx.routers.health(ctx.nodes, timeout=1.0)
    rows = []
    for n in ctx.nodes:
        h = health[n.name]
        rows.append({
            "node": n.name, "container": states.get(n.name, "absent"), "ssh": f"{n.host}:{n.ssh_port}",
            "sshd": sshd_answers(n.host, n.ssh_port), "router": f"{n.host}:{n.router_port}",
            "digest": h.body.get("digest") if h.ok else None, "gate": h.body.get("gate") if h.ok else None,
            "halted": h.body.get("halted") if h.ok else None, "problem": None if h.ok else h.reason(),
        })
    return rows


def logs(compose: Path, node: str, lines: int = 50) -> str:
    """Return the tail of a node's container, sshd and router logs (for failing tests)."""
    spec = fleetfiles.load_spec(compose)
    c = docker_fleet.container(docker_fleet.client(), spec, node)
    code, out = c.exec_run(["sh", "-c", f"tail -n {int(lines)} /var/log/router.log /var/log/sshd.log"])
    if code != 0:
        raise DeployctlError(f"{node}: cannot read logs")
    return out.decode(errors="replace")
