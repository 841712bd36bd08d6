"""Every parser of node answers fed hostile bytes: deep nesting, huge values, NaN and infinities, invalid
UTF-8 and lone surrogates, truncation, wrong types, JSON that is not an object. Each gives its documented
error (NodeAnswerError; parse_watch's DeployctlError; a not-ok Answer from the routers' decoder) and
nothing else; what the routers' decoder lets through, verify's, the outlier report's and watch's readers
take without an exception."""

from __future__ import annotations

import json

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from deployctl.config.playbook import Breakers
from deployctl.errors import DeployctlError
from deployctl.model import breakers, outliers
from deployctl.model import verify as verify_mod
from deployctl.ops import watch
from deployctl.remote import commands, nodecontract, replies, routers
from deployctl.remote.replies import NodeAnswerError

D1 = "a" * 64
DEEP = b"[" * 100_000

# JSON texts that break a naive reader: too deep, too big, not finite, not UTF-8 once decoded, wrong types.
HOSTILE_VALUES = [
    "[" * 3000 + "]" * 3000, '{"a":' * 3000 + "1" + "}" * 3000, "[" * 100_000, "9" * 5000, "-" + "9" * 5000,
    "1e999", "-1e999", "NaN", "Infinity", "-Infinity", "1.5", "0", "-1", "true", "false", "null", "[]", "{}",
    '"\\ud800"', '"\\udcff tail"', '"' + "x" * 100_000 + '"', '"line\\nbreak\\u001b[31m"', '"[/x]"', '"²"',
    f'"{D1}"', '"open"', '"closed"', '["a"]', '[[]]', '{"x": true}', '{"x": [1]}', '{"x": null}',
]
KEYS = ["digest", "gate", "halted", "flags", "error", "pid", "orders", "child_orders", "rejected", "errors",
        "version", "breaker", "nonce", "now", "proof", "probe", "have", "bytes", "current", "previous",
        "files", "reused", "restarted", "x"]


def _object(pairs: list[tuple[str, str]]) -> str:
    return "{" + ", ".join(f"{json.dumps(k)}: {v}" for k, v in pairs) + "}"


@st.composite
def hostile_json(draw) -> bytes:
    """One answer: an object of hostile fields, or a hostile value alone, then maybe cut short, spliced with
    bytes that are not UTF-8, or preceded by noise lines."""
    value = st.sampled_from(HOSTILE_VALUES)
    text = draw(st.one_of(st.lists(st.tuples(st.sampled_from(KEYS), value), max_size=6).map(_object), value))
    data = text.encode()
    if draw(st.booleans()):
        data = data[:draw(st.integers(0, len(data)))]
    if draw(st.integers(0, 3)) == 0:
        at = draw(st.integers(0, len(data)))
        data = data[:at] + draw(st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\x00", b"\n"])) + data[at:]
    if draw(st.integers(0, 4)) == 0:
        data = b"noise\n" + data
    return data


KV_KEYS = ["root", "current", "halted", "free", "release", "odd", D1, "\\" + D1, "x"]
KV_VALUES = ["yes", "no", "", "²", "٣", "9" * 5000, "12", "-5", f"releases/{D1}", f" ./{D1}", " ./a", "\udcff",
             "x" * 10_000]


GOOD_PROBE = {"root": "yes", "current": f"releases/{D1}", "halted": "no", "free": "12", "release": D1}


@st.composite
def hostile_lines(draw) -> bytes:
    """"key value" lines a probe or hashes answer might hold: a good probe with one value made hostile, or
    lines drawn at random; maybe with a line that is not UTF-8 or not "key value"."""
    value = st.sampled_from(KV_VALUES)
    if draw(st.booleans()):
        key = draw(st.sampled_from(sorted(GOOD_PROBE)))
        lines = [(k, draw(value) if k == key else v) for k, v in GOOD_PROBE.items()]
    else:
        lines = draw(st.lists(st.tuples(st.sampled_from(KV_KEYS), value), max_size=8))
    data = "".join(f"{k} {v}\n" for k, v in lines).encode("utf-8", "surrogateescape")
    if draw(st.integers(0, 3)) == 0:
        data += draw(st.sampled_from([b"\xff\n", b"word\n", b"\n", b"free\n"]))
    return data


def probe_line(draw_lines: bytes) -> bytes:
    """The held command's {"probe": TEXT} line around hostile probe text."""
    return json.dumps({"probe": draw_lines.decode("utf-8", "surrogateescape")}).encode() + b"\n"


ANY_ANSWER = st.one_of(st.binary(max_size=300), hostile_json(), hostile_lines(), hostile_lines().map(probe_line))

PARSERS = {"probe": commands.parse_probe, "probe_answer": commands.parse_probe_answer,
           "hashes": commands.parse_hashes, "stage": commands.parse_stage, "switch": commands.parse_switch,
           "have": commands.parse_have, "json_doc": lambda out: replies.json_doc(out, "x"),
           "kv_lines": lambda out: replies.kv_lines(out, "x"),
           # enroll's probe of a plain server, which Fabric hands over decoded with errors replaced
           "facts": lambda out: nodecontract.parse_facts(out.decode("utf-8", "replace"))}


def only_node_answer_error(parser: str, data: bytes) -> None:
    """Parse `data`; a NodeAnswerError of one short line is the only exception allowed out."""
    try:
        PARSERS[parser](data)
    except NodeAnswerError as exc:
        assert "\n" not in str(exc) and len(str(exc)) < 400


@pytest.mark.parametrize("parser", sorted(PARSERS))
@given(data=ANY_ANSWER)
@settings(max_examples=120, deadline=None)
def test_every_answer_parser_raises_only_node_answer_error(parser, data):
    only_node_answer_error(parser, data)


BROKE_INT = b"root yes\ncurrent \nhalted no\nfree \xc2\xb2\n"  # '²' passes str.isdigit; int() refuses it


@pytest.mark.parametrize("parser", ["probe", "probe_answer", "hashes"])
@given(data=hostile_lines() | hostile_lines().map(probe_line))
@example(data=BROKE_INT)
@example(data=probe_line(BROKE_INT))
@example(data=b"root yes\ncurrent \nhalted no\nfree " + b"9" * 5000 + b"\n")
@example(data=b'{"probe": "root yes\\ncurrent \\ud800\\nhalted no\\nfree 1\\n"}\n')
@settings(max_examples=120, deadline=None)
def test_line_parsers_on_hostile_lines_raise_only_node_answer_error(parser, data):
    only_node_answer_error(parser, data)


@given(data=ANY_ANSWER | st.binary(max_size=80).map(lambda b: b + b" 12\n"))
@settings(max_examples=120, deadline=None)
def test_the_watch_line_parser_raises_only_its_deployctl_error(data):
    try:
        release, switched = commands.parse_watch(data)
    except DeployctlError as exc:
        assert type(exc) is DeployctlError and str(exc).startswith("watch: ")
    else:
        assert release is None or replies.HEX64.match(release)
        assert switched is None or 0 <= switched < 1e12


@pytest.mark.parametrize("name, out, message", [
    ("free-superscript", b"root yes\ncurrent \nhalted no\nfree \xc2\xb2\n", "probe: free should be a number of bytes"),
    ("free-5000-digits", b"root yes\ncurrent \nhalted no\nfree " + b"9" * 5000 + b"\n",
     "probe: free should be a number of bytes"),
])
def test_probe_refuses_digits_int_cannot_read(name, out, message):
    with pytest.raises(NodeAnswerError) as info:
        commands.parse_probe(out)
    assert str(info.value) == message


def test_a_held_probe_with_a_lone_surrogate_is_not_utf8():
    with pytest.raises(NodeAnswerError) as info:
        commands.parse_probe_answer(b'{"probe": "root yes\\ncurrent \\ud800\\nhalted no\\nfree 1\\n"}\n')
    assert str(info.value) == "probe: answer is not UTF-8"


def test_each_node_names_every_node_whose_answer_is_bad():
    answers = {"node2": b"root no\n", "node3": b"[[[", "node1": b"free \xc2\xb2\n"}
    with pytest.raises(NodeAnswerError) as info:
        replies.each_node(commands.parse_probe, answers, "rollout")
    assert str(info.value) == ("rollout: bad answer from node1: probe: answer should have one 'root' line; "
                               "node3: probe: unreadable line '[[['")


# --- the routers' answers --------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, data, error", [
    ("deep", DEEP, "HTTP 200: answer is not JSON"),
    ("deep-object", b'{"a":' * 100_000, "HTTP 200: answer is not JSON"),
    ("deep-but-valid", b"[" * 5000 + b"]" * 5000, "HTTP 200: answer is not JSON"),
    ("huge-int", b'{"orders": ' + b"9" * 5000 + b"}", "HTTP 200: answer is not JSON"),
    ("not-utf8", b'{"gate": "\xff"}', "HTTP 200: answer is not JSON"),
    ("truncated", b'{"gate": "clo', "HTTP 200: answer is not JSON"),
    ("empty", b"", "HTTP 200: answer is not JSON"),
    ("list", b'["halted", true]', "HTTP 200: answer is not a JSON object"),
    ("null", b"null", "HTTP 200: answer is not a JSON object"),
    ("number", b"1", "HTTP 200: answer is not a JSON object"),
    ("halted-string", b'{"halted": "true"}', "HTTP 200: answer field 'halted' of the wrong type"),
    ("halted-one", b'{"halted": 1}', "HTTP 200: answer field 'halted' of the wrong type"),
    ("digest-list", b'{"digest": ["a"]}', "HTTP 200: answer field 'digest' of the wrong type"),
    ("digest-null", b'{"digest": null}', "HTTP 200: answer field 'digest' of the wrong type"),
    ("digest-surrogate", b'{"digest": "\\ud800"}', "HTTP 200: answer field 'digest' of the wrong type"),
    ("gate-number", b'{"gate": 1}', "HTTP 200: answer field 'gate' of the wrong type"),
    ("pid-bool", b'{"pid": true}', "HTTP 200: answer field 'pid' of the wrong type"),
    ("orders-nan", b'{"orders": NaN}', "HTTP 200: answer field 'orders' of the wrong type"),
    ("errors-infinity", b'{"errors": 1e999}', "HTTP 200: answer field 'errors' of the wrong type"),
    ("flags-list", b'{"flags": ["a"]}', "HTTP 200: answer field 'flags' of the wrong type"),
    ("flags-not-bool", b'{"flags": {"a": [1]}}', "HTTP 200: answer field 'flags' should map names to true or false"),
])
def test_a_bad_router_answer_is_a_not_ok_answer_naming_the_problem(name, data, error):
    answer = routers.decode_answer("node3", 200, data)
    assert (answer.node, answer.status, answer.body, answer.ok, answer.reason()) == ("node3", 200, {}, False, error)


def test_a_good_router_answer_is_ok_and_a_refusal_keeps_its_reason_in_one_line():
    good = routers.decode_answer("n", 200, json.dumps({"gate": "closed", "halted": True, "flags": {"a": False},
                                                       "orders": 3, "extra": [None]}).encode())
    assert good.ok and good.body["halted"] is True and good.reason() == "HTTP 200: no reason given"
    error = "bad\nsignature\x1b[31m" + "x" * 1000
    refused = routers.decode_answer("n", 401, json.dumps({"error": error}).encode())
    assert not refused.ok and refused.error is None
    assert refused.reason() == "HTTP 401: " + replies.clip(error) and "\n" not in refused.reason()


@pytest.mark.parametrize("body", [
    {"nonce": "N", "now": "1", "proof": "é"},  # compare_digest refuses non-ASCII text with TypeError
    {"nonce": "N", "now": "\ud800", "proof": "ab"},  # encoding the clock for its proof: UnicodeEncodeError
    {"nonce": "N", "now": "nan", "proof": "ab"},
])
def test_a_hostile_clock_refusal_is_no_proof(body):
    assert routers._proven_clock(body, "token", "N") is None


def test_a_proven_clock_must_be_finite():
    from deployctl.remote import reqsign

    for now, clock in (("1700000000.5", 1700000000.5), ("inf", None), ("nan", None)):
        proof = reqsign.clock_proof("token", "N", now)
        assert routers._proven_clock({"nonce": "N", "now": now, "proof": proof}, "token", "N") == clock


def _health_readers(answers: list[routers.Answer]) -> None:
    """What verify, status, the outlier report and watch do with health answers."""
    observations = [verify_mod.NodeObservation(a.node, health=a.body if a.ok else None,
                                               health_error=None if a.ok else a.reason()) for a in answers]
    report = verify_mod.report(observations, D1, None, {"a": True})
    assert len(report.nodes) == len(answers) and report.to_dict()["nodes"]
    outliers.group(verify_mod.members(observations, list(report.nodes)))
    readings = [breakers.Reading(a.node, float(i), a.body if a.ok else None) for i, a in enumerate(answers)]
    node_rates = {r.node: breakers.rates(readings[0], r) for r in readings}
    cfg = Breakers(1.0, 1.0, True, 1.0, 0.0)
    breakers.check(cfg, readings, node_rates, breakers.Memory(), 10.0)
    sweep = watch.Sweep(0.0, 0.0, readings, node_rates, watch.outlier_line(readings))
    json.dumps(sweep.to_dict(), default=str)


@given(st.lists(st.one_of(hostile_json(), st.binary(max_size=100)), min_size=1, max_size=4),
       st.sampled_from([200, 401, 500]))
@example([DEEP], 200)
@example([b'{"digest": ["a"]}', b'{"flags": {"a": [1]}}', b'{"gate": 1}', b'{"error": 1e999}'], 200)
@settings(max_examples=120, deadline=None)
def test_any_router_answer_is_decoded_and_read_without_an_exception(bodies, status):
    answers = [routers.decode_answer(f"node{i}", status, data) for i, data in enumerate(bodies)]
    for answer in answers:
        if answer.ok:
            assert all(replies._typed(answer.body[k], kind) for k, kind in replies.ROUTER_FIELDS.items()
                       if k in answer.body)
        reason = answer.reason()
        assert "\n" not in reason and len(reason) <= replies.MAX_REASON + 60
    _health_readers(answers)
