"""Clock skew (FAULTS row 14): node3's agent and router run a day ahead, and nothing compares node clocks.

The skew comes from Debian's libfaketime (`libfaketime.so.1`, LD_PRELOAD with FAKETIME="+1d"), copied
into node3's container of this fleet only, never into the image: for the router through its
supervisord program's environment, for the agent (every SSH session) through sshd's `SetEnv`. The
library is taken from the host (package libfaketime installed), or `apt-get download libfaketime` and
unpacked in a temporary folder; without either the test is skipped, saying why.

Every command deployctl has must pass with the skewed node: rollout, verify, halt, resume, rollback.
They can, because the controller keeps its deadlines on its own monotonic clock and never reads a node's
clock: it compares digests, not times. Control requests signed with a timestamp and a 30 s window (branch
`signed`) do compare clocks: there node3 refuses the gate opening with `HTTP 401: unauthorized: timestamp
-86400.0 s off this node's clock`, so this test's rollout ends in RolledBackError naming node3 in
open-gate, every gate closed; halt would still reach it (re-signed with its clock), resume would not.
That is the trade-off of the signature, and the expectation to change here when it is merged.
"""

from __future__ import annotations

import dataclasses
import io
import json
import shutil
import subprocess
import tarfile
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest
from helpers import fleet_view, wait

from deployctl import api, commands, docker_fleet, gate
from deployctl.config import Timeouts
from deployctl.ssh import Call

SKEWED = "node3"
DAY = 86400
LIB = "/usr/local/lib/faketime/libfaketime.so.1"
SUPERVISOR_CONF = "/etc/supervisor/conf.d/node.conf"
ENV_LINE = 'environment=PYTHONDONTWRITEBYTECODE="1"'


@pytest.fixture(scope="module")
def libfaketime(tmp_path_factory) -> Path:
    """The host's libfaketime.so.1, or one unpacked from `apt-get download libfaketime`; skip without."""
    for found in Path("/usr/lib").glob("*/faketime/libfaketime.so.1"):
        return found
    where = tmp_path_factory.mktemp("faketime")
    if shutil.which("apt-get") and shutil.which("dpkg-deb"):
        subprocess.run(["apt-get", "download", "libfaketime"], cwd=where, capture_output=True, timeout=120)
        for deb in where.glob("libfaketime_*.deb"):
            subprocess.run(["dpkg-deb", "-x", str(deb), str(where / "x")], check=True, timeout=60)
            for found in (where / "x").glob("usr/lib/*/faketime/libfaketime.so.1"):
                return found
    pytest.skip("libfaketime is neither installed on the host nor downloadable with `apt-get download`")


def sh(container, script: str) -> str:
    code, out = container.exec_run(["sh", "-c", script])
    assert code == 0, out.decode(errors="replace")
    return out.decode(errors="replace")


@pytest.fixture
def skewed(ctx, docker_spec, libfaketime):
    """node3's router and every new SSH session on it run with their clocks a day ahead; undone after."""
    c = docker_fleet.container(*docker_spec, SKEWED)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        tar.add(libfaketime, arcname="libfaketime.so.1")
    sh(c, f"mkdir -p {Path(LIB).parent}")
    assert c.put_archive(str(Path(LIB).parent), buf.getvalue())
    env = f'LD_PRELOAD="{LIB}",FAKETIME="+1d"'
    sh(c, f"cp /etc/ssh/sshd_config /etc/ssh/sshd_config.orig && cp {SUPERVISOR_CONF} {SUPERVISOR_CONF}.orig && "
          f"printf '\\nSetEnv LD_PRELOAD={LIB} FAKETIME=+1d\\n' >> /etc/ssh/sshd_config && "
          f"sed -i 's|^{ENV_LINE}$|{ENV_LINE},{env}|' {SUPERVISOR_CONF} && grep -q FAKETIME {SUPERVISOR_CONF} && "
          "supervisorctl signal HUP sshd && supervisorctl update router")
    node = next(n for n in ctx.nodes if n.name == SKEWED)
    try:
        assert wait(lambda: gate.request(node, "GET", "/health", timeout=1).ok, 30)
        yield c
    finally:
        sh(c, f"mv /etc/ssh/sshd_config.orig /etc/ssh/sshd_config && mv {SUPERVISOR_CONF}.orig {SUPERVISOR_CONF} && "
              f"supervisorctl signal HUP sshd && supervisorctl update router && rm -rf {Path(LIB).parent}")
        wait(lambda: gate.request(node, "GET", "/health", timeout=1).ok, 30)


def node_time(ctx, name: str) -> float:
    """What time.time() says in a fresh SSH session on the node (where the agent runs)."""
    node = next(n for n in ctx.nodes if n.name == name)
    with ctx.ssh([node]) as f:
        r = f.run_all(lambda n: Call(commands.render(["python3", "-c", "import time; print(time.time())"]),
                                     timeout=15))[name]
    assert r.ok, r.reason()
    return float(r.stdout)


def router_records(container, since_lines: int) -> list[dict]:
    out = sh(container, "cat /opt/router/state/journal.jsonl")
    return [json.loads(line) for line in out.splitlines()[since_lines:] if line.strip()]


def ts(rec: dict) -> float:
    return datetime.strptime(rec["ts"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc).timestamp()


def test_a_node_a_day_ahead_passes_rollout_verify_halt_resume_and_rollback(ctx, base_release, make_release, skewed):
    """FAULTS 14: never compare node clocks; local monotonic deadlines (a 60 s rollout deadline here)."""
    # The skew is real: the agent's sessions and the router both live a day ahead.
    assert DAY - 300 < node_time(ctx, SKEWED) - time.time() < DAY + 300
    assert abs(node_time(ctx, "node1") - time.time()) < 300
    journal_lines = len(sh(skewed, "cat /opt/router/state/journal.jsonl").splitlines())

    v2 = make_release("14.0.0")
    pb = dataclasses.replace(ctx.playbook, timeouts=dataclasses.replace(ctx.playbook.timeouts, rollout=60))
    result = api.rollout(dataclasses.replace(ctx, playbook=pb), v2.path)
    assert result.gate_open
    assert fleet_view(ctx) == {n.name: (v2.digest, v2.digest, "open", False) for n in ctx.nodes}
    assert api.verify(ctx, v2.digest).ok

    halted = api.halt(ctx)
    assert halted == {n.name: "halted" for n in ctx.nodes}
    assert fleet_view(ctx) == {n.name: (v2.digest, v2.digest, "closed", True) for n in ctx.nodes}
    assert api.resume(ctx, v2.digest).ok
    assert fleet_view(ctx) == {n.name: (v2.digest, v2.digest, "closed", False) for n in ctx.nodes}

    back = api.rollback(ctx)
    assert back.state.target == base_release.digest and back.gate_open
    assert fleet_view(ctx) == {n.name: (base_release.digest, base_release.digest, "open", False) for n in ctx.nodes}
    assert api.verify(ctx, base_release.digest).ok

    # The router on node3 journaled the gate opening, halt and resume with its own clock: a day ahead.
    mine = [r for r in router_records(skewed, journal_lines) if r.get("source") == "router"]
    assert {r["action"] for r in mine} >= {"gate", "halt", "resume"}
    assert all(DAY - 300 < ts(r) - time.time() < DAY + 300 for r in mine), mine
