"""STYLE.md's architecture, enforced on the source with `ast`: the folder rules, the order inside each
folder, the adapters, empty `__init__.py` files and no bare assert."""

from __future__ import annotations

import ast
import functools
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "deployctl"

# The folders each folder may import (besides itself and `errors`, which every folder may import).
# None: the standard library only. The top-level modules count as folders of their own.
FOLDERS: dict[str, set[str] | None] = {
    "errors": set(),
    "config": set(),                                        # the operator's YAML, validated
    "state": set(),                                         # the controller's own folder
    "release": {"config"},                                  # the signed release and who allowed it
    "remote": {"config", "state"},                          # how work reaches a node (with the state folder's keys)
    "model": {"config", "release"},                         # pure decisions
    "node": None,                                           # what runs on a node: sent or installed, stdlib only
    "ops": {"config", "state", "release", "remote", "model"},  # what each command does
    "testfleet": {"config", "state", "ops"},                # the Docker demo fleets ([testfleet] extra)
    "api": set(),                                           # the facade: names only, each imported on first use
    "cli": {"api", "__init__"},                             # and the test fleets' own facade (TESTFLEET_DOOR)
    "__init__": set(),
    "__main__": {"cli"},
}
TESTFLEET_DOOR = ("cli", "fleetcmds", "testfleet.api")  # the one module of cli/ that may reach the test fleets

# Inside a folder, a module imports only modules listed before it.
ORDER = {
    "config": ["schema", "sshconfig", "fields", "inventory", "playbook"],
    "state": ["statedir", "journal", "lock", "keys"],
    "release": ["signing", "manifest", "flags", "artifact", "approval"],
    "model": ["phases", "outliers", "breakers", "verify"],
    "remote": ["channel", "reqsign", "agentpack", "replies", "commands", "nodecontract", "sshconnect", "ssh",
               "fabricconn", "routers", "hostkeys"],
    "node": ["agent"],
    "ops": ["context", "guards", "results", "run", "rollout", "rollback", "control", "twoperson", "enroll", "watch"],
    "testfleet": ["fleetfiles", "docker", "bare", "fleet", "api"],
    "cli": ["streams", "output", "common", "fleetcmds", "app", "fasthalt"],
}

# Third-party packages and the only modules allowed to import each.
ADAPTERS = {"paramiko": {"remote.sshconnect"}, "fabric": {"remote.fabricconn"}, "invoke": {"remote.fabricconn"},
            "docker": {"testfleet.docker"}, "typer": {"cli.app", "cli.common", "cli.fleetcmds"},
            "rich": {"cli.output"}, "yaml": {"config.schema"}}


@functools.cache  # parsed once for all the tests here, which only read the trees
def modules() -> dict[str, ast.Module]:
    """Every module of the package by dotted name under deployctl ("remote.ssh", "api", "cli.__init__")."""
    return {".".join(p.relative_to(PACKAGE).with_suffix("").parts): ast.parse(p.read_text(), filename=str(p))
            for p in sorted(PACKAGE.rglob("*.py"))}


def imports(tree: ast.Module, module: str) -> list[tuple[str, int]]:
    """Every imported module name (absolute, dotted) with its line, including imports inside functions.
    `from deployctl.x import y` names deployctl.x.y when y is a module of the package, else deployctl.x."""
    found = []
    package = ["deployctl", *module.split(".")[:-1]]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from . import x / from .x import y
                base = ".".join(package[: len(package) - node.level + 1] + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            for a in node.names:
                sub = Path(PACKAGE.parent, *base.split("."), a.name)
                is_module = sub.with_suffix(".py").exists() or (sub / "__init__.py").exists()
                found.append((f"{base}.{a.name}" if base.startswith("deployctl") and is_module else base, node.lineno))
    return found


def folder(name: str) -> str:
    return name.split(".")[0]


def internal_edges() -> list[tuple[str, str, int]]:
    """(importer, imported, line) between modules of the package, as dotted names under deployctl."""
    edges = []
    for name, tree in modules().items():
        for target, line in imports(tree, name):
            if target == "deployctl":
                edges.append((name, "__init__", line))
            elif target.startswith("deployctl."):
                edges.append((name, target.removeprefix("deployctl."), line))
    return edges


def test_every_module_is_in_a_folder_rule_and_its_folder_order():
    found = modules()
    missing = [m for m in found if folder(m) not in FOLDERS]
    unordered = [m for m in found if "." in m and not m.endswith("__init__")
                 and m.split(".")[1] not in ORDER.get(folder(m), [])]
    gone = [f"{f}.{m}" for f, names in ORDER.items() for m in names if f"{f}.{m}" not in found]
    assert (missing, unordered, gone) == ([], [], []), "a new module needs its place in FOLDERS / ORDER"


def test_each_folder_imports_only_the_folders_its_rule_names():
    wrong = []
    for src, dst, line in internal_edges():
        a, b = folder(src), folder(dst)
        if a == b or b == "errors" or (src, dst) == (TESTFLEET_DOOR[0] + "." + TESTFLEET_DOOR[1], TESTFLEET_DOOR[2]):
            continue
        if FOLDERS[a] is None or b not in FOLDERS[a]:
            wrong.append(f"{src}:{line} imports {dst}")
    assert wrong == []


def test_inside_a_folder_modules_import_only_those_before_them():
    wrong = []
    for src, dst, line in internal_edges():
        if folder(src) == folder(dst) and "." in src and "." in dst:
            order = ORDER[folder(src)]
            if order.index(dst.split(".")[1]) >= order.index(src.split(".")[1]):
                wrong.append(f"{src}:{line} imports {dst}")
    assert wrong == []


def test_node_side_programs_import_only_the_standard_library():
    for name, tree in modules().items():
        if folder(name) == "node":
            names = {target.split(".")[0] for target, _ in imports(tree, name)}
            assert names <= set(sys.stdlib_module_names), (name, names - set(sys.stdlib_module_names))


def test_every_init_is_empty():
    """Start-up pays only for what a command uses: importing a folder runs nothing."""
    assert {p.relative_to(PACKAGE).as_posix(): p.read_text() for p in PACKAGE.rglob("__init__.py")
            if p.parent != PACKAGE and p.read_text()} == {}


def test_the_state_machine_imports_nothing_of_deployctl():
    assert [dst for src, dst, _ in internal_edges() if src == "model.phases"] == []


def test_cli_uses_the_tool_only_through_the_facade():
    """The CLI's door is api.py (and errors, for the exit codes); api.py only re-exports."""
    outside = sorted({dst for src, dst, _ in internal_edges() if folder(src) == "cli" and folder(dst) != "cli"})
    assert outside == ["__init__", "api", "errors", "testfleet.api"]
    assert [dst for src, dst, _ in internal_edges() if src == "cli.output"] == []  # it renders values only
    body = [stmt for stmt in modules()["api"].body if not isinstance(stmt, (ast.Import, ast.ImportFrom))]
    kinds = [type(stmt).__name__ for stmt in body]
    # the docstring, the table of names, __all__ and the one lazy lookup (PEP 562): no code of its own
    assert kinds == ["Expr", "Assign", "Assign", "FunctionDef"] and body[-1].name == "__getattr__", kinds


def test_the_facade_names_resolve_to_library_modules():
    from deployctl import api

    for name, (module, attr) in api.EXPORTS.items():
        assert folder(module) in FOLDERS["ops"] | {"ops"}, (name, module)
        assert getattr(api, name) is getattr(importlib.import_module(f"deployctl.{module}"), attr), name
    assert sorted(api.__all__) == sorted(api.EXPORTS)
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        api.nothing  # noqa: B018


def test_a_read_only_command_does_not_load_rollout_artifact_or_docker_code():
    """STYLE.md 13: `verify`, `halt` and `gate` pay only for what they use."""
    code = ("import sys; from deployctl import api; from deployctl.cli import app; "
            "api.verify, api.halt, api.gate_status, api.open_context; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('deployctl', 'docker', 'paramiko', 'tarfile', "
            "'cryptography', 'fabric', 'invoke')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    loaded = set(eval(out.stdout))  # noqa: S307 - our own print of a list of names
    assert "deployctl.ops.control" in loaded  # the probe sees what it asked for
    assert not loaded & {"deployctl.ops.rollout", "deployctl.ops.rollback", "deployctl.release.artifact",
                         "deployctl.testfleet.fleet", "deployctl.testfleet.docker", "deployctl.testfleet.api",
                         "deployctl.remote.fabricconn", "docker", "paramiko", "tarfile", "cryptography", "fabric",
                         "invoke", "deployctl.ops.watch", "deployctl.model.breakers"}, loaded


@pytest.mark.parametrize("package, owners", sorted(ADAPTERS.items()))
def test_adapter_packages_only_in_their_modules(package, owners):
    users = sorted({f"{name}:{line}" for name, tree in modules().items()
                    for target, line in imports(tree, name)
                    if target.split(".")[0] == package and name not in owners})
    assert users == []


@pytest.mark.parametrize("package, owner", [("paramiko", "remote.sshconnect"), ("fabric", "remote.fabricconn"),
                                            ("docker", "testfleet.docker")])
def test_heavy_adapters_import_lazily(package, owner):
    """STYLE.md 13: paramiko, fabric and docker are imported inside the functions that need them."""
    tree = modules()[owner]
    top = [target for stmt in tree.body if isinstance(stmt, (ast.Import, ast.ImportFrom))
           for target, _ in imports(ast.Module(body=[stmt], type_ignores=[]), owner)]
    assert [t for t in top if t.split(".")[0] == package] == []
    assert any(t.split(".")[0] == package for t, _ in imports(tree, owner))  # it does import it, inside


def test_no_bare_assert_in_library():
    asserts = [f"{name}:{node.lineno}" for name, tree in modules().items()
               for node in ast.walk(tree) if isinstance(node, ast.Assert)]
    assert asserts == []


def test_checker_sees_relative_package_and_module_imports():
    tree = ast.parse("from . import journal\nfrom .lock import Lock\nfrom deployctl.remote import ssh, routers\n"
                     "from deployctl.remote.ssh import Call\nimport deployctl.errors\nfrom deployctl import api\n"
                     "def f():\n    import docker\n")
    assert [t for t, _ in imports(tree, "state.keys")] == [
        "deployctl.state.journal", "deployctl.state.lock", "deployctl.remote.ssh", "deployctl.remote.routers",
        "deployctl.remote.ssh", "deployctl.errors", "deployctl.api", "docker"]


def test_the_rules_catch_a_wrong_import(tmp_path, monkeypatch):
    """The folder rule and the order are checked on what they claim: a config module importing ops fails."""
    edges = [("config.schema", "ops.run", 1), ("ops.context", "ops.watch", 2)]
    monkeypatch.setattr(sys.modules[__name__], "internal_edges", lambda: edges)
    with pytest.raises(AssertionError, match="config.schema:1 imports ops.run"):
        test_each_folder_imports_only_the_folders_its_rule_names()
    with pytest.raises(AssertionError, match="ops.context:2 imports ops.watch"):
        test_inside_a_folder_modules_import_only_those_before_them()
