"""The library's facade: everything `deployctl` does, callable from Python, and the CLI's single door.

Re-exports only. Open a Context, then call the commands with it; nothing prints (progress goes to
the Context's `on_event` callback), results come back as values, failures as DeployctlError with
the exit code the CLI uses::

    from deployctl import api
    ctx = api.open_context(Path("fleet/fleet.yaml"), Path("playbooks/router.yaml"))
    api.rollout(ctx, Path("dist/order-router-1.0.0-ab12cd34ef56.tar"))
    report = api.verify(ctx)          # report.ok, report.exit_code, report.to_dict()
"""

from __future__ import annotations

from deployctl.context import Context, Event, open_context
from deployctl.control import gate_close, gate_open, gate_status, halt, history, resume, status, verify
from deployctl.rollback import plan as plan_rollback, recover, rollback
from deployctl.rollout import build, plan as plan_rollout, rollout
from deployctl.run import PlanRow, RunResult, interrupted
from deployctl.testfleet import fleet_down, fleet_status, fleet_up, write_files as write_fleet_files
from deployctl.verify import VerifyReport

__all__ = [
    "Context", "Event", "PlanRow", "RunResult", "VerifyReport", "build", "gate_close", "gate_open", "gate_status",
    "halt", "history", "interrupted", "open_context", "plan_rollback", "plan_rollout", "recover", "resume",
    "rollback", "rollout", "status", "verify", "fleet_down", "fleet_status", "fleet_up", "write_fleet_files",
]

