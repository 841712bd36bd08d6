"""sshconnect: known_hosts parsed once per version of the file, each connection given only its host's pinned keys."""

from __future__ import annotations

import os

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from deployctl.remote import sshconnect
from deployctl.remote.channel import NodeError

paramiko = sshconnect.import_paramiko()


def pub() -> str:
    return Ed25519PrivateKey.generate().public_key().public_bytes(Encoding.OpenSSH, PublicFormat.OpenSSH).decode()


@pytest.fixture
def client_key(tmp_path):
    from cryptography.hazmat.primitives.serialization import NoEncryption, PrivateFormat

    path = tmp_path / "id"
    path.write_bytes(Ed25519PrivateKey.generate().private_bytes(Encoding.PEM, PrivateFormat.OpenSSH, NoEncryption()))
    return path


@pytest.fixture
def known_hosts(tmp_path):
    keys = {port: pub() for port in range(2401, 2465)}
    path = tmp_path / "known_hosts"
    path.write_text("".join(f"[127.0.0.1]:{port} {key}\n" for port, key in keys.items()))
    return path, keys


def test_sixty_four_connections_parse_the_file_once_and_each_gets_only_its_own_key(known_hosts, client_key,
                                                                                   monkeypatch):
    path, keys = known_hosts
    loads, seen = [], {}
    real_load = paramiko.HostKeys.load
    monkeypatch.setattr(paramiko.HostKeys, "load", lambda self, f: (loads.append(f), real_load(self, f))[1])

    def connect(client, host, port, **_):
        seen[port] = {name: dict(sub) for name, sub in client.get_host_keys().items()}
        raise paramiko.SSHException("stop here")

    monkeypatch.setattr(paramiko.SSHClient, "connect", connect)
    monkeypatch.setattr(sshconnect, "_tcp", lambda *a: None)  # no server: connect itself is stubbed
    for port in keys:
        with pytest.raises(NodeError):
            sshconnect.open_client("127.0.0.1", port, "root", client_key, path, 1)
    assert len(loads) <= 1  # once per version of the file (not at all if an earlier test parsed this one)
    for port, key in keys.items():
        assert list(seen[port]) == [f"[127.0.0.1]:{port}"]
        assert seen[port][f"[127.0.0.1]:{port}"]["ssh-ed25519"].get_base64() == key.split()[1]


def test_a_rewritten_file_is_read_again(known_hosts):
    path, keys = known_hosts
    before = sshconnect.pinned_keys(path)
    assert sshconnect.pinned_keys(path) is before
    new = pub()
    path.write_text(f"[127.0.0.1]:2401 {new}\n")
    os.utime(path, ns=(1, 1))  # a different mtime even on a coarse clock
    after = sshconnect.pinned_keys(path)
    assert after.lookup("[127.0.0.1]:2401")["ssh-ed25519"].get_base64() == new.split()[1]
    assert after.lookup("[127.0.0.1]:2402") is None  # a key removed from the file is no longer pinned


def test_a_host_missing_from_the_file_gets_no_key_and_is_refused(known_hosts, client_key, monkeypatch):
    path, _ = known_hosts
    got = {}

    def connect(client, host, port, **_):
        got["keys"] = len(client.get_host_keys())
        raise paramiko.SSHException("Server '[127.0.0.1]:2999' not found in known_hosts")

    monkeypatch.setattr(paramiko.SSHClient, "connect", connect)
    monkeypatch.setattr(sshconnect, "_tcp", lambda *a: None)  # no server: connect itself is stubbed
    with pytest.raises(NodeError) as exc:
        sshconnect.open_client("127.0.0.1", 2999, "root", client_key, path, 1)
    assert got["keys"] == 0 and exc.value.host_key


def test_the_client_key_is_read_once_per_version_and_a_bad_one_is_one_line(client_key, tmp_path):
    first = sshconnect.client_pkey(client_key)
    assert sshconnect.client_pkey(client_key) is first
    os.utime(client_key, ns=(1, 1))
    again = sshconnect.client_pkey(client_key)
    assert again is not first and again.get_base64() == first.get_base64()
    bad = tmp_path / "bad"
    bad.write_text("not a key\n")
    with pytest.raises(NodeError) as exc:
        sshconnect.client_pkey(bad)
    assert exc.value.reason.startswith(f"cannot use identity file {bad}: ") and "\n" not in exc.value.reason


def test_connections_opened_together_parse_the_file_once(known_hosts, monkeypatch):
    """A fleet's first connections ask for the pinned keys at the same moment: one of them parses."""
    import threading
    import time

    path, _ = known_hosts
    loads = []
    real_load = paramiko.HostKeys.load

    def slow_load(self, f):
        loads.append(f)
        time.sleep(0.05)  # long enough for every thread to arrive while the first one parses
        return real_load(self, f)

    monkeypatch.setattr(paramiko.HostKeys, "load", slow_load)
    os.utime(path, ns=(1, 1))  # a version of the file no earlier test parsed
    got = []
    threads = [threading.Thread(target=lambda: got.append(sshconnect.pinned_keys(path))) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(loads) == 1
    assert len(got) == 8 and all(g is got[0] for g in got)
