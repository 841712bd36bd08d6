"""The router's own breaker (router.json max_child_orders_per_s) and its kept-alive /health, on a real router
process."""

import http.client
import json

import pytest
from routerproc import ORDER, RouterProcess, folder_digest


def with_limit(release, limit):
    config = json.loads((release / "router.json").read_text())
    config["max_child_orders_per_s"] = limit
    (release / "router.json").write_text(json.dumps(config))


@pytest.fixture
def limited(release, state, tmp_path):
    """A router whose breaker trips above 50 child orders a second, gate open."""
    with_limit(release, 50)
    proc = RouterProcess(release, state, tmp_path / "router.log")
    try:
        proc.wait_ready()
        status, _ = proc.control("gate", {"action": "open", "digest": folder_digest(release)})
        assert status == 200
        yield proc
    finally:
        proc.stop()


def test_the_router_halts_itself_when_its_child_order_rate_passes_the_limit(limited, state):
    # 10000 at max_child_qty 100: one parent sends 100 children within a second; the 51st trips the breaker.
    status, body = limited.order({**ORDER, "id": "runaway", "quantity": 10000})
    assert status == 503 and body["error"] == "halted"
    assert len(body["children"]) == 51  # the tripping child was sent; not one after it
    assert limited.order({**ORDER, "id": "next"}) == (503, {"error": "halted"})
    health = limited.health()
    assert health["halted"] is True and health["gate"] == "closed"
    assert health["child_orders"] == 51  # the tripping child was sent; not one after it
    assert health["breaker"]["tripped"] is True and health["breaker"]["limit"] == 50
    assert (state / "halted").exists()  # durably, as a halt request: a restart stays halted
    records = [json.loads(line) for line in (state / "journal.jsonl").read_text().splitlines()]
    assert [r["action"] for r in records][-1] == "breaker" and records[-1]["who"] == "router"
    assert "breaker: 51 child orders in the last second, above the limit 50" in limited.log()


def test_below_the_limit_nothing_trips_and_resume_arms_it_again(limited, release):
    for i in range(10):
        assert limited.order({**ORDER, "id": f"q-{i}"})[0] == 200
    health = limited.health()
    assert health["halted"] is False and health["breaker"] == {"limit": 50, "rate": 30, "tripped": False}
    assert health["max_children_per_order"] == 3


def test_a_bad_limit_is_refused_at_start(release, state, tmp_path):
    with_limit(release, 0)
    proc = RouterProcess(release, state, tmp_path / "router.log")
    try:
        assert proc.proc.wait(timeout=10) == 2
        assert "router.json: max_child_orders_per_s: should be at least 1" in proc.log()
    finally:
        proc.stop()


def test_health_answers_many_reads_on_one_kept_alive_connection(limited):
    conn = http.client.HTTPConnection("127.0.0.1", limited.port, timeout=5)
    try:
        sockets = set()
        for _ in range(5):
            conn.request("GET", "/health", headers={"Connection": "keep-alive"})
            resp = conn.getresponse()
            assert resp.status == 200 and resp.getheader("Connection") == "keep-alive"
            assert json.loads(resp.read())["gate"] == "open"
            sockets.add(id(conn.sock))
        assert len(sockets) == 1  # one connection: http.client would reconnect after a close
    finally:
        conn.close()


def test_other_requests_still_close_their_connection(limited):
    conn = http.client.HTTPConnection("127.0.0.1", limited.port, timeout=5)
    try:
        conn.request("GET", "/health")  # no keep-alive asked
        resp = conn.getresponse()
        assert resp.getheader("Connection") == "close"
        resp.read()
    finally:
        conn.close()
