"""`deployctl watch` on the real fleet: its JSON lines, a breaker tripping on a real (bounded) flood of
orders and halting the whole fleet; and a router's own breaker halting that router alone."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from helpers import order, post_order

from deployctl import api
from deployctl.remote import routers

ROOT = Path(__file__).resolve().parents[2]
DEPLOYCTL = [sys.executable, "-m", "deployctl"]


def playbook_with(tmp_path: Path, breakers: str) -> Path:
    """playbooks/router.yaml with absolute paths and its breakers replaced by `breakers` (YAML lines)."""
    text = (ROOT / "playbooks" / "router.yaml").read_text()
    text = text.replace("source: ../fleet/router", f"source: {ROOT / 'fleet' / 'router'}")
    text = text.replace("flag_registry: flags.yaml", f"flag_registry: {ROOT / 'playbooks' / 'flags.yaml'}")
    head, rest = text.split("breakers:", 1)
    tail = rest[rest.index("\nmin_free_mb"):]
    path = tmp_path / "router.yaml"
    path.write_text(head + "breakers:\n" + breakers + tail)
    return path


def flood(nodes, qty: int, seconds: float, stop: threading.Event, first_refusal: dict) -> dict[str, int]:
    """One client per node posting orders until its node refuses (503), `stop`, or `seconds` pass; bounded."""
    sent: dict[str, int] = {}

    def one(node):
        end, n = time.monotonic() + seconds, 0
        while time.monotonic() < end and not stop.is_set() and n < 5000:
            ans = post_order(node, order(f"{node.name}-f{n}", qty), timeout=3)
            n += 1
            if ans.status == 503:
                first_refusal.setdefault(node.name, time.monotonic())
                break
        sent[node.name] = n

    threads = [threading.Thread(target=one, args=(node,), daemon=True) for node in nodes]
    for t in threads:
        t.start()
    for t in threads:
        t.join(seconds + 10)
    return sent


def test_watch_json_lines_and_a_breaker_tripping_on_a_real_flood(ctx, tmp_path):
    book = playbook_with(tmp_path, "  child_orders_per_s: 100\n  gate_open_while_mixed: true\n")
    env = {**os.environ, "DEPLOYCTL_STATE": str(ctx.state.root)}
    journal_before = len(api.history(ctx))
    proc = subprocess.Popen([*DEPLOYCTL, "-i", str(ctx.inventory.path), "-p", str(book), "watch", "--interval", "0.5"],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for _ in range(10):  # the first sweeps: connections open (a cold read may time out here), nothing flowing
            first = json.loads(proc.stdout.readline())
            assert first["trips"] == [] and first["halted"] is None, first
            assert [n["node"] for n in first["nodes"]] == [n.name for n in ctx.nodes]
            if all(n["gate"] == "open" and n["reachable"] and n["release"] == n["running"] for n in first["nodes"]):
                break
        else:
            pytest.fail(f"watch never saw the whole fleet open: {first}")
        assert first["outliers"].startswith(f"{len(ctx.nodes)} nodes run ")
        stop, refused = threading.Event(), {}
        started = time.monotonic()
        sent = flood(ctx.nodes, 2000, 15.0, stop, refused)  # 20 children per order
        out, err = proc.communicate(timeout=30)
    finally:
        stop.set() if "stop" in dir() else None
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 7, err
    assert err.startswith("deployctl: error: watch: breaker tripped, fleet halted: child_orders_per_s: ")
    assert len(err.strip().splitlines()) == 1
    lines = [json.loads(line) for line in out.splitlines()]
    last = lines[-1]
    (trip,) = last["trips"]
    assert trip["breaker"] == "child_orders_per_s" and trip["figure"] > 100 and trip["limit"] == 100
    assert last["halted"] == "breaker" and set(last["halt"]) == {n.name for n in ctx.nodes}
    assert all(v.startswith("halted") for v in last["halt"].values())
    assert sum(sent.values()) < 8 * 5000  # the flood stopped because the fleet refused, not at its bound
    assert set(refused) == {n.name for n in ctx.nodes}  # every node refused orders
    print(f"flood: {sum(sent.values())} orders; every node refused {max(refused.values()) - started:.2f} s "
          f"after the flood started; {len(lines)} sweeps")
    health = routers.health(ctx.nodes)
    assert all(a.ok and a.body["halted"] is True and a.body["gate"] == "closed" for a in health.values())
    records = api.history(ctx)[journal_before:]
    breaker = [r for r in records if r["action"] == "breaker"]
    assert len(breaker) == 1 and breaker[0]["breaker"] == "child_orders_per_s"
    assert breaker[0]["figure"] == trip["figure"] and breaker[0]["nodes"] == trip["nodes"]
    assert any(r["action"] == "halt" for r in records)


def test_a_router_halts_itself_past_its_own_limit_with_no_watch_running(ctx, tmp_path, node_exec):
    src = tmp_path / "router"
    shutil.copytree(ROOT / "fleet" / "router", src, ignore=shutil.ignore_patterns("__pycache__"))
    cfg = json.loads((src / "router.json").read_text())
    cfg.update(version="1.0.1-breaker", max_child_orders_per_s=500)
    (src / "router.json").write_text(json.dumps(cfg) + "\n")
    art = api.build(ctx, tmp_path / "dist", src)
    api.rollout(ctx, art.path)
    node3 = next(n for n in ctx.nodes if n.name == "node3")
    ans = post_order(node3, order("runaway", 100000))  # 1000 children at once: the 501st trips it
    assert ans.status == 503 and ans.body["error"] == "halted"
    assert len(ans.body["children"]) == 501
    health = routers.health(ctx.nodes)
    assert health["node3"].body["halted"] is True and health["node3"].body["breaker"]["tripped"] is True
    assert [n for n, a in health.items() if a.body.get("halted")] == ["node3"]  # the others route on
    assert post_order(ctx.nodes[0], order("still-fine")).status == 200
    code, text = node_exec("node3", "tail -n 1 /opt/router/state/journal.jsonl")
    assert code == 0 and json.loads(text)["action"] == "breaker"
    code, _ = node_exec("node3", "test -f /opt/router/state/halted")
    assert code == 0  # durable: a restart stays halted
