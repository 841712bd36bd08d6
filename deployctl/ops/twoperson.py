"""`plan`, `approve` and `keygen`: the two-person rule's commands (the plan document is release/approval.py's).

`plan` probes every node for its current release and writes a plan signed with the operator's key
(`--key`, default the state folder's keys/operator_ed25519, made on first use); `approve` adds a
second person's signature; `rollout --plan` (rollout.py) checks both. Each is journaled with the
key that signed.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

from deployctl.errors import DeployctlError, UsageError, check_folder, describe_os_error
from deployctl.ops.context import Context
from deployctl.release import approval, signing
from deployctl.remote import commands, replies
from deployctl.remote.ssh import Call, raise_for_unreachable
from deployctl.state.journal import entry


def keygen(path: Path) -> str:
    """Write a new ed25519 key pair at `path` (PEM, 0600) and `path`.pub (hex); return the public key in hex.
    UsageError if either file exists."""
    path = Path(path)
    _, pub = signing.generate_at(path, path.with_name(path.name + ".pub"))
    return pub.read_text().strip()


def operator_key(ctx: Context, key: Path | None) -> Path:
    """Return `key`, or the state folder's operator key, made on first use."""
    if key is not None:
        return Path(key)
    path = ctx.state.operator_key
    if not path.exists():
        signing.generate_at(path, path.with_name(path.name + ".pub"))
    return path


def _write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    check_folder(path.parent, "--out")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise UsageError(f"{path}: cannot write ({describe_os_error(exc)})") from None


def plan(ctx: Context, artifact_path: Path, out: Path, key: Path | None = None, ttl_s: int = 3600) -> dict:
    """Probe every node's current release and write a plan for the artifact, signed with the operator's key,
    to `out`; return the plan document. UnreachableError if a node cannot be probed."""
    check_folder(Path(out).parent, "--out")  # before the first connection, as every input
    if Path(out).is_dir():
        raise UsageError(f"--out {out}: a folder, not a file")
    art = ctx.load_artifact(artifact_path)
    private = signing.private_key(operator_key(ctx, key))
    with ctx.ssh() as fleet:
        res = fleet.run_all(lambda n: Call(commands.render(commands.probe(ctx.root)),
                                           timeout=ctx.playbook.timeouts.command))
    raise_for_unreachable(res, "plan")
    bad = sorted(n for n, r in res.items() if not r.ok)
    if bad:
        raise DeployctlError("plan: " + "; ".join(f"{n}: {commands.agent_error(res[n].stderr)}" for n in bad))
    probes = replies.each_node(commands.parse_probe, {n: r.stdout for n, r in res.items()}, "plan")
    current = {n: p.current for n, p in probes.items()}
    doc = approval.new(private, fleet=ctx.inventory.fleet, service=ctx.playbook.name, artifact=art.path.name,
                       digest=art.digest, version=art.version, nodes=current, now=time.time(), ttl_s=ttl_s)
    _write(Path(out), approval.dumps(doc))
    ctx.journal.append(entry("plan", digest=art.digest, plan=Path(out).name, planner=doc["plan"]["planner"],
                             expires=doc["plan"]["expires"]))
    return doc


def approve(ctx: Context, plan_path: Path, key: Path) -> dict:
    """Add the approval of `key`'s owner to the plan at `plan_path` (rewritten in place); return the document.
    UsageError if the key made the plan, is not one of the playbook's approvers, or the plan expired."""
    loaded = approval.load(plan_path)
    doc = approval.approve(loaded, signing.private_key(Path(key)), ctx.playbook.approvers, time.time())
    _write(Path(plan_path), approval.dumps(doc))
    ctx.journal.append(entry("approve", digest=loaded.digest, plan=loaded.path.name, planner=loaded.planner,
                             approver_key=doc["signatures"]["approver"]["key"]))
    return doc
