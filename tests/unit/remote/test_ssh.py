"""remote/ssh.py's raise_for_unreachable: a fleet-wide failure is one grouped line, each node's reason kept."""

from __future__ import annotations

import pytest

from deployctl.errors import HostKeyError, UnreachableError
from deployctl.remote.ssh import NodeResult, raise_for_unreachable

REFUSED = "unreachable at 127.0.0.1:{}: connection refused"


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
