"""The controller's append-only journal and the fleet deploy lock.

Journal: one JSON object per line, appended with O_APPEND and fsync'd before the
phase it announces starts, never rewritten. Lock: created atomically with
O_EXCL (never check-then-write), holding who, where, which process and since when.
"""

from __future__ import annotations

import getpass
import json
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from deployctl.errors import DeployctlError, LockHeldError

SECRET_WORDS = ("token", "password", "secret", "passphrase")
RUNS = ("rollout", "rollback", "recover")  # the actions that move the fleet, journaled phase by phase


def good_run(record: dict) -> str | None:
    """Return the release digest of a run that ended with the whole fleet on it, else None."""
    digest = record.get("digest")
    if record.get("action") in RUNS and record.get("phase") == "done" and record.get("outcome") == "ok" \
            and isinstance(digest, str):
        return digest
    return None


def actor() -> str:
    """Return who is acting: user@host."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    return f"{user}@{socket.gethostname()}"


def entry(action: str, **fields) -> dict:
    """Return a journal entry with who and when filled in; secret-looking keys are refused."""
    leaked = {k for k in fields if any(w in k.lower() for w in SECRET_WORDS)}
    if leaked:
        raise DeployctlError(f"journal: refusing to record secret field(s) {sorted(leaked)}")
    return {"ts": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "who": actor(), "action": action, **fields}


def encode(record: dict) -> bytes:
    """Return the record as one canonical JSON line."""
    return (json.dumps(record, sort_keys=True, separators=(",", ":")) + "\n").encode()


@dataclass(frozen=True)
class Journal:
    """The controller's journal file."""

    path: Path

    def append(self, record: dict) -> dict:
        """Append and fsync one record; return it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, encode(record))
            os.fsync(fd)
        finally:
            os.close(fd)
        return record

    def size(self) -> int:
        """Return the journal's length in bytes (0 when absent): an offset for `read(since=...)`."""
        try:
            return self.path.stat().st_size
        except FileNotFoundError:
            return 0

    def read(self, since: int = 0) -> Iterator[dict]:
        """Yield every record (from byte offset `since`), oldest first; a damaged line is yielded as
        {"action": "unreadable"}."""
        try:
            with self.path.open("rb") as f:
                f.seek(since)
                lines = f.read().splitlines()
        except FileNotFoundError:
            return
        for i, line in enumerate(lines, 1):
            try:
                rec = json.loads(line)
                yield rec if isinstance(rec, dict) else {"action": "unreadable", "line": i}
            except (ValueError, RecursionError):
                yield {"action": "unreadable", "line": i}

    def newest_first(self) -> Iterator[dict]:
        """Yield records newest first, parsing only as far as the caller reads (the journal only grows)."""
        try:
            lines = self.path.read_bytes().splitlines()
        except FileNotFoundError:
            return
        for i in range(len(lines) - 1, -1, -1):
            try:
                rec = json.loads(lines[i])
            except (ValueError, RecursionError):
                continue
            if isinstance(rec, dict):
                yield rec

    def last_good(self) -> str | None:
        """Return the digest the fleet last ran as a whole (last successful rollout, rollback or recover)."""
        return next(filter(None, map(good_run, self.newest_first())), None)

    def last_run(self) -> dict | None:
        """Return the done record of the newest run, whatever its outcome."""
        return next((r for r in self.newest_first() if r.get("action") in RUNS and r.get("phase") == "done"), None)

    def interrupted(self) -> dict | None:
        """Return the start record of the last rollout/rollback/recover that never reached "done", if any."""
        finished = set()
        for rec in self.newest_first():
            if rec.get("phase") == "done":
                finished.add(rec.get("run"))
            elif rec.get("phase") == "start":
                return None if rec.get("run") in finished else rec
        return None


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
        """Take the lock atomically; LockHeldError naming the holder if taken. Returns a broken stale lock's info."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        broken = None
        held = self.info()
        if held and held.stale and break_stale:
            self.path.unlink(missing_ok=True)
            broken = held
        body = json.dumps({"holder": actor(), "pid": os.getpid(), "since": time.time(), "command": command})
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            held = self.info()
            hint = " (use --break-lock to take it over)" if held and held.stale else ""
            raise LockHeldError((held.describe() if held else "deploy lock held") + hint) from None
        with os.fdopen(fd, "w") as f:
            f.write(body)
            f.flush()
            os.fsync(f.fileno())
        return broken

    def release(self) -> None:
        """Drop the lock if this process holds it."""
        held = self.info()
        if held and held.pid == os.getpid() and held.holder == actor():
            self.path.unlink(missing_ok=True)


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
