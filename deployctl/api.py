"""The library's facade: everything `deployctl` does, callable from Python, and the CLI's single door.

Re-exports only. Open a Context, then call the commands with it; nothing prints (progress goes to
the Context's `on_event` callback), results come back as values, failures as DeployctlError with
the exit code the CLI uses::

    from deployctl import api
    ctx = api.open_context(Path("fleet/fleet.yaml"), Path("playbooks/router.yaml"))
    api.rollout(ctx, Path("dist/order-router-1.0.0-ab12cd34ef56.tar"))
    report = api.verify(ctx)          # report.ok, report.exit_code, report.to_dict()

Each name is imported from its module on first use (PEP 562), so a command loads only what it
uses: `verify`, `halt` and `gate` never load the artifact, rollout or Docker code (about 80 ms of
every such command here).
"""

from __future__ import annotations

import importlib

# name -> (module, name there)
EXPORTS = {
    "default_inventory": ("config", "default_inventory"),
    "Context": ("context", "Context"), "Event": ("context", "Event"), "open_context": ("context", "open_context"),
    "verify": ("control", "verify"), "status": ("control", "status"), "history": ("control", "history"),
    "gate_status": ("control", "gate_status"), "gate_open": ("control", "gate_open"),
    "gate_close": ("control", "gate_close"), "halt": ("control", "halt"), "resume": ("control", "resume"),
    "build": ("rollout", "build"), "rollout": ("rollout", "rollout"), "plan_rollout": ("rollout", "plan"),
    "rollback": ("rollback", "rollback"), "recover": ("rollback", "recover"), "plan_rollback": ("rollback", "plan"),
    "PlanRow": ("run", "PlanRow"), "RunResult": ("run", "RunResult"), "interrupted": ("run", "interrupted"),
    "VerifyReport": ("verify", "VerifyReport"),
    "watch": ("watch", "watch"),
    "make_plan": ("signoff", "plan"), "approve_plan": ("signoff", "approve"), "keygen": ("signoff", "keygen"),
    "enroll": ("enroll", "enroll"),
    "fleet_up": ("testfleet", "fleet_up"), "fleet_down": ("testfleet", "fleet_down"),
    "fleet_status": ("testfleet", "fleet_status"), "write_fleet_files": ("testfleet", "write_files"),
    "bare_fleet_up": ("barefleet", "up"), "bare_fleet_down": ("barefleet", "down"),
    "bare_fleet_status": ("barefleet", "status"), "write_bare_fleet_files": ("barefleet", "write_files"),
    "BARE_SUDO_PASSWORD": ("barefleet", "SUDO_PASSWORD"),
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
