"""Terrapin (CVE-2023-48795, FAULTS.md row 16) on the real nodes: the key exchange deployctl negotiates is
strict, read back from the paramiko Transport after connecting, on every node."""

from __future__ import annotations

import socket

from deployctl.remote import sshconnect


def test_every_connection_negotiates_strict_kex(ctx):
    for node in ctx.nodes:
        client = sshconnect.open_client(node.host, node.ssh_port, node.user, ctx.state.client_key,
                                        ctx.state.known_hosts, 10)
        try:
            transport = client.get_transport()
            assert transport.is_authenticated()
            assert transport.advertise_strict_kex is True, node.name
            assert transport.agreed_on_strict_kex is True, node.name  # both sides: the sequence numbers reset
        finally:
            client.close()


def test_the_reading_is_not_vacuous_a_client_without_strict_kex_does_not_agree(ctx):
    """The same read on a Transport told not to offer strict kex says False: the attribute reflects the
    negotiation, it is not always True."""
    paramiko = sshconnect.import_paramiko()
    node = ctx.nodes[0]
    sock = socket.create_connection((node.host, node.ssh_port), timeout=10)
    transport = paramiko.Transport(sock, strict_kex=False)
    try:
        transport.start_client(timeout=10)
        assert transport.agreed_on_strict_kex is False
    finally:
        transport.close()

