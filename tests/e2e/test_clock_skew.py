"""Clock skew (FAULTS row 14): node3's agent and router run a day ahead.

The skew comes from Debian's libfaketime (`libfaketime.so.1`, LD_PRELOAD with FAKETIME="+1d"), copied
into node3's container of this fleet only, never into the image: for the router through its
supervisord program's environment, for the agent (every SSH session) through sshd's `SetEnv`. The
library is taken from the host (package libfaketime installed), or `apt-get download libfaketime` and
unpacked in a temporary folder; without either the test is skipped, saying why.

Deadlines are kept on the controller's monotonic clock and releases are compared by digest, never by
time: verify passes with the skewed node. One thing does compare clocks, on purpose: a control request
is signed with a timestamp that the router accepts within 30 s of its own clock (issue 9, signed
requests). The trade-off chosen: a request that only ever stops orders (halt, gate close) is signed
again with the node's own clock, which the node proves with the token, so a skewed node can always be
stopped; a request that lets orders flow (gate open, resume) stays refused, naming the skew. A rollout
therefore never opens a fleet with a node a day off: it goes back, every gate closed, naming node3.
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

from deployctl import api
from deployctl.errors import RolledBackError, UnreachableError
from deployctl.remote import commands, routers
from deployctl.remote.ssh import Call
from deployctl.testfleet import docker as docker_fleet

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
        assert wait(lambda: routers.request(node, "GET", "/health", timeout=1).ok, 30)
        yield c
    finally:
        sh(c, f"mv /etc/ssh/sshd_config.orig /etc/ssh/sshd_config && mv {SUPERVISOR_CONF}.orig {SUPERVISOR_CONF} && "
              f"supervisorctl signal HUP sshd && supervisorctl update router && rm -rf {Path(LIB).parent}")
        wait(lambda: routers.request(node, "GET", "/health", timeout=1).ok, 30)


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


def test_a_node_a_day_ahead_is_never_opened_but_can_always_be_stopped(ctx, base_release, make_release, skewed):
    """FAULTS 14: local monotonic deadlines (a 60 s rollout deadline here) and digests, not node clocks; the
    signed control window refuses to open or resume the skewed node, and halts it anyway."""
    # The skew is real: the agent's sessions and the router both live a day ahead.
    assert DAY - 300 < node_time(ctx, SKEWED) - time.time() < DAY + 300
    assert abs(node_time(ctx, "node1") - time.time()) < 300
    journal_lines = len(sh(skewed, "cat /opt/router/state/journal.jsonl").splitlines())

    v2 = make_release("14.0.0")
    pb = dataclasses.replace(ctx.playbook, timeouts=dataclasses.replace(ctx.playbook.timeouts, rollout=60))
    with pytest.raises(RolledBackError) as err:
        api.rollout(dataclasses.replace(ctx, playbook=pb), v2.path)
    msg = str(err.value)
    assert msg.startswith(f"rollout failed: {SKEWED} failed in open-gate: ") and "off this node's clock" in msg, msg
    assert all(f"node{i} failed" not in msg for i in (1, 2, 4, 5, 6, 7, 8))
    assert fleet_view(ctx) == {n.name: (base_release.digest, base_release.digest, "closed", False) for n in ctx.nodes}
    assert api.verify(ctx, base_release.digest).ok  # digests, not clocks

    halted = api.halt(ctx)  # a skewed node can always be stopped
    assert set(halted) == {n.name for n in ctx.nodes} and all(v.startswith("halted") for v in halted.values())
    assert "node clock" in halted[SKEWED], halted
    assert fleet_view(ctx) == {n.name: (base_release.digest, base_release.digest, "closed", True) for n in ctx.nodes}
    with pytest.raises(UnreachableError) as err:  # and never resumed while its clock is off
        api.resume(ctx, base_release.digest)
    assert SKEWED in str(err.value) and "off this node's clock" in str(err.value), str(err.value)
    assert fleet_view(ctx)[SKEWED] == (base_release.digest, base_release.digest, "closed", True)

    # The router on node3 journaled the halt with its own clock: a day ahead.
    mine = [r for r in router_records(skewed, journal_lines) if r.get("source") == "router"]
    assert "halt" in {r["action"] for r in mine}, mine
    assert all(DAY - 300 < ts(r) - time.time() < DAY + 300 for r in mine), mine
