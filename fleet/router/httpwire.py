"""The router's wire: strict HTTP/1.x framing, strict JSON, and HttpError, how any part of it ends a request.

http.server is not used: importing it (email, http.client, ssl) doubled the router's start-up
CPU, and every node restarts at once on a deploy. HTTP/1.x here is small and strict: one
request per connection, Content-Length bodies only, limits on every line. JSON here (router.json
and request bodies) is strict too: no duplicate keys, no NaN, exact type checks. Every request
ends as an HTTP status and the JSON body `{"error": ..., **extra}`.
"""

import json
import re

REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found", 405: "Method Not Allowed",
           409: "Conflict", 414: "URI Too Long", 431: "Request Header Fields Too Large",
           500: "Internal Server Error", 503: "Service Unavailable", 505: "HTTP Version Not Supported"}
MAX_LINE = 8192
MAX_HEADERS = 64
MAX_BODY = 64 * 1024
DRAIN_LIMIT = 1024 * 1024  # drain bigger bodies no further than this; past it, just close
METHOD_RE = re.compile(r"[A-Z]{1,16}")
HEADER_NAME_RE = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,64}")
FRAMING_HEADERS = ("content-length", "transfer-encoding")  # given twice, they could smuggle a request


class HttpError(Exception):
    """A request ends with this status and `{"error": message, **extra}`."""

    def __init__(self, status, message, extra=None, headers=None):
        super().__init__(message)
        self.status, self.message = status, message
        self.extra, self.headers = extra or {}, headers or {}

    def body(self):
        """Return the JSON body for this error."""
        return {"error": self.message, **self.extra}


class BadRequest(HttpError):
    """The request body is malformed or invalid (400)."""

    def __init__(self, message):
        super().__init__(400, message)


def short(text, limit=40):
    """Return repr(text) cut to limit characters, so client input cannot flood a log line."""
    shown = repr(text)
    return shown if len(shown) <= limit else shown[:limit] + "..."


def is_type(value, kind):
    """Return True if value is of kind; a bool is not an int."""
    return isinstance(value, kind) and not (kind is int and isinstance(value, bool))


def _unique_keys(pairs):
    """object_pairs_hook: build a dict, refusing duplicate keys that json would silently merge."""
    result = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate key {short(key)}")
        result[key] = value
    return result


def _no_constant(name):
    """parse_constant hook: NaN and Infinity are not JSON, whatever Python's json accepts."""
    raise ValueError(f"{name} is not JSON")


def parse_json(raw):
    """Return the value of the UTF-8 JSON text raw; ValueError on bad encoding, syntax, duplicate keys or NaN."""
    try:
        return json.loads(raw.decode("utf-8"), object_pairs_hook=_unique_keys, parse_constant=_no_constant)
    except RecursionError:
        raise ValueError("nested too deeply") from None


class Headers(dict):
    """Request header fields by lower-case name."""

    def get(self, name, default=None):
        return dict.get(self, name.lower(), default)


def read_line(rfile, status, what):
    """Return one line of rfile without its line end; HttpError status if too long, 400 if cut short."""
    line = rfile.readline(MAX_LINE + 1)
    if len(line) > MAX_LINE:
        raise HttpError(status, f"{what} longer than {MAX_LINE} bytes")
    if line and not line.endswith(b"\n"):
        raise HttpError(400, f"{what} cut short")
    return line.decode("latin-1").rstrip("\r\n")


def read_request_line(rfile):
    """Return (method, target, version) from the request line, None on a silent close; HttpError if malformed."""
    text = read_line(rfile, 414, "request line")
    if not text:
        return None
    parts = text.split(" ")
    if len(parts) != 3 or not METHOD_RE.fullmatch(parts[0]) or not parts[1].startswith("/"):
        raise HttpError(400, f"bad request line {text[:60]!r}")
    if parts[2] not in ("HTTP/1.0", "HTTP/1.1"):
        raise HttpError(505 if parts[2].startswith("HTTP/") else 400, f"unsupported version {parts[2][:20]!r}")
    return tuple(parts)


def read_headers(rfile, single=()):
    """Return the header fields up to the blank line as Headers; HttpError if malformed or too many.

    The framing headers and those named (lower case) in single may not be given twice.
    """
    headers = Headers()
    for _ in range(MAX_HEADERS + 1):
        line = read_line(rfile, 431, "header field")
        if not line:
            return headers
        name, colon, value = line.partition(":")
        if not colon or not HEADER_NAME_RE.fullmatch(name):
            raise HttpError(400, "bad header field")  # not echoed: it may hold a mistyped token
        key = name.lower()
        if key in headers and (key in FRAMING_HEADERS or key in single):
            raise HttpError(400, f"header {name} given twice")
        headers.setdefault(key, value.strip(" \t"))
    raise HttpError(431, f"more than {MAX_HEADERS} header fields")


def read_body(rfile, headers):
    """Read the body; return (bytes, None) or (None, reason it is unacceptable).

    An over-large body is drained up to DRAIN_LIMIT first: closing a socket with unread
    data resets it, and the client would lose the 400.
    """
    if headers.get("Transfer-Encoding"):
        return None, "body: send Content-Length; chunked bodies are not accepted"
    text = (headers.get("Content-Length") or "0").strip()
    if not re.fullmatch(r"[0-9]{1,15}", text):
        return None, "body: bad Content-Length"
    length = int(text)
    if length <= MAX_BODY:
        return rfile.read(length), None
    left = min(length, DRAIN_LIMIT)
    while left > 0:
        chunk = rfile.read(min(left, 1 << 16))
        if not chunk:
            break
        left -= len(chunk)
    return None, f"body: larger than {MAX_BODY} bytes"


def json_answer(status, body, headers=None, with_body=True, keep_alive=False):
    """Return the bytes of a whole answer: status line, fields, and body as JSON (ValueError for NaN)."""
    data = (json.dumps(body, allow_nan=False) + "\n").encode("utf-8")
    head = [f"HTTP/1.1 {status} {REASONS.get(status, 'Error')}", "Server: order-router",
            "Content-Type: application/json", f"Content-Length: {len(data)}",
            "Connection: keep-alive" if keep_alive else "Connection: close"]
    head += [f"{name}: {value}" for name, value in (headers or {}).items()]
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + (data if with_body else b"")


def request_path(target):
    """The path of a request target: without its query or fragment."""
    return target.split("?", 1)[0].split("#", 1)[0]
