"""The flag registry: every flag the service has ever had, what it meant, and whether it may still be used.

A flag name is never given a new meaning: a retired name stays in the registry for good, so a
release that uses it again is refused at build time (Knight Capital's Power Peg came back through
a repurposed flag). The registry is strict YAML (playbooks/flags.yaml): duplicate or unknown keys
are errors. Pure: it reads the registry file and decides, nothing else.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deployctl.config.schema import Invalid, load_yaml, mapping, message, show, string
from deployctl.errors import ConfigError, UsageError

FLAG_RE = re.compile(r"[a-z][a-z0-9_]{0,62}")
RELEASE_RE = re.compile(r"[0-9A-Za-z][0-9A-Za-z._+-]{0,63}")  # a release version, as in router.json
STATES = ("active", "retired")


@dataclass(frozen=True)
class Flag:
    """One flag of the registry: its meaning, state, and the releases that introduced and retired it."""

    name: str
    meaning: str
    state: str
    introduced: str
    retired: str | None = None


_release = string(RELEASE_RE.fullmatch, f"a release version matching ^{RELEASE_RE.pattern}$")
_FLAG = mapping({"meaning": (string(lambda s: s.strip(), "a non-empty text"), True, None),
                 "state": (string(lambda s: s in STATES, "active or retired"), True, None),
                 "introduced": (_release, True, None), "retired": (_release, False, None)})


def _flags(value: Any, path: str) -> dict[str, Flag]:
    if not isinstance(value, dict) or not value:
        raise Invalid(path, "should be a non-empty mapping of flag name -> flag")
    out = {}
    for name, spec in value.items():
        if not isinstance(name, str) or not FLAG_RE.fullmatch(name):
            raise Invalid(path, f"flag name {show(name)} should match ^{FLAG_RE.pattern}$")
        doc = _FLAG(spec, f"{path}/{name}")
        if (doc["state"] == "retired") != (doc["retired"] is not None):
            raise Invalid(f"{path}/{name}", "a retired flag needs `retired` (the release that retired it), "
                                            "an active one must not have it")
        out[name] = Flag(name, doc["meaning"].strip(), doc["state"], doc["introduced"], doc["retired"])
    return out


def load(path: Path) -> dict[str, Flag]:
    """Return the registry in `path` as name -> Flag; ConfigError naming file, path and problem otherwise."""
    path = Path(path)
    raw = load_yaml(path)
    try:
        if not isinstance(raw, dict):
            raise Invalid("", "should be a mapping with the key `flags`")
        unknown = sorted(set(raw) - {"flags"}, key=str)
        if unknown:
            raise Invalid("", f"unknown key {show(unknown[0])}")
        if "flags" not in raw:
            raise Invalid("flags", "missing")
        return _flags(raw["flags"], "flags")
    except Invalid as exc:
        raise ConfigError(message(path.name, exc.path, exc.problem)) from None


def check(registry: Mapping[str, Flag], used: Mapping[str, Any], release: str, registry_name: str) -> None:
    """Refuse (UsageError, one line) a release `release` whose flags `used` include a name missing from the
    registry or a retired one; return None when every flag is registered and active."""
    for name in sorted(used):
        flag = registry.get(name)
        if flag is None:
            raise UsageError(f"release {release}: flag {show(name)} is not in the flag registry {registry_name}: "
                             "add it there with its meaning before using it")
        if flag.state == "retired":
            raise UsageError(f"release {release}: flag {name!r} was retired in release {flag.retired} "
                             f"(it meant: {flag.meaning}); a retired flag name is never reused: pick a new name")
