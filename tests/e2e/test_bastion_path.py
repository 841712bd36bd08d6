"""The hot path through a bastion: rollout, verify and halt of the eight nodes via the bare fleet's bastion.

The bastion is tests/e2e/barefleet.py's (host networking, sshd on 127.0.0.1 only, user deploy with the
fleet's client key); the nodes are the ordinary fleet's, logged into as root through it. SSH goes over a
direct-tcpip channel of the one shared bastion connection, and so does the routers' HTTP. With the
bastion's forwarding off, every command fails naming the bastion: the proof the bastion is used.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from barefleet import bare_fleet

from deployctl import api
from deployctl.errors import UnreachableError
from deployctl.remote import routers

ROOT = Path(__file__).resolve().parents[2]
BASTION_PORT = int(os.environ.get("DEPLOYCTL_E2E_BASTION_PORT", "3550"))
PROJECT = os.environ.get("DEPLOYCTL_E2E_BASTION_PROJECT", "deployctl-sshpath-bare")
VIA = f"via bastion deploy@127.0.0.1:{BASTION_PORT}"


@pytest.fixture(scope="module")
def bastion(ctx, base_release, tmp_path_factory):
    """A bare fleet of one node for its bastion, sharing the ordinary fleet's state folder (client key,
    known_hosts: the bastion's key is pinned there, merged with the nodes')."""
    first = BASTION_PORT + 11
    with bare_fleet(tmp_path_factory.mktemp("bare"), PROJECT, 1, first, first + 6000, BASTION_PORT,
                    pin_nodes=False, state=ctx.state_dir) as handle:
        yield handle


def _through(ctx, folder: Path, jump: str):
    """A context on the same eight nodes, each with proxy_jump `jump`."""
    lines = ["fleet: test-fleet", "ssh:", "  user: root", "nodes:"]
    lines += [f"  - {{name: {n.name}, host: {n.host}, ssh_port: {n.ssh_port}, router_port: {n.router_port}, "
              f"proxy_jump: '{jump}'}}" for n in ctx.nodes]
    (folder / "fleet.yaml").write_text("\n".join(lines) + "\n")
    return api.open_context(folder / "fleet.yaml", ROOT / "playbooks" / "router.yaml", ctx.state_dir)


@pytest.fixture
def via(ctx, bastion, tmp_path):
    """A context on the same eight nodes, each with proxy_jump through the bastion."""
    through = _through(ctx, tmp_path, f"deploy@127.0.0.1:{BASTION_PORT}")
    yield through
    through.close()


def test_a_two_hop_chain(ctx, bastion, tmp_path, base_release):
    """The bastion twice (it listens on the host's 127.0.0.1, so from itself it reaches itself): the second
    hop is opened through a channel of the first, the nodes through the second."""
    hop = f"deploy@127.0.0.1:{BASTION_PORT}"
    chained = _through(ctx, tmp_path, f"{hop},{hop}")
    try:
        assert len(chained.nodes[0].proxy_jump) == 2
        assert api.verify(chained, base_release.digest).ok
        assert len(chained.bastions()._clients) == 2  # one per hop, shared by the eight nodes
    finally:
        chained.close()


def test_verify_and_halt_through_the_bastion(ctx, via, base_release):
    assert all(n.proxy_jump for n in via.nodes)
    report = api.verify(via, base_release.digest)
    assert report.ok, report
    start = time.monotonic()
    done = api.halt(via)
    took = time.monotonic() - start
    assert set(done.values()) == {"halted"} and len(done) == 8
    assert all(a.body["halted"] is True for a in routers.health(ctx.nodes).values())  # read back directly
    api.resume(via, base_release.digest)
    assert all(a.body["halted"] is False for a in routers.health(ctx.nodes).values())
    print(f"halt of 8 nodes through the bastion: {took:.3f}s (bastion handshake included)")


def test_one_bastion_connection_serves_all_nodes(via, base_release):
    with via.ssh() as fleet:
        assert all(r.ok for r in fleet.connect().values())
        assert len(via.bastions()._clients) == 1
    answers = via.routers.health(via.nodes)
    assert all(a.ok and a.body["digest"] == base_release.digest for a in answers.values()), answers
    assert len(via.bastions()._clients) == 1


def test_rollout_through_the_bastion(ctx, via, make_release):
    art = make_release("9.1.0-bastion")
    api.rollout(via, art.path)
    assert all(a.body["digest"] == art.digest and a.body["gate"] == "open" for a in routers.health(ctx.nodes).values())
    assert api.verify(ctx, art.digest).ok  # read back directly, not through the bastion


def test_forwarding_off_fails_naming_the_bastion(ctx, bastion, via, base_release):
    bastion.set_forwarding(False)
    try:
        with via.ssh() as fleet:
            results = fleet.connect()
        assert {r.error for r in results.values()} == {f"{VIA}: forwarding refused"}
        answers = via.routers.health(via.nodes)
        assert all(VIA in a.reason() and "forwarding refused" in a.reason() for a in answers.values()), answers
        assert not api.verify(via, base_release.digest).ok
        with pytest.raises(UnreachableError) as info:
            api.halt(via)  # neither HTTP nor the on-disk fallback over SSH gets through
        assert f"{VIA}: forwarding refused" in str(info.value) and "\n" not in str(info.value)
    finally:
        bastion.set_forwarding(True)
    assert all(not a.body["halted"] for a in routers.health(ctx.nodes).values())


def test_a_missing_identity_file_is_named(ctx, tmp_path):
    node = ctx.nodes[0]
    (tmp_path / "fleet.yaml").write_text(
        f"fleet: f\nnodes:\n  - {{name: {node.name}, host: {node.host}, ssh_port: {node.ssh_port}, "
        f"router_port: {node.router_port}, identity_file: no/such/key}}\n")
    bad = api.open_context(tmp_path / "fleet.yaml", ROOT / "playbooks" / "router.yaml", ctx.state_dir)
    with bad.ssh() as fleet:
        assert fleet.connect()[node.name].error == f"cannot read identity file {tmp_path / 'no/such/key'}"
