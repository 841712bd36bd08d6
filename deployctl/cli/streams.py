"""The process's standard streams, made harmless: output can never end a run or change its exit code.

A command's output is for the operator; its work is on the fleet. With stdout or stderr closed
(cron, a daemon, `>&-`), read by a pipe whose reader has gone (`| head -1`: EPIPE), or on a
terminal that hung up (EIO), a write that fails is dropped and the command goes on to its end,
journals it and exits with its own code. rich would otherwise raise SystemExit(1) on the first
broken pipe (Console.on_broken_pipe), mid-run.

Nothing here runs at import: `protect()` is called by the entry points (deployctl/__main__.py,
cli/app.py's main) before any command, `exit_now()` after it.
"""

from __future__ import annotations

import os
import sys


class SafeStream:
    """A text stream in front of sys.stdout or sys.stderr (or of nothing, when Python started with that
    descriptor closed) whose writes and flushes never raise: after the first failure everything is dropped."""

    def __init__(self, stream) -> None:
        self.stream = stream
        self.broken = stream is None

    def write(self, text: str) -> int:
        if not self.broken:
            try:
                self.stream.write(text)
            except BlockingIOError:  # EAGAIN on a non-blocking descriptor: this text is lost, not the rest
                pass
            except (OSError, ValueError):  # EPIPE, EIO, EBADF; ValueError: the file object was closed
                self._give_up()
        return len(text)

    def flush(self) -> None:
        if not self.broken:
            try:
                self.stream.flush()
            except BlockingIOError:
                pass
            except (OSError, ValueError):
                self._give_up()

    def _give_up(self) -> None:
        """Drop all further output, and point the descriptor at /dev/null: what is still buffered in the
        stream, flushed again when the interpreter exits, then goes there instead of printing a traceback."""
        self.broken = True
        try:
            null = os.open(os.devnull, os.O_WRONLY)
            os.dup2(null, self.stream.fileno())
            os.close(null)
        except (OSError, ValueError):
            pass

    def isatty(self) -> bool:
        try:
            return not self.broken and self.stream.isatty()
        except (OSError, ValueError):
            return False

    def fileno(self) -> int:
        if self.stream is None:
            raise OSError("the stream was closed when deployctl started")
        return self.stream.fileno()

    def writable(self) -> bool:
        return True

    @property
    def encoding(self) -> str:
        return getattr(self.stream, "encoding", None) or "utf-8"

    @property
    def errors(self) -> str:
        return getattr(self.stream, "errors", None) or "strict"


def protect() -> None:
    """Reopen closed standard descriptors on /dev/null, then put a SafeStream in front of stdout and stderr.

    The descriptors first: with 0, 1 or 2 closed, the next file the run opens (the journal, a socket)
    would take that number, and anything written to "stderr" would land in it. Safe to call twice."""
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            try:
                null = os.open(os.devnull, os.O_RDWR)
                if null != fd:
                    os.dup2(null, fd)
                    os.close(null)
            except OSError:
                pass
    if not isinstance(sys.stdout, SafeStream):
        sys.stdout = SafeStream(sys.stdout)
    if not isinstance(sys.stderr, SafeStream):
        sys.stderr = SafeStream(sys.stderr)


def is_terminal(stream) -> bool:
    """Return whether `stream` (sys.stdin, say, which is None when it was closed) is a terminal; never raises."""
    try:
        return bool(stream is not None and stream.isatty())
    except (OSError, ValueError):
        return False


def exit_now(code: int) -> None:
    """Flush stdout and stderr, then end the process with `code` without the interpreter's teardown.

    A flush that fails (a closed pipe) changes nothing: the command did its work, and its code says
    how that went. By now every command has closed what it opened: the lock is released, each
    journal record was fsynced when written, SSH connections are closed. What is left is freeing
    modules and joining idle worker threads, a cost every command would pay (and a CI gate runs many).
    """
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except (OSError, ValueError):  # nothing more can be said there
            pass
    os._exit(int(code) & 0xFF)
