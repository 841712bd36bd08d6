"""A bare fleet for end-to-end tests: plain Debian servers deployctl did not make, behind a bastion.

    from barefleet import bare_fleet

    @pytest.fixture(scope="module")
    def bare(tmp_path_factory):
        with bare_fleet(tmp_path_factory.mktemp("bare"), "deployctl-e2e-bare", nodes=3,
                        first_ssh_port=3751, first_router_port=9751, bastion_port=3750) as fleet:
            yield fleet

`bare_fleet` runs `deployctl fleet up --kind bare` as its own project on the given ports (compose file,
inventory and state folder in the given folder), and `fleet down --kind bare --keep-images` at the end,
failed or not. A test module on this fleet also overrides conftest's autouse `fleet` fixture (which
brings up the ordinary fleet) with a no-op of the same name.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from deployctl.testfleet import bare as barefleet

ROOT = Path(__file__).resolve().parents[2]
DEPLOYCTL = str(ROOT / ".venv" / "bin" / "deployctl")
SUDO_PASSWORD = barefleet.SUDO_PASSWORD  # deploy's sudo password on every bare node
USER = barefleet.LOGIN_USER  # "deploy", on the nodes and on the bastion


@dataclass(frozen=True)
class BareFleetHandle:
    """A running bare fleet: its files, its state folder, and where everything listens (all on 127.0.0.1)."""

    compose: Path
    inventory: Path  # user: deploy, become: sudo, proxy_jump: deploy@127.0.0.1:<bastion_port> on every node
    state: Path  # DEPLOYCTL_STATE: keys/client_ed25519 logs in as deploy; keys/known_hosts pins the host keys
    fleet: barefleet.BareFleet  # project, bastion_port, nodes {name: (ssh_port, router_port)}, fingerprints

    @property
    def client_key(self) -> Path:
        return self.state / "keys" / "client_ed25519"

    @property
    def known_hosts(self) -> Path:
        return self.state / "keys" / "known_hosts"

    def env(self) -> dict[str, str]:
        """The environment a `deployctl` process on this fleet runs with."""
        return {**os.environ, "DEPLOYCTL_STATE": str(self.state)}

    def cli(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        """Run `deployctl -i <inventory> ARGS` on this fleet."""
        return subprocess.run([DEPLOYCTL, "-i", str(self.inventory), *args], cwd=ROOT, env=self.env(),
                              capture_output=True, text=True, timeout=timeout)

    def set_forwarding(self, enabled: bool) -> None:
        """Turn the bastion's AllowTcpForwarding on or off (the next connection meets it)."""
        barefleet.set_forwarding(self.compose, enabled)

    def status(self) -> list[dict]:
        """`fleet status --kind bare --json`: one row per container (bastion first)."""
        out = self.cli("fleet", "status", "--kind", "bare", "--compose", str(self.compose), "--json", timeout=60)
        if out.returncode != 0:
            raise RuntimeError(out.stderr)
        return json.loads(out.stdout)


@contextmanager
def bare_fleet(folder: Path, project: str, nodes: int, first_ssh_port: int, first_router_port: int,
               bastion_port: int, pin_nodes: bool = True, state: Path | None = None) -> Iterator[BareFleetHandle]:
    """Bring up a bare fleet (through the CLI), yield it, and take it down with --keep-images."""
    compose, inventory = folder / "compose-bare.yaml", folder / "bare.yaml"
    state = state or folder / "state"
    handle = None
    env = {**os.environ, "DEPLOYCTL_STATE": str(state)}
    try:
        up = subprocess.run(
            [DEPLOYCTL, "-q", "-i", str(inventory), "fleet", "up", "--kind", "bare", "--compose", str(compose),
             "--nodes", str(nodes), "--project", project, "--first-ssh-port", str(first_ssh_port),
             "--first-router-port", str(first_router_port), "--bastion-port", str(bastion_port),
             "--pin-nodes" if pin_nodes else "--no-pin-nodes"],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
        if up.returncode != 0:
            raise RuntimeError(f"fleet up --kind bare exited {up.returncode}: {up.stderr.strip()}")
        handle = BareFleetHandle(compose, inventory, state, barefleet.describe(compose, state))
        yield handle
    finally:
        if compose.exists():
            down = subprocess.run([DEPLOYCTL, "fleet", "down", "--kind", "bare", "--keep-images", "--compose",
                                   str(compose)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
            if down.returncode != 0:
                raise RuntimeError(f"fleet down --kind bare exited {down.returncode}: {down.stderr.strip()}")
