"""Open one SSH connection with a pinned host key, directly or through bastions: the only module that
imports paramiko.

The controller's own known_hosts is the only source of trust: a missing or different key is
refused (RejectPolicy; Fabric's Connection would install AutoAddPolicy here). paramiko is
imported on first use, without invoke, and prefers AES-GCM. A paramiko without strict key
exchange (the Terrapin fix, CVE-2023-48795) is refused before any connection.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from deployctl.errors import DeployctlError, describe_os_error
from deployctl.remote.channel import NodeError

if TYPE_CHECKING:
    from paramiko import SSHClient

# paramiko logs failed handshakes with tracebacks; our results carry the reason instead.
logging.getLogger("paramiko").addHandler(logging.NullHandler())


def open_client(host: str, port: int, user: str, client_key: Path, known_hosts: Path, timeout: float, sock=None):
    """Return a connected paramiko SSHClient; NodeError (host_key set for key trouble) if it cannot be.
    `sock` (a channel from open_tunnel) carries the connection through a bastion; the host key is still
    looked up as [host]:port, the node's own address."""
    paramiko = import_paramiko()
    client = paramiko.SSHClient()
    # Pinned keys only: RejectPolicy for unknown hosts (Fabric's Connection would install
    # AutoAddPolicy here), and no system known_hosts, only ours.
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    name = host if port == 22 else f"[{host}]:{port}"  # as paramiko's connect looks it up
    for keytype, key in (pinned_keys(known_hosts).lookup(name) or {}).items():
        client.get_host_keys().add(name, keytype, key)
    try:
        if sock is None:
            sock = _tcp(host, port, timeout)
        client.connect(
            host, port=port, username=user, pkey=client_pkey(client_key), look_for_keys=False,
            allow_agent=False, timeout=timeout, banner_timeout=timeout,
            auth_timeout=timeout, transport_factory=_gcm_first_transport(), sock=sock,
            disabled_algorithms={"ciphers": ["aes128-cbc", "aes192-cbc", "aes256-cbc", "3des-cbc"]},
        )
    except paramiko.BadHostKeyException as exc:
        raise NodeError(
            f"host key mismatch at {host}:{port}: got {exc.key.get_name()} "
            f"{_fp(exc.key)}, pinned {_fp(exc.expected_key)}; refusing to connect", host_key=True
        ) from None
    except paramiko.SSHException as exc:
        host_key = "not found in known_hosts" in str(exc)
        if host_key:
            msg = f"no pinned host key for {host}:{port}; refusing to connect"
        elif "banner" in str(exc) or "No existing session" in str(exc):
            msg = f"no SSH answer at {host}:{port} within {timeout:g}s"
        else:
            msg = f"ssh: {exc}"
        raise NodeError(msg, host_key=host_key) from None
    except FileNotFoundError as exc:
        raise NodeError(f"cannot read identity file {exc.filename or client_key}") from None
    except (TimeoutError, OSError, EOFError) as exc:
        raise NodeError(f"unreachable at {host}:{port}: {describe_os_error(exc)}") from None
    client.get_transport().set_keepalive(5)
    return client


def _tcp(host: str, port: int, timeout: float) -> socket.socket:
    """A TCP connection to host:port with Nagle's algorithm off (TCP_NODELAY), as OpenSSH's client has it.

    With Nagle on, a small SSH message sent while an earlier one is still unacknowledged waits for
    that ACK, which the other end delays (delayed ACK): the userauth request waited for it on every
    connection."""
    sock = socket.create_connection((host, port), timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def open_tunnel(transport, host: str, port: int, via: str, timeout: float):
    """Return a direct-tcpip channel to host:port over a bastion's open transport (a socket-like object for
    open_client or http.client); NodeError naming the bastion `via` if it refuses or cannot reach it."""
    paramiko = import_paramiko()
    try:
        chan = transport.open_channel("direct-tcpip", (host, port), ("127.0.0.1", 0), timeout=timeout)
    except paramiko.ChannelException as exc:
        # RFC 4254 5.1 reason codes: 1 administratively prohibited (AllowTcpForwarding no), 2 connect failed
        why = {1: "forwarding refused", 2: f"cannot reach {host}:{port} from there"}.get(exc.code, exc.text)
        raise NodeError(f"via bastion {via}: {why}", refused=exc.code == 2) from None
    except (paramiko.SSHException, OSError, EOFError) as exc:
        raise NodeError(f"via bastion {via}: connection lost ({describe_os_error(exc)})") from None
    chan.settimeout(timeout)
    return chan


_import_lock = threading.Lock()
_parsed: dict[tuple[str, str], tuple[tuple, object]] = {}
_parsed_lock = threading.Lock()


def _parsed_once(kind: str, path: Path, parse):
    """Return parse(path), parsed again only when the file's version (inode, size, mtime) changes. The
    parse is under the lock, so a fleet's first connections, opened together, parse the file once."""
    st = os.stat(path)
    stamp = (st.st_ino, st.st_size, st.st_mtime_ns)
    with _parsed_lock:
        cached = _parsed.get((kind, str(path)))
        if cached is None or cached[0] != stamp:
            cached = _parsed[(kind, str(path))] = (stamp, parse(str(path)))
        return cached[1]


def pinned_keys(known_hosts: Path):
    """Return our known_hosts as a paramiko HostKeys, parsed once per version of the file (inode, size,
    mtime): each connection used to parse the whole file again, N parses of N lines for a fleet of N
    nodes under one GIL, half of the controller's CPU in a 64-node verify. Each client is given only
    its own host's pinned keys from it; a host without any is still refused (RejectPolicy)."""
    return _parsed_once("known_hosts", known_hosts, import_paramiko().HostKeys)


def client_pkey(path: Path):
    """Return the private key at `path` as a paramiko PKey, read once per version of the file: given
    key_filename, paramiko reads and parses the file on every connection, once per key type it tries."""
    paramiko = import_paramiko()
    try:
        return _parsed_once("pkey", path, paramiko.PKey.from_path)
    except (ValueError, paramiko.SSHException, paramiko.pkey.UnknownKeyType) as exc:
        why = str(exc).splitlines()[0] if str(exc) else "not a key"
        raise NodeError(f"cannot use identity file {path}: {why}") from None


def require_strict_kex(paramiko=None) -> None:
    """Return if paramiko (the installed one by default) negotiates strict key exchange, the fix for
    the Terrapin prefix-truncation attack; DeployctlError, one line, if it cannot. The feature is
    looked for (the Transport's `strict_kex` switch and its enforcement), not a version string."""
    paramiko = paramiko or import_paramiko()
    transport = getattr(paramiko, "Transport", None)
    init = getattr(getattr(transport, "__init__", None), "__code__", None)
    if init is None or "strict_kex" not in init.co_varnames or not hasattr(transport, "_enforce_strict_kex"):
        raise DeployctlError(f"paramiko {getattr(paramiko, '__version__', '?')} lacks strict key exchange "
                             "(Terrapin, CVE-2023-48795): install paramiko 3.4 or newer; no SSH work started")


def import_paramiko():
    """Import paramiko (once, under a lock: the first connections are opened from eight threads)
    without invoke. paramiko.config imports invoke only to run `Match exec` lines of ssh_config
    files, which deployctl never has paramiko read (sshconfig.py reads them); invoke pulls in asyncio
    and unittest.mock, which every command would import. invoke stays importable (Fabric, for setup work,
    imports it first): only paramiko's own reference to it is left unset."""
    with _import_lock:
        module = sys.modules.get("paramiko")
        if module is None:
            blocked = "invoke" not in sys.modules
            if blocked:
                # None makes `import invoke` raise ImportError, which paramiko allows (typeshed wants a module).
                sys.modules["invoke"] = None  # type: ignore[assignment]
            try:
                import paramiko as module
            finally:
                if blocked and "invoke" in sys.modules and sys.modules["invoke"] is None:
                    del sys.modules["invoke"]
        return module


def _gcm_first_transport():
    """A paramiko Transport that prefers AES-GCM: no separate MAC pass, so less controller CPU per
    uploaded byte than paramiko's default aes128-ctr + hmac-sha2-256.

    It also answers the messages sshd sends right after authentication that want no reply (the
    hostkeys-00@openssh.com notice, the authorized_keys options debug line) with an SSH_MSG_IGNORE of
    one byte. sshd keeps Nagle on for a session without a pty, so its answer to our channel open waited
    for the TCP ACK of those two messages, which the receiving side delays when it has nothing to send
    back: a wait on every connection's first command (the ACK now rides on the ignore). Never from
    inside a key exchange: the transport thread would wait for itself."""
    paramiko = import_paramiko()
    transport: Any = paramiko.Transport  # a base imported at run time, which the checker cannot name

    class GcmFirst(transport):
        _preferred_ciphers = tuple(sorted(paramiko.Transport._preferred_ciphers, key=lambda c: "gcm" not in c))

        def _parse_global_request(self, m):
            super()._parse_global_request(m)
            self._ack_now()

        def _parse_debug(self, m):
            super()._parse_debug(m)
            self._ack_now()

        def _ack_now(self):
            if self.active and self.initial_kex_done and self.clear_to_send.is_set():
                self.send_ignore(1)

    return GcmFirst


def _fp(key) -> str:
    return key.fingerprint if hasattr(key, "fingerprint") else key.get_base64()[:16]


class Bastions:
    """Connections to the bastions of one command, each shared by every node behind it: one per hop chain
    (a later hop is reached through a direct-tcpip channel of the one before), opened on first use with
    the same pinned known_hosts, one attempt per command. Close it when the command is done."""

    def __init__(self, client_key: Path, known_hosts: Path, timeout: float):
        self.client_key, self.known_hosts, self.timeout = client_key, known_hosts, timeout
        self._clients: dict[tuple, SSHClient | NodeError] = {}  # hop chain -> client, or the error it failed with
        self._lock = threading.Lock()
        # paramiko keeps one saved exception per transport: two channel opens refused at once would lose
        # a reason ("Unable to open channel."), so opens go one at a time (each is one round trip).
        self._channel_lock = threading.Lock()

    def transport(self, chain: tuple):
        """Return the open transport of the chain's last hop; NodeError naming the bastion otherwise."""
        with self._lock:  # the first node behind a bastion opens it; the others wait and share it
            return self._open(chain)

    def _open(self, chain: tuple):
        got = self._clients.get(chain)
        if isinstance(got, NodeError):
            raise got
        hop = chain[-1]
        if got is not None:
            transport = got.get_transport()
            if transport is not None and transport.is_active():
                return transport
            got.close()  # dropped: never reconnect within a command, as for nodes
            self._clients[chain] = err = NodeError(f"bastion {hop.label()}: connection lost earlier in this command")
            raise err
        try:
            sock = open_tunnel(self._open(chain[:-1]), hop.host, hop.port, chain[-2].label(),
                               self.timeout) if len(chain) > 1 else None
            key = Path(hop.identity_file) if hop.identity_file else self.client_key
            client = open_client(hop.host, hop.port, hop.user, key, self.known_hosts, self.timeout, sock)
        except NodeError as exc:
            reason = exc.reason if exc.reason.startswith(("via bastion", "bastion ")) else \
                f"bastion {hop.label()}: {exc.reason}"
            self._clients[chain] = err = NodeError(reason, host_key=exc.host_key)
            raise err from None
        self._clients[chain] = client
        return client.get_transport()

    def tunnel(self, chain: tuple, host: str, port: int):
        """Return a direct-tcpip channel to host:port through the chain; NodeError naming the bastion."""
        transport = self.transport(chain)
        with self._channel_lock:
            return open_tunnel(transport, host, port, chain[-1].label(), self.timeout)

    def socket(self, chain: tuple, host: str, port: int, timeout: float):
        """tunnel() for http.client: ConnectionRefusedError when nothing listens at host:port (the bastion
        said so), OSError naming the bastion for anything else."""
        try:
            chan = self.tunnel(chain, host, port)
        except NodeError as exc:
            raise (ConnectionRefusedError if exc.refused else OSError)(exc.reason) from None
        chan.settimeout(timeout)
        return chan

    def close(self) -> None:
        """Close every bastion connection, later hops first; safe to call twice."""
        with self._lock:
            clients, self._clients = list(self._clients.values()), {}
        for client in reversed(clients):
            if not isinstance(client, NodeError):
                client.close()
