"""The `deployctl` command: parses arguments, calls deployctl.api, renders with rich or as JSON.

Every DeployctlError becomes one line on stderr and its documented exit code;
nothing else here decides anything.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import typer
from typer.core import TyperOption

from deployctl import __version__, api
from deployctl.cli import fleetcmds, output, streams
from deployctl.cli.common import JSON, OPTS, context
from deployctl.errors import ExitCode, UsageError, report


def _flag_type(self, ctx):
    """A flag takes no value: its help line shows none (Typer 0.2x prints `<bool>` beside it)."""
    return None if self.is_flag else _option_type(self, ctx)


# Patched on the class, since Typer makes the options itself (mypy refuses any assignment to a method).
_option_type, TyperOption.display_type_rich = TyperOption.display_type_rich, _flag_type  # type: ignore[method-assign]

app = typer.Typer(no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Deploy one artifact to every node, prove every node runs it, gate traffic until all do.")
gate_app = typer.Typer(no_args_is_help=True, help="Open, close or show the order gate of every node.")
app.add_typer(gate_app, name="gate")
app.add_typer(fleetcmds.fleet_app, name="fleet")

@app.callback()
def _global(
    inventory: Path | None = typer.Option(None, "--inventory", "-i", help="Fleet inventory YAML (default: "
                                          "$DEPLOYCTL_INVENTORY, else fleet/fleet.yaml)."),
    playbook: Path = typer.Option(Path("playbooks/router.yaml"), "--playbook", "-p", help="Playbook YAML."),
    state_dir: Path | None = typer.Option(None, "--state-dir", envvar="DEPLOYCTL_STATE",
                                          help="Controller state: keys, journal, lock (default: ./.deployctl)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress lines."),
    version: bool = typer.Option(False, "--version", callback=lambda v: _version(v), is_eager=True,
                                 help="Print deployctl's version and exit."),
) -> None:
    OPTS.update(inventory=inventory, playbook=playbook, state_dir=state_dir, quiet=quiet)


def _version(asked: bool) -> None:
    if asked:
        sys.stdout.write(f"deployctl {__version__}\n")
        raise typer.Exit(0)


@app.command()
def build(out_dir: Path | None = typer.Option(None, "--out", help="Where to write the artifact (default: ./dist)."),
          json_out: bool = JSON) -> None:
    """Build the reproducible, signed release artifact of the playbook's source."""
    art = api.build(context(json_out), out_dir)
    if json_out:
        output.dump({"artifact": str(art.path), "name": art.name, "version": art.version, "digest": art.digest})
    else:
        output.out.print(f"{art.path}\n{art.digest}", markup=False)


@app.command()
def rollout(artifact: Path = typer.Argument(..., help="Artifact tarball from `deployctl build`."),
            dry_run: bool = typer.Option(False, "--dry-run", help="Show the plan node by node; change nothing."),
            break_lock: bool = typer.Option(False, "--break-lock", help="Take over a stale deploy lock."),
            plan: Path | None = typer.Option(None, "--plan", help="An approved plan (`deployctl plan`, "
                                             "`deployctl approve`); required with require_approval."),
            json_out: bool = JSON) -> None:
    """Deploy ARTIFACT to every node of the inventory; open the gate only when every node runs it."""
    ctx = context(json_out)
    if dry_run:
        return output.preview(api.preview_rollout(ctx, artifact), json_out)
    result = api.rollout(ctx, artifact, break_lock=break_lock, plan=plan)
    output.run_done("rollout", result, json_out)


@app.command("plan")
def make_plan(artifact: Path = typer.Argument(..., help="Artifact tarball from `deployctl build`."),
              out: Path = typer.Option(..., "--out", help="Where to write the signed plan (JSON)."),
              key: Path | None = typer.Option(None, "--key", help="Your ed25519 key (default: "
                                              "keys/operator_ed25519 in the state folder, made on first use)."),
              expires_in: int = typer.Option(3600, "--expires-in", help="Seconds until the plan expires."),
              json_out: bool = JSON) -> None:
    """Write a rollout plan for ARTIFACT (every node's current release, an expiry), signed with your key."""
    doc = api.make_plan(context(json_out), artifact, out, key, expires_in)
    if json_out:
        return output.dump(doc)
    body = doc["plan"]
    output.out.print(f"plan for {body['digest'][:12]} on {len(body['nodes'])} nodes written to {out}, signed by "
                     f"{body['planner'][:12]}, expires in {expires_in}s: a second person runs `deployctl approve {out}"
                     " --key THEIR_KEY`", markup=False)


@app.command()
def approve(plan: Path = typer.Argument(..., help="A plan written by `deployctl plan`."),
            key: Path = typer.Option(..., "--key", help="Your ed25519 key: one of the playbook's approvers, "
                                     "not the planner's."),
            json_out: bool = JSON) -> None:
    """Approve a rollout plan with a second person's key (the two-person rule)."""
    doc = api.approve_plan(context(json_out), plan, key)
    if json_out:
        return output.dump(doc)
    output.out.print(f"approved {plan}: release {doc['plan']['digest'][:12]}, approver "
                     f"{doc['signatures']['approver']['key'][:12]}", markup=False)


@app.command()
def keygen(path: Path = typer.Argument(..., help="Where to write the private key (the public one goes to PATH.pub).")
           ) -> None:
    """Make an ed25519 key pair for signing or approving plans; print the public key (for `approvers`)."""
    output.out.print(api.keygen(path), markup=False)


@app.command()
def verify(expect: str | None = typer.Option(None, "--expect", help="Expected release digest, or a unique prefix "
                                             "of 8+ characters (default: the last successful rollout's)."),
           json_out: bool = JSON) -> None:
    """Check every node's files on disk and running process against the expected release (the pre-open gate)."""
    ctx = context(json_out)
    warning = api.interrupted(ctx)
    if warning:
        output.err.print(f"[yellow]! {output.esc(warning)}[/]")
    report = api.verify(ctx, expect)
    if json_out:
        output.dump(report.to_dict())
    else:
        output.verify_table(report)
    raise typer.Exit(int(report.exit_code))


@app.command()
def rollback(all_nodes: bool = typer.Option(False, "--all", help="Every node (the only safe way)."),
             to: str | None = typer.Option(None, "--to", help="Release digest (or a unique prefix of 8+ characters) "
                                           "to go back to (default: previous)."),
             node: list[str] | None = typer.Option(None, "--node", help="Only this node (needs --force)."),
             force: bool = typer.Option(False, "--force", help="Allow rolling back only some nodes."),
             dry_run: bool = typer.Option(False, "--dry-run", help="Show the plan; change nothing."),
             break_lock: bool = typer.Option(False, "--break-lock", help="Take over a stale deploy lock."),
             json_out: bool = JSON) -> None:
    """Switch the whole fleet back to the previous release (or --to DIGEST) as one step, gate closed."""
    if all_nodes == bool(node):
        raise UsageError("rollback: say --all, or --node NAME --force for a partial rollback")
    ctx = context(json_out)
    if dry_run:
        return output.preview(api.preview_rollback(ctx, to=to), json_out)
    result = api.rollback(ctx, to=to, nodes=node, force=force, break_lock=break_lock)
    output.run_done("rollback", result, json_out)


@app.command()
def recover(json_out: bool = JSON,
            break_lock: bool = typer.Option(False, "--break-lock",
                                            help="Take over the fleet deploy lock on the nodes.")) -> None:
    """After an interrupted rollout: bring every node to one release (the last good), gate closed."""
    output.run_done("recover", api.recover(context(json_out), break_lock=break_lock), json_out)


@gate_app.command("open")
def gate_open(expect: str | None = typer.Option(None, "--expect"), json_out: bool = JSON) -> None:
    """Verify every node, then open every gate; refuse on any mismatch."""
    report = api.gate_open(context(json_out), expect)
    output.dump(report.to_dict()) if json_out else output.out.print(f"[green]gate open[/] on {len(report.nodes)} nodes")


@gate_app.command("close")
def gate_close(json_out: bool = JSON) -> None:
    """Close every gate."""
    answers = api.gate_close(context(json_out))
    if json_out:
        output.dump({n: a.body for n, a in answers.items()})
    else:
        output.out.print(f"gate closed on {len(answers)} nodes")


@gate_app.command("status")
def gate_status(json_out: bool = JSON) -> None:
    """Show every node's gate and halt state."""
    answers = api.gate_status(context(json_out))
    if json_out:
        output.dump({n: (a.body if a.ok else {"error": a.reason()}) for n, a in answers.items()})
    else:
        output.gate_table(answers)
    _unreachable_exit(api.unreachable_routers(answers), json_out)


def _unreachable_exit(line: str | None, say: bool) -> None:
    """A read-only command's ending: exit 4 if a node was not reached (`say`: naming them on stderr, where
    the table has not already), else 0; its table or JSON is printed either way."""
    if line is None:
        return
    if say:
        output.err.print(f"deployctl: {line}", markup=False)
    raise typer.Exit(int(ExitCode.UNREACHABLE))


@app.command()
def halt(json_out: bool = JSON) -> None:
    """Kill switch: stop routing on every node at once (no lock needed)."""
    done = api.halt(context(json_out))
    output.dump(done) if json_out else output.out.print("[bold red]halted[/]: " + ", ".join(done))


@app.command()
def resume(expect: str | None = typer.Option(None, "--expect"), json_out: bool = JSON) -> None:
    """Lift the halt on every node once verify passes; the gate stays closed until `gate open`."""
    report = api.resume(context(json_out), expect)
    if json_out:
        output.dump(report.to_dict())
    else:
        output.out.print("resumed; gate still closed: run `deployctl gate open`")


@app.command()
def enroll(nodes: list[str] | None = typer.Argument(None, help="Nodes of the inventory (default: all)."),
           dry_run: bool = typer.Option(False, "--dry-run", help="Show per node what would change; change nothing."),
           fingerprint: list[str] | None = typer.Option(None, "--fingerprint",
                                                        help="NODE=SHA256:... pins that node's host key."),
           sudo_password_env: str | None = typer.Option(None, "--sudo-password-env", metavar="VAR",
                                                         help="Read the sudo password from this variable."),
           json_out: bool = JSON) -> None:
    """Prepare plain servers of the inventory: install root, token, signing key, service, sudoers rule."""
    password = None
    if sudo_password_env:
        password = os.environ.get(sudo_password_env)
        if password is None:
            raise UsageError(f"--sudo-password-env: variable {sudo_password_env} is not set")
    interactive, ctx = streams.is_terminal(sys.stdin) and not json_out, context(json_out)
    if password is None and interactive and any(n.user != "root" for n in ctx.nodes):
        import getpass

        password = getpass.getpass("sudo password (empty: sudo -n): ") or None
    ask = _ask_host_key if interactive else None
    results = api.enroll(ctx, nodes or None, dry_run, password, fingerprint or (), ask)
    output.enroll_table(results, dry_run, json_out)


def _ask_host_key(node: str, where: str, kind: str, fingerprint: str) -> bool:
    return typer.confirm(f"{node}: {where} presents the unknown host key {kind} {fingerprint}. Pin it?", default=False)


@app.command()
def history(limit: int | None = typer.Option(None, "--limit", min=1), json_out: bool = JSON) -> None:
    """Show the deploy journal, oldest first."""
    records = api.history(context(json_out), limit)
    if json_out:
        return output.dump(records)
    output.history_table(records)


@app.command()
def status(json_out: bool = JSON) -> None:
    """One table of the fleet: release, running digest, gate, halt, errors, last deploy; nodes grouped by release."""
    doc = api.status(context(json_out))
    if json_out:
        output.dump(doc)
    else:
        output.status_table(doc)
    _unreachable_exit(doc["unreachable"], json_out)


@app.command()
def watch(interval: float = typer.Option(1.0, "--interval", min=0.1, max=1.0,
                                         help="Seconds between sweeps (at most 1)."),
          sweeps: int | None = typer.Option(None, "--sweeps", min=1, help="Stop after this many sweeps "
                                            "(default: until q, or a breaker trips when not on a terminal).")
          ) -> None:
    """Live view of the fleet, read every second; the playbook's breakers halt the whole fleet. Keys: h halts, q quits.

    When stdout is not a terminal: one JSON line per sweep, a line on stderr whenever the nodes not reached
    change, and a tripped breaker ends it with exit 7. With --sweeps, exit 4 if the last sweep missed a node."""
    ctx = context(True)
    last: list[str | None] = [None]
    if not streams.is_terminal(sys.stdout):
        def line(sweep) -> None:
            output.watch_line(sweep)
            down = sweep.unreachable()
            if down != last[0]:
                output.err.print(f"deployctl: watch: {down or 'every node answers again'}", markup=False)
            last[0] = down

        api.watch(ctx, line, interval, sweeps, stop_on_trip=True)
    else:
        with output.WatchScreen() as screen:
            def show(sweep) -> None:
                screen.show(sweep)
                last[0] = sweep.unreachable()

            api.watch(ctx, show, interval, sweeps, key=screen.key)
    if sweeps is not None:
        _unreachable_exit(last[0], False)


def main() -> None:
    """Entry point: run the app and exit with its code; no failed write to stdout or stderr changes it
    (cli/streams.py)."""
    streams.protect()
    streams.exit_now(_run())


def _run() -> int:
    """Run the app; map errors to one line and an exit code, never a traceback."""
    try:
        code = app(standalone_mode=False)
        return int(code or 0)
    except typer.Exit as exc:
        return exc.exit_code
    except typer.Abort:
        output.err.print("deployctl: aborted")
        return ExitCode.FAILED
    except typer.TyperException as exc:  # typer's usage errors: bad option, missing argument
        if type(exc).__name__ == "NoArgsIsHelpError":  # its help is printed (on stdout) already; as Typer
            return ExitCode.OK  # tells it apart, by name: typer._click is private
        text = exc.format_message() if hasattr(exc, "format_message") else str(exc)
        output.err.print(f"deployctl: error: {' '.join(text.split())} (see --help)", markup=False)
        return ExitCode.USAGE
    except (KeyboardInterrupt, Exception) as exc:  # the promise is one line, never a traceback
        return report(exc, lambda text: output.err.print(text, markup=False))


