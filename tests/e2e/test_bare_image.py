"""The bare fleet (`fleet up --kind bare`): three plain servers deployctl did not make and their bastion, checked
with plain paramiko through the bastion (a direct-tcpip channel over the bastion's transport, written here).

Its own project and ports (nodes 3751-3753 / 9751-9753, bastion 3750), beside the fleet the other e2e tests use,
which this module does not need: the autouse `fleet` fixture is overridden below.
"""

from __future__ import annotations

import paramiko
import pytest
from barefleet import SUDO_PASSWORD, USER, BareFleetHandle, bare_fleet

from deployctl.state import keys

NODES = ("node1", "node2", "node3")


@pytest.fixture(autouse=True)
def fleet():
    """No ordinary fleet here (conftest's autouse fixture of this name brings it up)."""
    yield


@pytest.fixture(scope="module")
def bare(tmp_path_factory) -> BareFleetHandle:
    with bare_fleet(tmp_path_factory.mktemp("bare"), "deployctl-e2e-bare", nodes=3, first_ssh_port=3751,
                    first_router_port=9751, bastion_port=3750) as handle:
        yield handle


def client(bare: BareFleetHandle, user: str = USER) -> paramiko.SSHClient:
    """An SSHClient that trusts only the state folder's pinned host keys."""
    c = paramiko.SSHClient()
    c.load_host_keys(str(bare.known_hosts))
    c.set_missing_host_key_policy(paramiko.RejectPolicy())
    return c


def bastion(bare: BareFleetHandle, user: str = USER) -> paramiko.SSHClient:
    c = client(bare)
    c.connect("127.0.0.1", bare.fleet.bastion_port, username=user, key_filename=str(bare.client_key),
              look_for_keys=False, allow_agent=False, timeout=10, banner_timeout=10, auth_timeout=10)
    return c


def through(bare: BareFleetHandle, jump: paramiko.SSHClient, node: str, user: str = USER) -> paramiko.SSHClient:
    """Log into `node` over a direct-tcpip channel of the bastion's transport to 127.0.0.1:<its SSH port>."""
    port = bare.fleet.nodes[node][0]
    channel = jump.get_transport().open_channel("direct-tcpip", ("127.0.0.1", port), ("127.0.0.1", 0), timeout=10)
    c = client(bare)
    c.connect("127.0.0.1", port, username=user, key_filename=str(bare.client_key), sock=channel,
              look_for_keys=False, allow_agent=False, timeout=10, banner_timeout=10, auth_timeout=10)
    return c


def run(c: paramiko.SSHClient, command: str, stdin: str | None = None) -> tuple[int, str, str]:
    i, o, e = c.exec_command(command, timeout=20)
    if stdin is not None:
        i.write(stdin)
        i.channel.shutdown_write()
    return o.channel.recv_exit_status(), o.read().decode(), e.read().decode()


def test_up_writes_an_inventory_of_deploy_users_behind_the_bastion(bare):
    text = bare.inventory.read_text()
    for node, (ssh, router) in bare.fleet.nodes.items():
        assert (f"  - {{name: {node}, host: 127.0.0.1, ssh_port: {ssh}, router_port: {router}, user: deploy, "
                f"become: sudo, proxy_jump: 'deploy@127.0.0.1:3750'}}") in text.splitlines()
    assert sorted(bare.fleet.nodes) == list(NODES)
    assert [(r["node"], r["container"], r["ssh"], r["sshd"]) for r in bare.status()] == [
        ("bastion", "running", "127.0.0.1:3750", True)] + [
        (n, "running", f"127.0.0.1:{3750 + i}", True) for i, n in enumerate(NODES, 1)]


def test_deploy_logs_in_through_the_bastion_and_sudo_needs_the_password(bare):
    with bastion(bare) as jump:
        for node in NODES:
            with through(bare, jump, node) as c:
                assert run(c, "id -un; hostname")[:2] == (0, f"{USER}\n{node}\n")
                assert run(c, "sudo -S -p '' id -u", stdin=SUDO_PASSWORD + "\n")[:2] == (0, "0\n")
                code, _, err = run(c, "sudo -n id -u")
                assert code == 1 and "a password is required" in err, (node, err)


def test_sudo_refuses_a_wrong_password(bare):
    with bastion(bare) as jump, through(bare, jump, "node1") as c:
        code, out, err = run(c, "sudo -S -p '' id -u", stdin="not-the-password\n")
    assert (code, out) == (1, ""), err


def test_root_cannot_log_in(bare):
    with bastion(bare) as jump:
        with pytest.raises(paramiko.AuthenticationException):
            through(bare, jump, "node1", user="root")


def test_nothing_of_deployctl_is_there(bare):
    with bastion(bare) as jump, through(bare, jump, "node2") as c:
        code, out, _ = run(c, "ls -A /opt; test ! -e /opt/router && echo no-router; python3 -c "
                              "'import sys; print(sys.version_info >= (3, 9))'")
        assert (code, out) == (0, "no-router\nTrue\n")
        code, out, _ = run(c, "sudo -S -p '' supervisorctl status", stdin=SUDO_PASSWORD + "\n")
        assert code == 0 and [line.split()[:2] for line in out.splitlines()] == [["sshd", "RUNNING"]], out
        code, out, _ = run(c, "ls -A /etc/supervisor/conf.d; find /etc /opt /srv /home /root /usr/local /var/lib "
                              "-maxdepth 3 \\( -name token -o -name 'signing*.pub' -o -name 'router*' \\) -print "
                              "2>/dev/null; true")
        assert (code, out) == (0, "sshd.conf\n"), out


def test_host_keys_are_pinned_and_match_the_fingerprints(bare):
    with bastion(bare) as jump:
        key = jump.get_transport().get_remote_server_key()
        assert keys.fingerprint(f"{key.get_name()} {key.get_base64()}") == bare.fleet.fingerprints["bastion"]
        for node in NODES:
            with through(bare, jump, node) as c:
                key = c.get_transport().get_remote_server_key()
                assert keys.fingerprint(f"{key.get_name()} {key.get_base64()}") == bare.fleet.fingerprints[node]
    stranger = paramiko.SSHClient()
    stranger.set_missing_host_key_policy(paramiko.RejectPolicy())  # no known_hosts: the bastion is unknown
    with pytest.raises(paramiko.SSHException, match="not found in known_hosts"):
        stranger.connect("127.0.0.1", bare.fleet.bastion_port, username=USER, key_filename=str(bare.client_key),
                         look_for_keys=False, allow_agent=False, timeout=10)
    stranger.close()


def test_the_bastion_listens_on_127_0_0_1_only(bare):
    """Its sshd runs in the host's network namespace: every listening socket on its port is bound to 127.0.0.1."""
    with bastion(bare) as jump:
        code, out, _ = run(jump, "cat /proc/net/tcp /proc/net/tcp6")
    assert code == 0
    port = f"{bare.fleet.bastion_port:04X}"
    listening = [f[1] for f in (line.split() for line in out.splitlines()[1:]) if len(f) > 3 and f[3] == "0A"
                 and f[1].endswith(":" + port)]
    assert listening == ["0100007F:" + port], listening


def test_with_forwarding_off_the_jump_fails_and_works_again_when_on(bare):
    bare.set_forwarding(False)
    try:
        with bastion(bare) as jump:
            with pytest.raises(paramiko.ChannelException) as refused:
                through(bare, jump, "node1")
            assert refused.value.code == paramiko.common.OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED
            assert run(jump, "id -un")[:2] == (0, f"{USER}\n")  # the login itself still works
    finally:
        bare.set_forwarding(True)
    with bastion(bare) as jump, through(bare, jump, "node3") as c:
        assert run(c, "hostname")[:2] == (0, "node3\n")


def test_a_second_up_keeps_every_container(bare):
    import docker

    def ids():
        return {c.name: c.id for c in docker.from_env().containers.list(
            filters={"label": "deployctl.fleet=deployctl-e2e-bare"})}

    before = ids()
    again = bare.cli("-q", "fleet", "up", "--kind", "bare", "--compose", str(bare.compose))
    assert again.returncode == 0, again.stderr
    assert ids() == before and len(before) == 4
