"""`deployctl fleet up|down|status --kind bare`: a test fleet that deployctl did not make, behind a bastion.

The nodes are plain Debian containers (containers/bare/: sshd, python3, sudo, supervisor and a `deploy`
user whose sudo asks for SUDO_PASSWORD); the bastion is the same image running sshd alone, with host
networking, on 127.0.0.1:<bastion port> only. `up` plays the operator who provisioned those servers: it
puts each one's host key in place and the fleet's client key in deploy's authorized_keys, and pins the
host keys in the state folder's known_hosts (the bastion's always; the nodes' unless pin_nodes is False,
so that `enroll` meets keys it does not know). It installs nothing of deployctl. Only testfleet/docker.py
talks to Docker.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deployctl.errors import ConfigError, DeployctlError, UnreachableError
from deployctl.state import keys
from deployctl.state.statedir import StateDir
from deployctl.testfleet import docker as docker_fleet
from deployctl.testfleet import fleetfiles
from deployctl.testfleet.fleetfiles import bare_inventory_text

SUDO_PASSWORD = "deploy-sudo-pw"  # deploy's sudo password: containers/bare/Dockerfile's DEPLOY_PASSWORD
LOGIN_USER = fleetfiles.BARE_USER
BASTION = "bastion"  # the bastion's service name in compose-bare.yaml
CONTEXT = Path(__file__).resolve().parents[2] / "containers" / "bare"  # the bare image's build folder


@dataclass(frozen=True)
class BareFleet:
    """A bare fleet as its compose file describes it: the bastion's port, each node's (SSH, router) port, and
    the SHA256 fingerprint of each host key (nodes and "bastion"), for `enroll --fingerprint`."""

    project: str
    bastion_port: int
    nodes: dict[str, tuple[int, int]]
    fingerprints: dict[str, str]


def write_files(inventory: Path, compose: Path, nodes: int, project: str = "deployctl-bare",
                first_ssh_port: int = 2601, first_router_port: int = 8601, bastion_port: int = 2600) -> None:
    """Write the inventory and the compose file of an N-node bare fleet; ConfigError on bad numbers or paths."""
    compose, inventory = Path(compose), Path(inventory)
    context = os.path.relpath(CONTEXT, compose.absolute().parent)
    texts = {compose: fleetfiles.bare_compose_text(nodes, project, first_ssh_port, first_router_port,
                                                      bastion_port, context),
             inventory: bare_inventory_text(nodes, first_ssh_port, first_router_port, bastion_port)}
    fleetfiles.write_texts(texts)


def _spec(compose: Path) -> tuple[fleetfiles.FleetSpec, int]:
    """Read a bare compose file; return it and the bastion's port; ConfigError if it has no bastion."""
    spec = fleetfiles.load_spec(compose)
    bastion = next((n for n in spec.nodes if n.service == BASTION), None)
    args = list(bastion.command) if bastion else []
    port = args[args.index("-p") + 1] if "-p" in args[:-1] else ""
    if bastion is None or bastion.network_mode != "host" or not port.isdigit():
        raise ConfigError(f"{compose.name}: services/{BASTION}: should run sshd with network_mode host and -p PORT "
                          "(write it with `deployctl fleet up --kind bare --nodes N`)")
    return spec, int(port)


def _host_key_name(spec: fleetfiles.FleetSpec, service: str) -> str:
    return f"{spec.project}-{service}"  # apart from the ordinary fleet's node1.. keys in the same state folder


def describe(compose: Path, state_dir: Path | None = None) -> BareFleet:
    """Return the bare fleet of `compose` (ports, host-key fingerprints); ConfigError on a bad compose file."""
    spec, bastion_port = _spec(compose)
    pairs = keys.host_keys(StateDir.locate(state_dir), [_host_key_name(spec, n.service) for n in spec.nodes])
    nodes = {n.service: (dict((c, h) for h, c in n.ports).get(22, 0), dict((c, h) for h, c in n.ports).get(8080, 0))
             for n in spec.nodes if n.service != BASTION}
    prints = {n.service: keys.fingerprint(pairs[_host_key_name(spec, n.service)].public_line) for n in spec.nodes}
    return BareFleet(spec.project, bastion_port, nodes, prints)


def up(compose: Path, state_dir: Path | None = None, pin_nodes: bool = True,
       on_event: Callable[..., Any] = lambda kind, **data: None, timeout: float = 120) -> BareFleet:
    """Build the bare image if needed, start the bastion and the nodes with their keys, pin the host keys, wait
    until every sshd greets; idempotent (matching containers are kept). UnreachableError if one stays silent."""
    spec, bastion_port = _spec(compose)
    state = StateDir.locate(state_dir)
    dc = docker_fleet.client()
    on_event("step", message="bare image")
    image_id = docker_fleet.ensure_image(dc, spec)
    for name in docker_fleet.remove_extra(dc, spec):
        on_event("step", message=f"removed {name}: not in {compose.name} any more")
    pairs = keys.host_keys(state, [_host_key_name(spec, n.service) for n in spec.nodes])
    client_pub = keys.client_public_line(state)
    ports = {BASTION: bastion_port}
    for node in spec.nodes:
        key = pairs[_host_key_name(spec, node.service)]
        files = fleetfiles.BareFiles(key.private_openssh, key.public_line, client_pub)
        done = docker_fleet.start_node(dc, spec, node, image_id, files)
        on_event("node", phase="up", node=node.service, ok=True, reason=done)
        ports.setdefault(node.service, dict((c, h) for h, c in node.ports).get(22, 0))
    keys.pin(state, {("127.0.0.1", port): (pairs[_host_key_name(spec, name)].public_line
                                            if pin_nodes or name == BASTION else None)
                      for name, port in ports.items()})
    greets = functools.partial(docker_fleet.sshd_answers, "127.0.0.1")
    slow = [name for name, port in ports.items()
            if not docker_fleet.wait_for(functools.partial(greets, port), timeout, 0.1)]
    if slow:
        raise UnreachableError(f"fleet up --kind bare: sshd did not answer within {timeout:g}s on {', '.join(slow)}")
    return describe(compose, state_dir)


def down(compose: Path, keep_images: bool = False) -> list[str]:
    """Remove the bare fleet's containers and network (and the images we built unless keep_images); idempotent."""
    spec, _ = _spec(compose)
    return docker_fleet.down(docker_fleet.client(), spec, keep_images)


def status(compose: Path) -> list[dict]:
    """Return one row per container (bastion first): its state, its SSH port on 127.0.0.1, whether sshd greets."""
    spec, bastion_port = _spec(compose)
    states = docker_fleet.states(docker_fleet.client(), spec)
    rows = []
    for n in spec.nodes:
        port = bastion_port if n.service == BASTION else dict((c, h) for h, c in n.ports).get(22, 0)
        rows.append({"node": n.service, "container": states[n.service], "ssh": f"127.0.0.1:{port}",
                     "sshd": docker_fleet.sshd_answers("127.0.0.1", port)})
    return rows


def set_forwarding(compose: Path, enabled: bool, timeout: float = 15) -> None:
    """Turn the bastion's AllowTcpForwarding on or off: rewrite its sshd config, SIGHUP sshd, and wait until
    it says it listens again (its log), so the next connection meets the new setting. DeployctlError if not."""
    spec, _ = _spec(compose)
    c = docker_fleet.container(docker_fleet.client(), spec, BASTION)
    word = "yes" if enabled else "no"
    before = c.logs().count(b"Server listening on")
    code, out = c.exec_run(["sh", "-c", f"sed -i 's/^AllowTcpForwarding .*/AllowTcpForwarding {word}/' "
                            f"/etc/ssh/bastion_config && grep -qx 'AllowTcpForwarding {word}' /etc/ssh/bastion_config"
                            " && kill -HUP \"$(cat /run/sshd.pid)\""])
    if code != 0:
        raise DeployctlError(f"{BASTION}: cannot set AllowTcpForwarding {word}: {out.decode(errors='replace').strip()}")
    if not docker_fleet.wait_for(lambda: c.logs().count(b"Server listening on") > before, timeout, 0.1):
        raise DeployctlError(f"{BASTION}: sshd did not restart within {timeout:g}s after SIGHUP")
