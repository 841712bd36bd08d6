"""Signed control requests against a real router process: a captured request replayed, a bad
signature, a stale timestamp, and deployctl's own client (routers.request) re-signing a halt with a
skewed node's proven clock while a gate open stays refused."""

import json
import time

from routerproc import ORDER, TOKEN, call, folder_digest

from deployctl.config.inventory import Node
from deployctl.remote import reqsign, routers


def _capture(node, action, body, **kw):
    """Sign one control request as deployctl does; return (url, raw body, header fields)."""
    raw = json.dumps(body).encode()
    return f"{node.url}/control/{action}", raw, reqsign.headers(TOKEN, "POST", f"/control/{action}", raw, **kw)


def test_a_replayed_halt_or_gate_open_is_refused(node, release):
    url, raw, fields = _capture(node, "gate", {"action": "open", "digest": folder_digest(release)})
    assert call(url, "POST", raw=raw, fields=fields)[1]["gate"] == "open"
    assert node.control("gate", {"action": "close"})[0] == 200
    # Someone on the path replays the captured open: refused, the gate stays closed.
    assert call(url, "POST", raw=raw, fields=fields) == (
        401, {"error": "unauthorized: nonce already seen (a replayed request)"})
    assert node.health()["gate"] == "closed"
    url, raw, fields = _capture(node, "halt", {})
    assert call(url, "POST", raw=raw, fields=fields)[1]["halted"] is True
    assert node.control("resume")[0] == 200
    assert call(url, "POST", raw=raw, fields=fields)[0] == 401
    assert node.health()["halted"] is False
    assert "nonce already seen" in node.log() and TOKEN not in node.log()


def test_a_replay_after_a_router_restart_is_refused(node, start):
    url, raw, fields = _capture(node, "halt", {})
    assert call(url, "POST", raw=raw, fields=fields)[0] == 200
    assert node.control("resume")[0] == 200
    node.stop()
    reborn = start()
    assert call(f"{reborn.url}/control/halt", "POST", raw=raw, fields=fields)[0] == 401
    assert reborn.health()["halted"] is False


def test_a_bad_signature_or_a_stale_timestamp_is_refused(node, release):
    digest = folder_digest(release)
    url, raw, fields = _capture(node, "gate", {"action": "open", "digest": digest})
    tampered = json.dumps({"action": "open", "digest": digest, "x": 1}).encode()
    assert call(url, "POST", raw=tampered, fields=fields) == (401, {"error": "unauthorized: bad signature"})
    url, raw, fields = _capture(node, "gate", {"action": "open", "digest": digest}, now=time.time() - 60)
    status, body = call(url, "POST", raw=raw, fields=fields)
    assert status == 401 and body["error"].startswith("unauthorized: timestamp -60.") and "proof" in body
    assert node.health()["gate"] == "closed"


def test_a_node_with_a_skewed_clock_is_halted_and_closed_but_never_opened(node, release, monkeypatch):
    target = Node("n1", "127.0.0.1", 22, int(node.url.rsplit(":", 1)[1]), "root")
    assert routers.open_gate([target], folder_digest(release), TOKEN)["n1"].ok
    real = time.time
    monkeypatch.setattr(reqsign.time, "time", lambda: real() - 120)  # the controller's clock is 2 min behind
    opened = routers.open_gate([target], folder_digest(release), TOKEN)["n1"]
    assert opened.status == 401 and "timestamp -120." in opened.body["error"] and opened.skew is None
    assert routers.control([target], "resume", TOKEN)["n1"].status == 401
    closed = routers.close_gate([target], TOKEN)["n1"]
    assert closed.ok and closed.body["gate"] == "closed" and 110 < closed.skew < 130
    halted = routers.control([target], "halt", TOKEN, actor="ops@ctl")["n1"]
    assert halted.ok and halted.body["halted"] is True and 110 < halted.skew < 130
    assert node.order(ORDER) == (503, {"error": "halted"})
