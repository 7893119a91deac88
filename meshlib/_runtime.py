"""The process-wide clock, random source and test switch.

Every timer in meshlib reads `clock` (monotonic, never wall time) and every
random draw comes from `rng`, so tests can swap both (`meshlib.testing`).
"""

from __future__ import annotations

import random
import time
from typing import Protocol

import anyio

__all__ = ["Clock", "MonotonicClock", "runtime"]


class Clock(Protocol):
    """A monotonic clock that also knows how to wait."""

    def now(self) -> float:
        """Return monotonic seconds."""

    def sleep(self, seconds: float) -> None:
        """Block the thread for `seconds`."""

    async def asleep(self, seconds: float) -> None:
        """Suspend the task for `seconds`."""


class MonotonicClock:
    """The real clock: `time.monotonic`, `time.sleep` and `anyio.sleep`."""

    now = staticmethod(time.monotonic)
    sleep = staticmethod(time.sleep)

    async def asleep(self, seconds: float) -> None:
        await anyio.sleep(seconds)


class Runtime:
    """What the pipeline reads for time and chance; one per process."""

    __slots__ = ("clock", "rng", "skip_waits")

    def __init__(self) -> None:
        self.clock: Clock = MonotonicClock()
        self.rng: random.Random = random.Random()
        # meshlib.testing's switch: backoff waits return at once.
        self.skip_waits = False


runtime = Runtime()
