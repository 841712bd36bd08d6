"""enroll's run on the controller: every node tried, the deploy lock held while it changes nodes, journaled
with phases of its own (so that an enroll never hides or fakes an interrupted rollout)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from deployctl import api
from deployctl.errors import DeployctlError, HostKeyError, LockHeldError
from deployctl.ops import enroll

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture
def ctx(tmp_path):
    inv = tmp_path / "inv.yaml"
    inv.write_text("fleet: f\nssh: {user: deploy}\nnodes:\n"
                   "  - {name: n1, host: 127.0.0.1, ssh_port: 1, router_port: 2, become: sudo}\n"
                   "  - {name: n2, host: 127.0.0.1, ssh_port: 3, router_port: 4, become: sudo}\n")
    return api.open_context(inv, ROOT / "playbooks" / "router.yaml", tmp_path / "state")


def test_every_node_is_tried_under_the_lock_and_journaled(ctx, monkeypatch):
    seen = []

    def one(ctx_, node, dry_run, password, given, ask, known):
        seen.append((node.name, ctx_.lock.info() is not None, password))
        return enroll.Enrolled(node.name, error="boom" if node.name == "n1" else None, steps=["s"])

    monkeypatch.setattr(enroll, "_one", one)
    with pytest.raises(DeployctlError) as exc:
        enroll.enroll(ctx, sudo_password="pw")
    assert type(exc.value) is DeployctlError and str(exc.value) == "enroll: n1: boom"
    assert sorted(seen) == [("n1", True, "pw"), ("n2", True, "pw")]
    assert ctx.lock.info() is None  # released
    records = list(ctx.journal.read())
    assert [(r["action"], r["phase"]) for r in records] == [("enroll", "begin"), ("enroll", "end")]
    assert records[1]["nodes"] == {"n1": {"steps": ["s"], "pinned": [], "error": "boom"},
                                   "n2": {"steps": ["s"], "pinned": [], "error": None}}
    assert "pw" not in ctx.journal.path.read_text()
    assert api.interrupted(ctx) is None


def test_a_dry_run_takes_no_lock_and_an_enroll_waits_for_no_one(ctx, monkeypatch):
    monkeypatch.setattr(enroll, "_one", lambda c, node, *a: enroll.Enrolled(node.name, steps=[]))
    ctx.lock.acquire("rollout")
    try:
        assert sorted(enroll.enroll(ctx, dry_run=True)) == ["n1", "n2"]
        with pytest.raises(LockHeldError):
            enroll.enroll(ctx)
    finally:
        ctx.lock.release()


def test_only_host_key_refusals_exit_10(ctx, monkeypatch):
    monkeypatch.setattr(enroll, "_one", lambda c, node, *a: enroll.Enrolled(
        node.name, error=f"{node.name}: unknown host key", host_key=True))
    with pytest.raises(HostKeyError, match="^enroll: n1: unknown host key; n2: unknown host key$"):
        enroll.enroll(ctx)


@pytest.mark.parametrize("stderr, said", [
    ('{"error": "no space left"}\n', "no space left"),
    ('{"a":' * 100_000 + "\n", '{"a":' * 100_000),  # deeper than the JSON parser goes: the line as it is
    ("[sudo] password for deploy:\nsh: 1: x: not found\n", "sh: 1: x: not found"),
])
def test_a_failed_setup_command_is_named_with_its_last_error_line(stderr, said):
    class Conn:
        def run(self, text, **options):
            return SimpleNamespace(exited=1, stderr=stderr, stdout="")

    with pytest.raises(DeployctlError) as exc:
        enroll._run(Conn(), ["true"], "journal on the node")
    assert type(exc.value) is DeployctlError and str(exc.value) == f"journal on the node: {said}"
