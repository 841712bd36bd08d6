"""ops/results.py: what a run's nodes did, as the state machine reads it."""

from __future__ import annotations

from deployctl.errors import DeployctlError
from deployctl.model import phases
from deployctl.ops.results import outcomes
from deployctl.remote.replies import MAX_REASON
from deployctl.remote.ssh import NodeResult


def test_a_parser_quoting_a_node_at_length_gives_a_clipped_reason():
    """Whatever a parser quotes of a node's answer reaches the run's error and journal clipped."""
    def parse(node: str, stdout: bytes) -> None:
        raise DeployctlError(f"stage: unreadable answer {stdout.decode()}")

    got = outcomes({"node3": NodeResult("node3", 0, b"x" * (1 << 20))}, parse)
    said = "stage: unreadable answer " + "x" * (MAX_REASON - 25)
    assert got == {"node3": phases.Outcome(False, f"{said}... [clipped, {25 + (1 << 20)} characters in all]")}
