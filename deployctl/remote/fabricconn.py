"""The one place that makes a Fabric Connection to a node, for one-off setup work (enroll).

Rollout, verify and halt never come here (they use sshconnect.py's paramiko client, without
Fabric's and invoke's import cost). Each Connection, and each gateway Connection for the node's
bastions, checks host keys against our pinned known_hosts only: Fabric's Connection installs
paramiko's AutoAddPolicy in its __init__, which is replaced by a RejectPolicy here, after
construction and before open. Fabric reads no ssh_config file itself: the inventory already
resolved HostName, Port, User, IdentityFile and ProxyJump (config/inventory.py, through config/sshconfig.py),
so the two readings can never disagree.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from deployctl.config.inventory import Node
from deployctl.remote import sshconnect


def connection(node: Node, client_key: Path, known_hosts: Path, connect_timeout: float = 5.0,
               overrides: dict[str, Any] | None = None):
    """Return an unopened fabric Connection to `node` (through its proxy_jump chain, each hop a gateway
    Connection) that refuses any host key not pinned in `known_hosts`. `overrides` go to fabric's Config
    (e.g. {"sudo": {"password": ...}}). Opening it raises paramiko's SSHException for an unknown key."""
    gateway = None
    for hop in node.proxy_jump:  # first hop first: each later hop is reached through the one before
        gateway = _pinned(hop.host, hop.port, hop.user or node.user, hop.identity_file,
                          client_key, known_hosts, connect_timeout, overrides, gateway)
    return _pinned(node.host, node.ssh_port, node.user, node.identity_file, client_key, known_hosts,
                   connect_timeout, overrides, gateway)


def _pinned(host: str, port: int, user: str, identity: str | None, client_key: Path, known_hosts: Path,
            timeout: float, overrides: dict[str, Any] | None, gateway):
    import fabric

    paramiko = sshconnect.import_paramiko()
    # An explicit, empty SSHConfig: Fabric then reads neither ~/.ssh/config nor /etc/ssh/ssh_config.
    config = fabric.Config(ssh_config=paramiko.SSHConfig(), overrides=overrides or {})
    conn = fabric.Connection(
        host, user=user, port=port, config=config, connect_timeout=max(1, round(timeout)),
        gateway=gateway if gateway is not None else False,
        connect_kwargs={"key_filename": str(identity or client_key), "look_for_keys": False, "allow_agent": False},
    )
    conn.client.set_missing_host_key_policy(paramiko.RejectPolicy())  # Fabric set AutoAddPolicy
    conn.client.load_host_keys(str(known_hosts))
    return conn

