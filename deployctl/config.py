"""Inventory and playbook: strict YAML loading into frozen dataclasses.

Every problem becomes one ConfigError line, ``"<file>: <path>: <problem>"``, before any node is contacted.
"""

from __future__ import annotations

import ipaddress
import os
import posixpath
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any


from deployctl import sshconfig
from deployctl.errors import ConfigError
from deployctl.schema import (CONTROL_RE, Invalid, argv, integer, list_of, load_yaml, mapping, message, seconds,
                              show, string)

NAME_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")
USER_RE = re.compile(r"[a-z_][a-z0-9_-]{0,31}")
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOSTNAME_RE = re.compile(rf"(?=.{{1,253}}\Z){_LABEL}(?:\.{_LABEL})*")
_ROOT_RE = re.compile(r"/[A-Za-z0-9._/-]*")
_URL_PATH_RE = re.compile(r"/[A-Za-z0-9._~/%-]*")


def default_inventory() -> Path:
    """The inventory when no -i is given: $DEPLOYCTL_INVENTORY, else fleet/fleet.yaml (cli.py and quick.py)."""
    return Path(os.environ.get("DEPLOYCTL_INVENTORY") or "fleet/fleet.yaml")


@dataclass(frozen=True)
class Node:
    """One node: where to reach it over SSH and where its router listens."""
    name: str
    host: str
    ssh_port: int
    router_port: int
    user: str
    identity_file: str | None = None  # None: the controller's key in the state folder
    proxy_jump: tuple[sshconfig.Jump, ...] = ()  # bastions, first hop first (OpenSSH's order)
    become: str | None = None  # "sudo": the login user is not root and uses sudo for service work


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
    the same SSH command as the switch; otherwise `restart`/`stop` argv run. `manager` (supervisord or
    systemd) says which service manager `enroll` installs the service under, as `unit`, listening on
    `port`; a node whose login user is not root restarts it with `sudo -n` through that manager.
    """
    restart: tuple[str, ...] | None
    stop: tuple[str, ...] | None
    health_path: str
    supervisor: Supervisor | None = None
    manager: str | None = None
    unit: str | None = None
    port: int = 8080

    @property
    def manager_name(self) -> str:
        """The service manager: as the playbook says, else supervisord."""
        return self.manager or "supervisord"

    @property
    def unit_name(self) -> str:
        """The supervisord program or systemd unit: `unit`, else the supervisor program, else `router`."""
        return self.unit or (self.supervisor.program if self.supervisor else "router")


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
    flag_registry: Path | None = None  # playbooks/flags.yaml: every flag the service has ever had
    require_approval: bool = False  # rollout needs a plan approved by a second person (`deployctl approve`)
    approvers: tuple["Approver", ...] = ()
    breakers: "Breakers | None" = None  # what `deployctl watch` halts the fleet on; None: no breaker


@dataclass(frozen=True)
class Breakers:
    """The playbook's circuit breakers: `deployctl watch` halts the whole fleet when one trips (None: off)."""
    child_orders_per_parent: float | None = None  # a node's child orders per parent order, over one sweep
    child_orders_per_s: float | None = None       # a node's child orders per second
    gate_open_while_mixed: bool = False           # a gate open anywhere while the nodes' digests differ
    errors_per_s: float | None = None             # a node's errors per second
    unreachable_gate_open_s: float | None = None  # a node unreachable this long while its gate was open


@dataclass(frozen=True)
class Approver:
    """Someone whose ed25519 key may approve a rollout plan: a name for the journal, the public key in hex."""
    name: str
    key: str


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

_identity = string(lambda s: s.strip() and not CONTROL_RE.search(s), "a key file path")
_become = string(lambda s: s == "sudo", "'sudo'")


def _proxy_jump(value: Any, path: str) -> tuple:
    text = string()(value, path)
    try:
        return sshconfig.parse_jump(text)
    except ValueError:
        raise Invalid(path, "should be [user@]host[:port], comma-separated for a chain, or none; "
                            f"got {show(text)}") from None


def _ssh_config(value: Any, path: str) -> str | None:
    if value is True:
        return "~/.ssh/config"
    if value is False:
        return None
    return string(lambda s: s.strip() and not CONTROL_RE.search(s), "true, false or a file path")(value, path)


# None means "not written": ssh_config (when read) fills it, else the built-in default.
_SSH = mapping({"user": (_user, False, None), "connect_timeout": (seconds, False, 5.0),
                 "parallel": (integer(1, 256), False, 8), "ssh_config": (_ssh_config, False, None)})
_NODE = mapping({"name": (_name, True, None), "host": (_host, True, None), "ssh_port": (_port, False, None),
                  "router_port": (_port, True, None), "user": (_user, False, None),
                  "identity_file": (_identity, False, None), "proxy_jump": (_proxy_jump, False, None),
                  "become": (_become, False, None)})
_INVENTORY = mapping({"fleet": (_name, True, None), "ssh": (_SSH, False, _SSH({}, "ssh")),
                       "nodes": (list_of(_NODE), True, None)})
MANAGERS = ("supervisord", "systemd")
_manager = string(MANAGERS.__contains__, "one of " + ", ".join(MANAGERS))
_SUPERVISOR = mapping({"program": (_name, True, None),
                        "socket": (_install_root, False, "/var/run/supervisor.sock")}, Supervisor)


def _service(value: Any, path: str) -> Service:
    service = mapping({"restart": (argv, False, None), "stop": (argv, False, None),
                        "health_path": (_health_path, True, None), "supervisor": (_SUPERVISOR, False, None),
                        "manager": (_manager, False, None), "unit": (_name, False, None),
                        "port": (_port, False, 8080)},
                       Service)(value, path)
    if service.supervisor is None and service.manager is None and (service.restart is None or service.stop is None):
        raise Invalid(path, "needs `supervisor`, `manager`, or both `restart` and `stop`")
    if service.manager == "systemd" and service.supervisor is not None:
        raise Invalid(f"{path}/supervisor", "only for manager supervisord")
    if service.supervisor and service.unit and service.unit != service.supervisor.program:
        raise Invalid(f"{path}/unit", f"should be the supervisor program {service.supervisor.program!r}")
    return service


_SERVICE = _service


def _boolean(value: Any, path: str) -> bool:
    if not isinstance(value, bool):
        raise Invalid(path, "should be true or false")
    return value


_APPROVER = mapping({"name": (_name, True, None),
                      "key": (string(re.compile(r"[0-9a-f]{64}").fullmatch, "an ed25519 public key in 64 lowercase "
                                     "hex digits (the .pub `deployctl keygen` writes)"), True, None)}, Approver)
_TIMEOUTS = mapping({"connect": (seconds, False, 5.0), "command": (seconds, False, 60.0),
                      "health": (seconds, False, 20.0), "rollout": (seconds, False, 600.0)}, Timeouts)
_BREAKERS = mapping({"child_orders_per_parent": (seconds, False, None), "child_orders_per_s": (seconds, False, None),
                     "gate_open_while_mixed": (_boolean, False, False), "errors_per_s": (seconds, False, None),
                     "unreachable_gate_open_s": (seconds, False, None)}, Breakers)

_PLAYBOOK = mapping({
    "name": (_name, True, None), "source": (_source, True, None), "install_root": (_install_root, True, None),
    "keep_releases": (integer(2), True, None), "service": (_SERVICE, True, None),
    "timeouts": (_TIMEOUTS, False, _TIMEOUTS({}, "timeouts")), "min_free_mb": (integer(0), False, 64),
    "flag_registry": (_source, False, None), "require_approval": (_boolean, False, False),
    "approvers": (list_of(_APPROVER), False, ()), "breakers": (_BREAKERS, False, None),
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


def _config_file(value: str | None, inventory: Path) -> Path | None:
    if value is None:
        return None
    file = Path(value).expanduser()
    return file if file.is_absolute() else inventory.parent / file


def _lookup(config: Path | None, host: str, path: str) -> dict[str, list[str]]:
    if config is None:
        return {}
    try:
        return sshconfig.lookup(config, host)
    except sshconfig.SSHConfigError as exc:
        raise Invalid(path, f"ssh config: {exc}") from None


def _resolve(host: str, port: int | None, user: str | None, config: Path | None, path: str
             ) -> tuple[str, int, str | None, str | None, dict[str, list[str]]]:
    """Return (hostname, port, user, identity file, options) for `host`: written values win over ssh_config's."""
    found = _lookup(config, host, path)
    hostname = host
    try:
        if "hostname" in found:
            hostname = sshconfig.expand(found["hostname"][0], host, user, host)
        if user is None and "user" in found:
            user = _user(found["user"][0], f"{path}: ssh config User")
        if port is None and "port" in found:
            port = _port(int(found["port"][0]) if found["port"][0].isdigit() else found["port"][0],
                         f"{path}: ssh config Port")
        identity = (sshconfig.expand(found["identityfile"][0], hostname, user, host)
                    if "identityfile" in found else None)
    except sshconfig.SSHConfigError as exc:
        raise Invalid(path, f"ssh config: {exc}") from None
    _host(hostname, f"{path}: ssh config HostName for {host!r}")
    return hostname, port or 22, user, identity, found


def _jumps(spec: tuple, user: str, identity: str | None, config: Path | None, path: str,
           depth: int = 0) -> tuple[sshconfig.Jump, ...]:
    """Resolve each hop of a ProxyJump chain through ssh_config as ssh would (the first hop's own
    ProxyJump goes in front of it); a hop's user and key default to the node's."""
    hops: list[sshconfig.Jump] = []
    for i, (hop_user, host, port) in enumerate(spec):
        _host(host, f"{path}: {host!r}")
        hostname, port, hop_user, hop_key, found = _resolve(host, port, hop_user, config, path)
        if i == 0 and "proxyjump" in found:
            if depth > 8:
                raise Invalid(path, f"ssh config: ProxyJump of {host!r} loops")
            hops += _jumps(_proxy_jump(found["proxyjump"][0], f"{path}: ssh config ProxyJump of {host!r}"),
                           user, identity, config, path, depth + 1)
        hops.append(sshconfig.Jump(hostname, port, hop_user or user, hop_key or identity))
    return tuple(hops)


def _node(n: dict, fleet_user: str | None, config: Path | None, folder: Path, path: str) -> Node:
    """Build one Node: the node's written fields, then the fleet's `ssh.user`, then ssh_config, then defaults."""
    hostname, port, user, identity, found = _resolve(n["host"], n["ssh_port"], n["user"] or fleet_user, config,
                                                     f"{path}/host")
    user = user or "root"
    if n["identity_file"] is not None:
        identity = str(folder / Path(n["identity_file"]).expanduser())
    spec = n["proxy_jump"]
    if spec is None and "proxyjump" in found:
        spec = _proxy_jump(found["proxyjump"][0], f"{path}/host: ssh config ProxyJump")
    jumps = _jumps(spec or (), user, identity, config, f"{path}/proxy_jump")
    return Node(n["name"], hostname, port, n["router_port"], user, identity, jumps, n["become"])


def load_inventory(path: Path) -> Inventory:
    """Return the validated inventory in `path`; ConfigError naming file, path and problem otherwise."""
    path = Path(path).absolute()
    raw = load_yaml(path)
    try:
        doc = _INVENTORY(raw, "")
        ssh = doc["ssh"]
        config = _config_file(ssh["ssh_config"], path)
        nodes = tuple(_node(n, ssh["user"], config, path.parent, f"nodes/{i}") for i, n in enumerate(doc["nodes"]))
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
        if doc["require_approval"] and not doc["approvers"]:
            raise Invalid("approvers", "missing: require_approval needs at least one approver")
    except Invalid as exc:
        raise ConfigError(message(path.name, exc.path, exc.problem)) from None
    source = (path.parent / doc.pop("source")).resolve()
    registry = doc.pop("flag_registry")
    return Playbook(source=source, path=path, flag_registry=(path.parent / registry).resolve() if registry else None,
                    **doc)


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
# `deployctl fleet up --kind bare --nodes N` writes this file (config.bare_inventory_text)
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
