"""The test fleets on paper: the compose files and inventories `fleet up` writes, and the part of a
compose file it reads back (FleetSpec). No Docker here: testfleet/docker.py drives the engine.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from deployctl.config.fields import NAME_RE
from deployctl.config.schema import load_yaml, show
from deployctl.errors import ConfigError

MAX_NODES = 64  # `fleet up --nodes` upper bound: each node is a container with 256 MB on this machine

_INVENTORY_HEADER = """\
# The test fleet: N nodes, each a container on this machine. `deployctl fleet up
# --nodes N` writes this file (fleetfiles.inventory_text) and containers/compose.yaml.
#
# Every node publishes its SSH server and its router on consecutive ports of
# 127.0.0.1 (see containers/compose.yaml). deployctl reads this file with
# deployctl/config/inventory.py: unknown or duplicate keys are errors, node names must
# be unique, and no host:port pair may be used twice.
#
#   fleet                 name of the fleet ([a-z0-9][a-z0-9_-]*)
#   ssh.user              default login user (default root); a node may override it with `user`
#   ssh.ssh_config        true: read ~/.ssh/config as ssh does (or give a file's path): Host
#                         aliases, HostName, Port, User, IdentityFile, ProxyJump; values written
#                         here win over it, the first value ssh_config gives wins within it
#   ssh.connect_timeout   seconds to wait for an SSH connection (number > 0)
#   ssh.parallel          at most this many nodes are worked on at once (1..256)
#   nodes[].ssh_port      SSH port on the host (default 22)
#   nodes[].router_port   port where the node's router answers HTTP
#   nodes[].user          login user for this node
#   nodes[].identity_file private key for this node (default: the controller's key)
#   nodes[].proxy_jump    bastion [user@]host[:port]; a,b chains as ssh -J does; none: no bastion
#   nodes[].become        sudo: the login user is not root and runs service work with sudo
"""


def _check_first_port(option: str, first: int, nodes: int) -> None:
    last = 65536 - nodes  # the highest first port that keeps all `nodes` ports at or below 65535
    if isinstance(first, bool) or not isinstance(first, int):
        raise ConfigError(f"{option}: should be an integer")
    if not 1 <= first <= last:
        raise ConfigError(f"{option}: should be between 1 and {last} for --nodes {nodes}")


def fleet_ports(nodes: int, first_ssh_port: int = 2201, first_router_port: int = 8101) -> list[tuple[str, int, int]]:
    """Return (name, ssh_port, router_port) for node1..nodeN on consecutive ports; ConfigError, one line, if the
    count is outside 1..MAX_NODES, a port leaves 1..65535 or the SSH and router ranges overlap."""
    if isinstance(nodes, bool) or not isinstance(nodes, int):
        raise ConfigError("--nodes: should be an integer")
    if not 1 <= nodes <= MAX_NODES:
        raise ConfigError(f"--nodes: should be between 1 and {MAX_NODES}")
    _check_first_port("--first-ssh-port", first_ssh_port, nodes)
    _check_first_port("--first-router-port", first_router_port, nodes)
    if abs(first_ssh_port - first_router_port) < nodes:
        raise ConfigError(f"--first-router-port: ports {first_router_port}-{first_router_port + nodes - 1} overlap "
                          f"the SSH ports {first_ssh_port}-{first_ssh_port + nodes - 1}")
    return [(f"node{i}", first_ssh_port + i - 1, first_router_port + i - 1) for i in range(1, nodes + 1)]


def inventory_text(nodes: int, first_ssh_port: int = 2201, first_router_port: int = 8101,
                   fleet_name: str = "test-fleet") -> str:
    """Return the YAML text of fleet/fleet.yaml for node1..nodeN on 127.0.0.1 (defaults, nodes=8: the committed
    file); ConfigError, one line, on a bad count, port range or fleet name."""
    ports = fleet_ports(nodes, first_ssh_port, first_router_port)
    if not isinstance(fleet_name, str) or not NAME_RE.fullmatch(fleet_name):
        raise ConfigError(f"--fleet-name: should be a name matching ^{NAME_RE.pattern}$, got {show(fleet_name)}")
    lines = [_INVENTORY_HEADER, f"fleet: {fleet_name}", "", "ssh:", "  user: root", "  connect_timeout: 5",
             "  parallel: 8", "", "nodes:"]
    lines += [f"  - {{name: {name}, host: 127.0.0.1, ssh_port: {ssh}, router_port: {router}}}"
              for name, ssh, router in ports]
    return "\n".join(lines) + "\n"


_BARE_HEADER = """\
# The bare test fleet: N plain Debian servers that deployctl did not make (sshd, python3,
# sudo, supervisor and a `deploy` user, nothing of deployctl), reached through a bastion.
# `deployctl fleet up --kind bare --nodes N` writes this file (fleetfiles.bare_inventory_text)
# and containers/compose-bare.yaml. Each node publishes its SSH server and its (future)
# router on 127.0.0.1; the bastion's sshd listens on 127.0.0.1 (host networking) and
# forwards to those ports. deploy logs in with the fleet's key; its sudo asks for a password.
#
#   nodes[].user          login user on the node (deploy, not root)
#   nodes[].become        how root work is done: sudo
#   nodes[].proxy_jump    the bastion, as OpenSSH's ProxyJump: user@host:port
"""


def bare_ports(nodes: int, first_ssh_port: int, first_router_port: int,
               bastion_port: int) -> list[tuple[str, int, int]]:
    """Return fleet_ports for a bare fleet; ConfigError, one line, also if the bastion's port is outside 1..65535
    or inside the nodes' SSH or router ranges."""
    ports = fleet_ports(nodes, first_ssh_port, first_router_port)
    if isinstance(bastion_port, bool) or not isinstance(bastion_port, int) or not 1 <= bastion_port <= 65535:
        raise ConfigError("--bastion-port: should be an integer between 1 and 65535")
    for option, first in (("SSH", first_ssh_port), ("router", first_router_port)):
        if first <= bastion_port < first + nodes:
            raise ConfigError(f"--bastion-port: {bastion_port} is one of the nodes' {option} ports "
                              f"{first}-{first + nodes - 1}")
    return ports


def bare_inventory_text(nodes: int, first_ssh_port: int = 2601, first_router_port: int = 8601,
                        bastion_port: int = 2600, fleet_name: str = "bare-fleet") -> str:
    """Return the YAML text of a bare fleet's inventory (fleet/bare.yaml): node1..nodeN on 127.0.0.1, each logged
    into as deploy through the bastion on 127.0.0.1:bastion_port, with sudo; ConfigError, one line, on bad numbers."""
    ports = bare_ports(nodes, first_ssh_port, first_router_port, bastion_port)
    if not isinstance(fleet_name, str) or not NAME_RE.fullmatch(fleet_name):
        raise ConfigError(f"--fleet-name: should be a name matching ^{NAME_RE.pattern}$, got {show(fleet_name)}")
    lines = [_BARE_HEADER, f"fleet: {fleet_name}", "", "ssh:", "  user: deploy", "  connect_timeout: 5",
             "  parallel: 8", "", "nodes:"]
    lines += [f"  - {{name: {name}, host: 127.0.0.1, ssh_port: {ssh}, router_port: {router}, user: deploy, "
              f"become: sudo, proxy_jump: 'deploy@127.0.0.1:{bastion_port}'}}" for name, ssh, router in ports]
    return "\n".join(lines) + "\n"


_PORT = re.compile(r"^127\.0\.0\.1:(\d{1,5}):(\d{1,5})$")
IMAGE_LABEL = "deployctl.context"
MADE_LABEL = "deployctl.made"
_PROJECT = re.compile(r"[a-z0-9][a-z0-9_-]*")  # what load_spec accepts as the compose `name`

_COMPOSE_HEADER = """\
# The nodes of the test fleet. `deployctl fleet up --nodes N` writes this file
# (fleetfiles.compose_text), then reads it and creates the containers with the
# Docker SDK (it does not need docker compose); ports are published on 127.0.0.1
# only, and must match fleet/fleet.yaml.
"""

_COMPOSE_NODE = """\
  {name}:
    image: deployctl/node:latest
    build: {{context: {context}, dockerfile: Dockerfile}}
    hostname: {name}
    ports: ["127.0.0.1:{ssh}:22", "127.0.0.1:{router}:8080"]
    networks: [fleet]
"""


@dataclass(frozen=True)
class NodeSpec:
    """One node of the compose file: container name, hostname, published ports (host -> container)."""

    service: str
    container: str
    hostname: str
    ports: tuple[tuple[int, int], ...]
    # The bare fleet's bastion: host networking and its own command. Out of repr (the containers'
    # config label hashes it) so that the ordinary nodes' labels stay what they were.
    network_mode: str = field(default="", repr=False)
    command: tuple[str, ...] = field(default=(), repr=False)


@dataclass(frozen=True)
class FleetSpec:
    """The compose file's project: name, image tag, build folder, network, nodes."""

    project: str
    image: str
    context: Path
    network: str
    nodes: tuple[NodeSpec, ...]


@dataclass(frozen=True)
class NodeFiles:
    """What `up` installs into a node before it starts: host key, authorized key, control token, signing key."""

    host_key: bytes
    host_pub: str
    authorized_key: str
    token: str
    signing_pub: str

    def label_parts(self) -> tuple[str, ...]:
        """Return what the container's config label hashes besides the image and the node."""
        return (self.host_pub, self.authorized_key, self.token, self.signing_pub)

    def members(self) -> tuple[tuple[str, bytes, int, int], ...]:
        """Return the files put into the container before it starts: (path, data, mode, uid)."""
        return (("etc/ssh/ssh_host_ed25519_key", self.host_key, 0o600, 0),
                ("etc/ssh/ssh_host_ed25519_key.pub", self.host_pub.encode() + b"\n", 0o644, 0),
                ("root/.ssh/authorized_keys", self.authorized_key.encode() + b"\n", 0o600, 0),
                ("opt/router/state/token", self.token.encode() + b"\n", 0o600, 0),
                ("opt/router/state/signing.pub", self.signing_pub.encode() + b"\n", 0o644, 0))


BARE_USER, BARE_UID = "deploy", 1000  # the login user of containers/bare/Dockerfile


@dataclass(frozen=True)
class BareFiles:
    """What `up --kind bare` puts into a bare node or the bastion: its host key and the login user's
    authorized key, as an operator provisions a server; nothing of deployctl."""

    host_key: bytes
    host_pub: str
    authorized_key: str

    def label_parts(self) -> tuple[str, ...]:
        """Return what the container's config label hashes besides the image and the node."""
        return ("bare", self.host_pub, self.authorized_key)

    def members(self) -> tuple[tuple[str, bytes, int, int], ...]:
        """Return the files put into the container before it starts: (path, data, mode, uid)."""
        return (("etc/ssh/ssh_host_ed25519_key", self.host_key, 0o600, 0),
                ("etc/ssh/ssh_host_ed25519_key.pub", self.host_pub.encode() + b"\n", 0o644, 0),
                (f"home/{BARE_USER}/.ssh/authorized_keys", self.authorized_key.encode() + b"\n", 0o600, BARE_UID))


def load_spec(path: Path) -> FleetSpec:
    """Read containers/compose.yaml; ConfigError on anything outside the subset the fleet uses."""
    doc = load_yaml(path)
    name = path.name
    if not isinstance(doc, dict) or not isinstance(doc.get("services"), dict) or not doc["services"]:
        raise ConfigError(f"{name}: services: should be a non-empty mapping")
    project = doc.get("name")
    if not isinstance(project, str) or not re.fullmatch(r"[a-z0-9][a-z0-9_-]*", project):
        raise ConfigError(f"{name}: name: should be a lowercase project name")
    images, contexts, nodes = set(), set(), []
    for svc, body in doc["services"].items():
        if not isinstance(body, dict):
            raise ConfigError(f"{name}: services/{svc}: should be a mapping")
        images.add(body.get("image"))
        build = body.get("build") or {}
        contexts.add(build.get("context", ".") if isinstance(build, dict) else None)
        ports = []
        for i, spec in enumerate(body.get("ports") or []):
            m = _PORT.match(str(spec))
            if not m:
                raise ConfigError(f"{name}: services/{svc}/ports/{i}: should be '127.0.0.1:HOST:CONTAINER'")
            ports.append((int(m.group(1)), int(m.group(2))))
        mode, command = _host_mode(name, svc, body, ports)
        nodes.append(NodeSpec(svc, f"{project}-{svc}", str(body.get("hostname", svc)), tuple(ports), mode, command))
    image = images.pop() if len(images) == 1 else None
    if not isinstance(image, str):
        raise ConfigError(f"{name}: services: every node should name the same image")
    folder = contexts.pop() if len(contexts) == 1 else None
    if not isinstance(folder, str):
        raise ConfigError(f"{name}: services: every node should have the same build context (a folder)")
    return FleetSpec(project, image, (path.parent / folder).resolve(), f"{project}-net", tuple(nodes))


def _host_mode(name: str, svc: str, body: dict, ports: list) -> tuple[str, tuple[str, ...]]:
    """Return a service's network_mode ("" or "host") and command; ConfigError outside that subset."""
    mode, command = body.get("network_mode", ""), body.get("command", [])
    if mode not in ("", "host"):
        raise ConfigError(f"{name}: services/{svc}/network_mode: should be 'host' or absent")
    if mode and ports:
        raise ConfigError(f"{name}: services/{svc}/ports: a service with network_mode host publishes no ports")
    if not isinstance(command, list) or not all(isinstance(a, (str, int)) for a in command):
        raise ConfigError(f"{name}: services/{svc}/command: should be a list of strings")
    return mode, tuple(str(a) for a in command)


def compose_text(nodes: int, project: str = "deployctl-fleet", first_ssh_port: int = 2201,
                 first_router_port: int = 8101, context: str = ".") -> str:
    """Return the YAML text of containers/compose.yaml for node1..nodeN (defaults, nodes=8: the committed file);
    ConfigError, one line, on a bad count, port range or project name. `context`: the image's build
    folder (containers/), relative to the compose file."""
    ports = fleet_ports(nodes, first_ssh_port, first_router_port)
    if not isinstance(project, str) or not _PROJECT.fullmatch(project):
        raise ConfigError(f"--project: should be a lowercase project name matching ^{_PROJECT.pattern}$, "
                          f"got {project!r}")
    body = "".join(_COMPOSE_NODE.format(name=name, ssh=ssh, router=router, context=context)
                   for name, ssh, router in ports)
    return f"{_COMPOSE_HEADER}name: {project}\nservices:\n{body}networks:\n  fleet: {{}}\n"


_BARE_HEADER = """\
# The bare test fleet: plain Debian servers deployctl did not make, and the bastion that
# reaches them. `deployctl fleet up --kind bare --nodes N` writes this file
# (fleetfiles.bare_compose_text) and fleet/bare.yaml, then creates the containers with the
# Docker SDK. Nodes publish on 127.0.0.1 only; the bastion runs with host networking, its
# sshd on 127.0.0.1:{bastion} only, and reaches the nodes on their published ports.
"""

_BARE_BASTION = """\
  bastion:
    image: deployctl/bare:latest
    build: {{context: {context}, dockerfile: Dockerfile}}
    network_mode: host
    command: ["/usr/sbin/sshd", "-D", "-e", "-f", "/etc/ssh/bastion_config", "-p", "{bastion}"]
"""

_BARE_NODE = """\
  {name}:
    image: deployctl/bare:latest
    build: {{context: {context}, dockerfile: Dockerfile}}
    hostname: {name}
    ports: ["127.0.0.1:{ssh}:22", "127.0.0.1:{router}:8080"]
    networks: [fleet]
"""


def bare_compose_text(nodes: int, project: str = "deployctl-bare", first_ssh_port: int = 2601,
                      first_router_port: int = 8601, bastion_port: int = 2600, context: str = "bare") -> str:
    """Return the YAML text of containers/compose-bare.yaml: the bastion and node1..nodeN of the bare image;
    ConfigError, one line, on a bad count, port or project name. `context`: containers/bare/, relative to
    the compose file."""
    ports = bare_ports(nodes, first_ssh_port, first_router_port, bastion_port)
    if not isinstance(project, str) or not _PROJECT.fullmatch(project):
        raise ConfigError(f"--project: should be a lowercase project name matching ^{_PROJECT.pattern}$, "
                          f"got {project!r}")
    body = _BARE_BASTION.format(context=context, bastion=bastion_port) + "".join(
        _BARE_NODE.format(name=name, ssh=ssh, router=router, context=context) for name, ssh, router in ports)
    return f"{_BARE_HEADER.format(bastion=bastion_port)}name: {project}\nservices:\n{body}networks:\n  fleet: {{}}\n"


def write_texts(texts: dict[Path, str]) -> None:
    """Write each text to its path, making folders; ConfigError, one line, naming a path that cannot be written."""
    for path, text in texts.items():
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        except OSError as exc:
            raise ConfigError(f"{path}: cannot write ({exc.strerror or exc})") from None
