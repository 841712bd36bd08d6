"""Benchmark: how long one warm sweep of `deployctl watch` takes (every node's release over its held SSH
command and its /health over a kept-alive connection, at once), and a cold `verify` beside it.

Run with the fleet up:  .venv/bin/python bench/bench_watch.py [--sweeps 30] [-i fleet/fleet.yaml]
The inventory decides how many nodes are swept. Prints the median and the 90th percentile of the warm
sweeps (the first two, which open the connections, are left out) and the cold verify's wall time.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from deployctl import api  # noqa: E402
from deployctl.ops.watch import Watcher
from deployctl.remote.routers import KeptHealth


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sweeps", type=int, default=30)
    parser.add_argument("-i", "--inventory", type=Path, default=ROOT / "fleet" / "fleet.yaml")
    args = parser.parse_args()
    state = Path(os.environ.get("DEPLOYCTL_STATE") or ROOT / ".deployctl")
    ctx = api.open_context(args.inventory, ROOT / "playbooks" / "router.yaml", state)
    times, bad = [], 0
    links = KeptHealth(ctx.nodes, ctx.playbook.service.health_path)
    watcher = Watcher(ctx, links)
    try:
        for i in range(args.sweeps + 2):
            sweep = watcher.sweep()
            if i >= 2:
                times.append(sweep.took)
                bad += sum(1 for r in sweep.readings if not r.reachable or r.release is None)
            time.sleep(0.2)
    finally:
        watcher.close()
        links.close()
    start = time.monotonic()
    subprocess.run([str(ROOT / ".venv" / "bin" / "deployctl"), "-q", "-i", str(args.inventory), "verify"],
                   capture_output=True, env={**os.environ, "DEPLOYCTL_STATE": str(state)})
    verify_s = time.monotonic() - start
    times.sort()
    print(f"nodes: {len(ctx.nodes)}   warm sweeps: {len(times)}   load average: {os.getloadavg()[0]:.1f}")
    print(f"watch warm sweep: median {statistics.median(times) * 1000:.0f} ms, "
          f"p90 {times[int(len(times) * 0.9) - 1] * 1000:.0f} ms, max {times[-1] * 1000:.0f} ms (target < 500 ms)")
    print(f"node readings missing in warm sweeps: {bad}")
    print(f"cold verify (process): {verify_s:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
