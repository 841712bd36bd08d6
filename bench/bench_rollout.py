"""Benchmark: deployctl against plain OpenSSH on the eight real nodes, with a 10 MiB artifact.

Run with the fleet up (`deployctl fleet up`):  .venv/bin/python bench/bench_rollout.py [--runs 3]
Prints, per measure, the median wall time over the runs, and the ratios the
targets are stated in. It deploys benchmark releases and, at the end, rolls the
fleet back to the release it found, so the fleet is left as it was.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from deployctl import api  # noqa: E402

DCTL = [str(ROOT / ".venv" / "bin" / "deployctl"), "-q"]


def make_source(tmp: Path, salt: int) -> Path:
    """The router plus a 10 MiB incompressible data file; `salt` makes each release distinct."""
    src = tmp / f"src-{salt}"
    shutil.copytree(ROOT / "fleet" / "router", src)
    rng = random.Random(salt)
    (src / "data.bin").write_bytes(rng.randbytes(10 * 2**20))
    return src


def openssh(ctx: api.Context, remote: str, stdin: bytes | None) -> float:
    """Run `remote` on every node with one `ssh` process per node in parallel; return the wall time."""
    t = ctx.state
    base = ["ssh", "-i", str(t.client_key), "-o", f"UserKnownHostsFile={t.known_hosts}", "-o",
            "StrictHostKeyChecking=yes", "-o", "BatchMode=yes", "-o", "LogLevel=ERROR"]

    def one(node):
        p = subprocess.run(base + ["-p", str(node.ssh_port), f"{node.user}@{node.host}", remote],
                           input=stdin, capture_output=True)
        if p.returncode != 0:
            raise SystemExit(f"openssh baseline failed on {node.name}: {p.stderr.decode().strip()}")
        return p.stdout

    start = time.monotonic()
    with ThreadPoolExecutor(len(ctx.nodes)) as pool:
        outs = list(pool.map(one, ctx.nodes))
    wall = time.monotonic() - start
    return wall, outs


def openssh_copy_check_switch(ctx: api.Context, payload: bytes) -> float:
    want = hashlib.sha256(payload).hexdigest()
    remote = ("mkdir -p /tmp/bench/rel && cat > /tmp/bench/a.tmp && sha256sum /tmp/bench/a.tmp && "
              "mv /tmp/bench/a.tmp /tmp/bench/rel/a && ln -sfn rel /tmp/bench/cur.new && "
              "mv -T /tmp/bench/cur.new /tmp/bench/cur")
    wall, outs = openssh(ctx, remote, payload)
    if any(o.split()[0].decode() != want for o in outs):
        raise SystemExit("openssh baseline: a node's sha256 differs")
    return wall


def openssh_sha_check(ctx: api.Context) -> float:
    wall, _ = openssh(ctx, "cd /opt/router/current && find . -type f -print0 | sort -z | xargs -0 sha256sum", None)
    return wall


def timed(argv: list[str]) -> tuple[float, dict | None]:
    start = time.monotonic()
    p = subprocess.run(argv, capture_output=True, cwd=ROOT)
    wall = time.monotonic() - start
    if p.returncode != 0:
        raise SystemExit(f"{' '.join(argv[1:])} exited {p.returncode}: {p.stderr.decode().strip()}")
    try:
        return wall, json.loads(p.stdout)
    except ValueError:
        return wall, None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    ctx = api.open_context(ROOT / "fleet/fleet.yaml", ROOT / "playbooks/router.yaml")
    start_digest = api.verify(ctx).expected
    rows: dict[str, list[float]] = {}

    def add(name: str, value: float) -> None:
        rows.setdefault(name, []).append(value)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        arts = [api.build(ctx, tmp / "dist", make_source(tmp, salt)) for salt in range(args.runs + 1)]
        payload = arts[0].payload()
        print(f"artifact: {len(payload) / 2**20:.1f} MiB, {len(ctx.nodes)} nodes, {os.cpu_count()} cores")
        timed(DCTL + ["rollout", "--json", str(arts[0].path)])  # warm: every later run has a previous
        for art in arts[1:]:
            add("openssh copy+sha256+switch", openssh_copy_check_switch(ctx, payload))
            add("openssh sha256 check", openssh_sha_check(ctx))
            wall, doc = timed(DCTL + ["rollout", "--json", str(art.path)])
            add("deployctl rollout (process)", wall)
            for phase, secs in doc["timings"].items():
                add(f"  rollout phase {phase}", secs)
            add("  rollout upload+check+switch", doc["timings"]["stage"] + doc["timings"]["switch"])
            # What the OpenSSH figure includes too: the handshakes and starting a program on each node.
            add("  rollout preflight+stage+switch", sum(doc["timings"][p] for p in ("preflight", "stage", "switch")))
            add("deployctl verify (process)", timed(DCTL + ["verify", "--json"])[0])
            t = time.monotonic()
            api.halt(ctx)
            add("deployctl halt (library, 8 nodes)", time.monotonic() - t)
            add("deployctl halt (process)", timed(DCTL + ["halt", "--json"])[0])
            timed(DCTL + ["resume", "--json"])
            add("deployctl rollback --all (process)", timed(DCTL + ["rollback", "--all", "--json"])[0])
        # Leave the fleet on the router release it had (the build is reproducible: same digest).
        home = api.build(ctx, tmp / "dist")
        timed(DCTL + ["rollout", "--json", str(home.path)])
        if home.digest != start_digest:
            print(f"note: the fleet ran {start_digest[:12]} before; "
                  f"it now runs the fleet/router build {home.digest[:12]}")

    med = {k: statistics.median(v) for k, v in rows.items()}
    print(f"{'measure':44} {'median s':>9}  runs")
    for k, v in rows.items():
        print(f"{k:44} {med[k]:9.3f}  {' '.join(f'{x:.3f}' for x in v)}")
    base, sha = med["openssh copy+sha256+switch"], med["openssh sha256 check"]
    print("targets:")
    print(f"  upload+check+switch / openssh  = {med['  rollout upload+check+switch'] / base:.2f}x (target <= 1.1x)")
    print(f"    with handshakes, probe and agent start (preflight+stage+switch) = "
          f"{med['  rollout preflight+stage+switch'] / base:.2f}x")
    print(f"  whole rollout (process) / openssh = {med['deployctl rollout (process)'] / base:.2f}x (target <= 1.5x)")
    print(f"  verify (process) / openssh sha256 = {med['deployctl verify (process)'] / sha:.2f}x (target <= 1.0x)")
    print(f"  halt (library) = {med['deployctl halt (library, 8 nodes)']:.3f}s (target < 0.2s)")


if __name__ == "__main__":
    main()
