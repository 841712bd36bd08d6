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

from deployctl.state.statedir import StateDir


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


def host_pattern(host: str, port: int) -> str:
    """Return how known_hosts names host:port (`host` on 22, `[host]:port` otherwise)."""
    return host if port == 22 else f"[{host}]:{port}"


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
