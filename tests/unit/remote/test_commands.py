"""remote/commands.py: builders pinned by exact equality, `render` quoting, and every parser on good and bad answers."""

from __future__ import annotations

import json
import shlex

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from deployctl.config.playbook import Service, Supervisor
from deployctl.errors import DeployctlError, ExitCode
from deployctl.remote import agentpack, commands, replies
from deployctl.remote.commands import Hashes, NodeAnswerError, Probe
from deployctl.remote.replies import MAX_REASON

ROOT = "/opt/router"
D1 = "a" * 64
D2 = "0123456789abcdef" * 4
SHA = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
PREFIX = ["python3", "-I", "-S", "-c"]


# --- builders ---------------------------------------------------------------------------------------------------
# The agent runs as `python3 -I -S -c AGENT OP ROOT ...` (-S was added to commands._agent while these tests were
# written; the brief's `python3 -I -c` prefix predates it).

SUP = Supervisor(program="router", socket="/var/run/supervisor.sock")
PLAIN = Service(restart=("supervisorctl", "restart", "router"), stop=("supervisorctl", "stop", "router"),
                health_path="/health")
SUPERVISED = Service(restart=None, stop=None, health_path="/health", supervisor=SUP)


def agent_tail(argv: list[str]) -> list[str]:
    """Check the fixed agent prefix and return what follows the source text."""
    assert argv[:len(PREFIX)] == PREFIX
    assert tuple(argv[len(PREFIX):len(PREFIX) + 4]) == agentpack.agent_program()
    return argv[len(PREFIX) + 4:]


BUILDERS = [
    ("stage", lambda: commands.stage(ROOT, D1, 10, 3, [D2]), ["stage", ROOT, D1, "10", "3", D2]),
    ("switch", lambda: commands.switch(ROOT, D1), ["switch", ROOT, D1]),
    ("switch-supervised", lambda: commands.switch(ROOT, D1, ("/run/s.sock", "router")),
     ["switch", ROOT, D1, "/run/s.sock", "router"]),
    ("stop", lambda: commands.stop(ROOT, ("/run/s.sock", "router")), ["stop", ROOT, "/run/s.sock", "router"]),
    ("activate-supervised", lambda: commands.activate(ROOT, D1, SUPERVISED),
     ["switch", ROOT, D1, "/var/run/supervisor.sock", "router"]),
    ("activate-supervised-none", lambda: commands.activate(ROOT, None, SUPERVISED),
     ["stop", ROOT, "/var/run/supervisor.sock", "router"]),
    ("prune", lambda: commands.prune(ROOT, 3, [D1, D2]), ["prune", ROOT, "3", D1, D2]),
    ("prune-no-protect", lambda: commands.prune(ROOT, 2, []), ["prune", ROOT, "2"]),
    ("journal", lambda: commands.journal_append(ROOT), ["journal", ROOT]),
    ("halt", lambda: commands.halt(ROOT), ["halt", ROOT]),
    ("deploy", lambda: commands.deploy(ROOT, D1, 3, [D1, D2]), ["deploy", ROOT, D1, "3", D1, D2]),
    ("have", lambda: commands.have(ROOT), ["have", ROOT]),
    ("root-with-space", lambda: commands.stage("/srv/my router", D1, 0, 2), ["stage", "/srv/my router", D1, "0", "2"]),
]


@pytest.mark.parametrize("name, build, tail", BUILDERS, ids=[b[0] for b in BUILDERS])
def test_builder_argv(name, build, tail):
    argv = build()
    assert agent_tail(argv) == tail
    assert all(isinstance(t, str) for t in argv)


def test_reuse_plan_and_upload_bytes():
    assert commands.reuse_hints({"a/b": D1, "c": D2}, {"a/b": [(D2, "a/b"), (D1, "x")], "c": []}) == (
        b'{"files":{"a/b":"' + D1.encode() + b'","c":"' + D2.encode() + b'"},"hints":{"a/b":[["' + D2.encode()
        + b'","a/b"],["' + D1.encode() + b'","x"]],"c":[]}}\n')
    assert commands.reuse_hints({}, {}) == b'{"files":{},"hints":{}}\n'
    assert commands.upload(b"tar") == b"3\ntar" and commands.upload(b"") == b"0\n"


def test_agent_is_the_node_agent_source():
    assert "def op_stage" in agentpack.AGENT and "__main__" in agentpack.AGENT


def test_activate_without_supervisor_is_switch_then_restart():
    chain = commands.activate(ROOT, D1, PLAIN)
    assert len(chain) == 2
    assert agent_tail(chain[0]) == ["switch", ROOT, D1]
    assert chain[1] == ["supervisorctl", "restart", "router"]


def test_activate_without_supervisor_or_digest_is_the_stop_argv():
    assert commands.activate(ROOT, None, PLAIN) == ["supervisorctl", "stop", "router"]


def test_activate_returns_fresh_lists():
    chain = commands.activate(ROOT, D1, PLAIN)
    chain[1].append("--later-edit")  # editing a built command must not touch the playbook's argv
    assert PLAIN.restart == ("supervisorctl", "restart", "router")
    assert commands.activate(ROOT, D1, PLAIN)[1] == ["supervisorctl", "restart", "router"]


# --- render -----------------------------------------------------------------------------------------------------

RENDER = [
    ("plain", ["echo", "hi"], "echo hi"),
    ("space", ["echo", "a b"], "echo 'a b'"),
    ("single-quote", ["echo", "it's"], "echo 'it'\"'\"'s'"),
    ("double-quote", ["echo", 'say "x"'], "echo 'say \"x\"'"),
    ("command-substitution", ["echo", "$(rm -rf /)"], "echo '$(rm -rf /)'"),
    ("backticks", ["echo", "`id`"], "echo '`id`'"),
    ("semicolon", ["echo", "a;reboot"], "echo 'a;reboot'"),
    ("newline", ["echo", "a\nb"], "echo 'a\nb'"),
    ("empty-token", ["echo", ""], "echo ''"),
    ("unicode", ["echo", "héllo wörld ✓"], "echo 'héllo wörld ✓'"),
    ("glob", ["ls", "*"], "ls '*'"),
    ("and-inside-token", ["echo", "a && b"], "echo 'a && b'"),
    ("empty", [], ""),
]


@pytest.mark.parametrize("name, argv, text", RENDER, ids=[r[0] for r in RENDER])
def test_render_exact(name, argv, text):
    assert commands.render(argv) == text
    assert shlex.split(commands.render(argv)) == argv


def test_render_chain_joins_with_and():
    chain = [["cd", "/srv/a b"], ["echo", "$(x)"], ["true"]]
    assert commands.render(chain) == "cd '/srv/a b' && echo '$(x)' && true"
    assert shlex.split(commands.render(chain)) == ["cd", "/srv/a b", "&&", "echo", "$(x)", "&&", "true"]


def test_render_agent_command_round_trips():
    argv = commands.stage("/opt/my router", D1, 5, 3)
    assert shlex.split(commands.render(argv)) == argv
    chain = commands.activate(ROOT, D1, PLAIN)
    words = shlex.split(commands.render(chain))
    assert words == chain[0] + ["&&"] + chain[1]


@given(st.lists(st.text()))
@settings(max_examples=300)
def test_render_round_trips_any_text(argv):
    assert shlex.split(commands.render(argv)) == argv


@given(st.lists(st.lists(st.text(), min_size=1), min_size=1, max_size=4))
def test_render_chain_round_trips_any_text(chain):
    expected = []
    for i, argv in enumerate(chain):
        expected += (["&&"] if i else []) + argv
    assert shlex.split(commands.render(chain)) == expected


# --- parsers: captured good output ------------------------------------------------------------------------------

SHELL_READS = [
    ("probe", lambda: commands.probe(ROOT), [*PREFIX, *agentpack.agent_program(), "probe", ROOT]),
    ("probe-root-with-space", lambda: commands.probe("/srv/my router"),
     [*PREFIX, *agentpack.agent_program(), "probe", "/srv/my router"]),
    ("hashes-default", lambda: commands.hashes(ROOT), ["sh", "-c", commands.HASHES_SH, "sh", ROOT, "current"]),
    ("hashes-digest", lambda: commands.hashes(ROOT, D2), ["sh", "-c", commands.HASHES_SH, "sh", ROOT, D2]),
]


@pytest.mark.parametrize("build, expected", [c[1:] for c in SHELL_READS], ids=[c[0] for c in SHELL_READS])
def test_shell_reads_pass_the_root_as_an_argument(build, expected):
    argv = build()
    assert argv == expected
    assert "/opt" not in commands.HASHES_SH  # the script never has a path spliced in


def probe_out(current=f"releases/{D1}", halted="no", free="52428800000", releases=(D2, D1), root="yes"):
    lines = [f"root {root}", f"current {current}", f"halted {halted}", f"free {free}"]
    return ("\n".join(lines + [f"release {r}" for r in releases]) + "\n").encode()


def hashes_out(current=f"releases/{D1}", halted="no", odd=("link",), files=(("router.py", SHA), ("lib/util.py", D2))):
    lines = [f"current {current}", f"halted {halted}"] + [f"odd {o}" for o in odd]
    return ("\n".join(lines + [f"{h}  ./{p}" for p, h in files]) + "\n").encode()


def test_parse_probe_good():
    assert commands.parse_probe(probe_out()) == Probe(D1, tuple(sorted((D1, D2))), 52428800000, False)


def test_parse_probe_fresh_node():
    out = probe_out(current="", halted="yes", free="1024", releases=())
    assert commands.parse_probe(out) == Probe(None, (), 1024, True)


def test_parse_probe_without_install_root():
    assert commands.parse_probe(b"root no\n") == Probe(None, (), 0, False)


def test_parse_probe_skips_names_that_are_not_releases():
    out = probe_out(releases=(D1, "fill", "Z" * 64, D1.upper()))
    assert commands.parse_probe(out).releases == (D1,)


def test_parse_probe_current_not_a_digest_is_kept():
    assert commands.parse_probe(probe_out(current="/elsewhere")).current == "?/elsewhere"


def test_parse_probe_clips_what_it_quotes_of_unexpected_lines():
    out = probe_out() + b"".join(b"k%06d v\n" % i for i in range(100_000))
    with pytest.raises(NodeAnswerError) as err:
        commands.parse_probe(out)
    said = str(err.value)
    assert said.startswith("probe: unexpected lines ['k000000', 'k000001', ") and len(said) < MAX_REASON + 50
    assert said.endswith(f"... [clipped, {len(repr([f'k{i:06d}' for i in range(100_000)])) + 24} characters in all]")


def test_parse_hashes_good():
    got = commands.parse_hashes(hashes_out())
    assert got == Hashes(D1, {"router.py": SHA, "lib/util.py": D2}, ("link",), False)


def test_parse_hashes_no_current():
    assert commands.parse_hashes(hashes_out(current="", halted="yes", odd=(), files=())) == Hashes(None, {}, (), True)


def test_parse_hashes_reports_escaped_names_as_odd():
    out = hashes_out(odd=()) + f"\\{SHA}  ./bad\\nname\n".encode()
    assert commands.parse_hashes(out).odd == ("(unprintable name) ./bad\\nname",)


def test_parse_stage_good():
    assert commands.parse_stage(f'{{"digest": "{D1}", "files": 3, "reused": false}}\n'.encode()) == D1


def test_parse_switch_good():
    out = f'{{"current": "{D2}", "previous": "{D1}", "restarted": true}}\n'.encode()
    assert commands.parse_switch(out) == (D1, D2)


def test_parse_switch_first_install():
    out = f'{{"current": "{D2}", "previous": null, "restarted": false}}\n'.encode()
    assert commands.parse_switch(out) == (None, D2)


def test_parse_uses_first_line_only():
    out = f'{{"digest": "{D1}"}}\nsome trailing noise\n'.encode()
    assert commands.parse_stage(out) == D1


AGENT_ERRORS = [
    ("json-error", b'{"error": "release abc is not on this node"}\n', "release abc is not on this node"),
    ("json-after-noise", b'Warning: something\n{"error": "disk full: no space"}\n', "disk full: no space"),
    ("raw-last-line", b"Traceback (most recent call last):\n  ...\nOSError: boom\n", "OSError: boom"),
    ("ssh-text", b"bash: python3: command not found\n", "bash: python3: command not found"),
    ("empty", b"", "no error text"),
    ("whitespace", b"  \n\n", "no error text"),
    ("json-list", b"[1, 2]\n", "[1, 2]"),
    ("json-string", b'"oops"\n', '"oops"'),
    ("json-no-error-key", b'{"x": 1}\n', '{"x": 1}'),
    ("not-utf8", b"\xff\xfe bad\n", "\ufffd\ufffd bad"),
]


@pytest.mark.parametrize("name, stderr, text", AGENT_ERRORS, ids=[a[0] for a in AGENT_ERRORS])
def test_agent_error(name, stderr, text):
    assert commands.agent_error(stderr) == text


HUGE = "x" * (1 << 20)
CLIPPED = "x" * MAX_REASON + f"... [clipped, {len(HUGE)} characters in all]"
CLIPS = [
    ("short", "disk full", "disk full"),
    ("at-the-limit", "x" * MAX_REASON, "x" * MAX_REASON),
    ("one-over", "x" * (MAX_REASON + 1), "x" * MAX_REASON + f"... [clipped, {MAX_REASON + 1} characters in all]"),
    ("a-mebibyte", HUGE, CLIPPED),
    ("control-characters", "a\nb\tc\x1b[2Jd\x00e", "a b c?[2Jd?e"),
]


@pytest.mark.parametrize("name, text, said", CLIPS, ids=[c[0] for c in CLIPS])
def test_clip_keeps_a_nodes_words_to_one_short_line(name, text, said):
    assert replies.clip(text) == said


@pytest.mark.parametrize("stderr", [json.dumps({"error": HUGE}).encode(), HUGE.encode(), b"noise\n" + HUGE.encode()],
                         ids=["json", "raw", "raw-last-line"])
def test_agent_error_clips_a_mebibyte_of_error_text(stderr):
    assert commands.agent_error(stderr) == CLIPPED


# --- parsers: malformed output ----------------------------------------------------------------------------------

GOOD_STAGE = {"digest": D1, "files": 1, "reused": False}
GOOD_SWITCH = {"current": D2, "previous": D1, "restarted": False}


def _with(doc: dict, **changes) -> bytes:
    d = dict(doc)
    for k, v in changes.items():
        if v is _DROP:
            d.pop(k)
        else:
            d[k] = v
    return json.dumps(d).encode()


_DROP = object()

COMMON_BAD = [
    ("empty", b""),
    ("blank", b"  \n \n"),
    ("not-json", b"hello\n"),
    ("truncated-json", b'{"digest": "ab'),
    ("json-list", b"[1, 2, 3]\n"),
    ("json-string", b'"x"\n'),
    ("json-number", b"42\n"),
    ("json-null", b"null\n"),
    ("not-utf8", b"\xff\xfe\x00{}"),
    ("nan", b"NaN\n"),
]

PARSER_BAD = [
    # probe and hashes: "key value" lines
    ("probe", "no-root-line", probe_out().replace(b"root yes\n", b"")),
    ("probe", "root-maybe", probe_out(root="maybe")),
    ("probe", "two-current", probe_out() + f"current releases/{D2}\n".encode()),
    ("probe", "free-words", probe_out(free="lots")),
    ("probe", "free-negative", probe_out(free="-5")),
    ("probe", "halted-missing", probe_out().replace(b"halted no\n", b"")),
    ("probe", "halted-true", probe_out(halted="true")),
    ("probe", "unknown-line", probe_out() + b"extra thing\n"),
    ("probe", "bare-word", probe_out() + b"word\n"),
    ("hashes", "current-missing", hashes_out().replace(f"current releases/{D1}\n".encode(), b"")),
    ("hashes", "halted-missing", hashes_out().replace(b"halted no\n", b"")),
    ("hashes", "short-hash", hashes_out(files=(("a", "abc"),))),
    ("hashes", "upper-hash", hashes_out(files=(("a", SHA.upper()),))),
    ("hashes", "no-dot-slash", hashes_out() + f"{SHA}  a\n".encode()),
    ("hashes", "garbage-line", hashes_out() + b"garbage here\n"),
    # stage
    ("stage", "digest-missing", _with(GOOD_STAGE, digest=_DROP)),
    ("stage", "digest-int", _with(GOOD_STAGE, digest=5)),
    ("stage", "digest-non-hex", _with(GOOD_STAGE, digest="x" * 64)),
    ("stage", "digest-upper", _with(GOOD_STAGE, digest=D1.upper())),
    ("stage", "digest-short", _with(GOOD_STAGE, digest=D1[:63])),
    # switch
    ("switch", "current-missing", _with(GOOD_SWITCH, current=_DROP)),
    ("switch", "current-int", _with(GOOD_SWITCH, current=7)),
    ("switch", "current-null", _with(GOOD_SWITCH, current=None)),
]

PARSERS = {"probe": commands.parse_probe, "hashes": commands.parse_hashes,
           "stage": commands.parse_stage, "switch": commands.parse_switch}
JSON_PARSERS = {"stage": commands.parse_stage, "switch": commands.parse_switch}


@pytest.mark.parametrize("parser", sorted(PARSERS))
@pytest.mark.parametrize("name, out", COMMON_BAD, ids=[c[0] for c in COMMON_BAD])
def test_parsers_refuse_unreadable(parser, name, out):
    if parser in ("probe", "hashes") and name in ("empty", "blank"):
        out = b"x\n"  # an empty answer lacks the required lines, tested in PARSER_BAD
    with pytest.raises(NodeAnswerError) as info:
        PARSERS[parser](out)
    assert str(info.value).startswith(f"{parser}: ")


@pytest.mark.parametrize("parser, name, out", PARSER_BAD, ids=[f"{p[0]}-{p[1]}" for p in PARSER_BAD])
def test_parsers_refuse_wrong_fields(parser, name, out):
    with pytest.raises(NodeAnswerError) as info:
        PARSERS[parser](out)
    assert str(info.value).startswith(f"{parser}: ")


def test_node_answer_error_is_a_deployctl_error():
    assert issubclass(NodeAnswerError, DeployctlError)
    assert NodeAnswerError("x").exit_code == ExitCode.FAILED


def test_parse_switch_refuses_non_hex_current():
    with pytest.raises(NodeAnswerError):
        commands.parse_switch(_with(GOOD_SWITCH, current="not-a-digest"))


def test_parse_switch_refuses_wrong_type_previous():
    with pytest.raises(NodeAnswerError):
        commands.parse_switch(_with(GOOD_SWITCH, previous=5))


NEWLINE_DIGESTS = [
    ("stage", _with(GOOD_STAGE, digest=D1 + "\n")),
]


@pytest.mark.parametrize("parser, out", NEWLINE_DIGESTS, ids=[n[0] for n in NEWLINE_DIGESTS])
def test_parsers_refuse_digest_with_trailing_newline(parser, out):
    with pytest.raises(NodeAnswerError):
        PARSERS[parser](out)


DEEP = b"[" * 100_000


@pytest.mark.parametrize("parser", sorted(PARSERS))
def test_parsers_refuse_deeply_nested_json(parser):
    with pytest.raises(NodeAnswerError):
        PARSERS[parser](DEEP)


def test_agent_error_survives_deeply_nested_json():
    assert commands.agent_error(DEEP) == "[" * MAX_REASON + f"... [clipped, {len(DEEP)} characters in all]"


# --- parsers: random bytes ---------------------------------------------------------------------------------------

def _json_ish():
    leaf = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=70)
    tree = st.recursive(leaf, lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=8), kids,
                                                                                         max_size=4), max_leaves=8)
    keys = st.sampled_from(["current", "releases", "free", "halted", "files", "odd", "digest", "previous", "error"])
    hexes = st.sampled_from([D1, D2, SHA, "x" * 64, ""])
    value = tree | hexes | st.lists(hexes, max_size=3) | st.dictionaries(st.text(max_size=5), hexes, max_size=3)
    return st.dictionaries(keys, value).map(lambda d: json.dumps(d).encode())


@pytest.mark.parametrize("parser", sorted(PARSERS))
@given(data=st.binary(max_size=300) | _json_ish())
@settings(max_examples=300)
def test_parsers_on_random_bytes_raise_only_node_answer_error(parser, data):
    try:
        PARSERS[parser](data)
    except NodeAnswerError:
        pass


@given(data=st.binary(max_size=300) | _json_ish())
@settings(max_examples=300)
def test_agent_error_on_random_bytes_returns_text(data):
    assert isinstance(commands.agent_error(data), str)
