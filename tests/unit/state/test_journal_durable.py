"""The controller journal survives torn tails, truncation, deletion and a full disk (issue 11 item 1).

Every test ends with a clear message (a JournalError line, or a record saying what was set aside) and
checks that every byte that was fsync'd before the fault is still there.
"""

from __future__ import annotations

import errno
import os
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest

from deployctl.errors import ExitCode, JournalError
from deployctl.ops import rollout as rollout_mod
from deployctl.ops.run import Run
from deployctl.state import journal
from deployctl.state.journal import Journal, entry

D1, D2 = "1" * 64, "2" * 64


def start(run="r1", digest=D1):
    return {"action": "rollout", "phase": "start", "run": run, "digest": digest}


def written(path: Path, *records: dict) -> Journal:
    j = Journal(path)
    for rec in records:
        j.append(rec)
    return j


def test_a_torn_tail_is_set_aside_never_merged(tmp_path):
    j = written(tmp_path / "journal.jsonl", start())
    synced = j.path.read_bytes()
    torn = journal.checked_line({"action": "rollout", "phase": "stage", "run": "r1", "digest": D1})[:25]
    with open(j.path, "ab") as f:  # a controller killed mid-write
        f.write(torn)
    # Read: the torn tail is flagged, never taken for a record; the run is still seen as unfinished.
    assert list(j.read()) == [start(), {"action": "unreadable", "line": 2, "torn": True}]
    assert j.interrupted() == start()
    j.append(start("r2", D2))
    data = j.path.read_bytes()
    assert data.startswith(synced) and data.endswith(b"\n")
    assert j.torn_path.read_bytes() == torn + b"\n"
    got = list(j.read())
    assert got[0] == start() and got[2] == start("r2", D2) and len(got) == 3
    assert got[1]["action"] == "journal-torn" and got[1]["bytes"] == len(torn) and got[1]["kept"] == str(j.torn_path)
    assert all(journal.parse_line(line) is not None for line in data.splitlines())


def test_a_tail_missing_only_its_newline_is_kept_in_place(tmp_path):
    j = written(tmp_path / "journal.jsonl", start())
    with open(j.path, "ab") as f:
        f.write(journal.checked_line(start("r2"))[:-1])
    j.append(start("r3"))
    assert list(j.read()) == [start(), start("r2"), start("r3")]
    assert not j.torn_path.exists()


@pytest.mark.parametrize("cut", [1, 7, 30, -12, -2])
def test_a_truncated_file_keeps_every_whole_record_and_the_rest_aside(tmp_path, cut):
    records = [start(), {"action": "rollout", "phase": "preflight", "run": "r1", "digest": D1},
               {"action": "halt", "outcome": "ok"}]
    j = written(tmp_path / "journal.jsonl", *records)
    lines = j.path.read_bytes().splitlines(keepends=True)
    whole = b"".join(lines[:2])
    cut_at = len(whole) + (cut if cut > 0 else len(lines[2]) + cut)
    with open(j.path, "r+b") as f:
        f.truncate(cut_at)
    assert list(j.newest_first()) == records[:2][::-1]
    j.append(records[2])
    assert j.path.read_bytes().startswith(whole)
    assert [r["action"] for r in j.read()] == ["rollout", "rollout", "journal-torn", "halt"]
    assert j.torn_path.read_bytes() == lines[2][:cut_at - len(whole)] + b"\n"


def test_a_damaged_checked_line_is_unreadable_and_a_line_without_a_checksum_is_read_as_before(tmp_path):
    path = tmp_path / "journal.jsonl"
    good = journal.checked_line(start())
    flipped = good.replace(b'"r1"', b'"r9"')
    path.write_bytes(b'{"action":"halt","outcome":"ok"}\n' + flipped + good)
    assert list(Journal(path).read()) == [{"action": "halt", "outcome": "ok"}, {"action": "unreadable", "line": 2},
                                          start()]


def test_a_deleted_journal_is_made_again_and_a_run_still_sees_a_halt_written_after(tmp_path):
    path = tmp_path / "journal.jsonl"
    old = written(path, {"action": "halt", "outcome": "ok"}, {"action": "resume", "outcome": "ok"})
    ctx = SimpleNamespace(journal=old, nodes=[])
    run = Run(ctx, None, "rollout", D1, names=["node1"])
    assert not run.halted_since()
    path.unlink()
    assert list(old.read()) == [] and old.interrupted() is None
    Journal(path).append(entry("halt", outcome="ok"))
    assert run.halted_since()  # before: read from the old offset, past the end of the new file: missed
    run.journal("stage")
    assert [r["action"] for r in Journal(path).read()] == ["halt", "rollout"]


def test_a_halt_before_the_run_does_not_count_after_the_journal_was_cut(tmp_path):
    path = tmp_path / "journal.jsonl"
    j = written(path, {"action": "halt", "outcome": "ok"}, {"action": "resume", "outcome": "ok"})
    run = Run(SimpleNamespace(journal=j, nodes=[]), None, "rollout", D1, names=["node1"])
    with open(path, "ab") as f:
        f.write(b'{"action":"rollout","ph')
    j.append({"action": "note"})  # sets the torn tail aside: the file got shorter than at the run's start
    assert not run.halted_since()
    j.append(entry("halt", outcome="ok"))
    assert run.halted_since()


def short_then_full(limit: int):
    """A write that takes `limit` bytes, then fails as a full disk does."""
    calls = []

    def write(fd, data):
        calls.append(len(data))
        if len(calls) == 1:
            return os.write(fd, bytes(data[:limit]))
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    return write


def test_a_short_write_on_a_full_disk_is_an_error_and_leaves_no_partial_record(tmp_path, monkeypatch):
    j = written(tmp_path / "journal.jsonl", start())
    synced = j.path.read_bytes()
    monkeypatch.setattr(journal, "_write", short_then_full(10))
    with pytest.raises(JournalError) as info:
        j.append({"action": "rollout", "phase": "stage", "run": "r1"})
    assert str(info.value) == (f"journal: cannot write {j.path} (rollout not recorded): No space left on device")
    assert info.value.exit_code == ExitCode.FAILED
    assert j.path.read_bytes() == synced
    monkeypatch.undo()
    j.append({"action": "after"})
    assert [r["action"] for r in j.read()] == ["rollout", "after"]


def test_a_rollout_whose_journal_fills_up_stops_before_the_switch(one, monkeypatch):
    before = one.ctx.journal.path.read_bytes()
    real = journal._write

    def write(fd, data):
        if b'"phase":"switch"' in data:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(fd, data)

    monkeypatch.setattr(journal, "_write", write)
    with pytest.raises(JournalError) as info:
        rollout_mod.rollout(one.ctx, one.artifacts[1].path)
    assert str(info.value).endswith("No space left on device; the rollout stopped before its switch phase, "
                                    "no node switched")
    old = one.artifacts[0].digest
    assert {s["current"] for s in one.world.states().values()} == {old}
    assert {s["running"] for s in one.world.states().values()} == {old}
    after = one.ctx.journal.path.read_bytes()
    assert after.startswith(before) and after.endswith(b"\n")
    assert one.ctx.journal.interrupted()["digest"] == one.artifacts[1].digest  # the next command says recover
    assert not one.ctx.lock.path.exists()


@pytest.fixture
def tiny_disk(tmp_path):
    """A 64 KiB tmpfs (root only; skipped elsewhere)."""
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (not root?)")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_a_real_full_disk_during_an_append(tiny_disk):
    j = written(tiny_disk / "journal.jsonl", start())
    synced = j.path.read_bytes()
    filler = tiny_disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        while os.write(fd, b"x" * 1024):
            pass
    except OSError as exc:
        assert exc.errno == errno.ENOSPC
    finally:
        os.close(fd)
    with pytest.raises(JournalError) as info:
        j.append({"action": "rollout", "phase": "stage", "pad": "y" * 8000})
    assert "No space left on device" in str(info.value) and "\n" not in str(info.value)
    assert j.path.read_bytes() == synced
    filler.unlink()
    j.append({"action": "after"})
    assert [r["action"] for r in j.read()] == ["rollout", "after"]
