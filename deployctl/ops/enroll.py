"""`deployctl enroll [NODE...]`: prepare plain Linux servers of the inventory for deployctl, over Fabric.

Per node: open a Fabric Connection (through the node's bastions), pinning the host key only on
evidence (trust.decide), read what the node has of the node contract as root (`sudo`), plan the
missing steps (nodecontract.plan) and, unless it is a dry run, make them: files are put into a
private temporary folder and installed from there by root, a sudoers rule only after `visudo -cf`
accepts it. Every node gets a result, failed or not; the run is journaled on the controller, and
each node that changed journals it in its own state/journal.jsonl. A second run changes nothing.
"""

from __future__ import annotations

import contextlib
import io
import json
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from deployctl.config.inventory import Node
from deployctl.errors import (
    DeployctlError,
    HostKeyError,
    UnreachableError,
    UsageError,
    describe_os_error,
    grouped,
)
from deployctl.ops.context import Context
from deployctl.ops.guards import locked
from deployctl.remote import commands, hostkeys, nodecontract
from deployctl.state import keys
from deployctl.state.journal import encode, entry


@dataclass
class Enrolled:
    """One node's enroll: the steps (made, or for a dry run to make), the host key pinned, or the error."""
    node: str
    steps: list[str] = field(default_factory=list)
    pinned: list[str] = field(default_factory=list)
    error: str | None = None
    host_key: bool = False
    unreachable: bool = False


class _Evidence:
    """paramiko's missing-host-key policy (duck-typed: paramiko calls `missing_host_key`): a key not yet
    pinned in the state folder is pinned only on evidence (trust.decide), never merely because it is new."""

    def __init__(self, ctx: Context, node: str, given: str | None, ask, user_known: str, pinned: list[str]):
        self.ctx, self.node, self.given, self.ask = ctx, node, given, ask
        self.user_known, self.pinned = user_known, pinned

    def missing_host_key(self, client, hostname: str, key) -> None:
        host, port = _split(hostname)
        presented = f"{key.get_name()} {key.get_base64()}"
        why = hostkeys.decide(self.node, f"{host}:{port}", presented, hostkeys.known_keys(self.user_known, host, port),
                           self.given, self.ask)
        keys.pin_host_key(self.ctx.state, host, port, presented)
        client.get_host_keys().add(hostname, key.get_name(), key)
        self.pinned.append(f"{host}:{port} {keys.fingerprint(presented)} ({why})")


def _split(hostname: str) -> tuple[str, int]:
    if hostname.startswith("["):
        host, _, port = hostname[1:].partition("]:")
        return host, int(port)
    return hostname, 22


def contract(ctx: Context, node: Node, tools: tuple[str, ...] = ()) -> nodecontract.Contract:
    """Return the node contract for `node`: the service runs as the login user, who owns the install root."""
    service = ctx.playbook.service
    return nodecontract.Contract(ctx.root, service.unit_name, service.manager_name, node.user, node.user, service.port,
                                 ctx.token(), ctx.state.signing_pub.read_text().strip(), tools)


def enroll(ctx: Context, names: list[str] | None = None, dry_run: bool = False, sudo_password: str | None = None,
           fingerprints: Sequence[str] = (), ask=None, user_known_hosts: Path = Path("~/.ssh/known_hosts")
           ) -> dict[str, Enrolled]:
    """Enroll the named nodes (default: all) and return a result per node. A host key not pinned yet is
    pinned from `user_known_hosts`, a `fingerprints` entry (NODE=SHA256:...) or `ask`'s yes, else refused.
    UsageError for unknown names; DeployctlError (HostKeyError, UnreachableError if only those) naming
    every node that failed, after every node was tried."""
    known = _read(Path(user_known_hosts).expanduser())
    nodes = _select(ctx, names)
    given = hostkeys.parse_fingerprints(list(fingerprints), [n.name for n in ctx.nodes])
    if ask is not None:  # nodes are enrolled in parallel: one question on the terminal at a time
        ask = _one_at_a_time(ask)
    keys.ensure_controller(ctx.state)
    ctx.signing_key()
    # Not "start"/"done": those phases are the rollout runs' own, which `recover` looks for.
    ctx.journal.append(entry("enroll", phase="begin", nodes=[n.name for n in nodes], dry_run=dry_run))
    with contextlib.nullcontext() if dry_run else locked(ctx, "enroll", break_lock=False):
        with ThreadPoolExecutor(max_workers=ctx.inventory.parallel) as pool:
            results = dict(zip([n.name for n in nodes], pool.map(
                lambda n: _one(ctx, n, dry_run, sudo_password, given.get(n.name), ask, known), nodes), strict=True))
    for r in results.values():
        ctx.emit("node", phase="enroll", node=r.node, ok=r.error is None,
                 reason=r.error or ("; ".join(r.steps) if r.steps else "nothing to change"))
    ctx.journal.append(entry("enroll", phase="end", dry_run=dry_run,
                             nodes={r.node: {"steps": r.steps, "pinned": r.pinned, "error": r.error}
                                    for r in results.values()}))
    failed = [r for r in results.values() if r.error]
    if failed:
        if all(r.unreachable for r in failed):
            reasons = {r.node: r.error or "" for r in failed}
            raise UnreachableError(f"enroll: {grouped(reasons, len(results))}", nodes=reasons)
        kind = HostKeyError if all(r.host_key for r in failed) else DeployctlError
        raise kind("enroll: " + "; ".join(f"{r.error}" if r.host_key else f"{r.node}: {r.error}" for r in failed))
    return results


def _one_at_a_time(ask):
    lock = threading.Lock()

    def asked(*args):
        with lock:
            return ask(*args)
    return asked


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""  # no known_hosts: no evidence from it


def _select(ctx: Context, names: list[str] | None) -> list[Node]:
    unknown = sorted(set(names or ()) - {n.name for n in ctx.nodes})
    if unknown:
        raise UsageError(f"enroll: no node {', '.join(map(repr, unknown))} in {ctx.inventory.path.name}")
    return [n for n in ctx.nodes if not names or n.name in names]


def _one(ctx: Context, node: Node, dry_run: bool, password: str | None, given: str | None, ask,
         user_known: str) -> Enrolled:
    result = Enrolled(node.name)
    policy = _Evidence(ctx, node.name, given, ask, user_known, result.pinned)
    try:
        with _connection(ctx, node, password, policy) as conn:
            _enroll_node(ctx, node, conn, dry_run, result)
    except HostKeyError as exc:
        result.error, result.host_key = str(exc), True
    except DeployctlError as exc:
        result.error = str(exc)
    except Exception as exc:  # noqa: BLE001 - a node's failure is a value (STYLE.md 5), named with its cause
        result.error = _describe(exc)
        if isinstance(exc, OSError):  # refused, no route, timed out (paramiko's NoValidConnectionsError too)
            reason = f"unreachable at {node.host}:{node.ssh_port}: {describe_os_error(exc)}"
            result.error, result.unreachable = reason, True
        if type(exc).__name__ == "ChannelException" and node.proxy_jump:  # the last hop refused direct-tcpip
            result.error = f"via bastion {node.proxy_jump[-1].label()}: forwarding refused ({exc.args[-1]})"
    return result


def _timeout(ctx: Context) -> float:
    # Setup work, not the hot path: a handshake through a bastion on a busy machine may take longer
    # than the inventory's connect_timeout, and paramiko then fails late with "No existing session".
    return max(ctx.inventory.connect_timeout, ENROLL_CONNECT_TIMEOUT)


ENROLL_CONNECT_TIMEOUT = 20.0
ENROLL_COMMAND_TIMEOUT = 300.0


def _describe(exc: Exception) -> str:
    """The cause in words, without the exception's class name (an operator reads it, not a programmer)."""
    text = describe_os_error(exc) if isinstance(exc, OSError | EOFError) else " ".join(str(exc).split())
    if text == "No existing session":  # paramiko: the key exchange did not finish within the timeout
        text = "the SSH handshake did not finish in time (no existing session)"
    return (text or "failed without a reason given")[:300]


def _enroll_node(ctx: Context, node: Node, conn, dry_run: bool, result: Enrolled) -> None:
    root_cmd = _as_root(ctx, node, conn)
    wants = nodecontract.desired(contract(ctx, node))
    facts = nodecontract.parse_facts(root_cmd(nodecontract.probe(wants), "read what the node has"))
    wanted = contract(ctx, node, facts.tools)
    problem = nodecontract.check_manager(wanted, facts)
    if problem:
        raise DeployctlError(problem)
    steps = nodecontract.steps(wanted, facts, "TMP")  # the folder is made only if there is work
    if not steps or dry_run:
        result.steps = [s.what for s in steps]
        return
    tmp = _run(conn, ["mktemp", "-d", "/tmp/deployctl-enroll.XXXXXXXX"], "make a private folder").strip()
    steps = nodecontract.steps(wanted, facts, tmp)
    try:
        for step in steps:
            if step.upload is not None and step.upload.content is not None:  # an upload is always a file
                conn.put(io.BytesIO(step.upload.content.encode()), step.argv[0][-1])
        code, err = root_cmd(nodecontract.apply_script(steps), "apply", check=False)
        done = len(steps) if code == 0 else (nodecontract.failed_step(steps, code) or 0)
        result.steps = [s.what for s in steps[:done]]
        if code != 0:
            failed = nodecontract.failed_step(steps, code)
            what = steps[failed].what if failed is not None else "apply"
            raise DeployctlError(f"{what}: {_last_line(err) or f'exit {code}'}")
    finally:
        _run(conn, ["rm", "-rf", tmp], "remove the private folder", check=False)
        if result.steps:  # checked only after a whole apply: a failure's own message must not be masked
            record = entry("enroll", node=node.name, steps=result.steps)
            _run(conn, commands.journal_append(ctx.root), "journal on the node", stdin=encode(record),
                 check=len(result.steps) == len(steps))


def _as_root(ctx: Context, node: Node, conn):
    """Return run(argv, what, check=True) -> stdout (check False: (exit code, stderr)), as root: directly for
    a root login, else through `sudo` (Fabric answers its password prompt); DeployctlError naming what failed
    with the command's last error line."""
    # Setup work: sudo's password check alone can take seconds on a busy machine; bounded all the same.
    timeout = max(ctx.playbook.timeouts.command, ENROLL_COMMAND_TIMEOUT)

    def run(argv, what: str, check: bool = True):
        text = commands.render(["sh", "-c", commands.render(argv)])
        if node.user == "root":
            res = conn.run(text, hide=True, warn=True, timeout=timeout, in_stream=False)
        elif conn.config.sudo.password is None:  # no password given: passwordless sudo or nothing
            res = conn.run("sudo -n " + text, hide=True, warn=True, timeout=timeout, in_stream=False)
        else:
            res = conn.sudo(text, hide=True, warn=True, timeout=timeout, in_stream=False)
        if not check:
            return res.exited, res.stderr
        if res.exited != 0:
            raise DeployctlError(f"{what}: {_last_line(res.stderr) or f'exit {res.exited}'}")
        return res.stdout
    return run


def _run(conn, argv: list[str], what: str, check: bool = True, stdin: bytes | None = None) -> str:
    """Run argv as the login user; DeployctlError naming `what` if it fails and `check`."""
    stream = io.StringIO(stdin.decode()) if stdin is not None else False
    res = conn.run(commands.render(argv), hide=True, warn=True, in_stream=stream)
    if check and res.exited != 0:
        raise DeployctlError(f"{what}: {_last_line(res.stderr) or f'exit {res.exited}'}")
    return res.stdout


def _last_line(text: str) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip() and not ln.startswith("[sudo] password")]
    if lines and lines[-1].startswith("{"):
        try:
            return str(json.loads(lines[-1]).get("error", lines[-1]))
        except (ValueError, RecursionError):  # {"a": {"a": ... nested past the parser's depth
            pass
    return lines[-1].strip() if lines else ""


def _connection(ctx: Context, node: Node, password: str | None, policy):
    """fabricconn's Connection to `node` (its bastions are gateway Connections), each with the evidence
    policy in place of fabricconn's RejectPolicy: an unknown key is pinned on evidence or refused."""
    from deployctl.remote import fabricconn

    if not ctx.state.known_hosts.exists():
        keys.pin_host_keys_file(ctx.state)
    conn = fabricconn.connection(node, ctx.state.client_key, ctx.state.known_hosts, _timeout(ctx),
                                 {"sudo": {"password": password}})
    hop, hops = conn.gateway, list(node.proxy_jump)
    conn.client.set_missing_host_key_policy(policy)
    while hop and hops:  # the last hop is the node's own gateway, the one before it that hop's
        jump = hops.pop()
        hop.client.set_missing_host_key_policy(_Evidence(
            ctx, f"{node.name} (bastion {jump.user or node.user}@{jump.host}:{jump.port})", None, policy.ask,
            policy.user_known, policy.pinned))
        hop = hop.gateway
    return conn
