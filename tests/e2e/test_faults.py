"""Fault injection on the eight real nodes: kill, pause, cut, fill and corrupt nodes, kill the controller.

Every test runs under the observer (observer.py): no sweep of the routers may
ever see two open gates on different releases, and the controller journal may
only grow. Faults are injected through Docker (stop, kill, pause, network
disconnect) or `docker exec` inside a node; deployctl itself is reached only on
127.0.0.1. The numbers in the test docstrings are the rows of FAULTS.md.
After each test the nodes are revived, an interrupted run is recovered, and
conftest.py puts the fleet back on the base release with every gate open.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import time

import pytest
from helpers import (
    COMPOSE,
    ROOT,
    at_phase,
    cli,
    cli_rollout,
    fleet_view,
    in_background,
    journal_size,
    node,
    on_base,
    order,
    pause,
    post_order,
    race,
    records_since,
    run_phases,
    wait,
    wait_record,
)

from deployctl import api
from deployctl.config.playbook import Timeouts
from deployctl.errors import DeployctlError, ExitCode, InconsistentError, RolledBackError, UnreachableError, UsageError
from deployctl.remote import commands, routers
from deployctl.remote.ssh import Call
from deployctl.state.journal import encode, entry
from deployctl.testfleet import api as testfleet_api
from deployctl.testfleet import docker as docker_fleet
from deployctl.testfleet import fleet as testfleet

BLOB = os.urandom(8 << 20)  # incompressible: makes the upload long enough to cut it midway
PHASES = ["preflight", "close-gate", "stage", "switch", "health", "open-gate"]
# Each test runs under the observer; afterwards the nodes are revived and an interrupted run recovered.
pytestmark = pytest.mark.usefixtures("under_observer")


# ---- helpers --------------------------------------------------------------------------------------

def quick(ctx, health: float = 8, **playbook) -> api.Context:
    """A copy of ctx with short timeouts, so a dead or silent node fails fast."""
    pb = dataclasses.replace(ctx.playbook, timeouts=Timeouts(connect=3, command=8, health=health), **playbook)
    return dataclasses.replace(ctx, playbook=pb, inventory=dataclasses.replace(ctx.inventory, connect_timeout=3))


def release_files(ctx, name: str, digest: str) -> dict[str, str] | None:
    """The files (path -> sha256) of releases/<digest> on a node, or None when the folder is absent."""
    with ctx.ssh([node(ctx, name)]) as f:
        r = f.run_all(lambda n: Call(commands.render(commands.hashes(ctx.root, digest)), timeout=30))[name]
    if not r.ok:
        assert "no release at" in commands.agent_error(r.stderr), r.reason()
        return None
    return commands.parse_hashes(r.stdout).files


def releases_kept(ctx) -> dict[str, tuple[str, ...]]:
    """Each node's release folders (sorted digests), from its probe."""
    with ctx.ssh() as f:
        res = f.run_all(lambda n: Call(commands.render(commands.probe(ctx.root)), timeout=15))
    return {n: tuple(sorted(commands.parse_probe(r.stdout).releases)) for n, r in res.items()}


def stage_leftovers(node_exec, name: str) -> list[str]:
    code, out = node_exec(name, "cd /opt/router/releases && ls -A")
    assert code == 0, out
    return [n for n in out.split() if n.startswith(".stage-")]


# ---- the observer itself --------------------------------------------------------------------------

def test_the_observer_catches_two_open_gates_on_different_releases(ctx, base_release, make_release, observer):
    """A checker that never fires proves nothing: make the forbidden state by hand and see it recorded."""
    v2 = make_release("0.9.0")
    node1 = [node(ctx, "node1")]
    with ctx.ssh(node1) as f:  # what a rogue operator would do: one node switched behind deployctl's back
        staged = f.run_all(lambda n: Call(commands.render(
            commands.stage(ctx.root, v2.digest, len(v2.payload()), 3)), v2.payload()))
        switched = f.run_all(lambda n: Call(commands.render(
            commands.activate(ctx.root, v2.digest, ctx.playbook.service))))
    assert staged["node1"].ok and switched["node1"].ok, (staged, switched)
    assert routers.wait_running(node1, v2.digest, 10)["node1"].body.get("digest") == v2.digest
    assert routers.open_gate(node1, v2.digest, ctx.token())["node1"].ok
    try:
        assert wait(lambda: observer.mixed_open, 5), "the observer missed two open gates on two releases"
        seen = observer.mixed_open[0][1]
        assert seen["node1"] == v2.digest and seen["node2"] == base_release.digest
    finally:
        routers.close_gate(node1, ctx.token())
        sweeps = observer.sweeps
        assert wait(lambda: observer.sweeps >= sweeps + 2, 5)  # a whole sweep after the close
        observer.mixed_open.clear()  # made on purpose: not a finding


def test_the_observer_reports_a_node_it_cannot_read_and_waits_for_a_slow_one(ctx, docker_spec, observer):
    """A paused node is unknown in the sweeps made while it is paused, and the summary says so; the
    other nodes, answering, are read in every sweep (a slow node is waited for, not skipped)."""
    dc, spec = docker_spec
    node5 = docker_fleet.container(dc, spec, "node5")
    pause(node5)
    try:
        assert wait(lambda: observer.unknown.get("node5", 0) >= 2, 15), observer.unknown
    finally:
        node5.unpause()
    assert set(observer.unknown) == {"node5"}, observer.unknown
    assert f"node5 unknown in {observer.unknown['node5']} of " in observer.summary()


def test_an_observer_that_runs_out_of_time_says_so(ctx, monkeypatch):
    """Reaching its time bound before the test ends is a problem reported, never a silent stop."""
    import observer as observer_module

    monkeypatch.setattr(observer_module, "MAX_RUN_S", 0.3)
    obs = observer_module.Observer(ctx).start()
    assert wait(lambda: not obs._thread.is_alive(), 10)
    obs.stop()
    assert obs.ran_out and obs.sweeps >= 1
    assert "observer stopped after 0 s, before the test ended: the rest was not watched" in obs.problems()


# ---- 1: node down before the upload ---------------------------------------------------------------

def test_a_node_down_before_the_rollout_is_refused_in_preflight_and_nothing_changes(
        ctx, base_release, make_release, docker_spec):
    """FAULTS 1: preflight finds it; nothing changes anywhere; non-zero exit naming it."""
    dc, spec = docker_spec
    v2 = make_release("1.1.0")
    docker_fleet.container(dc, spec, "node2").stop(timeout=1)
    before = fleet_view(ctx)
    assert before["node2"] == (None, None, None, None)
    offset = journal_size(ctx)

    with pytest.raises(UnreachableError) as err:
        api.rollout(quick(ctx), v2.path)
    assert err.value.exit_code == ExitCode.UNREACHABLE
    # One grouped line (the reason without the address), each node's own reason in err.value.nodes.
    assert str(err.value).startswith("rollout refused in preflight, nothing changed: 1 of 8 unreachable (")
    assert str(err.value).endswith("): node2"), str(err.value)
    assert err.value.nodes["node2"].startswith(f"unreachable at 127.0.0.1:{node(ctx, 'node2').ssh_port}: ")
    assert all(f"node{i}" not in str(err.value) for i in (1, 3, 4, 5, 6, 7, 8))

    assert fleet_view(ctx) == before
    assert {n: v for n, v in before.items() if n != "node2"} == {
        f"node{i}": on_base(base_release, "open") for i in (1, 3, 4, 5, 6, 7, 8)}
    # The run is journaled as refused in preflight: no gate closed, no upload, and nothing left open.
    recs = records_since(ctx, offset)
    assert run_phases(recs) == ["start", "preflight", "done"]
    assert {r["digest"] for r in recs} == {v2.digest} and len({r["run"] for r in recs}) == 1
    done = recs[-1]
    assert done["outcome"] == "refused" and len(done["failures"]) == 1
    assert done["failures"][0].startswith("node2 failed in preflight: unreachable at "
                                          f"127.0.0.1:{node(ctx, 'node2').ssh_port}")
    assert api.interrupted(ctx) is None and not ctx.lock.path.exists()


# ---- 2, 4: the SSH connection is cut during the upload --------------------------------------------

def test_an_ssh_session_cut_mid_transfer_rolls_back_and_leaves_no_partial_release(
        ctx, base_release, make_release, node_exec):
    """FAULTS 2 and 4: the partial upload is discarded; no switch; a clear error naming node and phase."""
    # 24 MiB a node: the upload lasts far longer than the docker exec that cuts the session takes to land.
    big = make_release("2.0.0", {"blob.bin": BLOB * 3})
    cuts: list = []

    def cut():  # `nott[y]` so pkill does not match the `sh -c` that runs it
        cuts.append(node_exec("node3", "pkill -f 'sshd: root@nott[y]'"))

    hook = at_phase("stage", lambda: in_background(cut))
    offset = journal_size(ctx)
    with pytest.raises(RolledBackError) as err:
        api.rollout(dataclasses.replace(quick(ctx), on_event=hook), big.path)
    hook.fired[0].join(10)
    assert cuts and cuts[0][0] == 0, cuts  # pkill found the session
    assert err.value.exit_code == ExitCode.ROLLED_BACK
    assert str(err.value).startswith("rollout failed: node3 failed in stage: ")
    assert str(err.value).endswith("every node is back on its previous release, gate closed")

    recs = records_since(ctx, offset)
    assert run_phases(recs) == ["start", "preflight", "close-gate", "stage", "done"]  # never switched
    done = recs[-1]
    assert done["outcome"] == "rolled-back" and len(done["failures"]) == 1
    assert done["failures"][0].startswith("node3 failed in stage: ")
    assert fleet_view(ctx) == {n.name: on_base(base_release, "closed") for n in ctx.nodes}
    assert post_order(node(ctx, "node1"), order("cut-1")).status == 503

    # The node agent removes its .stage-* folder when its input ends; releases/<digest> is all or nothing.
    assert wait(lambda: stage_leftovers(node_exec, "node3") == [], 10), stage_leftovers(node_exec, "node3")
    assert release_files(ctx, "node3", big.digest) in (None, big.files)
    api.rollout(ctx, base_release.path)  # the next rollout prunes: still nothing partial anywhere
    for n in ctx.nodes:
        assert stage_leftovers(node_exec, n.name) == [], n.name
    assert release_files(ctx, "node3", big.digest) in (None, big.files)


# ---- 3: a node dies after the switch --------------------------------------------------------------

def test_a_node_killed_after_the_switch_leaves_gates_closed_and_recover_brings_one_release(
        ctx, base_release, make_release, docker_spec):
    """FAULTS 3: unknown state counts as closed; the rest go back; recover makes the fleet one release."""
    dc, spec = docker_spec
    v2 = make_release("3.0.0")
    node6 = docker_fleet.container(dc, spec, "node6")
    hook = at_phase("health", node6.kill)
    offset = journal_size(ctx)

    with pytest.raises(InconsistentError) as err:
        api.rollout(dataclasses.replace(quick(ctx, health=5), on_event=hook), v2.path)
    assert hook.fired and err.value.exit_code == ExitCode.INCONSISTENT
    msg = str(err.value)
    assert msg.startswith("rollout failed: node6 failed in health: ") and "node6 failed in revert: " in msg
    assert msg.endswith("the fleet may be mixed, gate closed: run `deployctl recover`")
    assert all(f"node{i}" not in msg for i in (1, 2, 3, 4, 5, 7, 8))

    view = fleet_view(ctx)
    assert view == {**{n.name: on_base(base_release, "closed") for n in ctx.nodes}, "node6": (None,) * 4}
    recs = records_since(ctx, offset)
    assert run_phases(recs) == ["start", "preflight", "close-gate", "stage", "switch", "health", "revert", "done"]
    assert recs[-1]["outcome"] == "inconsistent"

    node6.start()
    assert wait(lambda: routers.request(node(ctx, "node6"), "GET", "/health", timeout=1).ok, 30)
    # It comes back on the release it was switched to, and with its gate closed (closed at every start).
    assert fleet_view(ctx)["node6"] == (v2.digest, v2.digest, "closed", False)

    result = api.recover(ctx)
    assert result.state.target == base_release.digest
    assert fleet_view(ctx) == {n.name: on_base(base_release, "closed") for n in ctx.nodes}
    report = api.verify(ctx)
    assert report.ok and report.expected == base_release.digest
    last = records_since(ctx, offset)[-1]
    assert (last["action"], last["phase"], last["outcome"]) == ("recover", "done", "ok")

    # FAULTS 3, "rerun is idempotent": the same rollout again brings the whole fleet to v2 (node6 too, which
    # already had it), and once more ends in the same state: same releases kept, same files, gates open.
    api.rollout(ctx, v2.path)
    assert fleet_view(ctx) == {n.name: (v2.digest, v2.digest, "open", False) for n in ctx.nodes}
    kept = releases_kept(ctx)
    api.rollout(ctx, v2.path)
    assert fleet_view(ctx) == {n.name: (v2.digest, v2.digest, "open", False) for n in ctx.nodes}
    assert releases_kept(ctx) == kept  # each node keeps what it kept (node6's history differs from the rest)
    assert all(release_files(ctx, name, v2.digest) == v2.files for name in ("node1", "node6"))


# ---- 32: a node that stops answering --------------------------------------------------------------

def test_a_paused_node_fails_the_rollout_within_a_bounded_time(ctx, base_release, make_release, docker_spec):
    """FAULTS 32: slow means failed, never a hang; the silent node is named."""
    dc, spec = docker_spec
    v2 = make_release("1.1.0")
    node5 = docker_fleet.container(dc, spec, "node5")
    offset = journal_size(ctx)
    pause(node5)
    try:
        start = time.monotonic()
        with pytest.raises(UnreachableError) as err:
            api.rollout(quick(ctx), v2.path)
        took = time.monotonic() - start
    finally:
        node5.unpause()
    # quick() sets a 3 s connect timeout: the refusal comes from that timeout, not sooner; the slack covers
    # the other seven handshakes and the failed run's node journal on a loaded 2-core machine (alone: ~4 s).
    assert 2.5 <= took < 3 + 10, f"rollout took {took:.1f}s against a paused node with a 3 s connect timeout"
    # One grouped line; node5's own reason, with its address, in err.value.nodes.
    n5, timeout = node(ctx, "node5"), quick(ctx).inventory.connect_timeout
    assert str(err.value) == ("rollout refused in preflight, nothing changed: 1 of 8 unreachable "
                              f"(no SSH answer within {timeout:g}s): node5"), str(err.value)
    assert f"no SSH answer at {n5.host}:{n5.ssh_port} within {timeout:g}s" in err.value.nodes["node5"]
    assert sorted(err.value.nodes) == ["node5"]
    recs = records_since(ctx, offset)
    assert run_phases(recs) == ["start", "preflight", "done"] and recs[-1]["outcome"] == "refused"
    assert fleet_view(ctx) == {n.name: on_base(base_release, "open") for n in ctx.nodes}


def test_the_cli_names_a_silent_node_in_one_line_without_a_traceback(ctx, base_release, docker_spec):
    """FAULTS 19 and 32: an anomaly is a non-zero exit with one clear line, never a traceback."""
    dc, spec = docker_spec
    node5 = docker_fleet.container(dc, spec, "node5")
    pause(node5)
    try:
        proc = cli(ctx, "-q", "rollout", str(base_release.path), timeout=60)
    finally:
        node5.unpause()
    assert proc.returncode == ExitCode.UNREACHABLE, proc.stderr
    assert proc.stderr == ("deployctl: error: rollout refused in preflight, nothing changed: 1 of 8 unreachable "
                           f"(no SSH answer within {ctx.inventory.connect_timeout:g}s): node5\n"), proc.stderr


# ---- 5: disk full on a node -----------------------------------------------------------------------

@pytest.fixture(scope="class")
def small_node8(ctx, base_release, docker_spec):
    """node8 recreated with a 24 MiB tmpfs as its releases folder and given the base release (the other
    nodes have it already); the ordinary node8 is put back afterwards."""
    dc, spec = docker_spec
    testfleet.replace_node(ctx, COMPOSE, "node8", {"/opt/router/releases": "size=24m"})
    try:
        api.rollout(quick(ctx, min_free_mb=0), base_release.path)  # the small folder holds the base
        yield
    finally:
        try:
            docker_fleet.container(dc, spec, "node8").exec_run(["rm", "-f", "/opt/router/releases/fill"])
        finally:
            testfleet_api.fleet_up(ctx, COMPOSE)


def twelve_mib(make_release):
    return make_release("9.0.0", {"a.bin": BLOB[: 6 << 20], "b.bin": BLOB[2 << 20:]})


def fill_at_stage(node_exec):
    """A hook that fills node8's releases folder (20 of its 24 MiB) just before the upload starts."""
    return at_phase("stage", lambda: node_exec("node8", "head -c 20M /dev/zero > /opt/router/releases/fill || true"))


@pytest.mark.usefixtures("small_node8")
class TestDiskFull:
    def test_disk_full_while_staging_rolls_back_naming_the_node(self, ctx, base_release, make_release, node_exec):
        """FAULTS 5: on ENOSPC the rollout aborts and the fleet is not switched."""
        assert fleet_view(ctx) == {n.name: on_base(base_release, "open") for n in ctx.nodes}
        big, hook = twelve_mib(make_release), fill_at_stage(node_exec)
        offset = journal_size(ctx)
        try:
            with pytest.raises(RolledBackError) as err:
                api.rollout(dataclasses.replace(quick(ctx, min_free_mb=0), on_event=hook), big.path)
        finally:
            node_exec("node8", "rm -f /opt/router/releases/fill")
        assert hook.fired
        assert str(err.value).startswith("rollout failed: node8 failed in stage: ")
        assert str(err.value).endswith("every node is back on its previous release, gate closed")
        recs = records_since(ctx, offset)
        assert run_phases(recs) == ["start", "preflight", "close-gate", "stage", "done"]  # never switched
        assert [f.split(":")[0] for f in recs[-1]["failures"]] == ["node8 failed in stage"]
        assert fleet_view(ctx) == {n.name: on_base(base_release, "closed") for n in ctx.nodes}
        assert stage_leftovers(node_exec, "node8") == []
        assert release_files(ctx, "node8", big.digest) is None

    def test_disk_full_is_named_as_such(self, ctx, base_release, make_release, node_exec):
        """FAULTS 5 and 19: the one line says what went wrong on node8: its disk is full."""
        hook = fill_at_stage(node_exec)
        try:
            with pytest.raises(RolledBackError) as err:
                api.rollout(dataclasses.replace(quick(ctx, min_free_mb=0), on_event=hook),
                               twelve_mib(make_release).path)
        finally:
            node_exec("node8", "rm -f /opt/router/releases/fill")
        assert str(err.value).startswith("rollout failed: node8 failed in stage: disk full: ")
        assert "No space left on device" in str(err.value)

    def test_preflight_refuses_a_node_whose_releases_folder_lacks_room(self, ctx, base_release, make_release):
        """FAULTS 5: 12 MiB artifact + 64 MiB reserve cannot fit in a 24 MiB releases folder: refuse first."""
        with pytest.raises(DeployctlError) as err:
            api.rollout(ctx, twelve_mib(make_release).path)
        assert str(err.value).startswith("rollout refused in preflight, nothing changed: node8 failed in preflight: "
                                         "only ")
        assert err.value.exit_code == ExitCode.FAILED


# ---- 6: bit flip in a staged file -----------------------------------------------------------------

def flip_a_bit(path: str) -> str:
    """A node shell command that flips the lowest bit of byte 100 of `path` in place: same size, same inode."""
    return ("python3 -c 'import sys; f = open(sys.argv[1], \"r+b\"); f.seek(100); b = f.read(1)[0]; f.seek(100); "
            f"f.write(bytes([b ^ 1]))' {path}")


CORRUPT = {"append": lambda path: f"printf x >> {path}", "flip": flip_a_bit}


@pytest.mark.parametrize("how", sorted(CORRUPT))
def test_a_staged_file_corrupted_before_the_switch_is_caught_and_the_fleet_goes_back(
        ctx, base_release, make_release, node_exec, how):
    """FAULTS 6: one byte appended, or one bit flipped at the same size; the re-hash when the router starts
    after the switch catches it; the whole fleet goes back, gates closed; a rerun succeeds."""
    v2 = make_release("6.0.0")
    hook = at_phase("switch", lambda: node_exec("node2", CORRUPT[how](f"/opt/router/releases/{v2.digest}/router.py")))
    offset = journal_size(ctx)
    with pytest.raises(RolledBackError) as err:
        api.rollout(dataclasses.replace(quick(ctx, health=5), on_event=hook), v2.path)
    assert hook.fired and hook.fired[0][0] == 0
    msg = str(err.value)
    assert msg.startswith("rollout failed: node2 failed in health: ")
    assert f"!= expected {v2.digest[:12]}" in msg
    recs = records_since(ctx, offset)
    assert run_phases(recs) == ["start", "preflight", "close-gate", "stage", "switch", "health", "revert", "done"]
    assert recs[-1]["outcome"] == "rolled-back"
    assert [f.split(":")[0] for f in recs[-1]["failures"]] == ["node2 failed in health"]
    assert fleet_view(ctx) == {n.name: on_base(base_release, "closed") for n in ctx.nodes}

    api.rollout(ctx, v2.path)  # the rerun replaces the tampered copy and succeeds
    assert fleet_view(ctx) == {n.name: (v2.digest, v2.digest, "open", False) for n in ctx.nodes}
    assert release_files(ctx, "node2", v2.digest) == v2.files


def test_a_file_corrupted_after_the_router_started_keeps_every_gate_closed(
        ctx, base_release, make_release, node_exec):
    """FAULTS 6: a bit flipped in node2's running release after its router hashed it at start (health
    passed) but before the gates open: each router hashes its folder again before it opens its gate,
    node2 refuses, no gate opens (all or none) and the whole fleet goes back."""
    v2 = make_release("6.6.1")  # a version no other test uses: this one leaves it on every node
    router_json = f"/opt/router/releases/{v2.digest}/router.json"
    hook = at_phase("open-gate", lambda: node_exec("node2", flip_a_bit(router_json)))
    offset = journal_size(ctx)
    with pytest.raises(RolledBackError) as err:
        api.rollout(dataclasses.replace(quick(ctx, health=5), on_event=hook), v2.path)
    assert hook.fired and hook.fired[0][0] == 0
    msg = str(err.value)
    assert msg.startswith("rollout failed: node2 failed in open-gate: ") and "files changed on disk since start" in msg
    assert all(f"node{i} failed" not in msg for i in (1, 3, 4, 5, 6, 7, 8))
    recs = records_since(ctx, offset)
    assert run_phases(recs) == ["start", "preflight", "close-gate", "stage", "switch", "health", "open-gate",
                                "revert", "done"]
    assert recs[-1]["outcome"] == "rolled-back"
    assert fleet_view(ctx) == {n.name: on_base(base_release, "closed") for n in ctx.nodes}
    assert release_files(ctx, "node2", v2.digest) not in (None, v2.files)  # the tampered copy is still there

    api.rollout(ctx, v2.path)  # the rerun restages node2's copy and succeeds
    assert fleet_view(ctx) == {n.name: (v2.digest, v2.digest, "open", False) for n in ctx.nodes}
    assert release_files(ctx, "node2", v2.digest) == v2.files


# ---- ¶13-14: a release whose router.json carries a flag this router does not know -----------------

def test_a_release_with_an_unknown_flag_is_rolled_out_and_the_fleet_goes_back(
        ctx, base_release, tmp_path, node_exec):
    """SEC ¶13-14: a flag the router code does not know fails its startup check on every node, so no node
    ever reports the release running; the rollout reverts the whole fleet, gates closed. (The flag registry
    would refuse the build of an unregistered flag; here the flag is registered, as an operator might
    register a flag before the router code that reads it exists.)"""
    src = tmp_path / "router"
    shutil.copytree(ROOT / "fleet" / "router", src)
    cfg = json.loads((src / "router.json").read_text())
    cfg["version"], cfg["flags"]["turbo_mode"] = "6.6.6", True
    (src / "router.json").write_text(json.dumps(cfg, indent=2) + "\n")
    registry = tmp_path / "flags.yaml"
    registry.write_text((ROOT / "playbooks" / "flags.yaml").read_text()
                        + '  turbo_mode:\n    meaning: "not in any router yet"\n    state: active\n'
                          '    introduced: "6.6.6"\n')
    ctx = dataclasses.replace(ctx, playbook=dataclasses.replace(ctx.playbook, flag_registry=registry))
    peg = api.build(ctx, tmp_path / "dist", src)
    offset = journal_size(ctx)
    with pytest.raises(RolledBackError) as err:
        api.rollout(quick(ctx, health=4), peg.path)
    assert str(err.value).startswith("rollout failed: ") and "failed in health: " in str(err.value)
    recs = records_since(ctx, offset)
    assert run_phases(recs) == ["start", "preflight", "close-gate", "stage", "switch", "health", "revert", "done"]
    assert recs[-1]["outcome"] == "rolled-back"
    assert fleet_view(ctx) == {n.name: on_base(base_release, "closed") for n in ctx.nodes}
    code, log = node_exec("node2", "tail -n 50 /var/log/router.log")
    assert "router: unknown flag 'turbo_mode' in router.json" in log, log


@pytest.mark.parametrize("step", ["preflight", "stage"])
def test_commands_held_on_every_node_then_dropped_change_nothing_and_leave_no_agent(
        ctx, base_release, make_release, node_exec, step):
    """A rollout's command waits on each node after preflight and the reuse plan (for the artifact) and
    after the stage (for the switch request). A controller that closes its channels instead must leave every
    node as it was, with no agent left waiting."""
    v2 = make_release("6.1.0")
    agents = "pgrep -f '^python3 -I -S -c' | wc -l"
    with ctx.ssh() as f:
        held = f.hold({n.name: Call(commands.render(commands.deploy(ctx.root, v2.digest, 3)),
                                    commands.reuse_hints({}, {})) for n in ctx.nodes})
        assert all(r.ok and commands.parse_probe_answer(r.stdout).current == base_release.digest
                   for r in held.values()), held
        have = f.step({n.name: b"" for n in ctx.nodes})  # the answer to the (empty) reuse plan
        assert all(r.ok and commands.parse_have(r.stdout) == (frozenset(), 0) for r in have.values()), have
        if step == "stage":
            staged = f.step({n.name: commands.upload(v2.payload()) for n in ctx.nodes})
            assert all(r.ok and commands.parse_stage(r.stdout) == v2.digest for r in staged.values()), staged
        assert node_exec("node3", agents) == (0, "1\n")  # answered, waiting
    assert wait(lambda: all(node_exec(n.name, agents) == (0, "0\n") for n in ctx.nodes), 10)
    assert fleet_view(ctx) == {n.name: on_base(base_release, "open") for n in ctx.nodes}
    code, listing = node_exec("node3", f"ls -a {ctx.root}/releases")
    assert (v2.digest in listing.split()) == (step == "stage") and ".stage-" not in listing
    if step == "stage":
        assert release_files(ctx, "node3", v2.digest) == v2.files  # staged and kept, never switched to


def test_a_rollout_whose_commands_wait_longer_than_a_step_timeout_still_succeeds(ctx, base_release, make_release):
    """The nodes' commands wait for the controller between steps (here a close-gate phase slower than
    the 8 s step timeout): waiting is not a step, so no deadline runs out on it."""
    v2 = make_release("6.2.0")
    hook = at_phase("close-gate", lambda: time.sleep(9))
    api.rollout(dataclasses.replace(quick(ctx), on_event=hook), v2.path)
    assert hook.fired
    assert fleet_view(ctx) == {n.name: (v2.digest, v2.digest, "open", False) for n in ctx.nodes}


# ---- 10, 11: the controller killed with SIGKILL in each phase --------------------------------------

@pytest.mark.parametrize("phase", PHASES)
def test_the_controller_killed_in_a_phase_is_seen_and_recover_brings_one_release(
        ctx, base_release, make_release, phase):
    """FAULTS 10 and 11: the next command sees the interrupted rollout; recover brings one release, gate closed."""
    art = make_release("7.0.0")
    offset = journal_size(ctx)
    proc = cli_rollout(ctx.state_dir, art)
    try:
        seen = wait_record(ctx, offset, lambda r: r.get("phase") == phase and r.get("digest") == art.digest, 60, proc)
    finally:
        proc.kill()  # SIGKILL, right after the phase's record appeared: no cleanup code runs
        proc.communicate(timeout=10)
    assert seen, f"the rollout never journaled {phase}"
    assert proc.returncode == -signal.SIGKILL
    run = [r for r in records_since(ctx, offset) if r.get("run") == seen["run"]]
    assert "done" not in run_phases(run), f"killed too late: {run_phases(run)}"
    assert ctx.lock.info() is not None and ctx.lock.info().stale and ctx.lock.info().pid == proc.pid

    v = cli(ctx, "verify")
    assert f"interrupted rollout (run {seen['run']}, {art.digest[:12]}" in v.stderr, v.stderr
    assert "run `deployctl recover`" in v.stderr
    again = cli(ctx, "-q", "rollout", str(art.path))
    assert again.returncode == ExitCode.INCONSISTENT, again.stderr
    assert again.stderr.startswith("deployctl: error: the fleet may be mixed after an interrupted rollout")
    assert "deployctl recover" in again.stderr and again.stderr.count("\n") == 1

    rec = cli(ctx, "-q", "recover")
    assert rec.returncode == 0, rec.stderr
    view = fleet_view(ctx)
    assert len({(cur, run_) for cur, run_, _, _ in view.values()}) == 1  # one release, on disk and running
    assert view == {n.name: on_base(base_release, "closed") for n in ctx.nodes}
    assert cli(ctx, "verify", "--expect", base_release.digest).returncode == 0
    assert not ctx.lock.path.exists()
    after = records_since(ctx, offset)
    assert any(r.get("action") == "lock-broken" and r.get("pid") == proc.pid for r in after)
    assert (after[-1]["action"], after[-1]["phase"], after[-1]["outcome"]) == ("recover", "done", "ok")
    assert api.interrupted(ctx) is None


# ---- 12: two operators roll out at once -----------------------------------------------------------

def test_two_rollouts_started_together_one_wins_the_other_is_refused_naming_the_holder(
        ctx, base_release, make_release):
    """FAULTS 12: an atomic lock; the second is refused with the holder; the fleet ends on the winner."""
    arts = [make_release("8.0.0"), make_release("8.1.0")]
    offset = journal_size(ctx)
    procs, win, lose, outs = race(arts, [ctx.state_dir] * 2)
    err = outs[lose][1]
    assert err.startswith("deployctl: error: deploy lock held: ") and err.count("\n") == 1
    assert f"(pid {procs[win].pid}) running 'rollout {arts[win].digest[:12]}'" in err
    assert fleet_view(ctx) == {n.name: (arts[win].digest, arts[win].digest, "open", False) for n in ctx.nodes}
    recs = records_since(ctx, offset)
    assert [r["digest"] for r in recs if r.get("phase") == "start"] == [arts[win].digest]  # the loser wrote nothing
    assert recs[-1]["outcome"] == "ok"


# ---- 26: halt while a rollout runs ----------------------------------------------------------------

def _halt_during_stage(ctx, make_release):
    """Start a CLI rollout and halt the fleet once it journals its stage phase.

    Returns the finished process, its stderr, what halt reported, and each node's (pid, orders) just after the halt.
    """
    big = make_release("2.0.0", {"blob.bin": BLOB})
    offset = journal_size(ctx)
    proc = cli_rollout(ctx.state_dir, big)
    try:
        seen = wait_record(ctx, offset, lambda r: r.get("phase") == "stage" and r.get("digest") == big.digest,
                           60, proc)
        assert seen, "the rollout never reached stage"
        halted = api.halt(ctx)
        counts = {n: (a.body["pid"], a.body["orders"]) for n, a in routers.health(ctx.nodes).items()}
        _, stderr = proc.communicate(timeout=90)
    finally:
        proc.kill()
    return proc, stderr, halted, counts


def test_a_halt_during_a_rollout_stops_the_fleet_and_no_node_takes_orders(ctx, base_release, make_release):
    """FAULTS 26: halt needs no lock, closes every gate and aborts the rollout."""
    proc, stderr, halted, counts = _halt_during_stage(ctx, make_release)
    assert halted == {n.name: "halted" for n in ctx.nodes}
    assert proc.returncode != 0, stderr
    assert fleet_view(ctx) == {n.name: (base_release.digest, base_release.digest, "closed", True) for n in ctx.nodes}
    for n in ctx.nodes:
        ans = post_order(n, order(f"after-halt-{n.name}"))
        assert (ans.status, ans.body) == (503, {"error": "halted"}), n.name
    for name, a in routers.health(ctx.nodes).items():
        pid, orders = counts[name]
        assert a.body["orders"] == (orders if a.body["pid"] == pid else 0), name  # no order routed since


def test_a_halt_during_a_rollout_exits_halted_and_journals_the_end(ctx, base_release, make_release):
    """FAULTS 26: the aborted rollout exits 7 (HALTED) with one line, and its end is journaled."""
    big, offset = make_release("2.0.0", {"blob.bin": BLOB}), journal_size(ctx)
    proc, stderr, _, _ = _halt_during_stage(ctx, make_release)
    assert proc.returncode == ExitCode.HALTED, stderr
    assert stderr.startswith("deployctl: error: rollout aborted, fleet halted: ") and stderr.count("\n") == 1
    assert api.interrupted(ctx) is None
    # docs/faults.md: the run journals `done` with the halt as its failure; nothing switched, nothing reverted.
    run = [r for r in records_since(ctx, offset) if r.get("action") == "rollout"]
    assert run_phases(run) == ["start", "preflight", "close-gate", "stage", "done"], run_phases(run)
    done = run[-1]
    assert done["outcome"] == "rolled-back" and done["digest"] == big.digest
    assert done["previous"] == {n.name: base_release.digest for n in ctx.nodes}
    assert any("halted" in f for f in done["failures"]), done["failures"]
    assert [r["outcome"] for r in records_since(ctx, offset) if r.get("action") == "halt"] == ["ok"]


# ---- 28, 29: rollback without a previous release, or to a pruned one ------------------------------

def test_rollback_with_no_previous_release_is_refused_and_nothing_changes(ctx, base_release, tmp_path):
    """FAULTS 28: a clear refusal; nothing changes."""
    state = tmp_path / "state"
    shutil.copytree(ctx.state_dir, state, ignore=shutil.ignore_patterns("deploy.lock", "dockerd.*"))
    only = encode(entry(action="rollout", phase="done", outcome="ok", run="x", digest=base_release.digest))
    (state / "journal.jsonl").write_bytes(only)
    fresh = dataclasses.replace(ctx, state_dir=state)
    before = fleet_view(ctx)
    assert before == {n.name: on_base(base_release, "open") for n in ctx.nodes}

    with pytest.raises(UsageError) as err:
        api.rollback(fresh)
    assert str(err.value) == "rollback refused, nothing changed: no previous release in the fleet's history"
    proc = cli(fresh, "rollback", "--all")
    assert proc.returncode == ExitCode.USAGE and proc.stderr.count("\n") == 1
    assert "no previous release" in proc.stderr
    assert fleet_view(ctx) == before
    assert (state / "journal.jsonl").read_bytes() == only and not (state / "deploy.lock").exists()


def test_rollback_to_a_pruned_release_is_refused_naming_the_nodes(ctx, base_release, make_release):
    """FAULTS 29: the last good release is kept; a pruned target is refused, naming every node without it."""
    rels = [make_release(f"10.{i}.0") for i in range(4)]
    for r in rels:
        api.rollout(ctx, r.path)
    with ctx.ssh() as f:
        probes = {n: commands.parse_probe(r.stdout)
                  for n, r in f.run_all(lambda n: Call(commands.render(commands.probe(ctx.root)))).items()}
    assert {n: set(p.releases) for n, p in probes.items()} == {
        n.name: {r.digest for r in rels[1:]} for n in ctx.nodes}  # keep_releases: 3, the newest
    before, offset = fleet_view(ctx), journal_size(ctx)

    with pytest.raises(UsageError) as err:
        api.rollback(ctx, to=rels[0].digest)
    assert str(err.value) == (f"rollback refused, nothing changed: release {rels[0].digest[:12]} is not on "
                              + ", ".join(n.name for n in ctx.nodes))
    assert fleet_view(ctx) == before == {n.name: (rels[3].digest, rels[3].digest, "open", False) for n in ctx.nodes}
    assert records_since(ctx, offset) == [] and not ctx.lock.path.exists()


# ---- 31: a node cut off from the network ----------------------------------------------------------

def test_a_node_cut_off_from_the_network_is_unreachable_not_ready(ctx, base_release, make_release, docker_spec):
    """FAULTS 31: verify names it (exit 4), the gate is not opened, a rollout fails in preflight."""
    dc, spec = docker_spec
    v2 = make_release("1.1.0")
    node4 = docker_fleet.container(dc, spec, "node4")
    net = dc.networks.get(spec.network)
    offset = journal_size(ctx)
    net.disconnect(node4)
    try:
        report = api.verify(ctx)
        assert report.exit_code == ExitCode.UNREACHABLE
        assert [n.node for n in report.nodes if not n.ok] == ["node4"]
        assert [n.node for n in report.nodes if not n.reachable] == ["node4"]
        proc = cli(ctx, "verify", "--json")
        assert proc.returncode == ExitCode.UNREACHABLE, proc.stderr
        doc = json.loads(proc.stdout)
        assert [(n["node"], n["reachable"]) for n in doc["nodes"] if not n["ok"]] == [("node4", False)]

        with pytest.raises(UnreachableError) as err:
            api.gate_open(ctx)
        assert str(err.value).startswith("gate stays closed: 1 of 8 nodes do not match (")
        assert str(err.value).endswith("): node4"), str(err.value)
        with pytest.raises(UnreachableError) as err:
            api.rollout(quick(ctx), v2.path)
        assert str(err.value).startswith("rollout refused in preflight, nothing changed: 1 of 8 unreachable (")
        assert str(err.value).endswith("): node4"), str(err.value)
        assert err.value.nodes["node4"].startswith(f"unreachable at 127.0.0.1:{node(ctx, 'node4').ssh_port}: ")
        others = routers.health([n for n in ctx.nodes if n.name != "node4"])
        assert {(a.body["digest"], a.body["gate"]) for a in others.values()} == {(base_release.digest, "open")}
    finally:
        net.connect(node4)
    assert wait(lambda: routers.request(node(ctx, "node4"), "GET", "/health", timeout=1).ok, 30)
    assert fleet_view(ctx) == {n.name: on_base(base_release, "open") for n in ctx.nodes}
    recs = records_since(ctx, offset)
    # The refused rollout; the refused gate-open journals nothing (it stopped before any request).
    assert run_phases(recs) == ["start", "preflight", "done"] and recs[-1]["outcome"] == "refused"
