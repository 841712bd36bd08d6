"""The fleet's secrets on the controller: client key, node host keys, known_hosts, control token.

Everything is generated locally before the first contact, so the controller
knows every node's host key in advance and never trusts on first use.
"""

from __future__ import annotations

import base64
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from deployctl.statedir import StateDir


@dataclass(frozen=True)
class HostKey:
    """One node's ed25519 host key pair, in OpenSSH formats."""

    private_openssh: bytes
    public_line: str  # "ssh-ed25519 AAAA..."


def _write_secret(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def new_keypair(comment: str) -> HostKey:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    )
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return HostKey(private, f"{public.decode()} {comment}")


def _load_or_create(path: Path, comment: str) -> HostKey:
    pub = path.with_name(path.name + ".pub")
    if path.exists() and pub.exists():
        return HostKey(path.read_bytes(), pub.read_text().strip())
    pair = new_keypair(comment)
    _write_secret(path, pair.private_openssh)
    pub.write_text(pair.public_line + "\n")
    return pair


def ensure(state: StateDir, nodes: list[tuple[str, str, int]]) -> dict[str, HostKey]:
    """Create any missing secret and rewrite known_hosts for `nodes` (name, host, ssh_port).

    Returns each node's host key; existing keys are kept so re-running is idempotent.
    """
    _load_or_create(state.client_key, "deployctl-controller")
    if not state.token_file.exists():
        _write_secret(state.token_file, secrets.token_hex(32).encode() + b"\n")
    keys = {name: _load_or_create(state.host_key(name), f"{name}-host") for name, _, _ in nodes}
    lines = []
    for name, host, port in nodes:
        kind, blob = keys[name].public_line.split()[:2]
        lines.append(f"[{host}]:{port} {kind} {blob}\n")
    _write_secret(state.known_hosts, "".join(lines).encode())
    return keys


def ensure_controller(state: StateDir) -> None:
    """Create the controller's SSH key and the control token if missing; known_hosts is left alone."""
    _load_or_create(state.client_key, "deployctl-controller")
    if not state.token_file.exists():
        _write_secret(state.token_file, secrets.token_hex(32).encode() + b"\n")


def host_keys(state: StateDir, names: list[str]) -> dict[str, HostKey]:
    """Return the host key of each name (made on first use, kept after) and make sure the client key exists."""
    _load_or_create(state.client_key, "deployctl-controller")
    return {name: _load_or_create(state.host_key(name), f"{name}-host") for name in names}


def pin(state: StateDir, entries: dict[tuple[str, int], str | None]) -> None:
    """Set the known_hosts line of each (host, port) to its public key line, or drop it where None;
    every other line is kept (unlike `ensure`, which rewrites the file for one fleet)."""
    patterns = {f"[{host}]:{port}": line for (host, port), line in entries.items()}
    old = state.known_hosts.read_text().splitlines() if state.known_hosts.exists() else []
    kept = [line for line in old if line.split(" ", 1)[0] not in patterns]
    kept += [f"{pattern} {' '.join(line.split()[:2])}" for pattern, line in patterns.items() if line]
    _write_secret(state.known_hosts, "".join(f"{line}\n" for line in kept).encode())


def client_public_line(state: StateDir) -> str:
    """Return the controller's public key line for authorized_keys."""
    return state.client_pub.read_text().strip()


def fingerprint(public_line: str) -> str:
    """Return the OpenSSH SHA256 fingerprint of a public key line."""
    import hashlib

    blob = base64.b64decode(public_line.split()[1])
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


# ---- enroll: pinning a server's host key, never on first use without saying so ------------------

def host_pattern(host: str, port: int) -> str:
    """Return how known_hosts names host:port (`host` on 22, `[host]:port` otherwise)."""
    return host if port == 22 else f"[{host}]:{port}"


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
    name, keys, revoked = host_pattern(host, port), [], []
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


def pin_host_key(state: StateDir, host: str, port: int, presented: str) -> None:
    """Append the host key ("keytype base64") to the state folder's known_hosts, the one SSH trusts."""
    state.keys.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(state.known_hosts, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    with os.fdopen(fd, "a") as f:
        f.write(f"{host_pattern(host, port)} {presented}\n")
        f.flush()
        os.fsync(f.fileno())


def pin_host_keys_file(state: StateDir) -> None:
    """Create an empty known_hosts in the state folder (mode 0600) if there is none."""
    if not state.known_hosts.exists():
        _write_secret(state.known_hosts, b"")


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
