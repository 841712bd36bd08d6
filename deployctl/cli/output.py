"""What the CLI prints: rich tables and progress on a terminal, one JSON document with --json.

rich is imported on first use only: `--json` and `-q` runs never pay for its import.
"""

from __future__ import annotations

import json
import sys
import threading
import time

# typing.TYPE_CHECKING without importing typing, which the fast halt door does not load otherwise.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from rich.console import Console
    from rich.progress import Progress, TaskID


def _width() -> int | None:
    """Not a terminal (CI logs, pipes, a closed stdout): wide enough that digests and addresses are not cut.
    Asked when the first Console is made, never at import: stdout may be None then (it was closed)."""
    try:
        return None if sys.stdout is not None and sys.stdout.isatty() else 160
    except (OSError, ValueError):
        return 160


class _Console:
    """A rich Console made on first use: `--json` and `-q` runs never import rich."""

    def __init__(self, **options) -> None:
        self._options: dict[str, Any] = options
        self._console: Console | None = None

    def made(self) -> Console:
        """Return the rich Console, making it on the first call."""
        if self._console is None:
            from rich.console import Console

            self._console = Console(highlight=False, soft_wrap=True, width=_width(), **self._options)
        return self._console

    def __getattr__(self, name: str):
        return getattr(self.made(), name)


def Table(*columns, **options):  # noqa: N802 - stands in for rich's Table, imported on first use
    """A rich Table whose text cells are never read as markup: node names, reasons, digests and flags
    come from the nodes, and a `[/x]` in one would raise MarkupError (or restyle the row)."""
    from rich.table import Table as RichTable
    from rich.text import Text

    class PlainCells(RichTable):
        def add_row(self, *cells, **kwargs) -> None:
            super().add_row(*(Text(c) if isinstance(c, str) else c for c in cells), **kwargs)

    return PlainCells(*columns, **options)


def styled(style: str, text: str):
    """One table cell in `style`, its text taken as it is (no markup)."""
    from rich.text import Text

    return Text(text, style=style)


def esc(value) -> str:
    """`value` as text for a line that also carries our own markup: its brackets are escaped."""
    from rich.markup import escape

    return escape(str(value))


out = _Console()
err = _Console(stderr=True)


class _Uploads:
    """Per-node upload bars on a terminal, shown only once an upload has run for about a second
    (a short upload would only flicker). Events arrive from the SSH worker threads."""

    DELAY = 1.0

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.started: float | None = None
        self.bars: Progress | None = None
        self.tasks: dict[str, TaskID] = {}
        self.last: dict[str, tuple[int, int]] = {}

    def update(self, node: str, sent: int, total: int) -> None:
        with self.lock:
            self.last[node] = (sent, total)
            started = self.started = self.started or time.monotonic()
            if self.bars is None and time.monotonic() - started >= self.DELAY and err.is_terminal:
                from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

                bars = self.bars = Progress(TextColumn("    {task.description}"), BarColumn(), DownloadColumn(),
                                            TransferSpeedColumn(), console=err.made(), transient=True)
                bars.start()
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
        err.print(f"    [red]{esc(d['node'])}[/]: {esc(d['reason'])}")
    elif kind in ("step", "warning"):
        err.print(("[yellow]! [/]" if kind == "warning" else "• ") + esc(d["message"]))
    elif kind == "built":
        err.print(f"• built {esc(d['artifact'])} (version {esc(d['version'])}, digest {d['digest'][:12]})")


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


def preview(rows, json_out: bool) -> None:
    if json_out:
        return dump([r.__dict__ for r in rows])
    t = Table("node", "current", "→ target", "upload", "note", title="plan (dry run: nothing changed)")
    for r in rows:
        t.add_row(r.node, short(r.current), short(r.target), size(r.upload_bytes), r.note)
    out.print(t)


def enroll_table(results, dry_run: bool, json_out: bool) -> None:
    """One row per node: what enroll changed (or, for a dry run, would change), and host keys pinned."""
    if json_out:
        return dump({r.node: {"steps": r.steps, "pinned": r.pinned, "changed": bool(r.steps) and not dry_run}
                     for r in results.values()})
    t = Table("node", "would change" if dry_run else "changed", "host key pinned",
              title="enroll (dry run: nothing changed)" if dry_run else "enroll")
    for r in results.values():
        t.add_row(r.node, "\n".join(r.steps) or "nothing to change", "\n".join(r.pinned) or "-")
    out.print(t)


def size(n: int) -> str:
    """Bytes for people: KiB below a MiB, MiB above."""
    return f"{n / 2**10:.1f} KiB" if n < 2**20 else f"{n / 2**20:.1f} MiB"


def verify_table(report) -> None:
    t = Table("node", "disk", "running", "gate", "halted", "result", title=f"expected {short(report.expected)}")
    for n in report.nodes:
        t.add_row(n.node, short(n.disk_digest), short(n.running_digest), n.gate, str(n.halted),
                  styled("green", "match") if n.ok else styled("red", "; ".join(n.problems + n.drift)))
    out.print(t)
    groups(g.to_dict() for g in report.groups)
    bad = sum(not n.ok for n in report.nodes)
    out.print("[green]all nodes match[/]" if report.ok else f"[red]{bad} of {len(report.nodes)} nodes do not match[/]")


def groups(docs) -> None:
    """The outlier report: one line per group of nodes, the reference group first."""
    for g in docs:
        out.print(("  " if g["reference"] else "[red]! [/]") + esc(g["line"]), markup=True, highlight=False)


def gate_table(answers) -> None:
    t = Table("node", "gate", "halted", "running")
    for n, a in answers.items():
        t.add_row(n, str(a.body.get("gate", "unknown")) if a.ok else styled("red", a.reason()),
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


def bare_table(rows, fingerprints=None) -> None:
    t = Table("node", "container", "ssh", "sshd", *(["host key"] if fingerprints else []))
    for r in rows:
        t.add_row(r["node"], r["container"], r["ssh"], "up" if r["sshd"] else styled("red", "down"),
                  *([fingerprints.get(r["node"], "-")] if fingerprints else []))
    out.print(t)


def fleet_table(rows) -> None:
    t = Table("node", "container", "ssh", "sshd", "router", "running", "gate", "halted")
    for r in rows:
        t.add_row(r["node"], r["container"], r["ssh"], "up" if r["sshd"] else styled("red", "down"), r["router"],
                  short(r["digest"]), str(r["gate"] or r["problem"]), str(r["halted"]))
    out.print(t)


def watch_line(sweep) -> None:
    """One JSON line per watch sweep (stdout not a terminal: a log or an alerting system reads it)."""
    sys.stdout.write(json.dumps(sweep.to_dict(), sort_keys=True) + "\n")
    sys.stdout.flush()


def _rate(value) -> str:
    return "-" if value is None else f"{value:.0f}"


def watch_view(sweep):
    """The live view of one sweep: the outlier line on top, one row per node, and any breaker or halt."""
    from rich.console import Group
    from rich.text import Text

    t = Table("node", "release", "running", "gate", "halted", "orders/s", "child/s", "rejects", "errors",
              "last deploy", "problem", title=Text(sweep.outliers, style="bold"))
    for r in sweep.rows():
        deployed = time.strftime("%H:%M:%S", time.localtime(r["last_deploy"])) if r["last_deploy"] else "-"
        t.add_row(r["node"], short(r["release"]), short(r["running"]), r["gate"], str(r["halted"]),
                  _rate(r["orders_per_s"]), _rate(r["child_orders_per_s"]), str(r["rejects"]), str(r["errors"]),
                  deployed, r["problem"] or "")
    lines = [Text(f"BREAKER {t_.line}", style="bold red") for t_ in sweep.trips]
    if sweep.halted:
        lines.append(Text(f"fleet halted ({sweep.halted}): " + ", ".join(f"{n} {v}" for n, v in sweep.halt.items()),
                          style="bold red"))
    lines.append(Text(f"sweep {sweep.took * 1000:.0f} ms   h: halt the whole fleet   q: quit", style="dim"))
    return Group(t, *lines)


class WatchScreen:
    """rich Live on a terminal in cbreak mode: `show(sweep)` redraws, `key(seconds)` waits for h or q."""

    def __enter__(self):
        import termios
        import tty

        from rich.live import Live

        self._fd = sys.stdin.fileno() if sys.stdin is not None and sys.stdin.isatty() else None
        if self._fd is not None:
            self._saved = termios.tcgetattr(self._fd)
            tty.setcbreak(self._fd)
        self._live = Live(console=out.made(), auto_refresh=False)
        self._live.__enter__()
        return self

    def show(self, sweep) -> None:
        self._live.update(watch_view(sweep), refresh=True)

    def key(self, seconds: float):
        """Wait up to `seconds` for a key; return "h", "q" or None."""
        import select

        if self._fd is None:
            time.sleep(seconds)
            return None
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            ready, _, _ = select.select([self._fd], [], [], left)
            if ready:
                pressed = sys.stdin.read(1).lower()
                if pressed in ("h", "q"):
                    return pressed
        return None

    def __exit__(self, *exc) -> None:
        self._live.__exit__(*exc)
        if self._fd is not None:
            import termios

            termios.tcsetattr(self._fd, termios.TCSADRAIN, self._saved)
