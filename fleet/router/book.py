"""Orders: the JSON bodies the router accepts, splitting, the parent book, and the simulated venue.

Every body check names the field it refuses; unknown fields are refused, never ignored. Routing
reserves a child's quantity in the book before the venue fills it, so no parent is ever routed
beyond its quantity, whatever the request threads do.
"""

import re
import threading

from httpwire import BadRequest, HttpError, is_type, short

ORDER_FIELDS = ("id", "symbol", "side", "quantity", "limit_price")
ID_RE = re.compile(r"[A-Za-z0-9._:-]{1,64}")
SYMBOL_RE = re.compile(r"[A-Z0-9.]{1,12}")
MAX_PRICE = 1e9
PRICE_TICK = 0.01


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
            raise BadRequest(f"unknown field {short(key)}")
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
    if not is_type(quantity, int):
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


def split_order(quantity, max_child):
    """Return child quantities, each at most max_child, summing to quantity (250, 100 -> [100, 100, 50]).

    ValueError if quantity is negative or max_child is below 1.
    """
    if quantity < 0 or max_child < 1:
        raise ValueError(f"cannot split {quantity} into children of at most {max_child}")
    full, rest = divmod(quantity, max_child)
    return [max_child] * full + ([rest] if rest else [])


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
