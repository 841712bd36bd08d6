"""One remote command on its own SSH channel, held open across steps: the agent protocol's transport.

A command is started with its first input; it answers one line per step (`read_line`), waits on the
node while the controller decides (no deadline runs then), and is ended by `finish`: last input, end
of input, then its exit code, stdout and stderr. Each stream is capped (MAX_LINE, MAX_STDOUT,
MAX_STDERR): a node that sends more is cut off with a NodeError naming the stream. Closing the
channel at any wait changes nothing on the node. No paramiko import here: this works on any channel
object with paramiko's interface.
"""

from __future__ import annotations

import math
import socket
import threading
import time
from collections.abc import Callable

_CHUNK = 1 << 18
MAX_LINE = 1 << 20  # an agent's answer line is a few KiB
# What a node may send on each stream of one command; past that it is cut off (its channel closed),
# so a hostile or broken node costs the controller at most this much memory. The largest stdout,
# `have` and `hashes` of a release, is a line of about 100 bytes per file; an agent's error is one
# line, a Python traceback a few KiB.
MAX_STDOUT = 8 << 20
MAX_STDERR = 4 << 20


class NodeError(Exception):
    """A node could not be worked with: no connection, a refused host key, or an answer out of protocol."""

    def __init__(self, reason: str, host_key: bool = False, refused: bool = False):
        super().__init__(reason)
        # refused: a bastion could not connect onward (nothing listens there), told apart for the router's HTTP
        self.reason, self.host_key, self.refused = reason, host_key, refused


def run(transport, command: str, stdin: bytes | None, timeout: float) -> tuple[int, bytes, bytes]:
    """Run one command on an open transport; stream stdin; return (exit code, stdout, stderr)."""
    return Held.start(transport, command, stdin, timeout).finish(b"")


class Held:
    """One running remote command: its channel, its stderr reader and its deadline."""

    def __init__(self, chan, deadline: float):
        self.chan, self.deadline, self.out = chan, deadline, b""
        # Drain stderr beside stdout: paramiko reopens a stream's window only as it is read, so a
        # command with megabytes of stderr would stall while we wait on stdout.
        # It also runs while the command waits (no deadline then), so MAX_STDERR bounds it, not time.
        self.err_box: list = []
        self.reader = threading.Thread(target=self._collect_stderr, daemon=True)

    @classmethod
    def start(cls, transport, command: str, stdin: bytes | None, timeout: float) -> Held:
        """Open a channel, start `command` and send `stdin`, leaving the input open."""
        deadline = time.monotonic() + timeout
        chan = transport.open_session(timeout=timeout)
        held = cls(chan, deadline)
        try:
            chan.settimeout(timeout)
            chan.exec_command(command)
            held.reader.start()
            held.send(stdin)
        except BaseException:
            chan.close()
            raise
        return held

    def wait(self) -> None:
        """The command answered and now waits for the controller: no deadline runs on it until `arm`."""
        self.deadline = math.inf

    def arm(self, timeout: float) -> None:
        """Start the next step: it must finish within `timeout` seconds."""
        self.deadline = time.monotonic() + timeout
        self.chan.settimeout(timeout)

    def send(self, data: bytes | None, progress: Callable[[int], None] | None = None) -> None:
        """Send `data` in chunks, calling `progress(bytes sent so far)` after each; a command that
        stopped reading is not an error here (its answer says why)."""
        try:
            view = memoryview(data or b"")
            for i in range(0, len(view), _CHUNK):
                self.chan.sendall(view[i : i + _CHUNK])
                if progress is not None:
                    progress(min(i + _CHUNK, len(view)))
                if time.monotonic() > self.deadline:
                    raise TimeoutError()
        except OSError as exc:
            # The command stopped reading (it exited: disk full, a refusal): its own answer, read
            # later, says why. If the connection itself is gone, the reads fail too.
            if isinstance(exc, socket.timeout) or not self.chan.get_transport().is_active():
                raise

    def read_line(self) -> bytes | None:
        """Read stdout up to the first newline; None if the command ended first (its output is kept)."""
        while b"\n" not in self.out:
            self._raise_if_cut()
            if time.monotonic() > self.deadline:
                raise TimeoutError()
            if len(self.out) > MAX_LINE:
                raise NodeError(f"answer line longer than {MAX_LINE} bytes: not a deployctl agent")
            try:
                chunk = self.chan.recv(1 << 16)
            except TimeoutError:
                continue  # the deadline decides, above
            if not chunk:
                return None
            self.out += chunk
        line, self.out = self.out.split(b"\n", 1)
        return line + b"\n"

    def finish(self, data: bytes | None) -> tuple[int, bytes, bytes]:
        """Send `data`, end the input, read everything left; return (exit code, stdout, stderr)."""
        try:
            self._raise_if_cut()
            self.send(data)
            try:
                self.chan.shutdown_write()
            except OSError:
                if not self.chan.get_transport().is_active():
                    raise
            out = self.out + _read_all(self.chan.recv, lambda: self.deadline, MAX_STDOUT - len(self.out), "stdout")
            self.reader.join(max(0.0, self.deadline - time.monotonic()))
            if not self.err_box:
                raise TimeoutError()
            if isinstance(self.err_box[0], BaseException):
                raise self.err_box[0]
            if not self.chan.status_event.wait(max(0.0, self.deadline - time.monotonic())):
                raise TimeoutError()
            return self.chan.recv_exit_status(), out, self.err_box[0]
        finally:
            self.chan.close()

    def _collect_stderr(self) -> None:
        """The stderr reader: all of stderr into the box, or the exception that ended it. A node past
        MAX_STDERR is cut off here and then, even while its command waits for the controller."""
        try:
            self.err_box.append(_read_all(self.chan.recv_stderr, lambda: self.deadline, MAX_STDERR, "stderr"))
        except BaseException as exc:  # reported to the caller through the box
            self.err_box.append(exc)
            if isinstance(exc, NodeError):
                self.chan.close()

    def _raise_if_cut(self) -> None:
        """Raise the NodeError the stderr reader cut the node off with, if it did."""
        if self.err_box and isinstance(self.err_box[0], NodeError):
            raise self.err_box[0]


def _read_all(recv, deadline: Callable[[], float], limit: int, stream: str) -> bytes:
    """Read until end of stream; NodeError once more than `limit` bytes came. `deadline()` is read
    again after every wait, since a held command's deadline moves: none while it waits for the
    controller, a new one for each step."""
    parts: list[bytes] = []
    size = 0
    while True:
        if time.monotonic() > deadline():
            raise TimeoutError()
        try:
            chunk = recv(1 << 16)
        except TimeoutError:
            continue
        if not chunk:
            return b"".join(parts)
        size += len(chunk)
        if size > limit:
            raise NodeError(f"answer too large: more than {_mib(limit)} on {stream}")
        parts.append(chunk)


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.3g} MiB"
