"""The release manifest: path -> sha256 and size, its canonical JSON, and the release digest.

The release digest is the sha256 of the text `sha256sum` prints for the release's files, paths
in UTF-8 byte order (docs/node-layout.md): the controller, the node agent, verify and the router
itself all compute the same number from the same files.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from typing import Any

from deployctl.config.fields import NAME_RE
from deployctl.errors import ArtifactError

HEX64 = re.compile(r"[0-9a-f]{64}")
PART = re.compile(r"[A-Za-z0-9._-]{1,255}")
VERSION_RE = re.compile(r"[0-9A-Za-z][0-9A-Za-z._+-]{0,63}")
FLAG_RE = re.compile(r"[a-z][a-z0-9_]{0,62}")
KEYS = ("digest", "files", "format", "name", "sizes", "version")


def show(value: Any) -> str:
    """Return a short repr of `value` for an error message."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def valid_relpath(rel: str) -> bool:
    """Return whether `rel` is a relative path of [A-Za-z0-9._-] parts, none of them . or .."""
    return all(PART.fullmatch(p) and p not in (".", "..") for p in rel.split("/"))


def parents(rel: str) -> list[str]:
    """Return the folders above `rel`, outermost first."""
    parts = rel.split("/")
    return ["/".join(parts[:i]) for i in range(1, len(parts))]


def canonical(doc: Any) -> bytes:
    """Return the canonical JSON bytes of `doc` (sorted keys, no spaces, ASCII): what is signed."""
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def digest_of(files: Mapping[str, str]) -> str:
    """Return the release digest (sha256 of `sha256sum` text, paths in UTF-8 byte order) of {relpath: sha256hex}.

    Raises ArtifactError for a path sha256sum would escape (newline, backslash) or a malformed sha256.
    """
    for rel, sha in files.items():
        if not isinstance(rel, str) or not rel or "\n" in rel or "\\" in rel or "\r" in rel:
            raise ArtifactError(f"cannot digest path {show(rel)}")
        if not isinstance(sha, str) or not HEX64.fullmatch(sha):
            raise ArtifactError(f"cannot digest {show(rel)}: sha256 should be 64 lowercase hex digits")
    try:
        order = sorted(files, key=lambda rel: rel.encode("utf-8"))
    except UnicodeEncodeError:
        raise ArtifactError("cannot digest a path that is not valid UTF-8") from None
    text = "".join(f"{files[rel]}  {rel}\n" for rel in order)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def parse_manifest(raw: bytes, label: str) -> dict[str, Any]:
    """Return the validated manifest; ArtifactError (naming `label`) for bad JSON, shape, types, digest or
    non-canonical bytes."""
    def bad(problem: str) -> ArtifactError:
        return ArtifactError(f"{label}: manifest.json: {problem}")

    try:
        doc = json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError):
        raise bad("not valid JSON") from None
    if not isinstance(doc, dict) or tuple(sorted(set(doc) - {"flags"})) != KEYS:
        raise bad(f"should be an object with exactly the keys {', '.join(KEYS)} (and optionally flags)")
    flags = doc.get("flags", {})
    if not isinstance(flags, dict) or not all(FLAG_RE.fullmatch(k) and type(v) is bool for k, v in flags.items()):
        raise bad("flags should be an object of flag name -> true or false")
    if type(doc["format"]) is not int or doc["format"] != 1:
        raise bad("format should be 1")
    for key, pattern in (("name", NAME_RE), ("version", VERSION_RE), ("digest", HEX64)):
        if not isinstance(doc[key], str) or not pattern.fullmatch(doc[key]):
            raise bad(f"{key} should match ^{pattern.pattern}$")
    files, sizes = doc["files"], doc["sizes"]
    if not isinstance(files, dict) or not files:
        raise bad("files should be a non-empty object")
    for rel, sha in files.items():
        if not valid_relpath(rel) or not isinstance(sha, str) or not HEX64.fullmatch(sha):
            raise bad(f"files: {show(rel)} should be a valid path with a 64-hex-digit sha256")
        if any(parent in files for parent in parents(rel)):
            raise bad(f"files: {show(rel)} is inside another file")
    if not isinstance(sizes, dict) or set(sizes) != set(files):
        raise bad("sizes should have exactly the paths of files")
    if any(type(n) is not int or n < 0 for n in sizes.values()):
        raise bad("sizes should be integers >= 0")
    if digest_of(files) != doc["digest"]:
        raise bad("digest does not match its files")
    if canonical(doc) != raw:
        raise bad("not canonical JSON")
    return doc
