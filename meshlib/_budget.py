"""The retry budget of one destination: retries stay a fraction of calls."""

from __future__ import annotations

import threading

from ._policy import Budget

__all__ = ["RetryBudget"]

_SLOTS = 10  # the window is counted in ten buckets: ttl/10 resolution is plenty


class RetryBudget:
    """Count calls and retries over a sliding window and ration retries.

    A retry is allowed while ``retries < ratio * calls + min_per_second * ttl``
    over the last `ttl` seconds. Thread-safe; the lock is held for a few
    arithmetic operations, never across I/O.
    """

    __slots__ = (
        "__weakref__",
        "_calls",
        "_epoch",
        "_lock",
        "_reserve",
        "_retries",
        "_width",
        "settings",
    )

    def __init__(self, settings: Budget) -> None:
        self.settings = settings
        self._width = settings.ttl / _SLOTS
        self._reserve = settings.min_per_second * settings.ttl
        self._calls = [0] * _SLOTS
        self._retries = [0] * _SLOTS
        self._epoch = -1  # index of the newest bucket, in units of `_width` since clock zero
        self._lock = threading.Lock()

    def _advance(self, now: float) -> int:
        # Threads read the clock before taking the lock, so a slightly older
        # reading may arrive late: count it in the newest bucket, never rewind.
        epoch = max(int(now // self._width), self._epoch)
        if epoch != self._epoch:
            # Clear the buckets that fell out of the window since the last visit.
            stale = min(epoch - self._epoch, _SLOTS) if self._epoch >= 0 else _SLOTS
            for offset in range(stale):
                slot = (epoch - offset) % _SLOTS
                self._calls[slot] = 0
                self._retries[slot] = 0
            self._epoch = epoch
        return epoch % _SLOTS

    def deposit(self, now: float) -> None:
        """Record one call (its first attempt)."""
        epoch = int(now // self._width)
        with self._lock:
            if epoch == self._epoch:
                self._calls[epoch % _SLOTS] += 1
            else:
                self._calls[self._advance(now)] += 1

    def try_withdraw(self, now: float) -> bool:
        """Record one retry and return True if the budget allows it, else False."""
        with self._lock:
            slot = self._advance(now)
            allowed = self.settings.ratio * sum(self._calls) + self._reserve
            if sum(self._retries) + 1 > allowed:
                return False
            self._retries[slot] += 1
            return True

    def snapshot(self, now: float) -> tuple[int, int]:
        """Return (calls, retries) counted in the current window."""
        with self._lock:
            self._advance(now)
            return sum(self._calls), sum(self._retries)
