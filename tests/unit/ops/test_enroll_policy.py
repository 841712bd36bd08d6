"""enroll's missing-host-key policy: a key not pinned yet is pinned only on evidence, else refused and not pinned."""

from __future__ import annotations

import re

import pytest

from deployctl.errors import HostKeyError
from deployctl.ops import enroll
from deployctl.state import keys
from deployctl.state.statedir import StateDir

BLOB = "AAAAC3NzaC1lZDI1NTE5AAAAIPZ7bOq1mXe7Q2NnQ6N0PV1Bqg4bVqX9Yb0b7o7xH1c8"
FP = keys.fingerprint(f"ssh-ed25519 {BLOB}")


class Key:
    def get_name(self):
        return "ssh-ed25519"

    def get_base64(self):
        return BLOB


class Client:
    def __init__(self):
        self.added = []

    def get_host_keys(self):
        return self

    def add(self, hostname, kind, key):
        self.added.append((hostname, kind))


class Ctx:
    def __init__(self, tmp_path):
        self.state = StateDir(tmp_path / "state")


def test_an_unknown_key_without_evidence_is_refused_and_not_pinned(tmp_path):
    ctx, client, pinned = Ctx(tmp_path), Client(), []
    policy = enroll._Evidence(ctx, "node1", None, None, "", pinned)
    with pytest.raises(HostKeyError, match=re.escape(f"node1: unknown host key ssh-ed25519 {FP} at 127.0.0.1:3651;")):
        policy.missing_host_key(client, "[127.0.0.1]:3651", Key())
    assert client.added == [] and pinned == [] and not ctx.state.known_hosts.exists()


@pytest.mark.parametrize("given, known, ask, why", [
    (FP, "", None, "matches --fingerprint"),
    (None, f"[127.0.0.1]:3651 ssh-ed25519 {BLOB}\n", None, "from your known_hosts"),
    (None, "", lambda *a: True, "confirmed by you"),
])
def test_a_key_with_evidence_is_pinned_in_the_state_folder(tmp_path, given, known, ask, why):
    ctx, client, pinned = Ctx(tmp_path), Client(), []
    enroll._Evidence(ctx, "node1", given, ask, known, pinned).missing_host_key(client, "[127.0.0.1]:3651", Key())
    assert client.added == [("[127.0.0.1]:3651", "ssh-ed25519")]
    assert ctx.state.known_hosts.read_text() == f"[127.0.0.1]:3651 ssh-ed25519 {BLOB}\n"
    assert pinned == [f"127.0.0.1:3651 {FP} ({why})"]


def test_port_22_hostnames():
    assert enroll._split("web1.example.com") == ("web1.example.com", 22)
    assert enroll._split("[::1]:2222") == ("::1", 2222)
