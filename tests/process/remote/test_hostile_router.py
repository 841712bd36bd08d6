"""A hostile answerer on a node's router port (a local HTTP server that says whatever it is told) against
deployctl's real HTTP client: routers.request, health, control and KeptHealth give a not-ok Answer naming
the problem, never an exception; and `deployctl halt` against a fleet of two real router processes and
one node answering `[` * 100000 halts the two, names the third as not halted, journals it, and exits 4 in
one line, where it used to die with "internal error" before its SSH fallback and its journal record.

The same against the real fleet (a hostile answerer on one node's port, halt falling back to SSH there,
recover and watch going on) is an e2e test this file does not hold; the SSH fallback itself is shown on
the in-memory fleet (tests/unit/ops/test_control.py)."""

from __future__ import annotations

import http.server
import json
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import cast

import pytest
from routerproc import TOKEN, free_port

from deployctl.config.inventory import Node
from deployctl.remote import routers
from deployctl.state import keys
from deployctl.state.statedir import StateDir

ROOT = Path(__file__).resolve().parents[3]
DEPLOYCTL = [sys.executable, str(ROOT / ".venv" / "bin" / "deployctl")]

HOSTILE = [
    ("deep-list", 200, b"[" * 100_000),
    ("deep-object", 200, b'{"a":' * 100_000),
    ("huge-int", 200, b'{"halted": true, "orders": ' + b"9" * 5000 + b"}"),
    ("nan", 200, b'{"halted": true, "errors": NaN}'),
    ("not-utf8", 200, b'{"halted": true, "gate": "\xff"}'),
    ("truncated", 200, b'{"halted": tr'),
    ("list", 200, b'[{"halted": true}]'),
    ("halted-string", 200, b'{"halted": "yes"}'),
    ("refusal-deep", 401, b"[" * 100_000),
    ("refusal-hostile-proof", 401, b'{"error": "stale", "nonce": "%s", "now": "1", "proof": "\xc3\xa9"}'),
]


class Answerer(http.server.ThreadingHTTPServer):
    """An HTTP server on 127.0.0.1 answering every request with `status` and the raw `body`; for a
    refusal with a nonce placeholder, the nonce of the request it answers (as a router's clock refusal).
    With `drip`, it sends the head, then one byte of the body every 0.2 s, for up to 30 s."""

    daemon_threads = True

    def __init__(self, status: int, body: bytes, drip: bool = False):
        self.status, self.body, self.drip, self.done = status, body, drip, threading.Event()
        super().__init__(("127.0.0.1", 0), _Handler)

    @property
    def port(self) -> int:
        return self.server_address[1]


class _Handler(http.server.BaseHTTPRequestHandler):
    def _answer(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        server = cast(Answerer, self.server)
        body = server.body.replace(b"%s", self.headers.get("X-Deployctl-Nonce", "").encode())
        self.send_response(server.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not server.drip:
            self.wfile.write(body)
            return
        for byte in body[:150]:
            if server.done.wait(0.2):
                return
            self.wfile.write(bytes([byte]))
            self.wfile.flush()

    do_GET = do_POST = _answer

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def answerer():
    """Start hostile answerers (status, body); every one is shut down at teardown."""
    started = []

    def start(status: int, body: bytes, drip: bool = False) -> Answerer:
        server = Answerer(status, body, drip)
        threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.done.set()
        server.shutdown()
        server.server_close()


def _node(name: str, router_port: int, ssh_port: int = 22) -> Node:
    return Node(name, "127.0.0.1", ssh_port, router_port, "root")


@pytest.mark.parametrize("name, status, body", HOSTILE, ids=[h[0] for h in HOSTILE])
def test_every_http_read_of_a_hostile_answer_is_a_bad_answer_named(answerer, name, status, body):
    target = _node("node3", answerer(status, body).port)
    said = [routers.request(target, "GET", "/health"), routers.health([target])["node3"],
            routers.control([target], "halt", TOKEN, timeout=2.0)["node3"],
            routers.control([target], "gate", TOKEN, {"action": "close"})["node3"]]
    links = routers.KeptHealth([target])
    try:
        said.append(links.read("node3"))
    finally:
        links.close()
    for answer in said:
        assert (answer.node, answer.status, answer.ok, answer.skew) == ("node3", status, False, None)
        assert answer.reason().startswith(f"HTTP {status}: ") and "\n" not in answer.reason()
    if status == 200:
        assert said[0].reason() in ("HTTP 200: answer is not JSON", "HTTP 200: answer is not a JSON object",
                                    "HTTP 200: answer field 'halted' of the wrong type",
                                    "HTTP 200: answer field 'errors' of the wrong type",
                                    "HTTP 200: answer field 'gate' of the wrong type")


def test_a_router_dripping_its_answer_is_cut_off_and_named(answerer):
    # Each read from the socket gets a byte within its 0.5 s timeout, so only a deadline on the whole
    # exchange ends it; the answerer drips for 30 s, so without one the answer is another (and late).
    target = _node("node3", answerer(200, b'{"halted": true, "gate": "closed"}' + b" " * 200, drip=True).port)
    halted = routers.control([target], "halt", TOKEN, timeout=0.5)["node3"]
    links = routers.KeptHealth([target], timeout=0.5)
    try:
        health = links.read("node3")
    finally:
        links.close()
    for answer in (halted, health):
        assert (answer.ok, answer.down, answer.reason()) == (
            False, False, f"router at 127.0.0.1:{target.router_port} did not answer within 1.5 s")


def _closed_port() -> int:
    return free_port()  # bound and closed again: nothing listens, SSH is refused at once


def _controller(tmp_path: Path, router_ports: list[int]) -> tuple[Path, Path]:
    """A state folder (the routers' token, a client key, host keys pinned) and an inventory whose nodes have
    these router ports and an SSH port where nothing listens; return (state folder, inventory)."""
    nodes = [(f"node{i}", "127.0.0.1", _closed_port()) for i in range(1, len(router_ports) + 1)]
    state = StateDir(tmp_path / "controller")
    state.token_file.parent.mkdir(parents=True)
    state.token_file.write_text(TOKEN + "\n")
    keys.ensure(state, nodes)
    lines = ["fleet: test-fleet", "ssh:", "  user: root", "  connect_timeout: 5", "nodes:"]
    lines += [f"  - {{name: {name}, host: {host}, ssh_port: {ssh}, router_port: {router}}}"
              for (name, host, ssh), router in zip(nodes, router_ports, strict=True)]
    inventory = tmp_path / "fleet.yaml"
    inventory.write_text("\n".join(lines) + "\n")
    return state.root, inventory


def test_halt_against_a_node_answering_deep_json_halts_the_others_and_names_it(answerer, start, tmp_path):
    good = [start(), start()]
    hostile = answerer(200, b"[" * 100_000)
    state, inventory = _controller(tmp_path, [int(n.url.rsplit(":", 1)[1]) for n in good] + [hostile.port])
    env = {**os.environ, "DEPLOYCTL_STATE": str(state), "NO_COLOR": "1"}
    proc = subprocess.run([*DEPLOYCTL, "-i", str(inventory), "halt"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 4, proc.stderr
    assert "Traceback" not in proc.stderr and "internal error" not in proc.stderr
    assert len(proc.stderr.splitlines()) == 1, proc.stderr
    assert proc.stderr.startswith("deployctl: error: halt did not reach 1 of 3 nodes ("), proc.stderr
    assert proc.stderr.endswith("): node3\n"), proc.stderr
    assert [n.health()["halted"] for n in good] == [True, True]
    record = json.loads((state / "journal.jsonl").read_text().splitlines()[-1])
    assert (record["action"], record["outcome"]) == ("halt", "partial")
    assert record["nodes"]["node1"] == record["nodes"]["node2"] == "halted"
    assert record["nodes"]["node3"].startswith("NOT HALTED: ")
