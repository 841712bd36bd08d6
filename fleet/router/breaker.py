"""The router's own breaker: child orders counted in a sliding one-second window against router.json's
max_child_orders_per_s. The Router halts itself when it trips, so one runaway node stops even when
no `deployctl watch` runs (SEC order on Knight Capital, ¶21: no automated halt on aberrant activity).
"""

import threading
import time
from collections import deque


class ChildRateBreaker:
    """Counts child orders in a sliding one-second window; trips once when the count passes the limit.

    limit None: no breaker. The window is 10 buckets of 0.1 s, so a check costs O(1) per child order."""

    def __init__(self, limit, clock=time.monotonic):
        self.limit, self.clock = limit, clock
        self.tripped = False
        self._buckets = deque()  # [bucket index, count], oldest first, covering the last second
        self._total = 0
        self._lock = threading.Lock()

    def tripped_by_one(self):
        """Record one child order; return True only on the call that trips the breaker."""
        if self.limit is None:
            return False
        with self._lock:
            now = self._trim()
            if self._buckets and self._buckets[-1][0] == now:
                self._buckets[-1][1] += 1
            else:
                self._buckets.append([now, 1])
            self._total += 1
            if self._total > self.limit and not self.tripped:
                self.tripped = True
                return True
            return False

    def _trim(self):
        now = int(self.clock() * 10)
        while self._buckets and self._buckets[0][0] <= now - 10:
            self._total -= self._buckets.popleft()[1]
        return now

    def reset(self):
        """Arm the breaker again (a resume): it trips again on the next pass over the limit."""
        with self._lock:
            self.tripped = False

    def state(self):
        """Return {"limit", "rate" (child orders in the last second), "tripped"}."""
        with self._lock:
            self._trim()
            return {"limit": self.limit, "rate": self._total, "tripped": self.tripped}
