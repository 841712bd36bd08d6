"""Bastions (sshconnect) and the routers' opener (routers): shared hop connections, errors naming the bastion.
Stand-ins for paramiko's client and transport: no sockets."""

from __future__ import annotations

import threading
from pathlib import Path

import paramiko
import pytest

from deployctl.config.inventory import Node
from deployctl.config.sshconfig import Jump
from deployctl.remote import routers, sshconnect
from deployctl.remote.channel import NodeError

OUTER, INNER = Jump("127.0.0.1", 3550, "deploy"), Jump("10.0.0.9", 22, "ops", "/keys/ops")


class Transport:
    def __init__(self, name: str, refuse: int | None = None):
        self.name, self.refuse, self.opened, self.active = name, refuse, [], True

    def is_active(self):
        return self.active

    def open_channel(self, kind, dest, src, timeout=None):
        if self.refuse:
            raise paramiko.ChannelException(self.refuse, "refused")
        self.opened.append((kind, dest))
        return Channel(self.name, dest)


class Channel:
    def __init__(self, via, dest):
        self.via, self.dest, self.timeout = via, dest, None

    def settimeout(self, t):
        self.timeout = t


class Client:
    def __init__(self, transport):
        self.transport, self.closed = transport, False

    def get_transport(self):
        return self.transport

    def close(self):
        self.closed = True


@pytest.fixture
def opened(monkeypatch):
    """Record every open_client call; each gives a client whose transport is named after the host."""
    calls = []
    refuse: dict[str, int] = {}
    lock = threading.Lock()

    def fake(host, port, user, key, known, timeout, sock=None):
        with lock:
            calls.append((host, port, user, str(key), sock and sock.dest))
        return Client(Transport(host, refuse.get(host)))

    monkeypatch.setattr(sshconnect, "open_client", fake)
    return calls, refuse


def test_one_connection_per_chain_shared_by_every_node(opened):
    calls, _ = opened
    b = sshconnect.Bastions(Path("/state/client"), Path("/state/known"), 3.0)
    chans = [b.tunnel((OUTER,), "127.0.0.1", 3500 + i) for i in range(8)]
    assert calls == [("127.0.0.1", 3550, "deploy", "/state/client", None)]
    assert [c.dest for c in chans] == [("127.0.0.1", 3500 + i) for i in range(8)]
    assert all(c.timeout == 3.0 for c in chans)


def test_a_chain_reaches_its_second_hop_through_the_first(opened):
    calls, _ = opened
    b = sshconnect.Bastions(Path("/state/client"), Path("/state/known"), 3.0)
    chan = b.tunnel((OUTER, INNER), "10.0.0.20", 22)
    assert calls == [("127.0.0.1", 3550, "deploy", "/state/client", None),
                     ("10.0.0.9", 22, "ops", "/keys/ops", ("10.0.0.9", 22))]
    assert (chan.via, chan.dest) == ("10.0.0.9", ("10.0.0.20", 22))


@pytest.mark.parametrize("code, reason, refused", [
    (1, "via bastion deploy@127.0.0.1:3550: forwarding refused", False),
    (2, "via bastion deploy@127.0.0.1:3550: cannot reach 127.0.0.1:3501 from there", True),
    (4, "via bastion deploy@127.0.0.1:3550: refused", False),
])
def test_refused_channels_name_the_bastion(opened, code, reason, refused):
    _, refuse = opened
    refuse["127.0.0.1"] = code
    b = sshconnect.Bastions(Path("/c"), Path("/k"), 3.0)
    with pytest.raises(NodeError) as info:
        b.tunnel((OUTER,), "127.0.0.1", 3501)
    assert (info.value.reason, info.value.refused) == (reason, refused)


def test_a_failed_bastion_is_named_and_tried_once(monkeypatch):
    tries = []

    def fail(*args, **kwargs):
        tries.append(args[0])
        raise NodeError("no pinned host key for 127.0.0.1:3550; refusing to connect", host_key=True)

    monkeypatch.setattr(sshconnect, "open_client", fail)
    b = sshconnect.Bastions(Path("/c"), Path("/k"), 3.0)
    for _ in range(3):
        with pytest.raises(NodeError) as info:
            b.tunnel((OUTER,), "127.0.0.1", 3501)
        assert info.value.reason == ("bastion deploy@127.0.0.1:3550: no pinned host key for 127.0.0.1:3550; "
                                     "refusing to connect") and info.value.host_key
    assert tries == ["127.0.0.1"]


def test_a_dropped_bastion_is_not_reopened_within_a_command(opened):
    calls, _ = opened
    b = sshconnect.Bastions(Path("/c"), Path("/k"), 3.0)
    b.tunnel((OUTER,), "127.0.0.1", 3501)
    b._clients[(OUTER,)].transport.active = False
    with pytest.raises(NodeError, match="bastion deploy@127.0.0.1:3550: connection lost earlier in this command"):
        b.tunnel((OUTER,), "127.0.0.1", 3502)
    assert len(calls) == 1


def test_close_closes_every_hop(opened):
    b = sshconnect.Bastions(Path("/c"), Path("/k"), 3.0)
    b.tunnel((OUTER, INNER), "10.0.0.20", 22)
    clients = list(b._clients.values())
    b.close()
    b.close()
    assert all(c.closed for c in clients) and len(clients) == 2


@pytest.mark.parametrize("code, error, down", [
    (2, "router not running at 127.0.0.1:9501: via bastion deploy@127.0.0.1:3550: cannot reach 127.0.0.1:9501 from "
        "there", True),
    (1, "router unreachable at 127.0.0.1:9501: via bastion deploy@127.0.0.1:3550: forwarding refused", False),
])
def test_router_requests_through_a_refusing_bastion(opened, code, error, down):
    _, refuse = opened
    refuse["127.0.0.1"] = code
    b = sshconnect.Bastions(Path("/c"), Path("/k"), 3.0)
    node = Node("node1", "127.0.0.1", 3501, 9501, "root", proxy_jump=(OUTER,))
    answer = routers.request(node, "GET", "/health",
                          opener=lambda n, t: b.socket(n.proxy_jump, n.host, n.router_port, t))
    assert (answer.status, answer.error, answer.down) == (0, error, down)


def test_the_opener_carries_requests_to_nodes_behind_a_bastion():
    used = []

    def opener(node, timeout):
        used.append((node.name, timeout))
        raise OSError("via bastion x: stand-in")

    behind = Node("behind", "127.0.0.1", 2, 2, "root", proxy_jump=(OUTER,))
    answers = routers.health([behind], opener=opener, timeout=1.5)
    assert used == [("behind", 1.5)]
    assert answers["behind"].error == "router unreachable at 127.0.0.1:2: via bastion x: stand-in"
