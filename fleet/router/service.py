"""The Router object: gate, halt, counters, signed control requests, node journal, placing orders, and the log.

No HTTP here, so unit tests drive it directly. The gate is closed at every start and opens only
for this release's digest; a halt file in the state dir keeps it shut across restarts. Every
write to the state dir (halt file, journal) is fsynced as it is made (and its directory after a
rename or removal), which is why the router may end with os._exit and skip the interpreter's
teardown. The log is one `router: ...` line on stderr per event (supervisord keeps it in router.log).
"""

import json
import os
import re
import sys
import threading
import time

import signed
from book import ParentBook, SimulatedVenue, split_order
from breaker import ChildRateBreaker
from httpwire import HttpError
from release import release_digest

_log_lock = threading.Lock()


def log(message):
    """Write one `router: ...` line to stderr; the lock keeps lines from concurrent threads whole."""
    with _log_lock:
        sys.stderr.write(f"router: {message}\n")
        sys.stderr.flush()


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


def append_durably(path, data):
    """Append the bytes data (whole lines) to path (created mode 0600 if missing) and fsync it; a torn
    last line is ended first, never merged into. OSError if it cannot be written whole."""
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            data = b"\n" + data
        while data:
            n = os.write(fd, data)
            if n <= 0:
                raise OSError(28, "short write")
            data = data[n:]
        os.fsync(fd)
    finally:
        os.close(fd)


ACTOR_RE = re.compile(r"[A-Za-z0-9._@-]{1,128}")

class Router:
    """The service: gate, halt, counters, parent book and venue. No HTTP, so unit tests drive it directly."""

    def __init__(self, config, digest, release_dir, state_dir, disk_digest=release_digest):
        self.config, self.digest = config, digest
        self.release_dir, self.state_dir = release_dir, state_dir
        self.disk_digest = disk_digest  # folder -> release digest of its files now (release.release_digest)
        self.halted_path = os.path.join(state_dir, "halted")
        self.token_path = os.path.join(state_dir, "token")
        self._lock = threading.RLock()  # gate, halt and counters
        self._persist = threading.Lock()  # the halt file: one halt or resume writes it at a time
        self._gate_open = False  # closed at every start; only a digest check opens it
        self._halted = os.path.exists(self.halted_path)
        self._counters = dict.fromkeys(("orders", "child_orders", "rejected", "errors"), 0)
        self._max_children = 0  # the most child orders any one parent order got
        self.breaker = ChildRateBreaker(config.get("max_child_orders_per_s"))
        self._started = time.monotonic()
        self.nonces = signed.NonceBook(os.path.join(state_dir, "nonces"), log)
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
                **self._counters, "max_children_per_order": self._max_children,
                "breaker": self.breaker.state(), "pid": os.getpid(), "release_dir": self.release_dir,
            }

    def journal(self, action, actor, health):
        """Append one control action to the node's own journal (state/journal.jsonl), fsync'd."""
        who = actor if isinstance(actor, str) and ACTOR_RE.fullmatch(actor) else "unknown"
        record = {"ts": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "who": who, "action": action,
                  "source": "router", "digest": self.digest, "gate": health["gate"], "halted": health["halted"]}
        line = (json.dumps(record, sort_keys=True, separators=(",", ":")) + "\n").encode()
        try:
            append_durably(os.path.join(self.state_dir, "journal.jsonl"), line)
        except OSError as error:
            self.count("errors")
            log(f"journal not written: {error.strerror}")

    def check_signature(self, method, target, body, fields):
        """Return None if the control request is signed with the installed token, fresh and not seen
        before (its nonce is then recorded); else (reason, extra fields of the 401 body): see signed.check."""
        try:
            with open(self.token_path, "rb") as handle:
                # Read per request: `fleet up` may install or rotate the token after start.
                key = handle.read().strip()
        except OSError:
            key = b""
        if not key:
            return "no token installed", {}
        return signed.check(key, method, target, body, fields, self.nonces)

    def set_gate(self, action, digest):
        """Open the gate (only if not halted and digest is this release's) or close it; return health.

        HttpError 409 when it refuses to open; the gate then stays closed. Before it opens, the
        release folder is hashed again: a file changed on disk since this process hashed it at start
        (FAULTS.md row 6: bit flip between start and gate open) keeps the gate closed.
        """
        on_disk = None
        if action == "open" and digest == self.digest:
            try:
                on_disk = self.disk_digest(self.release_dir)  # outside the lock: orders keep flowing
            except (OSError, ValueError) as error:
                on_disk = f"unreadable ({error})"
        with self._lock:
            if action == "close":
                self._gate_open = False
            elif self.is_halted():
                raise HttpError(409, "halted: resume before opening the gate")
            elif digest != self.digest:
                raise HttpError(409, f"digest mismatch: this node runs {self.digest}")
            elif on_disk != self.digest:
                self.count("errors")
                raise HttpError(409, f"files changed on disk since start: they hash to {on_disk}, "
                                     f"this node runs {self.digest}")
            else:
                self._gate_open = True
            return self.health()

    def halt(self):
        """Close the gate, set halted and persist the halt file before returning health; idempotent.

        Routing stops first; the fsyncs happen outside the routing lock, so orders arriving
        meanwhile are refused at once instead of queueing behind the disk (and the probe of
        bench/bench_halt.py sees the halt sooner). _persist keeps a resume from overtaking them."""
        with self._persist:
            with self._lock:
                self._halted, self._gate_open = True, False
            try:
                write_durably(self.halted_path, json.dumps({"halted_at": time.time(), "pid": os.getpid()}) + "\n")
            except OSError as error:
                self.count("errors")
                raise HttpError(500, f"halted in memory, but the halt file was not written: {error.strerror}")
            return self.health()

    def trip_breaker(self):
        """The router's own breaker: halt this router (durably, as a halt request does), log and journal why."""
        figures = self.breaker.state()
        log(f"breaker: {figures['rate']} child orders in the last second, above the limit "
            f"{figures['limit']} (router.json max_child_orders_per_s): halting this router")
        try:
            health = self.halt()
        except HttpError:  # halted in memory; halt() counted the error
            health = self.health()
        self.journal("breaker", "router", health)

    def resume(self):
        """Remove the halt file and clear halted, leaving the gate closed; return health. Idempotent."""
        with self._persist, self._lock:
            remove_durably(self.halted_path)
            self._halted = False
            self.breaker.reset()
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
        with self._lock:
            self._max_children = max(self._max_children, len(children))
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
            if self.breaker.tripped_by_one():
                self.trip_breaker()
        return children, None
