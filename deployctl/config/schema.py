"""Strict YAML: a loader that refuses duplicate keys and empty files, and small checks for a schema.

A check takes (value, path) and returns the value to keep, or raises Invalid naming the path; the
loaders (config/inventory.py, config/playbook.py) turn that into one ConfigError line,
``"<file>: <path>: <problem>"``.
"""

from __future__ import annotations

import math
import os
import re
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from deployctl.errors import ConfigError, describe_os_error, file_kind

CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")


class Invalid(Exception):
    """A schema violation at a path; load_* turns it into a ConfigError naming the file."""

    def __init__(self, path: str, problem: str):
        super().__init__(problem)
        self.path, self.problem = path, problem


def message(label: str, path: str, problem: str) -> str:
    return f"{label}: {path}: {problem}" if path else f"{label}: {problem}"


def show(value: Any) -> str:
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
                    raise ConfigError(message(self.label, path, f"duplicate key {show(key)} (line {line})"))
                keys.add(key)
                self._check_keys(value_node, f"{path}/{key}" if path else str(key), seen)


def read_regular(path: Path, error: type[Exception] = ConfigError, limit: int | None = None) -> bytes:
    """Return the bytes of the regular file at `path` (at most `limit` + 1 of them, so a caller can tell
    it is too big); `error` naming the path, in one line, if it cannot be read or is not a regular file.

    A FIFO or a device is refused before it is opened, and the file is opened with O_NONBLOCK (and
    checked again once open, in case it was swapped meanwhile), so no input ever blocks the command."""
    try:
        mode = os.stat(path).st_mode
        if stat.S_ISREG(mode):
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0))
            try:
                mode = os.fstat(fd).st_mode
                if stat.S_ISREG(mode):
                    os.set_blocking(fd, True)
                    with os.fdopen(fd, "rb", closefd=False) as f:
                        return f.read(-1 if limit is None else limit + 1)
            finally:
                os.close(fd)
    except OSError as exc:
        raise error(f"{path}: cannot read ({describe_os_error(exc)})") from None
    raise error(f"{path}: {file_kind(mode)}, not a regular file")


def load_yaml(path: Path) -> Any:
    """Parse one YAML file strictly; ConfigError (one line, with file and line) on any problem."""
    path = Path(path)
    label = path.name
    try:
        text = read_regular(path).decode("utf-8")
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


# A check takes (value, path) and returns the value to keep, or raises Invalid.
Check = Callable[[Any, str], Any]
Field = tuple[Check, bool, Any]  # (check, required, default used as-is when absent)


def mapping(fields: dict[str, Field], build: Callable[..., Any] | None = None) -> Check:
    def check(value: Any, path: str) -> Any:
        if not isinstance(value, dict):
            raise Invalid(path, "should be a mapping")
        for key in value:
            if key not in fields:
                raise Invalid(path, f"unknown key {show(key)}")
        out = {}
        for key, (sub, required, default) in fields.items():
            where = f"{path}/{key}" if path else key
            if key in value:
                out[key] = sub(value[key], where)
            elif required:
                raise Invalid(where, "missing")
            else:
                out[key] = default
        return build(**out) if build else out
    return check


def list_of(item: Check) -> Check:
    def check(value: Any, path: str) -> tuple[Any, ...]:
        if not isinstance(value, list):
            raise Invalid(path, "should be a list")
        if not value:
            raise Invalid(path, "should not be empty")
        return tuple(item(v, f"{path}/{i}") for i, v in enumerate(value))
    return check


def string(valid: Callable[[str], Any] | None = None, expected: str = "") -> Check:
    def check(value: Any, path: str) -> str:
        if not isinstance(value, str):
            raise Invalid(path, "should be a string")
        if valid is not None and not valid(value):
            raise Invalid(path, f"should be {expected}, got {show(value)}")
        return value
    return check


def integer(low: int, high: int | None = None) -> Check:
    def check(value: Any, path: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise Invalid(path, "should be an integer")
        if value < low or (high is not None and value > high):
            raise Invalid(path, f"should be between {low} and {high}" if high is not None
                          else f"should be at least {low}")
        return value
    return check


def seconds(value: Any, path: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise Invalid(path, "should be a number")
    seconds = float(value) if abs(value) < 1e300 else math.inf  # float() of a huge int overflows
    if not math.isfinite(seconds):
        raise Invalid(path, "should be a finite number")
    if seconds <= 0:
        raise Invalid(path, "should be greater than 0")
    return seconds


def argv(value: Any, path: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not value:
        raise Invalid(path, "should be a non-empty list of strings")
    for i, token in enumerate(value):
        if not isinstance(token, str) or not token or CONTROL_RE.search(token):
            raise Invalid(f"{path}/{i}", "should be a non-empty string without control characters")
    return tuple(value)
