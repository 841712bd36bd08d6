"""Fabric, for setup work, refuses a host key that is not pinned, on a real node and at a real bastion."""

from __future__ import annotations

import dataclasses

import paramiko
import pytest
from test_bastion_path import BASTION_PORT, bastion  # noqa: F401 - the module fixture: the bare fleet's bastion

from deployctl.config.sshconfig import Jump
from deployctl.remote import fabricconn


def test_fabric_runs_on_a_pinned_node(ctx):
    node = ctx.nodes[0]
    conn = fabricconn.connection(node, ctx.state.client_key, ctx.state.known_hosts)
    with conn:
        assert conn.run("echo pinned", hide=True, in_stream=False).stdout.strip() == "pinned"


def test_fabric_refuses_an_unknown_host_key(ctx, tmp_path):
    node = ctx.nodes[0]
    known = tmp_path / "known_hosts"  # node1's key is not in it; every other node's is
    known.write_text("".join(line + "\n" for line in ctx.state.known_hosts.read_text().splitlines()
                             if not line.startswith(f"[{node.host}]:{node.ssh_port} ")))
    conn = fabricconn.connection(node, ctx.state.client_key, known)
    with pytest.raises(paramiko.SSHException, match="not found in known_hosts"):
        conn.open()
    assert not conn.is_connected
    assert known.read_text().count(f"[{node.host}]:{node.ssh_port} ") == 0  # nothing was added either


def test_fabric_through_the_bastion_refuses_its_unknown_key(ctx, bastion, tmp_path):  # noqa: F811
    node = dataclasses.replace(ctx.nodes[1], proxy_jump=(Jump("127.0.0.1", BASTION_PORT, "deploy"),))
    conn = fabricconn.connection(node, ctx.state.client_key, ctx.state.known_hosts)
    with conn:  # pinned everywhere: the node answers through the gateway
        assert conn.run("hostname", hide=True, in_stream=False).ok
    known = tmp_path / "known_hosts"
    known.write_text("".join(line + "\n" for line in ctx.state.known_hosts.read_text().splitlines()
                             if not line.startswith(f"[127.0.0.1]:{BASTION_PORT} ")))
    conn = fabricconn.connection(node, ctx.state.client_key, known)
    with pytest.raises(paramiko.SSHException, match=f"'\\[127.0.0.1\\]:{BASTION_PORT}' not found in known_hosts"):
        conn.open()
