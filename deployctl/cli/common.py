"""What every command of the CLI shares: the global options, the --json option and the Context they open."""

from __future__ import annotations

import typer

from deployctl import api
from deployctl.cli import output

OPTS: dict = {}  # the global options (-i, -p, --state-dir, -q), set by the app's callback

JSON = typer.Option(False, "--json", help="Print one JSON document on stdout instead of tables.")


def context(json_mode: bool = False) -> api.Context:
    """Open the Context the global options name; progress lines go to stderr unless quiet or --json."""
    sink = (lambda kind, **data: None) if (json_mode or OPTS.get("quiet")) else output.progress
    inventory = OPTS["inventory"] or api.default_inventory()
    return api.open_context(inventory, OPTS["playbook"], OPTS["state_dir"], sink)
