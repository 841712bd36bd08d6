"""Signed control requests, the router's side: the signed text, the check of a request, the nonces seen.

A gate, halt or resume request carries no token: X-Deployctl-Signature is the HMAC-SHA256, keyed
with the fleet token, of method, request target, X-Deployctl-Timestamp, X-Deployctl-Nonce,
X-Deployctl-Actor and the body's sha256 (the same text as deployctl/reqsign.py; docs/node-layout.md).
A request is refused unless its signature is good, its timestamp within WINDOW_S of this node's
clock, and its nonce never accepted before.
"""

import hashlib
import hmac
import os
import re
import threading
import time

TIMESTAMP_RE = re.compile(r"[0-9]{1,12}(\.[0-9]{1,6})?")
NONCE_RE = re.compile(r"[0-9a-f]{32}")
SIGNATURE_RE = re.compile(r"[0-9a-f]{64}")
WINDOW_S = 30.0  # a control request signed further off this node's clock is refused
NONCE_CAP = 4096  # nonces remembered at most (each for WINDOW_S past its timestamp)
SIGNED_VERSION = "deployctl-control-v1"


def signed_text(method, target, timestamp, nonce, actor, body):
    """The bytes a control request's signature covers (the same text as deployctl/reqsign.py's message)."""
    digest = hashlib.sha256(body).hexdigest()
    return "\n".join((SIGNED_VERSION, method, target, timestamp, nonce, actor, digest)).encode("utf-8")


def hmac_hex(key, text):
    """Lowercase hex HMAC-SHA256 of the bytes text keyed with the bytes key."""
    return hmac.new(key, text, hashlib.sha256).hexdigest()


class NonceBook:
    """The nonces of the control requests accepted within the window, so none is accepted twice.

    Bounded: a nonce is kept only until its timestamp leaves the window (after which the timestamp
    check refuses it anyway), and at most NONCE_CAP of them. Each is also appended to a file in the
    state dir (not fsynced: a restarted router process reads it back from the page cache; only a
    crash of the whole host loses the last lines, and a host takes longer than the window to come back).
    """

    def __init__(self, path, log):
        self.path, self.log, self._lock, self._seen, self._appended = path, log, threading.Lock(), {}, 0
        try:
            with open(path, encoding="ascii", errors="replace") as handle:
                lines = handle.read().splitlines()
        except OSError:
            return  # no file yet: the first accepted request creates it
        now = time.time()
        for line in lines[-NONCE_CAP:]:
            stamp, _, nonce = line.partition(" ")
            if TIMESTAMP_RE.fullmatch(stamp) and NONCE_RE.fullmatch(nonce) and float(stamp) + WINDOW_S >= now:
                self._seen[nonce] = float(stamp) + WINDOW_S
        self._rewrite()

    def take(self, nonce, stamp, now):
        """Record nonce; return None, or why it is refused (seen before, or too many in the window)."""
        with self._lock:
            if len(self._seen) >= NONCE_CAP:
                self._seen = {n: end for n, end in self._seen.items() if end >= now}
            if nonce in self._seen:
                return "nonce already seen (a replayed request)"
            if len(self._seen) >= NONCE_CAP:
                return f"more than {NONCE_CAP} control requests within {WINDOW_S:.0f} s"
            self._seen[nonce] = float(stamp) + WINDOW_S
            self._appended += 1
            if self._appended > NONCE_CAP:
                self._rewrite()
            else:
                self._append(f"{stamp} {nonce}\n")
            return None

    def _append(self, line):
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, line.encode("ascii"))
            finally:
                os.close(fd)
        except OSError as error:
            self.log(f"nonce not written to {self.path}: {error.strerror}")

    def _rewrite(self):
        """Replace the file by the live nonces (at start, and when it grew past NONCE_CAP lines)."""
        self._appended = 0
        text = "".join(f"{end - WINDOW_S:.3f} {nonce}\n" for nonce, end in self._seen.items())
        temp = f"{self.path}.{os.getpid()}.tmp"
        try:
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.write(fd, text.encode("ascii"))
            finally:
                os.close(fd)
            os.replace(temp, self.path)
        except OSError as error:
            self.log(f"nonces not written to {self.path}: {error.strerror}")


def check(key, method, target, body, fields, nonces):
    """Return None if the request is signed with key, within WINDOW_S of this clock and its nonce
    unseen (then recorded in nonces); else (reason, extra fields for the 401 body).

    A stale timestamp under a good signature is answered with this node's clock and a proof (the
    HMAC of the request's nonce and that clock), so the controller can sign a halt or a gate close
    again with this clock; only a holder of the token could have asked, and only it can check it."""
    stamp, nonce = fields.get("X-Deployctl-Timestamp"), fields.get("X-Deployctl-Nonce")
    presented, actor = fields.get("X-Deployctl-Signature"), fields.get("X-Deployctl-Actor") or ""
    if stamp is None or nonce is None or presented is None:
        return "unsigned request", {}
    if not (TIMESTAMP_RE.fullmatch(stamp) and NONCE_RE.fullmatch(nonce) and SIGNATURE_RE.fullmatch(presented)):
        return "malformed signature fields", {}
    expected = hmac_hex(key, signed_text(method, target, stamp, nonce, actor, body or b""))
    if not hmac.compare_digest(presented, expected):
        return "bad signature", {}
    now = time.time()
    if abs(float(stamp) - now) > WINDOW_S:
        clock = f"{now:.3f}"
        proof = hmac_hex(key, "\n".join((SIGNED_VERSION, "clock", nonce, clock)).encode("utf-8"))
        return (f"timestamp {float(stamp) - now:+.1f} s off this node's clock (window {WINDOW_S:.0f} s)",
                {"now": clock, "nonce": nonce, "proof": proof})
    refusal = nonces.take(nonce, stamp, now)
    return (refusal, {}) if refusal else None
