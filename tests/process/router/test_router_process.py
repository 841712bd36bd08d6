"""Process tests for the router in fleet/router/: run router.py as the supervisor would, talk HTTP on 127.0.0.1.

Every wait is bounded, and every process started here is stopped in fixture teardown.
"""

import concurrent.futures
import json
import os
import signal
import subprocess
import sys

import pytest
from routerproc import ORDER, TOKEN, RouterProcess, call, folder_digest, free_port, shipped_files

WRONG_TOKEN = "tok-wrong-0000"
HEALTH_KEYS = {"service", "version", "digest", "gate", "halted", "flags", "uptime_s", "orders", "child_orders",
               "rejected", "errors", "max_children_per_order", "breaker", "pid", "release_dir"}


def release_listing(folder):
    """Every path under folder (files and folders), relative, sorted."""
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*"))


def open_gate(node, release):
    status, body = node.control("gate", {"action": "open", "digest": folder_digest(release)})
    assert (status, body["gate"]) == (200, "open")


def test_health_reports_the_digest_of_its_release_folder(node, release):
    health = node.health()
    assert set(health) == HEALTH_KEYS
    assert health["digest"] == folder_digest(release)
    assert (health["service"], health["version"]) == ("order-router", "1.0.0")
    assert (health["gate"], health["halted"]) == ("closed", False)
    assert health["flags"] == {"price_improvement": False, "log_orders": False}
    assert (health["orders"], health["child_orders"], health["rejected"], health["errors"]) == (0, 0, 0, 0)
    assert (health["pid"], health["release_dir"]) == (node.proc.pid, os.path.realpath(release))
    assert isinstance(health["uptime_s"], float)


def test_check_prints_digest_and_version(release):
    result = subprocess.run([sys.executable, "-B", str(release / "router.py"), "--check"],
                            capture_output=True, text=True, timeout=10)
    assert result.returncode == 0
    assert json.loads(result.stdout) == {"digest": folder_digest(release), "version": "1.0.0"}


def test_orders_are_refused_while_the_gate_is_closed(node):
    assert node.order() == (503, {"error": "gate closed"})
    assert node.health()["child_orders"] == 0


def test_gate_refuses_a_wrong_digest(node):
    status, body = node.control("gate", {"action": "open", "digest": "0" * 64})
    assert status == 409
    assert body["error"].startswith("digest mismatch")
    assert node.health()["gate"] == "closed"


def test_right_digest_opens_the_gate_and_orders_route(node, release):
    open_gate(node, release)
    assert node.order() == (200, {"id": "p-1", "quantity": 250, "filled": 250, "children": [
        {"qty": 100, "price": 10.5}, {"qty": 100, "price": 10.5}, {"qty": 50, "price": 10.5}]})
    assert node.order() == (409, {"error": "parent p-1 already fully routed"})
    health = node.health()
    assert (health["orders"], health["child_orders"], health["rejected"]) == (1, 3, 1)
    status, body = node.control("gate", {"action": "close"})
    assert (status, body["gate"]) == (200, "closed")


@pytest.mark.parametrize(("token", "reason"), [(None, "unsigned request"), (WRONG_TOKEN, "bad signature")])
def test_control_needs_the_token(node, token, reason):
    assert node.control("halt", token=token) == (401, {"error": f"unauthorized: {reason}"})
    assert node.control("gate", {"action": "close"}, token=token) == (401, {"error": f"unauthorized: {reason}"})
    assert node.health()["halted"] is False
    log = node.log()
    assert f"router: refused control request /control/halt from 127.0.0.1: {reason}\n" in log
    assert TOKEN not in log and WRONG_TOKEN not in log


BAD_ORDERS = [
    (b"not json", "body: malformed JSON"),
    (b"[]", "body: should be a JSON object"),
    (json.dumps({**ORDER, "quantity": True}).encode(), "quantity: should be an integer"),
    (json.dumps({**ORDER, "quantity": 0}).encode(), "quantity: should be between 1 and 1000000"),
    (json.dumps({k: v for k, v in ORDER.items() if k != "symbol"}).encode(), "missing field 'symbol'"),
    (json.dumps({**ORDER, "power_peg": 1}).encode(), "unknown field 'power_peg'"),
    (b'{"id": "p-2", "symbol": "X", "side": "buy", "quantity": 5, "limit_price": NaN}', "body: malformed JSON"),
    (b"{" + b" " * (64 * 1024) + b"}", "body: larger than 65536 bytes"),
]


def test_malformed_orders_are_rejected_and_route_nothing(node, release):
    open_gate(node, release)
    for raw, message in BAD_ORDERS:
        status, body = node.order(raw=raw)
        assert status == 400, raw[:80]
        assert body["error"].startswith(message), body
    health = node.health()
    assert (health["child_orders"], health["orders"], health["rejected"]) == (0, 0, len(BAD_ORDERS))


def test_unknown_paths_and_methods(node):
    assert node.health() and call(node.url + "/nope")[0] == 404
    assert call(node.url + "/orders")[0] == 405
    assert call(node.url + "/health", "POST", body={})[0] == 405
    assert node.health()["errors"] == 0


def test_halt_survives_a_restart(node, start, state, release):
    open_gate(node, release)
    status, body = node.control("halt")
    assert (status, body["halted"], body["gate"]) == (200, True, "closed")
    assert (state / "halted").exists()
    node.stop()
    reborn = start()
    health = reborn.health()
    assert (health["halted"], health["gate"]) == (True, "closed")
    assert reborn.order() == (503, {"error": "halted"})
    status, body = reborn.control("gate", {"action": "open", "digest": folder_digest(release)})
    assert (status, body["error"]) == (409, "halted: resume before opening the gate")


def test_resume_leaves_the_gate_closed(node, state, release):
    open_gate(node, release)
    node.control("halt")
    status, body = node.control("resume")
    assert (status, body["halted"], body["gate"]) == (200, False, "closed")
    assert node.control("resume")[0] == 200  # idempotent
    assert not (state / "halted").exists()
    assert node.order() == (503, {"error": "gate closed"})


def test_release_folder_stays_exactly_the_artifact(node, release):
    open_gate(node, release)
    node.order()
    assert {"router.json", "router.py"} <= set(shipped_files())
    assert release_listing(release) == shipped_files()
    assert node.health()["digest"] == folder_digest(release)


def test_started_without_bytecode_flags_through_current_it_writes_nothing_into_its_release(release, state, tmp_path):
    # Neither -B nor PYTHONDONTWRITEBYTECODE: router.py itself must keep __pycache__ out of the
    # release folder, or the digest it reports (and the node's disk hash) would change.
    (tmp_path / "current").symlink_to("release")
    env = {key: value for key, value in os.environ.items() if key != "PYTHONDONTWRITEBYTECODE"}
    process = RouterProcess(tmp_path / "current", state, tmp_path / "router.log", python_flags=(), env=env)
    try:
        health = process.wait_ready()
        process.proc.send_signal(signal.SIGTERM)
        assert process.proc.wait(timeout=5) == 0
    finally:
        process.stop()
    assert (health["digest"], health["release_dir"]) == (folder_digest(release), os.path.realpath(release))
    assert release_listing(release) == shipped_files()
    assert process.log().endswith("router: stopped\n")


def test_check_works_when_started_isolated(release):
    # -I leaves the script's folder off sys.path: router.py adds its own folder for its modules.
    result = subprocess.run([sys.executable, "-I", str(release / "router.py"), "--check"],
                            capture_output=True, text=True, timeout=10)
    assert (result.returncode, result.stderr) == (0, "")
    assert json.loads(result.stdout) == {"digest": folder_digest(release), "version": "1.0.0"}
    assert release_listing(release) == shipped_files()


def test_unknown_flag_exits_2_naming_it(release, state):
    config = json.loads((release / "router.json").read_text())
    config["flags"]["power_peg"] = True
    (release / "router.json").write_text(json.dumps(config))
    result = subprocess.run([sys.executable, "-B", str(release / "router.py"), "--state-dir", str(state),
                             "--port", str(free_port()), "--host", "127.0.0.1"],
                            capture_output=True, text=True, timeout=10)
    assert result.returncode == 2
    assert result.stderr == "router: unknown flag 'power_peg' in router.json\n"


def test_concurrent_orders_for_one_parent_never_route_more_than_its_quantity(node, release):
    open_gate(node, release)
    order = {**ORDER, "id": "p-race", "quantity": 5000}
    with concurrent.futures.ThreadPoolExecutor(max_workers=16) as pool:
        answers = list(pool.map(lambda _i: node.order(order), range(16)))
    assert {status for status, _body in answers} <= {200, 409}
    routed = sum(child["qty"] for status, body in answers if status == 200 for child in body["children"])
    assert routed == 5000
    assert node.health()["child_orders"] == 50
