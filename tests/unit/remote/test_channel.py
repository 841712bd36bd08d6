"""channel.Held, the two-phase command on one channel, against a scripted stand-in for a paramiko channel.

The real thing runs in the e2e suite (every rollout holds its command across preflight, stage and switch);
these pin the edge cases: a command that ends before answering, an answer line that never ends.
"""

from __future__ import annotations

import threading
import time

import pytest

from deployctl.remote import channel
from deployctl.remote.channel import Held


class FakeChannel:
    """Plays back stdout chunks; records what was sent; exits with `code` once its input ended."""

    def __init__(self, chunks: list[bytes], code: int = 0, stderr: bytes = b""):
        self.chunks, self.code, self.stderr = list(chunks), code, stderr
        self.sent, self.eof_sent, self.closed = b"", False, False
        self.status_event = threading.Event()
        self.status_event.set()

    def settimeout(self, t): pass
    def exec_command(self, command): self.command = command
    def get_transport(self): return self
    def is_active(self): return True
    def sendall(self, data): self.sent += bytes(data)
    def shutdown_write(self): self.eof_sent = True
    def recv(self, n): return self.chunks.pop(0) if self.chunks else b""
    def recv_stderr(self, n):
        out, self.stderr = self.stderr, b""
        return out
    def recv_exit_status(self): return self.code
    def close(self): self.closed = True


class FakeTransport:
    def __init__(self, chan): self.chan = chan
    def open_session(self, timeout): return self.chan


def start(chan: FakeChannel, stdin: bytes | None = b"tar") -> Held:
    return Held.start(FakeTransport(chan), "agent", stdin, 5)


def test_held_answers_line_by_line_then_finishes_with_the_rest():
    chan = FakeChannel([b'{"probe": "x"}\n{"dig', b'est": "d"}\n', b'{"current": "d"}\n'])
    held = start(chan)
    assert chan.sent == b"tar" and not chan.eof_sent  # input left open for the next step
    assert held.read_line() == b'{"probe": "x"}\n'
    assert held.read_line() == b'{"digest": "d"}\n'
    assert held.finish(b"switch\n") == (0, b'{"current": "d"}\n', b"")
    assert chan.sent == b"tarswitch\n" and chan.eof_sent and chan.closed


def test_a_command_that_ends_before_answering_gives_its_own_result():
    chan = FakeChannel([b"partial"], code=1, stderr=b'{"error": "refused"}\n')
    held = start(chan)
    assert held.read_line() is None
    assert held.finish(None) == (1, b"partial", b'{"error": "refused"}\n')


def test_an_answer_line_that_never_ends_is_cut_off(monkeypatch):
    monkeypatch.setattr(channel, "MAX_LINE", 1000)
    held = start(FakeChannel([b"x" * 600] * 10))
    with pytest.raises(channel.NodeError, match="longer than 1000 bytes"):
        held.read_line()


def test_a_silent_command_times_out():
    chan = FakeChannel([])
    chan.recv = lambda n: time.sleep(0.05) or b"."  # a byte now and then, never a newline
    held = Held.start(FakeTransport(chan), "agent", None, 0.2)
    with pytest.raises(TimeoutError):
        held.read_line()


class SlowStderrChannel(FakeChannel):
    """stderr stays open (recv_stderr times out, as paramiko's does) until the command has finished."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.timeout = None

    def settimeout(self, t):
        self.timeout = t

    def recv_stderr(self, n):
        if not self.eof_sent:
            time.sleep(min(self.timeout, 0.05))
            raise TimeoutError()
        return super().recv_stderr(n)


def test_a_command_held_past_its_first_deadline_still_finishes():
    """The stderr reader of a held command must outlive the step deadline it started with: the node
    waits for the controller (other nodes staging, gates closing) for as long as that takes."""
    chan = SlowStderrChannel([b'{"probe": "x"}\n', b'{"current": "d"}\n'])
    held = Held.start(FakeTransport(chan), "agent", None, 0.1)
    assert held.read_line() == b'{"probe": "x"}\n'
    held.wait()
    time.sleep(0.3)  # well past the 0.1 s the first step had
    held.arm(2.0)
    assert held.finish(b"go\n") == (0, b'{"current": "d"}\n', b"")


def test_send_reports_progress_chunk_by_chunk(monkeypatch):
    monkeypatch.setattr(channel, "_CHUNK", 4)
    chan = FakeChannel([b"ok\n"])
    held = start(chan, None)
    seen = []
    held.send(b"0123456789", seen.append)
    assert chan.sent == b"0123456789" and seen == [4, 8, 10]
