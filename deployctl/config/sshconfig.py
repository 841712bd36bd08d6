"""OpenSSH client configuration, read as `ssh` reads it: Host blocks, first value wins, and ProxyJump specs.

Pure (standard library only): config/inventory.py resolves each node through it while loading the inventory,
before any connection, so paramiko stays out of start-up. paramiko.SSHConfig was checked and not
used: it matches Host patterns case-sensitively (OpenSSH does not), does not follow Include (the
line becomes an option of the Host block above it), and needs invoke for Match. Here Match is
refused with its line (except `Match all`), Include is followed, and only the options deployctl
uses are read: HostName, Port, User, IdentityFile, ProxyJump.
"""

from __future__ import annotations

import fnmatch
import os
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

from deployctl.config.schema import read_regular

USED = ("hostname", "port", "user", "identityfile", "proxyjump")
_JUMP_RE = re.compile(r"(?:(?P<user>[^@\s:\[\],]+)@)?(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<host>[^@\s:\[\],]+))"
                      r"(?::(?P<port>[0-9]{1,5}))?")


class SSHConfigError(Exception):
    """A line of an ssh config file deployctl cannot read as OpenSSH would; config/inventory.py names the file."""


@dataclass(frozen=True)
class Jump:
    """One bastion hop: where to connect, as whom, with which key (None: the controller's key)."""

    host: str
    port: int = 22
    user: str | None = None
    identity_file: str | None = None

    def label(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.user + '@' if self.user else ''}{host}:{self.port}"


def parse_jump(text: str) -> tuple[tuple[str | None, str, int | None], ...]:
    """Return the hops of a ProxyJump value, `[user@]host[:port]` (or `ssh://` form), comma-separated, as
    (user, host, port); () for `none`. ValueError if a hop is malformed or a port is outside 1..65535."""
    if text.strip().lower() == "none":
        return ()
    hops = []
    for part in text.split(","):
        part = part.strip()
        part = part[len("ssh://"):] if part.startswith("ssh://") else part
        m = _JUMP_RE.fullmatch(part)
        if not m or (m["port"] and not 1 <= int(m["port"]) <= 65535):
            raise ValueError(part)
        hops.append((m["user"], m["v6"] or m["host"], int(m["port"]) if m["port"] else None))
    return tuple(hops)


def _split(line: str) -> tuple[str, list[str]] | None:
    """Return (lowercased keyword, arguments) of one config line, or None for a blank or comment line."""
    line = line.strip()
    if not line or line.startswith("#"):
        return None
    m = re.match(r"([A-Za-z]+)\s*(?:=\s*|\s+)(.*)", line)
    if not m:
        raise SSHConfigError(f"cannot read {line[:40]!r}")
    try:
        args = shlex.split(m[2], comments=True)
    except ValueError as exc:
        raise SSHConfigError(f"{m[1]}: {exc}") from None
    return m[1].lower(), args


def _matches(patterns: list[str], host: str) -> bool:
    """OpenSSH's Host matching: any positive pattern matches, no negated one does; case-insensitive."""
    host, hit = host.lower(), False
    for pattern in patterns:
        negated = pattern.startswith("!")
        if fnmatch.fnmatchcase(host, pattern.lstrip("!").lower()):
            if negated:
                return False
            hit = True
    return hit


def lookup(path: Path, host: str) -> dict[str, list[str]]:
    """Return the options deployctl uses that `path` sets for `host`: first value wins, except IdentityFile,
    which collects every value in order. SSHConfigError (with file and line) on what cannot be read;
    a missing file sets nothing, as for ssh."""
    found: dict[str, list[str]] = {}
    _read(Path(path).expanduser(), host, found, True, 0)
    return found


def _read(path: Path, host: str, found: dict[str, list[str]], active: bool, depth: int) -> bool:
    if depth > 16:
        raise SSHConfigError(f"{path}: Include nested too deeply")
    if not path.exists():
        return active
    try:
        lines = read_regular(path, SSHConfigError).decode("utf-8").splitlines()  # never a FIFO: it would hang
    except UnicodeDecodeError as exc:
        raise SSHConfigError(f"{path}: cannot read ({exc})") from None
    for number, raw in enumerate(lines, 1):
        try:
            parsed = _split(raw)
            if parsed is None:
                continue
            key, args = parsed
            if key == "host":
                active = _matches(args, host)
            elif key == "match":
                if [a.lower() for a in args] != ["all"]:
                    raise SSHConfigError("Match is not supported (only `Match all`)")
                active = True
            elif key == "include" and active:
                import glob  # here: every command loads the inventory, few configs include files

                for arg in args:
                    base = Path(os.path.expanduser(arg))
                    base = base if base.is_absolute() else Path.home() / ".ssh" / base
                    for name in sorted(glob.glob(str(base))):
                        _read(Path(name), host, found, True, depth + 1)
            elif key in USED and active:
                if not args:
                    raise SSHConfigError(f"{key}: missing value")
                if key == "identityfile":
                    found.setdefault(key, []).append(args[0])
                else:
                    found.setdefault(key, [args[0]])
        except SSHConfigError as exc:
            if str(exc).startswith(f"{path}:"):
                raise
            raise SSHConfigError(f"{path}: line {number}: {exc}") from None
    return active


def expand(value: str, host: str, user: str | None, original: str) -> str:
    """Expand `~` and the tokens %d %h %n %r %u %% of an IdentityFile or HostName value, as ssh does;
    SSHConfigError on another token."""
    def token(m: re.Match) -> str:
        import getpass  # here: termios and pwd, for %u alone

        table = {"%": "%", "d": str(Path.home()), "h": host, "n": original, "r": user or "",
                 "u": getpass.getuser()}
        if m[1] not in table:
            raise SSHConfigError(f"token %{m[1]} is not supported in {value!r}")
        return table[m[1]]

    return os.path.expanduser(re.sub(r"%(.)", token, value))
