"""Signed control requests on the real nodes: a halt captured on the wire carries no token, and
replayed (before and after the router restarts) or tampered with it is refused with 401."""

from __future__ import annotations

import json
import socket
import threading

from helpers import wait

from deployctl.config.inventory import Node
from deployctl.remote import routers


class Recorder:
    """A one-connection TCP relay on 127.0.0.1 to a router's published port that keeps the request bytes."""

    def __init__(self, port: int):
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port, self.target, self.request = self.listener.getsockname()[1], port, b""
        self.thread = threading.Thread(target=self._relay, daemon=True)
        self.thread.start()

    def _relay(self) -> None:
        self.listener.settimeout(5)
        client, _ = self.listener.accept()
        with client, socket.create_connection(("127.0.0.1", self.target), timeout=5) as upstream:
            client.settimeout(5)
            data = b""
            while b"\r\n\r\n" not in data or len(data.partition(b"\r\n\r\n")[2]) < _length(data):
                data += client.recv(65536)
            self.request = data
            upstream.sendall(data)
            while chunk := upstream.recv(65536):
                client.sendall(chunk)
        self.listener.close()


def _length(data: bytes) -> int:
    for line in data.partition(b"\r\n\r\n")[0].split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return 0


def send_raw(port: int, request: bytes) -> tuple[int, dict]:
    """Send request bytes as they are; return (status, JSON body)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
        conn.sendall(request)
        answer = b""
        while chunk := conn.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), json.loads(body)


def _halted(node: Node) -> bool:
    return routers.request(node, "GET", "/health").body.get("halted")


def test_a_captured_halt_replayed_or_tampered_is_refused(ctx, node_exec):
    node, token = next(n for n in ctx.nodes if n.name == "node3"), ctx.token()
    recorder = Recorder(node.router_port)
    via = Node(node.name, node.host, node.ssh_port, recorder.port, node.user)
    assert routers.control([via], "halt", token, actor="e2e@test")[node.name].body["halted"] is True
    recorder.thread.join(5)
    captured = recorder.request
    assert b"POST /control/halt " in captured and b"X-Deployctl-Signature: " in captured
    assert token.encode() not in captured  # the token itself never travels
    assert routers.control([node], "resume", token)[node.name].ok and not _halted(node)

    assert send_raw(node.router_port, captured) == (
        401, {"error": "unauthorized: nonce already seen (a replayed request)"})
    assert not _halted(node)
    head, _, body = captured.partition(b"\r\n\r\n")
    assert body == b"{}"
    assert send_raw(node.router_port, head + b"\r\n\r\n[]") == (401, {"error": "unauthorized: bad signature"})

    # A restarted router still knows the nonces of the last 30 s (state/nonces).
    assert node_exec("node3", "supervisorctl restart router")[0] == 0
    assert wait(lambda: routers.request(node, "GET", "/health").ok, 10)
    assert send_raw(node.router_port, captured)[0] == 401
    assert not _halted(node)
    code, log = node_exec("node3", "cat /var/log/router.log")
    assert "nonce already seen" in log and "bad signature" in log and token not in log
