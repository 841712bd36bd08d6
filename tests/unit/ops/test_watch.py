"""watch.watch and watch.Watcher with stand-ins for the seams (SSH per node, kept health links, routers,
journal): a breaker halts the fleet once and ends a non-interactive watch; keys h and q; a lost SSH
connection is opened again."""

from __future__ import annotations

import json
from types import SimpleNamespace

import fakefleet as ff
import pytest

from deployctl.config.inventory import Node
from deployctl.config.playbook import Breakers
from deployctl.errors import HaltedError
from deployctl.ops import watch as watch_mod
from deployctl.remote.routers import Answer, KeptHealth
from deployctl.remote.ssh import NodeResult

A = "a" * 64


class World:
    def __init__(self, names, breakers=None):
        self.names, self.child, self.halts, self.opens, self.fail_step = names, 0, 0, [], set()
        self.records: list[dict] = []
        self.ctx = SimpleNamespace(
            nodes=[Node(n, "127.0.0.1", 2200 + i, 8100 + i, "root") for i, n in enumerate(names)], root="/opt/router",
            playbook=SimpleNamespace(breakers=breakers, timeouts=SimpleNamespace(connect=1.0),
                                     service=SimpleNamespace(health_path="/health")),
            ssh=self.ssh, journal=SimpleNamespace(append=self.records.append),
            routers=SimpleNamespace(control=self.control))

    def ssh(self, nodes):
        (node,) = nodes
        self.opens.append(node.name)
        world = self

        class Fleet:
            def hold(self, calls):
                return {n: NodeResult(n, 0, f"{A} 1700000000\n".encode()) for n in calls}

            def step(self, data, timeout):
                return {n: NodeResult(n, error="timed out after 1s") if n in world.fail_step
                        else NodeResult(n, 0, f"{A} 1700000000\n".encode()) for n in data}

            def close(self):
                pass

        return Fleet()

    def read(self, name):
        return Answer(name, 200, {"pid": 1, "gate": "open", "digest": A, "halted": self.halts > 0, "flags": {},
                                  "orders": 10, "child_orders": self.child, "errors": 0, "rejected": 0})

    def close(self):
        pass

    def control(self, nodes, action, timeout=2.0):
        assert action == "halt"
        self.halts += 1
        return {n.name: Answer(n.name, 200, {"halted": True}) for n in nodes}


def test_a_breaker_halts_the_fleet_once_journals_it_and_ends_a_non_interactive_watch():
    world, seen = World(["node1", "node2"], Breakers(child_orders_per_s=100)), []

    def flood(seconds):
        world.child += 5000  # between two sweeps: far above 100/s whatever the interval

    with pytest.raises(HaltedError) as exc:
        watch_mod.watch(world.ctx, seen.append, interval=0.05, key=flood, stop_on_trip=True, links=world)
    assert str(exc.value).startswith("watch: breaker tripped, fleet halted: child_orders_per_s: node")
    assert world.halts == 1 and len(seen) == 2
    assert seen[0].trips == [] and seen[0].halted is None
    assert seen[1].halted == "breaker" and seen[1].halt == {"node1": "halted", "node2": "halted"}
    (breaker,) = [r for r in world.records if r["action"] == "breaker"]
    assert breaker["breaker"] == "child_orders_per_s" and breaker["nodes"] == ["node1", "node2"]
    assert breaker["limit"] == 100 and breaker["figure"] > 100
    assert [r["action"] for r in world.records] == ["halt", "breaker"]  # halted first, then journaled


def test_an_interactive_watch_keeps_going_after_a_trip_and_trips_each_breaker_once():
    world, seen = World(["node1"], Breakers(child_orders_per_s=100)), []

    def flood(seconds):
        world.child += 5000

    assert watch_mod.watch(world.ctx, seen.append, interval=0.01, sweeps=4, key=flood, links=world) == 4
    assert world.halts == 1 and [s.halted for s in seen] == [None, "breaker", None, None]


def test_keys_h_halts_the_whole_fleet_and_q_quits():
    world, seen, keys = World(["node1", "node2", "node3"]), [], iter([None, "h", "q"])
    done = watch_mod.watch(world.ctx, seen.append, interval=0.01, key=lambda s: next(keys), links=world)
    assert done == 3 and world.halts == 1
    assert [s.halted for s in seen] == [None, None, "key", None]
    assert [r["action"] for r in world.records] == ["halt"]  # a halt by key is not a breaker


def test_a_lost_ssh_connection_is_opened_again(monkeypatch):
    monkeypatch.setattr(watch_mod.Watcher, "RETRY_S", 0.0)
    world = World(["node1", "node2"])
    watcher = watch_mod.Watcher(world.ctx, world)
    try:
        first = watcher.sweep()  # opens both and waits for them
        assert sorted(world.opens) == ["node1", "node2"] and all(r.release == A for r in first.readings)
        world.fail_step.add("node2")
        lost = watcher.sweep()
        assert {r.node: r.error for r in lost.readings}["node2"] == "timed out after 1s"
        world.fail_step.clear()
        for _ in range(50):  # reopened in the background
            again = watcher.sweep()
            if {r.node: r.release for r in again.readings}["node2"] == A:
                break
        else:
            pytest.fail("node2 was never connected again")
        assert world.opens.count("node2") == 2 and world.opens.count("node1") == 1
    finally:
        watcher.close()


def test_a_router_answering_deep_json_is_a_problem_row_and_the_watch_goes_on(monkeypatch):
    # The real kept-alive health client, no network: node2's router answers "[" * 100000, node1's as a router.
    world, seen = World(["node1", "node2"]), []
    good = json.dumps(world.read("node1").body).encode()
    ff.fake_http(monkeypatch, lambda port, request: ff.http_answer(200, b"[" * 100_000 if port == 8101 else good))
    links = KeptHealth(world.ctx.nodes)
    assert watch_mod.watch(world.ctx, seen.append, interval=0.01, sweeps=3, links=links) == 3
    for sweep in seen:
        rows = {r["node"]: r for r in sweep.rows()}
        assert (rows["node1"]["reachable"], rows["node1"]["running"], rows["node1"]["problem"]) == (True, A, None)
        assert (rows["node2"]["reachable"], rows["node2"]["problem"]) == (False, "HTTP 200: answer is not JSON")
