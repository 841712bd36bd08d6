"""release/artifact.py: reproducible signed builds, the release digest, and a reader that refuses hostile tarballs."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import stat
import subprocess
import tarfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from deployctl.errors import ArtifactError, ExitCode
from deployctl.release import artifact, manifest, signing
from deployctl.release.artifact import Artifact, build, load
from deployctl.release.manifest import digest_of
from deployctl.release.signing import generate as generate_signing_key

SOURCE = {
    "router.json": b'{"name": "router", "version": "1.0.0"}\n',
    "router.py": b"print('hello')\n",
    "lib/util.py": b"X = 1\n",
    "lib/deep/data.txt": b"\x00\x01binary\xff",
    "Zeta.txt": b"upper case sorts first\n",
    "empty.txt": b"",
}


def make_source(root: Path, files: dict[str, bytes]) -> Path:
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return root


@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> tuple[Path, Path]:
    return generate_signing_key(tmp_path_factory.mktemp("keys"))


@pytest.fixture(scope="module")
def other_keys(tmp_path_factory) -> tuple[Path, Path]:
    return generate_signing_key(tmp_path_factory.mktemp("other-keys"))


@pytest.fixture(scope="module")
def built(tmp_path_factory, keys) -> Artifact:
    tmp = tmp_path_factory.mktemp("built")
    return build(make_source(tmp / "src", SOURCE), tmp / "out", "router", keys[0])


# ---------------------------------------------------------------- digest and build


def sha256sum_digest(src: Path, rels: list[str]) -> str:
    order = sorted(rels, key=lambda r: r.encode("utf-8"))
    out = subprocess.run(["sha256sum", "--", *order], cwd=src, check=True, capture_output=True,
                         env={**os.environ, "LC_ALL": "C"}).stdout
    return hashlib.sha256(out).hexdigest()


def test_digest_of_matches_sha256sum_text():
    files = {"b": "1" * 64, "a/b": "2" * 64, "B": "3" * 64}
    text = f"{'3' * 64}  B\n{'2' * 64}  a/b\n{'1' * 64}  b\n"
    assert digest_of(files) == hashlib.sha256(text.encode()).hexdigest()


@pytest.mark.parametrize("files, message", [
    ({"a\nb": "0" * 64}, "cannot digest path 'a\\nb'"),
    ({"a\\b": "0" * 64}, "cannot digest path 'a\\\\b'"),
    ({"": "0" * 64}, "cannot digest path ''"),
    ({"a": "A" * 64}, "cannot digest 'a': sha256 should be 64 lowercase hex digits"),
    ({"a": "0" * 63}, "cannot digest 'a': sha256 should be 64 lowercase hex digits"),
    ({"\udcff": "0" * 64}, "cannot digest a path that is not valid UTF-8"),
])
def test_digest_of_refuses_what_sha256sum_would_escape(files, message):
    with pytest.raises(ArtifactError) as err:
        digest_of(files)
    assert str(err.value) == message


def test_build_digest_equals_sha256sum_over_the_source(tmp_path, keys):
    src = make_source(tmp_path / "src", SOURCE)
    art = build(src, tmp_path / "out", "router", keys[0])
    assert art.digest == sha256sum_digest(src, list(SOURCE))
    assert art.files == {rel: hashlib.sha256(data).hexdigest() for rel, data in SOURCE.items()}
    assert art.sizes == {rel: len(data) for rel, data in SOURCE.items()}
    assert art.path == tmp_path / "out" / f"router-1.0.0-{art.digest[:12]}.tar"
    assert (art.name, art.version) == ("router", "1.0.0")


def test_build_is_byte_identical_across_builds_and_checkouts(tmp_path, keys):
    one = make_source(tmp_path / "one", SOURCE)
    two = make_source(tmp_path / "two", dict(reversed(list(SOURCE.items()))))
    for path in two.rglob("*"):  # other mtimes and permissions must not matter
        os.utime(path, (1_000_000, 1_000_000))
        path.chmod(0o700 if path.is_dir() else 0o600)
    a = build(one, tmp_path / "out1", "router", keys[0])
    b = build(one, tmp_path / "out2", "router", keys[0])
    c = build(two, tmp_path / "out3", "router", keys[0])
    assert a.path.name == b.path.name == c.path.name
    assert a.path.read_bytes() == b.path.read_bytes() == c.path.read_bytes()


def test_tar_layout_and_metadata(built, keys):
    with tarfile.open(built.path) as tar:
        members = tar.getmembers()
        assert [m.name for m in members] == [
            "manifest.json", "manifest.sig", "files", "files/Zeta.txt", "files/empty.txt", "files/lib",
            "files/lib/deep", "files/lib/deep/data.txt", "files/lib/util.py", "files/router.json", "files/router.py"]
        for m in members:
            assert (m.mtime, m.uid, m.gid, m.uname, m.gname) == (0, 0, 0, "", "")
            assert (m.type, m.mode) in ((tarfile.DIRTYPE, 0o755), (tarfile.REGTYPE, 0o644))
        manifest = tar.extractfile("manifest.json").read()
        signature = tar.extractfile("manifest.sig").read()
    assert manifest == built.manifest_bytes
    assert manifest == json.dumps(json.loads(manifest), sort_keys=True, separators=(",", ":")).encode()
    assert json.loads(manifest) == {"format": 1, "name": "router", "version": "1.0.0", "digest": built.digest,
                                    "files": built.files, "sizes": built.sizes}
    assert signature == built.signature.encode() and len(bytes.fromhex(built.signature)) == 64
    public = signing.public_key(keys[1])
    public.verify(bytes.fromhex(built.signature), manifest)  # raises if wrong


def test_build_skips_pycache_and_pyc_and_reads_version_file(tmp_path, keys):
    src = make_source(tmp_path / "src", {"VERSION": b"2.3.4-rc1\n", "app.py": b"x",
                                         "__pycache__/app.cpython-311.pyc": b"c", "sub/__pycache__/m.pyc": b"c",
                                         "stray.pyc": b"c"})
    (src / "empty-folder").mkdir()
    art = build(src, tmp_path / "out", "app", keys[0])
    assert sorted(art.files) == ["VERSION", "app.py"]
    assert art.version == "2.3.4-rc1"


def test_generate_signing_key_modes_and_refuses_to_overwrite(tmp_path):
    private, public = generate_signing_key(tmp_path / "k")
    assert (private.name, public.name) == ("signing_ed25519", "signing_ed25519.pub")
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert private.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert len(bytes.fromhex(public.read_text().strip())) == 32
    with pytest.raises(ArtifactError) as err:
        generate_signing_key(tmp_path / "k")
    assert str(err.value) == f"{private}: a signing key already exists; refusing to replace it"


def build_error(tmp_path: Path, keys, files: dict[str, bytes], name: str = "router") -> str:
    src = make_source(tmp_path / "src", files)
    with pytest.raises(ArtifactError) as err:
        build(src, tmp_path / "out", name, keys[0])
    assert err.value.exit_code == ExitCode.USAGE
    return str(err.value).replace(str(tmp_path), "TMP")


@pytest.mark.parametrize("files, message", [
    ({"router.json": b'{"version": 1.1}'}, "TMP/src: router.json version should be a string"),
    ({"router.json": b'{"name": "x"}'}, "TMP/src: router.json version should be a string"),
    ({"router.json": b"[1]"}, 'TMP/src: router.json should be a JSON object with a "version" string'),
    ({"router.json": b"{"}, 'TMP/src: router.json should be a JSON object with a "version" string'),
    ({"router.json": b'{"version": "1.0 beta"}'},
     "TMP/src: router.json version should match ^[0-9A-Za-z][0-9A-Za-z._+-]{0,63}$, got '1.0 beta'"),
    ({"VERSION": b"../../x\n"}, "TMP/src: VERSION should match ^[0-9A-Za-z][0-9A-Za-z._+-]{0,63}$, got '../../x'"),
    ({"app.py": b"x"}, "TMP/src: no router.json or VERSION file to take the version from"),
    ({"VERSION": b"1", "my file.py": b"x"}, "TMP/src: 'my file.py' has a name outside [A-Za-z0-9._-]"),
    ({"VERSION": b"1", "a;b/c.py": b"x"}, "TMP/src: 'a;b/c.py' has a name outside [A-Za-z0-9._-]"),
])
def test_build_refuses_bad_sources(tmp_path, keys, files, message):
    assert build_error(tmp_path, keys, files) == message


def test_build_refuses_symlinks_fifos_bad_names_and_keys(tmp_path, keys):
    src = make_source(tmp_path / "src", {"VERSION": b"1"})
    (src / "link").symlink_to("VERSION")
    with pytest.raises(ArtifactError, match=r"^.*/src: 'link' is a symlink$"):
        build(src, tmp_path / "out", "router", keys[0])
    (src / "link").unlink()
    (src / "dirlink").symlink_to(tmp_path)
    with pytest.raises(ArtifactError, match=r"^.*/src: 'dirlink' is a symlink$"):
        build(src, tmp_path / "out", "router", keys[0])
    (src / "dirlink").unlink()
    os.mkfifo(src / "pipe")
    with pytest.raises(ArtifactError, match=r"^.*/src: 'pipe' is not a regular file or folder$"):
        build(src, tmp_path / "out", "router", keys[0])
    (src / "pipe").unlink()
    with pytest.raises(ArtifactError, match=r"^artifact name 'Router;x' should match"):
        build(src, tmp_path / "out", "Router;x", keys[0])
    with pytest.raises(ArtifactError, match=r"^signing_ed25519.pub: not an unencrypted PEM PKCS8 ed25519 private key$"):
        build(src, tmp_path / "out", "router", keys[1])
    with pytest.raises(ArtifactError, match=r"^.*/nosuch: not a folder$"):
        build(tmp_path / "nosuch", tmp_path / "out", "router", keys[0])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ArtifactError, match=r"^.*/empty: no files to package$"):
        build(tmp_path / "empty", tmp_path / "out", "router", keys[0])


# ---------------------------------------------------------------- load


def test_load_round_trip_and_payload(built, keys):
    loaded = load(built.path, keys[1])
    assert loaded == built
    assert loaded.payload() == built.path.read_bytes()
    assert load(built.path, None) == built


@pytest.mark.parametrize("how", ["built", "loaded"])
def test_subset_holds_the_signed_manifest_and_exactly_the_asked_files(built, keys, how):
    art = built if how == "built" else load(built.path, keys[1])
    part = art.subset(frozenset({"lib/deep/data.txt", "empty.txt"}))
    with tarfile.open(fileobj=io.BytesIO(part)) as tar:
        members = {m.name: (tar.extractfile(m).read() if m.isreg() else None) for m in tar}
    assert members == {"manifest.json": art.manifest_bytes, "manifest.sig": art.signature.encode(),
                       "files": None, "files/lib": None, "files/lib/deep": None,
                       "files/lib/deep/data.txt": SOURCE["lib/deep/data.txt"], "files/empty.txt": b""}
    assert art.subset(frozenset(art.files)) == art.payload()


def test_payload_is_the_verified_bytes_even_if_the_file_changes_after_loading(tmp_path, built, keys, other_keys):
    path = tmp_path / built.path.name
    original = built.path.read_bytes()
    path.write_bytes(original)
    loaded = load(path, keys[1])
    src = make_source(tmp_path / "src", {"VERSION": b"9"})
    path.write_bytes(build(src, tmp_path / "out", "router", other_keys[0]).path.read_bytes())
    assert loaded.payload() == original  # what is uploaded is what was checked, never the new file


def test_load_refuses_wrong_or_malformed_public_keys(tmp_path, built, other_keys):
    with pytest.raises(ArtifactError) as err:
        load(built.path, other_keys[1])
    assert str(err.value) == f"{built.path.name}: bad signature: manifest.json is not signed by the trusted key"
    bad = tmp_path / "bad.pub"
    for text in ("", "zz" * 32, "ab" * 31, "AB" * 32):
        bad.write_text(text)
        with pytest.raises(ArtifactError, match=r"^bad\.pub: not a hex-encoded ed25519 public key$"):
            load(built.path, bad)
    with pytest.raises(ArtifactError, match=r"cannot read \(No such file or directory\)$"):
        load(built.path, tmp_path / "absent.pub")


def entries(path: Path) -> list[tuple[tarfile.TarInfo, bytes | None]]:
    with tarfile.open(path) as tar:
        return [(m, tar.extractfile(m).read() if m.isreg() else None) for m in tar.getmembers()]


def pack(items: list[tuple[tarfile.TarInfo, bytes | None]], fmt: int = tarfile.PAX_FORMAT) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
        for info, data in items:
            if data is None:
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def member(name: str, kind: bytes = tarfile.REGTYPE, **attrs) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.mode = kind, 0o755 if kind == tarfile.DIRTYPE else 0o644
    for key, value in attrs.items():
        setattr(info, key, value)
    return info


def replace(items, name, data=None, **attrs):
    out = []
    for info, content in items:
        if info.name == name:
            for key, value in attrs.items():
                setattr(info, key, value)
            content = content if data is None else data
        out.append((info, content))
    return out


def resign(items, private: Path, **changes):
    """Rewrite manifest.json with `changes` (canonical) and sign it with `private`."""
    manifest = json.loads(dict((i.name, d) for i, d in items)["manifest.json"])
    manifest.update(changes)
    raw = json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()
    sig = signing.private_key(private).sign(raw).hex().encode()
    return replace(replace(items, "manifest.json", raw), "manifest.sig", sig)


def tampered_file(items):
    return replace(items, "files/router.py", b"print('HELLO')\n")


def evil_router(items, private):
    """A consistent manifest for changed router.py, signed by someone else's key."""
    data = b"import os; os.system('id')\n"
    files = {**dict(json.loads(items[0][1])["files"]), "router.py": hashlib.sha256(data).hexdigest()}
    sizes = {**json.loads(items[0][1])["sizes"], "router.py": len(data)}
    return resign(replace(items, "files/router.py", data), private, files=files, sizes=sizes, digest=digest_of(files))


HOSTILE = [
    ("absolute-path", lambda e, k: e + [(member("/etc/evil"), b"x")], "member '/etc/evil' is an absolute path"),
    ("dotdot", lambda e, k: e + [(member("../evil"), b"x")], "member '../evil' escapes the release"),
    ("dotdot-inside", lambda e, k: e + [(member("files/../../evil"), b"x")],
     "member 'files/../../evil' escapes the release"),
    ("dot-component", lambda e, k: e + [(member("files/./x"), b"x")], "member 'files/./x' is not a valid path"),
    ("backslash", lambda e, k: e + [(member("files/a\\b"), b"x")], "member 'files/a\\\\b' is not a valid path"),
    ("symlink", lambda e, k: e + [(member("files/link", tarfile.SYMTYPE, linkname="/etc/passwd"), None)],
     "member 'files/link' is a symlink"),
    ("hardlink", lambda e, k: e + [(member("files/hl", tarfile.LNKTYPE, linkname="files/router.py"), None)],
     "member 'files/hl' is a hard link"),
    ("char-device", lambda e, k: e + [(member("files/dev", tarfile.CHRTYPE, devmajor=1, devminor=3), None)],
     "member 'files/dev' is a device"),
    ("block-device", lambda e, k: e + [(member("files/blk", tarfile.BLKTYPE), None)], "member 'files/blk' is a device"),
    ("fifo", lambda e, k: e + [(member("files/fifo", tarfile.FIFOTYPE), None)], "member 'files/fifo' is a FIFO"),
    ("contiguous", lambda e, k: e + [(member("files/c", tarfile.CONTTYPE), b"x")],
     "member 'files/c' is not a regular file or folder"),
    ("outside-member", lambda e, k: e + [(member("evil.txt"), b"x")],
     "member 'evil.txt' is outside manifest.json, manifest.sig and files/"),
    ("extra-file", lambda e, k: e + [(member("files/extra.txt"), b"x")],
     "file 'extra.txt' is not listed in the manifest"),
    ("extra-folder", lambda e, k: e + [(member("files/lib/new", tarfile.DIRTYPE), None)],
     "folder 'lib/new' holds no listed file"),
    ("missing-file", lambda e, k: [x for x in e if x[0].name != "files/lib/util.py"],
     "file 'lib/util.py' is listed in the manifest but missing"),
    ("duplicate-member", lambda e, k: e + [(member("files/router.py"), b"print('hello')\n")],
     "duplicate member 'files/router.py'"),
    ("file-over-folder", lambda e, k: e + [(member("files/lib"), b"x")], "duplicate member 'files/lib'"),
    ("tampered-file", lambda e, k: tampered_file(e),
     "file 'router.py' does not match its size and sha256 in the manifest"),
    ("grown-file", lambda e, k: replace(e, "files/empty.txt", b"x"),
     "file 'empty.txt' does not match its size and sha256 in the manifest"),
    ("tampered-manifest", lambda e, k: replace(e, "manifest.json", e[0][1].replace(b'"1.0.0"', b'"1.0.1"')),
     "bad signature: manifest.json is not signed by the trusted key"),
    ("resigned-by-other-key", lambda e, k: evil_router(e, k[0]),
     "bad signature: manifest.json is not signed by the trusted key"),
    ("unsigned", lambda e, k: [x for x in e if x[0].name != "manifest.sig"],
     "manifest.sig missing (the artifact is unsigned)"),
    ("signature-not-hex", lambda e, k: replace(e, "manifest.sig", b"zz" * 64),
     "manifest.sig should be 128 lowercase hex digits"),
    ("signature-with-newline", lambda e, k: replace(e, "manifest.sig", e[1][1] + b"\n"),
     "manifest.sig should be 128 lowercase hex digits"),
    ("no-manifest", lambda e, k: e[1:], "manifest.json missing"),
    ("manifest-not-first", lambda e, k: [e[1], e[0]] + e[2:], "manifest.json should be the first member"),
    ("manifest-is-folder", lambda e, k: [(member("manifest.json", tarfile.DIRTYPE), None)] + e[1:],
     "member 'manifest.json' should be a regular file"),
    ("files-is-file", lambda e, k: e[:2] + [(member("files"), b"")] + e[3:], "member 'files' should be a folder"),
    ("setuid", lambda e, k: replace(e, "files/router.py", mode=0o4755),
     "member 'files/router.py' has mode 0o4755, owner 0:0 '':'', mtime 0; expected 0o644, 0:0 '':'', 0"),
    ("owner", lambda e, k: replace(e, "files/router.py", uid=1000, uname="eve"),
     "member 'files/router.py' has mode 0o644, owner 1000:0 'eve':'', mtime 0; expected 0o644, 0:0 '':'', 0"),
    ("xattr", lambda e, k: replace(e, "files/router.py", pax_headers={"SCHILY.xattr.security.capability": "x"}),
     "member 'files/router.py' has unsupported extended headers ['SCHILY.xattr.security.capability']"),
]


@pytest.mark.parametrize("mutate, problem", [c[1:] for c in HOSTILE], ids=[c[0] for c in HOSTILE])
def test_hostile_tarballs_are_refused(tmp_path, built, keys, other_keys, mutate, problem):
    path = tmp_path / "router-1.0.0-abc.tar"
    path.write_bytes(pack(mutate(entries(built.path), other_keys)))
    with pytest.raises(ArtifactError) as err:
        load(path, keys[1])
    assert str(err.value) == f"router-1.0.0-abc.tar: {problem}"


def test_without_a_key_tampering_is_still_caught_by_hashes(tmp_path, built):
    path = tmp_path / "x.tar"
    path.write_bytes(pack(tampered_file(entries(built.path))))
    with pytest.raises(ArtifactError, match=r"^x\.tar: file 'router\.py' does not match"):
        load(path, None)


MANIFEST_CASES = [
    ({"format": 2}, "manifest.json: format should be 1"),
    ({"format": True}, "manifest.json: format should be 1"),
    ({"version": 1.1}, "manifest.json: version should match ^[0-9A-Za-z][0-9A-Za-z._+-]{0,63}$"),
    ({"name": "../x"}, "manifest.json: name should match ^[a-z0-9][a-z0-9_-]{0,62}$"),
    ({"digest": "ABC"}, "manifest.json: digest should match ^[0-9a-f]{64}$"),
    ({"digest": "0" * 64}, "manifest.json: digest does not match its files"),
    ({"files": {}}, "manifest.json: files should be a non-empty object"),
    ({"files": ["router.py"]}, "manifest.json: files should be a non-empty object"),
    ({"files": {"../x": "0" * 64}}, "manifest.json: files: '../x' should be a valid path with a 64-hex-digit sha256"),
    ({"files": {"a": 5}}, "manifest.json: files: 'a' should be a valid path with a 64-hex-digit sha256"),
    ({"files": {"a": "0" * 64, "a/b": "0" * 64}, "sizes": {"a": 0, "a/b": 0}},
     "manifest.json: files: 'a/b' is inside another file"),
    ({"sizes": {}}, "manifest.json: sizes should have exactly the paths of files"),
    ({"extra": 1}, "manifest.json: should be an object with exactly the keys digest, files, format, name, sizes, "
                    "version (and optionally flags)"),
]


@pytest.mark.parametrize("changes, problem", MANIFEST_CASES, ids=[c[1] for c in MANIFEST_CASES])
def test_malformed_manifests_are_refused(tmp_path, built, keys, changes, problem):
    path = tmp_path / "a.tar"
    path.write_bytes(pack(resign(entries(built.path), keys[0], **changes)))
    with pytest.raises(ArtifactError) as err:
        load(path, keys[1])
    assert str(err.value) == f"a.tar: {problem}"


def test_non_canonical_and_negative_sizes_are_refused(tmp_path, built, keys):
    items = entries(built.path)
    manifest = json.loads(items[0][1])
    for raw, problem in [
        (json.dumps(manifest, indent=1).encode(), "manifest.json: not canonical JSON"),
        (b"\xff" + items[0][1], "manifest.json: not valid JSON"),
        (b"[" * 100_000, "manifest.json: not valid JSON"),
        (json.dumps({**manifest, "sizes": {**manifest["sizes"], "router.py": -1}}).encode(),
         "manifest.json: sizes should be integers >= 0"),
        (json.dumps({**manifest, "sizes": {**manifest["sizes"], "router.py": True}}).encode(),
         "manifest.json: sizes should be integers >= 0"),
    ]:
        sig = signing.private_key(keys[0]).sign(raw).hex().encode()
        (tmp_path / "a.tar").write_bytes(pack(replace(replace(items, "manifest.json", raw), "manifest.sig", sig)))
        with pytest.raises(ArtifactError) as err:
            load(tmp_path / "a.tar", keys[1])
        assert str(err.value) == f"a.tar: {problem}"


def test_truncated_padded_and_non_tar_files_are_refused(tmp_path, built, keys):
    data = built.path.read_bytes()
    path = tmp_path / "a.tar"
    with tarfile.open(built.path) as tar:
        _, sig, third, *_, last = tar.getmembers()
    cases = [
        (data[:third.offset], "truncated, or data follows the end of the archive"),  # at a header boundary
        (data[:third.offset + 100], "truncated, or data follows the end of the archive"),  # inside a header
        (data[:100], "not a valid tar archive (truncated header)"),  # inside the first header
        (data[:60], "not a valid tar archive (truncated header)"),  # inside the first header
        (data[:200], "not a valid tar archive (truncated header)"),  # inside the first header
        (data[:sig.offset_data + 10], "not a valid tar archive (unexpected end of data)"),  # inside manifest.sig
        (data[:last.offset_data + 3], "not a valid tar archive (unexpected end of data)"),  # inside a file
        (data[:last.offset_data + 512], "truncated, or data follows the end of the archive"),  # no end blocks
        (data + b"junk", "truncated, or data follows the end of the archive"),
        (data.rstrip(b"\0") + b"\0" * 512 + b"\x01" * 512, "truncated, or data follows the end of the archive"),
        (b"", "not a valid tar archive (empty file)"),
        (b"hello, I am not a tar archive\n" * 40, "not a valid tar archive (invalid header)"),
        (gzip.compress(data, mtime=0), "not a valid tar archive (invalid header)"),
    ]
    for blob, problem in cases:
        path.write_bytes(blob)
        with pytest.raises(ArtifactError) as err:
            load(path, keys[1])
        assert str(err.value) == f"a.tar: {problem}"
    with pytest.raises(ArtifactError, match=r"cannot read \(No such file or directory\)$"):
        load(tmp_path / "absent.tar", keys[1])


def test_oversized_artifacts_and_sources_are_refused(tmp_path, keys, monkeypatch):
    monkeypatch.setattr(artifact, "MAX_BYTES", 1024)
    (tmp_path / "big.tar").write_bytes(b"\0" * 2048)
    with pytest.raises(ArtifactError) as err:
        load(tmp_path / "big.tar", keys[1])
    assert str(err.value) == "big.tar: larger than 1024 bytes"
    src = make_source(tmp_path / "src", {"VERSION": b"1", "big.bin": b"x" * 1025})
    with pytest.raises(ArtifactError) as err:
        build(src, tmp_path / "out", "router", keys[0])
    assert str(err.value) == f"{src}: files exceed 1024 bytes"


# ---------------------------------------------------------------- properties

paths = st.one_of(st.text(max_size=40), st.lists(st.sampled_from(
    ["files", "manifest.json", "manifest.sig", "..", ".", "", "a", "b.py", "/", "\\", "\x00", "é", " "]), max_size=6)
    .map("/".join))


@given(paths)
def test_member_path_validation_accepts_only_safe_paths(name):
    try:
        rel = artifact._member_path(name, "x.tar")
    except ArtifactError as exc:
        assert str(exc).startswith("x.tar: member ") and "\n" not in str(exc)
        return
    if rel is None:
        assert name in ("manifest.json", "manifest.sig")
        return
    assert name == "files" if rel == "" else name == "files/" + rel
    parts = rel.split("/") if rel else []
    assert not name.startswith("/") and ".." not in parts and "." not in parts and "" not in parts
    assert all(set(p) <= set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-") for p in parts)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=20)
manifest_like = st.fixed_dictionaries({}, optional={
    "format": st.sampled_from([1, 1.0, True, "1", 2]), "name": st.sampled_from(["router", "", "../x", 1]),
    "version": st.sampled_from(["1.0.0", 1.0, "", " "]), "digest": st.sampled_from(["0" * 64, "x", None]),
    "files": json_values | st.dictionaries(st.text(max_size=8), st.sampled_from(["0" * 64, "", 3]), max_size=3),
    "sizes": json_values | st.dictionaries(st.text(max_size=8), st.integers(), max_size=3),
})


@given(st.one_of(st.binary(max_size=300), json_values.map(lambda v: json.dumps(v).encode()),
                 manifest_like.map(lambda v: json.dumps(v, sort_keys=True, separators=(",", ":")).encode())))
def test_manifest_parsing_raises_only_artifact_errors(raw):
    try:
        manifest.parse_manifest(raw, "x.tar")
    except ArtifactError as exc:
        assert str(exc).startswith("x.tar: manifest.json: ") and "\n" not in str(exc)


@given(st.binary(max_size=4096))
def test_random_bytes_are_refused_as_artifact_errors(blob):
    with pytest.raises(ArtifactError):
        artifact._parse(blob, Path("x.tar"), None)


@settings(max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_corrupted_artifacts_fail_cleanly_or_load_unchanged(built, keys, data):
    blob = bytearray(built.path.read_bytes())
    for _ in range(data.draw(st.integers(1, 4))):
        blob[data.draw(st.integers(0, len(blob) - 1))] = data.draw(st.integers(0, 255))
    verifier = signing.public_key(keys[1])
    try:
        got = artifact._parse(bytes(blob), built.path, verifier)
    except ArtifactError:
        return
    assert (got.manifest_bytes, got.files, got.digest) == (built.manifest_bytes, built.files, built.digest)


kinds = st.sampled_from([tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE,
                         tarfile.CHRTYPE, tarfile.FIFOTYPE, tarfile.CONTTYPE, tarfile.GNUTYPE_SPARSE])
specs = st.lists(st.tuples(paths, kinds, st.binary(max_size=64), st.sampled_from([0o644, 0o755, 0o4755])), max_size=5)


@settings(max_examples=200, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_forged_member_lists_raise_only_artifact_errors(built, data):
    items = entries(built.path)
    start = data.draw(st.integers(0, len(items)))
    extra = [(member(name, kind, mode=mode, linkname="files/router.py"), None if kind == tarfile.DIRTYPE else blob)
             for name, kind, blob, mode in data.draw(specs)]
    fmt = data.draw(st.sampled_from([tarfile.PAX_FORMAT, tarfile.GNU_FORMAT, tarfile.USTAR_FORMAT]))
    try:
        blob = pack(items[:start] + extra + items[start:], fmt)
    except (ValueError, UnicodeError):  # tarfile cannot even write this name in this format
        return
    try:
        got = artifact._parse(blob, built.path, None)
    except ArtifactError as exc:
        assert str(exc).startswith(f"{built.path.name}: ") and "\n" not in str(exc)
        return
    assert not extra and (got.manifest_bytes, got.files) == (built.manifest_bytes, built.files)
