"""Signed control requests: the HMAC-SHA256 headers a gate, halt or resume request carries instead of the token.

The message is one text, the same on both sides (fleet/router/service.py checks it with its own
copy of this function, as docs/node-layout.md says): method, request target, timestamp, nonce,
actor and the body's sha256, keyed with the fleet token. The token itself never leaves the controller.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time

TIMESTAMP_HEADER = "X-Deployctl-Timestamp"
NONCE_HEADER = "X-Deployctl-Nonce"
SIGNATURE_HEADER = "X-Deployctl-Signature"
ACTOR_HEADER = "X-Deployctl-Actor"
VERSION = "deployctl-control-v1"


def message(method: str, target: str, timestamp: str, nonce: str, actor: str, body: bytes) -> bytes:
    """Return the exact bytes that are signed for one request."""
    digest = hashlib.sha256(body).hexdigest()
    return "\n".join((VERSION, method, target, timestamp, nonce, actor, digest)).encode("utf-8")


def signature(token: str, text: bytes) -> str:
    """Return the lowercase hex HMAC-SHA256 of `text` keyed with the fleet token."""
    return hmac.new(token.encode("utf-8"), text, hashlib.sha256).hexdigest()


def headers(token: str, method: str, target: str, body: bytes, actor: str = "",
            now: float | None = None, nonce: str | None = None) -> dict[str, str]:
    """Return the header fields that sign one request: timestamp (`now`, default this clock), a fresh
    nonce (128 random bits unless given), the actor if any, and the signature."""
    timestamp = f"{time.time() if now is None else now:.3f}"
    nonce = nonce or secrets.token_hex(16)
    fields = {TIMESTAMP_HEADER: timestamp, NONCE_HEADER: nonce,
              SIGNATURE_HEADER: signature(token, message(method, target, timestamp, nonce, actor, body))}
    if actor:
        fields[ACTOR_HEADER] = actor
    return fields


def clock_proof(token: str, nonce: str, now: str) -> str:
    """Return the proof a router adds to its clock when it refuses a stale timestamp: the HMAC of
    the refused request's nonce and the router's clock, so nobody on the path can change either."""
    return signature(token, "\n".join((VERSION, "clock", nonce, now)).encode("utf-8"))
