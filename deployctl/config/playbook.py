"""The playbook: strict YAML loading of what to deploy and how into frozen dataclasses.

Every problem becomes one ConfigError line, ``"<file>: <path>: <problem>"``, before any node is contacted.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deployctl.config.fields import HEALTH_PATH, INSTALL_ROOT, NAME, PORT, SOURCE, boolean
from deployctl.config.schema import Invalid, argv, integer, list_of, load_yaml, mapping, message, seconds, string
from deployctl.errors import ConfigError


@dataclass(frozen=True)
class Supervisor:
    """A supervisord program, restarted by the node agent through supervisord's unix socket."""
    program: str
    socket: str


@dataclass(frozen=True)
class Service:
    """How the service is restarted and stopped, and where it reports health.

    With `supervisor` set the node agent restarts it over supervisord's socket in
    the same SSH command as the switch; otherwise `restart`/`stop` argv run. `manager` (supervisord or
    systemd) says which service manager `enroll` installs the service under, as `unit`, listening on
    `port`; a node whose login user is not root restarts it with `sudo -n` through that manager.
    """
    restart: tuple[str, ...] | None
    stop: tuple[str, ...] | None
    health_path: str
    supervisor: Supervisor | None = None
    manager: str | None = None
    unit: str | None = None
    port: int = 8080

    @property
    def manager_name(self) -> str:
        """The service manager: as the playbook says, else supervisord."""
        return self.manager or "supervisord"

    @property
    def unit_name(self) -> str:
        """The supervisord program or systemd unit: `unit`, else the supervisor program, else `router`."""
        return self.unit or (self.supervisor.program if self.supervisor else "router")


@dataclass(frozen=True)
class Timeouts:
    """Seconds allowed to connect, to run one remote command, for a node to turn healthy, and for a
    whole rollout from preflight to open-gate (its revert, once due, is not cut short by it)."""
    connect: float
    command: float
    health: float
    rollout: float = 600.0


@dataclass(frozen=True)
class Playbook:
    """What to deploy (source folder), where (install root), and how to run and check it."""
    name: str
    source: Path
    install_root: str
    keep_releases: int
    service: Service
    timeouts: Timeouts
    min_free_mb: int
    path: Path
    flag_registry: Path | None = None  # playbooks/flags.yaml: every flag the service has ever had
    require_approval: bool = False  # rollout needs a plan approved by a second person (`deployctl approve`)
    approvers: tuple[Approver, ...] = ()
    breakers: Breakers | None = None  # what `deployctl watch` halts the fleet on; None: no breaker


@dataclass(frozen=True)
class Breakers:
    """The playbook's circuit breakers: `deployctl watch` halts the whole fleet when one trips (None: off)."""
    child_orders_per_parent: float | None = None  # a node's child orders per parent order, over one sweep
    child_orders_per_s: float | None = None       # a node's child orders per second
    gate_open_while_mixed: bool = False           # a gate open anywhere while the nodes' digests differ
    errors_per_s: float | None = None             # a node's errors per second
    unreachable_gate_open_s: float | None = None  # a node unreachable this long while its gate was open


@dataclass(frozen=True)
class Approver:
    """Someone whose ed25519 key may approve a rollout plan: a name for the journal, the public key in hex."""
    name: str
    key: str



MANAGERS = ("supervisord", "systemd")
_manager = string(MANAGERS.__contains__, "one of " + ", ".join(MANAGERS))
_SUPERVISOR = mapping({"program": (NAME, True, None),
                        "socket": (INSTALL_ROOT, False, "/var/run/supervisor.sock")}, Supervisor)


def _service(value: Any, path: str) -> Service:
    service = mapping({"restart": (argv, False, None), "stop": (argv, False, None),
                        "health_path": (HEALTH_PATH, True, None), "supervisor": (_SUPERVISOR, False, None),
                        "manager": (_manager, False, None), "unit": (NAME, False, None),
                        "port": (PORT, False, 8080)},
                       Service)(value, path)
    if service.supervisor is None and service.manager is None and (service.restart is None or service.stop is None):
        raise Invalid(path, "needs `supervisor`, `manager`, or both `restart` and `stop`")
    if service.manager == "systemd" and service.supervisor is not None:
        raise Invalid(f"{path}/supervisor", "only for manager supervisord")
    if service.supervisor and service.unit and service.unit != service.supervisor.program:
        raise Invalid(f"{path}/unit", f"should be the supervisor program {service.supervisor.program!r}")
    return service


_SERVICE = _service



_APPROVER = mapping({"name": (NAME, True, None),
                      "key": (string(re.compile(r"[0-9a-f]{64}").fullmatch, "an ed25519 public key in 64 lowercase "
                                     "hex digits (the .pub `deployctl keygen` writes)"), True, None)}, Approver)
_TIMEOUTS = mapping({"connect": (seconds, False, 5.0), "command": (seconds, False, 60.0),
                      "health": (seconds, False, 20.0), "rollout": (seconds, False, 600.0)}, Timeouts)
_BREAKERS = mapping({"child_orders_per_parent": (seconds, False, None), "child_orders_per_s": (seconds, False, None),
                     "gate_open_while_mixed": (boolean, False, False), "errors_per_s": (seconds, False, None),
                     "unreachable_gate_open_s": (seconds, False, None)}, Breakers)

_PLAYBOOK = mapping({
    "name": (NAME, True, None), "source": (SOURCE, True, None), "install_root": (INSTALL_ROOT, True, None),
    "keep_releases": (integer(2), True, None), "service": (_SERVICE, True, None),
    "timeouts": (_TIMEOUTS, False, _TIMEOUTS({}, "timeouts")), "min_free_mb": (integer(0), False, 64),
    "flag_registry": (SOURCE, False, None), "require_approval": (boolean, False, False),
    "approvers": (list_of(_APPROVER), False, ()), "breakers": (_BREAKERS, False, None),
})



def load_playbook(path: Path) -> Playbook:
    """Return the validated playbook in `path`, its source resolved against the file's folder; ConfigError otherwise."""
    path = Path(path).absolute()
    raw = load_yaml(path)
    try:
        doc = _PLAYBOOK(raw, "")
        if doc["require_approval"] and not doc["approvers"]:
            raise Invalid("approvers", "missing: require_approval needs at least one approver")
    except Invalid as exc:
        raise ConfigError(message(path.name, exc.path, exc.problem)) from None
    source = (path.parent / doc.pop("source")).resolve()
    registry = doc.pop("flag_registry")
    return Playbook(source=source, path=path, flag_registry=(path.parent / registry).resolve() if registry else None,
                    **doc)

