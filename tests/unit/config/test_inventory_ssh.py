"""Inventory fields for real servers (user, identity_file, proxy_jump, become) and ssh_config read as OpenSSH does."""

from __future__ import annotations

from pathlib import Path

import pytest

from deployctl.config import sshconfig
from deployctl.config.inventory import load_inventory
from deployctl.config.sshconfig import Jump
from deployctl.errors import ConfigError

HEAD = "fleet: f\nssh:\n  connect_timeout: 5\n"


def inventory(tmp_path: Path, nodes: str, ssh: str = "", config: str | None = None) -> Path:
    if config is not None:
        (tmp_path / "ssh_config").write_text(config)
    path = tmp_path / "fleet.yaml"
    path.write_text(HEAD + ssh + "nodes:\n" + nodes)
    return path


def error(path: Path) -> str:
    with pytest.raises(ConfigError) as info:
        load_inventory(path)
    return str(info.value)


def test_node_fields_without_ssh_config(tmp_path):
    inv = load_inventory(inventory(tmp_path, (
        "  - {name: a, host: 10.0.0.5, router_port: 80, user: deploy, identity_file: keys/id_a, become: sudo,\n"
        "     proxy_jump: 'jump@bastion.example.com:2222,ops@[::1]'}\n"
        "  - {name: b, host: 10.0.0.6, router_port: 80}\n")))
    a, b = inv.nodes
    assert (a.host, a.ssh_port, a.user, a.become) == ("10.0.0.5", 22, "deploy", "sudo")
    assert a.identity_file == str(tmp_path / "keys" / "id_a")
    key = str(tmp_path / "keys" / "id_a")
    assert a.proxy_jump == (Jump("bastion.example.com", 2222, "jump", key), Jump("::1", 22, "ops", key))
    assert (b.user, b.identity_file, b.proxy_jump, b.become) == ("root", None, (), None)


def test_a_hop_without_user_logs_in_as_the_node_user(tmp_path):
    inv = load_inventory(inventory(tmp_path, "  - {name: a, host: h1, router_port: 80, user: deploy, "
                                             "proxy_jump: '127.0.0.1:3550'}\n"))
    assert inv.nodes[0].proxy_jump == (Jump("127.0.0.1", 3550, "deploy", None),)
    assert inv.nodes[0].proxy_jump[0].label() == "deploy@127.0.0.1:3550"


@pytest.mark.parametrize("field, value, problem", [
    ("proxy_jump", "'a@@b'", "should be [user@]host[:port], comma-separated for a chain, or none; got 'a@@b'"),
    ("proxy_jump", "'b:99999'", "should be [user@]host[:port], comma-separated for a chain, or none; got 'b:99999'"),
    ("proxy_jump", "'a,,b'", "should be [user@]host[:port], comma-separated for a chain, or none; got 'a,,b'"),
    ("proxy_jump", "7", "should be a string"),
    ("become", "su", "should be 'sudo', got 'su'"),
    ("become", "true", "should be a string"),
    ("identity_file", "''", "should be a key file path, got ''"),
    ("user", "Root", "should be a user name matching ^[a-z_][a-z0-9_-]{0,31}$, got 'Root'"),
    ("colour", "red", "unknown key 'colour'"),
])
def test_bad_node_fields_name_the_field(tmp_path, field, value, problem):
    path = inventory(tmp_path, f"  - {{name: a, host: h1, router_port: 80, {field}: {value}}}\n")
    want = f"fleet.yaml: nodes/0/{field}: {problem}" if field != "colour" else f"fleet.yaml: nodes/0: {problem}"
    assert error(path) == want


def test_a_bad_hop_host_is_named(tmp_path):
    path = inventory(tmp_path, "  - {name: a, host: h1, router_port: 80, proxy_jump: 'u@bad_host!'}\n")
    assert error(path).startswith("fleet.yaml: nodes/0/proxy_jump")


def test_duplicate_field_is_refused(tmp_path):
    path = inventory(tmp_path, "  - name: a\n    host: h1\n    router_port: 80\n    become: sudo\n    become: sudo\n")
    assert error(path) == "fleet.yaml: nodes/0: duplicate key 'become' (line 9)"


CONFIG = """\
# first value obtained wins, as in ssh
Host web1 web2
    HostName 10.1.0.%n-unused
Host web1
    HostName 10.1.0.1
    Port 2201
Host WEB* !web9
    User deploy
    IdentityFile ~/.ssh/id_web
    ProxyJump bastion
Host bastion
    HostName=bastion.example.com
    Port 2222
    User jump
    IdentityFile /keys/jump
Host *
    User root
    Port 22
    IdentityFile /keys/default
"""


def test_ssh_config_is_read_as_openssh_reads_it(tmp_path):
    config = CONFIG.replace("HostName 10.1.0.%n-unused", "Port 2299")
    inv = load_inventory(inventory(tmp_path, "  - {name: a, host: web1, router_port: 80}\n"
                                             "  - {name: b, host: web9, router_port: 80}\n",
                                   ssh="  ssh_config: ssh_config\n", config=config))
    a, b = inv.nodes
    # web1's first Port is 2299 (the "Host web1 web2" block comes first); patterns match case-insensitively
    assert (a.host, a.ssh_port, a.user) == ("10.1.0.1", 2299, "deploy")
    assert a.identity_file == str(Path.home() / ".ssh" / "id_web")
    assert a.proxy_jump == (Jump("bastion.example.com", 2222, "jump", "/keys/jump"),)
    # web9 is excluded by !web9: only Host * applies
    assert (b.host, b.ssh_port, b.user, b.identity_file, b.proxy_jump) == ("web9", 22, "root", "/keys/default", ())


def test_inventory_fields_win_over_ssh_config(tmp_path):
    config = CONFIG.replace("HostName 10.1.0.%n-unused", "Port 2299")
    inv = load_inventory(inventory(tmp_path, "  - {name: a, host: web1, router_port: 80, ssh_port: 22, user: ops,"
                                             " identity_file: /k, proxy_jump: none}\n",
                                   ssh="  ssh_config: ssh_config\n", config=config))
    a = inv.nodes[0]
    assert (a.host, a.ssh_port, a.user, a.identity_file, a.proxy_jump) == ("10.1.0.1", 22, "ops", "/k", ())


def test_fleet_user_wins_over_ssh_config_user(tmp_path):
    inv = load_inventory(inventory(tmp_path, "  - {name: a, host: web1, router_port: 80}\n",
                                   ssh="  user: admin\n  ssh_config: ssh_config\n", config=CONFIG))
    assert inv.nodes[0].user == "admin"


def test_ssh_config_off_by_default(tmp_path):
    inv = load_inventory(inventory(tmp_path, "  - {name: a, host: web1, router_port: 80}\n", config=CONFIG))
    assert (inv.nodes[0].host, inv.nodes[0].ssh_port, inv.nodes[0].user) == ("web1", 22, "root")


def test_the_first_hop_own_proxy_jump_goes_in_front(tmp_path):
    config = "Host inner\n  ProxyJump outer:2200\n  User i\nHost outer\n  User o\n"
    inv = load_inventory(inventory(tmp_path, "  - {name: a, host: h, router_port: 80, proxy_jump: inner}\n",
                                   ssh="  ssh_config: ssh_config\n", config=config))
    assert inv.nodes[0].proxy_jump == (Jump("outer", 2200, "o", None), Jump("inner", 22, "i", None))


def test_a_proxy_jump_loop_is_refused(tmp_path):
    config = "Host a\n  ProxyJump b\nHost b\n  ProxyJump a\n"
    path = inventory(tmp_path, "  - {name: n, host: h, router_port: 80, proxy_jump: a}\n",
                     ssh="  ssh_config: ssh_config\n", config=config)
    assert error(path) == "fleet.yaml: nodes/0/proxy_jump: ssh config: ProxyJump of 'b' loops"


def test_include_is_followed(tmp_path):
    (tmp_path / "extra").write_text("Host web1\n  Port 2400\n")
    config = f"Include {tmp_path / 'extra'}\n" + CONFIG
    inv = load_inventory(inventory(tmp_path, "  - {name: a, host: web1, router_port: 80}\n",
                                   ssh="  ssh_config: ssh_config\n", config=config))
    assert inv.nodes[0].ssh_port == 2400


@pytest.mark.parametrize("config, problem", [
    ("Match host x\n  User a\n", "line 1: Match is not supported (only `Match all`)"),
    ("Host a\n  User 'open\n", "line 2: User: No closing quotation"),
    ("Host *\n  User Bad!\n", None),
    ("Host *\n  Port many\n", None),
    ("Host *\n  HostName not_a_host!\n", None),
])
def test_bad_ssh_config_is_one_line_naming_it(tmp_path, config, problem):
    path = inventory(tmp_path, "  - {name: a, host: a, router_port: 80}\n", ssh="  ssh_config: ssh_config\n",
                     config=config)
    text = error(path)
    assert text.startswith("fleet.yaml: nodes/0/host") and "\n" not in text
    if problem:
        assert text == f"fleet.yaml: nodes/0/host: ssh config: {tmp_path / 'ssh_config'}: {problem}"


def test_missing_ssh_config_file_sets_nothing(tmp_path):
    inv = load_inventory(inventory(tmp_path, "  - {name: a, host: web1, router_port: 80}\n",
                                   ssh="  ssh_config: nowhere\n"))
    assert (inv.nodes[0].host, inv.nodes[0].ssh_port) == ("web1", 22)


def test_ssh_config_value_checked(tmp_path):
    path = inventory(tmp_path, "  - {name: a, host: web1, router_port: 80}\n", ssh="  ssh_config: 3\n")
    assert error(path) == "fleet.yaml: ssh/ssh_config: should be a string"


@pytest.mark.parametrize("text, hops", [
    ("none", ()), ("b", ((None, "b", None),)), ("u@b:2", (("u", "b", 2),)),
    ("ssh://u@[fe80::1]:22", (("u", "fe80::1", 22),)), ("a, u@b", ((None, "a", None), ("u", "b", None))),
])
def test_parse_jump(text, hops):
    assert sshconfig.parse_jump(text) == hops


@pytest.mark.parametrize("text", ["", "u@", "@b", "b:0", "b:x", "a b", "[::1", "u@b@c"])
def test_parse_jump_refuses(text):
    with pytest.raises(ValueError):
        sshconfig.parse_jump(text)
