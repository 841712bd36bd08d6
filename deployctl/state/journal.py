"""The controller's append-only journal.

Journal: one JSON object per line, appended with O_APPEND and fsync'd before the
phase it announces starts. Each line carries its own checksum (a last key "crc32": the
CRC-32 of the line's bytes without it), so a damaged line is detected, and a line without
one (written before checksums existed) is read as before. A torn tail (bytes after the last
newline: a write cut short) is moved to journal.jsonl.torn before the next append, never
merged; every write is checked (a short write or ENOSPC raises JournalError, and the partial
bytes are cut off again). Lock: a temp file holding who, where, which process and since when,
put in place by link(2) (take: never check-then-write, never empty) or rename(2) (break).
"""

from __future__ import annotations

import errno
import fcntl
import getpass
import json
import os
import re
import socket
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from deployctl.errors import DeployctlError, JournalError

SECRET_WORDS = ("token", "password", "secret", "passphrase")
RUNS = ("rollout", "rollback", "recover")  # the actions that move the fleet, journaled phase by phase
CRC_KEY = "crc32"
CHECKED = re.compile(rb'(,?)"crc32":"([0-9a-f]{8})"}$')  # the checksum, last in a checked line
TORN_SUFFIX = ".torn"  # where a torn tail is kept: journal.jsonl.torn


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


def checked_line(record: dict) -> bytes:
    """Return the record as one journal line ending with its own checksum (see the module docstring)."""
    if CRC_KEY in record:
        raise DeployctlError(f"journal: a record may not carry its own {CRC_KEY!r} key")
    body = encode(record)[:-1]
    sep = b"," if len(body) > 2 else b""
    return body[:-1] + sep + b'"crc32":"%08x"}\n' % zlib.crc32(body)


def parse_line(line: bytes) -> dict | None:
    """Return the record of one journal line (without its newline), or None if it is damaged: a
    checksum that does not match, or a line that is not a JSON object. A line without a checksum
    (written before checksums existed) is taken if it is a JSON object."""
    m = CHECKED.search(line)
    if m:
        body = line[:m.start()] + b"}"
        if b'"crc32":' in body or zlib.crc32(body) != int(m.group(2), 16):
            return None
        line = body
    try:
        rec = json.loads(line)
    except (ValueError, RecursionError):
        return None
    return rec if isinstance(rec, dict) else None


@dataclass(frozen=True)
class Journal:
    """The controller's journal file."""

    path: Path

    @property
    def torn_path(self) -> Path:
        """Where torn tails are set aside."""
        return self.path.with_name(self.path.name + TORN_SUFFIX)

    def append(self, record: dict) -> dict:
        """Append and fsync one record (setting a torn tail aside first); return it.
        JournalError, one line, if it cannot be written whole: nothing of it is left in the journal."""
        data = checked_line(record)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
        except OSError as exc:
            raise JournalError(f"journal: cannot open {self.path}: {exc.strerror or exc}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # appenders of this journal take turns: the tail check needs it
            size = os.fstat(fd).st_size
            if size == 0:
                fsync_dir(self.path.parent)  # a new (or re-created) journal: its name must survive too
            elif os.pread(fd, 1, size - 1) != b"\n":
                size, data = self._set_aside(fd, size, data)
            _write_all(fd, data, size, self.path, record.get("action"))
        finally:
            os.close(fd)
        return record

    def _set_aside(self, fd: int, size: int, data: bytes) -> tuple[int, bytes]:
        """Move the torn tail (bytes after the last newline) to the side file and cut it off; return the
        new size and the data to append, which now starts with one line saying so."""
        start = size
        while start > 0:  # back to just after the last newline, 64 KiB at a time
            lo = max(0, start - 65536)
            cut = os.pread(fd, start - lo, lo).rfind(b"\n")
            if cut >= 0:
                start = lo + cut + 1
                break
            start = lo
        tail = os.pread(fd, size - start, start)
        if parse_line(tail) is not None and CHECKED.search(tail):  # whole and checked: only its newline is missing
            return size, b"\n" + data
        try:
            side = os.open(self.torn_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                _write_all(side, tail + b"\n", os.fstat(side).st_size, self.torn_path, "torn tail")
            finally:
                os.close(side)
            os.ftruncate(fd, start)
            os.fsync(fd)
        except OSError as exc:
            raise JournalError(f"journal: cannot set its torn tail aside in {self.torn_path}: "
                               f"{exc.strerror or exc}") from None
        note = entry("journal-torn", bytes=len(tail), kept=str(self.torn_path))
        return start, checked_line(note) + data

    def size(self) -> int:
        """Return the journal's length in bytes (0 when absent): an offset for `read(since=...)`."""
        try:
            return self.path.stat().st_size
        except FileNotFoundError:
            return 0

    def mark(self) -> tuple[int, int, int]:
        """Return where the journal ends now, for `read_from`: (device, inode, size); zeros when absent."""
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return (0, 0, 0)
        return (st.st_dev, st.st_ino, st.st_size)

    def read_from(self, mark: tuple[int, int, int]) -> Iterator[dict] | None:
        """Yield the records appended since `mark`; None if the journal was deleted, replaced or cut
        shorter (a torn tail set aside) since: the offset no longer means anything."""
        now = self.mark()
        return self.read(since=mark[2]) if now[:2] == mark[:2] and now[2] >= mark[2] else None

    def read(self, since: int = 0) -> Iterator[dict]:
        """Yield every record (from byte offset `since`), oldest first; a damaged line is yielded as
        {"action": "unreadable"}."""
        try:
            with self.path.open("rb") as f:
                f.seek(since)
                data = f.read()
                lines = data.splitlines()
        except FileNotFoundError:
            return
        torn = not data.endswith(b"\n") and bool(lines)
        for i, line in enumerate(lines, 1):
            rec = parse_line(line)
            if rec is None or (torn and i == len(lines)):
                yield {"action": "unreadable", "line": i, **({"torn": True} if torn and i == len(lines) else {})}
            else:
                yield rec

    def newest_first(self) -> Iterator[dict]:
        """Yield records newest first, reading and parsing only as far as the caller reads: the file is
        read backwards BLOCK bytes at a time (the journal only grows; every run asks it for its last
        good release, and reading a controller's whole history for that cost more with every run)."""
        try:
            f = self.path.open("rb")
        except FileNotFoundError:
            return
        with f:
            for line in _lines_backwards(f, BLOCK):
                rec = parse_line(line)
                if rec is not None:
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


BLOCK = 1 << 16  # bytes newest_first reads at a time, from the end


def _lines_backwards(f, block: int) -> Iterator[bytes]:
    """The lines of binary file `f` (without their newlines), last first; what follows the last newline
    (a torn tail, or a record being appended right now) is not a line."""
    pos = f.seek(0, os.SEEK_END)
    carry: bytes | None = None  # the start of the line the block read last began in; None: tail not cut yet
    while pos > 0:
        step = min(block, pos)
        pos -= step
        f.seek(pos)
        chunk = f.read(step)
        if carry is None:
            cut = chunk.rfind(b"\n")
            if cut < 0:
                continue  # all of this block is still the torn tail
            chunk, carry = chunk[:cut], b""
        parts = (chunk + carry).split(b"\n")
        carry = parts[0]
        yield from reversed(parts[1:])
    if carry is not None:
        yield carry


_write = os.write  # the one write call of the journal: a seam for the disk-full tests


def _write_all(fd: int, data: bytes, size: int, path: Path, what: object) -> None:
    """Write all of data at the end of fd (opened O_APPEND, `size` bytes long) and fsync it. On a short
    write or an error, cut the file back to `size` (best effort) and raise JournalError."""
    done = 0
    try:
        while done < len(data):
            n = _write(fd, data[done:])
            if n <= 0:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            done += n
        os.fsync(fd)
    except OSError as exc:
        try:
            os.ftruncate(fd, size)
            os.fsync(fd)
        except OSError:
            pass  # left torn: the next append sets it aside
        raise JournalError(f"journal: cannot write {path} ({what} not recorded): {exc.strerror or exc}") from None


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
