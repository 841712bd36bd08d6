"""Enroll's host-key decision: pinned only from known_hosts, --fingerprint, or the user's yes; never silently."""

from __future__ import annotations

import base64
import hashlib
import hmac

import pytest

from deployctl.errors import HostKeyError, UsageError
from deployctl.remote import hostkeys
from deployctl.state import keys
from deployctl.state.statedir import StateDir

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIPZ7bOq1mXe7Q2NnQ6N0PV1Bqg4bVqX9Yb0b7o7xH1c8"
OTHER = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHk7mF0u2oZcF8Z1Xo1Q3xV1f9p7Q2m8E0yQ1tq5yq2a"
FP = keys.fingerprint(KEY)


def hashed(name: str, salt: bytes = b"0123456789abcdefghij") -> str:
    mac = hmac.new(salt, name.encode(), hashlib.sha1).digest()
    return f"|1|{base64.b64encode(salt).decode()}|{base64.b64encode(mac).decode()}"


@pytest.mark.parametrize("line", [
    f"[10.0.0.5]:2222 {KEY}", f"web1,[10.0.0.5]:2222 {KEY} comment", f"[10.0.0.*]:2222 {KEY}",
    f"{hashed('[10.0.0.5]:2222')} {KEY}",
])
def test_known_hosts_lines_that_name_the_host(line):
    assert hostkeys.known_keys(f"# c\n{line}\n", "10.0.0.5", 2222) == ([KEY], [])


@pytest.mark.parametrize("line", [
    f"10.0.0.5 {KEY}", f"[10.0.0.*]:2222,![10.0.0.5]:2222 {KEY}", f"{hashed('10.0.0.5')} {KEY}",
    f"@cert-authority [10.0.0.5]:2222 {KEY}",
])
def test_known_hosts_lines_that_do_not(line):
    assert hostkeys.known_keys(line + "\n", "10.0.0.5", 2222) == ([], [])


def test_revoked_key():
    assert hostkeys.known_keys(f"@revoked * {KEY}\n", "h", 22) == ([], [KEY])
    with pytest.raises(HostKeyError, match="marked @revoked"):
        hostkeys.decide("n1", "h:22", KEY, ([], [KEY]), FP)


def test_sources_of_trust():
    assert hostkeys.decide("n1", "h:22", KEY, ([KEY], []), None) == "from your known_hosts"
    assert hostkeys.decide("n1", "h:22", KEY, ([], []), FP) == "matches --fingerprint"
    asked = []
    assert hostkeys.decide("n1", "h:22", KEY, ([], []), None, lambda *a: asked.append(a) or True) == "confirmed by you"
    assert asked == [("n1", "h:22", "ssh-ed25519", FP)]  # the user saw the fingerprint


def test_refusals_name_the_node_and_the_fingerprint():
    with pytest.raises(HostKeyError) as exc:
        hostkeys.decide("n1", "10.0.0.5:22", KEY, ([], []), None)
    assert str(exc.value) == (f"n1: unknown host key ssh-ed25519 {FP} at 10.0.0.5:22; check it on the server "
                              f"(ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub) and pass --fingerprint n1={FP}")
    with pytest.raises(HostKeyError, match="not SHA256:x as --fingerprint says"):
        hostkeys.decide("n1", "h:22", KEY, ([], []), "SHA256:x")
    with pytest.raises(HostKeyError, match="another ssh-ed25519 key"):
        hostkeys.decide("n1", "h:22", KEY, ([OTHER], []), FP)  # known_hosts beats a given fingerprint
    with pytest.raises(HostKeyError, match="not accepted; nothing pinned"):
        hostkeys.decide("n1", "h:22", KEY, ([], []), None, lambda *a: False)


def test_pin_appends_to_the_state_known_hosts(tmp_path):
    state = StateDir(tmp_path / "s")
    keys.pin_host_key(state, "10.0.0.5", 2222, KEY)
    keys.pin_host_key(state, "web", 22, OTHER)
    assert state.known_hosts.read_text() == f"[10.0.0.5]:2222 {KEY}\nweb {OTHER}\n"
    assert state.known_hosts.stat().st_mode & 0o777 == 0o600


def test_fingerprint_options():
    assert hostkeys.parse_fingerprints([f"n1={FP}"], ["n1", "n2"]) == {"n1": FP}
    with pytest.raises(UsageError, match=r"^--fingerprint n3=.*: no node 'n3' in the inventory$"):
        hostkeys.parse_fingerprints([f"n3={FP}"], ["n1"])
    with pytest.raises(UsageError, match="should be NODE=SHA256:<43 base64 characters>"):
        hostkeys.parse_fingerprints(["n1=MD5:ab"], ["n1"])
