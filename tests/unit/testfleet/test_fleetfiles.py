"""compose_text and inventory_text: the files `fleet up --nodes N` writes, pinned by exact text and read back
with the strict loaders they must satisfy."""

from __future__ import annotations

from pathlib import Path

import pytest

from deployctl.config.inventory import Node, load_inventory
from deployctl.errors import ConfigError
from deployctl.testfleet import fleetfiles
from deployctl.testfleet.fleetfiles import inventory_text

ROOT = Path(__file__).resolve().parents[3]

ONE_NODE_COMPOSE_BODY = """\
name: deployctl-fleet
services:
  node1:
    image: deployctl/node:latest
    build: {context: ., dockerfile: Dockerfile}
    hostname: node1
    ports: ["127.0.0.1:2201:22", "127.0.0.1:8101:8080"]
    networks: [fleet]
networks:
  fleet: {}
"""

ONE_NODE_INVENTORY_BODY = """\
fleet: test-fleet

ssh:
  user: root
  connect_timeout: 5
  parallel: 8

nodes:
  - {name: node1, host: 127.0.0.1, ssh_port: 2201, router_port: 8101}
"""


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def body(text: str) -> str:
    """The text after the leading comment block (the comment is pinned by the committed-file tests)."""
    return "".join(line for line in text.splitlines(keepends=True) if not line.startswith("#")).lstrip("\n")


def test_defaults_reproduce_the_committed_compose_file():
    assert fleetfiles.compose_text(8) == (ROOT / "containers" / "compose.yaml").read_text(encoding="utf-8")


def test_defaults_reproduce_the_committed_inventory():
    assert inventory_text(8) == (ROOT / "fleet" / "fleet.yaml").read_text(encoding="utf-8")


def test_one_node_texts_are_exact():
    assert body(fleetfiles.compose_text(1)) == ONE_NODE_COMPOSE_BODY
    assert body(inventory_text(1)) == ONE_NODE_INVENTORY_BODY


def test_project_fleet_name_and_first_ports_are_used():
    text = fleetfiles.compose_text(2, project="ci-fleet", first_ssh_port=30000, first_router_port=40000)
    assert body(text).splitlines()[0] == "name: ci-fleet"
    assert '    ports: ["127.0.0.1:30001:22", "127.0.0.1:40001:8080"]' in text.splitlines()
    inventory = inventory_text(2, first_ssh_port=30000, first_router_port=40000, fleet_name="ci")
    assert body(inventory).splitlines()[0] == "fleet: ci"
    assert inventory.splitlines()[-1] == "  - {name: node2, host: 127.0.0.1, ssh_port: 30001, router_port: 40001}"


@pytest.mark.parametrize("nodes", [1, 8, 16, 64])
def test_generated_files_load_strictly_and_agree(tmp_path, nodes):
    spec = fleetfiles.load_spec(write(tmp_path, "compose.yaml", fleetfiles.compose_text(nodes)))
    inv = load_inventory(write(tmp_path, "fleet.yaml", inventory_text(nodes)))
    names = [f"node{i}" for i in range(1, nodes + 1)]
    assert (spec.project, spec.image, spec.network) == (
        "deployctl-fleet", "deployctl/node:latest", "deployctl-fleet-net")
    assert [(n.service, n.container, n.hostname) for n in spec.nodes] == [
        (name, f"deployctl-fleet-{name}", name) for name in names]
    assert [n.ports for n in spec.nodes] == [((2200 + i, 22), (8100 + i, 8080)) for i in range(1, nodes + 1)]
    assert inv.nodes == tuple(Node(f"node{i}", "127.0.0.1", 2200 + i, 8100 + i, "root") for i in range(1, nodes + 1))
    assert (inv.fleet, inv.parallel, inv.connect_timeout) == ("test-fleet", 8, 5.0)
    # the same check fleet up makes: each node publishes exactly the inventory's ports
    assert {n.service: n.ports for n in spec.nodes} == {
        n.name: ((n.ssh_port, 22), (n.router_port, 8080)) for n in inv.nodes}


@pytest.mark.parametrize("nodes, ssh, router", [(64, 65472, 1), (1, 65535, 1), (3, 1, 8), (2, 8101, 2201)])
def test_edge_ranges_are_accepted(tmp_path, nodes, ssh, router):
    spec = fleetfiles.load_spec(write(tmp_path, "compose.yaml", fleetfiles.compose_text(
        nodes, first_ssh_port=ssh, first_router_port=router)))
    inv = load_inventory(write(tmp_path, "fleet.yaml", inventory_text(nodes, ssh, router)))
    assert [n.ports for n in spec.nodes] == [((n.ssh_port, 22), (n.router_port, 8080)) for n in inv.nodes]
    assert (inv.nodes[-1].ssh_port, inv.nodes[-1].router_port) == (ssh + nodes - 1, router + nodes - 1)


# (id, nodes, first_ssh_port, first_router_port, whole expected message); both builders give the same one
BAD_ARGUMENTS = [
    ("zero-nodes", 0, 2201, 8101, "--nodes: should be between 1 and 64"),
    ("too-many-nodes", 65, 2201, 8101, "--nodes: should be between 1 and 64"),
    ("negative-nodes", -1, 2201, 8101, "--nodes: should be between 1 and 64"),
    ("nodes-not-int", "8", 2201, 8101, "--nodes: should be an integer"),
    ("nodes-bool", True, 2201, 8101, "--nodes: should be an integer"),
    ("ssh-overflows", 8, 65529, 8101, "--first-ssh-port: should be between 1 and 65528 for --nodes 8"),
    ("router-overflows", 64, 2201, 65473, "--first-router-port: should be between 1 and 65472 for --nodes 64"),
    ("one-node-past-max", 1, 65536, 8101, "--first-ssh-port: should be between 1 and 65535 for --nodes 1"),
    ("ssh-zero", 8, 0, 8101, "--first-ssh-port: should be between 1 and 65528 for --nodes 8"),
    ("router-negative", 8, 2201, -5, "--first-router-port: should be between 1 and 65528 for --nodes 8"),
    ("ssh-port-not-int", 8, 2201.0, 8101, "--first-ssh-port: should be an integer"),
    ("same-first-port", 8, 2201, 2201, "--first-router-port: ports 2201-2208 overlap the SSH ports 2201-2208"),
    ("router-inside-ssh", 8, 2201, 2208, "--first-router-port: ports 2208-2215 overlap the SSH ports 2201-2208"),
    ("ssh-inside-router", 16, 8110, 8101, "--first-router-port: ports 8101-8116 overlap the SSH ports 8110-8125"),
]


@pytest.mark.parametrize("nodes, ssh, router, message", [c[1:] for c in BAD_ARGUMENTS],
                         ids=[c[0] for c in BAD_ARGUMENTS])
def test_bad_arguments_are_refused_with_exact_message(nodes, ssh, router, message):
    with pytest.raises(ConfigError) as compose_error:
        fleetfiles.compose_text(nodes, first_ssh_port=ssh, first_router_port=router)
    with pytest.raises(ConfigError) as inventory_error:
        inventory_text(nodes, first_ssh_port=ssh, first_router_port=router)
    assert str(compose_error.value) == str(inventory_error.value) == message


@pytest.mark.parametrize("project, message", [
    ("Fleet", "--project: should be a lowercase project name matching ^[a-z0-9][a-z0-9_-]*$, got 'Fleet'"),
    ("", "--project: should be a lowercase project name matching ^[a-z0-9][a-z0-9_-]*$, got ''"),
    ("a b", "--project: should be a lowercase project name matching ^[a-z0-9][a-z0-9_-]*$, got 'a b'"),
])
def test_bad_project_is_refused_with_exact_message(project, message):
    with pytest.raises(ConfigError) as error:
        fleetfiles.compose_text(8, project=project)
    assert str(error.value) == message


@pytest.mark.parametrize("fleet_name, message", [
    ("Test", "--fleet-name: should be a name matching ^[a-z0-9][a-z0-9_-]{0,62}$, got 'Test'"),
    ("-x", "--fleet-name: should be a name matching ^[a-z0-9][a-z0-9_-]{0,62}$, got '-x'"),
    ("a\nfleet: b", "--fleet-name: should be a name matching ^[a-z0-9][a-z0-9_-]{0,62}$, got 'a\\nfleet: b'"),
])
def test_bad_fleet_name_is_refused_with_exact_message(fleet_name, message):
    with pytest.raises(ConfigError) as error:
        inventory_text(8, fleet_name=fleet_name)
    assert str(error.value) == message
