"""The field checks that the inventory and the playbook share: names, users, hosts, ports and paths.

Each check is a schema Check, `(value, path) -> value`, raising schema.Invalid with the expected form.
"""

from __future__ import annotations

import ipaddress
import posixpath
import re
from typing import Any

from deployctl.config.schema import CONTROL_RE, Invalid, integer, string

NAME_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")
USER_RE = re.compile(r"[a-z_][a-z0-9_-]{0,31}")
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOSTNAME_RE = re.compile(rf"(?=.{{1,253}}\Z){_LABEL}(?:\.{_LABEL})*")
_ROOT_RE = re.compile(r"/[A-Za-z0-9._/-]*")
_URL_PATH_RE = re.compile(r"/[A-Za-z0-9._~/%-]*")


def is_host(text: str) -> bool:
    # All-numeric dotted text must be a real IPv4 address, not a hostname; no IPv6 zone ids ("%eth0").
    if re.fullmatch(r"[0-9.]+", text) or (":" in text and re.fullmatch(r"[0-9A-Fa-f:.]+", text)):
        try:
            return bool(ipaddress.ip_address(text))
        except ValueError:
            return False
    return bool(_HOSTNAME_RE.fullmatch(text))


def is_root(text: str) -> bool:
    return (bool(_ROOT_RE.fullmatch(text)) and text != "/" and posixpath.normpath(text) == text
            and ".." not in text.split("/"))


def boolean(value: Any, path: str) -> bool:
    if not isinstance(value, bool):
        raise Invalid(path, "should be true or false")
    return value


NAME = string(NAME_RE.fullmatch, f"a name matching ^{NAME_RE.pattern}$")
USER = string(USER_RE.fullmatch, f"a user name matching ^{USER_RE.pattern}$")
HOST = string(is_host, "a hostname or IP address")
PORT = integer(1, 65535)
INSTALL_ROOT = string(is_root, "an absolute normalized path of [A-Za-z0-9._/-]")
HEALTH_PATH = string(_URL_PATH_RE.fullmatch, "a URL path starting with '/'")
SOURCE = string(lambda s: s and not CONTROL_RE.search(s), "a folder path")

IDENTITY = string(lambda s: s.strip() and not CONTROL_RE.search(s), "a key file path")
BECOME = string(lambda s: s == "sudo", "'sudo'")
