"""One error hierarchy; each error carries the exit code the CLI maps it to."""

from __future__ import annotations

import enum
import os


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
    say(f"deployctl: internal error: {type(exc).__name__}: {exc}")
    return ExitCode.FAILED
