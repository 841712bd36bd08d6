"""The inventory: strict YAML loading of fleet.yaml into frozen dataclasses, ssh_config resolved.

Every problem becomes one ConfigError line, ``"<file>: <path>: <problem>"``, before any node is contacted.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deployctl.config import sshconfig
from deployctl.config.fields import BECOME, HOST, IDENTITY, NAME, PORT, USER
from deployctl.config.schema import (
    CONTROL_RE,
    Invalid,
    integer,
    list_of,
    load_yaml,
    mapping,
    message,
    seconds,
    show,
    string,
)
from deployctl.errors import ConfigError


def default_inventory() -> Path:
    """The inventory when no -i is given: $DEPLOYCTL_INVENTORY, else fleet/fleet.yaml (cli/common.py and
    cli/fasthalt.py)."""
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
_SSH = mapping({"user": (USER, False, None), "connect_timeout": (seconds, False, 5.0),
                 "parallel": (integer(1, 256), False, 8), "ssh_config": (_ssh_config, False, None)})
_NODE = mapping({"name": (NAME, True, None), "host": (HOST, True, None), "ssh_port": (PORT, False, None),
                  "router_port": (PORT, True, None), "user": (USER, False, None),
                  "identity_file": (IDENTITY, False, None), "proxy_jump": (_proxy_jump, False, None),
                  "become": (BECOME, False, None)})
_INVENTORY = mapping({"fleet": (NAME, True, None), "ssh": (_SSH, False, _SSH({}, "ssh")),
                       "nodes": (list_of(_NODE), True, None)})


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
            user = USER(found["user"][0], f"{path}: ssh config User")
        if port is None and "port" in found:
            port = PORT(int(found["port"][0]) if found["port"][0].isdigit() else found["port"][0],
                         f"{path}: ssh config Port")
        identity = (sshconfig.expand(found["identityfile"][0], hostname, user, host)
                    if "identityfile" in found else None)
    except sshconfig.SSHConfigError as exc:
        raise Invalid(path, f"ssh config: {exc}") from None
    HOST(hostname, f"{path}: ssh config HostName for {host!r}")
    return hostname, port or 22, user, identity, found


def _jumps(spec: tuple, user: str, identity: str | None, config: Path | None, path: str,
           depth: int = 0) -> tuple[sshconfig.Jump, ...]:
    """Resolve each hop of a ProxyJump chain through ssh_config as ssh would (the first hop's own
    ProxyJump goes in front of it); a hop's user and key default to the node's."""
    hops: list[sshconfig.Jump] = []
    for i, (hop_user, host, port) in enumerate(spec):
        HOST(host, f"{path}: {host!r}")
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

