"""Benchmark: `deployctl halt` as a process, idle and with every node taking orders, until a probe sees
every node refuse an order (not deployctl's own say-so).

Run with the fleet up and its gates open:  .venv/bin/python bench/bench_halt.py [--runs 5] [--threads 2] [-i INV]
(-i: another inventory, e.g. the first 8 nodes of bench_scale.py's fleet, with DEPLOYCTL_STATE set for it.)
Under load, a separate process (this file with --load) sends orders to every node from --threads
threads per node, as fast as the routers take them, for a bounded time. Each run: the load runs
for a second, then `deployctl halt` starts, and one probe thread per node posts an order every few
milliseconds until that node answers 503 `halted`. The time from the halt process's start until
the last node refused is the figure; the fleet is resumed and its gates opened again after each run
(with the library, so resume's verify is not timed). Prints the medians beside the earlier figures.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from deployctl import api
from deployctl.remote import routers

DCTL = [str(ROOT / ".venv" / "bin" / "deployctl"), "-q"]
# The same halt through cli/app.py's Typer app, as every halt ran before cli/fasthalt.py (A/B in one run).
TYPER = [sys.executable, "-c", "import sys; from deployctl.cli import main; main()", "-q"]
EARLIER = {"idle": "0.18 s", "load": "0.45-0.50 s"}  # issue 10 item 5, before this bench existed
ORDER = {"symbol": "AAPL", "side": "buy", "quantity": 250, "limit_price": 10.5}


def post_order(port: int, oid: str, timeout: float = 2.0) -> tuple[int, dict]:
    """POST one order to the router on 127.0.0.1:port; (0, {}) if it could not be sent."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("POST", "/orders", json.dumps({"id": oid, **ORDER}), {"Content-Type": "application/json"})
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read() or b"{}")
    except (OSError, http.client.HTTPException, ValueError):
        return 0, {}
    finally:
        conn.close()


def load(ports: list[int], threads: int, seconds: float) -> None:
    """The load generator: `threads` senders per port for at most `seconds`; prints orders sent per second."""
    stop, sent = time.monotonic() + seconds, [0]
    lock = threading.Lock()

    def sender(port: int, k: int) -> None:
        i = 0
        while time.monotonic() < stop and not os.path.exists(sys.argv[-1] + ".stop"):
            post_order(port, f"load-{os.getpid()}-{port}-{k}-{i}")
            i += 1
        with lock:
            sent[0] += i

    workers = [threading.Thread(target=sender, args=(p, k)) for p in ports for k in range(threads)]
    start = time.monotonic()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    print(json.dumps({"sent": sent[0], "per_s": round(sent[0] / (time.monotonic() - start), 1)}))


def probe_until_refused(port: int, t0: float, out: dict, name: str, deadline: float) -> None:
    """Post probe orders until the node answers 503 halted; record seconds since t0."""
    i = 0
    while time.monotonic() < deadline:
        status, body = post_order(port, f"probe-{port}-{t0}-{i}", timeout=1.0)
        if status == 503 and body.get("error") == "halted":
            out[name] = time.monotonic() - t0
            return
        i += 1
        time.sleep(0.002)


def reopen(ctx: api.Context) -> None:
    """Resume every router and open its gate for the digest it runs (library calls, not timed)."""
    token = ctx.token()
    routers.control(ctx.nodes, "resume", token)
    digests = {a.body.get("digest") for a in routers.health(ctx.nodes).values()}
    if len(digests) != 1:
        sys.exit(f"bench_halt: the fleet runs {len(digests)} releases; roll one out first")
    answers = routers.open_all_or_none(ctx.nodes, digests.pop(), token)
    if not all(a.ok for a in answers.values()):
        sys.exit("bench_halt: could not open every gate: "
                 + "; ".join(a.reason() for a in answers.values() if not a.ok))


def one_run(ctx: api.Context, loaded: bool, threads: int, tmp: Path, door: list[str]) -> tuple[float, float, str]:
    """One halt: (seconds until every node refused, seconds until the halt process exited, load rate)."""
    reopen(ctx)
    stopfile, gen, rate = tmp.with_suffix(".stop"), None, ""
    stopfile.unlink(missing_ok=True)
    if loaded:
        gen = subprocess.Popen([sys.executable, __file__, "--load", str(threads), *map(str, ports(ctx)), str(tmp)],
                               stdout=subprocess.PIPE, text=True)
        time.sleep(1.0)
    refused: dict[str, float] = {}
    t0 = time.monotonic()
    proc = subprocess.Popen(door + ["halt"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    probes = [threading.Thread(target=probe_until_refused, args=(n.router_port, t0, refused, n.name, t0 + 10))
              for n in ctx.nodes]
    for p in probes:
        p.start()
    for p in probes:
        p.join()
    proc.wait(30)
    exited = time.monotonic() - t0
    if gen is not None:
        stopfile.touch()
        rate = gen.communicate(timeout=30)[0].strip()
        stopfile.unlink(missing_ok=True)
    said = proc.stderr.read().decode().strip()
    if len(refused) != len(ctx.nodes):
        sys.exit(f"bench_halt: halt exited {proc.returncode}, nodes refusing: {sorted(refused)}; {said}")
    if proc.returncode != 0:  # every node refuses, but deployctl could not confirm it: say so, keep the figure
        print(f"  note: halt exited {proc.returncode} though every node refused orders: {said}")
    return max(refused.values()), exited, rate


def ports(ctx: api.Context) -> list[int]:
    return [n.router_port for n in ctx.nodes]


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--load":
        load([int(p) for p in sys.argv[3:-1]], int(sys.argv[2]), 60.0)
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2, help="load senders per node")
    parser.add_argument("--typer", action="store_true", help="also time the halt through the Typer app (A/B)")
    parser.add_argument("-i", "--inventory", type=Path, default=ROOT / "fleet/fleet.yaml")
    args = parser.parse_args()
    ctx = api.open_context(args.inventory, ROOT / "playbooks/router.yaml")
    tmp = Path(os.environ.get("TMPDIR", "/tmp")) / f"bench-halt-{os.getpid()}"
    inv = ["-i", str(args.inventory)]
    cases = [("idle", False, DCTL + inv), ("load", True, DCTL + inv)]
    if args.typer:
        cases += [("idle, Typer door", False, TYPER + inv), ("load, Typer door", True, TYPER + inv)]
    results: dict[str, list[tuple[float, float, str]]] = {case: [] for case, _, _ in cases}
    for _ in range(args.runs):  # alternated, so every case sees the same machine
        for case, loaded, door in cases:
            results[case].append(one_run(ctx, loaded, args.threads, tmp, door))
    reopen(ctx)
    print(f"halt as a process until every node refuses orders ({len(ctx.nodes)} nodes, medians of {args.runs}):")
    for case, runs in results.items():
        refused = statistics.median(r[0] for r in runs)
        exited = statistics.median(r[1] for r in runs)
        rates = ", ".join(r[2] for r in runs if r[2])
        print(f"  {case}: all refusing after {refused:.3f} s (process exited after {exited:.3f} s); "
              f"earlier {EARLIER[case.split(',')[0]]}; target < 0.2 s" + (f"\n    load: {rates}" if rates else ""))


if __name__ == "__main__":
    main()
