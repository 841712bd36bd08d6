"""Inventory and playbook: strict YAML loading into frozen dataclasses.

Every problem becomes one ConfigError line, ``"<file>: <path>: <problem>"``, before any node is contacted.
"""

from __future__ import annotations

import ipaddress
import posixpath
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any


from deployctl.errors import ConfigError
from deployctl.schema import (CONTROL_RE, Invalid, argv, integer, list_of, load_yaml, mapping, message, seconds,
                              show, string)

NAME_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")
USER_RE = re.compile(r"[a-z_][a-z0-9_-]{0,31}")
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOSTNAME_RE = re.compile(rf"(?=.{{1,253}}\Z){_LABEL}(?:\.{_LABEL})*")
_ROOT_RE = re.compile(r"/[A-Za-z0-9._/-]*")
_URL_PATH_RE = re.compile(r"/[A-Za-z0-9._~/%-]*")


@dataclass(frozen=True)
class Node:
    """One node: where to reach it over SSH and where its router listens."""
    name: str
    host: str
    ssh_port: int
    router_port: int
    user: str


@dataclass(frozen=True)
class Inventory:
    """The fleet: every node, plus how to connect to them."""
    fleet: str
    nodes: tuple[Node, ...]
    connect_timeout: float
    parallel: int
    path: Path


@dataclass(frozen=True)
class Supervisor:
    """A supervisord program, restarted by the node agent through supervisord's unix socket."""
    program: str
    socket: str


@dataclass(frozen=True)
class Service:
    """How the service is restarted and stopped, and where it reports health.

    With `supervisor` set the node agent restarts it over supervisord's socket in
    the same SSH command as the switch; otherwise `restart`/`stop` argv run.
    """
    restart: tuple[str, ...] | None
    stop: tuple[str, ...] | None
    health_path: str
    supervisor: Supervisor | None = None


@dataclass(frozen=True)
class Timeouts:
    """Seconds allowed to connect, to run one remote command, for a node to turn healthy, and for a
    whole rollout from preflight to open-gate (its revert, once due, is not cut short by it)."""
    connect: float
    command: float
    health: float
    rollout: float = 600.0


@dataclass(frozen=True)
class Playbook:
    """What to deploy (source folder), where (install root), and how to run and check it."""
    name: str
    source: Path
    install_root: str
    keep_releases: int
    service: Service
    timeouts: Timeouts
    min_free_mb: int
    path: Path


def _is_host(text: str) -> bool:
    # All-numeric dotted text must be a real IPv4 address, not a hostname; no IPv6 zone ids ("%eth0").
    if re.fullmatch(r"[0-9.]+", text) or (":" in text and re.fullmatch(r"[0-9A-Fa-f:.]+", text)):
        try:
            return bool(ipaddress.ip_address(text))
        except ValueError:
            return False
    return bool(_HOSTNAME_RE.fullmatch(text))


def _is_root(text: str) -> bool:
    return (bool(_ROOT_RE.fullmatch(text)) and text != "/" and posixpath.normpath(text) == text
            and ".." not in text.split("/"))


_name = string(NAME_RE.fullmatch, f"a name matching ^{NAME_RE.pattern}$")
_user = string(USER_RE.fullmatch, f"a user name matching ^{USER_RE.pattern}$")
_host = string(_is_host, "a hostname or IP address")
_port = integer(1, 65535)
_install_root = string(_is_root, "an absolute normalized path of [A-Za-z0-9._/-]")
_health_path = string(_URL_PATH_RE.fullmatch, "a URL path starting with '/'")
_source = string(lambda s: s and not CONTROL_RE.search(s), "a folder path")

_SSH = mapping({"user": (_user, False, "root"), "connect_timeout": (seconds, False, 5.0),
                 "parallel": (integer(1, 256), False, 8)})
_NODE = mapping({"name": (_name, True, None), "host": (_host, True, None), "ssh_port": (_port, False, 22),
                  "router_port": (_port, True, None), "user": (_user, False, None)})  # user None: ssh's user
_INVENTORY = mapping({"fleet": (_name, True, None), "ssh": (_SSH, False, _SSH({}, "ssh")),
                       "nodes": (list_of(_NODE), True, None)})
_SUPERVISOR = mapping({"program": (_name, True, None),
                        "socket": (_install_root, False, "/var/run/supervisor.sock")}, Supervisor)


def _service(value: Any, path: str) -> Service:
    service = mapping({"restart": (argv, False, None), "stop": (argv, False, None),
                        "health_path": (_health_path, True, None), "supervisor": (_SUPERVISOR, False, None)},
                       Service)(value, path)
    if service.supervisor is None and (service.restart is None or service.stop is None):
        raise Invalid(path, "needs `supervisor`, or both `restart` and `stop`")
    return service


_SERVICE = _service
_TIMEOUTS = mapping({"connect": (seconds, False, 5.0), "command": (seconds, False, 60.0),
                      "health": (seconds, False, 20.0), "rollout": (seconds, False, 600.0)}, Timeouts)
_PLAYBOOK = mapping({
    "name": (_name, True, None), "source": (_source, True, None), "install_root": (_install_root, True, None),
    "keep_releases": (integer(2), True, None), "service": (_SERVICE, True, None),
    "timeouts": (_TIMEOUTS, False, _TIMEOUTS({}, "timeouts")), "min_free_mb": (integer(0), False, 64),
})


def _check_unique(nodes: tuple[Node, ...]) -> None:
    names: set[str] = set()
    used: dict[tuple[str, int], str] = {}  # (host, port) -> the field that claimed it first
    for i, node in enumerate(nodes):
        if node.name in names:
            raise Invalid(f"nodes/{i}/name", f"duplicate node name {node.name!r}")
        names.add(node.name)
        for field in ("ssh_port", "router_port"):
            key = (node.host.lower(), getattr(node, field))
            if key in used:
                host = f"[{node.host}]" if ":" in node.host else node.host
                raise Invalid(f"nodes/{i}/{field}", f"{host}:{key[1]} is already used by {used[key]}")
            used[key] = f"nodes/{i}/{field}"


def load_inventory(path: Path) -> Inventory:
    """Return the validated inventory in `path`; ConfigError naming file, path and problem otherwise."""
    path = Path(path).absolute()
    raw = load_yaml(path)
    try:
        doc = _INVENTORY(raw, "")
        ssh = doc["ssh"]
        nodes = tuple(Node(n["name"], n["host"], n["ssh_port"], n["router_port"], n["user"] or ssh["user"])
                      for n in doc["nodes"])
        _check_unique(nodes)
    except Invalid as exc:
        raise ConfigError(message(path.name, exc.path, exc.problem)) from None
    return Inventory(doc["fleet"], nodes, ssh["connect_timeout"], ssh["parallel"], path)


def load_playbook(path: Path) -> Playbook:
    """Return the validated playbook in `path`, its source resolved against the file's folder; ConfigError otherwise."""
    path = Path(path).absolute()
    raw = load_yaml(path)
    try:
        doc = _PLAYBOOK(raw, "")
    except Invalid as exc:
        raise ConfigError(message(path.name, exc.path, exc.problem)) from None
    source = (path.parent / doc.pop("source")).resolve()
    return Playbook(source=source, path=path, **doc)


MAX_NODES = 64  # `fleet up --nodes` upper bound: each node is a container with 256 MB on this machine

_INVENTORY_HEADER = """\
# The test fleet: N nodes, each a container on this machine. `deployctl fleet up
# --nodes N` writes this file (config.inventory_text) and containers/compose.yaml.
#
# Every node publishes its SSH server and its router on consecutive ports of
# 127.0.0.1 (see containers/compose.yaml). deployctl reads this file with
# deployctl/config.py: unknown or duplicate keys are errors, node names must
# be unique, and no host:port pair may be used twice.
#
#   fleet                 name of the fleet ([a-z0-9][a-z0-9_-]*)
#   ssh.user              default login user; a node may override it with `user`
#   ssh.connect_timeout   seconds to wait for an SSH connection (number > 0)
#   ssh.parallel          at most this many nodes are worked on at once (1..256)
#   nodes[].ssh_port      SSH port on the host (default 22)
#   nodes[].router_port   port where the node's router answers HTTP
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
