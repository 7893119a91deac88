"""The retry budget of one destination: retries stay a fraction of calls."""

from __future__ import annotations

import threading

from ._policy import Budget
from ._window import WindowCounts

__all__ = ["BudgetState"]


class BudgetState:
    """Count calls and retries over a sliding window and ration retries.

    A retry is allowed while ``retries + 1 <= ratio * calls + min_per_second * ttl``
    over the last `ttl` seconds. Thread-safe; the lock is held for a few
    arithmetic operations, never across I/O.
    """

    __slots__ = ("__weakref__", "_counts", "_lock", "_reserve", "settings")

    def __init__(self, settings: Budget) -> None:
        self.settings = settings
        self._reserve = settings.min_per_second * settings.ttl
        self._counts = WindowCounts(settings.ttl)  # events: retries
        self._lock = threading.Lock()

    def deposit(self, now: float) -> None:
        """Record one call (its first attempt)."""
        counts = self._counts
        lock = self._lock
        # acquire/release rather than `with`: half the cost, on every request.
        lock.acquire()
        try:
            counts.calls[counts.newest if now < counts.ends else counts.slot(now)] += 1
        finally:
            lock.release()

    def try_withdraw(self, now: float) -> bool:
        """Record one retry and return True if the budget allows it, else False."""
        counts = self._counts
        with self._lock:
            slot = counts.slot(now)
            calls, retries = sum(counts.calls), sum(counts.events)
            if retries + 1 > self.settings.ratio * calls + self._reserve:
                return False
            counts.events[slot] += 1
            return True

    def snapshot(self, now: float) -> tuple[int, int]:
        """Return (calls, retries) counted in the current window."""
        with self._lock:
            return self._counts.totals(now)


#: The name `_mesh` and `_retry` still use, until their rewrite (issue 14) renames it.
