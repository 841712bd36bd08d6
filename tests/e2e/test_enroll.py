"""`deployctl enroll` on plain servers deployctl did not make, then the whole life of a release on them:
rollout, verify (and drift), rollback --all, halt, resume, all as the non-root `deploy` user with sudo,
through a bastion. A bare fleet of its own (project deployctl-e2e-enroll, ports 3651.. / 9651.., bastion
3650), its own inventory, playbook and state folder; taken down (--keep-images) at the end."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from barefleet import ROOT, SUDO_PASSWORD, bare_fleet

from deployctl import api
from deployctl.testfleet import docker as docker_fleet
from deployctl.testfleet import fleetfiles

pytestmark = pytest.mark.e2e
NODES = 3


@pytest.fixture(scope="module")
def bare(tmp_path_factory):
    with bare_fleet(tmp_path_factory.mktemp("enroll"), "deployctl-e2e-enroll", nodes=NODES, first_ssh_port=3651,
                    first_router_port=9651, bastion_port=3650, pin_nodes=False) as fleet:
        yield fleet


@pytest.fixture(autouse=True)
def fleet():
    """conftest's autouse `fleet` brings up the ordinary fleet; this module needs only its bare one."""
    yield


@pytest.fixture(scope="module")
def playbook(bare) -> Path:
    """The repository's playbook with an absolute source and flag registry, beside the bare fleet's inventory."""
    text = (ROOT / "playbooks" / "router.yaml").read_text()
    text = re.sub(r"(?m)^source: \S+", f"source: {ROOT / 'fleet' / 'router'}", text)
    text = re.sub(r"(?m)^flag_registry: \S+", f"flag_registry: {ROOT / 'playbooks' / 'flags.yaml'}", text)
    path = bare.inventory.with_name("router.yaml")
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def cli(bare, playbook):
    def run(*args: str, password: bool = True, timeout: float = 300):
        env_args = ("--sudo-password-env", "BARE_SUDO") if password and args[0] == "enroll" else ()
        import os
        import subprocess

        return subprocess.run([str(ROOT / ".venv" / "bin" / "deployctl"), "-q", "-i", str(bare.inventory), "-p",
                               str(playbook), *args, *env_args], cwd=ROOT, capture_output=True, text=True,
                              timeout=timeout, stdin=subprocess.DEVNULL,
                              env={**os.environ, "DEPLOYCTL_STATE": str(bare.state), "BARE_SUDO": SUDO_PASSWORD})
    return run


def fingerprints(bare) -> list[str]:
    return [f"--fingerprint={n}={bare.fleet.fingerprints[n]}" for n in bare.fleet.nodes]


def node_sh(bare, node: str, script: str, user: str = "deploy") -> tuple[int, str]:
    """Run a shell script inside a node's container (to inject drift or look), as `user`."""
    c = docker_fleet.container(docker_fleet.client(), fleetfiles.load_spec(bare.compose), node)
    code, out = c.exec_run(["sh", "-c", script], user=user)
    return code, out.decode(errors="replace")


def test_enroll_refuses_unknown_host_keys_then_pins_given_fingerprints(bare, cli):
    refused = cli("enroll", "--dry-run")
    assert refused.returncode == 10, refused.stderr
    for node in bare.fleet.nodes:
        assert f"{node}: unknown host key ssh-ed25519 {bare.fleet.fingerprints[node]}" in refused.stderr
    wrong = cli("enroll", "--dry-run", "--fingerprint", "node1=SHA256:" + "A" * 43, "node1")
    assert wrong.returncode == 10 and "not SHA256:AAAA" in wrong.stderr
    assert "127.0.0.1]:3651 " not in bare.known_hosts.read_text()  # nothing pinned by refusals

    dry = cli("enroll", "--dry-run", "--json", *fingerprints(bare))
    assert dry.returncode == 0, dry.stderr
    plan = json.loads(dry.stdout)
    assert sorted(plan) == sorted(bare.fleet.nodes)
    assert plan["node1"]["steps"][0] == "create folder /opt/router (deploy, 755)"
    assert "install /etc/sudoers.d/deployctl-router (root, 440)" in plan["node1"]["steps"]
    assert not plan["node1"]["changed"] and len(plan["node1"]["pinned"]) == 1
    assert node_sh(bare, "node1", "test -e /opt/router")[0] != 0  # a dry run changes nothing


def test_enroll_installs_the_contract_and_a_second_run_changes_nothing(bare, cli):
    first = cli("enroll", "--json")
    assert first.returncode == 0, first.stderr
    assert all(r["changed"] for r in json.loads(first.stdout).values())
    again = cli("enroll", "--json")
    assert again.returncode == 0, again.stderr
    assert {n: (r["steps"], r["changed"]) for n, r in json.loads(again.stdout).items()} == {
        n: ([], False) for n in bare.fleet.nodes}
    code, out = node_sh(bare, "node2", "stat -c '%U %a %n' /opt/router /opt/router/state /opt/router/state/token; "
                        "tail -n1 /opt/router/state/journal.jsonl", user="root")
    lines = out.splitlines()
    assert lines[:3] == ["deploy 755 /opt/router", "deploy 700 /opt/router/state", "deploy 600 /opt/router/state/token"]
    assert json.loads(lines[3])["action"] == "enroll"
    # The rule allows the service's commands and nothing else, without a password.
    assert node_sh(bare, "node2", "sudo -n supervisorctl stop router")[0] == 0
    code, out = node_sh(bare, "node2", "sudo -n supervisorctl status")
    assert code != 0 and "password is required" in out


@pytest.fixture(scope="module")
def releases(bare, playbook, tmp_path_factory):
    ctx = api.open_context(bare.inventory, playbook, bare.state)
    made = []
    for version in ("1.0.0", "1.0.1"):
        src = tmp_path_factory.mktemp("src") / "router"
        shutil.copytree(ROOT / "fleet" / "router", src)
        cfg = json.loads((src / "router.json").read_text())
        (src / "router.json").write_text(json.dumps({**cfg, "version": version}, indent=2) + "\n")
        made.append(api.build(ctx, tmp_path_factory.mktemp("dist"), src))
    return made


def test_rollout_verify_drift_rollback_halt_resume_as_deploy_through_the_bastion(bare, cli, releases):
    one, two = releases
    for art in (one, two):
        out = cli("rollout", str(art.path))
        assert out.returncode == 0, out.stderr
    assert cli("verify", "--expect", two.digest).returncode == 0
    code, _ = node_sh(bare, "node3", "echo '# woken' >> /opt/router/current/router.py")
    assert code == 0
    drift = cli("verify", "--json")
    assert drift.returncode == 3
    bad = {n["node"]: n for n in json.loads(drift.stdout)["nodes"] if not n["ok"]}
    assert list(bad) == ["node3"] and "router.py" in json.dumps(bad["node3"])

    back = cli("rollback", "--all")
    assert back.returncode == 0, back.stderr
    assert cli("verify", "--expect", one.digest).returncode == 0
    halted = cli("halt")
    assert halted.returncode == 0, halted.stderr
    assert cli("rollout", str(two.path)).returncode == 7
    resumed = cli("resume")
    assert resumed.returncode == 0, resumed.stderr
    assert cli("verify", "--expect", one.digest).returncode == 0


def test_without_forwarding_on_the_bastion_the_run_fails_naming_it(bare, cli):
    bare.set_forwarding(False)
    try:
        refused = f"bastion deploy@127.0.0.1:{bare.fleet.bastion_port}: forwarding refused"
        out = cli("verify", "--json")
        assert out.returncode == 4 and refused in out.stdout, out.stdout + out.stderr  # 4: unreachable
        again = cli("enroll", "node1")
        assert again.returncode == 1 and f"node1: via {refused}" in again.stderr, again.stderr
    finally:
        bare.set_forwarding(True)
    assert cli("verify").returncode == 0
