"""The controller lock: one file in the state folder saying who runs a command that moves the fleet.

A temp file holding who, where, which process and since when, put in place by link(2) (take: never
check-then-write, never empty) or rename(2) (break a stale one).
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from deployctl.errors import JournalError, LockHeldError
from deployctl.state.journal import actor, fsync_dir


@dataclass(frozen=True)
class LockInfo:
    """Who holds the deploy lock, since when, and whether the holder is gone."""

    holder: str
    pid: int
    since: float
    command: str
    stale: bool

    def describe(self) -> str:
        age = int(time.time() - self.since)
        when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(self.since))
        state = "stale: its process is gone" if self.stale else "held"
        return f"deploy lock {state}: {self.holder} (pid {self.pid}) running '{self.command}' since {when} ({age}s ago)"


@dataclass(frozen=True)
class Lock:
    """The fleet deploy lock file."""

    path: Path

    def info(self) -> LockInfo | None:
        """Return the current holder, or None when the lock is free."""
        try:
            doc = json.loads(self.path.read_text())
            holder, pid, since = str(doc["holder"]), int(doc["pid"]), float(doc["since"])
            command = str(doc.get("command", "?"))
        except FileNotFoundError:
            return None
        except (ValueError, TypeError, KeyError, AttributeError, RecursionError, OSError):
            try:
                mtime = self.path.stat().st_mtime
            except OSError:
                return None
            return LockInfo("unknown (damaged lock file)", 0, mtime, "?", True)
        return LockInfo(holder, pid, since, command, _stale(holder, pid))

    def acquire(self, command: str, break_stale: bool = False) -> LockInfo | None:
        """Take the lock atomically; LockHeldError naming the holder if taken. Returns a broken stale lock's info.

        The lock file appears whole or not at all: its body is written to a temp file first, which is
        then linked into place (link(2) fails if the lock exists: never check-then-write, never an empty
        lock). A stale lock is replaced by rename(2), so the path never goes missing while it is broken
        (a plain taker cannot slip in), and breakers take turns under flock on the folder, each checking
        again that the lock is still the stale one it saw."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self._temp(command)
        except OSError as exc:
            raise JournalError(f"deploy lock: cannot write in {self.path.parent}: {exc.strerror or exc}") from None
        try:
            try:
                os.link(tmp, self.path)
                fsync_dir(self.path.parent)
                return None
            except FileExistsError:
                pass
            except OSError as exc:  # a folder on a filesystem without hard links, say
                raise JournalError(f"deploy lock: cannot take {self.path}: {exc.strerror or exc}") from None
            held = self.info()
            if held and held.stale and break_stale:
                return self._break(tmp, held)
            raise _held(held)
        finally:
            tmp.unlink(missing_ok=True)

    def _temp(self, command: str) -> Path:
        """Write this process's lock body to a fresh temp file beside the lock, fsync'd; return its path."""
        body = json.dumps({"holder": actor(), "pid": os.getpid(), "since": time.time(), "command": command})
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, body.encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        return tmp

    def _break(self, tmp: Path, seen: LockInfo) -> LockInfo:
        """Replace the stale lock `seen` by ours (rename), one breaker at a time; LockHeldError if someone
        else took or broke it first."""
        folder = os.open(self.path.parent, os.O_RDONLY)
        try:
            fcntl.flock(folder, fcntl.LOCK_EX)
            now = self.info()
            if now != seen:  # another breaker was first (or the lock went): never break a lock not seen stale
                raise _held(now)
            mine = json.loads(tmp.read_text())
            os.rename(tmp, self.path)
            os.fsync(folder)
            back = self.info()
            if back is None or (back.pid, back.holder, back.since) != (mine["pid"], mine["holder"], mine["since"]):
                raise _held(back)
            return seen
        finally:
            os.close(folder)  # drops the flock

    def release(self) -> None:
        """Drop the lock if this process holds it."""
        held = self.info()
        if held and held.pid == os.getpid() and held.holder == actor():
            self.path.unlink(missing_ok=True)


def _held(held: LockInfo | None) -> LockHeldError:
    hint = " (use --break-lock to take it over)" if held and held.stale else ""
    return LockHeldError((held.describe() if held else "deploy lock held") + hint)


def _stale(holder: str, pid: int) -> bool:
    """A lock is stale when its holder ran on this host and that process is gone."""
    if holder.rsplit("@", 1)[-1] != socket.gethostname() or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
        return False
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
