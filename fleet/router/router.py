#!/usr/bin/env python3
"""order-router: a small simulated order router (one file, standard library only).

It splits parent orders into child orders, sends them to an in-process
simulated venue, and never routes more than a parent's quantity. Orders flow
only while the gate is open. The gate opens only for the digest of the release
folder this file runs from (docs/node-layout.md), and a halt file in the state
dir keeps it shut across restarts.
"""

import sys

# A __pycache__ in the release folder would change its digest, so never write
# bytecode, even when started without -B.
sys.dont_write_bytecode = True

import hashlib  # noqa: E402
import hmac  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import re  # noqa: E402
import signal  # noqa: E402
import socketserver  # noqa: E402
import stat  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402

CONFIG_NAME = "router.json"
CONFIG_TYPES = {"service": str, "version": str, "max_child_qty": int, "max_order_qty": int, "flags": dict}
KNOWN_FLAGS = ("price_improvement", "log_orders")
ORDER_FIELDS = ("id", "symbol", "side", "quantity", "limit_price")
ID_RE = re.compile(r"[A-Za-z0-9._:-]{1,64}")
SYMBOL_RE = re.compile(r"[A-Z0-9.]{1,12}")
MAX_PRICE = 1e9
MAX_BODY = 64 * 1024
DRAIN_LIMIT = 1024 * 1024  # drain bigger bodies no further than this; past it, just close
TOKEN_HEADER = "X-Deployctl-Token"
ACTOR_HEADER = "X-Deployctl-Actor"  # who asked, for the node journal (not trusted for anything else)
ACTOR_RE = re.compile(r"[A-Za-z0-9._@-]{1,128}")
PRICE_TICK = 0.01
TYPE_NAMES = {str: "a string", int: "an integer", dict: "an object", bool: "a boolean"}

_log_lock = threading.Lock()


def log(message):
    """Write one `router: ...` line to stderr; the lock keeps lines from concurrent threads whole."""
    with _log_lock:
        sys.stderr.write(f"router: {message}\n")
        sys.stderr.flush()


class ConfigError(Exception):
    """router.json is unreadable or invalid; the message is one line."""


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


# ---------------------------------------------------------------- release digest

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


# ---------------------------------------------------------------- JSON and config

def _unique_keys(pairs):
    """object_pairs_hook: build a dict, refusing duplicate keys that json would silently merge."""
    result = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate key {_short(key)}")
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


def _short(text, limit=40):
    """Return repr(text) cut to limit characters, so client input cannot flood a log line."""
    shown = repr(text)
    return shown if len(shown) <= limit else shown[:limit] + "..."


def _is_type(value, kind):
    """Return True if value is of kind; a bool is not an int."""
    return isinstance(value, kind) and not (kind is int and isinstance(value, bool))


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
        if key not in CONFIG_TYPES:
            raise ConfigError(f"{CONFIG_NAME}: unknown key {_short(key)}")
    for key, kind in CONFIG_TYPES.items():
        if key not in data:
            raise ConfigError(f"{CONFIG_NAME}: missing key {key!r}")
        if not _is_type(data[key], kind):
            raise ConfigError(f"{CONFIG_NAME}: {key}: should be {TYPE_NAMES[kind]}")
    _validate_flags(data["flags"])
    for key in ("service", "version"):
        if not data[key]:
            raise ConfigError(f"{CONFIG_NAME}: {key}: should not be empty")
    for key in ("max_child_qty", "max_order_qty"):
        if data[key] < 1:
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


# ---------------------------------------------------------------- orders

def split_order(quantity, max_child):
    """Return child quantities, each at most max_child, summing to quantity (250, 100 -> [100, 100, 50]).

    ValueError if quantity is negative or max_child is below 1.
    """
    if quantity < 0 or max_child < 1:
        raise ValueError(f"cannot split {quantity} into children of at most {max_child}")
    full, rest = divmod(quantity, max_child)
    return [max_child] * full + ([rest] if rest else [])


def _check_text(data, field, pattern, allowed):
    """Raise BadRequest unless data[field] is a string matching pattern."""
    value = data[field]
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise BadRequest(f"{field}: should be a string of {allowed}")


def _check_fields(data, required, optional=()):
    """Raise BadRequest unless data is an object with every required field and no unknown one."""
    if not isinstance(data, dict):
        raise BadRequest("body: should be a JSON object")
    for key in data:
        if key not in required and key not in optional:
            raise BadRequest(f"unknown field {_short(key)}")
    for key in required:
        if key not in data:
            raise BadRequest(f"missing field {key!r}")


def validate_order(data, max_order_qty):
    """Return data if it is a valid order body; raise BadRequest naming the field otherwise."""
    _check_fields(data, ORDER_FIELDS)
    _check_text(data, "id", ID_RE, "1-64 characters of [A-Za-z0-9._:-]")
    _check_text(data, "symbol", SYMBOL_RE, "1-12 characters of [A-Z0-9.]")
    if data["side"] not in ("buy", "sell"):
        raise BadRequest('side: should be "buy" or "sell"')
    quantity = data["quantity"]
    if not _is_type(quantity, int):
        raise BadRequest("quantity: should be an integer")
    if not 1 <= quantity <= max_order_qty:
        raise BadRequest(f"quantity: should be between 1 and {max_order_qty}")
    price = data["limit_price"]
    if isinstance(price, bool) or not isinstance(price, (int, float)):
        raise BadRequest("limit_price: should be a number")
    # The chained comparison also rejects NaN and infinity, and compares huge ints exactly.
    if not 0 < price <= MAX_PRICE:
        raise BadRequest("limit_price: should be a finite number above 0 and at most 1e9")
    return data


def validate_gate_request(data):
    """Return (action, digest) from a /control/gate body; raise BadRequest for anything else."""
    # A close may carry a digest (ignored): closing must never fail on a detail.
    _check_fields(data, ("action",), ("digest",))
    action, digest = data["action"], data.get("digest")
    if action not in ("open", "close"):
        raise BadRequest('action: should be "open" or "close"')
    if action == "open" and "digest" not in data:
        raise BadRequest("missing field 'digest'")
    if action == "open" and not isinstance(digest, str):
        raise BadRequest("digest: should be a string of 64 hex digits")
    return action, digest


class SimulatedVenue:
    """An in-process venue that fills every child in full and deterministically.

    The fill price is the limit price; with price_improvement it is one tick better
    (lower for a buy, higher for a sell) when that stays above zero.
    """

    def __init__(self, price_improvement=False):
        self.price_improvement = price_improvement
        self._lock = threading.Lock()
        self.executed = 0  # total quantity filled, for tests and sanity checks

    def execute(self, symbol, side, quantity, limit_price):
        """Fill one child order and return {"qty", "price"}."""
        with self._lock:
            self.executed += quantity
        return {"qty": quantity, "price": self._fill_price(side, limit_price)}

    def _fill_price(self, side, limit_price):
        if not self.price_improvement:
            return limit_price
        if side == "sell":
            return round(limit_price + PRICE_TICK, 8)
        return round(limit_price - PRICE_TICK, 8) if limit_price > PRICE_TICK else limit_price


class ParentBook:
    """Parent orders by id: quantity, quantity routed, quantity filled.

    Every change happens under one lock and routing reserves before it sends, so
    the total routed for a parent never exceeds its quantity, whatever the threads do.
    """

    def __init__(self):
        self._lock = threading.Lock()
        self._parents = {}

    def open(self, parent_id, quantity):
        """Register parent_id (or find it again) and return its unrouted quantity.

        HttpError 409 if the id exists with another quantity or is already fully routed.
        """
        with self._lock:
            entry = self._parents.setdefault(parent_id, {"quantity": quantity, "routed": 0, "filled": 0})
            if entry["quantity"] != quantity:
                raise HttpError(409, f"parent {parent_id} already exists with quantity {entry['quantity']}")
            remaining = entry["quantity"] - entry["routed"]
        if remaining == 0:
            raise HttpError(409, f"parent {parent_id} already fully routed")
        return remaining

    def reserve(self, parent_id, wanted):
        """Reserve up to wanted of the parent's unrouted quantity; return the amount reserved (0 if none is left)."""
        with self._lock:
            entry = self._parents[parent_id]
            granted = min(wanted, entry["quantity"] - entry["routed"])
            entry["routed"] += granted
            return granted

    def record_fill(self, parent_id, quantity):
        """Count a fill against the parent and return its total filled quantity."""
        with self._lock:
            self._parents[parent_id]["filled"] += quantity
            return self._parents[parent_id]["filled"]

    def get(self, parent_id):
        """Return a copy of the parent's entry; KeyError if unknown."""
        with self._lock:
            return dict(self._parents[parent_id])


# ---------------------------------------------------------------- state files

def fsync_dir(folder):
    """fsync a directory, so a rename or removal in it survives a crash."""
    descriptor = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def write_durably(path, text):
    """Replace path with text atomically: write a temp file, fsync, rename, fsync the directory."""
    temp = f"{path}.{os.getpid()}.{threading.get_ident()}.tmp"
    try:
        with open(temp, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        if os.path.exists(temp):
            os.remove(temp)
        raise
    fsync_dir(os.path.dirname(path))


def remove_durably(path):
    """Remove path if it exists and fsync its directory; OSError if it cannot."""
    try:
        os.remove(path)
    except FileNotFoundError:
        pass
    fsync_dir(os.path.dirname(path))


# ---------------------------------------------------------------- the service

class Router:
    """The service: gate, halt, counters, parent book and venue. No HTTP, so unit tests drive it directly."""

    def __init__(self, config, digest, release_dir, state_dir):
        self.config, self.digest = config, digest
        self.release_dir, self.state_dir = release_dir, state_dir
        self.halted_path = os.path.join(state_dir, "halted")
        self.token_path = os.path.join(state_dir, "token")
        self._lock = threading.RLock()  # gate, halt and counters
        self._gate_open = False  # closed at every start; only a digest check opens it
        self._halted = os.path.exists(self.halted_path)
        self._counters = dict.fromkeys(("orders", "child_orders", "rejected", "errors"), 0)
        self._started = time.monotonic()
        self.book = ParentBook()
        self.venue = SimulatedVenue(config["flags"]["price_improvement"])

    def count(self, name, amount=1):
        """Add amount to the named counter."""
        with self._lock:
            self._counters[name] += amount

    def is_halted(self):
        """Return True while halted, whether by a halt request or by a halt file placed in the state dir."""
        with self._lock:
            # The file is checked every time: it is the kill switch, whoever writes it.
            if not self._halted and os.path.exists(self.halted_path):
                self._halted = True
            if self._halted:
                self._gate_open = False
            return self._halted

    def routing_blocker(self):
        """Return why orders cannot be routed now ("halted" or "gate closed"), or None."""
        with self._lock:
            if self.is_halted():
                return "halted"
            return None if self._gate_open else "gate closed"

    def health(self):
        """Return the GET /health body."""
        with self._lock:
            halted = self.is_halted()
            return {
                "service": self.config["service"], "version": self.config["version"], "digest": self.digest,
                "gate": "open" if self._gate_open else "closed", "halted": halted,
                "flags": dict(self.config["flags"]), "uptime_s": round(time.monotonic() - self._started, 3),
                **self._counters, "pid": os.getpid(), "release_dir": self.release_dir,
            }

    def journal(self, action, actor, health):
        """Append one control action to the node's own journal (state/journal.jsonl), fsync'd."""
        who = actor if isinstance(actor, str) and ACTOR_RE.fullmatch(actor) else "unknown"
        record = {"ts": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "who": who, "action": action,
                  "source": "router", "digest": self.digest, "gate": health["gate"], "halted": health["halted"]}
        line = (json.dumps(record, sort_keys=True, separators=(",", ":")) + "\n").encode()
        try:
            fd = os.open(os.path.join(self.state_dir, "journal.jsonl"), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, line)
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as error:
            self.count("errors")
            log(f"journal not written: {error.strerror}")

    def check_token(self, presented):
        """Return None if presented matches the installed token, else why the request is refused."""
        if not presented:
            return "missing token"
        try:
            with open(self.token_path, "rb") as handle:
                # Read per request: `fleet up` may install or rotate the token after start.
                expected = handle.read().strip()
        except OSError:
            expected = b""
        if not expected:
            return "no token installed"
        if not hmac.compare_digest(presented.encode("latin-1"), expected):
            return "bad token"
        return None

    def set_gate(self, action, digest):
        """Open the gate (only if not halted and digest is this release's) or close it; return health.

        HttpError 409 when it refuses to open; the gate then stays closed.
        """
        with self._lock:
            if action == "close":
                self._gate_open = False
            elif self.is_halted():
                raise HttpError(409, "halted: resume before opening the gate")
            elif digest != self.digest:
                raise HttpError(409, f"digest mismatch: this node runs {self.digest}")
            else:
                self._gate_open = True
            return self.health()

    def halt(self):
        """Close the gate, set halted and persist the halt file before returning health; idempotent."""
        with self._lock:
            self._halted, self._gate_open = True, False  # stop routing first, then persist
            try:
                write_durably(self.halted_path, json.dumps({"halted_at": time.time(), "pid": os.getpid()}) + "\n")
            except OSError as error:
                self.count("errors")
                raise HttpError(500, f"halted in memory, but the halt file was not written: {error.strerror}")
            return self.health()

    def resume(self):
        """Remove the halt file and clear halted, leaving the gate closed; return health. Idempotent."""
        with self._lock:
            remove_durably(self.halted_path)
            self._halted = False
            return self.health()

    def place(self, order):
        """Route a validated order and return the 200 body {"id", "quantity", "filled", "children"}.

        HttpError 503 when halted or the gate is closed (also between children, with what was
        routed so far), 409 for a parent id with another quantity or nothing left to route.
        """
        blocker = self.routing_blocker()
        if blocker:
            raise HttpError(503, blocker)
        remaining = self.book.open(order["id"], order["quantity"])
        children, blocker = self._route_children(order, remaining)
        result = {"id": order["id"], "quantity": order["quantity"],
                  "filled": self.book.get(order["id"])["filled"], "children": children}
        if blocker:
            raise HttpError(503, blocker, extra=result if children else None)
        if not children:  # a concurrent request for this id routed the rest
            raise HttpError(409, f"parent {order['id']} already fully routed")
        self.count("orders")
        if self.config["flags"]["log_orders"]:
            log(f"order {order['id']} {order['side']} {order['quantity']} {order['symbol']} "
                f"limit {order['limit_price']}: {len(children)} children, filled {result['filled']}")
        return result

    def _route_children(self, order, remaining):
        """Send children for up to remaining; return (children, blocker that stopped routing or None)."""
        children = []
        for wanted in split_order(remaining, self.config["max_child_qty"]):
            blocker = self.routing_blocker()  # a halt stops the very next child
            if blocker:
                return children, blocker
            granted = self.book.reserve(order["id"], wanted)  # reserve before sending, never after
            if granted == 0:
                break
            fill = self.venue.execute(order["symbol"], order["side"], granted, order["limit_price"])
            self.book.record_fill(order["id"], fill["qty"])
            self.count("child_orders")
            children.append(fill)
        return children, None


# ---------------------------------------------------------------- HTTP

# http.server is not used: importing it (email, http.client, ssl) doubled the router's start-up
# CPU, and every node restarts at once on a deploy. HTTP/1.x here is small and strict: one
# request per connection, Content-Length bodies only, limits on every line.
REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found", 405: "Method Not Allowed",
           409: "Conflict", 414: "URI Too Long", 431: "Request Header Fields Too Large",
           500: "Internal Server Error", 503: "Service Unavailable", 505: "HTTP Version Not Supported"}
MAX_LINE = 8192
MAX_HEADERS = 64
METHOD_RE = re.compile(r"[A-Z]{1,16}")
HEADER_NAME_RE = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,64}")
SINGLE_HEADERS = ("content-length", "transfer-encoding", TOKEN_HEADER.lower())


class Headers(dict):
    """Request header fields by lower-case name."""

    def get(self, name, default=None):
        return dict.get(self, name.lower(), default)


class Handler(socketserver.StreamRequestHandler):
    """JSON over HTTP for one Router (self.server.router)."""

    timeout = 10  # a stalled client must not hold a thread forever
    ROUTES = {
        "/health": {"GET": "_get_health"},
        "/orders": {"POST": "_post_orders"},
        "/control/gate": {"POST": "_post_gate"},
        "/control/halt": {"POST": "_post_halt"},
        "/control/resume": {"POST": "_post_resume"},
    }

    def handle(self):
        """Read one request and answer it; the connection closes after every answer."""
        self.command = None
        try:
            if self._read_request():
                self._dispatch(self.command)
        except HttpError as error:  # the request itself is malformed: answer and close
            log(f"http {self.client_address[0]}: {error.status} {error.message}")
            self._send_json(error.status, error.body(), with_body=self.command != "HEAD")
        except TimeoutError:
            log(f"http {self.client_address[0]}: request timed out")
        except (ConnectionError, OSError):
            pass  # the client went away: nobody to answer

    def _line(self, status, what):
        line = self.rfile.readline(MAX_LINE + 1)
        if len(line) > MAX_LINE:
            raise HttpError(status, f"{what} longer than {MAX_LINE} bytes")
        if line and not line.endswith(b"\n"):
            raise HttpError(400, f"{what} cut short")
        return line.decode("latin-1").rstrip("\r\n")

    def _read_request(self):
        """Parse the request line and header fields into command, path, headers; False on a silent close."""
        text = self._line(414, "request line")
        if not text:
            return False
        parts = text.split(" ")
        if len(parts) != 3 or not METHOD_RE.fullmatch(parts[0]) or not parts[1].startswith("/"):
            raise HttpError(400, f"bad request line {text[:60]!r}")
        if parts[2] not in ("HTTP/1.0", "HTTP/1.1"):
            raise HttpError(505 if parts[2].startswith("HTTP/") else 400, f"unsupported version {parts[2][:20]!r}")
        self.command, self.path, self.request_version = parts
        self.headers = Headers()
        for _ in range(MAX_HEADERS + 1):
            line = self._line(431, "header field")
            if not line:
                return True
            name, colon, value = line.partition(":")
            if not colon or not HEADER_NAME_RE.fullmatch(name):
                raise HttpError(400, "bad header field")  # not echoed: it may hold a mistyped token
            key = name.lower()
            if key in self.headers and key in SINGLE_HEADERS:
                raise HttpError(400, f"header {name} given twice")
            self.headers.setdefault(key, value.strip(" \t"))
        raise HttpError(431, f"more than {MAX_HEADERS} header fields")

    def _dispatch(self, method):
        """Route the request to its method and send the JSON answer; never lets an exception escape."""
        router, path = self.server.router, request_path(self.path)[:200]
        headers = {}
        try:
            status, body = 200, self._route(method, path)
        except HttpError as error:
            status, body, headers = error.status, error.body(), error.headers
        except (TimeoutError, ConnectionError):
            return  # the client went away mid-request: nobody to answer
        except Exception as error:  # the server keeps running whatever a handler does
            router.count("errors")
            log(f"internal error on {method} {path}: {error!r}")
            status, body = 500, {"error": "internal error"}
        if status >= 400 and status != 401:
            log(f"{method} {path} from {self.client_address[0]}: {status} {body['error']}")
        self._send_json(status, body, headers, with_body=method != "HEAD")

    def _route(self, method, path):
        methods = self.ROUTES.get(path)
        if methods is None:
            raise HttpError(404, f"no such path {path}")
        if method not in methods:
            raise HttpError(405, f"{method} not allowed on {path}", headers={"Allow": ", ".join(methods)})
        return getattr(self, methods[method])()

    def _send_json(self, status, body, headers=None, with_body=True):
        data = (json.dumps(body, allow_nan=False) + "\n").encode("utf-8")
        head = [f"HTTP/1.1 {status} {REASONS.get(status, 'Error')}", "Server: order-router",
                "Content-Type: application/json", f"Content-Length: {len(data)}", "Connection: close"]
        head += [f"{name}: {value}" for name, value in (headers or {}).items()]
        try:
            self.wfile.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + (data if with_body else b""))
        except (BrokenPipeError, ConnectionResetError):
            pass

    def _read_body(self):
        """Read the body; return (bytes, None) or (None, reason it is unacceptable).

        An over-large body is drained up to DRAIN_LIMIT first: closing a socket with unread
        data resets it, and the client would lose the 400.
        """
        if self.headers.get("Transfer-Encoding"):
            return None, "body: send Content-Length; chunked bodies are not accepted"
        text = (self.headers.get("Content-Length") or "0").strip()
        if not re.fullmatch(r"[0-9]{1,15}", text):
            return None, "body: bad Content-Length"
        length = int(text)
        if length <= MAX_BODY:
            return self.rfile.read(length), None
        left = min(length, DRAIN_LIMIT)
        while left > 0:
            chunk = self.rfile.read(min(left, 1 << 16))
            if not chunk:
                break
            left -= len(chunk)
        return None, f"body: larger than {MAX_BODY} bytes"

    def _json_body(self, raw, reason):
        """Return the parsed body; BadRequest if it was unacceptable or is not JSON."""
        if reason:
            raise BadRequest(reason)
        try:
            return parse_json(raw)
        except ValueError as error:
            raise BadRequest(f"body: malformed JSON: {error}") from None

    def _get_health(self):
        return self.server.router.health()

    def _post_orders(self):
        router = self.server.router
        raw, reason = self._read_body()  # always read it: see _read_body
        blocker = router.routing_blocker()
        if blocker:
            raise HttpError(503, blocker)
        try:
            order = validate_order(self._json_body(raw, reason), router.config["max_order_qty"])
            return router.place(order)
        except HttpError as error:
            if error.status in (400, 409):
                router.count("rejected")
            raise

    def _control(self, action):
        """Check the token, then run action(raw, reason) and log the outcome; 401 without a good token."""
        router, path, client = self.server.router, request_path(self.path), self.client_address[0]
        raw, reason = self._read_body()
        refusal = router.check_token(self.headers.get(TOKEN_HEADER))
        if refusal:
            log(f"refused control request {path} from {client}: {refusal}")  # never the token itself
            raise HttpError(401, "unauthorized")
        health = action(raw, reason)
        log(f"control {path} from {client}: gate {health['gate']}, halted {str(health['halted']).lower()}")
        router.journal(path.rsplit("/", 1)[-1], self.headers.get(ACTOR_HEADER), health)
        return health

    def _post_gate(self):
        def gate(raw, reason):
            action, digest = validate_gate_request(self._json_body(raw, reason))
            return self.server.router.set_gate(action, digest)
        return self._control(gate)

    def _post_halt(self):
        # The body is ignored: a kill switch must not fail on its payload.
        return self._control(lambda raw, reason: self.server.router.halt())

    def _post_resume(self):
        return self._control(lambda raw, reason: self.server.router.resume())


def request_path(target):
    """The path of a request target: without its query or fragment."""
    return target.split("?", 1)[0].split("#", 1)[0]


class RouterServer(socketserver.ThreadingTCPServer):
    """One thread per connection; more connections queued than the default 5; quick rebinding."""

    allow_reuse_address = True
    daemon_threads = True
    request_queue_size = 64


# ---------------------------------------------------------------- main

USAGE = "usage: router [--state-dir DIR] [--port PORT] [--host ADDRESS] [--check]"


class Options:
    """The command line: --state-dir (required unless --check), --port, --host, --check."""

    def __init__(self):
        self.state_dir, self.port, self.host, self.check = None, 8080, "0.0.0.0", False


def usage_error(message):
    """Print the usage and one error line, exit 2 (as argparse would; argparse costs start-up time)."""
    sys.stderr.write(f"{USAGE}\nrouter: error: {message}\n")
    sys.exit(2)


def parse_args(argv):
    """Return the parsed command line; a usage error exits 2."""
    args, opts = list(sys.argv[1:] if argv is None else argv), Options()
    while args:
        arg = args.pop(0)
        name, equals, value = arg.partition("=")
        if arg in ("-h", "--help"):
            sys.stdout.write(USAGE + "\n")
            sys.exit(0)
        if arg == "--check":
            opts.check = True
        elif name in ("--state-dir", "--port", "--host"):
            if not equals:
                if not args:
                    usage_error(f"argument {name}: expected one argument")
                value = args.pop(0)
            if name == "--port":
                if not re.fullmatch(r"[0-9]{1,5}", value) or int(value) > 65535:
                    usage_error(f"argument --port: invalid port {value!r}")
                value = int(value)
            setattr(opts, name[2:].replace("-", "_"), value)
        else:
            usage_error(f"unrecognized arguments: {arg}")
    if not opts.check and not opts.state_dir:
        usage_error("--state-dir is required unless --check is given")
    return opts


def serve(args, router):
    """Serve HTTP until SIGTERM or Ctrl-C; return the exit code (1 if the port cannot be bound)."""
    try:
        server = RouterServer((args.host, args.port), Handler)
    except OSError as error:
        log(f"cannot listen on {args.host}:{args.port}: {error.strerror}")
        return 1
    server.router = router
    # SIGTERM (supervisor stop) ends serve_forever through SystemExit, so the socket closes cleanly.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
    host, port = server.server_address[:2]
    log(f"serving {router.config['service']} {router.config['version']} digest {router.digest} "
        f"on {host}:{port}: gate closed, halted {str(router.is_halted()).lower()}")
    try:
        server.serve_forever()
    except (KeyboardInterrupt, SystemExit):
        pass
    finally:
        server.server_close()
        log("stopped")
    return 0


def main(argv=None):
    """Run the router; return 0, 2 on a config or state dir error, 1 if it cannot listen."""
    args = parse_args(argv)
    release_dir = os.path.dirname(os.path.realpath(__file__))
    try:
        config = load_config(os.path.join(release_dir, CONFIG_NAME))
        digest = release_digest(release_dir)
    except ConfigError as error:
        log(str(error))
        return 2
    except OSError as error:
        log(f"cannot compute the release digest of {release_dir}: {error}")
        return 2
    if args.check:
        print(json.dumps({"digest": digest, "version": config["version"]}))
        return 0
    if not os.path.isdir(args.state_dir):
        log(f"state dir {args.state_dir} is not a directory")
        return 2
    return serve(args, Router(config, digest, release_dir, args.state_dir))


if __name__ == "__main__":
    exit_code = main()
    # Every write the router makes (halt flag, journal) is fsynced as it is made: skip the
    # interpreter's teardown (request threads, freeing modules) so a restart frees the CPU sooner.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(exit_code)
