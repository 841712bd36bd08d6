"""The `deployctl` command: parses arguments, calls deployctl.api, renders with rich or as JSON.

Every DeployctlError becomes one line on stderr and its documented exit code;
nothing else here decides anything.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import List, Optional

import typer
from typer.core import TyperOption

from deployctl import __version__, api
from deployctl.errors import DeployctlError, ExitCode, UsageError

def _flag_type(self, ctx):
    """A flag takes no value: its help line shows none (Typer 0.2x prints `<bool>` beside it)."""
    return None if self.is_flag else _option_type(self, ctx)


_option_type, TyperOption.display_type_rich = TyperOption.display_type_rich, _flag_type

app = typer.Typer(no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Deploy one artifact to every node, prove every node runs it, gate traffic until all do.")
gate_app = typer.Typer(no_args_is_help=True, help="Open, close or show the order gate of every node.")
fleet_app = typer.Typer(no_args_is_help=True, help="The Docker-composed test fleet of N nodes: up, down, status.")
app.add_typer(gate_app, name="gate")
app.add_typer(fleet_app, name="fleet")

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
_opts: dict = {}

JSON = typer.Option(False, "--json", help="Print one JSON document on stdout instead of tables.")


@app.callback()
def _global(
    inventory: Path = typer.Option(Path("fleet/fleet.yaml"), "--inventory", "-i", help="Fleet inventory YAML."),
    playbook: Path = typer.Option(Path("playbooks/router.yaml"), "--playbook", "-p", help="Playbook YAML."),
    state_dir: Optional[Path] = typer.Option(None, "--state-dir", envvar="DEPLOYCTL_STATE",
                                             help="Controller state: keys, journal, lock (default: ./.deployctl)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress lines."),
    version: bool = typer.Option(False, "--version", callback=lambda v: _version(v), is_eager=True,
                                 help="Print deployctl's version and exit."),
) -> None:
    _opts.update(inventory=inventory, playbook=playbook, state_dir=state_dir, quiet=quiet)


def _version(asked: bool) -> None:
    if asked:
        sys.stdout.write(f"deployctl {__version__}\n")
        raise typer.Exit(0)


def _ctx(json_mode: bool = False) -> api.Context:
    sink = (lambda kind, **data: None) if (json_mode or _opts.get("quiet")) else _progress
    return api.open_context(_opts["inventory"], _opts["playbook"], _opts["state_dir"], sink)


class _Uploads:
    """Per-node upload bars on a terminal, shown only once an upload has run for about a second
    (a short upload would only flicker). Events arrive from the SSH worker threads."""

    DELAY = 1.0

    def __init__(self) -> None:
        import threading

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


def _progress(kind: str, **d) -> None:
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


def _short(d) -> str:
    return d[:12] if isinstance(d, str) else "-"


def _dump(doc) -> None:
    sys.stdout.write(json.dumps(doc, indent=2, sort_keys=True, default=str) + "\n")


@app.command()
def build(out_dir: Optional[Path] = typer.Option(None, "--out", help="Where to write the artifact (default: ./dist)."),
          json_out: bool = JSON) -> None:
    """Build the reproducible, signed release artifact of the playbook's source."""
    art = api.build(_ctx(json_out), out_dir)
    if json_out:
        _dump({"artifact": str(art.path), "name": art.name, "version": art.version, "digest": art.digest})
    else:
        out.print(f"{art.path}\n{art.digest}")


@app.command()
def rollout(artifact: Path = typer.Argument(..., help="Artifact tarball from `deployctl build`."),
            dry_run: bool = typer.Option(False, "--dry-run", help="Show the plan node by node; change nothing."),
            break_lock: bool = typer.Option(False, "--break-lock", help="Take over a stale deploy lock."),
            json_out: bool = JSON) -> None:
    """Deploy ARTIFACT to every node of the inventory; open the gate only when every node runs it."""
    ctx = _ctx(json_out)
    if dry_run:
        return _plan(api.plan_rollout(ctx, artifact), json_out)
    result = api.rollout(ctx, artifact, break_lock=break_lock)
    _run_done("rollout", result, json_out)


def _run_done(what: str, result, json_out: bool) -> None:
    if json_out:
        _dump({"ok": True, "action": what, "digest": result.state.target, "gate_open": result.gate_open,
               "timings": result.timings})
    else:
        gate_state = "gate open" if result.gate_open else "gate closed"
        out.print(f"[green]{what} done[/]: every node runs {_short(result.state.target)}, {gate_state} "
                  f"({result.timings.get('total', 0):.2f}s)")


def _plan(rows, json_out: bool) -> None:
    if json_out:
        return _dump([r.__dict__ for r in rows])
    t = Table("node", "current", "→ target", "upload", "note", title="plan (dry run: nothing changed)")
    for r in rows:
        t.add_row(r.node, _short(r.current), _short(r.target), f"{r.upload_bytes / 2**20:.1f} MiB", r.note)
    out.print(t)


@app.command()
def verify(expect: Optional[str] = typer.Option(None, "--expect", help="Expected release digest "
                                                "(default: the last successful rollout's)."),
           json_out: bool = JSON) -> None:
    """Check every node's files on disk and running process against the expected release (the pre-open gate)."""
    ctx = _ctx(json_out)
    warning = api.interrupted(ctx)
    if warning:
        err.print(f"[yellow]! {warning}[/]")
    report = api.verify(ctx, expect)
    if json_out:
        _dump(report.to_dict())
    else:
        _verify_table(report)
    raise typer.Exit(int(report.exit_code))


def _verify_table(report) -> None:
    t = Table("node", "disk", "running", "gate", "halted", "result", title=f"expected {_short(report.expected)}")
    for n in report.nodes:
        t.add_row(n.node, _short(n.disk_digest), _short(n.running_digest), n.gate, str(n.halted),
                  "[green]match[/]" if n.ok else "[red]" + "; ".join(n.problems + n.drift) + "[/]")
    out.print(t)
    bad = sum(not n.ok for n in report.nodes)
    out.print("[green]all nodes match[/]" if report.ok else f"[red]{bad} of {len(report.nodes)} nodes do not match[/]")


@app.command()
def rollback(all_nodes: bool = typer.Option(False, "--all", help="Every node (the only safe way)."),
             to: Optional[str] = typer.Option(None, "--to", help="Release digest to go back to (default: previous)."),
             node: Optional[List[str]] = typer.Option(None, "--node", help="Only this node (needs --force)."),
             force: bool = typer.Option(False, "--force", help="Allow rolling back only some nodes."),
             dry_run: bool = typer.Option(False, "--dry-run", help="Show the plan; change nothing."),
             break_lock: bool = typer.Option(False, "--break-lock", help="Take over a stale deploy lock."),
             json_out: bool = JSON) -> None:
    """Switch the whole fleet back to the previous release (or --to DIGEST) as one step, gate closed."""
    if all_nodes == bool(node):
        raise UsageError("rollback: say --all, or --node NAME --force for a partial rollback")
    ctx = _ctx(json_out)
    if dry_run:
        return _plan(api.plan_rollback(ctx, to=to), json_out)
    result = api.rollback(ctx, to=to, nodes=node, force=force, break_lock=break_lock)
    _run_done("rollback", result, json_out)


@app.command()
def recover(json_out: bool = JSON) -> None:
    """After an interrupted rollout: bring every node to one release (the last good), gate closed."""
    _run_done("recover", api.recover(_ctx(json_out)), json_out)


@gate_app.command("open")
def gate_open(expect: Optional[str] = typer.Option(None, "--expect"), json_out: bool = JSON) -> None:
    """Verify every node, then open every gate; refuse on any mismatch."""
    report = api.gate_open(_ctx(json_out), expect)
    _dump(report.to_dict()) if json_out else out.print(f"[green]gate open[/] on {len(report.nodes)} nodes")


@gate_app.command("close")
def gate_close(json_out: bool = JSON) -> None:
    """Close every gate."""
    answers = api.gate_close(_ctx(json_out))
    _dump({n: a.body for n, a in answers.items()}) if json_out else out.print(f"gate closed on {len(answers)} nodes")


@gate_app.command("status")
def gate_status(json_out: bool = JSON) -> None:
    """Show every node's gate and halt state."""
    answers = api.gate_status(_ctx(json_out))
    if json_out:
        return _dump({n: (a.body if a.ok else {"error": a.reason()}) for n, a in answers.items()})
    t = Table("node", "gate", "halted", "running")
    for n, a in answers.items():
        t.add_row(n, a.body.get("gate", "unknown") if a.ok else f"[red]{a.reason()}[/]",
                  str(a.body.get("halted", "?")), _short(a.body.get("digest")))
    out.print(t)


@app.command()
def halt(json_out: bool = JSON) -> None:
    """Kill switch: stop routing on every node at once (no lock needed)."""
    done = api.halt(_ctx(json_out))
    _dump(done) if json_out else out.print("[bold red]halted[/]: " + ", ".join(done))


@app.command()
def resume(expect: Optional[str] = typer.Option(None, "--expect"), json_out: bool = JSON) -> None:
    """Lift the halt on every node once verify passes; the gate stays closed until `gate open`."""
    report = api.resume(_ctx(json_out), expect)
    _dump(report.to_dict()) if json_out else out.print("resumed; gate still closed: run `deployctl gate open`")


@app.command()
def history(limit: Optional[int] = typer.Option(None, "--limit", min=1), json_out: bool = JSON) -> None:
    """Show the deploy journal, oldest first."""
    records = api.history(_ctx(json_out), limit)
    if json_out:
        return _dump(records)
    t = Table("when", "who", "action", "phase", "digest", "outcome")
    for r in records:
        t.add_row(str(r.get("ts")), str(r.get("who")), str(r.get("action")), str(r.get("phase", "")),
                  _short(r.get("digest")), str(r.get("outcome", "")))
    out.print(t)


@app.command()
def status(json_out: bool = JSON) -> None:
    """One table of the fleet: release, running digest, gate, halt, errors, last deploy."""
    rows = api.status(_ctx(json_out))
    if json_out:
        return _dump(rows)
    t = Table("node", "release", "running", "gate", "halted", "errors", "problem")
    for r in rows:
        t.add_row(r["node"], _short(r["release"]), _short(r["running"]), str(r["gate"]), str(r["halted"]),
                  str(r["errors"]), r["problem"] or "")
    out.print(t)
    out.print(f"last deploy: {rows[0]['last_deploy'] if rows else '-'}")


COMPOSE = typer.Option(Path("containers/compose.yaml"), "--compose", help="The fleet's compose file.")


@fleet_app.command("up")
def fleet_up(compose: Path = COMPOSE,
             nodes: Optional[int] = typer.Option(None, "--nodes", help="Write the compose file and the inventory "
                                                 "for this many nodes (1-64) first; default: use them as they are."),
             project: str = typer.Option("deployctl-fleet", "--project", help="Docker project name (with --nodes)."),
             first_ssh_port: int = typer.Option(2201, "--first-ssh-port", help="node1's SSH port (with --nodes)."),
             first_router_port: int = typer.Option(8101, "--first-router-port",
                                                   help="node1's router port (with --nodes).")) -> None:
    """Build the node image if needed, start the inventory's nodes, install the first release, wait until all answer."""
    start = time.monotonic()
    if nodes is not None:
        api.write_fleet_files(_opts["inventory"], compose, nodes, project, first_ssh_port, first_router_port)
    ctx = _ctx()
    api.fleet_up(ctx, compose)
    _fleet_table(api.fleet_status(ctx, compose))
    out.print(f"fleet up in {time.monotonic() - start:.1f}s")


@fleet_app.command("down")
def fleet_down(compose: Path = COMPOSE,
               keep_images: bool = typer.Option(False, "--keep-images", help="Keep the built images.")) -> None:
    """Remove everything `fleet up` made (containers, network, images); idempotent."""
    removed = api.fleet_down(_ctx(), compose, keep_images)
    out.print("removed: " + (", ".join(removed) if removed else "nothing (fleet already down)"))


@fleet_app.command("status")
def fleet_status(compose: Path = COMPOSE, json_out: bool = JSON) -> None:
    """A table of the nodes: container, sshd, router, running digest, gate."""
    rows = api.fleet_status(_ctx(json_out), compose)
    _dump(rows) if json_out else _fleet_table(rows)


def _fleet_table(rows) -> None:
    t = Table("node", "container", "ssh", "sshd", "router", "running", "gate", "halted")
    for r in rows:
        t.add_row(r["node"], r["container"], r["ssh"], "up" if r["sshd"] else "[red]down[/]", r["router"],
                  _short(r["digest"]), str(r["gate"] or r["problem"]), str(r["halted"]))
    out.print(t)


def main() -> None:
    """Entry point: run the app and exit with its code (see _exit)."""
    _exit(_run())


def _run() -> int:
    """Run the app; map errors to one line and an exit code, never a traceback."""
    try:
        code = app(standalone_mode=False)
        return int(code or 0)
    except typer.Exit as exc:
        return exc.exit_code
    except typer.Abort:
        err.print("deployctl: aborted")
        return ExitCode.FAILED
    except DeployctlError as exc:
        err.print(f"deployctl: error: {exc}", markup=False)
        return int(exc.exit_code)
    except typer.TyperException as exc:  # typer's usage errors: bad option, missing argument
        text = exc.format_message() if hasattr(exc, "format_message") else str(exc)
        err.print(f"deployctl: error: {' '.join(text.split())} (see --help)", markup=False)
        return ExitCode.USAGE
    except KeyboardInterrupt:
        err.print("deployctl: interrupted")
        return 130
    except Exception as exc:  # the promise is one line, never a traceback
        if os.environ.get("DEPLOYCTL_DEBUG"):
            raise
        err.print(f"deployctl: internal error: {type(exc).__name__}: {exc}", markup=False)
        return ExitCode.FAILED


def _exit(code: int) -> None:
    """Flush stdout and stderr, then end the process without the interpreter's teardown.

    By now every command has closed what it opened: the lock is released, each journal record
    was fsynced when written, SSH connections are closed. What is left is freeing modules and
    joining idle worker threads, about 50 ms on every command (a CI gate runs many).
    """
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe: nothing more can be said there
            code = code or ExitCode.FAILED
    os._exit(int(code) & 0xFF)
