"""node/agent.py, run as on a node (`python3 -I -S -c SOURCE OP ROOT ...`) against a temp install root.

Each test starts the agent as a subprocess from the argv the real builder in remote/commands.py produces, with
only `python3` replaced by this interpreter (agentproc.py). No sockets: `switch` with a supervisor socket is not
covered here.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from agentproc import (
    DIGEST,
    FILES,
    OTHER,
    PUB_HEX,
    A,
    B,
    answer,
    digest,
    expected_tree,
    lines,
    make_tar,
    member,
    refusal,
    release_folder,
    run,
    sha,
    signed_manifest,
    tree,
)
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from deployctl.config.playbook import Service
from deployctl.release.manifest import digest_of
from deployctl.remote import agentpack, commands


def stage(root: Path, data: bytes = None, want: str = DIGEST, size: int | None = None, keep: int = 3,
          then: bytes = b"") -> subprocess.CompletedProcess:
    """Stage `data` (the files' tar by default) as the controller does: its exact size on the command line,
    then `then` on stdin after the tar (a switch request, or nothing)."""
    data = make_tar() if data is None else data
    return run(commands.stage(str(root), want, len(data) if size is None else size, keep), data + then)


# --- probe ------------------------------------------------------------------------------------------------------

def sh(argv: list[str]) -> subprocess.CompletedProcess:
    """Run the shell read (hashes) as a node would."""
    assert argv[:2] == ["sh", "-c"]
    return subprocess.run(argv, capture_output=True, timeout=60)


def probe(root: Path) -> commands.Probe:
    proc = run(commands.probe(str(root)))
    assert proc.returncode == 0 and proc.stderr == b"", proc.stderr
    return commands.parse_probe(proc.stdout)


def test_probe_empty_root(root):
    got = probe(root)
    assert (got.current, got.releases, got.halted) == (None, (), False) and got.free > 0


def test_probe_missing_root(tmp_path):
    assert probe(tmp_path / "nothing-here") == commands.Probe(None, (), 0, False)


def test_probe_lists_only_digest_folders(root):
    (root / "releases" / DIGEST).mkdir()
    (root / "releases" / ".stage-abc-1").mkdir()
    (root / "releases" / "notes").mkdir()
    assert probe(root).releases == (DIGEST,)


def test_probe_root_with_shell_metacharacters_is_only_data(tmp_path):
    odd = tmp_path / "r; touch pwned $(touch pwned2)"
    (odd / "releases" / DIGEST).mkdir(parents=True)
    assert probe(odd).releases == (DIGEST,)
    assert not (tmp_path / "pwned").exists() and not list(tmp_path.glob("pwned*"))


def _shapes(root: Path) -> None:
    """Give `root` what a probe reports: releases, a stage leftover, other names, current, halted."""
    for name in (DIGEST, OTHER, ".stage-abc-1", "notes"):
        (root / "releases" / name).mkdir(parents=True, exist_ok=True)
    os.symlink(f"releases/{DIGEST}", root / "current")
    (root / "state").mkdir(exist_ok=True)
    (root / "state" / "halted").write_text("x")


@pytest.mark.parametrize("shape", ["empty", "missing", "full", "no-releases-folder"])
def test_deploy_answers_preflight_with_the_probe(tmp_path, shape):
    """deploy's first line carries the same probe as `probe`, for every shape of install root."""
    root = tmp_path / "opt-router"
    if shape != "missing":
        (root / "releases").mkdir(parents=True)
    if shape == "full":
        _shapes(root)
    if shape == "no-releases-folder":
        (root / "releases").rmdir()
    line = lines(run(commands.deploy(str(root), DIGEST, 3)))[0]
    from_agent = commands.parse_probe_answer(json.dumps(line).encode())
    from_probe = probe(root)
    assert dataclasses.replace(from_agent, free=0) == dataclasses.replace(from_probe, free=0)
    assert abs(from_agent.free - from_probe.free) < 64 * 2**20  # the same filesystem, read a moment apart
    expected = {"empty": (None, (), False), "missing": (None, (), False), "no-releases-folder": (None, (), False),
                "full": (DIGEST, tuple(sorted([DIGEST, OTHER])), True)}[shape]
    assert (from_agent.current, from_agent.releases, from_agent.halted) == expected
    assert (from_agent.free > 0) == (shape != "missing")


def test_deploy_answers_the_probe_then_stages_and_switches_on_request(root):
    data = make_tar()
    request = commands.switch_request(DIGEST, {"action": "rollout"}, Service(None, None, "/health", None))
    plan = commands.reuse_hints({}, {})
    probed, have, staged, switched = lines(run(commands.deploy(str(root), DIGEST, 3),
                                                plan + commands.upload(data) + request))
    assert commands.parse_probe(probed["probe"].encode()).current is None
    assert have == {"have": [], "bytes": 0}
    assert staged["digest"] == DIGEST and staged["copied"] == 0 and switched["current"] == DIGEST
    assert os.readlink(root / "current") == f"releases/{DIGEST}"


def test_deploy_ended_before_the_artifact_changes_nothing(root):
    before = tree(root)
    proc = run(commands.deploy(str(root), DIGEST, 3), b"")
    assert proc.returncode == 0 and proc.stderr == b""
    assert list(lines(proc)[0]) == ["probe"] and len(lines(proc)) == 1
    assert tree(root) == before  # no release, no stage folder, no current


def test_deploy_refuses_bad_arguments_before_probing(root):
    assert "bad digest" in refusal(run(commands.deploy(str(root), "../x", 3)))
    assert "bad size or keep" in refusal(run(commands.deploy(str(root), DIGEST, -1)))


# --- stage ------------------------------------------------------------------------------------------------------

def test_stage_then_reuse(root):
    doc = answer(stage(root))
    assert doc == {"digest": DIGEST, "files": len(FILES), "reused": False, "removed": [], "copied": 0}
    assert commands.parse_stage(stage(root).stdout) == DIGEST  # second stage: same answer shape
    release = root / "releases" / DIGEST
    assert tree(release) == expected_tree(FILES)
    assert digest_of({rel: sha(data) for rel, data in tree(release).items() if data != "dir"}) == DIGEST
    assert all((release / rel).stat().st_mode & 0o777 == 0o644 for rel in FILES)
    assert sorted(os.listdir(root / "releases")) == [DIGEST]
    again = answer(stage(root))
    assert again == {"digest": DIGEST, "files": len(FILES), "reused": True, "removed": [], "copied": 0}
    assert sorted(os.listdir(root / "releases")) == [DIGEST]


def test_stage_without_folder_entries(root):
    assert answer(stage(root, make_tar(dirs=False)))["digest"] == DIGEST
    assert tree(root / "releases" / DIGEST) == expected_tree(FILES)


def test_stage_replaces_a_tampered_copy(root):
    answer(stage(root))
    release = root / "releases" / DIGEST
    (release / "router.py").write_bytes(b"tampered\n")
    (release / "extra.txt").write_bytes(b"added\n")
    doc = answer(stage(root))
    assert doc["reused"] is False
    assert tree(release) == expected_tree(FILES)
    assert sorted(os.listdir(root / "releases")) == [DIGEST]


def test_stage_a_real_built_artifact(root, tmp_path):
    from deployctl.release.artifact import build
    from deployctl.release.signing import generate as generate_signing_key

    src = tmp_path / "src"
    for rel, data in {**FILES, "router.json": b'{"name": "router", "version": "1.2.3"}\n'}.items():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_bytes(data)
    private, public = generate_signing_key(tmp_path / "keys")
    (root / "state" / "signing.pub").write_text(public.read_text())
    art = build(src, tmp_path / "dist", "router", private)
    doc = answer(run(commands.stage(str(root), art.digest, len(art.payload()), 3), art.payload()))
    assert doc == {"digest": art.digest, "files": len(art.files), "reused": False, "removed": [], "copied": 0}
    release = root / "releases" / art.digest
    assert {rel: sha(data) for rel, data in tree(release).items() if data != "dir"} == art.files


SIGNATURE_CASES = {
    "signed by another key": (signed_manifest(FILES, Ed25519PrivateKey.generate()),
                              "manifest signature does not verify with the pinned key"),
    "signature of other bytes": ((signed_manifest(FILES)[0], signed_manifest({"x": b"y"})[1]),
                                 "manifest signature does not verify with the pinned key"),
    "manifest names other files": (signed_manifest({**FILES, "extra.py": b"1"}, digest_value=DIGEST),
                                   "signed manifest does not match the staged files"),
    "manifest names another digest": (signed_manifest(FILES, digest_value=OTHER),
                                      "signed manifest does not match the staged files"),
    "signature not hex": ((signed_manifest(FILES)[0], b"zz"), "no usable pinned signing key or signature on this node"),
}


@pytest.mark.parametrize("case", sorted(SIGNATURE_CASES))
def test_stage_checks_the_signature_on_the_node(root, case):
    manifest, message = SIGNATURE_CASES[case]
    assert refusal(stage(root, make_tar(manifest=manifest))) == message
    assert sorted(p.name for p in (root / "releases").iterdir()) == []


def test_stage_refused_without_a_pinned_key(root):
    (root / "state" / "signing.pub").unlink()
    assert refusal(stage(root)) == "no usable pinned signing key or signature on this node"
    assert list((root / "releases").iterdir()) == []


def test_stage_large_file_spans_blocks(root):
    big = {"blob.bin": os.urandom(3 * 2**20 + 17), "small.txt": b"x"}
    answer(stage(root, make_tar(big), digest(big)))
    assert (root / "releases" / digest(big) / "blob.bin").read_bytes() == big["blob.bin"]


def _refusal_cases():
    good = make_tar()
    return [
        ("wrong-digest", good, OTHER),
        ("dotdot-inside-files", make_tar(extra=[member("files/../evil", b"x")]), DIGEST),
        ("dotdot-top", make_tar(extra=[member("../evil", b"x")]), DIGEST),
        ("dotdot-deep", make_tar(extra=[member("files/lib/../../../evil", b"x")]), DIGEST),
        ("absolute", make_tar(extra=[member("/tmp/deployctl-test-evil", b"x")]), DIGEST),
        ("symlink", make_tar(extra=[member("files/link", None, tarfile.SYMTYPE, "/etc/passwd")]), DIGEST),
        ("symlink-relative", make_tar(extra=[member("files/link", None, tarfile.SYMTYPE, "router.py")]), DIGEST),
        ("hardlink", make_tar(extra=[member("files/hard", None, tarfile.LNKTYPE, "files/router.py")]), DIGEST),
        ("fifo", make_tar(extra=[member("files/fifo", None, tarfile.FIFOTYPE)]), DIGEST),
        ("char-device", make_tar(extra=[member("files/null", None, tarfile.CHRTYPE)]), DIGEST),
        ("block-device", make_tar(extra=[member("files/sda", None, tarfile.BLKTYPE)]), DIGEST),
        ("unexpected-top-level", make_tar(extra=[member("README", b"hi")]), DIGEST),
        ("files-is-a-file", make_tar(files={}, extra=[member("files", b"x")], dirs=False), digest({})),
        ("duplicate", make_tar(extra=[member("files/router.py", b"again")]), DIGEST),
        ("empty-stdin", b"", DIGEST),
        ("garbage-stdin", b"this is not a tar archive\n", DIGEST),
        ("garbage-block", bytes(range(256)) * 8, DIGEST),
        ("gzip", b"\x1f\x8b\x08\x00" + b"\x00" * 600, DIGEST),
        ("truncated", good[:700], DIGEST),
        ("junk-after-the-end", good + b"\0" * 512 + b"junk" + b"\0" * 508, DIGEST),
        ("gnu-long-name", _gnu_long_name(), DIGEST),
        ("pax-other-key", make_tar(extra=[member("files/" + "x" * 120, b"x")]).replace(b" path=", b" pith="), DIGEST),
        ("bad-size-field", good[:124] + b"9" * 12 + good[136:], DIGEST),
    ]


def _gnu_long_name() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        info = tarfile.TarInfo("files/" + "y" * 120)
        info.size = 1
        tar.addfile(info, io.BytesIO(b"y"))
    return buf.getvalue()


@pytest.mark.parametrize("name, data, want", _refusal_cases(), ids=[c[0] for c in _refusal_cases()])
def test_stage_refuses(root, name, data, want):
    proc = stage(root, data, want)
    refusal(proc)
    assert os.listdir(root / "releases") == []  # no release folder, no .stage-* left behind
    assert not (root.parent / "evil").exists() and not (root / "evil").exists()
    assert not Path("/tmp/deployctl-test-evil").exists()


@pytest.mark.parametrize("sent, announced, words", [(-1, 0, "ended after"), (0, +512, "ended after"),
                                                    (0, 1024 - len(make_tar()), "runs past")],
                         ids=["one-byte-short", "size-claims-more", "size-claims-less"])
def test_stage_refuses_an_upload_of_another_size_than_announced(root, sent, announced, words):
    data = make_tar()
    proc = stage(root, data[:len(data) + sent], size=len(data) + announced)
    assert words in refusal(proc)
    assert os.listdir(root / "releases") == []


def test_stage_takes_a_long_name_through_its_pax_header(root):
    files = {**FILES, "lib/" + "n" * 150 + ".py": b"long\n"}
    answer(stage(root, make_tar(files), digest(files)))
    assert (root / "releases" / digest(files) / "lib" / ("n" * 150 + ".py")).read_bytes() == b"long\n"


def test_stage_prunes_in_the_same_command(root):
    for i, name in enumerate(R[:4]):
        os.utime(release_folder(root, name), (1_000_000 + i, 1_000_000 + i))
    doc = answer(run(commands.stage(str(root), DIGEST, len(make_tar()), 2, [R[0]]), make_tar()))
    assert sorted(doc["removed"]) == sorted(R[1:4])  # keep 2: the new release and the protected one
    assert _left(root) == sorted([DIGEST, R[0]])


# --- a held stage: the switch request after the tar ------------------------------------------------------------

def test_held_stage_switches_on_request_and_journals_it(root):
    record = {"action": "rollout", "phase": "switch", "node": "n1"}
    request = commands.switch_request(DIGEST, record, Service(None, None, "/health", None))
    staged, switched = lines(stage(root, then=request))
    assert staged["digest"] == DIGEST
    assert switched == {"previous": None, "current": DIGEST, "restarted": False}
    assert os.readlink(root / "current") == f"releases/{DIGEST}"
    journal = [json.loads(x) for x in (root / "state" / "journal.jsonl").read_text().splitlines()]
    assert journal == [dict(record, previous=None)]


def test_held_stage_runs_the_restart_argv(root):
    marker = root.parent / "restarted"
    svc = Service(("sh", "-c", f"echo yes > {marker}"), ("true",), "/health", None)
    staged, switched = lines(stage(root, then=commands.switch_request(DIGEST, None, svc)))
    assert switched["restarted"] is True and marker.read_text() == "yes\n"
    svc = Service(("sh", "-c", "echo broken >&2; exit 3"), ("true",), "/health", None)
    error = json.loads(stage(root, then=commands.switch_request(DIGEST, None, svc)).stderr)["error"]
    assert "exited 3: broken" in error


def test_held_stage_without_a_request_changes_nothing(root):
    (lines(stage(root, then=b"")),)
    assert not (root / "current").exists()
    assert not (root / "state" / "journal.jsonl").exists()


@pytest.mark.parametrize("request_line", [b"switch\n", b"[1]\n", b'{"record": 5}\n', b'{"bogus": 1}\n',
                                          b'{"supervisor": ["/x"]}\n', b'{"restart": []}\n'])
def test_held_stage_refuses_a_bad_request_and_does_not_switch(root, request_line):
    proc = stage(root, then=request_line)
    assert proc.returncode == 1 and json.loads(proc.stderr)["error"]
    assert json.loads(proc.stdout.decode().splitlines()[0])["digest"] == DIGEST  # staged and answered first
    assert not (root / "current").exists()


def test_held_stage_refuses_a_request_for_another_release(root):
    request = commands.switch_request(OTHER, None, Service(None, None, "/health", None))
    proc = stage(root, then=request)
    assert proc.returncode == 1 and "not the staged release" in json.loads(proc.stderr)["error"]
    assert not (root / "current").exists()


def test_retarget_answers_the_probe_then_switches_on_request(root):
    release_folder(root, A)
    release_folder(root, B)
    answer(run(commands.switch(str(root), A)))
    svc = Service(None, None, "/health", None)
    probed, switched = lines(run(commands.retarget(str(root)), commands.switch_request(B, {"action": "rollback"}, svc)))
    assert commands.parse_probe(probed["probe"].encode()).current == A
    assert switched == {"previous": A, "current": B, "restarted": False}
    assert os.readlink(root / "current") == f"releases/{B}"
    journal = [json.loads(x) for x in (root / "state" / "journal.jsonl").read_text().splitlines()]
    assert journal == [{"action": "rollback", "previous": A}]


@pytest.mark.parametrize("request_line, words", [(b"", None), (b'{"record": null}\n', "names no release"),
                                                 (b'{"digest": "' + b"c" * 64 + b'"}\n', "is not on this node"),
                                                 (b'{"digest": "../x"}\n', "bad digest")],
                         ids=["end-of-input", "no-digest", "missing-release", "bad-digest"])
def test_retarget_without_a_good_request_changes_nothing(root, request_line, words):
    release_folder(root, A)
    answer(run(commands.switch(str(root), A)))
    proc = run(commands.retarget(str(root)), request_line)
    assert list(json.loads(proc.stdout.decode().splitlines()[0])) == ["probe"]
    if words is None:
        assert proc.returncode == 0 and len(proc.stdout.decode().splitlines()) == 1
    else:
        assert proc.returncode == 1 and words in json.loads(proc.stderr)["error"]
    assert os.readlink(root / "current") == f"releases/{A}"


def test_stage_wrong_digest_names_both(root):
    error = refusal(stage(root, want=OTHER))
    assert DIGEST in error and OTHER in error


def test_stage_refuses_a_bad_digest_argument(root):
    error = refusal(stage(root, want="../../etc"))
    assert "bad digest" in error
    assert os.listdir(root / "releases") == []


def test_stage_refusal_keeps_an_existing_release(root):
    answer(stage(root))
    refusal(stage(root, make_tar(extra=[member("files/link", None, tarfile.SYMTYPE, "x")])))
    assert sorted(os.listdir(root / "releases")) == [DIGEST]
    assert tree(root / "releases" / DIGEST) == expected_tree(FILES)


# --- switch -----------------------------------------------------------------------------------------------------

def test_switch_makes_relative_symlink_and_reports_previous(root):
    release_folder(root, A)
    release_folder(root, B)
    first = answer(run(commands.switch(str(root), A)))
    assert first == {"previous": None, "current": A, "restarted": False}
    assert os.readlink(root / "current") == f"releases/{A}"
    assert (root / "current" / "router.py").read_bytes() == A.encode()
    second = answer(run(commands.switch(str(root), B)))
    assert commands.parse_switch(json.dumps(second).encode()) == (A, B)
    assert os.readlink(root / "current") == f"releases/{B}"
    assert sorted(os.listdir(root)) == ["current", "releases", "state"]  # no .current-* left


def test_switch_to_missing_release_is_refused(root):
    release_folder(root, A)
    answer(run(commands.switch(str(root), A)))
    error = refusal(run(commands.switch(str(root), B)))
    assert B[:12] in error
    assert os.readlink(root / "current") == f"releases/{A}"
    assert sorted(os.listdir(root)) == ["current", "releases", "state"]


def test_switch_to_missing_release_on_fresh_node(root):
    refusal(run(commands.switch(str(root), A)))
    assert not os.path.lexists(root / "current")


# --- hashes -----------------------------------------------------------------------------------------------------

def hashes(root: Path, digest: str = "current") -> commands.Hashes:
    proc = sh(commands.hashes(str(root), digest))
    assert proc.returncode == 0, proc.stderr
    return commands.parse_hashes(proc.stdout)


def test_hashes_of_current(root):
    answer(stage(root))
    answer(run(commands.switch(str(root), DIGEST)))
    got = hashes(root)
    assert got == commands.Hashes(DIGEST, {r: sha(d) for r, d in FILES.items()}, (), False)
    assert digest_of(got.files) == DIGEST


def test_hashes_reports_added_file_and_symlinks(root):
    answer(stage(root))
    answer(run(commands.switch(str(root), DIGEST)))
    release = root / "releases" / DIGEST
    (release / "lib" / "added.py").write_bytes(b"new\n")
    (release / "link").symlink_to("router.py")
    (release / "dirlink").symlink_to("lib")
    (release / "dangling").symlink_to("nowhere")
    os.mkfifo(release / "pipe")
    got = hashes(root, DIGEST)
    assert got.files == {**{r: sha(d) for r, d in FILES.items()}, "lib/added.py": sha(b"new\n")}
    assert got.odd == ("dangling", "dirlink", "link", "pipe")


def test_hashes_reports_a_name_sha256sum_escapes_as_odd(root):
    release_folder(root, A)
    (root / "releases" / A / "bad\\name").write_bytes(b"x")
    got = hashes(root, A)
    assert "bad\\name" not in got.files and len(got.odd) == 1 and got.odd[0].startswith("(unprintable name)")


def test_hashes_without_current_is_refused(root):
    proc = sh(commands.hashes(str(root)))
    assert proc.returncode == 1 and b"no release at" in proc.stderr and proc.stdout == b""


def test_hashes_reports_halted(root):
    release_folder(root, A)
    (root / "state" / "halted").write_text("x")
    assert hashes(root, A).halted is True


# --- prune ------------------------------------------------------------------------------------------------------

R = [c * 64 for c in "123456"]  # R[0] oldest ... R[5] newest


@pytest.fixture
def six(root):
    for i, name in enumerate(R):
        folder = release_folder(root, name)
        os.utime(folder, (1_000_000 + i * 100, 1_000_000 + i * 100))
    return root


def _left(root: Path) -> list[str]:
    return sorted(os.listdir(root / "releases"))


def test_prune_keeps_newest_protected_and_current(six):
    root = six
    answer(run(commands.switch(str(root), R[0])))  # current is the oldest
    (root / "releases" / ".stage-deadbeef-123").mkdir()
    (root / "releases" / ".stage-deadbeef-123" / "partial").write_bytes(b"x")
    # keep_releases counts the current release (playbooks/router.yaml): 4 = current + protected + 2 newest
    doc = answer(run(commands.prune(str(root), 4, [R[1]])))
    assert sorted(doc["removed"]) == sorted([R[2], R[3]])
    assert _left(root) == sorted([R[0], R[1], R[4], R[5]])


def test_prune_never_removes_current_or_protected_even_past_keep(six):
    root = six
    answer(run(commands.switch(str(root), R[0])))
    doc = answer(run(commands.prune(str(root), 1, [R[1], R[2]])))
    assert sorted(doc["removed"]) == sorted(R[3:])
    assert _left(root) == sorted(R[:3])


def test_prune_keeps_everything_under_keep(six):
    root = six
    doc = answer(run(commands.prune(str(root), 10, [])))
    assert doc == {"removed": []}
    assert _left(root) == sorted(R)


def test_prune_without_current_keeps_newest(six):
    root = six
    doc = answer(run(commands.prune(str(root), 2, [])))
    assert sorted(doc["removed"]) == sorted(R[:4])
    assert _left(root) == sorted(R[4:])


def test_prune_removes_stage_leftovers_and_ignores_other_names(root):
    (root / "releases" / ".stage-abc-1" / "x").mkdir(parents=True)
    (root / "releases" / "notes").mkdir()
    answer(run(commands.prune(str(root), 2, [])))
    assert _left(root) == ["notes"]


# --- journal ----------------------------------------------------------------------------------------------------

def test_journal_appends_never_rewrites(root):
    path = root / "state" / "journal.jsonl"
    one = b'{"action":"rollout","phase":"start"}'
    two = b'{"action":"rollout","phase":"done"}\n'
    assert answer(run(commands.journal_append(str(root)), one)) == {"appended": len(one)}
    first = path.read_bytes()
    assert first == one + b"\n"
    answer(run(commands.journal_append(str(root)), two))
    second = path.read_bytes()
    assert second.startswith(first)
    assert second == one + b"\n" + two
    assert path.stat().st_mode & 0o777 == 0o600


def test_journal_refuses_non_json_and_keeps_file(root):
    path = root / "state" / "journal.jsonl"
    answer(run(commands.journal_append(str(root)), b'{"a":1}\n'))
    before = path.read_bytes()
    refusal(run(commands.journal_append(str(root)), b"not json\n"))
    assert path.read_bytes() == before


def test_journal_keeps_one_record_per_line(root):
    path = root / "state" / "journal.jsonl"
    proc = run(commands.journal_append(str(root)), b'{"a":\n 1}\n')
    if proc.returncode == 0:
        for line in path.read_bytes().splitlines():
            assert isinstance(json.loads(line), dict)
    else:
        refusal(proc)
        assert not path.exists() or path.read_bytes() == b""


def test_the_agent_ends_a_torn_line_before_its_record(root):
    """A torn last line (a node that lost power mid-write) is ended, never merged into the next record;
    the router's writer does the same (tests/unit/router/test_router.py)."""
    path = root / "state" / "journal.jsonl"
    path.write_bytes(b'{"action":"a"}\n' + TORN)
    answer(run(commands.journal_append(str(root)), b'{"action":"b"}'))
    assert path.read_bytes() == b'{"action":"a"}\n' + TORN + b'\n{"action":"b"}\n'
    assert json.loads(path.read_bytes().splitlines()[-1]) == {"action": "b"}


TORN = b'{"action":"switch","dig'


# --- halt -------------------------------------------------------------------------------------------------------

def test_halt_writes_flag(root):
    assert answer(run(commands.halt(str(root)))) == {"halted": True}
    assert (root / "state" / "halted").is_file()
    assert sorted(os.listdir(root / "state")) == ["halted", "signing.pub"]  # no .halted-* temp left
    assert probe(root).halted is True
    assert answer(run(commands.halt(str(root)))) == {"halted": True}  # idempotent


# --- usage ------------------------------------------------------------------------------------------------------

def test_relative_root_refused():
    assert "absolute" in refusal(run(commands.halt("relative/root")))


def test_unknown_op_refused(root):
    argv = commands.halt(str(root))
    argv[argv.index("halt")] = "format-disk"
    assert "usage" in refusal(run(argv))


def test_wrong_arity_is_one_json_line(root):
    refusal(run(commands.switch(str(root), A)[:-1]))  # switch without a digest


# --- content-addressed staging (deploy's reuse plan) ------------------------------------------------------------

NEW_FILES = {**FILES, "router.py": b"print('router v2')\n"}  # one file changed, four the same
NEW = digest(NEW_FILES)


def deploy(root: Path, files: dict[str, bytes], hints: dict, sent: dict[str, bytes] | None = None,
           then: bytes = b"", planned: tuple[bytes, bytes] | None = None,
           uploaded: tuple[bytes, bytes] | None = None) -> subprocess.CompletedProcess:
    """Run `deploy` as a rollout does: the reuse plan (with the signed manifest `planned`, by default the
    files' own), then a tar of the files `sent` (which the node lacks is not known in advance here, so
    the caller says) with the signed manifest `uploaded` (the same by default), then `then`."""
    want = digest(files)
    planned = planned or signed_manifest(files)
    plan = commands.reuse_hints({r: sha(d) for r, d in files.items() if r in hints}, hints,
                               (planned[0], planned[1].decode()))
    body = make_tar(sent, manifest=uploaded or planned) if sent is not None else b""
    return run(commands.deploy(str(root), want, 3), plan + (commands.upload(body) if sent is not None else b"") + then)


@pytest.fixture
def old(root: Path) -> Path:
    """A node holding release DIGEST (FILES)."""
    assert answer(stage(root))["digest"] == DIGEST
    return root


def test_deploy_reuses_the_files_it_holds_and_takes_only_the_rest(old):
    hints = {r: [(DIGEST, r)] for r in FILES}
    probed, have, staged = lines(deploy(old, NEW_FILES, hints, {"router.py": NEW_FILES["router.py"]}))
    assert have == {"have": sorted(set(FILES) - {"router.py"}),
                    "bytes": sum(len(d) for r, d in FILES.items() if r != "router.py")}
    assert staged["digest"] == NEW and staged["copied"] == 4 and staged["files"] == 5
    assert tree(old / "releases" / NEW) == expected_tree(NEW_FILES)
    # copies, never links: a later tamper of one release cannot reach the other
    a, b = (old / "releases" / DIGEST / "lib/util.py").stat(), (old / "releases" / NEW / "lib/util.py").stat()
    assert a.st_ino != b.st_ino
    assert [p.name for p in (old / "releases").iterdir() if p.name.startswith(".stage")] == []


def test_a_tampered_old_file_is_not_reused_and_the_node_journals_it(old):
    (old / "releases" / DIGEST / "lib" / "util.py").write_bytes(b"X = 2\n")  # same size, other bytes
    hints = {r: [(DIGEST, r)] for r in FILES if r != "router.py"}  # as the controller hints: unchanged files
    probed, have, = lines(deploy(old, NEW_FILES, hints))
    assert "lib/util.py" not in have["have"] and "router.json" in have["have"]
    journal = [json.loads(line) for line in (old / "state" / "journal.jsonl").read_text().splitlines()]
    assert journal == [{"action": "stage", "event": "not-reused", "file": "lib/util.py", "from": DIGEST,
                        "from_file": "lib/util.py", "expected": sha(FILES["lib/util.py"]), "found": sha(b"X = 2\n")}]
    sent = {r: NEW_FILES[r] for r in ("lib/util.py", "router.py")}
    probed, have, staged = lines(deploy(old, NEW_FILES, hints, sent))
    assert staged["digest"] == NEW and tree(old / "releases" / NEW) == expected_tree(NEW_FILES)


def test_deploy_checks_the_plans_signature_before_it_copies_anything(old):
    before = tree(old)
    hints = {r: [(DIGEST, r)] for r in FILES}
    proc = deploy(old, NEW_FILES, hints, {"router.py": NEW_FILES["router.py"]},
                  planned=signed_manifest(NEW_FILES, Ed25519PrivateKey.generate()))
    assert proc.returncode == 1 and proc.stdout.count(b"\n") == 1  # the probe, then no reuse answer
    assert json.loads(proc.stderr) == {"error": "manifest signature does not verify with the pinned key"}
    assert tree(old) == before  # no copy, no stage folder


def test_deploy_checks_an_upload_whose_manifest_is_not_the_one_checked_in_the_plan(old):
    hints = {r: [(DIGEST, r)] for r in FILES}
    good = signed_manifest(NEW_FILES)
    forged = (good[0], signed_manifest(NEW_FILES, Ed25519PrivateKey.generate())[1])  # same manifest, other signer
    proc = deploy(old, NEW_FILES, hints, {"router.py": NEW_FILES["router.py"]}, planned=good, uploaded=forged)
    assert proc.returncode == 1 and not (old / "releases" / NEW).exists()
    assert json.loads(proc.stderr) == {"error": "manifest signature does not verify with the pinned key"}


def test_deploy_prunes_after_its_answer(old):
    for i, name in enumerate(R[:4]):
        os.utime(release_folder(old, name), (1_000_000 + i, 1_000_000 + i))
    hints = {r: [(DIGEST, r)] for r in FILES}
    probed, have, staged = lines(deploy(old, NEW_FILES, hints, {"router.py": NEW_FILES["router.py"]}))
    assert "removed" not in staged and staged["digest"] == NEW
    assert _left(old) == sorted([NEW, DIGEST, R[3]])  # keep 3: the new release and the two newest


def test_deploy_refuses_a_release_that_misses_a_file_nobody_sent(old):
    hints = {r: [(DIGEST, r)] for r in FILES}
    (old / "releases" / DIGEST / "empty.txt").unlink()  # the node no longer has it, and it is not sent
    proc = deploy(old, NEW_FILES, hints, {"router.py": NEW_FILES["router.py"]})
    assert proc.returncode == 1 and "staged files hash to" in json.loads(proc.stderr)["error"]
    assert not (old / "releases" / NEW).exists()


def test_deploy_refuses_a_file_both_reused_and_sent(old):
    hints = {r: [(DIGEST, r)] for r in FILES}
    proc = deploy(old, NEW_FILES, hints, NEW_FILES)
    assert proc.returncode == 1 and not (old / "releases" / NEW).exists()
    assert json.loads(proc.stderr) == {"error": "upload repeats a file the node already had: empty.txt"}


@pytest.mark.parametrize("plan, words", [
    (b"not json\n", "reuse plan is not JSON"),
    (b'{"files": {}}\n', "exactly files and hints"),
    (b'{"files": {"a": "' + b"0" * 64 + b'"}, "hints": {}}\n', "hints should name exactly the files"),
    (b'{"files": {"../etc/passwd": "' + b"0" * 64 + b'"}, "hints": {"../etc/passwd": []}}\n', "bad entry"),
    (b'{"files": {"a": "' + b"0" * 64 + b'"}, "hints": {"a": [["' + b"0" * 64 + b'", "../../x"]]}}\n', "bad entry"),
    (b'{"files": {"a": "' + b"0" * 64 + b'"}, "hints": {"a": [["nothex", "a"]]}}\n', "bad entry"),
    (b'{"files": {}, "hints": {}, "manifest": "{}"}\n', "exactly files and hints"),
    (b'{"files": {}, "hints": {}, "manifest": 1, "sig": "00"}\n', "manifest and sig should be strings"),
    (b'{"files": {}, "hints": {}, "manifest": "{}", "sig": "0/0"}\n', "manifest and sig should be strings"),
    (b'{"files": {}, "hints": {}, "manifest": "\\ud800", "sig": "00"}\n', "the manifest is not UTF-8"),
    (b'{"files": {}, "hints": {}, "manifest": "{}", "sig": "00"}\n', "signature does not verify"),
])
def test_deploy_refuses_a_bad_reuse_plan_and_changes_nothing(root, plan, words):
    before = tree(root)
    proc = run(commands.deploy(str(root), DIGEST, 3), plan)
    assert proc.returncode == 1 and words in json.loads(proc.stderr.decode().splitlines()[-1])["error"]
    assert tree(root) == before


def test_have_hashes_in_place_and_writes_nothing(old):
    (old / "releases" / DIGEST / "router.json").write_bytes(b"tampered")
    before = tree(old)
    hints = {r: [(DIGEST, r)] for r in FILES}
    doc = answer(run(commands.have(str(old)), commands.reuse_hints({r: sha(d) for r, d in NEW_FILES.items()}, hints)))
    assert doc["have"] == ["empty.txt", "lib/deep/data.bin", "lib/util.py"]
    assert doc["bytes"] == sum(len(FILES[r]) for r in doc["have"])
    assert commands.parse_probe_answer(json.dumps(doc).encode()).current is None
    assert tree(old) == before


def test_deploy_waiting_past_its_hold_time_removes_its_stage_folder(old, monkeypatch):
    """A controller gone between the reuse answer and the upload: the agent gives up after its hold
    time (here 1 s) with one error line, and leaves no stage folder behind."""
    source = agentpack.AGENT.replace("HOLD_SECONDS = 600", "HOLD_SECONDS = 1")
    assert source != agentpack.AGENT
    argv = commands.deploy(str(old), NEW, 3)
    argv[4:8] = agentpack.agent_program(source)
    hints = {r: [(DIGEST, r)] for r in FILES}
    plan = commands.reuse_hints({r: sha(d) for r, d in FILES.items()}, hints)
    proc = subprocess.Popen([sys.executable, *argv[1:]], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    proc.stdin.write(plan)
    proc.stdin.flush()  # and then nothing more, input left open
    assert b'"probe"' in proc.stdout.readline() and b'"have"' in proc.stdout.readline()
    assert proc.wait(timeout=30) == 1  # an error line and exit 1, not killed by SIGALRM (-14)
    assert "sent nothing for 1 s" in json.loads(proc.stderr.read())["error"]
    proc.stdin.close()
    assert [p.name for p in (old / "releases").iterdir() if p.name.startswith(".stage")] == []


def test_stop_after_a_failed_first_rollout_stops_the_service_and_removes_current(old, tmp_path):
    """activate(None): the revert of a node that had no release before. It stops the router through
    supervisord (a stand-in answering on a unix socket) and removes `current`, journaling first."""
    import socket
    import threading

    path = str(tmp_path / "supervisor.sock")
    server = socket.socket(socket.AF_UNIX)
    server.bind(path)
    server.listen(1)
    seen = []

    def answer_once():
        conn, _ = server.accept()
        with conn:
            seen.append(conn.recv(65536))
            conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Type: text/xml\r\n\r\n<?xml version='1.0'?><methodResponse>"
                         b"<params><param><value><boolean>1</boolean></value></param></params></methodResponse>")

    thread = threading.Thread(target=answer_once, daemon=True)
    thread.start()
    assert answer(run(commands.switch(str(old), DIGEST), b""))["current"] == DIGEST
    record = json.dumps({"action": "rollout", "phase": "revert", "digest": None}).encode()
    doc = answer(run(commands.stop(str(old), (path, "router")), record))
    thread.join(10)
    server.close()
    assert doc == {"stopped": "router", "previous": DIGEST}
    assert b"supervisor.stopProcess" in seen[0] and b"<string>router</string>" in seen[0]
    assert not os.path.lexists(old / "current") and (old / "releases" / DIGEST).is_dir()
    journal = [json.loads(line) for line in (old / "state" / "journal.jsonl").read_text().splitlines()]
    assert journal[-1] == {"action": "rollout", "phase": "revert", "digest": None, "previous": DIGEST}


# --- the agent's own ed25519 check -----------------------------------------------------------------------------

RFC8032 = [  # RFC 8032, 7.1, tests 1 and 2: public key, message, signature
    ("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a", "",
     "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b"),
    ("3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c", "72",
     "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00"),
]


@pytest.mark.parametrize("public, message, signature", RFC8032)
def test_ed25519_takes_the_rfc_vectors_and_nothing_changed(public, message, signature):
    from deployctl.node.agent import ed25519_ok

    public, message, signature = bytes.fromhex(public), bytes.fromhex(message), bytes.fromhex(signature)
    assert ed25519_ok(public, message, signature)
    assert not ed25519_ok(public, message + b"\0", signature)
    for i in (0, 31, 32, 63):  # R and s, each end
        bad = bytearray(signature)
        bad[i] ^= 0x01
        assert not ed25519_ok(public, message, bytes(bad))


def test_ed25519_constants_are_what_they_are_defined_as():
    from deployctl.node.agent import D2, GX, GY, SQRT_M1, D, P, _point

    assert D == -121665 * pow(121666, P - 2, P) % P and D2 == 2 * D % P
    assert SQRT_M1 == pow(2, (P - 1) // 4, P) and SQRT_M1 * SQRT_M1 % P == P - 1
    assert _point((4 * pow(5, P - 2, P) % P).to_bytes(32, "little"))[:2] == (GX, GY)  # y = 4/5, x even


def test_ed25519_agrees_with_the_cryptography_library():
    import random

    from deployctl.node.agent import L, ed25519_ok

    rng = random.Random(7)
    for n in range(40):
        key = Ed25519PrivateKey.from_private_bytes(rng.randbytes(32))
        public = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        message = rng.randbytes(n * 7)
        signature = key.sign(message)
        assert ed25519_ok(public, message, signature)
        assert not ed25519_ok(bytes.fromhex(PUB_HEX), message, signature)  # another key
        s = int.from_bytes(signature[32:], "little")
        assert not ed25519_ok(public, message, signature[:32] + (s + L).to_bytes(32, "little"))  # s not reduced


def test_sync_later_waits_for_its_fsyncs_and_raises_their_first_error(tmp_path):
    from deployctl.node.agent import sync_later

    files = [tmp_path / f"f{i}" for i in range(3)]
    for f in files:
        f.write_bytes(b"x" * 4096)
    assert sync_later([str(f) for f in files])() is None
    wait = sync_later([str(files[0]), str(tmp_path / "gone"), str(files[1])])
    with pytest.raises(FileNotFoundError):
        wait()
