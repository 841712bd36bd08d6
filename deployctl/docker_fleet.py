"""The Docker side of the test fleet: build the node image, create, start, inspect and remove the nodes.

The nodes are described by containers/compose.yaml; this module writes that file
for N nodes, reads back the part of it the fleet uses and drives the Docker SDK
directly, so no compose binary is needed. Only this module imports the docker SDK.
"""

from __future__ import annotations

import hashlib
import io
import re
import subprocess
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

from deployctl.config import bare_ports, fleet_ports
from deployctl.schema import load_yaml
from deployctl.errors import ConfigError, DeployctlError, DockerUnavailableError

_PORT = re.compile(r"^127\.0\.0\.1:(\d{1,5}):(\d{1,5})$")
IMAGE_LABEL = "deployctl.context"
MADE_LABEL = "deployctl.made"
_PROJECT = re.compile(r"[a-z0-9][a-z0-9_-]*")  # what load_spec accepts as the compose `name`

_COMPOSE_HEADER = """\
# The nodes of the test fleet. `deployctl fleet up --nodes N` writes this file
# (docker_fleet.compose_text), then reads it and creates the containers with the
# Docker SDK (it does not need docker compose); ports are published on 127.0.0.1
# only, and must match fleet/fleet.yaml.
"""

_COMPOSE_NODE = """\
  {name}:
    image: deployctl/node:latest
    build: {{context: {context}, dockerfile: Dockerfile}}
    hostname: {name}
    ports: ["127.0.0.1:{ssh}:22", "127.0.0.1:{router}:8080"]
    networks: [fleet]
"""


@dataclass(frozen=True)
class NodeSpec:
    """One node of the compose file: container name, hostname, published ports (host -> container)."""

    service: str
    container: str
    hostname: str
    ports: tuple[tuple[int, int], ...]
    # The bare fleet's bastion: host networking and its own command. Out of repr (the containers'
    # config label hashes it) so that the ordinary nodes' labels stay what they were.
    network_mode: str = field(default="", repr=False)
    command: tuple[str, ...] = field(default=(), repr=False)


@dataclass(frozen=True)
class FleetSpec:
    """The compose file's project: name, image tag, build folder, network, nodes."""

    project: str
    image: str
    context: Path
    network: str
    nodes: tuple[NodeSpec, ...]


@dataclass(frozen=True)
class NodeFiles:
    """What `up` installs into a node before it starts: host key, authorized key, control token, signing key."""

    host_key: bytes
    host_pub: str
    authorized_key: str
    token: str
    signing_pub: str

    def label_parts(self) -> tuple[str, ...]:
        """Return what the container's config label hashes besides the image and the node."""
        return (self.host_pub, self.authorized_key, self.token, self.signing_pub)

    def members(self) -> tuple[tuple[str, bytes, int, int], ...]:
        """Return the files put into the container before it starts: (path, data, mode, uid)."""
        return (("etc/ssh/ssh_host_ed25519_key", self.host_key, 0o600, 0),
                ("etc/ssh/ssh_host_ed25519_key.pub", self.host_pub.encode() + b"\n", 0o644, 0),
                ("root/.ssh/authorized_keys", self.authorized_key.encode() + b"\n", 0o600, 0),
                ("opt/router/state/token", self.token.encode() + b"\n", 0o600, 0),
                ("opt/router/state/signing.pub", self.signing_pub.encode() + b"\n", 0o644, 0))


BARE_USER, BARE_UID = "deploy", 1000  # the login user of containers/bare/Dockerfile


@dataclass(frozen=True)
class BareFiles:
    """What `up --kind bare` puts into a bare node or the bastion: its host key and the login user's
    authorized key, as an operator provisions a server; nothing of deployctl."""

    host_key: bytes
    host_pub: str
    authorized_key: str

    def label_parts(self) -> tuple[str, ...]:
        """Return what the container's config label hashes besides the image and the node."""
        return ("bare", self.host_pub, self.authorized_key)

    def members(self) -> tuple[tuple[str, bytes, int, int], ...]:
        """Return the files put into the container before it starts: (path, data, mode, uid)."""
        return (("etc/ssh/ssh_host_ed25519_key", self.host_key, 0o600, 0),
                ("etc/ssh/ssh_host_ed25519_key.pub", self.host_pub.encode() + b"\n", 0o644, 0),
                (f"home/{BARE_USER}/.ssh/authorized_keys", self.authorized_key.encode() + b"\n", 0o600, BARE_UID))


def load_spec(path: Path) -> FleetSpec:
    """Read containers/compose.yaml; ConfigError on anything outside the subset the fleet uses."""
    doc = load_yaml(path)
    name = path.name
    if not isinstance(doc, dict) or not isinstance(doc.get("services"), dict) or not doc["services"]:
        raise ConfigError(f"{name}: services: should be a non-empty mapping")
    project = doc.get("name")
    if not isinstance(project, str) or not re.fullmatch(r"[a-z0-9][a-z0-9_-]*", project):
        raise ConfigError(f"{name}: name: should be a lowercase project name")
    images, contexts, nodes = set(), set(), []
    for svc, body in doc["services"].items():
        if not isinstance(body, dict):
            raise ConfigError(f"{name}: services/{svc}: should be a mapping")
        images.add(body.get("image"))
        build = body.get("build") or {}
        contexts.add(build.get("context", ".") if isinstance(build, dict) else None)
        ports = []
        for i, spec in enumerate(body.get("ports") or []):
            m = _PORT.match(str(spec))
            if not m:
                raise ConfigError(f"{name}: services/{svc}/ports/{i}: should be '127.0.0.1:HOST:CONTAINER'")
            ports.append((int(m.group(1)), int(m.group(2))))
        mode, command = _host_mode(name, svc, body, ports)
        nodes.append(NodeSpec(svc, f"{project}-{svc}", str(body.get("hostname", svc)), tuple(ports), mode, command))
    if len(images) != 1 or not isinstance(next(iter(images)), str):
        raise ConfigError(f"{name}: services: every node should name the same image")
    if len(contexts) != 1 or not isinstance(next(iter(contexts)), str):
        raise ConfigError(f"{name}: services: every node should have the same build context (a folder)")
    context = (path.parent / contexts.pop()).resolve()
    return FleetSpec(project, images.pop(), context, f"{project}-net", tuple(nodes))


def _host_mode(name: str, svc: str, body: dict, ports: list) -> tuple[str, tuple[str, ...]]:
    """Return a service's network_mode ("" or "host") and command; ConfigError outside that subset."""
    mode, command = body.get("network_mode", ""), body.get("command", [])
    if mode not in ("", "host"):
        raise ConfigError(f"{name}: services/{svc}/network_mode: should be 'host' or absent")
    if mode and ports:
        raise ConfigError(f"{name}: services/{svc}/ports: a service with network_mode host publishes no ports")
    if not isinstance(command, list) or not all(isinstance(a, (str, int)) for a in command):
        raise ConfigError(f"{name}: services/{svc}/command: should be a list of strings")
    return mode, tuple(str(a) for a in command)


def compose_text(nodes: int, project: str = "deployctl-fleet", first_ssh_port: int = 2201,
                 first_router_port: int = 8101, context: str = ".") -> str:
    """Return the YAML text of containers/compose.yaml for node1..nodeN (defaults, nodes=8: the committed file);
    ConfigError, one line, on a bad count, port range or project name. `context`: the image's build
    folder (containers/), relative to the compose file."""
    ports = fleet_ports(nodes, first_ssh_port, first_router_port)
    if not isinstance(project, str) or not _PROJECT.fullmatch(project):
        raise ConfigError(f"--project: should be a lowercase project name matching ^{_PROJECT.pattern}$, "
                          f"got {project!r}")
    body = "".join(_COMPOSE_NODE.format(name=name, ssh=ssh, router=router, context=context) for name, ssh, router in ports)
    return f"{_COMPOSE_HEADER}name: {project}\nservices:\n{body}networks:\n  fleet: {{}}\n"


_BARE_HEADER = """\
# The bare test fleet: plain Debian servers deployctl did not make, and the bastion that
# reaches them. `deployctl fleet up --kind bare --nodes N` writes this file
# (docker_fleet.bare_compose_text) and fleet/bare.yaml, then creates the containers with the
# Docker SDK. Nodes publish on 127.0.0.1 only; the bastion runs with host networking, its
# sshd on 127.0.0.1:{bastion} only, and reaches the nodes on their published ports.
"""

_BARE_BASTION = """\
  bastion:
    image: deployctl/bare:latest
    build: {{context: {context}, dockerfile: Dockerfile}}
    network_mode: host
    command: ["/usr/sbin/sshd", "-D", "-e", "-f", "/etc/ssh/bastion_config", "-p", "{bastion}"]
"""

_BARE_NODE = """\
  {name}:
    image: deployctl/bare:latest
    build: {{context: {context}, dockerfile: Dockerfile}}
    hostname: {name}
    ports: ["127.0.0.1:{ssh}:22", "127.0.0.1:{router}:8080"]
    networks: [fleet]
"""


def bare_compose_text(nodes: int, project: str = "deployctl-bare", first_ssh_port: int = 2601,
                      first_router_port: int = 8601, bastion_port: int = 2600, context: str = "bare") -> str:
    """Return the YAML text of containers/compose-bare.yaml: the bastion and node1..nodeN of the bare image;
    ConfigError, one line, on a bad count, port or project name. `context`: containers/bare/, relative to
    the compose file."""
    ports = bare_ports(nodes, first_ssh_port, first_router_port, bastion_port)
    if not isinstance(project, str) or not _PROJECT.fullmatch(project):
        raise ConfigError(f"--project: should be a lowercase project name matching ^{_PROJECT.pattern}$, "
                          f"got {project!r}")
    body = _BARE_BASTION.format(context=context, bastion=bastion_port) + "".join(
        _BARE_NODE.format(name=name, ssh=ssh, router=router, context=context) for name, ssh, router in ports)
    return f"{_BARE_HEADER.format(bastion=bastion_port)}name: {project}\nservices:\n{body}networks:\n  fleet: {{}}\n"


def client():
    """Return a Docker SDK client; DockerUnavailableError, saying how to start one, if none answers."""
    import docker

    try:
        c = docker.from_env(timeout=120)
        c.ping()
        return c
    except Exception as exc:  # the SDK raises several unrelated types here
        raise DockerUnavailableError(
            f"no Docker engine reachable ({type(exc).__name__}): start one with `bash scripts/dockerd.sh start` "
            "(installs Debian's docker.io if needed) or `sudo systemctl start docker`"
        ) from None


def context_hash(context: Path) -> str:
    """Return a sha256 over the build folder's files, so a changed Dockerfile means a rebuild. Compose
    files are left out: `fleet up --nodes N` rewrites them, and the image does not depend on them; so are
    subfolders with a Dockerfile of their own (containers/bare/: another image)."""
    h = hashlib.sha256()
    others = {d.parent for d in context.rglob("*/Dockerfile")}
    for f in sorted(p for p in context.rglob("*") if p.is_file() and not p.match("compose*.y*ml")
                    and not others.intersection(p.parents)):
        h.update(f.relative_to(context).as_posix().encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()


def ensure_image(dc, spec: FleetSpec) -> str:
    """Build the node image unless one built from the same folder exists; return its id."""
    import docker

    want = context_hash(spec.context)
    try:
        img = dc.images.get(spec.image)
        if img.labels.get(IMAGE_LABEL) == want:
            return img.id
    except docker.errors.ImageNotFound:
        pass
    base = subprocess.run(["bash", str(spec.context / "base-image.sh")], capture_output=True, text=True)
    if base.returncode != 0:
        raise DeployctlError(f"base image: {(base.stderr or base.stdout).strip().splitlines()[-1:]}")
    try:
        img, _ = dc.images.build(
            path=str(spec.context), tag=spec.image, labels={IMAGE_LABEL: want, MADE_LABEL: _made(spec.image)}, rm=True,
            forcerm=True,
        )
    except docker.errors.BuildError as exc:
        raise DeployctlError(f"{spec.image} image build failed: {exc.msg}") from None
    return img.id


def _made(image: str) -> str:
    """Return the MADE_LABEL value of an image we build: "node" for deployctl/node:latest, "bare" for deployctl/bare."""
    return image.rsplit("/", 1)[-1].split(":")[0]


def _config_label(image_id: str, node: NodeSpec, files: NodeFiles | BareFiles) -> str:
    h = hashlib.sha256()
    host_mode = (node.network_mode, *node.command) if node.network_mode or node.command else ()
    for part in (image_id, repr(node), *host_mode, *files.label_parts()):
        h.update(part.encode() + b"\0")
    return h.hexdigest()


def _files_tar(files: NodeFiles | BareFiles) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for path, data, mode, uid in files.members():
            info = tarfile.TarInfo(path)
            info.size, info.mode, info.uid, info.gid = len(data), mode, uid, uid
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _network(dc, spec: FleetSpec):
    import docker

    try:
        return dc.networks.get(spec.network)
    except docker.errors.NotFound:
        return dc.networks.create(spec.network, driver="bridge", labels={"deployctl.fleet": spec.project})


def start_node(dc, spec: FleetSpec, node: NodeSpec, image_id: str, files: NodeFiles | BareFiles,
               tmpfs: dict[str, str] | None = None) -> str:
    """Make `node` run with `files` installed: keep a matching container, else replace it.

    `tmpfs` (path -> mount options) is for fault tests, e.g. a small releases folder; it is part of
    the container's identity, so a later plain `fleet up` replaces such a node. Returns what was
    done: "kept", "started" or "created".
    """
    import docker

    label = _config_label(image_id, node, files) + (":tmpfs=" + repr(sorted(tmpfs.items())) if tmpfs else "")
    try:
        old = dc.containers.get(node.container)
        if old.labels.get("deployctl.config") == label:
            if old.status != "running":
                old.start()
                return "started"
            return "kept"
        old.remove(force=True)  # a leftover from another run, image or keys: replace it
    except docker.errors.NotFound:
        pass
    if node.network_mode == "host":  # the bastion: it reaches the nodes on 127.0.0.1, as the controller does
        where = {"network_mode": "host"}
    else:
        _network(dc, spec)
        where = {"hostname": node.hostname, "network": spec.network,
                 "ports": {f"{cport}/tcp": ("127.0.0.1", hport) for hport, cport in node.ports}}
    c = dc.containers.create(
        image_id, name=node.container, detach=True, command=list(node.command) or None, **where,
        labels={"deployctl.fleet": spec.project, "deployctl.node": node.service, "deployctl.config": label},
        mem_limit="256m", init=True, tmpfs=tmpfs or {},
    )
    c.put_archive("/", _files_tar(files))
    try:
        c.start()
    except docker.errors.APIError as exc:
        c.remove(force=True)
        raise DeployctlError(f"{node.service}: container did not start: {exc.explanation}") from None
    return "created"


def down(dc, spec: FleetSpec, keep_images: bool) -> list[str]:
    """Remove the fleet's containers and network (and the images it built unless `keep_images`); idempotent."""
    import docker

    removed = []
    for c in dc.containers.list(all=True, filters={"label": f"deployctl.fleet={spec.project}"}):
        c.remove(force=True)
        removed.append(c.name)
    for net in dc.networks.list(names=[spec.network]):
        net.remove()
        removed.append(f"network {net.name}")
    if not keep_images:
        for img in dc.images.list(filters={"label": MADE_LABEL}):
            for tag in img.tags or [img.id]:
                try:
                    dc.images.remove(tag, force=True)
                    removed.append(f"image {tag}")
                except docker.errors.ImageNotFound:
                    pass
    return removed


def remove_extra(dc, spec: FleetSpec) -> list[str]:
    """Remove the project's containers that the compose file no longer lists (a fleet made smaller)."""
    keep = {n.container for n in spec.nodes}
    gone = [c for c in dc.containers.list(all=True, filters={"label": f"deployctl.fleet={spec.project}"})
            if c.name not in keep]
    for c in gone:
        c.remove(force=True)
    return [c.name for c in gone]


def states(dc, spec: FleetSpec) -> dict[str, str]:
    """Return each node's container status ("running", "exited", ... or "absent")."""
    found = {
        c.labels.get("deployctl.node"): c.status
        for c in dc.containers.list(all=True, filters={"label": f"deployctl.fleet={spec.project}"})
    }
    return {n.service: found.get(n.service, "absent") for n in spec.nodes}


def container(dc, spec: FleetSpec, node: str):
    """Return the container of `node` (for fault tests and log dumps); DeployctlError if absent."""
    import docker

    try:
        return dc.containers.get(f"{spec.project}-{node}")
    except docker.errors.NotFound:
        raise DeployctlError(f"{node}: no container {spec.project}-{node}: run `deployctl fleet up`") from None
