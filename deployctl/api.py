"""The library's facade: everything `deployctl` does, callable from Python, and the CLI's single door.

Re-exports only. Open a Context, then call the commands with it; nothing prints (progress goes to
the Context's `on_event` callback), results come back as values, failures as DeployctlError with
the exit code the CLI uses::

    from deployctl import api
    ctx = api.open_context(Path("fleet/fleet.yaml"), Path("playbooks/router.yaml"))
    api.rollout(ctx, Path("dist/order-router-1.0.0-ab12cd34ef56.tar"))
    report = api.verify(ctx)          # report.ok, report.exit_code, report.to_dict()

Each name is imported from its module on first use (PEP 562), so a command loads only what it
uses: `verify`, `halt` and `gate` never load the artifact or rollout code. The test fleets have a
facade of their own, deployctl/testfleet/api.py.
"""

from __future__ import annotations

import importlib

# name -> (module, name there)
EXPORTS = {
    "default_inventory": ("config.inventory", "default_inventory"),
    "Context": ("ops.context", "Context"), "Event": ("ops.context", "Event"),
    "open_context": ("ops.context", "open_context"),
    "verify": ("ops.control", "verify"), "status": ("ops.control", "status"), "history": ("ops.control", "history"),
    "gate_status": ("ops.control", "gate_status"), "unreachable_routers": ("ops.control", "unreachable_routers"),
    "gate_open": ("ops.control", "gate_open"),
    "gate_close": ("ops.control", "gate_close"), "halt": ("ops.control", "halt"), "resume": ("ops.control", "resume"),
    "build": ("ops.rollout", "build"), "rollout": ("ops.rollout", "rollout"),
    "preview_rollout": ("ops.rollout", "preview"),
    "rollback": ("ops.rollback", "rollback"), "recover": ("ops.rollback", "recover"),
    "preview_rollback": ("ops.rollback", "preview"),
    "PreviewRow": ("ops.results", "PreviewRow"), "RunResult": ("ops.results", "RunResult"),
    "interrupted": ("ops.guards", "interrupted"),
    "VerifyReport": ("model.verify", "VerifyReport"),
    "watch": ("ops.watch", "watch"),
    "make_plan": ("ops.twoperson", "plan"), "approve_plan": ("ops.twoperson", "approve"),
    "keygen": ("ops.twoperson", "keygen"),
    "enroll": ("ops.enroll", "enroll"),
}
__all__ = sorted(EXPORTS)


def __getattr__(name: str):
    """Import the module that defines `name` and return it from there; AttributeError for any other name."""
    if name not in EXPORTS:
        raise AttributeError(f"module 'deployctl.api' has no attribute {name!r}")
    module, attr = EXPORTS[name]
    value = getattr(importlib.import_module(f"deployctl.{module}"), attr)
    globals()[name] = value  # the next lookup is a plain one
    return value
