"""The node agent (deployctl/node/agent.py) run as on a node: `python3 -I -S -c SOURCE OP ROOT ...`, from
the argv the real builders in remote/commands.py produce with only `python3` replaced by this
interpreter, against a temporary install root (conftest.py's `root`); and the artifacts it stages.
"""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import sys
import tarfile
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from deployctl.release.manifest import digest_of

FILES = {
    "router.py": b"print('router')\n",
    "router.json": b'{"name": "router"}\n',
    "lib/util.py": b"X = 1\n",
    "lib/deep/data.bin": b"\x00\x01\xff",
    "empty.txt": b"",
}
OTHER = "f" * 64
KEY = Ed25519PrivateKey.generate()
PUB_HEX = KEY.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw).hex()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def digest(files: dict[str, bytes]) -> str:
    return digest_of({rel: sha(data) for rel, data in files.items()})


DIGEST = digest(FILES)


def run(argv: list[str], stdin: bytes = b"") -> subprocess.CompletedProcess:
    assert argv[0] == "python3"
    return subprocess.run([sys.executable, *argv[1:]], input=stdin, capture_output=True, timeout=60)


def answer(proc: subprocess.CompletedProcess) -> dict:
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == b""
    lines = proc.stdout.decode().splitlines()
    assert len(lines) == 1
    return json.loads(lines[0])


def refusal(proc: subprocess.CompletedProcess) -> str:
    """Assert the agent refused: exit 1, nothing on stdout, one JSON error line on stderr; return the error."""
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    assert proc.stdout == b""
    lines = proc.stderr.decode().splitlines()
    assert len(lines) == 1, proc.stderr
    doc = json.loads(lines[0])
    assert list(doc) == ["error"] and isinstance(doc["error"], str) and doc["error"]
    return doc["error"]


def member(name: str, data: bytes | None = None, type_: bytes = tarfile.REGTYPE, linkname: str = "") -> tuple:
    return (name, data, type_, linkname)


def signed_manifest(files: dict[str, bytes], key=KEY, digest_value: str | None = None) -> tuple[bytes, bytes]:
    hashes = {r: sha(d) for r, d in files.items()}
    manifest = json.dumps({"digest": digest_value or digest_of(hashes), "files": hashes}, sort_keys=True).encode()
    return manifest, key.sign(manifest).hex().encode()


def make_tar(files: dict[str, bytes] = FILES, extra: list[tuple] = (), dirs: bool = True,
             manifest: tuple[bytes, bytes] | None = None) -> bytes:
    """A tar laid out like an artifact: signed manifest.json, manifest.sig, files/<relpath> (parents first)."""
    body, sig = manifest or signed_manifest(files)
    entries = [member("manifest.json", body), member("manifest.sig", sig)]
    if dirs:
        folders = {"files"} | {"files/" + "/".join(r.split("/")[:i]) for r in files for i in range(1, r.count("/") + 1)}
        entries += [member(d, None, tarfile.DIRTYPE) for d in sorted(folders)]
    entries += [member("files/" + r, d) for r, d in sorted(files.items())]
    entries += list(extra)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data, type_, linkname in entries:
            info = tarfile.TarInfo(name)
            info.type, info.linkname, info.mode = type_, linkname, 0o755 if type_ == tarfile.DIRTYPE else 0o644
            if type_ == tarfile.REGTYPE:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            else:
                tar.addfile(info)
    return buf.getvalue()


def tree(folder: Path) -> dict[str, bytes]:
    """Every entry under folder: files with their bytes, anything else marked."""
    out = {}
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder).as_posix()
        if p.is_symlink():
            out[rel] = "symlink"
        elif p.is_dir():
            out[rel] = "dir"
        else:
            out[rel] = p.read_bytes()
    return out


def expected_tree(files: dict[str, bytes]) -> dict:
    out = dict(files)
    for rel in files:
        parts = rel.split("/")
        for i in range(1, len(parts)):
            out["/".join(parts[:i])] = "dir"
    return out


def lines(proc: subprocess.CompletedProcess) -> list[dict]:
    """Assert the agent exited 0; return each JSON line it answered."""
    assert proc.returncode == 0, proc.stderr
    return [json.loads(line) for line in proc.stdout.decode().splitlines()]


def release_folder(root: Path, name: str, files: dict[str, bytes] = None) -> Path:
    """releases/<name> under the install root, holding `files` (by default router.py, its bytes the name)."""
    folder = root / "releases" / name
    folder.mkdir()
    for rel, data in (files or {"router.py": name.encode()}).items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_bytes(data)
    return folder


A, B = "a" * 64, "b" * 64
