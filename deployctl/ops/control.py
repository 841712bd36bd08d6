"""verify, status, history, gate open/close/status, halt and resume: reading and steering a running fleet.

None of these moves a release. `verify` is the pre-open gate of a CI pipeline: it hashes every
node's files on disk over SSH and reads every router's running digest over HTTP, in parallel.
Every control request is journaled with each node's answer; a node not reached is named.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

from deployctl.errors import (
    DeployctlError,
    ExitCode,
    HaltedError,
    MismatchError,
    UnreachableError,
    UsageError,
    grouped,
)
from deployctl.model import outliers
from deployctl.model import verify as verify_mod
from deployctl.ops.context import Context
from deployctl.ops.guards import check_digest, journal_digests, resolve_digest
from deployctl.remote import commands, replies
from deployctl.remote.routers import Answer
from deployctl.remote.ssh import Call, Fleet, NodeResult
from deployctl.state.journal import entry


def observe(ctx: Context, fleet: Fleet) -> list[verify_mod.NodeObservation]:
    """Read back every node's files of `current` (SSH) and its router's health (HTTP), in parallel."""
    names = [n.name for n in ctx.nodes]
    with ThreadPoolExecutor(max_workers=1) as pool:
        health_f = pool.submit(ctx.routers.health, ctx.nodes)
        disk = fleet.run_all(lambda n: Call(commands.render(commands.hashes(ctx.root)),
                                            timeout=ctx.playbook.timeouts.command), names)
        answers = health_f.result()
    return [_observation(n, disk[n], answers[n]) for n in names]


def _observation(node: str, r: NodeResult, h: Answer) -> verify_mod.NodeObservation:
    obs: dict[str, Any] = dict(node=node, health=h.body if h.ok else None, health_error=None if h.ok else h.reason(),
               unreachable=bool(r.error) or h.status == 0, host_key_refused=r.host_key_refused)
    if r.ok:
        try:
            parsed = commands.parse_hashes(r.stdout)
            obs.update(files=parsed.files, odd=parsed.odd, current=parsed.current)
        except DeployctlError as exc:
            obs.update(disk_error=str(exc))
    else:
        obs.update(disk_error=r.error or commands.agent_error(r.stderr))
    return verify_mod.NodeObservation(**obs)


def expected_digest(ctx: Context, expect: str | None) -> str:
    """Return `expect` if given (a digest, or a unique prefix of one the journal knows), else the last release
    the whole fleet ran; UsageError if neither, or if the prefix names no release or several."""
    if expect is not None:
        check_digest(expect, "--expect")
        return expect if len(expect) == 64 else resolve_digest(expect, journal_digests(ctx), "--expect")
    last = ctx.journal.last_good()
    if not last:
        raise UsageError("no successful rollout in the journal: pass --expect DIGEST")
    return last


def verify(ctx: Context, expect: str | None = None, fleet: Fleet | None = None) -> verify_mod.VerifyReport:
    """Return the fleet's VerifyReport against `expect` (default: the last good release). Never raises for drift."""
    digest = expected_digest(ctx, expect)
    if fleet is None:
        with ctx.ssh() as own:
            return verify(ctx, digest, own)
    observations = observe(ctx, fleet)
    report = verify_mod.report(observations, digest, ctx.manifest(digest), ctx.manifest(digest, "flags"),
                               _running_manifests(ctx, observations))
    ctx.emit("verify", report=report)
    return report


def _running_manifests(ctx: Context, observations: list[verify_mod.NodeObservation]) -> dict[str, dict]:
    """Return the kept manifests of the releases the routers run (the outlier report names their files)."""
    running = {(o.health or {}).get("digest") for o in observations}
    found = {d: ctx.manifest(d) for d in running if isinstance(d, str) and replies.HEX64.fullmatch(d)}
    return {d: files for d, files in found.items() if files is not None}


def status(ctx: Context) -> dict:
    """Return {"nodes": one row per node (release on disk, running digest, flags, gate, halt, errors, last
    deploy, whether it was reached), "groups": the outlier report against the largest group, "unreachable":
    one line naming the nodes not reached (None if every one was; the CLI then exits 4)}."""
    last = ctx.journal.last_run()
    deploy = (f"{last.get('action')} {str(last.get('digest'))[:12]} {last.get('outcome')} {last.get('ts')}"
              if last else None)
    with ctx.ssh() as fleet:
        observations = observe(ctx, fleet)
    verdicts = [verify_mod.judge(o, None, None) for o in observations]
    groups = outliers.group(verify_mod.members(observations, verdicts), manifests=_running_manifests(ctx, observations))
    rows = [{"node": o.node, "reachable": not o.unreachable, "release": o.current,
             "running": (o.health or {}).get("digest"),
             "gate": (o.health or {}).get("gate", "unknown"), "halted": (o.health or {}).get("halted"),
             "errors": (o.health or {}).get("errors"), "version": (o.health or {}).get("version"),
             "flags": verify_mod.running_flags(o), "problem": o.disk_error or o.health_error, "last_deploy": deploy}
            for o in observations]
    down = {o.node: o.disk_error or o.health_error or "unreachable" for o in observations if o.unreachable}
    return {"nodes": rows, "groups": [g.to_dict() for g in groups],
            "unreachable": grouped(down, len(rows)) if down else None}


def history(ctx: Context, limit: int | None = None) -> list[dict]:
    """Return the controller's journal records, oldest first (the last `limit` if given)."""
    records = list(ctx.journal.read())
    return records[-limit:] if limit else records


def gate_status(ctx: Context) -> dict[str, Answer]:
    """Return every node's health answer (gate, halt, digest)."""
    return ctx.routers.health(ctx.nodes)


def unreachable_routers(answers: dict[str, Answer]) -> str | None:
    """One line naming the nodes whose router gave no answer at all (grouped by reason); None if every one did."""
    down = {n: a.reason() for n, a in answers.items() if a.status == 0}
    return grouped(down, len(answers)) if down else None


def gate_open(ctx: Context, expect: str | None = None) -> verify_mod.VerifyReport:
    """Verify the fleet; open every gate only if all match. MismatchError/UnreachableError/HaltedError otherwise."""
    digest = expected_digest(ctx, expect)
    report = verify(ctx, digest)
    if not report.ok:
        raise _refusal("gate stays closed", report)
    if any(n.halted for n in report.nodes):
        raise HaltedError("gate stays closed: the fleet is halted; run `deployctl resume` first")
    answers = ctx.routers.open_all_or_none(ctx.nodes, digest)
    _told(ctx, "gate-open", answers, DeployctlError, "gate open refused, all gates closed again",
          digest=report.expected)
    return report


def gate_close(ctx: Context) -> dict[str, Answer]:
    """Close every gate; UnreachableError naming the nodes that could not be told."""
    answers = ctx.routers.close_gate(ctx.nodes)
    _told(ctx, "gate-close", answers, UnreachableError, "gate close did not reach")
    return answers


def halt(ctx: Context) -> dict[str, str]:
    """Kill switch: halt every router at once (no lock needed); return node -> how it was halted.

    Nodes whose router does not answer are halted on disk over SSH, so a restart stays halted.
    UnreachableError lists any node reached neither way.
    """
    answers = ctx.routers.control(ctx.nodes, "halt", timeout=1.0)
    done = {n: "halted" if a.skew is None else f"halted (node clock {a.skew:+.0f} s off ours; signed with its clock)"
            for n, a in answers.items() if a.ok and a.body.get("halted") is True}
    missing = [n for n in ctx.nodes if n.name not in done]
    if missing:
        with ctx.ssh(missing) as fleet:
            res = fleet.run_all(lambda n: Call(commands.render(commands.halt(ctx.root)), timeout=5))
        for name, r in res.items():
            done[name] = "halted on disk (router not answering)" if r.ok else f"NOT HALTED: {r.error or r.reason()}"
    _told(ctx, "halt", {n: v if v.startswith("halted") else None for n, v in done.items()}, UnreachableError,
          "halt did not reach", details=done)
    return dict(sorted(done.items()))


def resume(ctx: Context, expect: str | None = None) -> verify_mod.VerifyReport:
    """Lift the halt on every node, only if verify passes; the gate stays closed until `gate open`."""
    report = verify(ctx, expect)
    if not report.ok:
        raise _refusal("resume refused", report)
    _told(ctx, "resume", ctx.routers.control(ctx.nodes, "resume"), UnreachableError, "resume did not reach",
          digest=report.expected)
    return report


def _told(ctx: Context, action: str, answers: dict, error: type[DeployctlError], what: str,
          details: dict[str, str] | None = None, **fields) -> None:
    """Journal each node's answer to a control request; raise `error` naming the nodes not told.

    `answers` maps node -> Answer, or -> a short text (ok) / None (failed, reason in `details`)."""
    said = details or {n: ("ok" if a.ok else a.reason()) for n, a in answers.items()}
    bad = sorted(n for n, a in answers.items() if a is None or (isinstance(a, Answer) and not a.ok))
    ctx.journal.append(entry(action, outcome="partial" if bad else "ok", nodes=said, **fields))
    if bad:
        why = {n: said[n].removeprefix("NOT HALTED: ") for n in bad}
        message = f"{what}{' ' if what.endswith('did not reach') else ': '}{grouped(why, len(answers), 'nodes')}"
        raise UnreachableError(message, nodes=why) if error is UnreachableError else error(message)


def _refusal(what: str, report: verify_mod.VerifyReport) -> DeployctlError:
    why = {n.node: (n.problems or ("mismatch",))[0] for n in report.nodes if not n.ok}
    message = f"{what}: {grouped(why, len(report.nodes), 'nodes do not match')}"
    if report.exit_code == ExitCode.UNREACHABLE:
        return UnreachableError(message, nodes=why)
    return MismatchError(message)
