"""Content-addressed staging on the fake fleet: a node is sent only the files it does not hold with
the right sha256; a tampered old file is never reused; the dry run says how many bytes go to each node."""

from __future__ import annotations

import fakefleet as ff
import pytest
from fakefleet import NODES

from deployctl.errors import UsageError
from deployctl.ops import rollout as rollout_mod
from deployctl.remote import commands


def sent(rig: ff.Rig) -> dict[str, int]:
    return {node: size for kind, node, size in rig.world.log if kind == "sent"}


def subset_size(art, files) -> int:
    return len(art.subset(frozenset(files)))


def test_an_upgrade_sends_each_node_only_the_files_that_changed(one):
    new = one.artifacts[1]
    rollout_mod.rollout(one.ctx, new.path)
    changed = {"router.json", "router.py"}  # lib/book.py is the same in both releases
    assert sent(one) == {n: subset_size(new, changed) for n in NODES}
    assert all(one.world[n].releases[new.digest] == new.files and one.world[n].current == new.digest for n in NODES)
    staged = [d["message"] for k, d in one.events if k == "step" and d["message"].startswith("sent ")]
    assert staged == [f"sent {8 * len(commands.upload(new.subset(frozenset(changed)))) / 2**20:.2f} MiB to 8 "
                      f"nodes (8 of 24 files already on the nodes)"]


def test_a_tampered_old_file_is_sent_fresh_and_the_node_journals_it(one):
    old, new = one.artifacts[0], one.artifacts[1]
    one.world["node3"].tampered.add((old.digest, "lib/book.py"))
    rollout_mod.rollout(one.ctx, new.path)
    assert sent(one)["node3"] == len(new.payload())  # nothing reused: every file sent
    assert {n: s for n, s in sent(one).items() if n != "node3"} == {
        n: subset_size(new, {"router.json", "router.py"}) for n in NODES if n != "node3"}
    assert one.world["node3"].releases[new.digest] == new.files
    refused = [r for r in one.world["node3"].journal if r.get("event") == "not-reused"]
    assert refused == [{"action": "stage", "event": "not-reused", "file": "lib/book.py", "from": old.digest,
                        "from_file": "lib/book.py", "expected": new.files["lib/book.py"], "found": "0" * 64}]


def test_a_node_without_the_previous_release_gets_everything(one):
    new = one.artifacts[1]
    one.world["node5"].releases.clear()  # reimaged: nothing kept
    one.world["node5"].current = one.world["node5"].running = None
    rollout_mod.rollout(one.ctx, new.path)
    assert sent(one)["node5"] == len(new.payload())
    assert sent(one)["node1"] < len(new.payload())


def test_a_release_already_on_a_node_is_sent_only_its_small_files(one):
    old = one.artifacts[0]
    rollout_mod.rollout(one.ctx, one.artifacts[1].path)
    one.world.log.clear()
    one.events.clear()
    rollout_mod.rollout(one.ctx, old.path)  # back to a release every node keeps
    small = {r for r in old.files if old.sizes[r] < rollout_mod.MIN_REUSE_BYTES}
    assert small == {"router.json", "router.py"}  # below the threshold copying costs what sending does
    assert sent(one) == {n: subset_size(old, small) for n in NODES}
    assert "(8 of 24 files already on the nodes)" in next(d["message"] for k, d in one.events if k == "step")


def test_the_reuse_plan_hints_big_files_in_the_release_itself_then_kept_releases_same_path_first(one):
    import json

    old, new = one.artifacts[0], one.artifacts[1]
    line = rollout_mod.reuse_hints(one.ctx, new)
    doc = json.loads(line)
    assert doc["files"] == {"lib/book.py": new.files["lib/book.py"]}  # the only file of 64 KiB or more
    assert doc["hints"] == {"lib/book.py": [[new.digest, "lib/book.py"], [old.digest, "lib/book.py"]]}
    assert (doc["manifest"], doc["sig"]) == (new.manifest_bytes.decode(), new.signature)  # checked before any copy
    assert line == commands.reuse_hints(doc["files"], {r: [tuple(h) for h in hs] for r, hs in doc["hints"].items()},
                                       (new.manifest_bytes, new.signature))


def test_dry_run_says_how_many_bytes_each_node_would_be_sent(one):
    new = one.artifacts[1]
    one.world["node2"].releases.clear()
    rows = rollout_mod.preview(one.ctx, new.path)
    by_node = {r.node: r for r in rows}
    assert by_node["node1"].upload_bytes == subset_size(new, {"router.json", "router.py"})
    assert by_node["node1"].note == "1 of 3 files on the node"
    assert by_node["node2"].upload_bytes == len(new.payload()) and by_node["node2"].note == "0 of 3 files on the node"
    assert all(one.world[n].current == one.artifacts[0].digest for n in NODES)  # nothing changed
    assert not any(r.get("event") for n in NODES for r in one.world[n].journal[-1:])


def test_parse_have_refuses_what_is_not_a_list_of_paths():
    assert commands.parse_have(b'{"have": ["a", "b/c"], "bytes": 3}\n') == (frozenset({"a", "b/c"}), 3)
    for bad, words in ((b'{"have": "a", "bytes": 1}\n', "should be a list"),
                       (b'{"have": [], "bytes": -1}\n', "number of bytes"),
                       (b'{"have": [], "bytes": true}\n', "number of bytes"),
                       (b"not json\n", "unreadable answer")):
        with pytest.raises(UsageError if False else Exception, match=words):
            commands.parse_have(bad)


def test_a_node_whose_reuse_answer_is_bad_is_sent_nothing_and_fails_the_stage(one, monkeypatch):
    from deployctl.errors import RolledBackError

    real = ff.FakeFleet._step_one

    def step_one(self, node, data):
        answer = real(self, node, data)
        return b'{"have": "all of it", "bytes": 0}\n' if node.name == "node2" and b'"have"' in answer else answer

    monkeypatch.setattr(ff.FakeFleet, "_step_one", step_one)
    old, new = one.artifacts[0], one.artifacts[1]
    with pytest.raises(RolledBackError) as err:
        rollout_mod.rollout(one.ctx, new.path)
    assert "node2" in str(err.value) and "answer field 'have' should be a list of paths" in str(err.value)
    assert "node2" not in sent(one) and set(sent(one)) == set(NODES) - {"node2"}  # the others were sent theirs
    assert all(one.world[n].current == old.digest for n in NODES)
