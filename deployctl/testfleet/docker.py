"""The Docker side of the test fleet: build the node image, create, start, inspect and remove the nodes.

The nodes are described by the compose file (testfleet/compose.py writes it and reads back the part the
fleet uses); this module drives the Docker SDK directly, so no compose binary is needed. Only this
module imports the docker SDK, and only inside its functions: the SDK is the [testfleet] extra.
"""

from __future__ import annotations

import hashlib
import io
import socket
import subprocess
import tarfile
import time
from collections.abc import Callable
from pathlib import Path

from deployctl.errors import DeployctlError, DockerUnavailableError
from deployctl.testfleet.fleetfiles import IMAGE_LABEL, MADE_LABEL, BareFiles, FleetSpec, NodeFiles, NodeSpec


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
    where: dict[str, object]  # the container's network, as docker's create() takes it
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


def wait_for(predicate: Callable[[], bool], seconds: float, step: float = 0.05) -> bool:
    """Poll `predicate` until true or `seconds` pass (monotonic clock); return its last value."""
    end = time.monotonic() + seconds
    while not predicate():
        if time.monotonic() >= end:
            return False
        time.sleep(step)
    return True


def sshd_answers(host: str, port: int) -> bool:
    """Return whether an SSH server greets at host:port within a second or two."""
    try:
        with socket.create_connection((host, port), timeout=1) as s:
            s.settimeout(2)
            return s.recv(8).startswith(b"SSH-")
    except OSError:
        return False
