"""state/lock.py: the controller's deploy lock (one run at a time per state folder), stale and damaged locks."""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

import pytest

from deployctl.errors import ExitCode, LockHeldError
from deployctl.state import journal
from deployctl.state.lock import Lock, LockInfo

# Larger than any pid_max Linux allows (2**22), so no process can have it.
DEAD_PID = 2**22 + 4321


def test_lock_acquire_held_release(tmp_path):
    lock = Lock(tmp_path / "state" / "deploy.lock")
    assert lock.info() is None
    assert lock.acquire("deployctl rollout") is None
    info = lock.info()
    assert (info.holder, info.pid, info.command, info.stale) == (journal.actor(), os.getpid(), "deployctl rollout",
                                                                  False)
    assert abs(info.since - time.time()) < 60
    assert lock.path.stat().st_mode & 0o777 == 0o600
    with pytest.raises(LockHeldError) as held:
        lock.acquire("deployctl rollback")
    message = str(held.value)
    assert journal.actor() in message and f"pid {os.getpid()}" in message and "since" in message
    assert "deployctl rollout" in message and "--break-lock" not in message
    assert held.value.exit_code == ExitCode.LOCKED
    lock.release()
    assert not lock.path.exists()
    assert lock.acquire("again") is None
    lock.release()


def test_lock_held_by_live_process_is_not_broken(tmp_path):
    lock = Lock(tmp_path / "deploy.lock")
    lock.acquire("deployctl rollout")
    with pytest.raises(LockHeldError):
        lock.acquire("deployctl rollout", break_stale=True)
    assert lock.info().pid == os.getpid()
    lock.release()


def _write_lock(path: Path, **doc) -> None:
    path.write_text(json.dumps(doc))


def test_release_leaves_someone_elses_lock(tmp_path):
    lock = Lock(tmp_path / "deploy.lock")
    _write_lock(lock.path, holder="ci@build-host", pid=1, since=time.time(), command="deployctl rollout")
    lock.release()
    assert lock.path.exists()


def test_stale_lock_dead_pid_on_this_host(tmp_path):
    lock = Lock(tmp_path / "deploy.lock")
    since = time.time() - 3600
    _write_lock(lock.path, holder=f"alice@{socket.gethostname()}", pid=DEAD_PID, since=since,
                command="deployctl rollout")
    info = lock.info()
    assert info == LockInfo(f"alice@{socket.gethostname()}", DEAD_PID, since, "deployctl rollout", True)
    with pytest.raises(LockHeldError) as held:
        lock.acquire("deployctl rollback")
    message = str(held.value)
    assert "stale" in message and "--break-lock" in message and "since" in message and "alice@" in message
    assert lock.info() == info  # refused: untouched
    broken = lock.acquire("deployctl rollback", break_stale=True)
    assert broken == info
    now = lock.info()
    assert (now.pid, now.command, now.stale) == (os.getpid(), "deployctl rollback", False)
    lock.release()


def test_lock_of_other_host_is_never_stale(tmp_path):
    lock = Lock(tmp_path / "deploy.lock")
    _write_lock(lock.path, holder="bob@some-other-host.invalid", pid=DEAD_PID, since=time.time(), command="x")
    assert lock.info().stale is False
    with pytest.raises(LockHeldError) as held:
        lock.acquire("y", break_stale=True)
    assert "--break-lock" not in str(held.value) and "bob@some-other-host.invalid" in str(held.value)


@pytest.mark.parametrize("content", [b"", b"{not json", b"\xff\xfe"])
def test_damaged_lock_file(tmp_path, content):
    lock = Lock(tmp_path / "deploy.lock")
    lock.path.write_bytes(content)
    info = lock.info()
    assert info.holder == "unknown (damaged lock file)" and info.stale
    with pytest.raises(LockHeldError) as held:
        lock.acquire("deployctl rollout")
    assert "damaged" in str(held.value) and "--break-lock" in str(held.value)
    assert lock.acquire("deployctl rollout", break_stale=True) == info
    assert lock.info().pid == os.getpid()
    lock.release()


@pytest.mark.parametrize("content", ["[]", '{"pid": "abc"}', '{"pid": null}', '{"since": "yesterday"}'])
def test_lock_file_with_wrong_shape_is_damaged(tmp_path, content):
    lock = Lock(tmp_path / "deploy.lock")
    lock.path.write_text(content)
    with pytest.raises(LockHeldError):
        lock.acquire("deployctl rollout")
    lock.acquire("deployctl rollout", break_stale=True)
    assert lock.info().pid == os.getpid()
