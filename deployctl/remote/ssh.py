"""SSH to every node: one connection per node, opened in parallel, reused by every phase of a command.

sshconnect.py opens each connection (it alone imports paramiko) with paramiko's SSHClient, not
Fabric's Connection: Fabric adds invoke (an import every process would pay, `verify` and
`halt` too) and installs AutoAddPolicy, which we would only undo. Failures
are values: every call finishes every node and returns one NodeResult per node, never
stopping at the first error. Host keys are pinned: the controller's known_hosts is the
only source, and a missing or different key is refused.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from deployctl.errors import HostKeyError, UnreachableError, describe_os_error, grouped
from deployctl.remote import channel, replies, sshconnect
from deployctl.remote.channel import Held, NodeError


@dataclass
class NodeResult:
    """The outcome of one remote action on one node: exit code and output, or why it never ran."""

    node: str
    exit_code: int | None = None
    stdout: bytes = b""
    stderr: bytes = b""
    error: str | None = None  # set when the command could not run or finish (connection, timeout)
    host_key_refused: bool = False
    elapsed: float = 0.0

    @property
    def ok(self) -> bool:
        return self.error is None and self.exit_code == 0

    def reason(self) -> str:
        """Return a one-line reason for a failed result, the node's words clipped (replies.clip)."""
        if self.error:
            return self.error
        lines = (self.stderr or self.stdout).decode(errors="replace").strip().splitlines()
        return f"exit {self.exit_code}: {replies.clip(lines[-1]) if lines else 'no output'}"


@dataclass(frozen=True)
class Target:
    """Where to reach one node over SSH."""

    name: str
    host: str
    port: int
    user: str
    key: Path | None = None  # None: the fleet's client key
    jumps: tuple = ()  # bastions (sshconfig.Jump), first hop first: reached through a shared Bastions


@dataclass(frozen=True)
class Call:
    """One remote command for one node: the rendered command line and optional stdin bytes."""

    command: str
    stdin: bytes | None = None
    timeout: float = 60.0


Progress = Callable[[str, int, int], None]  # (node, bytes sent, bytes in all)
Reply = Callable[[str, bytes], "bytes | None"]  # (node, its answer line) -> its next input, None for none


class Fleet(Protocol):
    """What run, rollout, rollback and control use of a set of node connections. SSHFleet is the real
    one; tests/unit/fakefleet.py answers the agent's protocol in memory."""

    targets: list[Target]

    def run(self, calls: dict[str, Call]) -> dict[str, NodeResult]: ...

    def run_all(self, make: Callable[[str], Call], names: Iterable[str] | None = None) -> dict[str, NodeResult]: ...

    def hold(self, calls: dict[str, Call]) -> dict[str, NodeResult]: ...

    def step(self, data: dict[str, bytes], timeout: float = 60.0,
             progress: Progress | None = None) -> dict[str, NodeResult]: ...

    def exchange(self, data: dict[str, bytes], reply: Reply, timeout: float = 60.0,
                 progress: Progress | None = None) -> dict[str, tuple[NodeResult, NodeResult | None]]: ...

    def __enter__(self) -> Fleet: ...

    def __exit__(self, *exc) -> None: ...

    def finish(self, lines: Mapping[str, bytes | None], timeout: float = 60.0) -> dict[str, NodeResult]: ...

    def close(self) -> None: ...


@dataclass
class SSHFleet:
    """Pinned-key SSH connections to a set of nodes; use as a context manager so they always close."""

    targets: list[Target]
    client_key: Path
    known_hosts: Path
    connect_timeout: float = 5.0
    parallel: int = 8
    bastions: sshconnect.Bastions | None = None  # shared with the routers' HTTP; made here if not given
    _conns: dict = field(default_factory=dict)
    _failed: dict = field(default_factory=dict)
    _held: dict = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        sshconnect.require_strict_kex()  # before any connection: never handshake without the Terrapin fix
        self._pool = ThreadPoolExecutor(max_workers=max(1, self.parallel), thread_name_prefix="ssh")
        self._by_name = {t.name: t for t in self.targets}
        self._own_bastions = self.bastions is None and any(t.jumps for t in self.targets)
        if self._own_bastions:
            self.bastions = sshconnect.Bastions(self.client_key, self.known_hosts, self.connect_timeout)

    def _bastions(self, name: str) -> sshconnect.Bastions:
        if self.bastions is None:  # __post_init__ makes them whenever a target has jumps
            raise NodeError(f"{name} is behind a bastion, but this fleet has no bastion connections")
        return self.bastions

    def __enter__(self) -> SSHFleet:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def connect(self, names: Iterable[str] | None = None) -> dict[str, NodeResult]:
        """Open (or reuse) a connection to each named node; return a NodeResult per node."""
        names = list(names or self._by_name)
        return dict(zip(names, self._pool.map(self._connect_one, names), strict=True))

    def _connect_one(self, name: str) -> NodeResult:
        start = time.monotonic()
        res = NodeResult(name)
        try:
            self._connection(name)
            res.exit_code = 0
        except NodeError as exc:
            res.error, res.host_key_refused = exc.reason, exc.host_key
        res.elapsed = time.monotonic() - start
        return res

    def _connection(self, name: str):
        with self._lock:
            conn = self._conns.get(name)
            if name in self._failed:
                raise self._failed[name]
        if conn is not None:
            transport = conn.get_transport()
            if transport is not None and transport.is_active():
                return conn
            # Dropped between two phases: never reconnect within a command (the node may have
            # restarted under us); that node fails from here on, and the run handles it.
            self._drop(name)
            raise self._failed[name]
        try:
            t = self._by_name[name]
            sock = self._bastions(name).tunnel(t.jumps, t.host, t.port) if t.jumps else None
            conn = sshconnect.open_client(t.host, t.port, t.user, t.key or self.client_key, self.known_hosts,
                                          self.connect_timeout, sock)
        except NodeError as exc:
            with self._lock:
                self._failed[name] = exc  # one attempt per command: no reconnect storms
            raise
        with self._lock:
            self._conns[name] = conn
        return conn

    def run(self, calls: dict[str, Call]) -> dict[str, NodeResult]:
        """Run each node's Call in parallel on its connection; return one NodeResult per node."""
        return self._each(calls, self._exec_one)

    def run_all(self, make: Callable[[str], Call], names: Iterable[str] | None = None) -> dict[str, NodeResult]:
        """Run `make(node)` on each named node (all by default)."""
        return self.run({n: make(n) for n in (self._by_name if names is None else names)})

    def hold(self, calls: dict[str, Call]) -> dict[str, NodeResult]:
        """Run each Call but keep its stdin open: return each node's first line of stdout as its result.

        The command then waits on the node for `step` (more input, the next line) or `finish` (last
        input, then its end): several steps on one channel, one exec. A command that ends before
        answering gives its ordinary result and is not held.
        """
        return self._each(calls, self._hold_one)

    def step(self, data: dict[str, bytes], timeout: float = 60.0,
             progress: Progress | None = None) -> dict[str, NodeResult]:
        """Send each held command more input and return its next line of stdout; it stays held.
        A command that ends instead gives its ordinary result and is no longer held.
        `progress(node, sent, total)` is called as each node's input goes out."""
        return self._each({n: Call("", d, timeout) for n, d in data.items()},
                          lambda name, call: self._step_one(name, call, progress))

    def exchange(self, data: dict[str, bytes], reply: Reply, timeout: float = 60.0,
                 progress: Progress | None = None) -> dict[str, tuple[NodeResult, NodeResult | None]]:
        """Two steps on each held command, the second sent as soon as that node answers the first (no
        wait for the other nodes in between): send data[node], read its line, send reply(node, line)
        and read the next line. Returns each node's (first result, second result); the second is None
        if the first failed or `reply` gave None. `progress` is called for the second input. `timeout`
        bounds both steps together, as two calls of `step` under one budget would."""
        def one(name: str) -> tuple[NodeResult, NodeResult | None]:
            end = time.monotonic() + timeout
            first = self._guard(name, Call("", data[name], timeout), self._step_one)
            then = reply(name, first.stdout) if first.ok else None
            if then is None:
                return first, None
            left = max(end - time.monotonic(), 0.001)
            return first, self._guard(name, Call("", then, left), lambda n, c: self._step_one(n, c, progress))

        names = list(data)
        return dict(zip(names, self._pool.map(one, names), strict=True))

    def finish(self, lines: Mapping[str, bytes | None], timeout: float = 60.0) -> dict[str, NodeResult]:
        """Send each held command its next input (None: only end its input), then wait for it to finish;
        return the rest of its output. A node with nothing held gets an error result."""
        return self._each({n: Call("", line, timeout) for n, line in lines.items()}, self._finish_one)

    def _hold_one(self, name: str, call: Call) -> tuple[int, bytes, bytes]:
        held = Held.start(self._connection(name).get_transport(), call.command, call.stdin, call.timeout)
        return self._answer(name, held)

    def _step_one(self, name: str, call: Call, progress: Progress | None = None) -> tuple[int, bytes, bytes]:
        held = self._take(name)
        held.arm(call.timeout)
        total = len(call.stdin or b"")
        try:
            held.send(call.stdin, progress and (lambda sent: progress(name, sent, total)))
        except BaseException:
            held.chan.close()
            raise
        return self._answer(name, held)

    def _answer(self, name: str, held: Held) -> tuple[int, bytes, bytes]:
        """Read the held command's next line and keep it held; if it ended instead, finish it."""
        try:
            line = held.read_line()
        except BaseException:
            held.chan.close()
            raise
        if line is None:  # ended without answering: an ordinary finished result
            return held.finish(None)
        held.wait()
        with self._lock:
            self._held[name] = held
        return 0, line, b""

    def _take(self, name: str) -> Held:
        with self._lock:
            held = self._held.pop(name, None)
        if held is None:
            raise NodeError("no command held on this node")
        return held

    def _finish_one(self, name: str, call: Call) -> tuple[int, bytes, bytes]:
        held = self._take(name)
        held.arm(call.timeout)
        return held.finish(call.stdin)

    def _exec_one(self, name: str, call: Call) -> tuple[int, bytes, bytes]:
        return channel.run(self._connection(name).get_transport(), call.command, call.stdin, call.timeout)

    def _each(self, calls: dict[str, Call], work) -> dict[str, NodeResult]:
        """Run `work(node, call)` for every node in parallel; return one NodeResult per node, in order."""
        names = list(calls)
        return dict(zip(names, self._pool.map(lambda n: self._guard(n, calls[n], work), names), strict=True))

    def _guard(self, name: str, call: Call, work) -> NodeResult:
        """Run `work` for one node and turn what it returns or raises into its NodeResult."""
        start = time.monotonic()
        res = NodeResult(name)
        try:
            res.exit_code, res.stdout, res.stderr = work(name, call)
        except NodeError as exc:
            res.error, res.host_key_refused = exc.reason, exc.host_key
        except TimeoutError:
            res.error = f"timed out after {call.timeout:g}s"
            self._drop(name)
        except Exception as exc:  # paramiko raises many kinds on a dropped connection
            res.error = f"connection lost: {describe_os_error(exc)}"
            self._drop(name)
        res.elapsed = time.monotonic() - start
        return res

    def _drop(self, name: str) -> None:
        with self._lock:
            conn = self._conns.pop(name, None)
            self._failed[name] = NodeError("connection lost earlier in this command")
        if conn is not None:
            conn.close()

    def close(self) -> None:
        """Close every connection and the worker pool; safe to call twice."""
        with self._lock:
            conns, self._conns = list(self._conns.values()), {}
            held, self._held = list(self._held.values()), {}
        for h in held:  # a held command reads end of input: it changes nothing and exits
            h.chan.close()
        for conn in conns:
            conn.close()
        if self._own_bastions and self.bastions is not None:
            self.bastions.close()
        self._pool.shutdown(wait=False, cancel_futures=True)


def raise_for_unreachable(results: dict[str, NodeResult], what: str, total: int | None = None) -> None:
    """Raise HostKeyError naming every node whose host key was refused, or UnreachableError with one
    grouped line (`what: 8 of 8 unreachable (connection refused): node1-node8`) for every node whose
    connection failed, of `total` nodes (default: those in `results`); each node's own reason is in the
    error's `nodes`."""
    bad = {n: r for n, r in results.items() if r.error}
    if not bad:
        return
    if any(r.host_key_refused for r in bad.values()):
        raise HostKeyError(f"{what}: " + "; ".join(f"{n}: {r.error}" for n, r in sorted(bad.items())))
    raise UnreachableError(f"{what}: {grouped({n: r.error or '' for n, r in bad.items()}, total or len(results))}",
                           nodes={n: r.error or "" for n, r in bad.items()})
