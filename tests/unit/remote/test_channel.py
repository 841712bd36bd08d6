"""channel.Held, the two-phase command on one channel, against a scripted stand-in for a paramiko channel.

The real thing runs in the e2e suite (every rollout holds its command across preflight, stage and switch);
these pin the edge cases: a command that ends before answering, an answer line that never ends, a node
that floods a stream. Run as a script (`python test_channel.py stderr`), this file is the controller
of the memory test: one node floods a stream, and it prints what that cost (see `flood_controller`).
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import threading
import time

import pytest

from deployctl.errors import UnreachableError
from deployctl.remote import channel, ssh
from deployctl.remote.channel import MAX_STDERR, MAX_STDOUT, Held, NodeError


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
    """A transport, and the connection that has it (SSHFleet's connections are paramiko SSHClients)."""

    def __init__(self, chan): self.chan = chan
    def open_session(self, timeout): return self.chan
    def get_transport(self): return self
    def is_active(self): return True
    def close(self): pass


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


class FloodChannel(FakeChannel):
    """Once its stdout `chunks` (its answer) are read, sends `stdout` and `stderr` more bytes, made as
    they are read, 64 KiB at a time (each a new object, as paramiko's are); closing it ends both
    streams, as paramiko's does."""

    def __init__(self, chunks: list[bytes], stdout: int = 0, stderr: int = 0):
        super().__init__(chunks)
        self.left = {"stdout": stdout, "stderr": stderr}
        self.taken = {"stdout": 0, "stderr": 0}
        self.answered = threading.Event()
        if not chunks:
            self.answered.set()

    def _flood(self, stream: str, n: int) -> bytes:
        size = 0 if self.closed else min(n, self.left[stream])
        self.left[stream] -= size
        self.taken[stream] += size
        return b"e" * size  # not bytes(size): untouched zero pages would not count in RSS

    def recv(self, n):
        if self.chunks and not self.closed:
            chunk = super().recv(n)
            if not self.chunks:
                self.answered.set()
            return chunk
        return self._flood("stdout", n)

    def recv_stderr(self, n):
        self.answered.wait()
        return self._flood("stderr", n)


PROBE = b'{"probe": "x"}\n'
TOO_MUCH_STDERR = f"answer too large: more than {MAX_STDERR >> 20} MiB on stderr"
TOO_MUCH_STDOUT = f"answer too large: more than {MAX_STDOUT >> 20} MiB on stdout"


def test_a_node_flooding_stderr_is_cut_off_while_its_command_waits():
    """The stderr reader runs with no deadline while a held command waits: the cap, not time, ends it."""
    chan = FloodChannel([PROBE], stderr=10 * MAX_STDERR)
    held = start(chan, None)
    assert held.read_line() == PROBE
    held.wait()
    held.reader.join()  # no deadline runs now: only the cap stops the reader
    assert chan.closed and chan.taken["stderr"] <= MAX_STDERR + (1 << 16)
    held.arm(5)
    with pytest.raises(NodeError) as err:
        held.read_line()
    assert err.value.reason == TOO_MUCH_STDERR


def test_a_node_flooding_stdout_after_its_answer_is_cut_off():
    chan = FloodChannel([PROBE], stdout=10 * MAX_STDOUT)
    held = start(chan, None)
    assert held.read_line() == PROBE
    with pytest.raises(NodeError) as err:
        held.finish(b"go\n")
    assert err.value.reason == TOO_MUCH_STDOUT
    assert chan.closed and chan.taken["stdout"] <= MAX_STDOUT + (1 << 16)


def test_a_command_with_as_much_output_as_the_caps_allow_finishes():
    chan = FloodChannel([], stdout=MAX_STDOUT, stderr=MAX_STDERR)
    code, out, err = start(chan, None).finish(None)
    assert (code, len(out), len(err)) == (0, MAX_STDOUT, MAX_STDERR)


def test_the_node_cut_off_is_named_in_its_error(tmp_path):
    """Through SSHFleet: the cut-off node gets its own error result, which names it; the others go on."""
    chans = {"node1": FakeChannel([PROBE, b"ok\n"]), "node3": FloodChannel([PROBE], stderr=10 * MAX_STDERR)}
    targets = [ssh.Target(n, "127.0.0.1", 1, "root") for n in chans]
    with ssh.SSHFleet(targets, tmp_path / "k", tmp_path / "kh") as fleet:
        fleet._conns.update({n: FakeTransport(c) for n, c in chans.items()})
        assert all(r.ok for r in fleet.hold({n: ssh.Call("agent") for n in chans}).values())
        fleet._held["node3"].reader.join()  # node3 floods stderr while both wait
        res = fleet.finish({"node1": b"go\n", "node3": b"go\n"})
    assert res["node1"].ok and res["node1"].stdout == b"ok\n"
    assert res["node3"].error == TOO_MUCH_STDERR and chans["node3"].closed
    with pytest.raises(UnreachableError) as err:
        ssh.raise_for_unreachable(res, "switch")
    assert str(err.value) == f"switch: 1 of 2 unreachable ({TOO_MUCH_STDERR}): node3"


FLOOD = 200 << 20  # what one node sends in the memory test: 200 MiB
GREW_MAX_KIB = 32 << 10  # what that may cost the controller: its peak RSS grows by less than 32 MiB


@pytest.mark.parametrize("stream", ["stdout", "stderr"])
def test_a_node_flooding_200_mib_costs_the_controller_under_32_mib(stream):
    """One node sends 200 MiB on a stream (stderr while its command waits for the controller); the
    controller, a fresh process so that its peak RSS is its own, cuts it off having grown < 32 MiB."""
    proc = subprocess.run([sys.executable, __file__, stream], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    assert got["error"] == {"stdout": TOO_MUCH_STDOUT, "stderr": TOO_MUCH_STDERR}[stream]
    assert got["taken"] <= {"stdout": MAX_STDOUT, "stderr": MAX_STDERR}[stream] + (1 << 16)
    assert got["grew_kib"] < GREW_MAX_KIB, got


def flood_controller(stream: str) -> dict:
    """Hold a command on a node that floods `stream` with FLOOD bytes; return the error it was cut off
    with, the bytes it got to send and how much this process's peak RSS grew (KiB)."""
    chan = FloodChannel([PROBE], **{stream: FLOOD})
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    held = start(chan, None)
    held.read_line()
    held.wait()
    held.reader.join()  # stderr floods while the command waits
    held.arm(60)
    try:
        held.finish(b"go\n")
        error = None
    except NodeError as exc:
        error = exc.reason
    grew = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    return {"error": error, "taken": chan.taken[stream], "grew_kib": grew}


if __name__ == "__main__":
    print(json.dumps(flood_controller(sys.argv[1])))
