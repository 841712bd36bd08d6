"""Small helpers shared by the end-to-end tests."""

from __future__ import annotations

import threading
import time

from deployctl import gate


def post_order(node, order: dict, timeout: float = 5.0) -> gate.Answer:
    return gate.request(node, "POST", "/orders", order, timeout=timeout)


def order(oid: str, qty: int = 250, **kw) -> dict:
    return {"id": oid, "symbol": "ACME", "side": "buy", "quantity": qty, "limit_price": 10.5, **kw}


def in_background(fn, *args, **kwargs) -> threading.Thread:
    t = threading.Thread(target=fn, args=args, kwargs=kwargs, daemon=True)
    t.start()
    return t


def wait(predicate, seconds: float = 10.0) -> bool:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.05)
    return False
