"""Enroll's host-key policy: which key a server presents may be pinned, never on first use without saying so.

Pure: the user's known_hosts is read as text, the answer is a reason or a HostKeyError. Pinning itself
(writing the state folder's known_hosts) is state/keys.py.
"""

from __future__ import annotations

import base64

from deployctl.state.keys import fingerprint, host_pattern


def _glob(pattern: str, name: str) -> bool:
    """OpenSSH's pattern: `*` and `?` only (a `[` is literal, as in `[host]:port`); host names ignore case."""
    import re

    regex = "".join(".*" if ch == "*" else "." if ch == "?" else re.escape(ch) for ch in pattern)
    return re.fullmatch(regex, name, re.IGNORECASE) is not None


def _matches(field: str, name: str) -> bool:
    import hashlib
    import hmac

    if field.startswith("|1|"):  # hashed: |1|base64(salt)|base64(hmac-sha1(salt, name))
        try:
            salt, digest = (base64.b64decode(p) for p in field[3:].split("|", 1))
        except ValueError:
            return False
        return hmac.compare_digest(hmac.new(salt, name.encode(), hashlib.sha1).digest(), digest)
    patterns = field.split(",")
    if any(p.startswith("!") and _glob(p[1:], name) for p in patterns):
        return False
    return any(not p.startswith("!") and _glob(p, name) for p in patterns)


def known_keys(text: str, host: str, port: int) -> tuple[list[str], list[str]]:
    """Return (keys, revoked) for host:port in an OpenSSH known_hosts text: "keytype base64" each.
    @cert-authority lines are not host keys and are skipped."""
    name = host_pattern(host, port)
    keys: list[str] = []
    revoked: list[str] = []
    for line in text.splitlines():
        parts = line.split()
        if not parts or parts[0].startswith("#"):
            continue
        marker = parts.pop(0) if parts[0].startswith("@") else None
        if len(parts) < 3 or marker == "@cert-authority" or not _matches(parts[0], name):
            continue
        (revoked if marker == "@revoked" else keys).append(f"{parts[1]} {parts[2]}")
    return keys, revoked


def decide(node: str, where: str, presented: str, user_known: tuple[list[str], list[str]],
           given: str | None, ask=None) -> str:
    """Return why the presented host key ("keytype base64") may be pinned: it is in the user's
    known_hosts, its fingerprint was given (--fingerprint), or the user said yes when shown it.
    HostKeyError otherwise: a different key of the same type in known_hosts, a revoked key, a
    fingerprint that differs, a no, or nobody to ask (a non-interactive run without --fingerprint)."""
    from deployctl.errors import HostKeyError

    fp, (keys, revoked) = fingerprint(presented), user_known
    kind = presented.split()[0]
    if presented in revoked:
        raise HostKeyError(f"{node}: host key {fp} at {where} is marked @revoked in your known_hosts; refusing")
    if presented in keys:
        return "from your known_hosts"
    if any(k.split()[0] == kind for k in keys):
        raise HostKeyError(f"{node}: host key at {where} is {fp}, but your known_hosts has another {kind} key "
                           "for it; refusing (possible man in the middle)")
    if given is not None:
        if given != fp:
            raise HostKeyError(f"{node}: host key at {where} is {fp}, not {given} as --fingerprint says; refusing")
        return "matches --fingerprint"
    if ask is not None:
        if ask(node, where, kind, fp):
            return "confirmed by you"
        raise HostKeyError(f"{node}: host key {fp} at {where} not accepted; nothing pinned")
    raise HostKeyError(f"{node}: unknown host key {kind} {fp} at {where}; check it on the server "
                       f"(ssh-keygen -lf /etc/ssh/ssh_host_{kind.replace('ssh-', '')}_key.pub) and pass "
                       f"--fingerprint {node}={fp}")


def parse_fingerprints(values: list[str], nodes: list[str]) -> dict[str, str]:
    """Parse `--fingerprint NODE=SHA256:...` options; UsageError naming a bad one or an unknown node."""
    import re

    from deployctl.errors import UsageError

    out = {}
    for value in values:
        name, _, fp = value.partition("=")
        if name not in nodes:
            raise UsageError(f"--fingerprint {value}: no node {name!r} in the inventory")
        if not re.fullmatch(r"SHA256:[A-Za-z0-9+/]{43}", fp):
            raise UsageError(f"--fingerprint {value}: should be NODE=SHA256:<43 base64 characters>")
        out[name] = fp
    return out
