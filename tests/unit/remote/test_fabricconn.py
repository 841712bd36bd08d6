"""The Fabric factory refuses unknown host keys (hops included), and no code path installs an auto-add policy."""

from __future__ import annotations

import ast
from pathlib import Path

import paramiko

from deployctl.config.inventory import Node
from deployctl.config.sshconfig import Jump
from deployctl.remote import fabricconn

PACKAGE = Path(__file__).resolve().parents[3] / "deployctl"


def test_fabric_connection_rejects_unknown_keys_at_every_hop(tmp_path, monkeypatch):
    (tmp_path / ".ssh").mkdir()
    (tmp_path / ".ssh" / "config").write_text("Host *\n  ProxyJump evil\n  IdentityFile /evil\n")
    monkeypatch.setenv("HOME", str(tmp_path))
    known = tmp_path / "known_hosts"
    known.write_text("[10.0.0.5]:2222 ssh-ed25519 "
                     "AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl\n")
    node = Node("a", "10.0.0.5", 2222, 80, "deploy", "/keys/a",
                (Jump("outer", 22, "o", "/keys/o"), Jump("inner", 2200, "i", None)))
    conn = fabricconn.connection(node, tmp_path / "id", known, 3.0)
    chain = [conn, conn.gateway, conn.gateway.gateway]
    assert [(c.host, c.port, c.user) for c in chain] == [("10.0.0.5", 2222, "deploy"), ("inner", 2200, "i"),
                                                          ("outer", 22, "o")]
    assert conn.gateway.gateway.gateway is False  # the first hop is reached directly, whatever ssh_config says
    assert [c.connect_kwargs["key_filename"] for c in chain] == [["/keys/a"], [str(tmp_path / "id")], ["/keys/o"]]
    for c in chain:
        assert type(c.client._policy) is paramiko.RejectPolicy
        assert c.connect_kwargs["look_for_keys"] is False and c.connect_kwargs["allow_agent"] is False
    assert conn.client.get_host_keys().lookup("[10.0.0.5]:2222") is not None
    assert conn.ssh_config == {"hostname": "10.0.0.5"}  # Fabric read no ~/.ssh/config: config/sshconfig.py did


def _calls(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            yield node


def _own_policies(tree: ast.AST) -> bool:
    """True if the module defines its own host-key policy (a class with missing_host_key, as paramiko calls it)."""
    return any(isinstance(cls, ast.ClassDef) and any(isinstance(fn, ast.FunctionDef) and fn.name == "missing_host_key"
                                                     for fn in cls.body) for cls in ast.walk(tree))


def test_no_code_path_installs_an_auto_add_policy():
    """AutoAddPolicy and WarningPolicy (which also lets an unknown key in) appear nowhere in deployctl/; the
    paramiko and Fabric connection factories install RejectPolicy; any other policy installed is one of our
    own (enroll's pin-on-evidence policy), which its own tests hold to refusing a key without evidence."""
    policies, bad, own = [], [], set()
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text())
        if _own_policies(tree):
            own.add(path.name)
        for node in ast.walk(tree):
            if isinstance(node, (ast.Name, ast.Attribute)):
                name = node.id if isinstance(node, ast.Name) else node.attr
                if name in ("AutoAddPolicy", "WarningPolicy"):
                    bad.append(f"{path.name}:{node.lineno}")
        for call in _calls(tree):
            if isinstance(call.func, ast.Attribute) and call.func.attr == "set_missing_host_key_policy":
                arg = call.args[0] if call.args else None
                ok = (isinstance(arg, ast.Call) and isinstance(arg.func, ast.Attribute)
                      and arg.func.attr == "RejectPolicy")
                policies.append((path.name, ok))
    assert bad == []
    assert {("fabricconn.py", True), ("sshconnect.py", True)} <= set(policies)
    assert {name for name, ok in policies if not ok} <= own
