"""Start-up cost of the CLI: what shell completion adds, and whole commands that need no fleet.

    .venv/bin/python bench/bench_startup.py [--runs 30]

Completion's cost is measured in-process (building the click command with and without the two
completion options, alternating, medians), since a process's wall time moves by more than the
difference on a busy machine. Typer imports its completion modules either way.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def build_ms(app, completion: bool, rounds: int = 20) -> float:
    import typer.main

    app._add_completion = completion
    start = time.perf_counter()
    for _ in range(rounds):
        typer.main.get_command(app)
    return (time.perf_counter() - start) / rounds * 1000


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=30)
    runs = parser.parse_args().runs
    from deployctl.cli import app as cli

    on, off = [], []
    for _ in range(runs):
        on.append(build_ms(cli.app, True))
        off.append(build_ms(cli.app, False))
    cli.app._add_completion = True
    added = statistics.median(on) - statistics.median(off)
    print(f"completion options: +{added:.2f} ms per command (median of {runs}; target < 10 ms)")
    for args in (["--version"], ["--help"]):
        times = []
        for _ in range(runs):
            t = time.perf_counter()
            subprocess.run([str(ROOT / ".venv/bin/deployctl"), *args], capture_output=True, check=True)
            times.append(time.perf_counter() - t)
        print(f"deployctl {' '.join(args)}: {statistics.median(times) * 1000:.0f} ms (process, median of {runs})")


if __name__ == "__main__":
    main()
