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

from deployctl.errors import ConfigError


@dataclass(frozen=True)
class HostKey:
    """One node's ed25519 host key pair, in OpenSSH formats."""

    private_openssh: bytes
    public_line: str  # "ssh-ed25519 AAAA..."


@dataclass(frozen=True)
class Trust:
    """Paths of the fleet's secrets inside the controller's state folder."""

    root: Path

    @property
    def client_key(self) -> Path:
        return self.root / "keys" / "client_ed25519"

    @property
    def known_hosts(self) -> Path:
        return self.root / "keys" / "known_hosts"

    @property
    def token_file(self) -> Path:
        return self.root / "keys" / "token"

    def host_key_file(self, node: str) -> Path:
        return self.root / "keys" / "hosts" / f"{node}_ed25519"

    def token(self) -> str:
        """Return the fleet's control token; ConfigError if `fleet up` never made one."""
        try:
            return self.token_file.read_text().strip()
        except OSError:
            raise ConfigError(f"no control token at {self.token_file}: run `deployctl fleet up` first") from None


def _write_secret(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _new_keypair(comment: str) -> HostKey:
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
    pair = _new_keypair(comment)
    _write_secret(path, pair.private_openssh)
    pub.write_text(pair.public_line + "\n")
    return pair


def ensure(trust: Trust, nodes: list[tuple[str, str, int]]) -> dict[str, HostKey]:
    """Create any missing secret and rewrite known_hosts for `nodes` (name, host, ssh_port).

    Returns each node's host key; existing keys are kept so re-running is idempotent.
    """
    _load_or_create(trust.client_key, "deployctl-controller")
    if not trust.token_file.exists():
        _write_secret(trust.token_file, secrets.token_hex(32).encode() + b"\n")
    keys = {name: _load_or_create(trust.host_key_file(name), f"{name}-host") for name, _, _ in nodes}
    lines = []
    for name, host, port in nodes:
        kind, blob = keys[name].public_line.split()[:2]
        lines.append(f"[{host}]:{port} {kind} {blob}\n")
    _write_secret(trust.known_hosts, "".join(lines).encode())
    return keys


def client_public_line(trust: Trust) -> str:
    """Return the controller's public key line for authorized_keys."""
    return trust.client_key.with_name(trust.client_key.name + ".pub").read_text().strip()


def fingerprint(public_line: str) -> str:
    """Return the OpenSSH SHA256 fingerprint of a public key line."""
    import hashlib

    blob = base64.b64decode(public_line.split()[1])
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")
