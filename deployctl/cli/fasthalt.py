"""The kill switch's fast door: `deployctl [global options] halt [--json]` without Typer.

Typer (0.29) imports pydantic to parse arguments: together most of a halt's start-up, and a halt
is the one command where every millisecond before the requests go out is time the fleet still
routes orders. This module parses exactly the global options and `halt [--json]`; anything else
(help, other commands, anything it does not know) returns None, and cli/app.py's Typer app runs.
Output, errors and exit codes are those of cli/app.py's `halt` (tests/process/cli/test_fasthalt.py checks).
"""

from __future__ import annotations

import os
from pathlib import Path

from deployctl import api
from deployctl.cli import output
from deployctl.errors import report

VALUED = {"-i": "inventory", "--inventory": "inventory", "-p": "playbook", "--playbook": "playbook",
          "--state-dir": "state_dir"}


def parse(argv: list[str]) -> dict | None:
    """Return the options of a `halt` command line, or None if it is anything else."""
    opts: dict = {"inventory": api.default_inventory(), "playbook": Path("playbooks/router.yaml"),
                  "state_dir": Path(os.environ["DEPLOYCTL_STATE"]) if os.environ.get("DEPLOYCTL_STATE") else None,
                  "quiet": False, "json": False}
    args = list(argv)
    while args and args[0] != "halt":
        arg = args.pop(0)
        name, equals, value = arg.partition("=")
        if arg in ("-q", "--quiet"):
            opts["quiet"] = True
        elif name in VALUED and (equals and name.startswith("--") or not equals and args):
            value = value if equals else args.pop(0)
            if not value or value.startswith("-"):
                return None  # let Typer say what is wrong
            opts[VALUED[name]] = Path(value)
        else:
            return None
    if args[:1] != ["halt"] or args[1:] not in ([], ["--json"]):
        return None
    opts["json"] = args[1:] == ["--json"]
    return opts


def run(argv: list[str]) -> int | None:
    """Run `halt` if argv is a halt command line and return its exit code; None for anything else."""
    opts = parse(argv)
    if opts is None:
        return None
    try:
        sink = (lambda kind, **data: None) if (opts["json"] or opts["quiet"]) else output.progress
        done = api.halt(api.open_context(opts["inventory"], opts["playbook"], opts["state_dir"], sink))
        output.dump(done) if opts["json"] else output.out.print("[bold red]halted[/]: " + ", ".join(done))
        return 0
    except (KeyboardInterrupt, Exception) as exc:  # one line, never a traceback (as cli)
        return report(exc, lambda text: output.err.print(text, markup=False))


