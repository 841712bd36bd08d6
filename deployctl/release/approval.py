"""The two-person rule's plan: what one operator means to roll out, signed by them, approved by another.

A plan names the artifact digest, the fleet, every node's current release as a probe found it, and
an expiry; the planner signs its canonical JSON with their ed25519 key, and an approver signs the
same bytes with theirs. `rollout --plan` accepts it only when both signatures hold, the approver
is one of the playbook's `approvers` and not the planner, the plan has not expired, and the fleet
is as the plan found it. Pure: documents and signatures in, values or one-line UsageErrors out.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from deployctl.config.fields import NAME_RE
from deployctl.config.playbook import Approver
from deployctl.config.schema import read_regular
from deployctl.errors import UsageError
from deployctl.release import signing
from deployctl.release.manifest import canonical

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

KIND = "deployctl-rollout-plan"
MAX_TTL_S = 7 * 24 * 3600
HEX64 = re.compile(r"[0-9a-f]{64}")
SIG = re.compile(r"[0-9a-f]{128}")
BODY_KEYS = ("artifact", "created", "digest", "expires", "fleet", "format", "kind", "nodes", "planner", "service",
             "version")


@dataclass(frozen=True)
class Plan:
    """A loaded plan whose planner signature holds; `approver` is the approving key (hex), if any."""

    path: Path
    body: dict
    planner: str
    signatures: dict

    @property
    def digest(self) -> str:
        return self.body["digest"]

    @property
    def nodes(self) -> dict[str, str | None]:
        return self.body["nodes"]

    @property
    def approver(self) -> str | None:
        return (self.signatures.get("approver") or {}).get("key")


def _sign(key: Ed25519PrivateKey, body: dict) -> dict:
    return {"key": signing.public_hex(key), "sig": key.sign(canonical(body)).hex()}


def _holds(sig: Mapping[str, str], body: dict) -> bool:
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        Ed25519PublicKey.from_public_bytes(bytes.fromhex(sig["key"])).verify(bytes.fromhex(sig["sig"]),
                                                                              canonical(body))
        return True
    except (InvalidSignature, ValueError):
        return False


def new(key: Ed25519PrivateKey, *, fleet: str, service: str, artifact: str, digest: str, version: str,
        nodes: Mapping[str, str | None], now: float, ttl_s: int) -> dict:
    """Return a new plan document signed by `key` (the planner), expiring `ttl_s` seconds after `now`."""
    if isinstance(ttl_s, bool) or not isinstance(ttl_s, int) or not 1 <= ttl_s <= MAX_TTL_S:
        raise UsageError(f"--expires-in: should be between 1 and {MAX_TTL_S} seconds")
    body = {"format": 1, "kind": KIND, "fleet": fleet, "service": service, "artifact": artifact, "digest": digest,
            "version": version, "nodes": dict(sorted(nodes.items())), "created": int(now),
            "expires": int(now) + ttl_s, "planner": signing.public_hex(key)}
    return {"plan": body, "signatures": {"planner": _sign(key, body)}}


def dumps(doc: dict) -> bytes:
    """Return the plan file's bytes (readable JSON; what is signed is the canonical form of `plan`)."""
    return (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode("ascii")


def _body_problem(body: Any) -> str | None:
    if not isinstance(body, dict) or tuple(sorted(body)) != BODY_KEYS:
        return f"plan should have exactly the keys {', '.join(BODY_KEYS)}"
    if body["format"] != 1 or body["kind"] != KIND:
        return f"not a format 1 {KIND}"
    if not all(isinstance(body[k], str) and NAME_RE.fullmatch(body[k]) for k in ("fleet", "service")):
        return "fleet and service should be names"
    if not isinstance(body["artifact"], str) or not isinstance(body["version"], str):
        return "artifact and version should be strings"
    if not all(isinstance(body[k], str) and HEX64.fullmatch(body[k]) for k in ("digest", "planner")):
        return "digest and planner should be 64 hex digits"
    if not all(type(body[k]) is int for k in ("created", "expires")) or body["expires"] <= body["created"]:
        return "created and expires should be integers, expires after created"
    nodes = body["nodes"]
    if not isinstance(nodes, dict) or not nodes or not all(
            isinstance(n, str) and (c is None or (isinstance(c, str) and HEX64.fullmatch(c)))
            for n, c in nodes.items()):
        return "nodes should map each node to its current release digest or null"
    return None


def _sig_problem(sig: Any) -> bool:
    return not (isinstance(sig, dict) and set(sig) == {"key", "sig"} and isinstance(sig["key"], str)
                and HEX64.fullmatch(sig["key"]) and isinstance(sig["sig"], str) and SIG.fullmatch(sig["sig"]))


MAX_PLAN_BYTES = 1 << 20  # a plan names each node's release: a few hundred bytes a node


def load(path: Path) -> Plan:
    """Read the plan at `path`; UsageError (naming the file) unless it is well formed and its planner's
    signature (and the approver's, if present) holds over its body."""
    path = Path(path)
    label = path.name
    data = read_regular(path, UsageError, MAX_PLAN_BYTES)
    if len(data) > MAX_PLAN_BYTES:
        raise UsageError(f"{label}: not a plan (larger than {MAX_PLAN_BYTES} bytes)")
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError):
        raise UsageError(f"{label}: not a plan (not valid JSON)") from None
    if not isinstance(doc, dict) or set(doc) != {"plan", "signatures"}:
        raise UsageError(f"{label}: not a plan (should have exactly the keys plan, signatures)")
    body, sigs = doc["plan"], doc["signatures"]
    problem = _body_problem(body)
    if problem:
        raise UsageError(f"{label}: {problem}")
    if not isinstance(sigs, dict) or not {"planner"} <= set(sigs) <= {"planner", "approver"} or any(
            _sig_problem(s) for s in sigs.values()):
        raise UsageError(f"{label}: signatures should be planner (and approver), each with key and sig in hex")
    if sigs["planner"]["key"] != body["planner"] or not _holds(sigs["planner"], body):
        raise UsageError(f"{label}: the planner's signature does not hold: the plan was changed after it was signed")
    if "approver" in sigs and not _holds(sigs["approver"], body):
        raise UsageError(f"{label}: the approver's signature does not hold over this plan")
    return Plan(path, body, body["planner"], sigs)


def _expired(plan: Plan, now: float) -> str | None:
    if now >= plan.body["expires"]:
        return f"{plan.path.name}: the plan expired {int(now) - plan.body['expires']} s ago: make a new one"
    return None


def approve(plan: Plan, key: Ed25519PrivateKey, approvers: tuple[Approver, ...], now: float) -> dict:
    """Return the plan document with `key`'s approval added; UsageError if the key is the planner's, not an
    approver of this playbook, or the plan expired."""
    mine = signing.public_hex(key)
    if mine == plan.planner:
        raise UsageError(f"{plan.path.name}: approval refused: this key made the plan; "
                         "a second person must approve it with their own key")
    if approvers and mine not in {a.key for a in approvers}:
        raise UsageError(f"{plan.path.name}: approval refused: key {mine[:12]} is not among the playbook's approvers")
    problem = _expired(plan, now)
    if problem:
        raise UsageError(problem)
    return {"plan": plan.body, "signatures": {**plan.signatures, "approver": _sign(key, plan.body)}}


def check(plan: Plan, approvers: tuple[Approver, ...], now: float, *, digest: str, fleet: str,
          nodes: list[str]) -> Approver:
    """Return the approving Approver if `plan` may start this rollout; UsageError naming the first reason
    it may not (no approval, unlisted or self approval, expired, another artifact, fleet or node set)."""
    label = plan.path.name
    if plan.approver is None:
        raise UsageError(f"{label}: rollout refused: the plan has no approval (`deployctl approve {label} --key ...`)")
    if plan.approver == plan.planner:
        raise UsageError(f"{label}: rollout refused: the plan was approved by its own planner's key")
    approver = next((a for a in approvers if a.key == plan.approver), None)
    if approver is None:
        raise UsageError(f"{label}: rollout refused: approver key {plan.approver[:12]} is not among the playbook's "
                         "approvers")
    problem = _expired(plan, now)
    if problem:
        raise UsageError(f"rollout refused: {problem}")
    if plan.digest != digest:
        raise UsageError(f"{label}: rollout refused: the plan is for release {plan.digest[:12]}, not {digest[:12]}")
    if plan.body["fleet"] != fleet or sorted(plan.nodes) != sorted(nodes):
        raise UsageError(f"{label}: rollout refused: the plan is for fleet {plan.body['fleet']} with nodes "
                         f"{', '.join(sorted(plan.nodes))}, not this inventory")
    return approver


def stale(plan: Plan, current: Mapping[str, str | None]) -> dict[str, str]:
    """Return node -> problem for every node whose current release is not the one the plan found."""
    short = lambda d: d[:12] if d else "none"  # noqa: E731
    return {n: f"runs release {short(current.get(n))}, the approved plan found {short(plan.nodes.get(n))}"
            for n in sorted(current) if current.get(n) != plan.nodes.get(n)}
