"""Benchmark at scale: deployctl against plain OpenSSH at 8, 32 and 64 nodes, 10 MiB artifact, in one command.

Run with Docker up:  .venv/bin/python bench/bench_scale.py [--runs 3] [--sizes 8,32,64] [--keep-up]
It brings up its own fleet of max(--sizes) nodes (project deployctl-bench64, SSH ports 2401.., router
ports 8401.., state folder .deployctl-bench64/, compose file and inventories in a temporary folder), and
measures each size on the first N nodes of it (an inventory of those N; the others stay idle). Each
size is measured as bench/bench_rollout.py measures 8 nodes, with its code: per run, alternated, plain
OpenSSH (one `ssh` per node in parallel: copy + sha256 + rename switch; a sha256 check of `current`),
then `deployctl rollout` and `deployctl verify` as processes. Prints the medians and the ratios beside
the figures measured by hand before this bench (issue 9 item 7). At the end the fleet is taken down
with `fleet down --keep-images` (not with --keep-up: then it prints how to reach and remove it).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_rollout import DCTL, make_source, openssh_copy_check_switch, openssh_sha_check, timed  # noqa: E402

from deployctl import api
from deployctl.testfleet import fleetfiles

PROJECT, FIRST_SSH, FIRST_ROUTER = "deployctl-bench64", 2401, 8401
# Measured by hand before this bench (issue 9 item 7): whole rollout / OpenSSH, verify / OpenSSH sha256.
EARLIER = {8: (1.21, 0.87), 32: (1.06, 0.57), 64: (1.05, 0.48)}
TARGETS = {8: (None, 0.70), 64: (1.0, 0.45)}


def write_inventory(path: Path, nodes: int, parallel: int | None) -> Path:
    """The first `nodes` nodes of the bench fleet, as testfleet.fleetfiles.inventory_text writes them."""
    text = fleetfiles.inventory_text(nodes, FIRST_SSH, FIRST_ROUTER, fleet_name=PROJECT)
    if parallel is not None:
        text = text.replace("  parallel: 8\n", f"  parallel: {parallel}\n")
    path.write_text(text)
    return path


def fleet(state: Path, inventory: Path, compose: Path, *argv: str) -> None:
    cmd = DCTL + ["--state-dir", str(state), "-i", str(inventory), "fleet", *argv, "--compose", str(compose)]
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if p.returncode != 0:
        raise SystemExit(f"fleet {argv[0]} exited {p.returncode}: {p.stderr.strip()}")


def measure(state: Path, inventory: Path, arts: list, rows: dict) -> None:
    """bench_rollout's measures of rollout and verify, on the nodes of `inventory`, one run per artifact."""
    ctx = api.open_context(inventory, ROOT / "playbooks/router.yaml", state)
    dctl = DCTL + ["--state-dir", str(state), "-i", str(inventory)]
    payload = arts[0].payload()

    def add(name: str, value: float) -> None:
        rows.setdefault(name, []).append(value)

    timed(dctl + ["rollout", "--json", str(arts[0].path)])  # warm: every later run has a previous
    for art in arts[1:]:
        add("openssh copy+sha256+switch", openssh_copy_check_switch(ctx, payload))
        add("openssh sha256 check", openssh_sha_check(ctx))
        wall, doc = timed(dctl + ["rollout", "--json", str(art.path)])
        add("deployctl rollout (process)", wall)
        for phase, secs in doc["timings"].items():
            add(f"  phase {phase}", secs)
        add("deployctl verify (process)", timed(dctl + ["verify", "--json"])[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--sizes", default="8,32,64", help="node counts, comma-separated (each 1-64)")
    parser.add_argument("--parallel", type=int, default=None,
                        help="the inventories' ssh.parallel (default: as fleetfiles.inventory_text writes it)")
    parser.add_argument("--keep-up", action="store_true", help="leave the fleet up at the end")
    args = parser.parse_args()
    try:
        sizes = sorted({int(s) for s in args.sizes.split(",")})
    except ValueError:
        raise SystemExit(f"--sizes: should be node counts like 8,32,64, got {args.sizes!r}") from None
    if not sizes or sizes[0] < 1 or sizes[-1] > 64 or args.runs < 1:
        raise SystemExit("--sizes: each 1-64; --runs: at least 1")
    state = ROOT / ".deployctl-bench64"
    results: dict[int, dict[str, list[float]]] = {}
    load: dict[int, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        compose, big = tmp / "compose.yaml", tmp / f"fleet-{sizes[-1]}.yaml"
        t = time.monotonic()
        subprocess.run(DCTL + ["--state-dir", str(state), "-i", str(big), "fleet", "up", "--nodes", str(sizes[-1]),
                               "--compose", str(compose), "--project", PROJECT, "--first-ssh-port", str(FIRST_SSH),
                               "--first-router-port", str(FIRST_ROUTER)], cwd=ROOT, check=True, capture_output=True)
        print(f"fleet of {sizes[-1]} nodes up in {time.monotonic() - t:.0f} s ({PROJECT}, ports {FIRST_SSH}.. / "
              f"{FIRST_ROUTER}..)", flush=True)
        try:
            ctx = api.open_context(big, ROOT / "playbooks/router.yaml", state)
            arts = [api.build(ctx, tmp / "dist", make_source(tmp, salt)) for salt in range(args.runs + 1)]
            for n in sizes:
                inventory = write_inventory(tmp / f"fleet-{n}-p.yaml", n, args.parallel)
                load[n] = os.getloadavg()[0]
                results[n] = {}
                measure(state, inventory, arts, results[n])
                print(f"{n} nodes measured (load average {load[n]:.1f})", flush=True)
        finally:
            if args.keep_up:  # keep its compose file and inventory: the temporary folder goes
                for f in (compose, big):
                    (state / f.name).write_bytes(f.read_bytes())
                print(f"fleet left up; take it down with: .venv/bin/deployctl --state-dir {state} "
                      f"-i {state / big.name} fleet down --keep-images --compose {state / compose.name}")
            else:
                fleet(state, big, compose, "down", "--keep-images")

    print(f"\n10 MiB artifact, {os.cpu_count()} cores, medians of {args.runs} runs (seconds)")
    for n in sizes:
        print(f"{n} nodes (load average {load[n]:.1f} when started):")
        for k, v in results[n].items():
            print(f"  {k:32} {statistics.median(v):8.3f}   {' '.join(f'{x:.3f}' for x in v)}")
    print(f"\n{'nodes':>5}  {'rollout/openssh':>15} {'before':>7} {'target':>7}   {'verify/openssh':>14} {'before':>7} "
          f"{'target':>7}")
    for n in sizes:
        med = {k: statistics.median(v) for k, v in results[n].items()}
        roll = med["deployctl rollout (process)"] / med["openssh copy+sha256+switch"]
        ver = med["deployctl verify (process)"] / med["openssh sha256 check"]
        before = EARLIER.get(n, (None, None))
        target = TARGETS.get(n, (None, None))

        def show(x: float | None, suffix: str = "x") -> str:
            return "—" if x is None else f"{'<=' if suffix == 't' else ''}{x:.2f}x"

        print(f"{n:5}  {roll:14.2f}x {show(before[0]):>7} {show(target[0], 't'):>7}   {ver:13.2f}x "
              f"{show(before[1]):>7} {show(target[1], 't'):>7}")


if __name__ == "__main__":
    main()
