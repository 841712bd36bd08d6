"""Inventory and playbook: strict YAML loading into frozen dataclasses.

Every problem becomes one ConfigError line, ``"<file>: <path>: <problem>"``, before any node is contacted.
"""

from __future__ import annotations

import ipaddress
import math
import posixpath
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import yaml

from deployctl.errors import ConfigError

NAME_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")
USER_RE = re.compile(r"[a-z_][a-z0-9_-]{0,31}")
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOSTNAME_RE = re.compile(rf"(?=.{{1,253}}\Z){_LABEL}(?:\.{_LABEL})*")
_ROOT_RE = re.compile(r"/[A-Za-z0-9._/-]*")
_URL_PATH_RE = re.compile(r"/[A-Za-z0-9._~/%-]*")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True)
class Node:
    """One node: where to reach it over SSH and where its router listens."""
    name: str
    host: str
    ssh_port: int
    router_port: int
    user: str


@dataclass(frozen=True)
class Inventory:
    """The fleet: every node, plus how to connect to them."""
    fleet: str
    nodes: tuple[Node, ...]
    connect_timeout: float
    parallel: int
    path: Path


@dataclass(frozen=True)
class Supervisor:
    """A supervisord program, restarted by the node agent through supervisord's unix socket."""
    program: str
    socket: str


@dataclass(frozen=True)
class Service:
    """How the service is restarted and stopped, and where it reports health.

    With `supervisor` set the node agent restarts it over supervisord's socket in
    the same SSH command as the switch; otherwise `restart`/`stop` argv run.
    """
    restart: tuple[str, ...] | None
    stop: tuple[str, ...] | None
    health_path: str
    supervisor: Supervisor | None = None


@dataclass(frozen=True)
class Timeouts:
    """Seconds allowed to connect, to run one remote command, and for a node to turn healthy."""
    connect: float
    command: float
    health: float


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


class _Invalid(Exception):
    """A schema violation at a path; load_* turns it into a ConfigError naming the file."""

    def __init__(self, path: str, problem: str):
        super().__init__(problem)
        self.path, self.problem = path, problem


def _message(label: str, path: str, problem: str) -> str:
    return f"{label}: {path}: {problem}" if path else f"{label}: {problem}"


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


class StrictLoader(yaml.SafeLoader):
    """A SafeLoader that refuses empty documents and duplicate mapping keys, naming path and line."""

    def __init__(self, stream: str, label: str):
        super().__init__(stream)
        self.label = label

    def get_single_node(self) -> yaml.Node:
        node = super().get_single_node()
        if node is None:
            raise ConfigError(f"{self.label}: file is empty")
        self._check_keys(node, "", set())
        return node

    def _check_keys(self, node: yaml.Node, path: str, seen: set[int]) -> None:
        # PyYAML keeps the last of two equal keys; an edited copy-paste would silently win.
        if id(node) in seen:  # aliases share nodes; also stops recursive anchors
            return
        seen.add(id(node))
        if isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                self._check_keys(item, f"{path}/{i}" if path else str(i), seen)
        elif isinstance(node, yaml.MappingNode):
            keys: set[Any] = set()
            for key_node, value_node in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge" or not isinstance(key_node, yaml.ScalarNode):
                    continue
                key = self.construct_object(key_node, deep=True)
                if key in keys:
                    line = key_node.start_mark.line + 1
                    raise ConfigError(_message(self.label, path, f"duplicate key {_show(key)} (line {line})"))
                keys.add(key)
                self._check_keys(value_node, f"{path}/{key}" if path else str(key), seen)


def _load_yaml(path: Path) -> Any:
    """Parse one YAML file strictly; ConfigError (one line, with file and line) on any problem."""
    path = Path(path)
    label = path.name
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror or exc})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{label}: not valid UTF-8") from None
    try:
        loader = StrictLoader(text, label)
        try:
            return loader.get_single_data()
        finally:
            loader.dispose()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        problem = str(exc.problem or exc.context)
        if problem.startswith("but ") and exc.context:  # PyYAML splits "expected X" / "but found Y"
            problem = f"{exc.context} {problem}"
        where = f"line {mark.line + 1}: " if mark else ""
        raise ConfigError(f"{label}: {where}invalid YAML: {' '.join(problem.split())}") from None
    except yaml.reader.ReaderError as exc:
        raise ConfigError(f"{label}: invalid YAML: character #x{exc.character:04x} at offset {exc.position} "
                          "is not allowed") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{label}: invalid YAML: {' '.join(str(exc).split())}") from None
    except RecursionError:
        raise ConfigError(f"{label}: invalid YAML: nested too deeply") from None


# A check takes (value, path) and returns the value to keep, or raises _Invalid.
Check = Callable[[Any, str], Any]
Field = tuple[Check, bool, Any]  # (check, required, default used as-is when absent)


def _mapping(fields: dict[str, Field], build: Callable[..., Any] | None = None) -> Check:
    def check(value: Any, path: str) -> Any:
        if not isinstance(value, dict):
            raise _Invalid(path, "should be a mapping")
        for key in value:
            if key not in fields:
                raise _Invalid(path, f"unknown key {_show(key)}")
        out = {}
        for key, (sub, required, default) in fields.items():
            where = f"{path}/{key}" if path else key
            if key in value:
                out[key] = sub(value[key], where)
            elif required:
                raise _Invalid(where, "missing")
            else:
                out[key] = default
        return build(**out) if build else out
    return check


def _list_of(item: Check) -> Check:
    def check(value: Any, path: str) -> tuple[Any, ...]:
        if not isinstance(value, list):
            raise _Invalid(path, "should be a list")
        if not value:
            raise _Invalid(path, "should not be empty")
        return tuple(item(v, f"{path}/{i}") for i, v in enumerate(value))
    return check


def _string(valid: Callable[[str], Any] | None = None, expected: str = "") -> Check:
    def check(value: Any, path: str) -> str:
        if not isinstance(value, str):
            raise _Invalid(path, "should be a string")
        if valid is not None and not valid(value):
            raise _Invalid(path, f"should be {expected}, got {_show(value)}")
        return value
    return check


def _integer(low: int, high: int | None = None) -> Check:
    def check(value: Any, path: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _Invalid(path, "should be an integer")
        if value < low or (high is not None and value > high):
            raise _Invalid(path, f"should be between {low} and {high}" if high is not None else f"should be at least {low}")
        return value
    return check


def _seconds(value: Any, path: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _Invalid(path, "should be a number")
    seconds = float(value) if abs(value) < 1e300 else math.inf  # float() of a huge int overflows
    if not math.isfinite(seconds):
        raise _Invalid(path, "should be a finite number")
    if seconds <= 0:
        raise _Invalid(path, "should be greater than 0")
    return seconds


def _argv(value: Any, path: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not value:
        raise _Invalid(path, "should be a non-empty list of strings")
    for i, token in enumerate(value):
        if not isinstance(token, str) or not token or _CONTROL_RE.search(token):
            raise _Invalid(f"{path}/{i}", "should be a non-empty string without control characters")
    return tuple(value)


def _is_host(text: str) -> bool:
    # All-numeric dotted text must be a real IPv4 address, not a hostname; no IPv6 zone ids ("%eth0").
    if re.fullmatch(r"[0-9.]+", text) or (":" in text and re.fullmatch(r"[0-9A-Fa-f:.]+", text)):
        try:
            return bool(ipaddress.ip_address(text))
        except ValueError:
            return False
    return bool(_HOSTNAME_RE.fullmatch(text))


def _is_root(text: str) -> bool:
    return (bool(_ROOT_RE.fullmatch(text)) and text != "/" and posixpath.normpath(text) == text
            and ".." not in text.split("/"))


_name = _string(NAME_RE.fullmatch, f"a name matching ^{NAME_RE.pattern}$")
_user = _string(USER_RE.fullmatch, f"a user name matching ^{USER_RE.pattern}$")
_host = _string(_is_host, "a hostname or IP address")
_port = _integer(1, 65535)
_install_root = _string(_is_root, "an absolute normalized path of [A-Za-z0-9._/-]")
_health_path = _string(_URL_PATH_RE.fullmatch, "a URL path starting with '/'")
_source = _string(lambda s: s and not _CONTROL_RE.search(s), "a folder path")

_SSH = _mapping({"user": (_user, False, "root"), "connect_timeout": (_seconds, False, 5.0),
                 "parallel": (_integer(1, 256), False, 8)})
_NODE = _mapping({"name": (_name, True, None), "host": (_host, True, None), "ssh_port": (_port, False, 22),
                  "router_port": (_port, True, None), "user": (_user, False, None)})  # user None: ssh's user
_INVENTORY = _mapping({"fleet": (_name, True, None), "ssh": (_SSH, False, _SSH({}, "ssh")),
                       "nodes": (_list_of(_NODE), True, None)})
_SUPERVISOR = _mapping({"program": (_name, True, None),
                        "socket": (_install_root, False, "/var/run/supervisor.sock")}, Supervisor)


def _service(value: Any, path: str) -> Service:
    service = _mapping({"restart": (_argv, False, None), "stop": (_argv, False, None),
                        "health_path": (_health_path, True, None), "supervisor": (_SUPERVISOR, False, None)},
                       Service)(value, path)
    if service.supervisor is None and (service.restart is None or service.stop is None):
        raise _Invalid(path, "needs `supervisor`, or both `restart` and `stop`")
    return service


_SERVICE = _service
_TIMEOUTS = _mapping({"connect": (_seconds, False, 5.0), "command": (_seconds, False, 60.0),
                      "health": (_seconds, False, 20.0)}, Timeouts)
_PLAYBOOK = _mapping({
    "name": (_name, True, None), "source": (_source, True, None), "install_root": (_install_root, True, None),
    "keep_releases": (_integer(2), True, None), "service": (_SERVICE, True, None),
    "timeouts": (_TIMEOUTS, False, _TIMEOUTS({}, "timeouts")), "min_free_mb": (_integer(0), False, 64),
})


def _check_unique(nodes: tuple[Node, ...]) -> None:
    names: set[str] = set()
    used: dict[tuple[str, int], str] = {}  # (host, port) -> the field that claimed it first
    for i, node in enumerate(nodes):
        if node.name in names:
            raise _Invalid(f"nodes/{i}/name", f"duplicate node name {node.name!r}")
        names.add(node.name)
        for field in ("ssh_port", "router_port"):
            key = (node.host.lower(), getattr(node, field))
            if key in used:
                host = f"[{node.host}]" if ":" in node.host else node.host
                raise _Invalid(f"nodes/{i}/{field}", f"{host}:{key[1]} is already used by {used[key]}")
            used[key] = f"nodes/{i}/{field}"


def load_inventory(path: Path) -> Inventory:
    """Return the validated inventory in `path`; ConfigError naming file, path and problem otherwise."""
    path = Path(path).absolute()
    raw = _load_yaml(path)
    try:
        doc = _INVENTORY(raw, "")
        ssh = doc["ssh"]
        nodes = tuple(Node(n["name"], n["host"], n["ssh_port"], n["router_port"], n["user"] or ssh["user"])
                      for n in doc["nodes"])
        _check_unique(nodes)
    except _Invalid as exc:
        raise ConfigError(_message(path.name, exc.path, exc.problem)) from None
    return Inventory(doc["fleet"], nodes, ssh["connect_timeout"], ssh["parallel"], path)


def load_playbook(path: Path) -> Playbook:
    """Return the validated playbook in `path`, its source resolved against the file's folder; ConfigError otherwise."""
    path = Path(path).absolute()
    raw = _load_yaml(path)
    try:
        doc = _PLAYBOOK(raw, "")
    except _Invalid as exc:
        raise ConfigError(_message(path.name, exc.path, exc.problem)) from None
    source = (path.parent / doc.pop("source")).resolve()
    return Playbook(source=source, path=path, **doc)
