"""The outlier report and the flag check of `verify`/`status` on the real fleet: one drifted node."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
from pathlib import Path

from helpers import wait

from deployctl.errors import ExitCode
from deployctl.remote import routers

ROOT = Path(__file__).resolve().parents[2]


def cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "DEPLOYCTL_STATE": os.environ.get("DEPLOYCTL_STATE", str(ROOT / ".deployctl"))}
    return subprocess.run([str(ROOT / ".venv" / "bin" / "deployctl"), *args], cwd=ROOT, capture_output=True,
                          text=True, env=env, timeout=120)


def test_a_node_running_other_flags_and_files_is_named_in_one_line(ctx, base_release, node_exec):
    ctx.keep_manifest(base_release)  # what the rollout that installed it kept (with its flags)
    assert base_release.flags == {"log_orders": False, "price_improvement": False}
    node8 = next(n for n in ctx.nodes if n.name == "node8")
    cfg = json.loads((ROOT / "fleet" / "router" / "router.json").read_text())
    cfg["flags"]["log_orders"] = True
    code, out = node_exec("node8", f"cd /opt/router/current && printf %s {shlex.quote(json.dumps(cfg))} > router.json"
                                   " && echo 'x = 1' > power_peg.py && supervisorctl restart router")
    assert code == 0, out
    assert wait(lambda: (a := routers.request(node8, "GET", "/health")).ok
                and a.body.get("digest") != base_release.digest, 15)

    proc = cli("verify", "--json", "--expect", base_release.digest)
    assert proc.returncode == ExitCode.MISMATCH, proc.stderr
    doc = json.loads(proc.stdout)
    bad = [n for n in doc["nodes"] if not n["ok"]]
    assert [n["node"] for n in bad] == ["node8"]
    assert bad[0]["flags"] == {"log_orders": True, "price_improvement": False} and bad[0]["flags_ok"] is False
    assert "flags differ from the release's: flag log_orders=true (release: false)" in bad[0]["problems"]
    running8 = bad[0]["running_digest"]
    lines = [g["line"] for g in doc["groups"]]
    assert lines == [f"7 nodes run {base_release.digest[:12]}",
                     f"node8 runs {running8[:12]}: power_peg.py added, router.json changed, "
                     "flag log_orders=true (release: false)"]
    assert [g["reference"] for g in doc["groups"]] == [True, False]

    table = cli("verify", "--expect", base_release.digest)
    assert table.returncode == ExitCode.MISMATCH and lines[1] in table.stdout, table.stdout

    status = cli("status", "--json")
    assert status.returncode == 0, status.stderr
    sdoc = json.loads(status.stdout)
    assert [g["nodes"] for g in sdoc["groups"]] == [[f"node{i}" for i in range(1, 8)], ["node8"]]
    assert sdoc["groups"][1]["differences"] == ["power_peg.py added", "router.json changed",
                                                "flag log_orders=true (release: false)"]
    assert sdoc["nodes"][7]["flags"] == {"log_orders": True, "price_improvement": False}
