"""What the CLI prints: rich tables and progress on a terminal, one JSON document with --json.

rich is imported on first use only: `--json` and `-q` runs never pay for it (about 20 ms).
"""

from __future__ import annotations

import json
import sys
import threading
import time

# Not a terminal (CI logs, pipes): wide enough that digests and addresses are not cut.
_WIDTH = None if sys.stdout.isatty() else 160


class _Console:
    """A rich Console made on first use: `--json` and `-q` runs never import rich (about 20 ms)."""

    def __init__(self, **options) -> None:
        self._options, self._console = options, None

    def __getattr__(self, name: str):
        if self._console is None:
            from rich.console import Console

            self._console = Console(highlight=False, soft_wrap=True, width=_WIDTH, **self._options)
        return getattr(self._console, name)


def Table(*columns, **options):  # noqa: N802 - stands in for rich's Table, imported on first use
    from rich.table import Table as RichTable

    return RichTable(*columns, **options)


out = _Console()
err = _Console(stderr=True)


class _Uploads:
    """Per-node upload bars on a terminal, shown only once an upload has run for about a second
    (a short upload would only flicker). Events arrive from the SSH worker threads."""

    DELAY = 1.0

    def __init__(self) -> None:
        self.lock, self.started, self.bars, self.tasks, self.last = threading.Lock(), None, None, {}, {}

    def update(self, node: str, sent: int, total: int) -> None:
        with self.lock:
            self.last[node] = (sent, total)
            self.started = self.started or time.monotonic()
            if self.bars is None and time.monotonic() - self.started >= self.DELAY and err.is_terminal:
                from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

                self.bars = Progress(TextColumn("    {task.description}"), BarColumn(), DownloadColumn(),
                                     TransferSpeedColumn(), console=err._console, transient=True)
                self.bars.start()
            if self.bars is not None:
                for name, (done, size) in sorted(self.last.items()):
                    if name not in self.tasks:
                        self.tasks[name] = self.bars.add_task(name, total=size)
                    self.bars.update(self.tasks[name], completed=done)
                self.last.clear()

    def stop(self) -> None:
        with self.lock:
            if self.bars is not None:
                self.bars.stop()
            self.started, self.bars, self.tasks = None, None, {}


_uploads = _Uploads()


def progress(kind: str, **d) -> None:
    """Render library events as progress lines on stderr."""
    if kind == "upload":
        return _uploads.update(d["node"], d["sent"], d["total"])
    if kind == "phase" and d["status"] == "done":
        _uploads.stop()
    if kind == "phase" and d["status"] == "start":
        err.print(f"[bold]▶ {d['phase']}[/]")
    elif kind == "phase":
        mark = "[red]✗[/]" if d.get("failures") else "[green]✓[/]"
        err.print(f"  {mark} {d['phase']} {d.get('seconds', 0):.2f}s")
    elif kind == "node" and not d["ok"]:
        err.print(f"    [red]{d['node']}[/]: {d['reason']}")
    elif kind in ("step", "warning"):
        err.print(("[yellow]! [/]" if kind == "warning" else "• ") + d["message"])
    elif kind == "built":
        err.print(f"• built {d['artifact']} (version {d['version']}, digest {d['digest'][:12]})")


def short(d) -> str:
    return d[:12] if isinstance(d, str) else "-"


def dump(doc) -> None:
    sys.stdout.write(json.dumps(doc, indent=2, sort_keys=True, default=str) + "\n")


def run_done(what: str, result, json_out: bool) -> None:
    if json_out:
        dump({"ok": True, "action": what, "digest": result.state.target, "gate_open": result.gate_open,
               "timings": result.timings})
    else:
        gate_state = "gate open" if result.gate_open else "gate closed"
        out.print(f"[green]{what} done[/]: every node runs {short(result.state.target)}, {gate_state} "
                  f"({result.timings.get('total', 0):.2f}s)")


def plan(rows, json_out: bool) -> None:
    if json_out:
        return dump([r.__dict__ for r in rows])
    t = Table("node", "current", "→ target", "upload", "note", title="plan (dry run: nothing changed)")
    for r in rows:
        t.add_row(r.node, short(r.current), short(r.target), size(r.upload_bytes), r.note)
    out.print(t)


def size(n: int) -> str:
    """Bytes for people: KiB below a MiB, MiB above."""
    return f"{n / 2**10:.1f} KiB" if n < 2**20 else f"{n / 2**20:.1f} MiB"


def verify_table(report) -> None:
    t = Table("node", "disk", "running", "gate", "halted", "result", title=f"expected {short(report.expected)}")
    for n in report.nodes:
        t.add_row(n.node, short(n.disk_digest), short(n.running_digest), n.gate, str(n.halted),
                  "[green]match[/]" if n.ok else "[red]" + "; ".join(n.problems + n.drift) + "[/]")
    out.print(t)
    groups(g.to_dict() for g in report.groups)
    bad = sum(not n.ok for n in report.nodes)
    out.print("[green]all nodes match[/]" if report.ok else f"[red]{bad} of {len(report.nodes)} nodes do not match[/]")


def groups(docs) -> None:
    """The outlier report: one line per group of nodes, the reference group first."""
    for g in docs:
        out.print(("  " if g["reference"] else "[red]! [/]") + g["line"], markup=True, highlight=False)


def gate_table(answers) -> None:
    t = Table("node", "gate", "halted", "running")
    for n, a in answers.items():
        t.add_row(n, a.body.get("gate", "unknown") if a.ok else f"[red]{a.reason()}[/]",
                  str(a.body.get("halted", "?")), short(a.body.get("digest")))
    out.print(t)


def history_table(records) -> None:
    t = Table("when", "who", "action", "phase", "digest", "outcome")
    for r in records:
        t.add_row(str(r.get("ts")), str(r.get("who")), str(r.get("action")), str(r.get("phase", "")),
                  short(r.get("digest")), str(r.get("outcome", "")))
    out.print(t)


def status_table(doc) -> None:
    rows = doc["nodes"]
    t = Table("node", "release", "running", "gate", "halted", "errors", "problem")
    for r in rows:
        t.add_row(r["node"], short(r["release"]), short(r["running"]), str(r["gate"]), str(r["halted"]),
                  str(r["errors"]), r["problem"] or "")
    out.print(t)
    groups(doc["groups"])
    out.print(f"last deploy: {rows[0]['last_deploy'] if rows else '-'}")


def fleet_table(rows) -> None:
    t = Table("node", "container", "ssh", "sshd", "router", "running", "gate", "halted")
    for r in rows:
        t.add_row(r["node"], r["container"], r["ssh"], "up" if r["sshd"] else "[red]down[/]", r["router"],
                  short(r["digest"]), str(r["gate"] or r["problem"]), str(r["halted"]))
    out.print(t)
