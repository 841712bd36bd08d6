"""HTTP client for each node's router: health, gate, halt and resume, all nodes in parallel.

Reaches routers at the host and router port of the inventory; for a node behind a bastion
(proxy_jump), through a direct-tcpip channel over the bastion's SSH transport that an `opener`
gives (http.client then speaks over that channel as its socket). A control request never carries
the token: it is signed with it (deployctl/remote/reqsign.py: HMAC over method, path, body, timestamp and
a fresh nonce), so a captured request neither reveals the token nor can be replayed.
"""

from __future__ import annotations

import hmac
import http.client
import json
import math
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass

from deployctl.config.inventory import Node
from deployctl.errors import describe_os_error
from deployctl.remote import replies, reqsign
from deployctl.remote.replies import NodeAnswerError, router_doc

# (node, timeout) -> a connected socket-like object to its router; raises ConnectionRefusedError when nothing
# listens there, OSError (naming the bastion) for anything else
Opener = Callable[[Node, float], object]


@dataclass(frozen=True)
class Answer:
    """One router's answer: HTTP status and JSON body, or why there was none (status 0)."""

    node: str
    status: int
    body: dict
    error: str | None = None
    # Nothing listens (refused, or reset by Docker's port proxy): the router is not
    # running, so it takes no orders either. A timeout is never "down".
    down: bool = False
    # The node's clock differs from ours by this many seconds, more than its window allows: the
    # request was signed again with the node's own clock (halt and gate close only, see request()).
    skew: float | None = None

    @property
    def ok(self) -> bool:
        """HTTP 200 with a readable answer."""
        return self.status == 200 and self.error is None

    def reason(self) -> str:
        """Return a one-line reason for a failed answer, the node's words clipped (replies.clip)."""
        if self.error:
            return self.error
        return f"HTTP {self.status}: {replies.clip(str(self.body.get('error') or 'no reason given'))}"


def decode_answer(node: str, status: int, data: bytes) -> Answer:
    """The Answer of `node`'s router that said `data` with HTTP `status`: its body (router_doc), or a not-ok
    Answer naming what is wrong with it. Never raises."""
    try:
        return Answer(node, status, router_doc(data, f"HTTP {status}"))
    except NodeAnswerError as exc:
        return Answer(node, status, {}, str(exc))


def request(node: Node, method: str, path: str, body: dict | None = None, token: str | None = None,
            timeout: float = 2.0, actor: str = "", safe: bool = False, opener: Opener | None = None) -> Answer:
    """Send one request to `node`'s router, signed with `token` if given; never raises, a failure is an
    Answer with status 0.

    `actor` (user@host) is signed with the request, for the node's journal of who asked. With `safe`
    (halt, gate close: requests that only ever stop orders), a refusal for a stale timestamp that
    carries the node's clock, proven with the token, is answered by signing the request again with
    that clock, once: a node whose clock is off can always be stopped, never opened or resumed.
    `opener` reaches a node with a proxy_jump."""
    raw = json.dumps(body).encode() if body is not None else b""
    signed = reqsign.headers(token, method, path, raw, actor) if token is not None else {}
    answer = _send(node, method, path, raw, signed, timeout, opener)
    if safe and token is not None and answer.status == 401:
        clock = _proven_clock(answer.body, token, signed[reqsign.NONCE_HEADER])
        if clock is not None:
            again = _send(node, method, path, raw, reqsign.headers(token, method, path, raw, actor, now=clock),
                          timeout, opener)
            return Answer(again.node, again.status, again.body, again.error, again.down, round(clock - time.time(), 1))
    return answer


def _proven_clock(body: dict, token: str, nonce: str) -> float | None:
    """The node's clock from its refusal of our request `nonce` for a stale timestamp, if the node
    proved it with the token; else None (nobody on the path can make us sign for another time)."""
    now, proof = body.get("now"), body.get("proof")
    if body.get("nonce") != nonce or not isinstance(now, str) or not isinstance(proof, str):
        return None
    try:
        clock = float(now)  # first: what float() reads is text the proof can be computed over
    except ValueError:
        return None
    # Bytes, not text: compare_digest refuses non-ASCII text, and an answer's text may hold anything.
    if not math.isfinite(clock) or not hmac.compare_digest(proof.encode("utf-8", "replace"),
                                                           reqsign.clock_proof(token, nonce, now).encode()):
        return None
    return clock


# A timeout bounds each read from the socket, not the exchange: a router that drips its answer a byte
# at a time would hold a halt for as long as it likes. The whole exchange gets this many timeouts.
EXCHANGE_TIMEOUTS = 3


def _send(node: Node, method: str, path: str, raw: bytes, signed: dict[str, str], timeout: float,
          opener: Opener | None = None) -> Answer:
    """One HTTP exchange with `node`'s router, cut off after EXCHANGE_TIMEOUTS * `timeout`; never raises."""
    conn = http.client.HTTPConnection(node.host, node.router_port, timeout=timeout)
    try:
        if opener is not None and node.proxy_jump:
            conn.sock = opener(node, timeout)  # http.client sends over it and never connects itself
        return _exchange(node, conn, method, path, raw, {"Content-Type": "application/json", **signed},
                         EXCHANGE_TIMEOUTS * timeout)
    except OSError as exc:
        return _failed(node, exc, None)
    finally:
        conn.close()


def _exchange(node: Node, conn: http.client.HTTPConnection, method: str, path: str, raw: bytes,
              headers: dict[str, str], seconds: float) -> Answer:
    """Send one request on `conn` and read its answer, all within `seconds`; never raises."""
    with _deadline(conn, seconds) as cut:
        try:
            conn.request(method, path, body=raw if raw else None, headers=headers)
            cut.sock = conn.sock
            resp = conn.getresponse()
            data = resp.read(1 << 20)
            if cut.is_set():  # what was read before the cut is not the whole answer
                raise TimeoutError
            return decode_answer(node.name, resp.status, data)
        except (OSError, http.client.HTTPException) as exc:
            return _failed(node, exc, seconds if cut.is_set() else None)


def _failed(node: Node, exc: Exception, cut_after: float | None) -> Answer:
    """The Answer of an exchange that failed with `exc`, or was cut off after `cut_after` seconds."""
    where = f"{node.host}:{node.router_port}"
    if cut_after is not None:
        return Answer(node.name, 0, {}, f"router at {where} did not answer within {cut_after:g} s")
    if isinstance(exc, ConnectionError):
        return Answer(node.name, 0, {}, f"router not running at {where}: {describe_os_error(exc)}", down=True)
    return Answer(node.name, 0, {}, f"router unreachable at {where}: {describe_os_error(exc)}")


class _Cut(threading.Event):
    """Set when an exchange ran out of time; `sock` is its socket once the request is sent (http.client
    lets go of it in getresponse() when the router will close the connection, while the answer is read)."""

    sock: object = None


@contextmanager
def _deadline(conn: http.client.HTTPConnection, seconds: float) -> Iterator[_Cut]:
    """Cut `conn` off after `seconds`; the _Cut yielded says whether it was."""
    cut = _Cut()
    watchdog = threading.Timer(seconds, _cut_off, (conn, cut))
    watchdog.daemon = True
    watchdog.start()
    try:
        yield cut
    finally:
        watchdog.cancel()


def _cut_off(conn: http.client.HTTPConnection, cut: _Cut) -> None:
    """End an exchange that ran out of time: the read under way ends within one `timeout`, and the next
    one finds no time left (a shutdown alone does not stop a Linux socket reading what still arrives)."""
    cut.set()
    sock = cut.sock or conn.sock
    try:
        getattr(sock, "settimeout", lambda seconds: None)(1e-6)
        getattr(sock, "shutdown", lambda how: None)(socket.SHUT_RDWR)
    except OSError:
        pass


def each(nodes: list[Node], fn: Callable[[Node], Answer]) -> dict[str, Answer]:
    """Run `fn` on every node in parallel; return node name -> Answer."""
    with ThreadPoolExecutor(max_workers=max(1, len(nodes))) as pool:
        return dict(zip((n.name for n in nodes), pool.map(fn, nodes), strict=True))


def health(nodes: list[Node], path: str = "/health", timeout: float = 2.0,
           opener: Opener | None = None) -> dict[str, Answer]:
    return each(nodes, lambda n: request(n, "GET", path, timeout=timeout, opener=opener))


def control(nodes: list[Node], action: str, token: str, body: dict | None = None,
            timeout: float = 2.0, actor: str = "", opener: Opener | None = None) -> dict[str, Answer]:
    """POST /control/<action> to every node, signed with the token; return node -> Answer.

    Halt and gate close are signed again with a node's own clock if it is too far off ours."""
    body = body or {}
    safe = action == "halt" or (action == "gate" and body.get("action") == "close")
    return each(nodes, lambda n: request(n, "POST", f"/control/{action}", body, token, timeout, actor, safe, opener))


def open_gate(nodes: list[Node], digest: str, token: str, actor: str = "",
              opener: Opener | None = None) -> dict[str, Answer]:
    """Ask every router to open its gate for `digest` (each refuses unless it runs that digest)."""
    return control(nodes, "gate", token, {"action": "open", "digest": digest}, actor=actor, opener=opener)


def close_gate(nodes: list[Node], token: str, actor: str = "", opener: Opener | None = None) -> dict[str, Answer]:
    """Close every router's gate; return node -> Answer."""
    return control(nodes, "gate", token, {"action": "close"}, actor=actor, opener=opener)


def open_all_or_none(nodes: list[Node], digest: str, token: str, actor: str = "",
                     opener: Opener | None = None) -> dict[str, Answer]:
    """Open every gate for `digest`; if any node refuses or does not answer, close them all again.

    The one place this rule lives: a fleet with some gates open and some closed takes orders on
    only part of the fleet, which is never what anyone asked for. Returns the open answers."""
    answers = open_gate(nodes, digest, token, actor, opener)
    if not all(a.ok for a in answers.values()):
        close_gate(nodes, token, actor, opener)
    return answers


def wait_running(nodes: list[Node], digest: str, deadline_s: float, path: str = "/health",
                 opener: Opener | None = None) -> dict[str, Answer]:
    """Poll each node's health until it reports `digest` or the deadline passes; return the last answers."""
    def one(node: Node) -> Answer:
        end = time.monotonic() + deadline_s
        while True:
            ans = request(node, "GET", path, timeout=min(2.0, deadline_s), opener=opener)
            if (ans.ok and ans.body.get("digest") == digest) or time.monotonic() >= end:
                return ans
            time.sleep(0.02)

    return each(nodes, one)


class Routers:
    """Every router of a fleet over HTTP, with the control token read on first use; the seam that
    run and control use (unit tests give tests/unit/fakefleet.py's in-memory routers instead)."""

    def __init__(self, token: Callable[[], str], actor: str = "", health_path: str = "/health",
                 opener: Opener | None = None):
        self._token, self.actor, self.health_path, self.opener = token, actor, health_path, opener

    def health(self, nodes: list[Node], timeout: float = 2.0) -> dict[str, Answer]:
        """Return node -> its router's health answer."""
        return health(nodes, self.health_path, timeout, self.opener)

    def control(self, nodes: list[Node], action: str, body: dict | None = None,
                timeout: float = 2.0) -> dict[str, Answer]:
        """POST /control/<action> (gate, halt, resume) to every node; return node -> Answer."""
        return control(nodes, action, self._token(), body, timeout, self.actor, self.opener)

    def close_gate(self, nodes: list[Node]) -> dict[str, Answer]:
        """Close every gate; return node -> Answer."""
        return close_gate(nodes, self._token(), self.actor, self.opener)

    def open_all_or_none(self, nodes: list[Node], digest: str) -> dict[str, Answer]:
        """Open every gate for `digest`, or close them all again (see the module function)."""
        return open_all_or_none(nodes, digest, self._token(), self.actor, self.opener)

    def wait_running(self, nodes: list[Node], digest: str, deadline_s: float) -> dict[str, Answer]:
        """Poll until every router reports `digest` or the deadline passes; return the last answers."""
        return wait_running(nodes, digest, deadline_s, self.health_path, self.opener)


class KeptHealth:
    """One kept-alive HTTP connection per node for repeated GET /health reads (`deployctl watch`).

    The router keeps a connection open only for GET /health asked with `Connection: keep-alive`; a
    read that fails closes that node's connection and the next read opens a new one."""

    def __init__(self, nodes: list[Node], path: str = "/health", timeout: float = 1.0):
        self._nodes, self._path, self._timeout = {n.name: n for n in nodes}, path, timeout
        self._conns: dict[str, http.client.HTTPConnection] = {}

    def read(self, name: str) -> Answer:
        """Return node `name`'s health Answer (status 0 with the reason if it did not answer); never raises.
        A kept connection the router closed meanwhile (idle, restarted) is opened again once."""
        reused = name in self._conns
        answer = self._read(name)
        if reused and answer.status == 0:
            answer = self._read(name)
        return answer

    def _read(self, name: str) -> Answer:
        node = self._nodes[name]
        conn = self._conns.get(name)
        if conn is None:
            conn = self._conns[name] = http.client.HTTPConnection(node.host, node.router_port, timeout=self._timeout)
        answer = _exchange(node, conn, "GET", self._path, b"", {"Connection": "keep-alive"},
                           EXCHANGE_TIMEOUTS * self._timeout)
        if answer.error or conn.sock is None:  # failed, or not kept alive (http.client let go of it)
            self.drop(name)
        return answer

    def drop(self, name: str) -> None:
        conn = self._conns.pop(name, None)
        if conn is not None:
            conn.close()

    def close(self) -> None:
        """Close every connection."""
        for name in list(self._conns):
            self.drop(name)
