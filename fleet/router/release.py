"""What this release is: router.json (its schema, the known flags, strict loading) and its digest.

An unknown flag is an error, never ignored: a repurposed flag is how Knight Capital's Power Peg
came back. The release digest (docs/node-layout.md) is what the router reports as its running
digest; it covers every regular file under the folder, subfolders included, so every module of
the router is part of it; nothing may be written into a release folder (see router.py on bytecode).
"""

import hashlib
import os
import stat

from httpwire import is_type, parse_json, short

CONFIG_NAME = "router.json"
CONFIG_TYPES = {"service": str, "version": str, "max_child_qty": int, "max_order_qty": int, "flags": dict}
# Optional keys. max_child_orders_per_s is the router's own breaker: above it (child orders in the last
# second) the router halts itself, so one runaway node stops even when no `deployctl watch` runs.
OPTIONAL_TYPES = {"max_child_orders_per_s": int}
KNOWN_FLAGS = ("price_improvement", "log_orders")
TYPE_NAMES = {str: "a string", int: "an integer", dict: "an object", bool: "a boolean"}


class ConfigError(Exception):
    """router.json is unreadable or invalid; the message is one line."""


def _validate_flags(flags):
    """Raise ConfigError unless flags holds exactly the known flags, each a boolean."""
    for name in flags:
        if name not in KNOWN_FLAGS:
            # Never ignore or repurpose an unknown flag: that is how Power Peg came back.
            raise ConfigError(f"unknown flag {name!r} in {CONFIG_NAME}")
    for name in KNOWN_FLAGS:
        if name not in flags:
            raise ConfigError(f"{CONFIG_NAME}: flags: missing flag {name!r}")
        if not isinstance(flags[name], bool):
            raise ConfigError(f"{CONFIG_NAME}: flags/{name}: should be a boolean")


def validate_config(data):
    """Return data if it is a valid router.json value; raise ConfigError naming the first problem."""
    if not isinstance(data, dict):
        raise ConfigError(f"{CONFIG_NAME}: should be an object")
    for key in data:
        if key not in CONFIG_TYPES and key not in OPTIONAL_TYPES:
            raise ConfigError(f"{CONFIG_NAME}: unknown key {short(key)}")
    for key, kind in CONFIG_TYPES.items():
        if key not in data:
            raise ConfigError(f"{CONFIG_NAME}: missing key {key!r}")
        if not is_type(data[key], kind):
            raise ConfigError(f"{CONFIG_NAME}: {key}: should be {TYPE_NAMES[kind]}")
    for key, kind in OPTIONAL_TYPES.items():
        if key in data and not is_type(data[key], kind):
            raise ConfigError(f"{CONFIG_NAME}: {key}: should be {TYPE_NAMES[kind]}")
    _validate_flags(data["flags"])
    for key in ("service", "version"):
        if not data[key]:
            raise ConfigError(f"{CONFIG_NAME}: {key}: should not be empty")
    for key in ("max_child_qty", "max_order_qty", *OPTIONAL_TYPES):
        if data.get(key, 1) < 1:
            raise ConfigError(f"{CONFIG_NAME}: {key}: should be at least 1")
    return data


def load_config(path):
    """Return the validated config in the file at path; ConfigError if unreadable or invalid."""
    try:
        with open(path, "rb") as handle:
            raw = handle.read()
    except OSError as error:
        raise ConfigError(f"cannot read {CONFIG_NAME}: {error.strerror}") from None
    try:
        data = parse_json(raw)
    except ValueError as error:
        raise ConfigError(f"{CONFIG_NAME}: invalid JSON: {error}") from None
    return validate_config(data)


def file_sha256(path):
    """Return the lowercase hex sha256 of the file at path; OSError if unreadable."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 16), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _raise(error):
    """os.walk onerror hook: fail instead of skipping what cannot be listed."""
    raise error


def release_files(folder):
    """Return the relative POSIX paths of every regular file under folder, sorted by their UTF-8 bytes.

    Symlinks are not regular files and are skipped; an unreadable directory raises OSError
    rather than silently changing the digest.
    """
    found = []
    for root, _dirs, names in os.walk(folder, onerror=_raise):
        for name in names:
            full = os.path.join(root, name)
            if stat.S_ISREG(os.lstat(full).st_mode):
                found.append(os.path.relpath(full, folder).replace(os.sep, "/"))
    return sorted(found, key=lambda path: path.encode("utf-8", "surrogateescape"))


def release_digest(folder):
    """Return the release digest of folder: sha256 of the `sha256sum` text of its files (docs/node-layout.md)."""
    lines = "".join(f"{file_sha256(os.path.join(folder, path))}  {path}\n" for path in release_files(folder))
    return hashlib.sha256(lines.encode("utf-8", "surrogateescape")).hexdigest()
