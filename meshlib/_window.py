"""Calls and one kind of event over a sliding time window, kept in ten buckets.

The retry budget (calls and retries) and the breaker (calls and failures)
both count this way. Not locked: each owner holds its own lock around it.
"""

from __future__ import annotations

__all__ = ["SLOTS", "WindowCounts"]

SLOTS = 10  # a tenth of the window is resolution enough


class WindowCounts:
    """Counts of `calls` and of `events` over the last `window` seconds, per bucket.

    `events` are what the owner weighs against the calls: retries for the retry
    budget, failures for the breaker. Hot callers may skip `slot` while
    ``now < ends``: the newest bucket, `newest`, is still the one to count in.
    """

    __slots__ = ("_epoch", "_width", "calls", "ends", "events", "newest")

    def __init__(self, window: float) -> None:
        self._width = window / SLOTS
        self.calls = [0] * SLOTS
        self.events = [0] * SLOTS
        self._epoch = -1  # the newest bucket, in bucket widths since the clock's zero
        self.newest = 0  # its index in `calls` and `events`
        self.ends = float("-inf")  # when it stops being the newest

    def slot(self, now: float) -> int:
        """Return the bucket for `now`, emptying the buckets that left the window."""
        if now < self.ends:  # the common case: still in the newest bucket
            return self.newest
        epoch = int(now // self._width)
        # Threads read the clock before taking their lock, so a slightly older
        # reading may arrive late: count it in the newest bucket, never rewind.
        # (`ends` is a float product, so a reading just under it may land here too.)
        if epoch <= self._epoch:
            return self.newest
        stale = min(epoch - self._epoch, SLOTS) if self._epoch >= 0 else SLOTS
        for offset in range(stale):
            index = (epoch - offset) % SLOTS
            self.calls[index] = 0
            self.events[index] = 0
        self._epoch = epoch
        self.newest = epoch % SLOTS
        self.ends = (epoch + 1) * self._width
        return self.newest

    def totals(self, now: float) -> tuple[int, int]:
        """Return (calls, events) over the window ending at `now`."""
        self.slot(now)
        return sum(self.calls), sum(self.events)

    def clear(self) -> None:
        """Forget everything counted."""
        self.calls = [0] * SLOTS
        self.events = [0] * SLOTS
        self._epoch = -1
        self.ends = float("-inf")
