"""The grammar of node answers that commands.py's parsers share: a JSON object on the first line,
"key value" lines, yes/no flags, release names; and a router's JSON answer (router_doc). Anything else is a
NodeAnswerError naming the answer.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from typing import TypeVar

from deployctl.errors import DeployctlError

T = TypeVar("T")
HEX64 = re.compile(r"[0-9a-f]{64}\Z")  # use with .match: \Z, unlike $, refuses a trailing newline
MAX_REASON = 500  # characters of a node's own words kept in an error message or a journal record


class NodeAnswerError(DeployctlError):
    """A node's answer could not be understood."""


def clip(text: str, limit: int = MAX_REASON) -> str:
    """Return a node's `text` fit for one line of a message or a journal record: whitespace shown as a
    space, other control characters (a terminal's escapes) as "?", and past `limit` characters a
    marker saying how many more there were."""
    line = "".join(c if c.isprintable() else " " if c.isspace() else "?" for c in text[:limit])
    return line if len(text) <= limit else f"{line}... [clipped, {len(text)} characters in all]"


def json_doc(stdout: bytes, what: str) -> dict:
    """Return the JSON object on the answer's first line; NodeAnswerError naming `what` otherwise."""
    try:
        doc = json.loads(stdout.decode().strip().splitlines()[0])
    except (UnicodeDecodeError, ValueError, IndexError, RecursionError):
        raise NodeAnswerError(f"{what}: unreadable answer {stdout[:80]!r}") from None
    if not isinstance(doc, dict):
        raise NodeAnswerError(f"{what}: answer is not an object")
    return doc


# What deployctl reads in a router's JSON answer (GET /health, a control answer, a refusal), and the
# type each field must have when present; any other field is kept as it came. A field of another type
# makes the whole answer unreadable: a reader never meets a list where it expects a digest.
_NUMBER = (int, float)
ROUTER_FIELDS: dict[str, type | tuple[type, ...]] = {
    "digest": str, "gate": str, "halted": bool, "version": str, "service": str, "error": str, "nonce": str,
    "now": str, "proof": str, "pid": int, "flags": dict, "breaker": dict, "orders": _NUMBER,
    "child_orders": _NUMBER, "rejected": _NUMBER, "errors": _NUMBER, "max_children_per_order": _NUMBER}


def router_doc(data: bytes, what: str) -> dict:
    """Return a router's JSON answer body as a dict whose known fields (ROUTER_FIELDS) have their types,
    flags map names to booleans and numbers are finite; NodeAnswerError naming `what` otherwise."""
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError; so is a 5000-digit number
        raise NodeAnswerError(f"{what}: answer is not JSON") from None
    if not isinstance(doc, dict):
        raise NodeAnswerError(f"{what}: answer is not a JSON object")
    for key, kind in ROUTER_FIELDS.items():
        if key in doc and not _typed(doc[key], kind):
            raise NodeAnswerError(f"{what}: answer field {key!r} of the wrong type")
    flags = doc.get("flags", {})
    if not all(isinstance(k, str) and isinstance(v, bool) for k, v in flags.items()):
        raise NodeAnswerError(f"{what}: answer field 'flags' should map names to true or false")
    return doc


def _typed(value, kind) -> bool:
    """Whether `value` is a `kind` (a bool only if `kind` is bool), a finite number, text without lone surrogates."""
    if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
        return False
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, str):
        try:
            value.encode()
        except UnicodeEncodeError:
            return False
    return True


def each_node(parse: Callable[[bytes], T], answers: dict[str, bytes], what: str) -> dict[str, T]:
    """Return node -> parse(its answer); NodeAnswerError naming `what` and every node whose answer is bad."""
    out, bad = {}, []
    for node, data in answers.items():
        try:
            out[node] = parse(data)
        except NodeAnswerError as exc:
            bad.append(f"{node}: {exc}")
    if bad:
        raise NodeAnswerError(f"{what}: bad answer from " + "; ".join(sorted(bad)))
    return out


def field(doc: dict, key: str, kind, what: str):
    """Return doc[key] if it is a `kind` (an int is never a bool); NodeAnswerError otherwise."""
    value = doc.get(key)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise NodeAnswerError(f"{what}: answer field {key!r} missing or of the wrong type")
    return value


def optional_str(doc: dict, key: str, what: str) -> str | None:
    """Return doc[key], a str or None; NodeAnswerError for anything else."""
    value = doc.get(key)
    if value is not None and not isinstance(value, str):
        raise NodeAnswerError(f"{what}: answer field {key!r} of the wrong type")
    return value


def kv_lines(stdout: bytes, what: str) -> list[tuple[str, str]]:
    """Split "key value" lines; NodeAnswerError for anything else."""
    try:
        text = stdout.decode()
    except UnicodeDecodeError:
        raise NodeAnswerError(f"{what}: answer is not UTF-8") from None
    out = []
    for line in text.splitlines():
        key, sep, value = line.partition(" ")
        if not sep:
            raise NodeAnswerError(f"{what}: unreadable line {line[:60]!r}")
        out.append((key, value))
    return out


def one(pairs: list[tuple[str, str]], key: str, what: str) -> str:
    """Return the value of the one `key` line; NodeAnswerError for none or several."""
    values = [v for k, v in pairs if k == key]
    if len(values) != 1:
        raise NodeAnswerError(f"{what}: answer should have one {key!r} line")
    return values[0]


def release_name(link: str) -> str | None:
    """`current`'s target as a release name: None when absent, "?target" when not a release."""
    if not link:
        return None
    name = link.rstrip("/").rsplit("/", 1)[-1]
    return name if HEX64.match(name) else "?" + link


def flag(pairs: list[tuple[str, str]], key: str, what: str) -> bool:
    """Return the one `key` line's yes or no as a bool; NodeAnswerError for anything else."""
    value = one(pairs, key, what)
    if value not in ("yes", "no"):
        raise NodeAnswerError(f"{what}: {key} should be yes or no")
    return value == "yes"
