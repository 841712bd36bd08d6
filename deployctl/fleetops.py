"""`deployctl build` and `deployctl fleet up|down|status`: the artifact and the Docker-composed test fleet."""

from __future__ import annotations

import socket
from pathlib import Path

from deployctl import artifact as artifact_mod, docker_fleet, gate, trust as trust_mod
from deployctl.api import Context, wait_for
from deployctl.errors import ConfigError, DeployctlError, UnreachableError


def signing_key(ctx: Context) -> Path:
    """Return the controller's artifact signing key, creating the pair on first use."""
    keys = ctx.state_dir / "keys"
    if not (keys / artifact_mod.PRIVATE_KEY_FILE).exists():
        keys.mkdir(parents=True, exist_ok=True, mode=0o700)
        artifact_mod.generate_signing_key(keys)
    return keys / artifact_mod.PRIVATE_KEY_FILE


def build(ctx: Context, out_dir: Path | None = None, source: Path | None = None) -> artifact_mod.Artifact:
    """Build the reproducible, signed artifact of the playbook's source; return it."""
    key = signing_key(ctx)
    out = Path(out_dir or Path.cwd() / "dist")
    out.mkdir(parents=True, exist_ok=True)
    art = artifact_mod.build(Path(source or ctx.playbook.source), out, ctx.playbook.name, key)
    ctx.emit("built", artifact=str(art.path), digest=art.digest, version=art.version)
    return art


def _check_matches_inventory(ctx: Context, spec: docker_fleet.FleetSpec) -> None:
    """The compose file and the inventory must describe the same nodes on the same ports."""
    published = {n.service: dict((c, h) for h, c in n.ports) for n in spec.nodes}
    for node in ctx.nodes:
        ports = published.get(node.name)
        if ports is None:
            raise ConfigError(f"compose.yaml: services: no node {node.name!r} (it is in {ctx.inventory.path.name})")
        if ports.get(22) != node.ssh_port or ports.get(8080) != node.router_port:
            raise ConfigError(f"compose.yaml: services/{node.name}/ports: should publish 127.0.0.1:{node.ssh_port}:22 "
                              f"and 127.0.0.1:{node.router_port}:8080 as {ctx.inventory.path.name} says")


def _sshd_answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1) as s:
            s.settimeout(2)
            return s.recv(8).startswith(b"SSH-")
    except OSError:
        return False


def fleet_up(ctx: Context, compose: Path, timeout: float = 120) -> dict[str, str]:
    """Build images if needed, start the nodes, install the first release, wait until all answer.

    Idempotent: matching running nodes are kept as they are. Returns node -> what was done.
    """
    spec = docker_fleet.load_spec(compose)
    _check_matches_inventory(ctx, spec)
    dc = docker_fleet.client()
    ctx.emit("step", message="node image")
    image_id = docker_fleet.ensure_image(dc, spec)
    files = _node_files(ctx)
    done = {}
    for node in spec.nodes:
        if node.service in files:
            done[node.service] = docker_fleet.start_node(dc, spec, node, image_id, files[node.service])
            ctx.emit("node", phase="up", node=node.service, ok=True, reason=done[node.service])
    slow = [n.name for n in ctx.nodes
            if not wait_for(lambda n=n: _sshd_answers(n.host, n.ssh_port), timeout, 0.1)]
    if slow:
        raise UnreachableError(f"fleet up: sshd did not answer within {timeout:g}s on {', '.join(slow)}")
    _install_first_release(ctx)
    return done


def _node_files(ctx: Context) -> dict[str, docker_fleet.NodeFiles]:
    """Return what each inventory node gets installed: its host key, our client key, the token, the signing key."""
    t = ctx.trust
    keys = trust_mod.ensure(t, [(n.name, n.host, n.ssh_port) for n in ctx.nodes])
    client_pub, token = trust_mod.client_public_line(t), t.token()
    signing_pub = signing_key(ctx).with_name(artifact_mod.PUBLIC_KEY_FILE).read_text().strip()
    return {name: docker_fleet.NodeFiles(k.private_openssh, k.public_line, client_pub, token, signing_pub)
            for name, k in keys.items()}


def replace_node(ctx: Context, compose: Path, name: str, tmpfs: dict[str, str]) -> None:
    """Recreate one node with tmpfs mounts (fault tests: a small disk); it starts with no release.

    A later `fleet_up` puts the ordinary node back.
    """
    spec = docker_fleet.load_spec(compose)
    dc = docker_fleet.client()
    node = next(n for n in spec.nodes if n.service == name)
    docker_fleet.start_node(dc, spec, node, docker_fleet.ensure_image(dc, spec), _node_files(ctx)[name], tmpfs)
    target = next(n for n in ctx.nodes if n.name == name)
    if not wait_for(lambda: _sshd_answers(target.host, target.ssh_port), 60, 0.1):
        raise UnreachableError(f"{name}: sshd did not answer after replacing the node")


def _install_first_release(ctx: Context) -> None:
    """Roll out the playbook's source unless every node already runs one same release."""
    from deployctl import deploy

    from deployctl.runner import probe_all

    with ctx.ssh() as fleet:
        currents = {p.current for p in probe_all(ctx, fleet, "fleet up").values()}
    health = gate.health(ctx.nodes, ctx.playbook.service.health_path)
    running = {a.body.get("digest") if a.ok else None for a in health.values()}
    if len(currents) == 1 and None not in currents and running == currents:
        ctx.emit("step", message=f"every node runs {next(iter(currents))[:12]}: nothing to install")
        return
    art = build(ctx)
    ctx.emit("step", message=f"installing release {art.digest[:12]} on every node")
    deploy.rollout(ctx, art.path)


def fleet_down(ctx: Context, compose: Path, keep_images: bool = False) -> list[str]:
    """Remove every container, the network and (unless keep_images) the images `up` made; idempotent."""
    return docker_fleet.down(docker_fleet.client(), docker_fleet.load_spec(compose), keep_images)


def fleet_status(ctx: Context, compose: Path) -> list[dict]:
    """Return one row per node: container state, ports, sshd answering, router health."""
    spec = docker_fleet.load_spec(compose)
    states = docker_fleet.states(docker_fleet.client(), spec)
    health = gate.health(ctx.nodes, ctx.playbook.service.health_path, timeout=1.0)
    rows = []
    for n in ctx.nodes:
        h = health[n.name]
        rows.append({
            "node": n.name, "container": states.get(n.name, "absent"), "ssh": f"{n.host}:{n.ssh_port}",
            "sshd": _sshd_answers(n.host, n.ssh_port), "router": f"{n.host}:{n.router_port}",
            "digest": h.body.get("digest") if h.ok else None, "gate": h.body.get("gate") if h.ok else None,
            "halted": h.body.get("halted") if h.ok else None, "problem": None if h.ok else h.reason(),
        })
    return rows


def logs(compose: Path, node: str, lines: int = 50) -> str:
    """Return the tail of a node's container, sshd and router logs (for failing tests)."""
    spec = docker_fleet.load_spec(compose)
    c = docker_fleet.container(docker_fleet.client(), spec, node)
    code, out = c.exec_run(["sh", "-c", f"tail -n {int(lines)} /var/log/router.log /var/log/sshd.log"])
    if code != 0:
        raise DeployctlError(f"{node}: cannot read logs")
    return out.decode(errors="replace")

