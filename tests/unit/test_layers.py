"""STYLE.md's architecture, enforced on the source with `ast`: import direction, adapters, no bare assert."""

from __future__ import annotations

import ast
import importlib
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "deployctl"

# Each module's rank: a module imports only modules of a lower rank (none sideways, none upward).
# The ranks refine STYLE.md's six layers into a total order, so that no exception list is needed:
#   STYLE layer 1 (no I/O but files):     errors 0; schema, statedir, signing, sshconfig, reqsign 1; config, flags 2
#   STYLE layer 2 (pure):                 phases, node_agent 1; commands, trust, manifest, outliers, breakers 3;
#                                         artifact, verify, approval, nodecontract 4
#   STYLE layer 3 (adapters, journal):    channel 1; journal 2; gate, docker_fleet, sshconnect 3; ssh, fabricconn 4
#   STYLE layer 4:                        context, barefleet 5 (the bare test fleet: Docker and keys only); run 6
#   STYLE layer 5 (what commands do):     rollout, rollback, control, signoff, enroll 7; testfleet 8 (it rolls out
#                                         the first release), watch 8 (it halts through control)
#   STYLE layer 6:                        api, output (the CLI's rendering) 9; cli, quick (halt without Typer) 10;
#                                         __main__ 11
LAYERS = {
    "__init__": 0, "errors": 0,
    "schema": 1, "statedir": 1, "sshconfig": 1, "signing": 1, "reqsign": 1, "phases": 1, "node_agent": 1,
    "channel": 1,
    "config": 2, "journal": 2, "flags": 2,
    "manifest": 3,
    "commands": 3, "trust": 3, "outliers": 3, "breakers": 3, "gate": 3, "docker_fleet": 3, "sshconnect": 3,
    "artifact": 4,
    "verify": 4, "ssh": 4, "fabricconn": 4, "approval": 4, "nodecontract": 4,
    "context": 5, "barefleet": 5,
    "run": 6,
    "rollout": 7, "rollback": 7, "control": 7, "signoff": 7, "enroll": 7,
    "testfleet": 8, "watch": 8,
    "api": 9, "output": 9,
    "cli": 10, "quick": 10,
    "__main__": 11,
}

# Same-rank imports allowed, each with its reason. None today: keep it that way.
SAME_LAYER_ALLOWED: set[tuple[str, str]] = set()

# Third-party packages and the only module allowed to import each.
ADAPTERS = {"paramiko": "sshconnect", "fabric": "fabricconn", "invoke": "fabricconn", "docker": "docker_fleet",
            "typer": "cli", "rich": "output", "yaml": "schema"}


def modules() -> dict[str, ast.Module]:
    return {p.stem: ast.parse(p.read_text(), filename=str(p)) for p in sorted(PACKAGE.glob("*.py"))}


def imports(tree: ast.Module, module: str) -> list[tuple[str, int]]:
    """Every imported module name (absolute, dotted) with its line, including imports inside functions."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from . import x / from .x import y
                base = "deployctl" + (f".{node.module}" if node.module else "")
            else:
                base = node.module or ""
            if base == "deployctl":  # a submodule, or a name of the package itself (__version__)
                found += [(f"deployctl.{a.name}" if a.name.islower() and not a.name.startswith("__") else "deployctl",
                           node.lineno) for a in node.names]
            else:
                found.append((base, node.lineno))
    return found


def internal_edges() -> list[tuple[str, str, int]]:
    edges = []
    for name, tree in modules().items():
        for target, line in imports(tree, name):
            if target == "deployctl":
                edges.append((name, "__init__", line))
            elif target.startswith("deployctl."):
                edges.append((name, target.split(".")[1], line))
    return edges


def test_every_module_has_a_layer():
    assert sorted(modules()) == sorted(LAYERS), "a new module needs a layer in LAYERS (and in STYLE.md)"


def test_imports_point_downward():
    upward = [f"{src}.py:{line} imports {dst} (layer {LAYERS[src]} -> {LAYERS.get(dst)})"
              for src, dst, line in internal_edges() if dst not in LAYERS or LAYERS[dst] > LAYERS[src]]
    assert upward == []


def test_same_layer_imports_only_where_they_already_are():
    same = {(src, dst) for src, dst, _ in internal_edges() if src != dst and LAYERS.get(dst) == LAYERS[src]}
    assert same - SAME_LAYER_ALLOWED == set()


def test_no_import_cycles():
    graph: dict[str, set[str]] = {}
    for src, dst, _ in internal_edges():
        graph.setdefault(src, set()).add(dst)

    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        for nxt in graph.get(start, ()):
            if nxt == goal or (nxt not in seen and reaches(nxt, goal, seen | {nxt})):
                return True
        return False

    cycles = sorted(m for m in graph if m != "__init__" and reaches(m, m, {m}))
    assert cycles == []


def test_the_state_machine_imports_nothing_of_deployctl():
    assert [dst for src, dst, _ in internal_edges() if src == "phases"] == []


def test_cli_uses_the_tool_only_through_the_facade():
    """The CLI's single door is api.py (and errors, for the exit codes); api.py only re-exports."""
    assert sorted({dst for src, dst, _ in internal_edges() if src == "cli"}) == ["__init__", "api", "errors", "output"]
    assert [dst for src, dst, _ in internal_edges() if src == "output"] == []  # it renders values, decides nothing
    body = [stmt for stmt in modules()["api"].body if not isinstance(stmt, (ast.Import, ast.ImportFrom))]
    kinds = [type(stmt).__name__ for stmt in body]
    # the docstring, the table of names, __all__ and the one lazy lookup (PEP 562): no code of its own
    assert kinds == ["Expr", "Assign", "Assign", "FunctionDef"] and body[-1].name == "__getattr__", kinds


def test_the_facade_names_resolve_to_modules_below_it():
    from deployctl import api

    for name, (module, attr) in api.EXPORTS.items():
        assert LAYERS[module] < LAYERS["api"], (name, module)
        assert getattr(api, name) is getattr(importlib.import_module(f"deployctl.{module}"), attr), name
    assert sorted(api.__all__) == sorted(api.EXPORTS)
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        api.nothing  # noqa: B018


def test_a_read_only_command_does_not_load_rollout_artifact_or_docker_code():
    """STYLE.md 13: `verify`, `halt` and `gate` pay only for what they use."""
    import subprocess

    code = ("import sys; from deployctl import api, cli; api.verify, api.halt, api.gate_status, api.open_context; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('deployctl', 'docker', 'paramiko', 'tarfile', "
            "'cryptography', 'fabric', 'invoke')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    loaded = set(eval(out.stdout))  # noqa: S307 - our own print of a list of names
    assert not loaded & {"deployctl.rollout", "deployctl.rollback", "deployctl.artifact", "deployctl.testfleet",
                         "deployctl.docker_fleet", "deployctl.fabricconn", "docker", "paramiko", "tarfile",
                         "cryptography", "fabric", "invoke", "deployctl.watch", "deployctl.breakers"}, loaded


@pytest.mark.parametrize("package, owner", sorted(ADAPTERS.items()))
def test_adapter_packages_only_in_their_module(package, owner):
    users = sorted({f"{name}.py:{line}" for name, tree in modules().items()
                    for target, line in imports(tree, name)
                    if target.split(".")[0] == package and name != owner})
    assert users == []


@pytest.mark.parametrize("package, owner", [("paramiko", "sshconnect"), ("fabric", "fabricconn"),
                                            ("docker", "docker_fleet")])
def test_heavy_adapters_import_lazily(package, owner):
    """STYLE.md 13: paramiko and docker are imported inside the functions that need them."""
    tree = modules()[owner]
    top = [target for stmt in tree.body if isinstance(stmt, (ast.Import, ast.ImportFrom))
           for target, _ in imports(ast.Module(body=[stmt], type_ignores=[]), owner)]
    assert [t for t in top if t.split(".")[0] == package] == []


def test_node_agent_imports_only_stdlib():
    names = {target.split(".")[0] for target, _ in imports(modules()["node_agent"], "node_agent")}
    assert names and names <= set(sys.stdlib_module_names), names - set(sys.stdlib_module_names)


def test_no_bare_assert_in_library():
    asserts = [f"{name}.py:{node.lineno}" for name, tree in modules().items()
               for node in ast.walk(tree) if isinstance(node, ast.Assert)]
    assert asserts == []


def test_checker_sees_relative_and_package_imports():
    tree = ast.parse("from . import api\nfrom .errors import X\nfrom deployctl import cli, gate\n"
                     "import deployctl.journal\ndef f():\n    import docker\n")
    assert [t for t, _ in imports(tree, "x")] == ["deployctl.api", "deployctl.errors", "deployctl.cli",
                                                  "deployctl.gate", "deployctl.journal", "docker"]
