"""The deploy loop on the eight real nodes: rollout, verify, rollback, halt, lock, journal."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import time

import pytest
from helpers import ROOT, order, post_order, wait

from deployctl import api
from deployctl.errors import ExitCode, HaltedError, LockHeldError, RolledBackError, UnreachableError, UsageError
from deployctl.remote import commands, routers
from deployctl.remote.ssh import Call
from deployctl.state.journal import actor
from deployctl.state.lock import Lock
from deployctl.testfleet import docker as docker_fleet

DCTL = [str(ROOT / ".venv" / "bin" / "deployctl")]
BLOB_24M = os.urandom(24 << 20)  # incompressible: node4's upload lasts long enough to kill it midway


def cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "DEPLOYCTL_STATE": os.environ.get("DEPLOYCTL_STATE", str(ROOT / ".deployctl"))}
    return subprocess.run(DCTL + list(args), cwd=ROOT, capture_output=True, text=True, env=env, timeout=120)


def running(ctx) -> dict[str, str | None]:
    return {n: (a.body.get("digest") if a.ok else None) for n, a in routers.health(ctx.nodes).items()}


def gates(ctx) -> dict[str, str | None]:
    return {n: (a.body.get("gate") if a.ok else None) for n, a in routers.health(ctx.nodes).items()}


def currents(ctx) -> dict[str, str | None]:
    with ctx.ssh() as f:
        res = f.run_all(lambda n: Call(commands.render(commands.probe(ctx.root))))
    return {n: commands.parse_probe(r.stdout).current for n, r in res.items()}


def releases_listing(ctx, name: str) -> str:
    """`ls -A releases/` on one node."""
    with ctx.ssh([n for n in ctx.nodes if n.name == name]) as f:
        r = f.run_all(lambda n: Call(commands.render(["ls", "-A", f"{ctx.root}/releases"])))[name]
    assert r.ok, r.reason()
    return r.stdout.decode()


def run_records(ctx, digest: str) -> list[dict]:
    recs = [r for r in ctx.journal.read() if r.get("digest") == digest and r.get("run")]
    last_run = recs[-1]["run"]
    return [r for r in recs if r["run"] == last_run]


def test_full_rollout_then_second_rollout(ctx, base_release, make_release):
    v2, v3 = make_release("2.0.0"), make_release("3.0.0")
    result = api.rollout(ctx, v2.path)
    assert result.state.phase.value == "done"
    assert set(running(ctx).values()) == {v2.digest}
    assert set(gates(ctx).values()) == {"open"}
    assert api.verify(ctx).ok and api.verify(ctx).expected == v2.digest
    assert post_order(ctx.nodes[0], order("after-v2")).status == 200

    api.rollout(ctx, v3.path)
    assert set(currents(ctx).values()) == {v3.digest}
    assert set(running(ctx).values()) == {v3.digest}
    done = [r for r in ctx.journal.read() if r.get("phase") == "done"][-1]
    assert done["outcome"] == "ok" and set(done["previous"].values()) == {v2.digest}
    with ctx.ssh() as f:
        probes = {n: commands.parse_probe(r.stdout)
                  for n, r in f.run_all(lambda n: Call(commands.render(commands.probe(ctx.root)))).items()}
    assert all({v2.digest, v3.digest} <= set(p.releases) for p in probes.values())


def test_verify_names_a_changed_file_on_one_node(ctx, base_release, node_exec):
    node_exec("node4", "printf ' ' >> /opt/router/current/router.json")
    report = api.verify(ctx, base_release.digest)
    assert not report.ok and report.exit_code == ExitCode.MISMATCH
    bad = {n.node: n for n in report.nodes if not n.ok}
    assert list(bad) == ["node4"]
    assert not bad["node4"].disk_ok and bad["node4"].running_ok
    assert "changed: router.json" in bad["node4"].drift

    proc = cli("verify", "--json", "--expect", base_release.digest)
    assert proc.returncode == ExitCode.MISMATCH
    doc = json.loads(proc.stdout)
    assert doc["ok"] is False and doc["exit_code"] == 3
    node4 = next(n for n in doc["nodes"] if n["node"] == "node4")
    assert node4["drift"] == ["changed: router.json"] and node4["running_ok"] is True


def test_verify_names_an_added_file(ctx, base_release, node_exec):
    node_exec("node5", "echo 'print(1)' > /opt/router/current/power_peg.py")
    report = api.verify(ctx, base_release.digest)
    node5 = next(n for n in report.nodes if n.node == "node5")
    assert not report.ok and not node5.disk_ok
    assert node5.drift == ("added: power_peg.py",)
    assert all(n.ok for n in report.nodes if n.node != "node5")


def test_verify_catches_new_files_while_the_process_runs_the_old_release(ctx, base_release, make_release):
    v2 = make_release("2.1.0")
    node6 = [n for n in ctx.nodes if n.name == "node6"]
    with ctx.ssh(node6) as f:
        staged = f.run_all(lambda n: Call(commands.render(
            commands.stage(ctx.root, v2.digest, len(v2.payload()), 3)), v2.payload()))
        switched = f.run_all(lambda n: Call(commands.render(commands.switch(ctx.root, v2.digest))))  # no restart
    assert staged["node6"].ok and switched["node6"].ok
    report = api.verify(ctx, v2.digest)
    n6 = next(n for n in report.nodes if n.node == "node6")
    assert n6.disk_ok and not n6.running_ok and n6.running_digest == base_release.digest
    assert not report.ok and report.exit_code == ExitCode.MISMATCH
    assert not api.verify(ctx, base_release.digest).ok  # against the old release its disk is wrong


def test_a_node_killed_during_its_upload_leaves_the_previous_release_and_gate_closed(
        ctx, base_release, make_release, docker_spec):
    """FAULTS 2: node4's container is killed while its upload is under way (after its first MiB went out,
    long before its last): no node switches, the rest stay on the old release with gates closed, nothing
    partial is left on node4, and once it is back the same rollout succeeds."""
    dc, spec = docker_spec
    v2 = make_release("2.2.0", {"blob.bin": BLOB_24M})
    killed: list[tuple[int, int]] = []

    def kill_node4_mid_upload(kind, **data):
        if kind == "upload" and data["node"] == "node4" and data["sent"] >= 1 << 20 and not killed:
            killed.append((data["sent"], data["total"]))
            docker_fleet.container(dc, spec, "node4").kill()

    offset = ctx.journal.path.stat().st_size
    with pytest.raises(RolledBackError) as err:
        api.rollout(dataclasses.replace(ctx, on_event=kill_node4_mid_upload), v2.path)
    assert killed and killed[0][0] < killed[0][1] // 4, killed  # the kill landed early in node4's upload
    assert str(err.value).startswith("rollout failed: node4 failed in stage: ")
    assert all(f"node{i} failed" not in str(err.value) for i in (1, 2, 3, 5, 6, 7, 8))
    recs = [json.loads(line) for line in ctx.journal.path.read_bytes()[offset:].splitlines()]
    assert [r["phase"] for r in recs if r.get("action") == "rollout"] == [
        "start", "preflight", "close-gate", "stage", "done"]  # never switched
    assert recs[-1]["outcome"] == "rolled-back" and recs[-1]["digest"] == v2.digest
    others = [n for n in ctx.nodes if n.name != "node4"]
    health = routers.health(others)
    assert {a.body["digest"] for a in health.values()} == {base_release.digest}
    assert {a.body["gate"] for a in health.values()} == {"closed"}
    assert post_order(others[0], order("mixed-1")).status == 503
    docker_fleet.container(dc, spec, "node4").start()
    assert wait(lambda: routers.request(ctx.nodes[3], "GET", "/health").ok, 30)
    assert set(currents(ctx).values()) == {base_release.digest}
    assert api.verify(ctx, base_release.digest).ok
    # Killed with its container, node4's agent could not clean up: its partial upload is left in a
    # `.stage-*` folder, never under the release's own name, and the next rollout prunes it.
    assert v2.digest not in releases_listing(ctx, "node4")

    api.rollout(ctx, v2.path)  # the rerun, with node4 back, succeeds
    assert set(currents(ctx).values()) == {v2.digest} and api.verify(ctx, v2.digest).ok
    assert ".stage-" not in releases_listing(ctx, "node4")


def test_rollback_all_returns_every_node_to_the_previous_release(ctx, base_release, make_release):
    v2 = make_release("2.3.0")
    api.rollout(ctx, v2.path)
    plan = api.preview_rollback(ctx, to=base_release.digest)
    assert [(r.current, r.target) for r in plan] == [(v2.digest, base_release.digest)] * 8
    assert set(running(ctx).values()) == {v2.digest}  # the plan changed nothing

    api.rollback(ctx)
    assert set(currents(ctx).values()) == {base_release.digest}
    assert set(running(ctx).values()) == {base_release.digest}
    assert set(gates(ctx).values()) == {"open"}
    assert api.verify(ctx).expected == base_release.digest


def test_rollback_refuses_partial_without_force_and_unknown_targets(ctx, base_release):
    before = list(ctx.journal.read())
    with pytest.raises(UsageError, match="--force"):
        api.rollback(ctx, nodes=["node1"])
    with pytest.raises(UsageError, match="never ran"):
        api.rollback(ctx, to="ab" * 32)
    assert list(ctx.journal.read()) == before
    proc = cli("rollback")
    assert proc.returncode == ExitCode.USAGE and proc.stderr.count("\n") == 1


def test_a_forced_partial_rollback_moves_only_the_named_node_and_keeps_the_gate_closed(
        ctx, base_release, make_release, docker_spec):
    v2 = make_release("2.5.0")
    api.rollout(ctx, v2.path)
    api.rollback(ctx, nodes=["node2"], force=True)
    assert currents(ctx) == {n.name: base_release.digest if n.name == "node2" else v2.digest for n in ctx.nodes}
    assert ctx.journal.last_good() == v2.digest  # a partial run is not a release the whole fleet ran
    assert running(ctx) == currents(ctx)
    assert set(gates(ctx).values()) == {"closed"}  # a mixed fleet never takes orders
    dc, spec = docker_spec
    agents = lambda n: docker_fleet.container(dc, spec, n).exec_run(  # noqa: E731
        ["sh", "-c", "pgrep -f '^python3 -I -S -c' | wc -l"]).output.strip()
    assert wait(lambda: all(agents(n.name) == b"0" for n in ctx.nodes), 10)  # the others' commands ended unused


def test_halt_and_resume(ctx, base_release):
    done = api.halt(ctx)
    assert set(done.values()) == {"halted"} and len(done) == 8
    health = routers.health(ctx.nodes)
    assert all(a.body["halted"] is True and a.body["gate"] == "closed" for a in health.values())
    assert all(post_order(n, order(f"halt-{n.name}")).status == 503 for n in ctx.nodes)
    with pytest.raises(HaltedError):
        api.gate_open(ctx)
    with pytest.raises(HaltedError, match="node is halted"):  # a rollout refuses a halted fleet in preflight
        api.rollout(ctx, base_release.path)
    api.resume(ctx)
    assert all(a.body["halted"] is False and a.body["gate"] == "closed" for a in routers.health(ctx.nodes).values())
    api.gate_open(ctx)
    assert set(gates(ctx).values()) == {"open"}


def test_halt_reaches_every_reachable_node_and_names_the_rest(ctx, base_release, docker_spec):
    dc, spec = docker_spec
    docker_fleet.container(dc, spec, "node7").stop(timeout=1)
    start = time.monotonic()
    with pytest.raises(UnreachableError) as err:
        api.halt(ctx)
    assert time.monotonic() - start < 15
    assert "node7" in str(err.value) and "node1" not in str(err.value)
    health = routers.health([n for n in ctx.nodes if n.name != "node7"])
    assert all(a.body["halted"] is True for a in health.values())
    last = list(ctx.journal.read())[-1]
    assert last["action"] == "halt" and last["outcome"] == "partial" and last["nodes"]["node1"] == "halted"


def test_second_rollout_is_refused_while_the_lock_is_held(ctx, base_release):
    lock = Lock(ctx.lock.path)
    lock.acquire("test holds the lock")
    try:
        with pytest.raises(LockHeldError) as err:
            api.rollout(ctx, base_release.path)
        assert "held" in str(err.value) and "since" in str(err.value) and str(os.getpid()) in str(err.value)
        proc = cli("rollout", str(base_release.path))
        assert proc.returncode == ExitCode.LOCKED and "test holds the lock" in proc.stderr
    finally:
        lock.release()


def test_stale_lock_is_reported_and_broken_only_when_asked(ctx, base_release):
    dead = subprocess.Popen(["true"])
    dead.wait()  # a pid that no longer runs: the lock's holder crashed
    ctx.lock.path.write_text(json.dumps({"holder": actor(), "pid": dead.pid, "since": time.time() - 60,
                                         "command": "rollout crashed"}))
    with pytest.raises(LockHeldError, match="stale.*--break-lock"):
        api.rollout(ctx, base_release.path)
    api.rollout(ctx, base_release.path, break_lock=True)
    broken = [r for r in ctx.journal.read() if r.get("action") == "lock-broken"][-1]
    assert broken["pid"] == dead.pid
    assert not ctx.lock.path.exists()


def test_journal_records_every_phase_on_the_controller_and_the_nodes(ctx, base_release, make_release, node_exec):
    v2 = make_release("2.4.0")
    api.rollout(ctx, v2.path)
    recs = run_records(ctx, v2.digest)
    assert [r["phase"] for r in recs] == ["start", "preflight", "close-gate", "stage", "switch", "health",
                                          "open-gate", "done"]
    assert all(r["who"] and r["ts"] and r["action"] == "rollout" for r in recs)
    assert recs[-1]["outcome"] == "ok" and set(recs[-1]["previous"]) == {n.name for n in ctx.nodes}
    token = ctx.token()
    assert token not in ctx.journal.path.read_text()
    code, text = node_exec("node8", "tail -n 2 /opt/router/state/journal.jsonl; "
                                    "stat -c %a /opt/router/state/journal.jsonl")
    switch_line, gate_line, mode = text.strip().splitlines()
    switched, opened = json.loads(switch_line), json.loads(gate_line)
    # The node journals its own switch (with its previous release), then its router the gate opening.
    assert (switched["run"], switched["phase"], switched["digest"], switched["node"]) == \
        (recs[-1]["run"], "switch", v2.digest, "node8")
    assert switched["previous"] == base_release.digest and switched["who"] == recs[-1]["who"]
    assert (opened["action"], opened["digest"], opened["gate"], opened["source"]) == (
        "gate", v2.digest, "open", "router")
    assert opened["who"] == recs[-1]["who"]
    assert mode == "600" and token not in text
    proc = cli("history", "--json", "--limit", "3")
    assert proc.returncode == 0 and json.loads(proc.stdout)[-1]["run"] == recs[-1]["run"]


def test_dry_run_shows_the_plan_and_changes_nothing(ctx, base_release, make_release):
    v2 = make_release("2.5.0")
    before = list(ctx.journal.read())
    proc = cli("rollout", "--dry-run", "--json", str(v2.path))
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)
    assert [(r["node"], r["current"], r["target"]) for r in rows] == \
        [(n.name, base_release.digest, v2.digest) for n in ctx.nodes]
    # The router's files are all small: below 64 KiB a copy on the node costs what sending does.
    assert all(r["upload_bytes"] == len(v2.payload()) for r in rows)
    assert {r["note"] for r in rows} == {f"0 of {len(v2.files)} files on the node"}
    assert list(ctx.journal.read()) == before
    assert set(running(ctx).values()) == {base_release.digest}


def test_bad_artifact_is_refused_with_one_line_and_nothing_changes(ctx, base_release, tmp_path):
    before = list(ctx.journal.read())
    bogus = tmp_path / "bogus.tar"
    bogus.write_bytes(b"not a tar at all")
    proc = cli("rollout", str(bogus))
    assert proc.returncode == ExitCode.USAGE
    assert proc.stderr.startswith("deployctl: error: ") and proc.stderr.count("\n") == 1
    assert "Traceback" not in proc.stderr
    assert list(ctx.journal.read()) == before


def test_status_and_gate_status_cli(ctx, base_release):
    proc = cli("status", "--json")
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)["nodes"]
    assert [r["node"] for r in rows] == [n.name for n in ctx.nodes]
    assert {r["release"] for r in rows} == {base_release.digest} == {r["running"] for r in rows}
    proc = cli("gate", "status", "--json")
    assert proc.returncode == 0 and {v["gate"] for v in json.loads(proc.stdout).values()} == {"open"}
