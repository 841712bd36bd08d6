"""The node contract enroll installs: service definitions, the sudoers rule, the probe's parser, the plan."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from deployctl.config.playbook import Service, Supervisor
from deployctl.remote import commands
from deployctl.remote.commands import NodeAnswerError
from deployctl.remote.nodecontract import (
    Contract,
    Facts,
    check_manager,
    desired,
    parse_facts,
    probe,
    service_commands,
    service_file,
    sha256,
    sudoers_rule,
)
from deployctl.remote.nodecontract import (
    steps as plan_steps,
)

SUP = Contract("/opt/router", "router", "supervisord", "deploy", "deploy", 8080, "t0ken", "ssh-ed25519 AAAA signing",
               ("/usr/bin/supervisorctl",))
SYSD = Contract("/srv/app", "orders", "systemd", "deploy", "deploy", 9000, "t0ken", "pub", ("/bin/systemctl",))
ROOT = Contract("/opt/router", "router", "supervisord", "root", "root", 8080, "t0ken", "pub", ())


def test_systemd_unit_text():
    path, text = service_file(SYSD)
    assert path == "/etc/systemd/system/orders.service"
    assert text.splitlines()[1:] == [
        "[Unit]", "Description=deployctl service orders", "After=network.target", "",
        "[Service]", "Type=simple", "User=deploy", "WorkingDirectory=/srv/app", "Environment=PYTHONDONTWRITEBYTECODE=1",
        "ExecStart=/usr/bin/python3 -B /srv/app/current/router.py --state-dir /srv/app/state --port 9000",
        "Restart=on-failure", "RestartSec=1", "KillMode=control-group", "TimeoutStopSec=5", "",
        "[Install]", "WantedBy=multi-user.target"]


def test_supervisord_program_text():
    path, text = service_file(SUP)
    assert path == "/etc/supervisor/conf.d/router.conf"
    lines = text.splitlines()
    assert lines[1:5] == ["[program:router]",
                          "command=/usr/bin/python3 -B /opt/router/current/router.py --state-dir /opt/router/state "
                          "--port 8080", "directory=/opt/router", "user=deploy"]


@pytest.mark.parametrize("contract, expected", [
    (SUP, "deploy ALL=(root) NOPASSWD: /usr/bin/supervisorctl restart router, /usr/bin/supervisorctl stop router, "
          "/usr/bin/supervisorctl start router"),
    (SYSD, "deploy ALL=(root) NOPASSWD: /bin/systemctl restart orders, /bin/systemctl stop orders, "
           "/bin/systemctl start orders"),
])
def test_sudoers_rule_allows_only_the_service_commands(contract, expected):
    assert sudoers_rule(contract).splitlines()[1] == expected
    assert service_commands(contract)[0][1:] == ["restart", contract.unit]


@pytest.mark.skipif(not shutil.which("visudo"), reason="visudo not installed here")
def test_sudoers_rule_passes_visudo(tmp_path):
    rule = tmp_path / "rule"
    rule.write_text(sudoers_rule(SUP))
    assert subprocess.run(["visudo", "-cf", str(rule)], capture_output=True).returncode == 0


def test_root_login_gets_no_sudoers_rule():
    assert not [w for w in desired(ROOT) if w.path.startswith("/etc/sudoers.d")]
    assert [w.path for w in desired(SUP)][-1] == "/etc/sudoers.d/deployctl-router"


@pytest.mark.parametrize("become, service, restart, stop", [
    (True, Service(None, None, "/health", Supervisor("router", "/s.sock")),
     ["sudo", "-n", "supervisorctl", "restart", "router"], ["sudo", "-n", "supervisorctl", "stop", "router"]),
    (True, Service(None, None, "/health", None, "systemd", "orders"),
     ["sudo", "-n", "systemctl", "restart", "orders"], ["sudo", "-n", "systemctl", "stop", "orders"]),
    (False, Service(None, None, "/health", None, "systemd", "orders"),
     ["systemctl", "restart", "orders"], ["systemctl", "stop", "orders"]),
])
def test_become_restarts_and_stops_through_the_manager(become, service, restart, stop):
    request = commands.switch_request("d" * 64, None, service, become)
    assert b'"restart":' + repr(restart).replace("'", '"').replace(", ", ",").encode() in request
    assert commands.activate("/opt/router", "d" * 64, service, become)[1] == restart
    agent_stop = commands.activate("/opt/router", None, service, become)
    assert agent_stop[8:] == ["stop", "/opt/router", "--run", *stop]


def test_root_with_supervisor_keeps_the_socket():
    service = Service(None, None, "/health", Supervisor("router", "/s.sock"))
    assert b'"supervisor":["/s.sock","router"]' in commands.switch_request("d" * 64, None, service)


def _facts(contract: Contract, **changed) -> Facts:
    """Facts of a node that has everything the contract wants, with `changed` paths replaced."""
    paths = {w.path: ("dir", w.owner, w.mode, "-") if w.content is None
             else ("file", w.owner, w.mode, sha256(w.content)) for w in desired(contract)}
    return Facts({**paths, **changed}, contract.tools, False)


def test_an_enrolled_node_needs_nothing():
    assert plan_steps(SUP, _facts(SUP), "/tmp/x") == []


def test_a_bare_node_gets_everything_in_order():
    facts = Facts({}, ("/usr/bin/supervisorctl",), False)
    steps = plan_steps(SUP, facts, "/tmp/x")
    assert [s.what for s in steps] == [
        "create folder /opt/router (deploy, 755)", "create folder /opt/router/releases (deploy, 755)",
        "create folder /opt/router/state (deploy, 700)", "install /opt/router/state/token (deploy, 600)",
        "install /opt/router/state/signing.pub (deploy, 644)", "install /etc/supervisor/conf.d/router.conf (root, 644)",
        "install /etc/sudoers.d/deployctl-router (root, 440)", "supervisord: reread, add router"]
    sudoers = steps[6]
    assert sudoers.argv == (("test", "-f", "/tmp/x/6"), ("visudo", "-cf", "/tmp/x/6"),
                            ("install", "-o", "root", "-g", "root", "-m", "440", "/tmp/x/6",
                             "/etc/sudoers.d/deployctl-router"))
    assert steps[-1].argv == (("/usr/bin/supervisorctl", "reread"), ("/usr/bin/supervisorctl", "update", "router"))


def test_only_what_differs_changes_and_the_token_is_never_shown():
    facts = _facts(SUP, **{"/opt/router/state": ("dir", "root", "755", "-"),
                           "/opt/router/state/token": ("file", "deploy", "600", sha256("old\n"))})
    steps = plan_steps(SUP, facts, "/tmp/x")
    assert [s.what for s in steps] == ["set /opt/router/state to deploy, 700 (was root, 755)",
                                       "replace /opt/router/state/token (deploy, 600)"]
    assert "t0ken" not in repr([(s.what, s.argv) for s in steps])
    assert steps[1].upload.secret


def test_a_changed_unit_reloads_systemd():
    path, _ = service_file(SYSD)
    steps = plan_steps(SYSD, _facts(SYSD, **{path: ("file", "root", "644", sha256("old"))}), "/tmp/x")
    assert [s.argv for s in steps][-1] == (("/bin/systemctl", "daemon-reload"),
                                           ("/bin/systemctl", "enable", "orders.service"))


def test_probe_runs_on_a_real_shell_and_parses(tmp_path):
    (tmp_path / "d").mkdir(mode=0o750)
    (tmp_path / "f").write_text("hello\n")
    (tmp_path / "l").symlink_to(tmp_path / "f")
    argv = probe([])
    argv += [str(tmp_path / n) for n in ("d", "f", "l", "none")]
    facts = parse_facts(subprocess.run(argv, capture_output=True, text=True, check=True).stdout)
    import getpass
    me = getpass.getuser()
    assert facts.paths == {str(tmp_path / "d"): ("dir", me, "750", "-"),
                           str(tmp_path / "f"): ("file", me, "644", sha256("hello\n")),
                           str(tmp_path / "l"): ("other", "-", "-", "-"),
                           str(tmp_path / "none"): ("none", "-", "-", "-")}


@pytest.mark.parametrize("text, message", [
    ("systemd no\npath /x dir root\n", "enroll probe: unexpected line 'path /x dir root'"),
    ("tool supervisorctl\nsystemd no\n", "enroll probe: unexpected line 'tool supervisorctl'"),
    ("path /x none - - -\n", "enroll probe: no systemd line"),
])
def test_probe_parser_refuses_what_it_does_not_understand(text, message):
    with pytest.raises(NodeAnswerError) as exc:
        parse_facts(text)
    assert str(exc.value) == message


def test_a_node_without_the_manager_is_refused():
    assert check_manager(SYSD, Facts({}, ("/bin/systemctl",), False)) == (
        "the playbook's service manager is systemd, but systemd does not run on this node")
    assert check_manager(SUP, Facts({}, (), False)) == (
        "the playbook's service manager is supervisord, but supervisorctl is not installed on this node")
    assert check_manager(SUP, Facts({}, ("/usr/bin/supervisorctl",), False)) is None


def test_apply_script_stops_at_the_failing_step_and_names_it(tmp_path):
    from deployctl.remote.nodecontract import Step, apply_script, failed_step

    made = tmp_path / "made"
    steps = [Step("one", (("touch", str(made)),)), Step("two", (("false",),)),
             Step("three", (("touch", str(tmp_path / "x")),))]
    code = subprocess.run(apply_script(steps)).returncode
    assert failed_step(steps, code) == 1 and made.exists() and not (tmp_path / "x").exists()
    assert subprocess.run(apply_script(steps[:1])).returncode == 0
    assert failed_step(steps, 1) is None  # sh's own failure names no step


@pytest.mark.parametrize("service, message", [
    ("  manager: upstart\n", "router.yaml: service/manager: should be one of supervisord, systemd, got 'upstart'"),
    ("  manager: systemd\n  supervisor: {program: router}\n",
     "router.yaml: service/supervisor: only for manager supervisord"),
    ("  supervisor: {program: router}\n  unit: other\n",
     "router.yaml: service/unit: should be the supervisor program 'router'"),
    ("  manager: systemd\n  port: 0\n", "router.yaml: service/port: should be between 1 and 65535"),
])
def test_playbook_service_manager_fields_are_strict(tmp_path, service, message):
    from deployctl.config.playbook import load_playbook
    from deployctl.errors import ConfigError

    book = tmp_path / "router.yaml"
    book.write_text("name: r\nsource: .\ninstall_root: /opt/r\nkeep_releases: 2\n"
                    f"service:\n  health_path: /h\n{service}")
    with pytest.raises(ConfigError) as exc:
        load_playbook(book)
    assert str(exc.value) == message


def test_a_systemd_playbook_needs_no_restart_argv(tmp_path):
    from deployctl.config.playbook import load_playbook

    book = tmp_path / "router.yaml"
    book.write_text("name: r\nsource: .\ninstall_root: /opt/r\nkeep_releases: 2\nservice:\n  health_path: /h\n"
                    "  manager: systemd\n  unit: orders\n  port: 9000\n")
    service = load_playbook(book).service
    assert (service.manager_name, service.unit_name, service.port) == ("systemd", "orders", 9000)
    assert commands.activate("/opt/r", "d" * 64, service)[1] == ["systemctl", "restart", "orders"]
