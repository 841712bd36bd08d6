"""The bare test fleet's generated files (compose-bare.yaml, bare.yaml), the bare image's files and keys, pinned by
exact text and read back with the strict loaders; no Docker."""

from __future__ import annotations

import hashlib
import io
import shutil
import tarfile
from pathlib import Path

import pytest

from deployctl.config.inventory import load_inventory
from deployctl.config.schema import load_yaml
from deployctl.config.sshconfig import Jump
from deployctl.errors import ConfigError
from deployctl.state import keys
from deployctl.state.statedir import StateDir
from deployctl.testfleet import bare as barefleet
from deployctl.testfleet import docker as docker_fleet
from deployctl.testfleet import fleetfiles
from deployctl.testfleet.fleetfiles import bare_inventory_text, inventory_text

ROOT = Path(__file__).resolve().parents[3]

ONE_NODE_BARE_COMPOSE_BODY = """\
name: deployctl-bare
services:
  bastion:
    image: deployctl/bare:latest
    build: {context: bare, dockerfile: Dockerfile}
    network_mode: host
    command: ["/usr/sbin/sshd", "-D", "-e", "-f", "/etc/ssh/bastion_config", "-p", "2600"]
  node1:
    image: deployctl/bare:latest
    build: {context: bare, dockerfile: Dockerfile}
    hostname: node1
    ports: ["127.0.0.1:2601:22", "127.0.0.1:8601:8080"]
    networks: [fleet]
networks:
  fleet: {}
"""

ONE_NODE_BARE_INVENTORY_BODY = """\
fleet: bare-fleet

ssh:
  user: deploy
  connect_timeout: 5
  parallel: 8

nodes:
  - {name: node1, host: 127.0.0.1, ssh_port: 2601, router_port: 8601, user: deploy, become: sudo, \
proxy_jump: 'deploy@127.0.0.1:2600'}
"""


def body(text: str) -> str:
    return "".join(line for line in text.splitlines(keepends=True) if not line.startswith("#")).lstrip("\n")


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_one_node_bare_files_are_pinned():
    assert body(fleetfiles.bare_compose_text(1)) == ONE_NODE_BARE_COMPOSE_BODY
    assert body(bare_inventory_text(1)) == ONE_NODE_BARE_INVENTORY_BODY


def test_write_files_reads_back_as_one_fleet(tmp_path):
    inv, compose = tmp_path / "fleet" / "bare.yaml", tmp_path / "c" / "compose-bare.yaml"
    barefleet.write_files(inv, compose, 3, "ci-bare", 3751, 9751, 3750)
    spec, bastion_port = barefleet._spec(compose)
    assert (spec.project, spec.image, spec.context, bastion_port) == (
        "ci-bare", "deployctl/bare:latest", ROOT / "containers" / "bare", 3750)
    bastion, *nodes = spec.nodes
    assert (bastion.service, bastion.network_mode, bastion.ports) == ("bastion", "host", ())
    assert bastion.command == ("/usr/sbin/sshd", "-D", "-e", "-f", "/etc/ssh/bastion_config", "-p", "3750")
    assert [(n.service, n.network_mode, n.command, n.ports) for n in nodes] == [
        (f"node{i}", "", (), ((3750 + i, 22), (9750 + i, 8080))) for i in (1, 2, 3)]
    doc = load_yaml(inv)
    assert [(n["name"], n["ssh_port"], n["router_port"], n["user"], n["become"], n["proxy_jump"])
            for n in doc["nodes"]] == [(f"node{i}", 3750 + i, 9750 + i, "deploy", "sudo", "deploy@127.0.0.1:3750")
                                       for i in (1, 2, 3)]


@pytest.mark.parametrize("nodes, ssh, router, bastion, message", [
    (3, 2601, 8601, 2602, "--bastion-port: 2602 is one of the nodes' SSH ports 2601-2603"),
    (3, 2601, 8601, 8603, "--bastion-port: 8603 is one of the nodes' router ports 8601-8603"),
    (3, 2601, 8601, 0, "--bastion-port: should be an integer between 1 and 65535"),
    (3, 2601, 8601, 65536, "--bastion-port: should be an integer between 1 and 65535"),
    (0, 2601, 8601, 2600, "--nodes: should be between 1 and 64"),
])
def test_bad_numbers_are_one_line_errors_in_both_generators(nodes, ssh, router, bastion, message):
    with pytest.raises(ConfigError) as compose_error:
        fleetfiles.bare_compose_text(nodes, "p", ssh, router, bastion)
    with pytest.raises(ConfigError) as inventory_error:
        bare_inventory_text(nodes, ssh, router, bastion)
    assert str(compose_error.value) == str(inventory_error.value) == message


def test_the_bare_inventory_loads_strictly_as_deploy_with_sudo_through_the_bastion(tmp_path):
    inv = load_inventory(write(tmp_path, "bare.yaml", bare_inventory_text(3, 3751, 9751, 3750)))
    assert [(n.name, n.host, n.ssh_port, n.router_port, n.user, n.become, n.proxy_jump) for n in inv.nodes] == [
        (f"node{i}", "127.0.0.1", 3750 + i, 9750 + i, "deploy", "sudo", (Jump("127.0.0.1", 3750, "deploy"),))
        for i in (1, 2, 3)]
    assert (inv.fleet, inv.parallel) == ("bare-fleet", 8)


def test_default_bare_ports_stay_clear_of_the_other_fleets():
    """The ordinary fleet (2201.., 8101..), the 16-node test (2301-2316) and the 64-node bench (2401-2464)."""
    bare = {2600} | set(range(2601, 2665)) | set(range(8601, 8665))
    for text in (inventory_text(64), inventory_text(16, 2301, 8301), inventory_text(64, 2401, 8401)):
        taken = {int(w.strip(",")) for w in text.split() if w.strip(",").isdigit()}
        assert not bare & taken


@pytest.mark.parametrize("edit, message", [
    (("network_mode: host", "network_mode: bridge"), "services/bastion/network_mode: should be 'host' or absent"),
    (("network_mode: host", 'network_mode: host\n    ports: ["127.0.0.1:1:22"]'),
     "services/bastion/ports: a service with network_mode host publishes no ports"),
    (('command: ["/usr/sbin/sshd", "-D", "-e", "-f", "/etc/ssh/bastion_config", "-p", "2600"]', "command: sshd"),
     "services/bastion/command: should be a list of strings"),
])
def test_the_compose_subset_is_strict(tmp_path, edit, message):
    path = write(tmp_path, "compose-bare.yaml", fleetfiles.bare_compose_text(1).replace(*edit))
    with pytest.raises(ConfigError) as err:
        fleetfiles.load_spec(path)
    assert str(err.value) == f"compose-bare.yaml: {message}"


@pytest.mark.parametrize("text", [fleetfiles.compose_text(2), fleetfiles.bare_compose_text(1).replace(
    '"-p", "2600"', '"-p", "x"')])
def test_a_compose_file_without_a_bastion_is_not_a_bare_fleet(tmp_path, text):
    with pytest.raises(ConfigError) as err:
        barefleet._spec(write(tmp_path, "compose-bare.yaml", text))
    assert str(err.value) == ("compose-bare.yaml: services/bastion: should run sshd with network_mode host and -p PORT "
                              "(write it with `deployctl fleet up --kind bare --nodes N`)")


def test_the_node_image_hash_leaves_out_the_bare_image_folder(tmp_path):
    """The bare image lives in containers/bare/; adding it must not rebuild deployctl/node:latest."""
    copy = tmp_path / "containers"
    shutil.copytree(ROOT / "containers", copy, ignore=shutil.ignore_patterns("bare"))
    assert (ROOT / "containers" / "bare" / "Dockerfile").exists() and not (copy / "bare").exists()
    assert docker_fleet.context_hash(ROOT / "containers") == docker_fleet.context_hash(copy)
    (copy / "Dockerfile").write_text((copy / "Dockerfile").read_text() + "\n")
    assert docker_fleet.context_hash(ROOT / "containers") != docker_fleet.context_hash(copy)  # still sees its own files


def test_the_sudo_password_is_the_images():
    assert f"ARG DEPLOY_PASSWORD={barefleet.SUDO_PASSWORD}\n" in (ROOT / "containers/bare/Dockerfile").read_text()
    assert barefleet.LOGIN_USER == "deploy" and "useradd --create-home --uid 1000 " in (
        ROOT / "containers/bare/Dockerfile").read_text()


def test_the_bare_image_holds_nothing_of_deployctl():
    text = "".join(line for p in sorted((ROOT / "containers" / "bare").iterdir())
                   for line in p.read_text().splitlines(keepends=True) if not line.lstrip().startswith(("#", ";")))
    assert "/opt/router" not in text and "token" not in text and "[program:router]" not in text
    assert "AllowTcpForwarding yes" in (ROOT / "containers/bare/bastion_config").read_text()
    assert "ListenAddress 127.0.0.1\n" in (ROOT / "containers/bare/bastion_config").read_text()


def test_bare_files_go_to_the_deploy_user_with_its_uid():
    files = fleetfiles.BareFiles(b"PRIVATE", "ssh-ed25519 AAAAhost h", "ssh-ed25519 AAAAclient c")
    with tarfile.open(fileobj=io.BytesIO(docker_fleet._files_tar(files))) as tar:
        got = [(m.name, m.mode, m.uid, m.gid, tar.extractfile(m).read()) for m in tar.getmembers()]
    assert got == [("etc/ssh/ssh_host_ed25519_key", 0o600, 0, 0, b"PRIVATE"),
                   ("etc/ssh/ssh_host_ed25519_key.pub", 0o644, 0, 0, b"ssh-ed25519 AAAAhost h\n"),
                   ("home/deploy/.ssh/authorized_keys", 0o600, 1000, 1000, b"ssh-ed25519 AAAAclient c\n")]


def test_ordinary_nodes_keep_their_config_label():
    """Adding the bastion's fields must not make every running ordinary node look changed (and be replaced)."""
    node = fleetfiles.NodeSpec("node1", "deployctl-fleet-node1", "node1", ((2201, 22), (8101, 8080)))
    files = fleetfiles.NodeFiles(b"k", "pub", "client", "token", "signing")
    h = hashlib.sha256()
    for part in ("img", "NodeSpec(service='node1', container='deployctl-fleet-node1', hostname='node1', "
                 "ports=((2201, 22), (8101, 8080)))", "pub", "client", "token", "signing"):
        h.update(part.encode() + b"\0")
    assert docker_fleet._config_label("img", node, files) == h.hexdigest()
    bastion = fleetfiles.NodeSpec("bastion", "p-bastion", "bastion", (), "host", ("sshd", "-p", "1"))
    other = fleetfiles.NodeSpec("bastion", "p-bastion", "bastion", (), "host", ("sshd", "-p", "2"))
    assert docker_fleet._config_label("img", bastion, files) != docker_fleet._config_label("img", other, files)


def test_pin_replaces_and_drops_only_its_own_lines(tmp_path):
    state = StateDir(tmp_path)
    state.keys.mkdir()
    state.known_hosts.write_text("[127.0.0.1]:2201 ssh-ed25519 AAAAone\n[127.0.0.1]:2600 ssh-ed25519 AAAAold\n"
                                 "[127.0.0.1]:2601 ssh-ed25519 AAAAnode\n")
    keys.pin(state, {("127.0.0.1", 2600): "ssh-ed25519 AAAAnew bastion-host", ("127.0.0.1", 2601): None})
    assert state.known_hosts.read_text() == ("[127.0.0.1]:2201 ssh-ed25519 AAAAone\n"
                                             "[127.0.0.1]:2600 ssh-ed25519 AAAAnew\n")


def test_describe_names_every_host_key_fingerprint(tmp_path):
    compose = tmp_path / "compose-bare.yaml"
    barefleet.write_files(tmp_path / "bare.yaml", compose, 2, "ci-bare", 3751, 9751, 3750)
    fleet = barefleet.describe(compose, tmp_path / "state")
    hosts = StateDir(tmp_path / "state").keys / "hosts"
    assert (fleet.project, fleet.bastion_port, fleet.nodes) == ("ci-bare", 3750, {"node1": (3751, 9751),
                                                                                    "node2": (3752, 9752)})
    assert fleet.fingerprints == {name: keys.fingerprint((hosts / f"ci-bare-{name}_ed25519.pub").read_text())
                                  for name in ("bastion", "node1", "node2")}
    assert len(set(fleet.fingerprints.values())) == 3
    assert barefleet.describe(compose, tmp_path / "state") == fleet  # the keys are kept
