"""Content-addressed staging on the real nodes: a rollout sends each node only the files it lacks, a
tampered file in an old release is never reused, and the dry run says how many bytes would go."""

from __future__ import annotations

import dataclasses
import json
import uuid

from deployctl import api


def two_releases(make_release):
    """Two new releases that differ only in router.json's version and share a 1 MiB file that no
    release before them had (so no node holds it anywhere else)."""
    tag = uuid.uuid4().hex[:8]
    big = tag.encode() * (2**20 // 8)
    return make_release(f"3.0.0+{tag}", {"big.bin": big}), make_release(f"3.1.0+{tag}", {"big.bin": big})


def staged_message(events: list) -> str:
    return next(d["message"] for k, d in events if k == "step" and d["message"].startswith("sent "))


def test_an_upgrade_sends_only_the_files_that_changed(ctx, make_release):
    v1, v2 = two_releases(make_release)
    api.rollout(ctx, v1.path)
    events = []
    api.rollout(dataclasses.replace(ctx, on_event=lambda kind, **d: events.append((kind, d))), v2.path)
    n, files = len(ctx.nodes), len(v2.files)
    changed = {r for r in v2.files if v1.files.get(r) != v2.files[r]}
    assert changed == {"router.json"}
    sent = frozenset(v2.files) - {"big.bin"}  # the changed file, and files too small to be worth a copy
    size = len(b"%d\n" % len(v2.subset(sent))) + len(v2.subset(sent))
    assert staged_message(events) == (f"sent {n * size / 2**20:.2f} MiB to {n} nodes "
                                      f"({n} of {n * files} files already on the nodes)")
    assert size < len(v2.payload()) / 10
    assert api.verify(ctx, v2.digest).ok


def test_a_tampered_file_in_an_old_release_is_sent_fresh_and_journaled(ctx, make_release, node_exec):
    v1, v2 = two_releases(make_release)
    api.rollout(ctx, v1.path)
    # Same size, other bytes: flip one byte of the shared file in node3's copy of v1.
    code, out = node_exec("node3", f"printf 'X' | dd of=/opt/router/releases/{v1.digest}/big.bin bs=1 seek=4096 "
                                   "conv=notrunc status=none")
    assert code == 0, out
    events = []
    api.rollout(dataclasses.replace(ctx, on_event=lambda kind, **d: events.append((kind, d))), v2.path)
    n, files = len(ctx.nodes), len(v2.files)
    assert f"({n - 1} of {n * files} files already on the nodes)" in staged_message(events)
    code, out = node_exec("node3", "cat /opt/router/state/journal.jsonl")
    refused = [json.loads(line) for line in out.splitlines() if '"not-reused"' in line]
    assert [(r["file"], r["from"], r["expected"]) for r in refused][-1:] == [("big.bin", v1.digest,
                                                                              v2.files["big.bin"])]
    assert refused[-1]["found"] != refused[-1]["expected"]
    report = api.verify(ctx, v2.digest)
    assert report.ok, [n.problems for n in report.nodes if not n.ok]


def test_dry_run_shows_the_bytes_each_node_would_be_sent(ctx, make_release, node_exec):
    v1, v2 = two_releases(make_release)
    api.rollout(ctx, v1.path)
    node_exec("node5", f"rm -rf /opt/router/releases/{v1.digest}/big.bin")  # node5 lost one file
    rows = {r.node: r for r in api.preview_rollout(ctx, v2.path)}
    assert rows["node1"].upload_bytes == len(v2.subset(frozenset(v2.files) - {"big.bin"}))
    assert rows["node1"].note == f"1 of {len(v2.files)} files on the node"
    assert rows["node5"].upload_bytes == len(v2.payload())
    assert rows["node5"].note == f"0 of {len(v2.files)} files on the node"
    assert {r.current for r in rows.values()} == {v1.digest}  # nothing changed
