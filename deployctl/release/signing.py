"""The artifact signing key: an ed25519 pair made on the controller, the private half never leaves it.

The private key is PEM PKCS8 (0600); the public key is 64 hex digits, the form a node's agent reads.
cryptography is imported inside each function: commands that never sign or check pay nothing for it.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import TYPE_CHECKING

from deployctl.config.schema import read_regular
from deployctl.errors import ArtifactError, check_folder, describe_os_error

KEY_BYTES = 64 << 10  # an ed25519 key file is about 120 bytes: more is not a key (and is never read whole)

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

PRIVATE_KEY_FILE = "signing_ed25519"
PUBLIC_KEY_FILE = "signing_ed25519.pub"


def generate(dir: Path) -> tuple[Path, Path]:  # noqa: A002 - the documented parameter name
    """Write a new ed25519 key pair into `dir` and return (private, public) paths; ArtifactError if one exists."""
    return generate_at(Path(dir) / PRIVATE_KEY_FILE, Path(dir) / PUBLIC_KEY_FILE)


def public_hex(key: Ed25519PrivateKey) -> str:
    """Return the public half of `key` as 64 hex digits (the .pub form)."""
    from cryptography.hazmat.primitives import serialization

    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw).hex()


def generate_at(private: Path, public: Path) -> tuple[Path, Path]:
    """Write a new ed25519 key pair at `private` (PEM, 0600) and `public` (hex); ArtifactError if either exists."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    private, public = Path(private), Path(public)
    dir = private.parent  # noqa: A001
    if private.exists() or public.exists():
        raise ArtifactError(f"{private}: a signing key already exists; refusing to replace it")
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    check_folder(dir, "key folder")
    try:
        Path(dir).mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(private, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o600)
            f.write(pem)
        public.write_text(raw.hex() + "\n", encoding="ascii")
    except OSError as exc:
        raise ArtifactError(f"{dir}: cannot write signing key ({describe_os_error(exc)})") from None
    return private, public


def private_key(path: Path) -> Ed25519PrivateKey:
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    try:
        key = serialization.load_pem_private_key(read_regular(Path(path), ArtifactError, KEY_BYTES), password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        key = None
    if not isinstance(key, Ed25519PrivateKey):
        raise ArtifactError(f"{Path(path).name}: not an unencrypted PEM PKCS8 ed25519 private key")
    return key


def public_key(path: Path) -> Ed25519PublicKey:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    text = read_regular(Path(path), ArtifactError, KEY_BYTES).strip()
    if not re.fullmatch(rb"[0-9a-f]{64}", text):
        raise ArtifactError(f"{Path(path).name}: not a hex-encoded ed25519 public key")
    return Ed25519PublicKey.from_public_bytes(bytes.fromhex(text.decode("ascii")))
