"""HTTP client for each node's router: health, gate, halt and resume, all nodes in parallel.

Reaches routers only at their published 127.0.0.1 ports from the inventory. The
control token goes in a header, never on a command line or in a log line.
"""

from __future__ import annotations

import http.client
import json
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable

from deployctl.config import Node

TOKEN_HEADER = "X-Deployctl-Token"
ACTOR_HEADER = "X-Deployctl-Actor"


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

    @property
    def ok(self) -> bool:
        return self.status == 200

    def reason(self) -> str:
        if self.error:
            return self.error
        return f"HTTP {self.status}: {self.body.get('error', 'no reason given')}"


def request(node: Node, method: str, path: str, body: dict | None = None, token: str | None = None,
            timeout: float = 2.0, actor: str = "") -> Answer:
    """Send one request to `node`'s router; never raises, a failure is an Answer with status 0.

    `actor` (user@host) goes with a token, for the node's journal of who asked."""
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers[TOKEN_HEADER] = token
        if actor:
            headers[ACTOR_HEADER] = actor
    conn = http.client.HTTPConnection(node.host, node.router_port, timeout=timeout)
    try:
        conn.request(method, path, body=json.dumps(body) if body is not None else None, headers=headers)
        resp = conn.getresponse()
        raw = resp.read(1 << 20)
        try:
            doc = json.loads(raw)
        except ValueError:
            return Answer(node.name, resp.status, {}, f"HTTP {resp.status}: answer is not JSON")
        return Answer(node.name, resp.status, doc if isinstance(doc, dict) else {})
    except ConnectionError as exc:
        return Answer(node.name, 0, {}, f"router not running at {node.host}:{node.router_port} ({exc.__class__.__name__})",
                      down=True)
    except (OSError, http.client.HTTPException) as exc:
        return Answer(node.name, 0, {}, f"router unreachable at {node.host}:{node.router_port}: {exc}")
    finally:
        conn.close()


def each(nodes: list[Node], fn: Callable[[Node], Answer]) -> dict[str, Answer]:
    """Run `fn` on every node in parallel; return node name -> Answer."""
    with ThreadPoolExecutor(max_workers=max(1, len(nodes))) as pool:
        return dict(zip((n.name for n in nodes), pool.map(fn, nodes)))


def health(nodes: list[Node], path: str = "/health", timeout: float = 2.0) -> dict[str, Answer]:
    return each(nodes, lambda n: request(n, "GET", path, timeout=timeout))


def control(nodes: list[Node], action: str, token: str, body: dict | None = None,
            timeout: float = 2.0, actor: str = "") -> dict[str, Answer]:
    """POST /control/<action> to every node with the token; return node -> Answer."""
    return each(nodes, lambda n: request(n, "POST", f"/control/{action}", body or {}, token, timeout, actor))


def open_gate(nodes: list[Node], digest: str, token: str, actor: str = "") -> dict[str, Answer]:
    """Ask every router to open its gate for `digest` (each refuses unless it runs that digest)."""
    return control(nodes, "gate", token, {"action": "open", "digest": digest}, actor=actor)


def close_gate(nodes: list[Node], token: str, actor: str = "") -> dict[str, Answer]:
    """Close every router's gate; return node -> Answer."""
    return control(nodes, "gate", token, {"action": "close"}, actor=actor)


def open_all_or_none(nodes: list[Node], digest: str, token: str, actor: str = "") -> dict[str, Answer]:
    """Open every gate for `digest`; if any node refuses or does not answer, close them all again.

    The one place this rule lives: a fleet with some gates open and some closed takes orders on
    only part of the fleet, which is never what anyone asked for. Returns the open answers."""
    answers = open_gate(nodes, digest, token, actor)
    if not all(a.ok for a in answers.values()):
        close_gate(nodes, token, actor)
    return answers


def wait_running(nodes: list[Node], digest: str, deadline_s: float, path: str = "/health") -> dict[str, Answer]:
    """Poll each node's health until it reports `digest` or the deadline passes; return the last answers."""
    def one(node: Node) -> Answer:
        end = time.monotonic() + deadline_s
        while True:
            ans = request(node, "GET", path, timeout=min(2.0, deadline_s))
            if (ans.ok and ans.body.get("digest") == digest) or time.monotonic() >= end:
                return ans
            time.sleep(0.02)

    return each(nodes, one)


class Routers:
    """Every router of a fleet over HTTP, with the control token read on first use; the seam that
    run and control use (unit tests give tests/unit/fakefleet.py's in-memory routers instead)."""

    def __init__(self, token: Callable[[], str], actor: str = "", health_path: str = "/health"):
        self._token, self.actor, self.health_path = token, actor, health_path

    def health(self, nodes: list[Node], timeout: float = 2.0) -> dict[str, Answer]:
        """Return node -> its router's health answer."""
        return health(nodes, self.health_path, timeout)

    def control(self, nodes: list[Node], action: str, body: dict | None = None,
                timeout: float = 2.0) -> dict[str, Answer]:
        """POST /control/<action> (gate, halt, resume) to every node; return node -> Answer."""
        return control(nodes, action, self._token(), body, timeout, self.actor)

    def close_gate(self, nodes: list[Node]) -> dict[str, Answer]:
        """Close every gate; return node -> Answer."""
        return close_gate(nodes, self._token(), self.actor)

    def open_all_or_none(self, nodes: list[Node], digest: str) -> dict[str, Answer]:
        """Open every gate for `digest`, or close them all again (see the module function)."""
        return open_all_or_none(nodes, digest, self._token(), self.actor)

    def wait_running(self, nodes: list[Node], digest: str, deadline_s: float) -> dict[str, Answer]:
        """Poll until every router reports `digest` or the deadline passes; return the last answers."""
        return wait_running(nodes, digest, deadline_s, self.health_path)


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
        try:
            conn.request("GET", self._path, headers={"Connection": "keep-alive"})
            resp = conn.getresponse()
            raw = resp.read(1 << 20)
            if resp.getheader("Connection", "").lower() != "keep-alive":
                self.drop(name)
            doc = json.loads(raw)
            return Answer(name, resp.status, doc if isinstance(doc, dict) else {})
        except ValueError:
            self.drop(name)
            return Answer(name, 0, {}, "health answer is not JSON")
        except ConnectionError as exc:
            self.drop(name)
            return Answer(name, 0, {}, f"router not running at {node.host}:{node.router_port} ({exc.__class__.__name__})",
                          down=True)
        except (OSError, http.client.HTTPException) as exc:
            self.drop(name)
            return Answer(name, 0, {}, f"router unreachable at {node.host}:{node.router_port}: {exc}")

    def drop(self, name: str) -> None:
        conn = self._conns.pop(name, None)
        if conn is not None:
            conn.close()

    def close(self) -> None:
        """Close every connection."""
        for name in list(self._conns):
            self.drop(name)
