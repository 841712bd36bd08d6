"""remote/ssh.py's fleet-wide failure line: nodes grouped by reason, numbered names as ranges."""

from __future__ import annotations

import pytest

from deployctl.errors import HostKeyError, UnreachableError
from deployctl.remote.ssh import NodeResult, grouped, name_ranges, raise_for_unreachable

REFUSED = "unreachable at 127.0.0.1:{}: connection refused"


@pytest.mark.parametrize("names, line", [
    ([f"node{i}" for i in range(8, 0, -1)], "node1-node8"),
    (["node10", "node2", "node1", "node3", "web", "node9", "node5"], "node1-node3, node5, node9-node10, web"),
    (["a", "b"], "a, b"),
    (["db01", "db02", "db2"], "db01-db02, db2"),
])
def test_name_ranges(names, line):
    assert name_ranges(names) == line


def test_a_fleet_wide_failure_is_one_grouped_line_without_addresses():
    reasons = {f"node{i}": REFUSED.format(2200 + i) for i in range(1, 9)}
    assert grouped(reasons, 8) == "8 of 8 unreachable (connection refused): node1-node8"


def test_several_reasons_each_get_their_group():
    reasons = {"node1": REFUSED.format(1), "node2": REFUSED.format(2), "node5": "no SSH answer at [::1]:22 within 5s"}
    assert grouped(reasons, 8) == ("3 of 8 unreachable: node1-node2 (connection refused); "
                                   "node5 (no SSH answer within 5s)")


def test_raise_for_unreachable_groups_and_keeps_each_reason():
    results = {f"node{i}": NodeResult(f"node{i}", error=REFUSED.format(i)) for i in (1, 2, 3)}
    results["node4"] = NodeResult("node4", exit_code=0)
    with pytest.raises(UnreachableError) as err:
        raise_for_unreachable(results, "plan")
    assert str(err.value) == "plan: 3 of 4 unreachable (connection refused): node1-node3"
    assert err.value.nodes == {f"node{i}": REFUSED.format(i) for i in (1, 2, 3)}
    with pytest.raises(UnreachableError) as err:
        raise_for_unreachable({"node2": results["node2"]}, "rollout refused", total=8)
    assert str(err.value) == "rollout refused: 1 of 8 unreachable (connection refused): node2"


def test_a_refused_host_key_names_the_node_and_its_key():
    results = {"node1": NodeResult("node1", error="host key mismatch at h:22: got X, pinned Y", host_key_refused=True)}
    with pytest.raises(HostKeyError) as err:
        raise_for_unreachable(results, "plan")
    assert str(err.value) == "plan: node1: host key mismatch at h:22: got X, pinned Y"
