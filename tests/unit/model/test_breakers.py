"""model/breakers.py (pure): rates between sweeps and which playbook breakers trip; the watch line's parser;
the playbook's strict `breakers` schema."""

from pathlib import Path

import pytest

from deployctl.config.playbook import Breakers, load_playbook
from deployctl.errors import ConfigError, DeployctlError
from deployctl.model.breakers import Memory, Rates, Reading, check, rates
from deployctl.remote import commands

A, B = "a" * 64, "b" * 64


def health(pid=1, gate="open", digest=A, orders=0, child=0, errors=0, rejected=0):
    return {"pid": pid, "gate": gate, "digest": digest, "orders": orders, "child_orders": child,
            "errors": errors, "rejected": rejected, "halted": False}


def reading(node="node1", t=0.0, **kw):
    return Reading(node, t, health(**kw), A)


def test_rates_are_counter_differences_over_the_controller_clock():
    r = rates(reading(t=10.0, orders=100, child=300, errors=1), reading(t=10.5, orders=150, child=500, errors=3))
    assert r == Rates(orders_per_s=100.0, child_orders_per_s=400.0, child_orders_per_parent=4.0, errors_per_s=4.0,
                      rejects_per_s=0.0)


@pytest.mark.parametrize("prev, cur", [
    (None, reading(t=1.0)),
    (reading(t=1.0, pid=1, orders=50), reading(t=2.0, pid=2, orders=3)),   # restarted: counters from 0
    (reading(t=1.0, orders=50), reading(t=2.0, orders=10)),                 # went down: not a rate
    (reading(t=1.0), Reading("node1", 2.0, None)),                          # no answer now
    (reading(t=2.0), reading(t=2.0)),                                      # no time passed
])
def test_no_rate_without_two_readings_of_the_same_process(prev, cur):
    assert rates(prev, cur) == Rates()


def test_children_without_a_finished_parent_count_against_one_parent():
    # a parent stopped by a halt mid-route is not counted in `orders`: its children still are
    assert rates(reading(t=0, orders=5, child=5), reading(t=1, orders=5, child=80)).child_orders_per_parent == 75.0


CFG = Breakers(child_orders_per_parent=10, child_orders_per_s=1000, gate_open_while_mixed=True, errors_per_s=5,
               unreachable_gate_open_s=2)


def test_nothing_trips_on_a_healthy_fleet():
    rs = [reading("node1"), reading("node2")]
    assert check(CFG, rs, {"node1": Rates(10, 30, 3, 0), "node2": Rates(10, 30, 3, 0)}, Memory(), 0.0) == []


def test_rate_breakers_name_the_worst_node_its_figure_and_the_limit():
    trips = check(CFG, [reading("node1"), reading("node2")],
                  {"node1": Rates(10, 5000.0, 50.0, 0), "node2": Rates(10, 1500.0, 3, 9.0)}, Memory(), 0.0)
    assert [t.to_dict() for t in trips] == [
        {"breaker": "child_orders_per_parent", "nodes": ["node1"], "figure": 50.0, "limit": 10,
         "line": "child_orders_per_parent: node1 at 50.0 child orders per parent order, above 10"},
        {"breaker": "child_orders_per_s", "nodes": ["node1", "node2"], "figure": 5000.0, "limit": 1000,
         "line": "child_orders_per_s: node1 at 5000.0 child orders/s, above 1000 (2 nodes over)"},
        {"breaker": "errors_per_s", "nodes": ["node2"], "figure": 9.0, "limit": 5,
         "line": "errors_per_s: node2 at 9.0 errors/s, above 5"},
    ]


def test_a_gate_open_while_digests_differ_trips_and_a_closed_one_does_not():
    mixed = [Reading("node1", 0, health(gate="open"), A), Reading("node8", 0, health(gate="closed", digest=B), B)]
    (trip,) = check(CFG, mixed, {}, Memory(), 0.0)
    assert trip.line == (f"gate_open_while_mixed: gate open on node1 while the fleet holds 2 digests "
                         f"({A[:12]}, {B[:12]})")
    closed = [Reading("node1", 0, health(gate="closed"), A), mixed[1]]
    assert check(CFG, closed, {}, Memory(), 0.0) == []
    # files switched on disk under a router still running the old code: mixed too
    assert check(CFG, [Reading("node1", 0, health(gate="open"), B)], {}, Memory(), 0.0)[0].breaker == \
        "gate_open_while_mixed"


def test_a_node_gone_longer_than_the_limit_while_its_gate_was_open_trips():
    memory = Memory()
    assert check(CFG, [reading("node3", gate="open")], {}, memory, 0.0) == []
    gone = [Reading("node3", 1.0, None, error="router unreachable")]
    assert check(CFG, gone, {}, memory, 1.0) == []          # down since 1.0
    assert check(CFG, gone, {}, memory, 2.5) == []          # 1.5 s
    (trip,) = check(CFG, gone, {}, memory, 3.5)             # 2.5 s > 2
    assert (trip.breaker, trip.nodes, trip.figure) == ("unreachable_gate_open_s", ("node3",), 2.5)
    memory2 = Memory()
    check(CFG, [reading("node3", gate="closed")], {}, memory2, 0.0)
    check(CFG, gone, {}, memory2, 1.0)
    assert check(CFG, gone, {}, memory2, 9.0) == []         # its gate was closed: not a breaker


def test_no_breakers_configured_never_trips():
    assert check(None, [reading()], {"node1": Rates(1, 1e9, 1e9, 1e9)}, Memory(), 0.0) == []


@pytest.mark.parametrize("line, parsed", [
    (f"{A} 1795990427\n".encode(), (A, 1795990427.0)),
    (b"- -\n", (None, None)),
])
def test_parse_watch(line, parsed):
    assert commands.parse_watch(line) == parsed


@pytest.mark.parametrize("line", [b"", b"x 1\n", f"{A}\n".encode(), f"{A} 12x\n".encode(), f"{A} 1 2\n".encode()])
def test_parse_watch_refuses_anything_else(line):
    with pytest.raises(DeployctlError, match="watch: unexpected answer from the node"):
        commands.parse_watch(line)


def test_the_watch_command_is_one_quoted_sh_loop():
    assert commands.watch_loop("/opt/router") == ["sh", "-c", commands.WATCH_SH, "sh", "/opt/router"]


BASE = ("name: r\nsource: .\ninstall_root: /opt/r\nkeep_releases: 2\n"
        "service: {health_path: /health, supervisor: {program: r}}\n")


@pytest.mark.parametrize("text, problem", [
    ("breakers: {child_orders_per_s: fast}", "router.yaml: breakers/child_orders_per_s: should be a number"),
    ("breakers: {child_orders_per_s: 0}", "router.yaml: breakers/child_orders_per_s: should be greater than 0"),
    ("breakers: {gate_open_while_mixed: 1}", "router.yaml: breakers/gate_open_while_mixed: should be true or false"),
    ("breakers: {child_per_s: 5}", "router.yaml: breakers: unknown key 'child_per_s'"),
    ("breakers: [1]", "router.yaml: breakers: should be a mapping"),
])
def test_the_breakers_schema_is_strict(tmp_path: Path, text, problem):
    path = tmp_path / "router.yaml"
    path.write_text(BASE + text + "\n")
    with pytest.raises(ConfigError) as exc:
        load_playbook(path)
    assert str(exc.value) == problem


def test_breakers_load_with_defaults_for_what_is_left_out(tmp_path: Path):
    path = tmp_path / "router.yaml"
    path.write_text(BASE + "breakers: {errors_per_s: 2.5}\n")
    assert load_playbook(path).breakers == Breakers(errors_per_s=2.5)
