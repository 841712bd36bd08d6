"""Unit tests for the router in fleet/router/ (router.py and the modules beside it): no sockets."""

import ast
import copy
import hashlib
import importlib
import io
import json
import math
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from deployctl.remote import reqsign

ROUTER_DIR = Path(__file__).resolve().parents[3] / "fleet" / "router"


def _load_router_modules(*names):
    """Import the router's modules from fleet/router by their plain names, as router.py does.

    They are deployed files, not a package: the folder is on sys.path only while they load.
    """
    saved = sys.dont_write_bytecode
    # The loader writes bytecode before a module body runs; a __pycache__ in fleet/router
    # would change its release digest.
    sys.dont_write_bytecode = True
    sys.path.insert(0, str(ROUTER_DIR))
    try:
        return [importlib.import_module(name) for name in names]
    finally:
        sys.path.remove(str(ROUTER_DIR))
        sys.dont_write_bytecode = saved


book, endpoints, httpwire, release, router_main, service_module, signed_module = _load_router_modules(
    "book", "endpoints", "httpwire", "release", "router", "service", "signed")

CONFIG = {
    "service": "order-router", "version": "1.0.0", "max_child_qty": 100, "max_order_qty": 1000000,
    "max_child_orders_per_s": 50000, "flags": {"price_improvement": False, "log_orders": False},
}
DIGEST = "ab" * 32


def test_import_leaves_no_pycache_in_release_folder():
    assert not list(ROUTER_DIR.rglob("__pycache__")) and not list(ROUTER_DIR.rglob("*.pyc"))


def _imports(tree):
    """Return [(top-level module name, line, at module level)] for every import in an ast tree."""
    found, top = [], {id(node) for node in tree.body}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name.split(".")[0], node.lineno, id(node) in top) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            found.append(((node.module or "").split(".")[0], node.lineno, id(node) in top and node.level == 0))
    return found


ROUTER_MODULES = {path.stem: ast.parse(path.read_text(), str(path)) for path in sorted(ROUTER_DIR.glob("*.py"))}


@pytest.mark.parametrize("name", sorted(ROUTER_MODULES))
def test_router_modules_are_small_documented_and_standard_library_only(name):
    tree = ROUTER_MODULES[name]
    assert name not in sys.stdlib_module_names  # it would shadow the standard module for the whole router
    assert ast.get_docstring(tree), f"{name}.py has no module docstring"
    assert len((ROUTER_DIR / f"{name}.py").read_text().splitlines()) <= 300
    for module, line, at_top in _imports(tree):
        assert module in sys.stdlib_module_names or module in ROUTER_MODULES, f"{name}.py:{line}: {module}"
        # Imports at start-up only: a module imported later (bytecode setting changed, current
        # switched) could write a __pycache__ or come from another release.
        assert at_top, f"{name}.py:{line}: import {module} is not at module level"


def test_the_entry_point_stops_bytecode_before_any_sibling_import_and_reaches_every_module():
    tree = ROUTER_MODULES["router"]
    off = next(node.lineno for node in tree.body if isinstance(node, ast.Assign)
               and ast.unparse(node) == "sys.dont_write_bytecode = True")
    siblings = [(module, line) for module, line, _top in _imports(tree) if module in ROUTER_MODULES]
    assert siblings and all(line > off for _module, line in siblings)
    reached, todo = set(), ["router"]
    while todo:
        name = todo.pop()
        reached.add(name)
        todo += [m for m, _line, _top in _imports(ROUTER_MODULES[name]) if m in ROUTER_MODULES and m not in reached]
    assert reached == set(ROUTER_MODULES)  # no file in the release that the router does not run


def test_shipped_router_json_is_valid_and_exact():
    assert release.load_config(str(ROUTER_DIR / "router.json")) == CONFIG


# ---------------------------------------------------------------- split_order

@pytest.mark.parametrize(("quantity", "max_child", "expected"), [
    (250, 100, [100, 100, 50]),
    (100, 100, [100]),
    (101, 100, [100, 1]),
    (99, 100, [99]),
    (1, 100, [1]),
    (0, 100, []),
    (7, 1, [1, 1, 1, 1, 1, 1, 1]),
    (10, 3, [3, 3, 3, 1]),
    (1000000, 100, [100] * 10000),
])
def test_split_order_table(quantity, max_child, expected):
    assert book.split_order(quantity, max_child) == expected


@pytest.mark.parametrize(("quantity", "max_child"), [(-1, 100), (5, 0), (5, -3)])
def test_split_order_refuses_bad_input(quantity, max_child):
    with pytest.raises(ValueError):
        book.split_order(quantity, max_child)


@settings(max_examples=300, deadline=None)
@given(quantity=st.integers(1, 200000), max_child=st.integers(1, 1000))
def test_split_order_properties(quantity, max_child):
    parts = book.split_order(quantity, max_child)
    assert sum(parts) == quantity
    assert all(1 <= part <= max_child for part in parts)
    assert len(parts) == math.ceil(quantity / max_child)


# ---------------------------------------------------------------- config

def _config_with(**changes):
    config = copy.deepcopy(CONFIG)
    for key, value in changes.items():
        if value is ...:
            del config[key]
        else:
            config[key] = value
    return config


def _flags_with(**changes):
    flags = dict(CONFIG["flags"])
    for key, value in changes.items():
        if value is ...:
            del flags[key]
        else:
            flags[key] = value
    return _config_with(flags=flags)


@pytest.mark.parametrize(("config", "message"), [
    (_flags_with(power_peg=True), "unknown flag 'power_peg' in router.json"),
    (_flags_with(power_peg=False), "unknown flag 'power_peg' in router.json"),
    (_flags_with(log_orders="yes"), "router.json: flags/log_orders: should be a boolean"),
    (_flags_with(price_improvement=1), "router.json: flags/price_improvement: should be a boolean"),
    (_flags_with(log_orders=...), "router.json: flags: missing flag 'log_orders'"),
    (_config_with(max_child_qty="100"), "router.json: max_child_qty: should be an integer"),
    (_config_with(max_child_qty=100.0), "router.json: max_child_qty: should be an integer"),
    (_config_with(max_order_qty=True), "router.json: max_order_qty: should be an integer"),
    (_config_with(version=1), "router.json: version: should be a string"),
    (_config_with(service=None), "router.json: service: should be a string"),
    (_config_with(flags=[]), "router.json: flags: should be an object"),
    (_config_with(extra=1), "router.json: unknown key 'extra'"),
    (_config_with(max_order_qty=...), "router.json: missing key 'max_order_qty'"),
    (_config_with(max_child_qty=0), "router.json: max_child_qty: should be at least 1"),
    (_config_with(version=""), "router.json: version: should not be empty"),
    ([CONFIG], "router.json: should be an object"),
])
def test_validate_config_rejects(config, message):
    with pytest.raises(release.ConfigError) as caught:
        release.validate_config(config)
    assert str(caught.value) == message


def test_validate_config_accepts_the_reference_config():
    assert release.validate_config(copy.deepcopy(CONFIG)) == CONFIG


@pytest.mark.parametrize(("text", "message"), [
    ('{"service": "a", "service": "b"}', "router.json: invalid JSON: duplicate key 'service'"),
    ('{"max_child_qty": NaN}', "router.json: invalid JSON: NaN is not JSON"),
    ("{", "router.json: invalid JSON: Expecting property name enclosed in double quotes: "
          "line 1 column 2 (char 1)"),
])
def test_load_config_rejects_bad_json(tmp_path, text, message):
    path = tmp_path / "router.json"
    path.write_text(text)
    with pytest.raises(release.ConfigError) as caught:
        release.load_config(str(path))
    assert str(caught.value) == message


def test_load_config_missing_file(tmp_path):
    with pytest.raises(release.ConfigError) as caught:
        release.load_config(str(tmp_path / "router.json"))
    assert str(caught.value) == "cannot read router.json: No such file or directory"


# ---------------------------------------------------------------- request validation

GOOD_ORDER = {"id": "p-1", "symbol": "AAPL", "side": "buy", "quantity": 250, "limit_price": 10.5}


def _order_with(**changes):
    order = dict(GOOD_ORDER)
    for key, value in changes.items():
        if value is ...:
            del order[key]
        else:
            order[key] = value
    return order


@pytest.mark.parametrize(("body", "message"), [
    ([], "body: should be a JSON object"),
    (_order_with(extra=1), "unknown field 'extra'"),
    (_order_with(side=...), "missing field 'side'"),
    (_order_with(id=""), "id: should be a string of 1-64 characters of [A-Za-z0-9._:-]"),
    (_order_with(id="x" * 65), "id: should be a string of 1-64 characters of [A-Za-z0-9._:-]"),
    (_order_with(id="a b"), "id: should be a string of 1-64 characters of [A-Za-z0-9._:-]"),
    (_order_with(id="a\n"), "id: should be a string of 1-64 characters of [A-Za-z0-9._:-]"),
    (_order_with(id=7), "id: should be a string of 1-64 characters of [A-Za-z0-9._:-]"),
    (_order_with(symbol="aapl"), "symbol: should be a string of 1-12 characters of [A-Z0-9.]"),
    (_order_with(symbol="A" * 13), "symbol: should be a string of 1-12 characters of [A-Z0-9.]"),
    (_order_with(side="BUY"), 'side: should be "buy" or "sell"'),
    (_order_with(side=["buy"]), 'side: should be "buy" or "sell"'),
    (_order_with(quantity=True), "quantity: should be an integer"),
    (_order_with(quantity=10.0), "quantity: should be an integer"),
    (_order_with(quantity="10"), "quantity: should be an integer"),
    (_order_with(quantity=0), "quantity: should be between 1 and 1000000"),
    (_order_with(quantity=-5), "quantity: should be between 1 and 1000000"),
    (_order_with(quantity=1000001), "quantity: should be between 1 and 1000000"),
    (_order_with(limit_price=True), "limit_price: should be a number"),
    (_order_with(limit_price="10"), "limit_price: should be a number"),
    (_order_with(limit_price=0), "limit_price: should be a finite number above 0 and at most 1e9"),
    (_order_with(limit_price=-1.5), "limit_price: should be a finite number above 0 and at most 1e9"),
    (_order_with(limit_price=float("nan")), "limit_price: should be a finite number above 0 and at most 1e9"),
    (_order_with(limit_price=float("inf")), "limit_price: should be a finite number above 0 and at most 1e9"),
    (_order_with(limit_price=10 ** 400), "limit_price: should be a finite number above 0 and at most 1e9"),
    (_order_with(limit_price=1e9 + 1), "limit_price: should be a finite number above 0 and at most 1e9"),
])
def test_validate_order_rejects(body, message):
    with pytest.raises(httpwire.BadRequest) as caught:
        book.validate_order(body, 1000000)
    assert caught.value.status == 400
    assert caught.value.message == message


@pytest.mark.parametrize("order", [
    GOOD_ORDER,
    _order_with(id="A.b_c:d-9" * 7 + "x", symbol="BRK.B", side="sell", quantity=1, limit_price=1e9),
    _order_with(quantity=1000000, limit_price=1),
])
def test_validate_order_accepts(order):
    assert book.validate_order(dict(order), 1000000) == order


@pytest.mark.parametrize(("body", "message"), [
    ({"action": "open"}, "missing field 'digest'"),
    ({"action": "open", "digest": 5}, "digest: should be a string of 64 hex digits"),
    ({"action": "opem"}, 'action: should be "open" or "close"'),
    ({"digest": DIGEST}, "missing field 'action'"),
    ({"action": "close", "force": True}, "unknown field 'force'"),
    ("open", "body: should be a JSON object"),
])
def test_validate_gate_request_rejects(body, message):
    with pytest.raises(httpwire.BadRequest) as caught:
        book.validate_gate_request(body)
    assert caught.value.message == message


def test_validate_gate_request_accepts():
    assert book.validate_gate_request({"action": "open", "digest": DIGEST}) == ("open", DIGEST)
    assert book.validate_gate_request({"action": "close"}) == ("close", None)
    assert book.validate_gate_request({"action": "close", "digest": DIGEST}) == ("close", DIGEST)


@pytest.mark.parametrize(("raw", "expected"), [
    (b'{"a": 1}', {"a": 1}),
    (b"[1, 2.5]", [1, 2.5]),
])
def test_parse_json_accepts(raw, expected):
    assert httpwire.parse_json(raw) == expected


@pytest.mark.parametrize("raw", [b'{"a": 1, "a": 2}', b"[NaN]", b"[Infinity]", b"\xff", b"[" * 50000, b""])
def test_parse_json_rejects(raw):
    with pytest.raises(ValueError):
        httpwire.parse_json(raw)


# ---------------------------------------------------------------- Router object

def _router(state_dir, config=CONFIG, disk=DIGEST):
    return service_module.Router(copy.deepcopy(config), DIGEST, "/opt/router/releases/x", str(state_dir),
                                 disk_digest=lambda folder: disk)


def _status(call):
    with pytest.raises(httpwire.HttpError) as caught:
        call()
    return caught.value.status, caught.value.body()


def test_router_starts_closed_and_refuses_orders(tmp_path):
    service = _router(tmp_path)
    assert service.health()["gate"] == "closed"
    assert _status(lambda: service.place(dict(GOOD_ORDER))) == (503, {"error": "gate closed"})
    assert service.health()["child_orders"] == 0


def test_gate_opens_only_for_own_digest(tmp_path):
    service = _router(tmp_path)
    status, body = _status(lambda: service.set_gate("open", "cd" * 32))
    assert (status, body) == (409, {"error": f"digest mismatch: this node runs {DIGEST}"})
    assert service.health()["gate"] == "closed"
    assert service.set_gate("open", DIGEST)["gate"] == "open"
    assert service.set_gate("close", None)["gate"] == "closed"


def test_gate_stays_closed_when_the_files_changed_on_disk_since_start(tmp_path):
    service = _router(tmp_path, disk="ef" * 32)
    status, body = _status(lambda: service.set_gate("open", DIGEST))
    assert (status, body) == (409, {"error": f"files changed on disk since start: they hash to {'ef' * 32}, "
                                             f"this node runs {DIGEST}"})
    assert service.health()["gate"] == "closed" and service.health()["errors"] == 1


def test_the_gate_hashes_the_real_release_folder_before_it_opens(tmp_path):
    folder = tmp_path / "release"
    folder.mkdir()
    (folder / "router.py").write_bytes(b"print('v1')\n")
    digest = release.release_digest(str(folder))
    service = service_module.Router(copy.deepcopy(CONFIG), digest, str(folder), str(tmp_path))
    assert service.set_gate("open", digest)["gate"] == "open"
    service.set_gate("close", None)
    (folder / "router.py").write_bytes(b"print('v2')\n")  # same size, one byte flipped
    status, body = _status(lambda: service.set_gate("open", digest))
    assert status == 409 and "files changed on disk since start" in body["error"]
    assert service.health()["gate"] == "closed"


def test_order_splits_fills_and_counts(tmp_path):
    service = _router(tmp_path)
    service.set_gate("open", DIGEST)
    result = service.place(dict(GOOD_ORDER))
    assert result == {"id": "p-1", "quantity": 250, "filled": 250, "children": [
        {"qty": 100, "price": 10.5}, {"qty": 100, "price": 10.5}, {"qty": 50, "price": 10.5}]}
    health = service.health()
    assert (health["orders"], health["child_orders"]) == (1, 3)


def test_repeated_parent_id_routes_nothing_more(tmp_path):
    service = _router(tmp_path)
    service.set_gate("open", DIGEST)
    service.place(dict(GOOD_ORDER))
    assert _status(lambda: service.place(dict(GOOD_ORDER))) == (
        409, {"error": "parent p-1 already fully routed"})
    assert _status(lambda: service.place(_order_with(quantity=300))) == (
        409, {"error": "parent p-1 already exists with quantity 250"})
    assert service.book.get("p-1") == {"quantity": 250, "routed": 250, "filled": 250}


class _HaltingVenue(book.SimulatedVenue):
    """Halts its router right after the first child, as an operator would mid-order."""

    def __init__(self, service):
        super().__init__()
        self.service = service

    def execute(self, symbol, side, quantity, limit_price):
        fill = super().execute(symbol, side, quantity, limit_price)
        self.service.halt()
        return fill


def test_halt_mid_order_stops_the_next_child_and_resume_routes_the_rest(tmp_path):
    service = _router(tmp_path)
    service.venue = _HaltingVenue(service)
    service.set_gate("open", DIGEST)
    status, body = _status(lambda: service.place(dict(GOOD_ORDER)))
    assert (status, body["error"], body["filled"]) == (503, "halted", 100)
    assert body["children"] == [{"qty": 100, "price": 10.5}]
    assert service.book.get("p-1")["routed"] == 100
    assert (tmp_path / "halted").exists()
    health = service.resume()
    assert (health["halted"], health["gate"]) == (False, "closed")
    assert not (tmp_path / "halted").exists()
    service.venue = book.SimulatedVenue()
    service.set_gate("open", DIGEST)
    result = service.place(dict(GOOD_ORDER))
    assert result["children"] == [{"qty": 100, "price": 10.5}, {"qty": 50, "price": 10.5}]
    assert result["filled"] == 250


def test_halt_survives_a_new_router_and_blocks_opening(tmp_path):
    service = _router(tmp_path)
    service.set_gate("open", DIGEST)
    assert service.halt()["gate"] == "closed"
    assert service.halt()["halted"] is True  # idempotent
    reborn = _router(tmp_path)
    assert reborn.health()["halted"] is True
    assert _status(lambda: reborn.set_gate("open", DIGEST)) == (
        409, {"error": "halted: resume before opening the gate"})
    assert reborn.resume()["halted"] is False
    assert reborn.resume()["gate"] == "closed"  # idempotent, and the gate stays closed


def test_orders_are_refused_while_the_halt_file_is_still_being_written(tmp_path, monkeypatch):
    service, writing, done = _router(tmp_path), threading.Event(), threading.Event()
    service.set_gate("open", DIGEST)
    real = service_module.write_durably

    def slow_write(path, text):
        writing.set()
        assert done.wait(5)  # the disk is slow: the halt's fsync has not returned yet
        real(path, text)

    monkeypatch.setattr(service_module, "write_durably", slow_write)
    halting = threading.Thread(target=service.halt)
    halting.start()
    assert writing.wait(5)
    answer = []
    refusing = threading.Thread(target=lambda: answer.append(service.routing_blocker()), daemon=True)
    refusing.start()
    refusing.join(2)  # it must not wait for the fsync
    done.set()
    halting.join(5)
    assert answer == ["halted"] and (tmp_path / "halted").exists()


def test_the_router_ends_a_torn_line_before_its_record(tmp_path):
    """A torn last line of the node's journal is ended, never merged into the next record; the node agent
    does the same (tests/process/node/test_agent.py)."""
    path = tmp_path / "journal.jsonl"
    torn = b'{"action":"switch","dig'
    path.write_bytes(torn)
    service_module.append_durably(str(path), b'{"action":"gate-open"}\n')
    service_module.append_durably(str(path), b'{"action":"halt"}\n')
    assert path.read_bytes() == torn + b'\n{"action":"gate-open"}\n{"action":"halt"}\n'


def test_halt_file_placed_by_someone_else_closes_the_gate(tmp_path):
    service = _router(tmp_path)
    service.set_gate("open", DIGEST)
    (tmp_path / "halted").write_text("")
    assert _status(lambda: service.place(dict(GOOD_ORDER))) == (503, {"error": "halted"})
    assert service.health()["gate"] == "closed"


def _signed(method, path, body=b"", token="t0k", **kw):
    """The header fields deployctl's own signer (deployctl/reqsign.py) puts on a control request."""
    return reqsign.headers(token, method, path, body, **kw)


@pytest.mark.parametrize(("file_text", "fields", "expected"), [
    (None, lambda: _signed("POST", "/control/halt"), "no token installed"),
    ("  \n", lambda: _signed("POST", "/control/halt"), "no token installed"),
    ("t0k\n", lambda: {}, "unsigned request"),
    ("t0k\n", lambda: {"X-Deployctl-Token": "t0k"}, "unsigned request"),  # a token is no longer accepted
    ("t0k\n", lambda: {**_signed("POST", "/control/halt"), "X-Deployctl-Nonce": "Z" * 32},
     "malformed signature fields"),
    ("t0k\n", lambda: _signed("POST", "/control/halt", token="t0K"), "bad signature"),
    ("t0k\n", lambda: _signed("POST", "/control/resume"), "bad signature"),  # signed for another path
    ("t0k\n", lambda: _signed("POST", "/control/halt", b"{}"), "bad signature"),  # for another body
    ("t0k\n", lambda: {**_signed("POST", "/control/halt", actor="a@b"), "X-Deployctl-Actor": "c@d"}, "bad signature"),
    ("t0k\n", lambda: _signed("POST", "/control/halt", now=time.time() - 31), "timestamp -31."),
    ("t0k\n", lambda: _signed("POST", "/control/halt", now=time.time() + 45), "timestamp +4"),
    ("t0k\n", lambda: _signed("POST", "/control/halt", now=time.time() - 29), None),
    ("t0k\n", lambda: _signed("POST", "/control/halt", actor="ops@host"), None),
], ids=["no-file", "blank-file", "unsigned", "token-header", "bad-nonce", "wrong-key", "other-path", "other-body",
        "other-actor", "stale", "future", "late-but-inside", "good"])
def test_check_signature(tmp_path, file_text, fields, expected):
    if file_text is not None:
        (tmp_path / "token").write_text(file_text)
    got = _router(tmp_path).check_signature("POST", "/control/halt", b"", endpoints.httpwire.Headers(
        {k.lower(): v for k, v in fields().items()}))
    assert (got if got is None else got[0][:len(expected)]) == expected


def test_a_nonce_is_accepted_once_also_across_a_restart_and_forgotten_after_the_window(tmp_path):
    (tmp_path / "token").write_text("t0k")
    fields = endpoints.httpwire.Headers({k.lower(): v for k, v in _signed("POST", "/control/halt").items()})
    assert _router(tmp_path).check_signature("POST", "/control/halt", b"", fields) is None
    assert _router(tmp_path).check_signature("POST", "/control/halt", b"", fields) == (
        "nonce already seen (a replayed request)", {})  # a new Router: the nonce was kept in state/nonces
    old = f"{time.time() - 40:.3f} {'0' * 32}\n"
    (tmp_path / "nonces").write_text(old + (tmp_path / "nonces").read_text() + "garbage\n")
    reborn = _router(tmp_path)
    assert (tmp_path / "nonces").read_text().split() == [fields["x-deployctl-timestamp"], fields["x-deployctl-nonce"]]
    assert reborn.check_signature("POST", "/control/halt", b"", fields)[0] == "nonce already seen (a replayed request)"


def test_the_nonce_book_is_bounded(tmp_path, monkeypatch):
    monkeypatch.setattr(signed_module, "NONCE_CAP", 3)
    book_ = signed_module.NonceBook(str(tmp_path / "nonces"), print)
    now = time.time()
    for i in range(3):
        assert book_.take(f"{i:032x}", f"{now:.3f}", now) is None
    assert book_.take(f"{9:032x}", f"{now:.3f}", now) == "more than 3 control requests within 30 s"
    assert book_.take(f"{9:032x}", f"{now:.3f}", now + 31) is None  # the first three have left the window
    assert len((tmp_path / "nonces").read_text().splitlines()) <= 3


def test_a_stale_request_under_a_good_signature_gets_this_clock_with_a_proof(tmp_path):
    (tmp_path / "token").write_text("t0k")
    fields = _signed("POST", "/control/halt", now=time.time() - 100)
    reason, extra = _router(tmp_path).check_signature("POST", "/control/halt", b"", endpoints.httpwire.Headers(
        {k.lower(): v for k, v in fields.items()}))
    assert reason.startswith("timestamp -100.0 s off") and extra["nonce"] == fields["X-Deployctl-Nonce"]
    assert abs(float(extra["now"]) - time.time()) < 5
    assert extra["proof"] == reqsign.clock_proof("t0k", extra["nonce"], extra["now"])
    bad = _signed("POST", "/control/halt", token="nope", now=time.time() - 100)
    assert _router(tmp_path).check_signature("POST", "/control/halt", b"", endpoints.httpwire.Headers(
        {k.lower(): v for k, v in bad.items()})) == ("bad signature", {})  # no clock for a stranger


def test_price_improvement_is_one_tick_better():
    venue = book.SimulatedVenue(price_improvement=True)
    assert venue.execute("X", "buy", 5, 10.5) == {"qty": 5, "price": 10.49}
    assert venue.execute("X", "sell", 5, 10.5) == {"qty": 5, "price": 10.51}
    assert venue.execute("X", "buy", 5, 0.01) == {"qty": 5, "price": 0.01}


# ---------------------------------------------------------------- the invariant under threads

class _SlowVenue(book.SimulatedVenue):
    """Yields the GIL inside every fill, so concurrent requests interleave between children."""

    def execute(self, symbol, side, quantity, limit_price):
        time.sleep(0.0005)
        return super().execute(symbol, side, quantity, limit_price)


def _hammer(threads, work):
    """Run work(i) in threads started together; return their results (exceptions re-raised)."""
    barrier, results, errors = threading.Barrier(threads), [None] * threads, []

    def run(index):
        barrier.wait(timeout=10)
        try:
            results[index] = work(index)
        except Exception as error:  # collected and re-raised in the main thread
            errors.append(error)

    workers = [threading.Thread(target=run, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)
    assert not any(worker.is_alive() for worker in workers)
    if errors:
        raise errors[0]
    return results


def test_parent_book_never_routes_more_than_quantity_under_16_threads(tmp_path):
    service = _router(tmp_path, _config_with(max_child_qty=3))
    service.venue = _SlowVenue()
    service.set_gate("open", DIGEST)
    order = _order_with(quantity=1000)

    def place(_index):
        try:
            return service.place(dict(order))["children"]
        except httpwire.HttpError as error:
            assert error.status == 409
            return []

    results = _hammer(16, place)
    routed = sum(child["qty"] for children in results for child in children)
    assert routed == 1000
    assert service.book.get("p-1") == {"quantity": 1000, "routed": 1000, "filled": 1000}
    assert service.venue.executed == 1000
    assert service.health()["child_orders"] == sum(len(children) for children in results)


def test_parent_book_reserve_is_exact_under_16_threads():
    parents = book.ParentBook()
    parents.open("p", 5000)

    def drain(_index):
        total = 0
        while granted := parents.reserve("p", 7):
            total += granted
        return total

    assert sum(_hammer(16, drain)) == 5000
    assert parents.get("p")["routed"] == 5000


# ---------------------------------------------------------------- release digest

def _sha256sum_digest(folder):
    """The node's way: list regular files with find, sort by bytes, sha256sum them, hash the output."""
    listing = subprocess.run(["find", ".", "-type", "f", "-printf", "%P\\n"], cwd=folder,
                             capture_output=True, check=True, timeout=30).stdout
    files = sorted(listing.decode("utf-8").splitlines(), key=lambda path: path.encode("utf-8"))
    output = subprocess.run(["sha256sum", "--", *files], cwd=folder, capture_output=True, check=True,
                            timeout=30).stdout
    return files, hashlib.sha256(output).hexdigest()


def test_release_digest_matches_sha256sum(tmp_path):
    for relative, content in [("router.py", b"print(1)\n"), ("router.json", b"{}"), ("a.b", b"x"),
                              ("a/b", b"y"), ("B", b""), ("sub dir/x y.txt", b"z" * 70000),
                              ("z/deep/er/file.json", b"\x00\xff")]:
        path = tmp_path / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    os.symlink("a.b", tmp_path / "link-to-a.b")  # not a regular file: sha256sum's list skips it too
    files, expected = _sha256sum_digest(tmp_path)
    assert release.release_files(str(tmp_path)) == files
    assert files[:3] == ["B", "a.b", "a/b"]  # bytewise: '.' (0x2e) sorts before '/' (0x2f)
    assert release.release_digest(str(tmp_path)) == expected


def test_release_digest_of_the_shipped_folder_matches_sha256sum():
    assert release.release_digest(str(ROUTER_DIR)) == _sha256sum_digest(ROUTER_DIR)[1]


# ---------------------------------------------------------------- HTTP handler, without a socket

def _raw(service, request: bytes):
    """Run raw request bytes through endpoints.Handler on in-memory streams; return the raw answer."""
    handler = endpoints.Handler.__new__(endpoints.Handler)
    handler.server = SimpleNamespace(router=service)
    handler.client_address = ("10.0.0.9", 40000)
    handler.rfile, handler.wfile = io.BytesIO(request), io.BytesIO()
    handler.handle()
    return handler.wfile.getvalue()


def _parse(answer: bytes):
    head, _, payload = answer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    fields = dict(line.split(": ", 1) for line in lines[1:])
    assert int(fields["Content-Length"]) == len(payload) or payload == b""
    return int(lines[0].split()[1]), fields, json.loads(payload) if payload else None


def _handle(service, method, path, body=b"", headers=()):
    """Send one request through endpoints.Handler; return (status, headers, JSON body)."""
    head = f"{method} {path} HTTP/1.0\r\n" + "".join(
        f"{name}: {value}\r\n" for name, value in [("Content-Length", len(body)), *headers]) + "\r\n"
    return _parse(_raw(service, head.encode("latin-1") + body))


@pytest.mark.parametrize("request_bytes, status, words", [
    (b"GET /health\r\n\r\n", 400, "bad request line"),
    (b"get /health HTTP/1.1\r\n\r\n", 400, "bad request line"),
    (b"GET health HTTP/1.1\r\n\r\n", 400, "bad request line"),
    (b"GET /health HTTP/2.0\r\n\r\n", 505, "unsupported version"),
    (b"GET /health SPDY/3\r\n\r\n", 400, "unsupported version"),
    (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\n\r\n", 414, "request line longer than"),
    (b"GET /health HTTP/1.1\r\nX: " + b"b" * 9000 + b"\r\n\r\n", 431, "header field longer than"),
    (b"GET /health HTTP/1.1\r\n" + b"X: y\r\n" * 65 + b"\r\n", 431, "more than 64 header fields"),
    (b"GET /health HTTP/1.1\r\nno colon here\r\n\r\n", 400, "bad header field"),
    (b"GET /health HTTP/1.1\r\n folded: x\r\n\r\n", 400, "bad header field"),
    (b"POST /orders HTTP/1.1\r\nContent-Length: 2\r\ncontent-length: 20\r\n\r\n{}", 400, "given twice"),
    (b"GET /health HTTP/1.1\r\nHost: x", 400, "cut short"),
], ids=["no-version", "lowercase-method", "relative-path", "http2", "not-http", "long-line", "long-header",
        "many-headers", "no-colon", "obs-fold", "two-content-lengths", "cut-short"])
def test_handler_refuses_malformed_requests_with_json(tmp_path, capsys, request_bytes, status, words):
    status_got, fields, body = _parse(_raw(_router(tmp_path), request_bytes))
    assert (status_got, fields["Content-Type"], fields["Connection"]) == (status, "application/json", "close")
    assert words in body["error"]
    assert words in capsys.readouterr().err


def test_a_malformed_token_header_is_never_echoed_or_logged(tmp_path, capsys):
    answer = _raw(_router(tmp_path), b"POST /control/halt HTTP/1.1\r\nX-Deployctl-Token sekrit-value\r\n\r\n")
    assert _parse(answer)[0] == 400
    assert b"sekrit" not in answer and "sekrit" not in capsys.readouterr().err


def test_handler_ignores_the_query_and_answers_head_without_a_body(tmp_path):
    service = _router(tmp_path)
    assert _handle(service, "GET", "/health?verbose=1#x")[0] == 200
    status, fields, body = _parse(_raw(service, b"HEAD /health HTTP/1.1\r\n\r\n"))
    assert (status, body) == (405, None) and fields["Allow"] == "GET"
    assert _raw(service, b"") == b""  # a connection closed without a request gets no answer


class _BrokenRouter:
    """Stands in for Router: health always fails, as an unexpected bug would."""

    def __init__(self, real):
        self.real = real

    def health(self):
        raise RuntimeError("boom")

    def count(self, name, amount=1):
        self.real.count(name, amount)


def test_handler_turns_an_unexpected_exception_into_500(tmp_path, capsys):
    service = _router(tmp_path)
    assert _handle(_BrokenRouter(service), "GET", "/health")[::2] == (500, {"error": "internal error"})
    status, _fields, body = _handle(service, "GET", "/health")
    assert (status, body["errors"]) == (200, 1)
    assert "router: internal error on GET /health: RuntimeError('boom')" in capsys.readouterr().err


def test_handler_answers_json_with_404_and_405(tmp_path):
    service = _router(tmp_path)
    assert _handle(service, "GET", "/nope")[::2] == (404, {"error": "no such path /nope"})
    status, fields, body = _handle(service, "DELETE", "/orders")
    assert (status, fields["Allow"], body) == (405, "POST", {"error": "DELETE not allowed on /orders"})
    assert fields["Content-Type"] == "application/json"


def test_handler_control_needs_a_signature_and_refuses_a_replay(tmp_path, capsys):
    (tmp_path / "token").write_text("sekrit\n")
    service = _router(tmp_path)
    assert _handle(service, "POST", "/control/halt", b"{}", [("X-Deployctl-Token", "sekrit")])[::2] == (
        401, {"error": "unauthorized: unsigned request"})
    err = capsys.readouterr().err
    assert err == "router: refused control request /control/halt from 10.0.0.9: unsigned request\n"
    fields = list(_signed("POST", "/control/halt", b"", token="sekrit").items())
    status, _fields, body = _handle(service, "POST", "/control/halt", b"", fields)
    assert (status, body["halted"]) == (200, True)
    service.resume()
    assert _handle(service, "POST", "/control/halt", b"", fields)[::2] == (
        401, {"error": "unauthorized: nonce already seen (a replayed request)"})
    assert service.health()["halted"] is False
    assert "sekrit" not in capsys.readouterr().err


def test_handler_order_flow(tmp_path):
    (tmp_path / "token").write_text("sekrit")
    service = _router(tmp_path)
    gate = json.dumps({"action": "open", "digest": DIGEST}).encode()
    fields = list(_signed("POST", "/control/gate", gate, token="sekrit").items())
    assert _handle(service, "POST", "/control/gate", gate, fields)[2]["gate"] == "open"
    status, _fields, body = _handle(service, "POST", "/orders", json.dumps(GOOD_ORDER).encode())
    assert (status, body["filled"], len(body["children"])) == (200, 250, 3)
    assert _handle(service, "POST", "/orders", b"{" + b" " * 70000 + b"}")[::2] == (
        400, {"error": "body: larger than 65536 bytes"})
    assert service.health()["rejected"] == 1


# ---------------------------------------------------------------- command line

def test_parse_args_reads_every_option_in_both_spellings():
    opts = router_main.parse_args(["--state-dir", "/s", "--port=9000", "--host", "127.0.0.1"])
    assert (opts.state_dir, opts.port, opts.host, opts.check) == ("/s", 9000, "127.0.0.1", False)
    opts = router_main.parse_args(["--check"])
    assert (opts.check, opts.state_dir, opts.port, opts.host) == (True, None, 8080, "0.0.0.0")


@pytest.mark.parametrize("argv, words", [
    (["--state-dir", "/s", "--bogus"], "unrecognized arguments: --bogus"),
    (["--state-dir"], "argument --state-dir: expected one argument"),
    (["--state-dir", "/s", "--port", "80a"], "argument --port: invalid port '80a'"),
    (["--state-dir", "/s", "--port=70000"], "argument --port: invalid port '70000'"),
    ([], "--state-dir is required unless --check is given"),
])
def test_parse_args_refuses_bad_usage_with_exit_2(capsys, argv, words):
    with pytest.raises(SystemExit) as stop:
        router_main.parse_args(argv)
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: router ") and err.endswith(f"router: error: {words}\n")
