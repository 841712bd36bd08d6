"""Content-addressed staging on the fake fleet: a node is sent only the files it does not hold with
the right sha256; a tampered old file is never reused; the dry run says how many bytes go to each node."""

from __future__ import annotations

import fakefleet as ff
import pytest

from deployctl.remote import commands
from deployctl.ops import rollout as rollout_mod
from deployctl.errors import UsageError

NODES = [f"node{i}" for i in range(1, 9)]


@pytest.fixture
def live(tmp_path) -> ff.Rig:
    """Every node on release 0 (three files: router.json, router.py, lib/book.py)."""
    rig = ff.make_rig(tmp_path)
    rollout_mod.rollout(rig.ctx, rig.artifacts[0].path)
    rig.world.log.clear()
    rig.events.clear()
    return rig


def sent(rig: ff.Rig) -> dict[str, int]:
    return {node: size for kind, node, size in rig.world.log if kind == "sent"}


def subset_size(art, files) -> int:
    return len(art.subset(frozenset(files)))


def test_an_upgrade_sends_each_node_only_the_files_that_changed(live):
    new = live.artifacts[1]
    rollout_mod.rollout(live.ctx, new.path)
    changed = {"router.json", "router.py"}  # lib/book.py is the same in both releases
    assert sent(live) == {n: subset_size(new, changed) for n in NODES}
    assert all(live.world[n].releases[new.digest] == new.files and live.world[n].current == new.digest for n in NODES)
    staged = [d["message"] for k, d in live.events if k == "step" and d["message"].startswith("sent ")]
    assert staged == [f"sent {8 * len(commands.upload(new.subset(frozenset(changed)))) / 2**20:.2f} MiB to 8 "
                      f"nodes (8 of 24 files already on the nodes)"]


def test_a_tampered_old_file_is_sent_fresh_and_the_node_journals_it(live):
    old, new = live.artifacts[0], live.artifacts[1]
    live.world["node3"].tampered.add((old.digest, "lib/book.py"))
    rollout_mod.rollout(live.ctx, new.path)
    assert sent(live)["node3"] == len(new.payload())  # nothing reused: every file sent
    assert {n: s for n, s in sent(live).items() if n != "node3"} == {
        n: subset_size(new, {"router.json", "router.py"}) for n in NODES if n != "node3"}
    assert live.world["node3"].releases[new.digest] == new.files
    refused = [r for r in live.world["node3"].journal if r.get("event") == "not-reused"]
    assert refused == [{"action": "stage", "event": "not-reused", "file": "lib/book.py", "from": old.digest,
                        "from_file": "lib/book.py", "expected": new.files["lib/book.py"], "found": "0" * 64}]


def test_a_node_without_the_previous_release_gets_everything(live):
    new = live.artifacts[1]
    live.world["node5"].releases.clear()  # reimaged: nothing kept
    live.world["node5"].current = live.world["node5"].running = None
    rollout_mod.rollout(live.ctx, new.path)
    assert sent(live)["node5"] == len(new.payload())
    assert sent(live)["node1"] < len(new.payload())


def test_a_release_already_on_a_node_is_sent_only_its_small_files(live):
    old = live.artifacts[0]
    rollout_mod.rollout(live.ctx, live.artifacts[1].path)
    live.world.log.clear()
    live.events.clear()
    rollout_mod.rollout(live.ctx, old.path)  # back to a release every node keeps
    small = {r for r in old.files if old.sizes[r] < rollout_mod.MIN_REUSE_BYTES}
    assert small == {"router.json", "router.py"}  # below the threshold copying costs what sending does
    assert sent(live) == {n: subset_size(old, small) for n in NODES}
    assert "(8 of 24 files already on the nodes)" in next(d["message"] for k, d in live.events if k == "step")


def test_the_reuse_plan_hints_big_files_in_the_release_itself_then_kept_releases_same_path_first(live):
    import json

    old, new = live.artifacts[0], live.artifacts[1]
    line = rollout_mod.reuse_hints(live.ctx, new)
    doc = json.loads(line)
    assert doc["files"] == {"lib/book.py": new.files["lib/book.py"]}  # the only file of 64 KiB or more
    assert doc["hints"] == {"lib/book.py": [[new.digest, "lib/book.py"], [old.digest, "lib/book.py"]]}
    assert (doc["manifest"], doc["sig"]) == (new.manifest_bytes.decode(), new.signature)  # checked before any copy
    assert line == commands.reuse_hints(doc["files"], {r: [tuple(h) for h in hs] for r, hs in doc["hints"].items()},
                                       (new.manifest_bytes, new.signature))


def test_dry_run_says_how_many_bytes_each_node_would_be_sent(live):
    new = live.artifacts[1]
    live.world["node2"].releases.clear()
    rows = rollout_mod.preview(live.ctx, new.path)
    by_node = {r.node: r for r in rows}
    assert by_node["node1"].upload_bytes == subset_size(new, {"router.json", "router.py"})
    assert by_node["node1"].note == "1 of 3 files on the node"
    assert by_node["node2"].upload_bytes == len(new.payload()) and by_node["node2"].note == "0 of 3 files on the node"
    assert all(live.world[n].current == live.artifacts[0].digest for n in NODES)  # nothing changed
    assert not any(r.get("event") for n in NODES for r in live.world[n].journal[-1:])


def test_parse_have_refuses_what_is_not_a_list_of_paths():
    assert commands.parse_have(b'{"have": ["a", "b/c"], "bytes": 3}\n') == (frozenset({"a", "b/c"}), 3)
    for bad, words in ((b'{"have": "a", "bytes": 1}\n', "should be a list"),
                       (b'{"have": [], "bytes": -1}\n', "number of bytes"),
                       (b'{"have": [], "bytes": true}\n', "number of bytes"),
                       (b"not json\n", "unreadable answer")):
        with pytest.raises(UsageError if False else Exception, match=words):
            commands.parse_have(bad)


def test_a_node_whose_reuse_answer_is_bad_is_sent_nothing_and_fails_the_stage(live, monkeypatch):
    from deployctl.errors import RolledBackError

    real = ff.FakeFleet._step_one

    def step_one(self, node, data):
        answer = real(self, node, data)
        return b'{"have": "all of it", "bytes": 0}\n' if node.name == "node2" and b'"have"' in answer else answer

    monkeypatch.setattr(ff.FakeFleet, "_step_one", step_one)
    old, new = live.artifacts[0], live.artifacts[1]
    with pytest.raises(RolledBackError) as err:
        rollout_mod.rollout(live.ctx, new.path)
    assert "node2" in str(err.value) and "answer field 'have' should be a list of paths" in str(err.value)
    assert "node2" not in sent(live) and set(sent(live)) == set(NODES) - {"node2"}  # the others were sent theirs
    assert all(live.world[n].current == old.digest for n in NODES)
