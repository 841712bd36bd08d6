"""The controller's state folder: every path under it, named in one place.

    keys/client_ed25519[.pub]      the controller's SSH key
    keys/known_hosts               the only host keys SSH trusts (pinned, never learned)
    keys/hosts/<node>_ed25519      each test-fleet node's host key (made before first contact)
    keys/token                     the routers' control token
    keys/signing_ed25519[.pub]     the artifact signing key
    keys/operator_ed25519[.pub]    this operator's key for signing rollout plans (`deployctl plan`)
    journal.jsonl                  the append-only deploy history
    deploy.lock                    the deploy lock
    manifests/<digest>.json        the manifest of every release rolled out (verify names drifted files)
    cache/agent-<key>.txt          the node agent, packed for the command line (commands.cache_program_in)
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from deployctl.errors import ConfigError, check_folder


@dataclass(frozen=True)
class StateDir:
    """Paths under the controller's state folder (only `locate`, which looks, and `token` touch the disk)."""

    root: Path

    @classmethod
    def locate(cls, given: Path | None = None) -> StateDir:
        """Return the folder given, else $DEPLOYCTL_STATE, else ./.deployctl, as an absolute path; UsageError
        (one line) if it, or the nearest part of it that exists, is a file (or cannot be looked at)."""
        root = Path(given or os.environ.get("DEPLOYCTL_STATE") or ".deployctl").absolute()
        check_folder(root, "state folder")
        return cls(root)

    @property
    def keys(self) -> Path:
        return self.root / "keys"

    @property
    def cache(self) -> Path:
        return self.root / "cache"

    @property
    def client_key(self) -> Path:
        return self.keys / "client_ed25519"

    @property
    def client_pub(self) -> Path:
        return self.keys / "client_ed25519.pub"

    @property
    def known_hosts(self) -> Path:
        return self.keys / "known_hosts"

    @property
    def token_file(self) -> Path:
        return self.keys / "token"

    @property
    def signing_key(self) -> Path:
        return self.keys / "signing_ed25519"  # artifact.PRIVATE_KEY_FILE

    @property
    def signing_pub(self) -> Path:
        return self.keys / "signing_ed25519.pub"  # artifact.PUBLIC_KEY_FILE

    @property
    def operator_key(self) -> Path:
        return self.keys / "operator_ed25519"

    @property
    def journal(self) -> Path:
        return self.root / "journal.jsonl"

    @property
    def lock(self) -> Path:
        return self.root / "deploy.lock"

    @property
    def manifests(self) -> Path:
        return self.root / "manifests"

    def host_key(self, node: str) -> Path:
        """Return the path of a test-fleet node's private host key (its .pub lies beside it)."""
        return self.keys / "hosts" / f"{node}_ed25519"

    def manifest(self, digest: str) -> Path:
        """Return the path of the kept manifest of release `digest`."""
        return self.manifests / f"{digest}.json"

    def token(self) -> str:
        """Return the fleet's control token; ConfigError if `fleet up` never made one."""
        try:
            return self.token_file.read_text().strip()
        except OSError:
            raise ConfigError(f"no control token at {self.token_file}: run `deployctl fleet up` first") from None
