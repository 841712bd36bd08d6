"""Release artifacts: a reproducible, signed tarball of a source folder, and its strict, in-memory reader.

Tar layout: ``manifest.json`` (canonical JSON: name, version, digest, path -> sha256 and size, and
router.json's flags when it has them), then
``manifest.sig`` (hex ed25519 signature of manifest.json), then ``files/<relpath>``. The digest is the
release digest of docs/node-layout.md. Only local files are touched.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import stat
import tarfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # cryptography is imported where keys are used: `verify` never pays for it
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from deployctl.config.fields import NAME_RE
from deployctl.config.schema import read_regular
from deployctl.errors import ArtifactError, check_folder, describe_os_error
from deployctl.release import signing
from deployctl.release.manifest import (
    FLAG_RE,
    VERSION_RE,
    canonical,
    digest_of,
    parents,
    parse_manifest,
    show,
    valid_relpath,
)

MAX_BYTES = 512 * 1024 * 1024
_KINDS = {tarfile.SYMTYPE: "a symlink", tarfile.LNKTYPE: "a hard link", tarfile.CHRTYPE: "a device",
          tarfile.BLKTYPE: "a device", tarfile.FIFOTYPE: "a FIFO"}
# What hostile bytes can make tarfile raise besides TarError.
_TAR_ERRORS = (tarfile.TarError, EOFError, ValueError, OverflowError, UnicodeError)


@dataclass(frozen=True)
class Artifact:
    """A built or loaded (and verified) release tarball."""

    path: Path
    name: str
    version: str
    digest: str
    files: dict[str, str]
    sizes: dict[str, int]
    manifest_bytes: bytes
    signature: str
    # The exact bytes that were built or checked: uploading these (not re-reading the file) means
    # what reaches the nodes is what was verified, and the file is hashed once.
    data: bytes = field(default=b"", repr=False, compare=False)
    flags: dict[str, bool] | None = None  # router.json's flags, recorded in the signed manifest

    _parts: dict = field(default_factory=dict, repr=False, compare=False)  # subset tars made so far
    # Where each member's bytes lie in `data` (start, end), kept from the check that loaded it: a delta
    # rollout's upload is cut from them without reading the tar again (a second read showed in stage).
    _spans: dict = field(default_factory=dict, repr=False, compare=False)

    def payload(self) -> bytes:
        """Return the tarball's bytes for upload: the very bytes that were verified."""
        return self.data

    def subset(self, paths: frozenset[str]) -> bytes:
        """Return a tar like this one (signed manifest first) holding only the files `paths`: what a node
        that already has the others is sent. All of the files give the payload itself."""
        if set(paths) >= set(self.files):
            return self.data
        if paths not in self._parts:
            if not self._spans:
                _read_members(self.data, self.path.name, self._spans)
            view = memoryview(self.data)
            self._parts[paths] = _pack(self.manifest_bytes, self.signature,
                                       {rel: view[start:end] for rel in sorted(paths)
                                        for start, end in [self._spans["files/" + rel]]})
        return self._parts[paths]


def _err(label: str, problem: str) -> ArtifactError:
    return ArtifactError(f"{label}: {problem}")


def _collect(source: Path) -> dict[str, bytes]:
    """Read every regular file under source into {relpath: bytes}, skipping __pycache__ and *.pyc."""
    out: dict[str, bytes] = {}
    total = [0]

    def walk(folder: str, prefix: str) -> None:
        for entry in os.scandir(folder):
            rel, mode = prefix + entry.name, entry.stat(follow_symlinks=False).st_mode
            if stat.S_ISLNK(mode):
                raise ArtifactError(f"{source}: {show(rel)} is a symlink")
            if stat.S_ISDIR(mode) and entry.name != "__pycache__":
                walk(entry.path, rel + "/")
            elif stat.S_ISREG(mode) and not entry.name.endswith(".pyc"):
                if not valid_relpath(rel):
                    raise ArtifactError(f"{source}: {show(rel)} has a name outside [A-Za-z0-9._-]")
                out[rel] = Path(entry.path).read_bytes()
                total[0] += len(out[rel])
                if total[0] > MAX_BYTES:
                    raise ArtifactError(f"{source}: files exceed {MAX_BYTES} bytes")
            elif not (stat.S_ISDIR(mode) or stat.S_ISREG(mode)):
                raise ArtifactError(f"{source}: {show(rel)} is not a regular file or folder")

    if not source.is_dir():
        raise ArtifactError(f"{source}: not a folder")
    try:
        walk(str(source), "")
    except OSError as exc:
        raise ArtifactError(f"{source}: cannot read {exc.filename} ({exc.strerror or exc})") from None
    if not out:
        raise ArtifactError(f"{source}: no files to package")
    return out


def _version(source: Path, contents: Mapping[str, bytes]) -> str:
    if "router.json" in contents:
        try:
            version = json.loads(contents["router.json"].decode("utf-8")).get("version")
        except (ValueError, UnicodeDecodeError, AttributeError, RecursionError):
            raise ArtifactError(f"{source}: router.json should be a JSON object with a \"version\" string") from None
        where = "router.json version"
    elif "VERSION" in contents:
        version, where = contents["VERSION"].decode("utf-8", "replace").strip(), "VERSION"
    else:
        raise ArtifactError(f"{source}: no router.json or VERSION file to take the version from")
    if not isinstance(version, str):
        raise ArtifactError(f"{source}: {where} should be a string")
    if not VERSION_RE.fullmatch(version):
        raise ArtifactError(f"{source}: {where} should match ^{VERSION_RE.pattern}$, got {show(version)}")
    return version


def release_flags(contents: Mapping[str, bytes]) -> dict[str, bool] | None:
    """Return the `flags` object of router.json in `contents` (name -> value), or None if it has none;
    ArtifactError if it is not an object of booleans. Called after _version: router.json is a JSON object."""
    if "router.json" not in contents:
        return None
    flags = json.loads(contents["router.json"].decode("utf-8")).get("flags")
    if flags is None:
        return None
    if not isinstance(flags, dict) or not all(FLAG_RE.fullmatch(k) and type(v) is bool for k, v in flags.items()):
        raise ArtifactError("router.json: flags should be an object of flag name ([a-z][a-z0-9_]*) -> true or false")
    return dict(flags)


def _pack(manifest_bytes: bytes, signature: str, contents: Mapping[str, bytes | memoryview]) -> bytes:
    dirs = {"files"} | {"files/" + d for rel in contents for d in parents(rel)}
    body = [(d, None) for d in dirs] + [("files/" + rel, data) for rel, data in contents.items()]
    body.sort(key=lambda entry: [p.encode("utf-8") for p in entry[0].split("/")])  # parents first
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in [("manifest.json", manifest_bytes), ("manifest.sig", signature.encode())] + body:
            info = tarfile.TarInfo(name)
            info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
            if data is None:
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            else:
                info.mode, info.size = 0o644, len(data)
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def build(source: Path, out_dir: Path, name: str, signing_key: Path,
          check_flags: Callable[[dict, str], None] | None = None) -> Artifact:
    """Package `source` into a signed, byte-reproducible `<out_dir>/<name>-<version>-<digest12>.tar`.

    The manifest records router.json's flags, if it has any; `check_flags(flags, version)` may refuse
    them (the flag registry) before anything is written. Returns the Artifact; raises ArtifactError for
    a bad name, key, source file (symlink, special file, odd name) or a missing version, and when the
    tarball cannot be written.
    """
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise ArtifactError(f"artifact name {show(name)} should match ^{NAME_RE.pattern}$")
    key, source = signing.private_key(signing_key), Path(source)
    contents = _collect(source)
    version = _version(source, contents)
    flags = release_flags(contents)
    if check_flags is not None:
        check_flags(flags or {}, version)
    files = {rel: hashlib.sha256(data).hexdigest() for rel, data in contents.items()}
    sizes = {rel: len(data) for rel, data in contents.items()}
    digest = digest_of(files)
    doc = {"format": 1, "name": name, "version": version, "digest": digest, "files": files, "sizes": sizes}
    manifest_bytes = canonical(doc if flags is None else {**doc, "flags": flags})
    signature = key.sign(manifest_bytes).hex()
    data = _pack(manifest_bytes, signature, contents)
    path = Path(out_dir) / f"{name}-{version}-{digest[:12]}.tar"
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    check_folder(path.parent, "--out")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise ArtifactError(f"{path}: cannot write ({describe_os_error(exc)})") from None
    return Artifact(path, name, version, digest, files, sizes, manifest_bytes, signature, data, flags)


def _member_path(name: str, label: str) -> str | None:
    """Return a member's path under files/ ('' for files/ itself), None for manifest.*; ArtifactError if unsafe."""
    parts = name.split("/")
    if name.startswith("/"):
        raise _err(label, f"member {show(name)} is an absolute path")
    if ".." in parts:
        raise _err(label, f"member {show(name)} escapes the release")
    if name in ("manifest.json", "manifest.sig"):
        return None
    if parts[0] != "files":
        raise _err(label, f"member {show(name)} is outside manifest.json, manifest.sig and files/")
    rel = "/".join(parts[1:])
    if len(parts) > 1 and not valid_relpath(rel):
        raise _err(label, f"member {show(name)} is not a valid path")
    return rel


def _check_member(m: tarfile.TarInfo, label: str) -> None:
    rel, shown = _member_path(m.name, label), show(m.name)
    if m.type in _KINDS or m.type not in (tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.DIRTYPE):
        raise _err(label, f"member {shown} is {_KINDS.get(m.type, 'not a regular file or folder')}")
    is_dir = m.type == tarfile.DIRTYPE
    if (rel is None and is_dir) or (rel == "" and not is_dir):
        raise _err(label, f"member {shown} should be a {'folder' if rel == '' else 'regular file'}")
    expected = (0o755 if is_dir else 0o644, 0, 0, "", "", 0)
    if (m.mode, m.uid, m.gid, m.uname, m.gname, m.mtime) != expected:
        raise _err(label, f"member {shown} has mode {oct(m.mode)}, owner {m.uid}:{m.gid} "
                          f"{m.uname!r}:{m.gname!r}, mtime {m.mtime}; expected {oct(expected[0])}, 0:0 '':'', 0")
    if set(m.pax_headers) - {"path"}:
        raise _err(label, f"member {shown} has unsupported extended headers {sorted(m.pax_headers)}")


def _read_members(data: bytes, label: str, spans: dict | None = None) -> dict[str, bytes | None]:
    """Return {member name: bytes, or None for a folder} in archive order, after checking every member;
    fill `spans` with each file member's (start, end) in `data`."""
    found: dict[str, bytes | None] = {}
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
            for m in iter(tar.next, None):
                _check_member(m, label)
                if m.name in found:
                    raise _err(label, f"duplicate member {show(m.name)}")
                content = None
                if m.isreg():
                    content = tar.extractfile(m).read()  # type: ignore[union-attr]
                    if len(content) != m.size:
                        raise _err(label, f"member {show(m.name)} is truncated")
                    if spans is not None:
                        spans[m.name] = (m.offset_data, m.offset_data + m.size)
                found[m.name] = content
            end = tar.offset
    except _TAR_ERRORS as exc:
        raise _err(label, f"not a valid tar archive ({' '.join(str(exc).split()) or type(exc).__name__})") from None
    rest = data[end:]
    if len(rest) < 1024 or rest.strip(b"\0"):  # tarfile stops quietly at a cut header or at junk
        raise _err(label, "truncated, or data follows the end of the archive")
    return found


def _check_contents(manifest: Mapping[str, Any], found: Mapping[str, bytes | None], label: str) -> None:
    files = {n[6:]: data for n, data in found.items() if n.startswith("files/") and data is not None}
    dirs = {n[6:] for n, data in found.items() if n.startswith("files/") and data is None}
    listed = manifest["files"]
    for rel in sorted(set(listed) - set(files)):
        raise _err(label, f"file {show(rel)} is listed in the manifest but missing")
    for rel in sorted(set(files) - set(listed)):
        raise _err(label, f"file {show(rel)} is not listed in the manifest")
    for rel, data in files.items():
        if len(data) != manifest["sizes"][rel] or hashlib.sha256(data).hexdigest() != listed[rel]:
            raise _err(label, f"file {show(rel)} does not match its size and sha256 in the manifest")
    for rel in sorted(dirs - {p for f in listed for p in parents(f)}):
        raise _err(label, f"folder {show(rel)} holds no listed file")


def _parse(data: bytes, path: Path, verifier: Ed25519PublicKey | None) -> Artifact:
    from cryptography.exceptions import InvalidSignature

    label = path.name
    spans: dict[str, tuple[int, int]] = {}
    found = _read_members(data, label, spans)
    if next(iter(found), None) != "manifest.json":
        raise _err(label, "manifest.json should be the first member" if "manifest.json" in found
                   else "manifest.json missing")
    manifest_bytes = found["manifest.json"] or b""
    raw_signature = found.get("manifest.sig")
    if raw_signature is None:
        raise _err(label, "manifest.sig missing (the artifact is unsigned)")
    if not re.fullmatch(rb"[0-9a-f]{128}", raw_signature):
        raise _err(label, "manifest.sig should be 128 lowercase hex digits")
    signature = raw_signature.decode("ascii")
    if verifier is not None:
        try:
            verifier.verify(bytes.fromhex(signature), manifest_bytes)
        except InvalidSignature:
            raise _err(label, "bad signature: manifest.json is not signed by the trusted key") from None
    manifest = parse_manifest(manifest_bytes, label)
    _check_contents(manifest, found, label)
    return Artifact(path, manifest["name"], manifest["version"], manifest["digest"], manifest["files"],
                    manifest["sizes"], manifest_bytes, signature, data, manifest.get("flags"), _spans=spans)


def _read_capped(path: Path) -> bytes:
    data = read_regular(path, ArtifactError, MAX_BYTES)  # a FIFO or a device is refused, never read
    if len(data) > MAX_BYTES:
        raise _err(Path(path).name, f"larger than {MAX_BYTES} bytes")
    return data


def load(path: Path, public_key: Path | None) -> Artifact:
    """Read and verify the tarball at `path` in memory (nothing is extracted) and return it.

    `public_key` is the signing_ed25519.pub to check manifest.sig against; pass None explicitly to skip
    that check. Raises ArtifactError, naming the file, for anything unsafe, malformed, unsigned or tampered.
    """
    path = Path(path)
    verifier = None if public_key is None else signing.public_key(Path(public_key))
    return _parse(_read_capped(path), path, verifier)
