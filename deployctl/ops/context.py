"""Context: what every command works with (inventory, playbook, state folder, connections, events).

Nothing here prints: progress goes to the `on_event` callback (a no-op by default), which the CLI
renders. `connect` and `routers` are the two seams to the nodes; unit tests put an in-memory fleet
there (tests/unit/fakefleet.py), everything else uses SSH and HTTP.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from deployctl.config.inventory import Inventory, Node, load_inventory
from deployctl.config.playbook import Playbook, load_playbook
from deployctl.errors import UsageError
from deployctl.remote import agentpack
from deployctl.remote.routers import Routers
from deployctl.remote.ssh import Fleet, SSHFleet, Target
from deployctl.remote.sshconnect import Bastions
from deployctl.state.journal import Journal, actor
from deployctl.state.lock import Lock
from deployctl.state.statedir import StateDir

if TYPE_CHECKING:  # imported where used: read-only commands never load tar and key code
    from deployctl.release.artifact import Artifact

Event = Callable[..., None]


def quiet(kind: str, **data: Any) -> None:
    """The default event sink: the library never prints."""


@dataclass
class Context:
    """Everything a command needs: inventory, playbook, the controller's state folder, an event sink."""

    inventory: Inventory
    playbook: Playbook
    state_dir: Path
    on_event: Event = quiet
    connect: Callable[[list[Node]], Fleet] | None = field(default=None, repr=False)
    http: Routers | None = field(default=None, repr=False)
    _token: str | None = field(default=None, repr=False)
    _bastions: Bastions | None = field(default=None, repr=False)

    @property
    def state(self) -> StateDir:
        return StateDir(self.state_dir)

    @property
    def journal(self) -> Journal:
        return Journal(self.state.journal)

    @property
    def lock(self) -> Lock:
        return Lock(self.state.lock)

    @property
    def root(self) -> str:
        return self.playbook.install_root

    @property
    def nodes(self) -> list[Node]:
        return list(self.inventory.nodes)

    @property
    def routers(self) -> Routers:
        """The fleet's routers over HTTP (or the injected fake)."""
        if self.http is not None:
            return self.http
        opener = self._router_socket if any(n.proxy_jump for n in self.nodes) else None
        return Routers(self.token, actor(), self.playbook.service.health_path, opener)

    def bastions(self) -> Bastions:
        """Return the command's bastion connections, shared by SSH and the routers' HTTP (made on first use)."""
        if self._bastions is None:
            state = self.state
            self._bastions = Bastions(state.client_key, state.known_hosts,
                                      min(self.inventory.connect_timeout, self.playbook.timeouts.connect))
        return self._bastions

    def _router_socket(self, node: Node, timeout: float):
        return self.bastions().socket(node.proxy_jump, node.host, node.router_port, timeout)

    def close(self) -> None:
        """Close the bastion connections, if any were opened; safe to call twice."""
        if self._bastions is not None:
            self._bastions.close()

    def token(self) -> str:
        """Return the routers' control token, read once; ConfigError if there is none."""
        if self._token is None:
            self._token = self.state.token()
        return self._token

    def emit(self, kind: str, **data: Any) -> None:
        """Hand an event to the sink. A sink that fails to write (OSError: a closed or broken pipe, a
        terminal gone) loses that event, never the run: a run stopped by its own output would leave
        the fleet part-switched, without its `done` record."""
        try:
            self.on_event(kind, **data)
        except OSError:
            pass

    def ssh(self, nodes: list[Node] | None = None) -> Fleet:
        """Return connections to `nodes` (all by default); use it as a context manager."""
        nodes = nodes or self.nodes
        if self.connect is not None:
            return self.connect(nodes)
        state = self.state
        if not state.client_key.exists() or not state.known_hosts.exists():
            raise UsageError(f"no fleet keys in {state.keys}: run `deployctl fleet up` first")
        agentpack.cache_program_in(state.cache)
        targets = [Target(n.name, n.host, n.ssh_port, n.user, Path(n.identity_file) if n.identity_file else None,
                          n.proxy_jump) for n in nodes]
        return SSHFleet(targets, state.client_key, state.known_hosts,
                        min(self.inventory.connect_timeout, self.playbook.timeouts.connect), self.inventory.parallel,
                        self.bastions() if any(t.jumps for t in targets) else None)

    def signing_key(self) -> Path:
        """Return the controller's artifact signing key, creating the pair on first use."""
        from deployctl.release import signing

        if not self.state.signing_key.exists():
            signing.generate(self.state.keys)
        return self.state.signing_key

    def load_artifact(self, path: Path) -> Artifact:
        """Load and check a signed artifact against the controller's signing key; ArtifactError if bad."""
        from deployctl.release import artifact as artifact_mod

        pub = self.state.signing_pub
        if not pub.exists():
            raise UsageError(f"no signing key at {pub}: build the artifact with `deployctl build` first")
        return artifact_mod.load(Path(path), pub)

    def keep_manifest(self, art: Artifact) -> None:
        """Keep the artifact's manifest, so `verify` can name the files that drifted from it."""
        self.state.manifests.mkdir(parents=True, exist_ok=True)
        self.state.manifest(art.digest).write_bytes(art.manifest_bytes)

    def manifest(self, digest: str | None, key: str = "files") -> dict | None:
        """Return the per-file manifest kept for `digest` (or its `key` part: "flags"), if any."""
        if not digest or "/" in digest:
            return None
        try:
            doc = json.loads(self.state.manifest(digest).read_text())
            return doc[key] if isinstance(doc.get(key), dict) else None
        except (OSError, ValueError, KeyError, AttributeError):
            return None


def open_context(inventory: Path, playbook: Path, state_dir: Path | None = None, on_event: Event = quiet) -> Context:
    """Load and validate inventory and playbook (before any connection); ConfigError on bad input."""
    return Context(load_inventory(inventory), load_playbook(playbook), StateDir.locate(state_dir).root, on_event)
