"""The bulkhead of one destination: at most N calls in flight, a bounded queue.

Sync and async callers of the same destination share one limit, so a
waiter is woken the way it waits: a threading.Event for a thread, an anyio
Event (set on its own event loop) for a task. A freed slot is handed to the
first waiter directly, so a newcomer cannot overtake the queue.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass

import anyio
import anyio.from_thread
import anyio.lowlevel

from ._policy import Bulkhead

__all__ = ["BulkheadSnapshot", "ConcurrencyLimit"]


@dataclass(frozen=True, slots=True)
class BulkheadSnapshot:
    """A bulkhead's counts at one moment: calls in flight and calls waiting."""

    destination: str
    in_flight: int
    queued: int
    max_concurrent: int
    max_queued: int


class _Waiter:
    __slots__ = ("event", "granted", "thread", "token")

    def __init__(self, event: threading.Event | anyio.Event, token: object = None) -> None:
        self.event = event
        self.token = token
        self.thread = threading.get_ident()
        self.granted = False

    def wake(self) -> None:
        event = self.event
        if isinstance(event, threading.Event) or self.thread == threading.get_ident():
            event.set()
        else:
            # Another thread frees the slot of a task: set its Event on its own loop.
            anyio.from_thread.run_sync(event.set, token=self.token)  # type: ignore[arg-type]


class ConcurrencyLimit:
    """One destination's slots; thread-safe, never holds its lock across a call."""

    __slots__ = ("__weakref__", "_limit", "_lock", "_waiters", "in_flight", "label", "settings")

    def __init__(self, settings: Bulkhead, label: str) -> None:
        self.settings = settings
        self.label = label
        self.in_flight = 0
        self._limit = settings.max_concurrent
        self._waiters: deque[_Waiter] = deque()
        self._lock = threading.Lock()

    def try_acquire(self) -> bool | None:
        """Take a slot if one is free: True. None: the caller may queue. False: full."""
        lock = self._lock
        lock.acquire()  # rather than `with`: half the cost, on every request
        try:
            if self.in_flight < self._limit and not self._waiters:
                self.in_flight += 1
                return True
            return None if len(self._waiters) < self.settings.max_queued else False
        finally:
            lock.release()

    def acquire(self, within: float | None) -> bool:
        """Wait up to `within` seconds (None: no limit) for a slot; True if taken.

        False when the slot did not come in time or the queue is already full.
        """
        waiter = self._enqueue(threading.Event())
        if isinstance(waiter, bool):
            return waiter
        event = waiter.event
        assert isinstance(event, threading.Event)
        waited = False
        try:
            event.wait(within)
            waited = True
        finally:
            taken = self._leave(waiter)
            if taken and not waited:  # interrupted after the slot was granted: pass it on
                self.release()
        return taken

    async def acquire_async(self, within: float | None) -> bool:
        """Wait up to `within` seconds for a slot without blocking the event loop."""
        waiter = self._enqueue(anyio.Event(), anyio.lowlevel.current_token())
        if isinstance(waiter, bool):
            return waiter
        event = waiter.event
        assert isinstance(event, anyio.Event)
        waited = False
        try:
            with anyio.move_on_after(within):
                await event.wait()
            waited = True
        finally:
            taken = self._leave(waiter)
            if taken and not waited:  # cancelled after the slot was granted: pass it on
                self.release()
        return taken

    def release(self) -> None:
        """Free a slot, handing it to the first waiter if any."""
        lock = self._lock
        lock.acquire()  # rather than `with`: half the cost, on every request
        try:
            if not self._waiters:
                self.in_flight -= 1
                return
            waiter = self._waiters.popleft()
            waiter.granted = True
        finally:
            lock.release()
        waiter.wake()

    def snapshot(self) -> BulkheadSnapshot:
        """Return the calls in flight and waiting."""
        with self._lock:
            return BulkheadSnapshot(
                self.label,
                self.in_flight,
                len(self._waiters),
                self.settings.max_concurrent,
                self.settings.max_queued,
            )

    def _enqueue(
        self, event: threading.Event | anyio.Event, token: object = None
    ) -> _Waiter | bool:
        """Take a free slot (True), refuse when the queue is full (False), or queue a waiter."""
        with self._lock:
            if self.in_flight < self._limit and not self._waiters:
                self.in_flight += 1
                return True
            if len(self._waiters) >= self.settings.max_queued:
                return False
            waiter = _Waiter(event, token)
            self._waiters.append(waiter)
            return waiter

    def _leave(self, waiter: _Waiter) -> bool:
        with self._lock:
            if waiter.granted:
                return True
            self._waiters.remove(waiter)
            return False
