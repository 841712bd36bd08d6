"""One error hierarchy; each error carries the exit code the CLI maps it to. And how a failure reads:
an OS error in words (never a class name), a path that cannot be used, many nodes in one grouped line."""

from __future__ import annotations

import enum
import errno
import os
import re
import socket
import stat
from collections.abc import Iterable


class ExitCode(enum.IntEnum):
    """Documented process exit codes; CI pipelines branch on these."""

    OK = 0
    FAILED = 1          # an operation failed; the message says which node and phase
    USAGE = 2           # bad arguments or bad input (inventory, playbook, artifact); nothing changed
    MISMATCH = 3        # verify: a node's disk or running digest differs from the expected one
    UNREACHABLE = 4     # a node could not be reached (and nothing else was wrong)
    LOCKED = 5          # the fleet deploy lock is held by someone else (or is stale)
    ROLLED_BACK = 6     # rollout failed; the whole fleet is back on the previous release, gate closed
    HALTED = 7          # the fleet is halted; the command refuses until `deployctl resume`
    NO_DOCKER = 8       # no Docker engine reachable (fleet commands)
    INCONSISTENT = 9    # the fleet could not be brought to one release; run `deployctl recover`
    HOST_KEY = 10       # a node presented a host key other than the pinned one


class DeployctlError(Exception):
    """Base of every error deployctl raises on purpose."""

    exit_code = ExitCode.FAILED

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class UsageError(DeployctlError):
    """Bad arguments or input (inventory, playbook, artifact, CLI)."""

    exit_code = ExitCode.USAGE


class ConfigError(UsageError):
    """An inventory or playbook file is missing, malformed or invalid."""


class ArtifactError(UsageError):
    """An artifact is malformed, unsafe, unsigned or tampered with."""


class MismatchError(DeployctlError):
    """Nodes disagree with the expected release."""

    exit_code = ExitCode.MISMATCH


class UnreachableError(DeployctlError):
    """One or more nodes could not be reached."""

    exit_code = ExitCode.UNREACHABLE

    def __init__(self, message: str, nodes: dict[str, str] | None = None):
        super().__init__(message)
        self.nodes = dict(nodes or {})  # node -> its own reason (the message groups them)


class HostKeyError(DeployctlError):
    """A node presented a host key that is not the pinned one."""

    exit_code = ExitCode.HOST_KEY


class LockHeldError(DeployctlError):
    """The fleet deploy lock is held."""

    exit_code = ExitCode.LOCKED


class RolledBackError(DeployctlError):
    """A rollout failed and the fleet was returned to the previous release."""

    exit_code = ExitCode.ROLLED_BACK


class HaltedError(DeployctlError):
    """The fleet is halted."""

    exit_code = ExitCode.HALTED


class JournalError(DeployctlError):
    """The controller's journal cannot be written (disk full, short write, I/O error)."""


class InconsistentError(DeployctlError):
    """The fleet could not be brought back to one release."""

    exit_code = ExitCode.INCONSISTENT


class DockerUnavailableError(DeployctlError):
    """No Docker engine could be reached."""

    exit_code = ExitCode.NO_DOCKER


# What a network OSError means, in the words a person reads (never a Python class name); a file error
# reads as its strerror ("No such file or directory", "Permission denied").
_ERRNO_WORDS = {
    errno.ECONNREFUSED: "connection refused", errno.ECONNRESET: "connection reset", errno.ETIMEDOUT: "timed out",
    errno.EHOSTUNREACH: "no route to host", errno.ENETUNREACH: "network unreachable", errno.EPIPE: "connection closed",
}


def describe_os_error(exc: BaseException) -> str:
    """Return what an OSError (or EOFError) means in a few words, without its class name: "connection
    refused", "timed out", "host name not resolved", else its strerror ("Not a directory") or message."""
    if isinstance(exc, socket.gaierror):
        return "host name not resolved"
    if isinstance(exc, TimeoutError):  # socket.timeout too
        return "timed out"
    if isinstance(exc, EOFError):
        return "connection closed"
    inner = getattr(exc, "errors", None)  # paramiko's NoValidConnectionsError: {address: OSError}
    if isinstance(inner, dict) and inner:
        return describe_os_error(next(iter(inner.values())))
    number = getattr(exc, "errno", None)
    if number in _ERRNO_WORDS:
        return _ERRNO_WORDS[number]
    return " ".join(str(getattr(exc, "strerror", None) or exc).split()) or "failed without a reason given"


def check_folder(path: os.PathLike | str, what: str) -> None:
    """Return if `path` is a folder or can be made one (its nearest existing parent is a folder);
    UsageError naming `what` and the path otherwise: "--out /tmp/f: a file, not a folder", "--out /tmp/f/x:
    /tmp/f is a file, not a folder"."""
    given = os.path.abspath(path)
    here = given
    while True:
        try:
            mode = os.stat(here).st_mode
        except (FileNotFoundError, NotADirectoryError):  # not there (yet), or below a file: look further up
            parent = os.path.dirname(here)
            if parent == here:
                return
            here = parent
            continue
        except OSError as exc:
            raise UsageError(f"{what} {path}: cannot use {here} ({describe_os_error(exc)})") from None
        if not stat.S_ISDIR(mode):
            where = "" if here == given else f"{here} is "
            raise UsageError(f"{what} {path}: {where}{file_kind(mode)}, not a folder")
        return


def file_kind(mode: int) -> str:
    """Name what a stat mode is, as a message says it: "a file", "a folder", "a FIFO", "a device"."""
    if stat.S_ISREG(mode):
        return "a file"
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "not a file"


# "at 127.0.0.1:2203", "at [::1]:22": where a node was tried, which differs per node and so is left out of a group
_ADDRESS = re.compile(r" at (?:\[[^\]]*\]|[\w.-]+):\d+\b")


def grouped(reasons: dict[str, str], total: int, word: str = "unreachable") -> str:
    """Return one line for the nodes that failed, grouped by their reason without the address:
    "3 of 8 unreachable (connection refused): node1-node3", or with several reasons
    "3 of 8 unreachable: node1-node2 (connection refused); node5 (timed out)"."""
    groups: dict[str, list[str]] = {}
    for node, reason in reasons.items():
        kind = _ADDRESS.sub("", reason)
        kind = kind[len("unreachable: "):] if kind.startswith("unreachable: ") else kind
        groups.setdefault(kind, []).append(node)
    head = f"{len(reasons)} of {total} {word}"
    if len(groups) == 1:
        ((kind, names),) = groups.items()
        return f"{head} ({kind}): {name_ranges(names)}"
    parts = sorted((name_ranges(names), kind) for kind, names in groups.items())
    return f"{head}: " + "; ".join(f"{names} ({kind})" for names, kind in parts)


def name_ranges(names: Iterable[str]) -> str:
    """Return node names in natural order, runs of numbered names as ranges: "node1-node4, node6, web"."""
    def key(name: str) -> tuple[str, int, str]:
        m = re.fullmatch(r"(.*?)(\d+)", name)
        return (m.group(1), int(m.group(2)), name) if m else (name, -1, name)

    out: list[list[tuple[str, int, str]]] = []
    for k in sorted(map(key, set(names))):
        last = out[-1][-1] if out else None
        if last is not None and k[1] >= 0 and last[0] == k[0] and last[1] == k[1] - 1:
            out[-1].append(k)
        else:
            out.append([k])
    return ", ".join(run[0][2] if len(run) == 1 else f"{run[0][2]}-{run[-1][2]}" for run in out)


def report(exc: BaseException, say) -> int:
    """Say in one line (`say(text)`, to stderr) how a command ended with `exc` and return its exit code:
    never a traceback; DEPLOYCTL_DEBUG re-raises an unexpected exception. Shared by cli and quick."""
    if isinstance(exc, DeployctlError):
        say(f"deployctl: error: {exc}")
        return int(exc.exit_code)
    if isinstance(exc, KeyboardInterrupt):
        say("deployctl: interrupted")
        return 130
    if os.environ.get("DEPLOYCTL_DEBUG"):
        raise exc
    if isinstance(exc, OSError) and exc.filename:  # a path the checks before it missed: still one plain line
        say(f"deployctl: error: {exc.filename}: {describe_os_error(exc)}")
        return ExitCode.FAILED
    say(f"deployctl: internal error: {type(exc).__name__}: {exc}")
    return ExitCode.FAILED
