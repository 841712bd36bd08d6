"""config/ (schema, inventory, playbook): strict YAML loading; every bad input gives one exact, path-qualified
message."""

from __future__ import annotations

from pathlib import Path

import pytest

from deployctl.config.inventory import Inventory, Node, load_inventory
from deployctl.config.playbook import Breakers, Playbook, Service, Supervisor, Timeouts, load_playbook
from deployctl.config.schema import load_yaml as _load_yaml
from deployctl.config.schema import read_regular
from deployctl.errors import ConfigError, ExitCode

ROOT = Path(__file__).resolve().parents[3]
NAME = "should be a name matching ^[a-z0-9][a-z0-9_-]{0,62}$"
USER = "should be a user name matching ^[a-z_][a-z0-9_-]{0,31}$"
HOST = "should be a hostname or IP address"
ROOT_PATH = "should be an absolute normalized path of [A-Za-z0-9._/-]"

FLEET = """\
fleet: test-fleet
ssh:
  user: root
  connect_timeout: 5
  parallel: 8
nodes:
  - {name: node1, host: 127.0.0.1, ssh_port: 2201, router_port: 8101}
  - {name: node2, host: 127.0.0.1, ssh_port: 2202, router_port: 8102}
  - {name: node3, host: 127.0.0.1, ssh_port: 2203, router_port: 8103}
  - {name: node4, host: 127.0.0.1, ssh_port: 2204, router_port: 8104}
"""

PLAYBOOK = """\
name: order-router
source: ../src
install_root: /opt/router
keep_releases: 3
service:
  restart: [supervisorctl, restart, router]
  stop: [supervisorctl, stop, router]
  health_path: /health
timeouts:
  connect: 5
  command: 60
  health: 20
min_free_mb: 64
"""


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def edit(base: str, old: str, new: str) -> str:
    if base.count(old) != 1:
        raise ValueError(f"{old!r} should occur exactly once in the base document")
    return base.replace(old, new)


# (id, text replaced in FLEET, replacement, whole expected message)
FLEET_CASES = [
    ("port-as-string", "ssh_port: 2204", "ssh_port: '2204'", "fleet.yaml: nodes/3/ssh_port: should be an integer"),
    ("port-as-bool", "ssh_port: 2204", "ssh_port: true", "fleet.yaml: nodes/3/ssh_port: should be an integer"),
    ("port-as-float", "ssh_port: 2204", "ssh_port: 2204.0", "fleet.yaml: nodes/3/ssh_port: should be an integer"),
    ("port-too-high", "router_port: 8103", "router_port: 70000",
     "fleet.yaml: nodes/2/router_port: should be between 1 and 65535"),
    ("port-zero", "router_port: 8103", "router_port: 0",
     "fleet.yaml: nodes/2/router_port: should be between 1 and 65535"),
    ("unknown-node-key", "{name: node1,", "{name: node1, prot: 22,", "fleet.yaml: nodes/0: unknown key 'prot'"),
    ("unknown-top-key", "fleet: test-fleet", "fleet: test-fleet\nfleets: x", "fleet.yaml: unknown key 'fleets'"),
    ("unknown-ssh-key", "  parallel: 8", "  parallel: 8\n  port: 22", "fleet.yaml: ssh: unknown key 'port'"),
    ("duplicate-key", "{name: node3,", "{name: node3, name: node9,",
     "fleet.yaml: nodes/2: duplicate key 'name' (line 9)"),
    ("duplicate-top-key", "fleet: test-fleet", "fleet: test-fleet\nfleet: other",
     "fleet.yaml: duplicate key 'fleet' (line 2)"),
    ("duplicate-ssh-key", "  parallel: 8", "  parallel: 8\n  user: admin",
     "fleet.yaml: ssh: duplicate key 'user' (line 6)"),
    ("duplicate-name", "name: node2", "name: node1", "fleet.yaml: nodes/1/name: duplicate node name 'node1'"),
    ("duplicate-ssh-address", "ssh_port: 2202", "ssh_port: 2201",
     "fleet.yaml: nodes/1/ssh_port: 127.0.0.1:2201 is already used by nodes/0/ssh_port"),
    ("duplicate-router-address", "router_port: 8104", "router_port: 8101",
     "fleet.yaml: nodes/3/router_port: 127.0.0.1:8101 is already used by nodes/0/router_port"),
    ("router-port-is-ssh-port", "router_port: 8102", "router_port: 2201",
     "fleet.yaml: nodes/1/router_port: 127.0.0.1:2201 is already used by nodes/0/ssh_port"),
    ("own-ports-collide", "router_port: 8101", "router_port: 2201",
     "fleet.yaml: nodes/0/router_port: 127.0.0.1:2201 is already used by nodes/0/ssh_port"),
    ("fleet-float", "fleet: test-fleet", "fleet: 1.10", "fleet.yaml: fleet: should be a string"),
    ("fleet-upper", "fleet: test-fleet", "fleet: Test", f"fleet.yaml: fleet: {NAME}, got 'Test'"),
    ("name-metachar", "name: node1", "name: 'node1;rm'", f"fleet.yaml: nodes/0/name: {NAME}, got 'node1;rm'"),
    ("name-space", "name: node1", "name: 'node 1'", f"fleet.yaml: nodes/0/name: {NAME}, got 'node 1'"),
    ("name-newline", "name: node1", 'name: "node1\\n"', f"fleet.yaml: nodes/0/name: {NAME}, got 'node1\\n'"),
    ("name-leading-dash", "name: node1", "name: -node1", f"fleet.yaml: nodes/0/name: {NAME}, got '-node1'"),
    ("name-int", "name: node1", "name: 1", "fleet.yaml: nodes/0/name: should be a string"),
    ("host-semicolon", "host: 127.0.0.1, ssh_port: 2201", "host: '127.0.0.1;id', ssh_port: 2201",
     f"fleet.yaml: nodes/0/host: {HOST}, got '127.0.0.1;id'"),
    ("host-subshell", "host: 127.0.0.1, ssh_port: 2201", "host: '$(id)', ssh_port: 2201",
     f"fleet.yaml: nodes/0/host: {HOST}, got '$(id)'"),
    ("host-space", "host: 127.0.0.1, ssh_port: 2201", "host: 'a b', ssh_port: 2201",
     f"fleet.yaml: nodes/0/host: {HOST}, got 'a b'"),
    ("host-ssh-option", "host: 127.0.0.1, ssh_port: 2201", "host: -oProxyCommand=id, ssh_port: 2201",
     f"fleet.yaml: nodes/0/host: {HOST}, got '-oProxyCommand=id'"),
    ("host-bad-ipv4", "host: 127.0.0.1, ssh_port: 2201", "host: 999.1.1.1, ssh_port: 2201",
     f"fleet.yaml: nodes/0/host: {HOST}, got '999.1.1.1'"),
    ("host-ipv6-zone", "host: 127.0.0.1, ssh_port: 2201", "host: 'fe80::1%eth0', ssh_port: 2201",
     f"fleet.yaml: nodes/0/host: {HOST}, got 'fe80::1%eth0'"),
    ("host-float", "host: 127.0.0.1, ssh_port: 2201", "host: 10.5, ssh_port: 2201",
     "fleet.yaml: nodes/0/host: should be a string"),
    ("user-upper", "user: root", "user: Root", f"fleet.yaml: ssh/user: {USER}, got 'Root'"),
    ("node-user-metachar", "{name: node2,", "{name: node2, user: 'a`b`',",
     f"fleet.yaml: nodes/1/user: {USER}, got 'a`b`'"),
    ("node-user-null", "{name: node2,", "{name: node2, user: null,", "fleet.yaml: nodes/1/user: should be a string"),
    ("parallel-zero", "parallel: 8", "parallel: 0", "fleet.yaml: ssh/parallel: should be between 1 and 256"),
    ("parallel-too-high", "parallel: 8", "parallel: 257", "fleet.yaml: ssh/parallel: should be between 1 and 256"),
    ("parallel-yes", "parallel: 8", "parallel: yes", "fleet.yaml: ssh/parallel: should be an integer"),
    ("timeout-zero", "connect_timeout: 5", "connect_timeout: 0",
     "fleet.yaml: ssh/connect_timeout: should be greater than 0"),
    ("timeout-negative", "connect_timeout: 5", "connect_timeout: -1.5",
     "fleet.yaml: ssh/connect_timeout: should be greater than 0"),
    ("timeout-text", "connect_timeout: 5", "connect_timeout: five",
     "fleet.yaml: ssh/connect_timeout: should be a number"),
    ("timeout-bool", "connect_timeout: 5", "connect_timeout: true",
     "fleet.yaml: ssh/connect_timeout: should be a number"),
    ("timeout-inf", "connect_timeout: 5", "connect_timeout: .inf",
     "fleet.yaml: ssh/connect_timeout: should be a finite number"),
    ("timeout-nan", "connect_timeout: 5", "connect_timeout: .nan",
     "fleet.yaml: ssh/connect_timeout: should be a finite number"),
    ("timeout-huge-int", "connect_timeout: 5", "connect_timeout: " + "9" * 400,
     "fleet.yaml: ssh/connect_timeout: should be a finite number"),
    ("missing-router-port", ", router_port: 8101}", "}", "fleet.yaml: nodes/0/router_port: missing"),
    ("missing-fleet", "fleet: test-fleet\n", "", "fleet.yaml: fleet: missing"),
    ("ssh-not-mapping", "ssh:\n  user: root\n  connect_timeout: 5\n  parallel: 8\n", "ssh: root\n",
     "fleet.yaml: ssh: should be a mapping"),
    ("node-not-mapping", "  - {name: node1, host: 127.0.0.1, ssh_port: 2201, router_port: 8101}", "  - node1",
     "fleet.yaml: nodes/0: should be a mapping"),
    ("syntax-error", "  parallel: 8", "  parallel: [8",
     "fleet.yaml: line 6: invalid YAML: expected ',' or ']', but got ':'"),
    ("tab-indent", "  parallel: 8", "\tparallel: 8", "fleet.yaml: line 5: invalid YAML: found character '\\t' that "
     "cannot start any token"),
    ("python-tag", "fleet: test-fleet", "fleet: !!python/object/apply:os.system [id]",
     "fleet.yaml: line 1: invalid YAML: could not determine a constructor for the tag "
     "'tag:yaml.org,2002:python/object/apply:os.system'"),
    ("two-documents", "fleet: test-fleet", "fleet: test-fleet\n---\nfleet: x",
     "fleet.yaml: line 2: invalid YAML: expected a single document in the stream but found another document"),
]


@pytest.mark.parametrize("old, new, message", [c[1:] for c in FLEET_CASES], ids=[c[0] for c in FLEET_CASES])
def test_bad_inventory_is_refused_with_exact_message(tmp_path, old, new, message):
    path = write(tmp_path, "fleet.yaml", edit(FLEET, old, new))
    with pytest.raises(ConfigError) as err:
        load_inventory(path)
    assert str(err.value) == message
    assert err.value.exit_code == ExitCode.USAGE


# (id, whole file text, whole expected message)
WHOLE_FILE_CASES = [
    ("empty-file", "", "fleet.yaml: file is empty"),
    ("only-comments", "# nothing here\n\n", "fleet.yaml: file is empty"),
    ("top-level-list", "- a\n- b\n", "fleet.yaml: should be a mapping"),
    ("top-level-scalar", "fleet\n", "fleet.yaml: should be a mapping"),
    ("null-document", "~\n", "fleet.yaml: should be a mapping"),
    ("empty-fleet", "fleet: f\nnodes: []\n", "fleet.yaml: nodes: should not be empty"),
    ("nodes-null", "fleet: f\nnodes:\n", "fleet.yaml: nodes: should be a list"),
    ("nodes-mapping", "fleet: f\nnodes: {node1: {}}\n", "fleet.yaml: nodes: should be a list"),
    ("no-nodes", "fleet: f\n", "fleet.yaml: nodes: missing"),
    ("undefined-alias", "fleet: *x\n", "fleet.yaml: line 1: invalid YAML: found undefined alias 'x'"),
    ("unclosed", "fleet: [\n", "fleet.yaml: line 2: invalid YAML: expected the node content, but found '<stream end>'"),
    ("nul-character", "fleet: f\x00\n", "fleet.yaml: invalid YAML: character #x0000 at offset 8 is not allowed"),
    ("duplicate-in-block-list", "fleet: f\nnodes:\n  - name: a\n    host: h\n    name: b\n",
     "fleet.yaml: nodes/0: duplicate key 'name' (line 5)"),
    ("duplicate-int-bool-key", "fleet: f\nssh: {1: a, true: b}\n", "fleet.yaml: ssh: duplicate key True (line 2)"),
]


@pytest.mark.parametrize("text, message", [c[1:] for c in WHOLE_FILE_CASES], ids=[c[0] for c in WHOLE_FILE_CASES])
def test_bad_inventory_file_is_refused_with_exact_message(tmp_path, text, message):
    with pytest.raises(ConfigError) as err:
        load_inventory(write(tmp_path, "fleet.yaml", text))
    assert str(err.value) == message


def test_non_utf8_and_missing_files_are_refused(tmp_path):
    path = tmp_path / "fleet.yaml"
    path.write_bytes(b"fleet: \xff\n")
    with pytest.raises(ConfigError, match=r"^fleet\.yaml: not valid UTF-8$"):
        load_inventory(path)
    with pytest.raises(ConfigError) as err:
        load_inventory(tmp_path / "absent.yaml")
    assert str(err.value) == f"{tmp_path / 'absent.yaml'}: cannot read (No such file or directory)"


def test_a_device_or_a_folder_is_refused_unopened(tmp_path):
    """Only a regular file is read (a FIFO, which used to hang, is tested through the CLI: the process
    ring's run() has a timeout, so the test fails rather than hangs if the check is gone)."""
    for path, kind in ((Path("/dev/null"), "a device"), (tmp_path, "a folder")):
        with pytest.raises(ConfigError) as err:
            load_inventory(path)
        assert str(err.value) == f"{path}: {kind}, not a regular file"
        assert err.value.exit_code == ExitCode.USAGE


def test_read_regular_reads_at_most_its_limit_and_names_the_path(tmp_path):
    path = write(tmp_path, "big", "x" * 100)
    assert read_regular(path, limit=10) == b"x" * 11  # one more than the limit: the caller can tell
    assert read_regular(path) == b"x" * 100
    with pytest.raises(ValueError) as err:
        read_regular(tmp_path / "file" / "below", ValueError)
    assert str(err.value) == f"{tmp_path / 'file' / 'below'}: cannot read (No such file or directory)"
    write(tmp_path, "file", "")
    with pytest.raises(ConfigError) as err:
        read_regular(tmp_path / "file" / "below")
    assert str(err.value) == f"{tmp_path / 'file' / 'below'}: cannot read (Not a directory)"


def test_inventory_defaults_and_user_override(tmp_path):
    text = "fleet: f\nnodes:\n  - {name: a, host: db-1.example.com, router_port: 80, user: deploy}\n" \
           "  - {name: b, host: '::1', ssh_port: 2222, router_port: 80}\n"
    inv = load_inventory(write(tmp_path, "fleet.yaml", text))
    assert inv == Inventory("f", (Node("a", "db-1.example.com", 22, 80, "deploy"), Node("b", "::1", 2222, 80, "root")),
                            5.0, 8, tmp_path / "fleet.yaml")


def test_real_fleet_yaml_loads():
    inv = load_inventory(ROOT / "fleet" / "fleet.yaml")
    assert inv.fleet == "test-fleet"
    assert (inv.connect_timeout, inv.parallel, inv.path) == (5.0, 8, ROOT / "fleet" / "fleet.yaml")
    assert inv.nodes == tuple(Node(f"node{i}", "127.0.0.1", 2200 + i, 8100 + i, "root") for i in range(1, 9))


# (id, text replaced in PLAYBOOK, replacement, whole expected message)
PLAYBOOK_CASES = [
    ("missing-keep-releases", "keep_releases: 3\n", "", "router.yaml: keep_releases: missing"),
    ("keep-releases-one", "keep_releases: 3", "keep_releases: 1", "router.yaml: keep_releases: should be at least 2"),
    ("keep-releases-bool", "keep_releases: 3", "keep_releases: true",
     "router.yaml: keep_releases: should be an integer"),
    ("keep-releases-text", "keep_releases: 3", "keep_releases: '3'",
     "router.yaml: keep_releases: should be an integer"),
    ("name-float", "name: order-router", "name: 1.10", "router.yaml: name: should be a string"),
    ("name-metachar", "name: order-router", "name: 'router&&id'", f"router.yaml: name: {NAME}, got 'router&&id'"),
    ("unknown-key", "keep_releases: 3", "keep_releases: 3\nkeep_release: 3", "router.yaml: unknown key 'keep_release'"),
    ("duplicate-key", "  command: 60", "  command: 60\n  command: 30",
     "router.yaml: timeouts: duplicate key 'command' (line 12)"),
    ("root-relative", "install_root: /opt/router", "install_root: opt/router",
     f"router.yaml: install_root: {ROOT_PATH}, got 'opt/router'"),
    ("root-dotdot", "install_root: /opt/router", "install_root: /opt/../etc",
     f"router.yaml: install_root: {ROOT_PATH}, got '/opt/../etc'"),
    ("root-trailing-slash", "install_root: /opt/router", "install_root: /opt/router/",
     f"router.yaml: install_root: {ROOT_PATH}, got '/opt/router/'"),
    ("root-double-slash", "install_root: /opt/router", "install_root: /opt//router",
     f"router.yaml: install_root: {ROOT_PATH}, got '/opt//router'"),
    ("root-slash", "install_root: /opt/router", "install_root: /", f"router.yaml: install_root: {ROOT_PATH}, got '/'"),
    ("root-space", "install_root: /opt/router", "install_root: /opt/my router",
     f"router.yaml: install_root: {ROOT_PATH}, got '/opt/my router'"),
    ("root-metachar", "install_root: /opt/router", "install_root: '/opt/$(id)'",
     f"router.yaml: install_root: {ROOT_PATH}, got '/opt/$(id)'"),
    ("restart-empty", "restart: [supervisorctl, restart, router]", "restart: []",
     "router.yaml: service/restart: should be a non-empty list of strings"),
    ("restart-string", "restart: [supervisorctl, restart, router]", "restart: supervisorctl restart router",
     "router.yaml: service/restart: should be a non-empty list of strings"),
    ("restart-empty-token", "restart: [supervisorctl, restart, router]", "restart: [supervisorctl, '']",
     "router.yaml: service/restart/1: should be a non-empty string without control characters"),
    ("stop-int-token", "stop: [supervisorctl, stop, router]", "stop: [kill, 1]",
     "router.yaml: service/stop/1: should be a non-empty string without control characters"),
    ("health-relative", "health_path: /health", "health_path: health",
     "router.yaml: service/health_path: should be a URL path starting with '/', got 'health'"),
    ("health-space", "health_path: /health", "health_path: /he alth",
     "router.yaml: service/health_path: should be a URL path starting with '/', got '/he alth'"),
    ("service-unknown", "  health_path: /health", "  health_path: /health\n  start: [x]",
     "router.yaml: service: unknown key 'start'"),
    ("timeout-zero", "  health: 20", "  health: 0", "router.yaml: timeouts/health: should be greater than 0"),
    ("timeout-string", "  connect: 5", "  connect: 5s", "router.yaml: timeouts/connect: should be a number"),
    ("min-free-negative", "min_free_mb: 64", "min_free_mb: -1", "router.yaml: min_free_mb: should be at least 0"),
    ("min-free-float", "min_free_mb: 64", "min_free_mb: 6.4", "router.yaml: min_free_mb: should be an integer"),
    ("source-int", "source: ../src", "source: 7", "router.yaml: source: should be a string"),
    ("source-empty", "source: ../src", "source: ''", "router.yaml: source: should be a folder path, got ''"),
    ("service-missing", "service:\n  restart: [supervisorctl, restart, router]\n  stop: [supervisorctl, stop, router]\n"
     "  health_path: /health\n", "", "router.yaml: service: missing"),
]


@pytest.mark.parametrize("old, new, message", [c[1:] for c in PLAYBOOK_CASES], ids=[c[0] for c in PLAYBOOK_CASES])
def test_bad_playbook_is_refused_with_exact_message(tmp_path, old, new, message):
    with pytest.raises(ConfigError) as err:
        load_playbook(write(tmp_path, "router.yaml", edit(PLAYBOOK, old, new)))
    assert str(err.value) == message


def test_playbook_values_defaults_and_source_resolution(tmp_path):
    (tmp_path / "books").mkdir()
    text = edit(PLAYBOOK, "timeouts:\n  connect: 5\n  command: 60\n  health: 20\nmin_free_mb: 64\n", "")
    book = load_playbook(write(tmp_path / "books", "router.yaml", text))
    assert book == Playbook("order-router", tmp_path / "src", "/opt/router", 3,
                            Service(("supervisorctl", "restart", "router"), ("supervisorctl", "stop", "router"),
                                    "/health"), Timeouts(5.0, 60.0, 20.0), 64, tmp_path / "books" / "router.yaml")
    absolute = load_playbook(write(tmp_path, "abs.yaml", edit(PLAYBOOK, "source: ../src", "source: /srv/app")))
    assert absolute.source == Path("/srv/app")


def test_real_router_playbook_loads():
    book = load_playbook(ROOT / "playbooks" / "router.yaml")
    assert book == Playbook("order-router", ROOT / "fleet" / "router", "/opt/router", 3,
                            Service(None, None, "/health", Supervisor("router", "/var/run/supervisor.sock"),
                                    "supervisord"),
                            Timeouts(5.0, 60.0, 20.0), 64, ROOT / "playbooks" / "router.yaml",
                            flag_registry=ROOT / "playbooks" / "flags.yaml",
                            breakers=Breakers(50.0, 20000.0, True, 50.0, 5.0))


SERVICE_CASES = [
    ("supervisor-only", "  supervisor: {program: router}\n", None),
    ("neither", "", "router.yaml: service: needs `supervisor`, `manager`, or both `restart` and `stop`"),
    ("restart-without-stop", "  restart: [x]\n",
     "router.yaml: service: needs `supervisor`, `manager`, or both `restart` and `stop`"),
    ("supervisor-bad-program", "  supervisor: {program: 'a b'}\n",
     "router.yaml: service/supervisor/program: should be a name matching ^[a-z0-9][a-z0-9_-]{0,62}$, got 'a b'"),
    ("supervisor-relative-socket", "  supervisor: {program: router, socket: run/s.sock}\n",
     "router.yaml: service/supervisor/socket: should be an absolute normalized path of [A-Za-z0-9._/-], "
     "got 'run/s.sock'"),
    ("supervisor-unknown-key", "  supervisor: {program: router, sock: /x}\n",
     "router.yaml: service/supervisor: unknown key 'sock'"),
]


@pytest.mark.parametrize("body, message", [c[1:] for c in SERVICE_CASES], ids=[c[0] for c in SERVICE_CASES])
def test_service_needs_supervisor_or_restart_and_stop(tmp_path, body, message):
    old = "  restart: [supervisorctl, restart, router]\n  stop: [supervisorctl, stop, router]\n"
    path = write(tmp_path, "router.yaml", edit(PLAYBOOK, old, body))
    if message is None:
        assert load_playbook(path).service.supervisor == Supervisor("router", "/var/run/supervisor.sock")
        return
    with pytest.raises(ConfigError) as err:
        load_playbook(path)
    assert str(err.value) == message


def test_loaded_config_is_frozen():
    inv = load_inventory(ROOT / "fleet" / "fleet.yaml")
    with pytest.raises(AttributeError):
        inv.nodes[0].host = "10.0.0.1"  # type: ignore[misc]


def test_load_yaml_allows_anchors_and_merge_keys(tmp_path):
    text = "base: &b {a: 1, b: 2}\nderived:\n  <<: *b\n  b: 3\n"
    assert _load_yaml(write(tmp_path, "x.yaml", text)) == {"base": {"a": 1, "b": 2}, "derived": {"a": 1, "b": 3}}
