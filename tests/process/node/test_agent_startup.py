"""How the agent starts on a node: bytecode or source (commands.agent_program), and what it imports
before its first answer; its stand-ins for json and shutil.rmtree agree with the real ones."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys

import pytest

from deployctl.remote import agentpack, commands

# The agent's module namespace, loaded once as a node would (its main() guarded by __name__).
AGENT: dict = {"__name__": "node_agent_under_test"}
exec(compile(agentpack.AGENT, "node_agent.py", "exec", dont_inherit=True), AGENT)

MAX_ARG_STRLEN = 32 * 4096  # Linux refuses one argument longer than this (execve: E2BIG)


def run(argv: list[str], *python_flags: str) -> subprocess.CompletedProcess:
    assert argv[0] == "python3"
    return subprocess.run([sys.executable, *python_flags, *argv[1:]], capture_output=True, timeout=60)


def test_each_argument_fits_one_execve_argument():
    assert all(len(a.encode()) < MAX_ARG_STRLEN for a in agentpack.agent_program())


def test_same_magic_runs_the_bytecode_other_magic_compiles_the_source(tmp_path):
    """The bytecode is what runs when the node's Python matches; with another magic number the
    source is compiled. Each is told apart by making the other unusable."""
    argv = commands.probe(str(tmp_path / "none"))
    boot, magic, code, source = argv[4:8]
    assert run(argv).stdout == b"root no\n"
    broken_source = argv[:7] + ["!!"] + argv[8:]
    assert run(broken_source).stdout == b"root no\n"  # the bytecode ran
    other_magic = argv[:5] + ["00000000", "!!"] + argv[7:]
    assert run(other_magic).stdout == b"root no\n"  # the source ran
    both_broken = argv[:5] + ["00000000", "!!", "!!"] + argv[8:]
    assert run(both_broken).returncode != 0


def test_agent_program_of_another_source_runs_that_source(tmp_path):
    source = agentpack.AGENT.replace('return "root no\\n"', 'return "root absent\\n"')
    assert source != agentpack.AGENT
    argv = commands.probe(str(tmp_path / "none"))
    argv[4:8] = agentpack.agent_program(source)
    assert run(argv).stdout == b"root absent\n"


def test_deploy_answers_its_probe_without_importing_json_re_shutil_or_hashlib(tmp_path):
    """The first answer of a rollout's command (lock taken, probe) loads none of the slow modules."""
    root = tmp_path / "root"
    (root / "state").mkdir(parents=True)
    lock = {"holder": "me@host", "pid": 1, "since": 1.5, "command": "rollout", "id": "run-1"}
    argv = commands.deploy(str(root), "a" * 64, 3, [], lock)
    proc = subprocess.run([sys.executable, "-X", "importtime", *argv[1:]], input=b"", capture_output=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.splitlines()[0])["probe"].startswith("root yes")
    imported = {line.split("|")[-1].strip() for line in proc.stderr.decode().splitlines() if "|" in line}
    assert imported and not imported & {"json", "re", "shutil", "hashlib"}, sorted(imported)
    assert not (root / "state" / "deploy.lock").exists()  # end of input released it


def test_deploy_waits_for_its_input_without_the_signal_module(tmp_path):
    """Its timed reads (the reuse plan, the upload's size line, the switch request) use _signal:
    the signal module imports enum, functools and collections, 4.7 ms of a node's CPU."""
    root = tmp_path / "root"
    (root / "state").mkdir(parents=True)
    argv = commands.deploy(str(root), "a" * 64, 3, [], {"holder": "me@host", "pid": 1, "since": 1.5,
                                                          "command": "rollout", "id": "run-1"})
    proc = subprocess.run([sys.executable, "-X", "importtime", *argv[1:]], input=b'{"files": {}, "hints": {}}\n',
                          capture_output=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    answers = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [sorted(a) for a in answers] == [["probe"], ["bytes", "have"]]  # both timed reads ran
    imported = {line.split("|")[-1].strip() for line in proc.stderr.decode().splitlines() if "|" in line}
    assert imported and not imported & {"signal", "enum", "functools"}, sorted(imported)


SAMPLES = [None, True, False, 0, -1, 2**70, 1.5, -0.0, 1e300, float("inf"), float("-inf"), "",
           "plain", 'quote " and \\ slash', "\n\r\t\b\f\x00\x1f\x7f", "é ü ñ", "\u2028", "😀 astral",
           "\udcff lone surrogate", [], [1, [2, [3]]], (4, 5), {}, {"b": 1, "a": [None, {"z": "y", "c": 2.25}]},
           {"probe": "root yes\ncurrent releases/x\n"}]


@pytest.mark.parametrize("value", SAMPLES, ids=[repr(v)[:20] for v in SAMPLES])
def test_to_json_writes_what_json_dumps_writes(value):
    assert AGENT["to_json"](value) == json.dumps(value, sort_keys=True)
    assert AGENT["to_json"](value, compact=True) == json.dumps(value, sort_keys=True, separators=(",", ":"))


def test_to_json_refuses_what_it_cannot_write():
    for bad in ({1: "int key"}, {"set": {1}}, b"bytes"):
        with pytest.raises(TypeError):
            AGENT["to_json"](bad)


def test_from_json_reads_what_json_loads_reads():
    for value in SAMPLES:
        text = json.dumps(value)
        for wrapped in (text, " \n" + text + "\r\n\t", text.encode()):
            got = AGENT["from_json"](wrapped)
            want = json.loads(wrapped)
            assert got == want or (isinstance(got, float) and math.isnan(got) and math.isnan(want))
    for bad in ("", "   ", "{", '{"a": 1} x', "[1,]", "nul", '"\\x"', b"\xff", "1 2", "{'a': 1}"):
        with pytest.raises(ValueError):
            AGENT["from_json"](bad)
    assert math.isnan(AGENT["from_json"]("NaN")) and AGENT["from_json"]("-Infinity") == float("-inf")
    deep = "[" * 100000 + "]" * 100000
    with pytest.raises(RecursionError):
        AGENT["from_json"](deep)


def tree(root):
    return sorted(os.path.relpath(os.path.join(b, n), root) for b, ds, fs in os.walk(root) for n in ds + fs)


def test_rmtree_removes_a_tree_and_never_follows_a_link(tmp_path):
    outside = tmp_path / "outside"
    (outside / "keep").mkdir(parents=True)
    (outside / "keep" / "file").write_text("x")
    victim = tmp_path / "victim"
    (victim / "a" / "b").mkdir(parents=True)
    (victim / "a" / "b" / "f").write_text("1")
    (victim / "g").write_text("2")
    os.symlink(outside / "keep", victim / "a" / "dirlink")
    os.symlink(outside / "keep" / "file", victim / "filelink")
    before = tree(outside)
    AGENT["rmtree"](str(victim))
    assert not victim.exists() and tree(outside) == before
    link = tmp_path / "link"
    os.symlink(outside, link)
    AGENT["rmtree"](str(link))  # a link given itself is removed, not what it points at
    assert not os.path.lexists(link) and tree(outside) == before
    AGENT["rmtree"](str(tmp_path / "absent"))  # nothing there: nothing to do
    with pytest.raises(FileNotFoundError):
        AGENT["rmtree"](str(tmp_path / "absent"), ignore_errors=False)
    shutil.rmtree(outside)


def test_rmtree_raises_or_goes_on_as_asked(tmp_path, monkeypatch):
    """One file that cannot be removed (os.unlink refused for it, as a read-only folder would for a
    non-root user): by default the rest goes and that file stays; with ignore_errors=False it raises."""
    victim = tmp_path / "victim"
    (victim / "sub").mkdir(parents=True)
    (victim / "sub" / "stuck").write_text("x")
    (victim / "sub" / "other").write_text("y")
    real_unlink = os.unlink

    def unlink(path, *a, **k):
        if os.path.basename(path) == "stuck":
            raise PermissionError(13, "Permission denied", path)
        return real_unlink(path, *a, **k)

    monkeypatch.setattr(os, "unlink", unlink)
    AGENT["rmtree"](str(victim))
    assert tree(victim) == ["sub", "sub/stuck"]
    with pytest.raises(PermissionError):
        AGENT["rmtree"](str(victim), ignore_errors=False)


@pytest.mark.parametrize("text, ok", [("a" * 64, True), ("0123456789abcdef" * 4, True), ("A" * 64, False),
                                      ("a" * 63, False), ("a" * 64 + "\n", False), ("g" * 64, False), (None, False)])
def test_is_hex64(text, ok):
    assert AGENT["is_hex64"](text) is ok


@pytest.mark.parametrize("text, ok", [("app.py", True), ("a-b_c+1", True), ("", False), ("a/b", False),
                                      ("name\n", False), ("é", False), ("a b", False)])
def test_is_part(text, ok):
    assert AGENT["is_part"](text) is ok


@pytest.mark.parametrize("text, ok", [("0", True), ("123456789012", True), ("1234567890123", False), ("", False),
                                      ("١٢", False), ("12 ", False), ("-1", False)])
def test_is_number(text, ok):
    assert AGENT["is_number"](text, 12) is ok


def test_the_packed_program_is_kept_in_the_state_folder_and_a_damaged_copy_is_packed_again(tmp_path, monkeypatch):
    monkeypatch.setattr(agentpack, "_program_cache", [])
    packs = []
    real = agentpack._pack_program
    monkeypatch.setattr(agentpack, "_pack_program", lambda s: packs.append(1) or real(s))
    program = agentpack.agent_program.__wrapped__  # as a new process would: not the lru_cache'd value
    agentpack.cache_program_in(tmp_path / "cache")
    written = program()  # packed and written
    (kept,) = (tmp_path / "cache").glob("agent-*.txt")
    assert kept.read_text().split("\n")[:2] == list(written[2:]) and packs == [1]
    stale = tmp_path / "cache" / "agent-0123.txt"
    stale.write_text("an earlier version")
    assert program() == written and packs == [1]  # read back, not packed
    code, src, check = kept.read_text().split("\n")
    kept.write_text("\n".join([code[:-4] + "AAAA", src, check]))  # damaged: its sha256 no longer matches
    again = program()
    assert packs == [1, 1] and kept.read_text().split("\n")[:2] == list(again[2:]) and not stale.exists()
    argv = commands.probe(str(tmp_path / "none"))
    argv[4:8] = again
    assert run(argv).stdout == b"root no\n"  # the kept program runs


def test_the_bytecode_has_no_docstrings_or_line_tables_and_still_reports_errors_in_one_line(tmp_path):
    import binascii
    import marshal
    import zlib

    code = marshal.loads(zlib.decompress(binascii.a2b_base64(agentpack.agent_program()[2])))
    funcs = {c.co_name: c for c in code.co_consts if hasattr(c, "co_code")}
    assert funcs and all(c.co_linetable == b"" for c in funcs.values())
    assert "Refuse unless" not in repr(funcs["check_signed"].co_consts)  # its docstring is left out
    full = {c.co_name: c for c in compile(agentpack.AGENT, "a", "exec").co_consts if hasattr(c, "co_code")}
    assert "Refuse unless" in repr(full["check_signed"].co_consts)  # as it is in the source
    proc = run(commands.switch(str(tmp_path / "none"), "a" * 64)[:-1])  # wrong arity: a TypeError on the node
    assert proc.returncode == 1 and len(proc.stderr.splitlines()) == 1 and "error" in json.loads(proc.stderr)
