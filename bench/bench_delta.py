"""Benchmark of content-addressed staging: a release that changes one 4 KiB file of a 10 MiB artifact.

Run with a fleet up:  .venv/bin/python bench/bench_delta.py [--runs 5] [-i fleet/fleet.yaml]
For 64 nodes, bring up a fleet of that size beside or instead of the default one, with a state
folder of its own for both commands (`fleet up` pins the host keys of the fleet it brings up, and
only those: sharing the default folder would leave the 8-node fleet unreachable until its own
`fleet up`), e.g.
    export DEPLOYCTL_STATE=/tmp/f64/state
    .venv/bin/deployctl -i /tmp/f64/fleet.yaml fleet up --nodes 64 --compose /tmp/f64/compose.yaml \\
        --project deployctl-bench64 --first-ssh-port 2401 --first-router-port 8401
    .venv/bin/python bench/bench_delta.py -i /tmp/f64/fleet.yaml
    .venv/bin/deployctl -i /tmp/f64/fleet.yaml fleet down --compose /tmp/f64/compose.yaml

In the same run, on every node in parallel (one process per node), it times:
  - the floor: plain OpenSSH copying the whole 10 MiB artifact (`ssh node 'cat > file'`);
  - rsync over SSH (Debian's rsync on both ends) bringing the node's copy of the old release's
    folder up to the new one (the old folder is put there first, untimed);
  - deployctl: the whole rollout as a process, and its preflight + stage (handshakes, reuse on the
    node, upload, checks), for the one-file release, and for a release where every file changes.
Prints medians and the ratios the targets are stated in. The fleet is left on the release it ran.
"""

from __future__ import annotations

import argparse
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


def make_source(tmp: Path, name: str, data_salt: int, small_salt: int) -> Path:
    """The router, a 10 MiB data file and a 4 KiB file: the salts decide their bytes."""
    src = tmp / name
    shutil.copytree(ROOT / "fleet" / "router", src)
    (src / "data.bin").write_bytes(random.Random(data_salt).randbytes(10 * 2**20 - 4096))
    (src / "small.bin").write_bytes(random.Random(small_salt).randbytes(4096))
    return src


class Fleet:
    """The nodes of an inventory, reached by plain OpenSSH and rsync with the fleet's pinned keys."""

    def __init__(self, ctx: api.Context):
        self.ctx = ctx
        state = ctx.state
        self.ssh = ["ssh", "-i", str(state.client_key), "-o", f"UserKnownHostsFile={state.known_hosts}", "-o",
                    "StrictHostKeyChecking=yes", "-o", "BatchMode=yes", "-o", "LogLevel=ERROR"]

    def each(self, argv_for, stdin: bytes | None = None) -> float:
        def one(node):
            p = subprocess.run(argv_for(node), input=stdin, capture_output=True)
            if p.returncode != 0:
                raise SystemExit(f"{argv_for(node)[0]} failed on {node.name}: {p.stderr.decode().strip()}")

        start = time.monotonic()
        with ThreadPoolExecutor(len(self.ctx.nodes)) as pool:
            list(pool.map(one, self.ctx.nodes))
        return time.monotonic() - start

    def remote(self, node, command: str) -> list[str]:
        return self.ssh + ["-p", str(node.ssh_port), f"{node.user}@{node.host}", command]

    def copy(self, payload: bytes) -> float:
        return self.each(lambda n: self.remote(n, "mkdir -p /tmp/bench && cat > /tmp/bench/whole.tar"), payload)

    def rsync(self, src: Path) -> float:
        shell = " ".join(self.ssh)
        return self.each(lambda n: ["rsync", "-a", "--delete", "--mkpath", "-e", f"{shell} -p {n.ssh_port}",
                                    f"{src}/", f"{n.user}@{n.host}:/tmp/bench/rsync/"])


def rollout(inventory: Path, artifact: Path) -> tuple[float, dict]:
    argv = [str(ROOT / ".venv/bin/deployctl"), "-q", "-i", str(inventory), "rollout", "--json", str(artifact)]
    start = time.monotonic()
    p = subprocess.run(argv, capture_output=True, cwd=ROOT)
    wall = time.monotonic() - start
    if p.returncode != 0:
        raise SystemExit(f"rollout exited {p.returncode}: {p.stderr.decode().strip()}")
    return wall, json.loads(p.stdout)["timings"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("-i", "--inventory", type=Path, default=ROOT / "fleet/fleet.yaml")
    args = parser.parse_args()
    if shutil.which("rsync") is None:
        raise SystemExit("rsync is not installed on this machine (scripts/setup.sh installs it)")
    ctx = api.open_context(args.inventory, ROOT / "playbooks/router.yaml")
    fleet, rows = Fleet(ctx), {}

    def add(name: str, value: float) -> None:
        rows.setdefault(name, []).append(value)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for run in range(args.runs):
            old = make_source(tmp, f"old-{run}", 1000 + run, 2000 + run)
            new = tmp / f"new-{run}"
            shutil.copytree(old, new)  # copy2: unchanged files keep their times, as on a build host
            (new / "small.bin").write_bytes(random.Random(3000 + run).randbytes(4096))
            whole = make_source(tmp, f"whole-{run}", 4000 + run, 5000 + run)
            arts = {k: api.build(ctx, tmp / "dist", src) for k, src in (("old", old), ("new", new), ("whole", whole))}
            rollout(args.inventory, arts["old"].path)  # untimed: every node holds the old release
            fleet.rsync(old)  # untimed: every node holds the old folder for rsync
            add("openssh copy of the whole artifact (floor)", fleet.copy(arts["new"].payload()))
            add("rsync over ssh, old folder -> new", fleet.rsync(new))
            wall, t = rollout(args.inventory, arts["new"].path)
            add("deployctl rollout, one 4 KiB file changed (process)", wall)
            add("  preflight + stage", t["preflight"] + t["stage"])
            add("  stage", t["stage"])
            wall, t = rollout(args.inventory, arts["whole"].path)
            add("deployctl rollout, every file changed (process)", wall)
            add("  preflight + stage ", t["preflight"] + t["stage"])
        home = api.build(ctx, tmp / "dist")
        rollout(args.inventory, home.path)

    med = {k: statistics.median(v) for k, v in rows.items()}
    print(f"10 MiB artifact, one 4 KiB file changed; {len(ctx.nodes)} nodes, {os.cpu_count()} cores, {args.runs} runs")
    print(f"{'measure':54} {'median s':>9}  runs")
    for k, v in rows.items():
        print(f"{k:54} {med[k]:9.3f}  {' '.join(f'{x:.3f}' for x in v)}")
    floor, rsync = med["openssh copy of the whole artifact (floor)"], med["rsync over ssh, old folder -> new"]
    delta, delta_ps = med["deployctl rollout, one 4 KiB file changed (process)"], med["  preflight + stage"]
    print("ratios:")
    print(f"  rsync / floor                                    = {rsync / floor:.2f}x")
    print(f"  deployctl preflight+stage / floor                = {delta_ps / floor:.3f}x (target <= 0.3x)")
    print(f"  deployctl preflight+stage / rsync                = {delta_ps / rsync:.3f}x (target <= 1.0x)")
    print(f"  deployctl whole rollout (process) / floor        = {delta / floor:.2f}x (restart and health included)")
    print(f"  deployctl whole rollout (process) / rsync        = {delta / rsync:.2f}x")


if __name__ == "__main__":
    main()
