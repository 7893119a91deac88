"""A destination's recent latencies in fixed memory: a log-linear histogram over a window.

Buckets follow HdrHistogram's layout at low precision: every power of two from
2⁻¹⁴ s (61 µs) to 2⁷ s (128 s) is split into `SUB` equal parts, so a bucket is
at most 1/`SUB` of its lower bound wide and a percentile read from it (its
midpoint) is within 12.5% of the true value (`SUB` = 4). Faster answers fall
in the first bucket, slower ones in the last. The window slides in `SLOTS`
steps, as the breaker's and the budget's counts do: a percentile covers the
last `window` seconds, give or take one step.

Memory is fixed: `SLOTS` × `BUCKETS` integers per destination, whatever the
traffic. Adding a latency is an index computation and one increment under a
lock held for nothing else.
"""

from __future__ import annotations

import math
import threading

__all__ = ["BUCKETS", "SKETCH", "LatencySketch"]

SUB = 4  # linear sub-buckets per power of two
_LOW = -14  # 2**-14 s, about 61 µs: the first bucket's upper edge
_HIGH = 7  # 2**7 s = 128 s: the last bucket's lower edge
BUCKETS = (_HIGH - _LOW) * SUB + 2  # plus one below the range and one above
SLOTS = 6
WINDOW = 60.0
_FLOOR = 2.0**_LOW
_frexp = math.frexp

#: What the status page says the sketch is.
SKETCH = (
    f"log-linear histogram, {SUB} buckets per power of two from 61µs to 128s "
    f"(within 12.5%), over a sliding {WINDOW:g}s window in {SLOTS} steps"
)


def _midpoint(index: int) -> float:
    if index == 0:
        return 2.0**_LOW / 2
    if index == BUCKETS - 1:
        return 2.0**_HIGH
    octave, part = divmod(index - 1, SUB)
    low = 2.0 ** (octave + _LOW)
    return low * (1 + (part + 0.5) / SUB)


class LatencySketch:
    """Latencies of one destination over the last `window` seconds; thread-safe."""

    __slots__ = ("__weakref__", "_epoch", "_lock", "_slots", "_width", "ends", "newest", "window")

    def __init__(self, window: float = WINDOW) -> None:
        self.window = window
        self._width = window / SLOTS
        self._slots = [[0] * BUCKETS for _ in range(SLOTS)]
        self._epoch = -1
        self.newest = 0
        self.ends = -math.inf
        self._lock = threading.Lock()

    def add(self, seconds: float, now: float) -> None:
        """Count one latency of `seconds`, measured at `now` (monotonic)."""
        # seconds = mantissa × 2**exponent, mantissa in [0.5, 1): the power of two
        # picks the octave, the mantissa the linear part within it.
        if seconds < _FLOOR:
            index = 0
        else:
            mantissa, exponent = _frexp(seconds)
            index = (exponent - 1 - _LOW) * SUB + int((mantissa - 0.5) * 2 * SUB) + 1
            if index >= BUCKETS:
                index = BUCKETS - 1
        lock = self._lock
        lock.acquire()  # rather than `with`: half the cost, on every measured request
        try:
            slot = self.newest if now < self.ends else self._rotate(now)
            self._slots[slot][index] += 1
        finally:
            lock.release()

    def _rotate(self, now: float) -> int:
        epoch = int(now // self._width)
        if epoch <= self._epoch:  # a late reading from another thread: never rewind
            return self.newest
        stale = min(epoch - self._epoch, SLOTS) if self._epoch >= 0 else SLOTS
        for offset in range(stale):
            self._slots[(epoch - offset) % SLOTS] = [0] * BUCKETS
        self._epoch = epoch
        self.newest = epoch % SLOTS
        self.ends = (epoch + 1) * self._width
        return self.newest

    def summary(self, now: float) -> tuple[int, float | None, float | None]:
        """Return (count, p50, p99) over the window ending at `now`; None when empty."""
        with self._lock:
            self._rotate(now)
            totals = [sum(column) for column in zip(*self._slots, strict=True)]
        count = sum(totals)
        if count == 0:
            return 0, None, None
        return count, _quantile(totals, count, 0.50), _quantile(totals, count, 0.99)


def _quantile(totals: list[int], count: int, q: float) -> float:
    rank = max(1, math.ceil(q * count))  # the rank-th smallest latency
    seen = 0
    for index, n in enumerate(totals):
        seen += n
        if seen >= rank:
            return _midpoint(index)
    return _midpoint(BUCKETS - 1)  # pragma: no cover - seen reaches count
