"""state/journal.py: the append-only controller journal (its lock: test_lock.py)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from deployctl.errors import DeployctlError
from deployctl.state import journal
from deployctl.state.journal import Journal, entry

D1, D2, D3 = "1" * 64, "2" * 64, "3" * 64


# --- journal ----------------------------------------------------------------------------------------------------

def test_append_read_round_trip(tmp_path):
    j = Journal(tmp_path / "state" / "journal.jsonl")
    assert list(j.read()) == []
    one = j.append({"action": "rollout", "phase": "start", "digest": D1, "nodes": ["n1", "n2"]})
    two = j.append({"action": "halt", "outcome": "ok", "text": "ünïcode ✓"})
    assert list(j.read()) == [one, two]
    lines = j.path.read_bytes().splitlines()
    assert lines == [journal.checked_line(one).rstrip(b"\n"), journal.checked_line(two).rstrip(b"\n")]
    assert [json.loads(line) for line in lines] == [{**one, "crc32": lines[0][-10:-2].decode()},
                                                     {**two, "crc32": lines[1][-10:-2].decode()}]
    assert j.path.stat().st_mode & 0o777 == 0o600


def test_encode_is_one_canonical_line():
    assert journal.encode({"b": 1, "a": "x\ny"}) == b'{"a":"x\\ny","b":1}\n'


records = st.dictionaries(st.text(max_size=8).filter(lambda k: k != "crc32"),
                          st.none() | st.booleans() | st.integers() | st.text(max_size=20), max_size=4)


@given(st.lists(records, min_size=1, max_size=6))
@settings(max_examples=50, suppress_health_check=[HealthCheck.function_scoped_fixture],
          deadline=None)  # every append fsyncs the file (and a new journal's folder): slow on a busy disk
def test_never_rewritten_prefix_property(tmp_path, batch):
    path = tmp_path / f"j-{time.monotonic_ns()}.jsonl"
    j = Journal(path)
    before = b""
    for rec in batch:
        j.append(rec)
        now = path.read_bytes()
        assert now.startswith(before) and now[len(before):] == journal.checked_line(rec)
        before = now
    assert list(j.read()) == batch


def test_entry_fills_who_and_when():
    rec = entry("rollout", run="abc", digest=D1)
    assert rec["action"] == "rollout" and rec["run"] == "abc" and rec["digest"] == D1
    assert rec["who"] == journal.actor() and "@" in rec["who"]
    assert time.strptime(rec["ts"], "%Y-%m-%dT%H:%M:%SZ")


@pytest.mark.parametrize("key", ["token", "password", "secret"])
def test_entry_refuses_secret_keys(key):
    with pytest.raises(DeployctlError) as info:
        entry("gate-open", digest=D1, **{key: "hunter2"})
    assert key in str(info.value)
    assert "hunter2" not in str(info.value)


@pytest.mark.parametrize("key", ["Token", "api_token", "control_token", "ssh_password"])
def test_entry_refuses_secret_looking_keys(key):
    with pytest.raises(DeployctlError):
        entry("gate-open", **{key: "hunter2"})


def done(action, digest, outcome="ok", run="r"):
    return {"action": action, "phase": "done", "digest": digest, "outcome": outcome, "run": run}


def test_last_good(tmp_path):
    j = Journal(tmp_path / "j.jsonl")
    assert j.last_good() is None
    j.append(done("rollout", D1))
    j.append(done("rollout", D2, outcome="rolled-back"))
    assert j.last_good() == D1
    j.append(done("rollback", D3))
    assert j.last_good() == D3
    j.append(done("recover", D2))
    assert j.last_good() == D2
    j.append({"action": "gate-open", "digest": D1, "outcome": "ok"})  # not a run
    j.append(done("something-else", D1))
    assert j.last_good() == D2


def test_rollback_target_is_the_newest_release_the_fleet_ran_that_no_node_runs(tmp_path):
    from types import SimpleNamespace

    from deployctl.errors import UsageError
    from deployctl.ops.rollback import rollback_target as _rollback_target
    from deployctl.remote.commands import Probe

    j = Journal(tmp_path / "j.jsonl")
    ctx = SimpleNamespace(journal=j)
    on = lambda d: {"node1": Probe(d, (D1, D2, D3), 0, False), "node2": Probe(d, (D1, D2, D3), 0, False)}  # noqa: E731
    with pytest.raises(UsageError, match="no previous release"):
        _rollback_target(ctx, on(D1), None)
    j.append(done("rollout", D1))
    j.append(done("rollout", D2, outcome="inconsistent"))  # never ran as a whole: not a target
    j.append(done("rollback", D3))
    j.append({"action": "rollout", "phase": "start", "digest": D2})
    j.append({"action": "rollout", "phase": "done", "outcome": "ok", "digest": None})
    assert _rollback_target(ctx, on(D3), None) == D1
    assert _rollback_target(ctx, on(D1), None) == D3
    assert _rollback_target(ctx, on(D3), D1) == D1
    with pytest.raises(UsageError, match="never ran"):
        _rollback_target(ctx, on(D3), D2)


def test_interrupted(tmp_path):
    j = Journal(tmp_path / "j.jsonl")
    assert j.interrupted() is None
    start = {"action": "rollout", "phase": "start", "run": "r1", "digest": D1}
    j.append(start)
    j.append({"action": "rollout", "phase": "stage", "run": "r1", "digest": D1})
    assert j.interrupted() == start
    j.append(done("rollout", D1, run="r1"))
    assert j.interrupted() is None
    second = {"action": "rollback", "phase": "start", "run": "r2", "digest": D2}
    j.append(second)
    j.append(done("rollout", D2, run="someone-else"))  # another run's done does not close this one
    assert j.interrupted() == second


def test_unreadable_lines(tmp_path):
    path = tmp_path / "j.jsonl"
    j = Journal(path)
    j.append(done("rollout", D1))
    with open(path, "ab") as f:
        f.write(b"{torn wri\n")
        f.write(b"[1, 2]\n")
        f.write(b"\xff\xfe not utf-8\n")
        f.write(b'"just a string"\n')
    j.append(done("rollback", D2))
    got = list(j.read())
    assert got == [done("rollout", D1), {"action": "unreadable", "line": 2}, {"action": "unreadable", "line": 3},
                   {"action": "unreadable", "line": 4}, {"action": "unreadable", "line": 5}, done("rollback", D2)]
    assert j.last_good() == D2


def test_deeply_nested_line_is_unreadable(tmp_path):
    path = tmp_path / "j.jsonl"
    path.write_bytes(b"[" * 100_000 + b"\n")
    assert list(Journal(path).read()) == [{"action": "unreadable", "line": 1}]


def test_newest_first_yields_records_in_reverse_and_skips_damaged_lines(tmp_path):
    j = Journal(tmp_path / "j.jsonl")
    for i in range(3):
        j.append({"action": "a", "n": i})
    with open(j.path, "ab") as f:
        f.write(b"{not json\n[1, 2]\n")
    j.append({"action": "a", "n": 3})
    assert [r["n"] for r in j.newest_first()] == [3, 2, 1, 0]
    assert [r.get("n") for r in j.read() if r.get("action") == "a"] == [0, 1, 2, 3]


def _newest_first_reference(data: bytes) -> list[bytes]:
    """What newest_first yielded when it read the whole file: its lines last first, a torn tail left out."""
    lines = data.split(b"\n")
    return lines[-2::-1] if len(lines) > 1 else []


PIECES = [b'{"n": 1}', b'{"n": 22}', b"", b"{torn", b"\n", b"\n\n", b"[3]", b'{"n": 4}\n']


@settings(max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(pieces=st.lists(st.sampled_from(PIECES), max_size=30),
       block=st.integers(min_value=1, max_value=40))
def test_lines_backwards_gives_every_whole_line_last_first_for_any_block_size(tmp_path, pieces, block):
    path = tmp_path / "j"
    data = b"".join(pieces)
    path.write_bytes(data)
    with path.open("rb") as f:
        assert list(journal._lines_backwards(f, block)) == _newest_first_reference(data)


def test_newest_first_reads_only_as_far_as_it_is_read(tmp_path, monkeypatch):
    j = Journal(tmp_path / "j.jsonl")
    with open(j.path, "ab") as f:
        f.write(b"".join(journal.encode({"action": "a", "n": i}) for i in range(20000)))
    with open(j.path, "ab") as f:
        f.write(b'{"action": "a", "n": "tor')  # a torn tail
    parsed = []
    real = journal.parse_line
    monkeypatch.setattr(journal, "parse_line", lambda line: parsed.append(line) or real(line))
    read_before = _bytes_read()
    newest = j.newest_first()
    assert [next(newest)["n"] for _ in range(3)] == [19999, 19998, 19997]
    assert 3 <= len(parsed) < 3000  # one block's lines at most, not the 20000 of the file
    assert _bytes_read() - read_before < j.path.stat().st_size / 4  # and read from the end, not whole


def _bytes_read() -> int:
    """This process's bytes read so far (Linux's /proc/self/io rchar)."""
    return int(dict(line.split(": ") for line in Path("/proc/self/io").read_text().splitlines())["rchar"])
