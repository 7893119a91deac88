"""The bulkhead of one destination: at most N calls in flight, a bounded queue.

Sync and async callers of the same destination share one limit, so a
waiter is woken the way it waits: a threading.Event for a thread, a future
on its own event loop for an asyncio task (the lightest thing to wait on:
thousands may queue), an anyio Event for a task on another backend. A freed
slot is handed to the first waiter directly, so a newcomer cannot overtake
the queue.
"""

from __future__ import annotations

import asyncio
import enum
import threading
from collections import deque
from dataclasses import dataclass
from typing import cast

import anyio
import anyio.from_thread
import anyio.lowlevel

from ._policy import Bulkhead

__all__ = ["FULL", "MAY_QUEUE", "TAKEN", "BulkheadSnapshot", "BulkheadState", "Slot"]


class Slot(enum.Enum):
    """What `BulkheadState.try_acquire` says: one of three outcomes."""

    TAKEN = "taken"  # a slot is the caller's until it calls release()
    MAY_QUEUE = "may queue"  # none is free, but the queue has room: the caller may wait
    FULL = "full"  # none is free and the queue is full: refuse the call


TAKEN, MAY_QUEUE, FULL = Slot.TAKEN, Slot.MAY_QUEUE, Slot.FULL


@dataclass(frozen=True, slots=True)
class BulkheadSnapshot:
    """A bulkhead's counts at one moment: calls in flight and calls waiting."""

    destination: str
    in_flight: int
    queued: int
    max_concurrent: int
    max_queued: int


_Signal = threading.Event | anyio.Event | asyncio.Future[bool]


def _grant(future: asyncio.Future[bool], granted: bool = True) -> None:
    # On the waiter's loop; the future is done already if its task was cancelled.
    if not future.done():
        future.set_result(granted)


class _Waiter:
    __slots__ = ("event", "granted", "thread", "token")

    def __init__(self, event: _Signal, token: object = None) -> None:
        self.event = event
        self.token = token  # the waiter's event loop (asyncio) or anyio token
        self.thread = threading.get_ident()
        self.granted = False

    def wake(self) -> None:
        event = self.event
        here = self.thread == threading.get_ident()
        if isinstance(event, threading.Event):
            event.set()
        elif isinstance(event, asyncio.Future):
            if here:
                _grant(event)
            else:  # another thread frees the slot of a task: resolve it on its loop
                cast(asyncio.AbstractEventLoop, self.token).call_soon_threadsafe(_grant, event)
        elif here:
            event.set()
        else:
            anyio.from_thread.run_sync(event.set, token=self.token)  # type: ignore[arg-type]


class BulkheadState:
    """One destination's slots; thread-safe, never holds its lock across a call."""

    __slots__ = ("__weakref__", "_limit", "_lock", "_waiters", "in_flight", "label", "settings")

    def __init__(self, settings: Bulkhead, label: str) -> None:
        self.settings = settings
        self.label = label
        self.in_flight = 0
        self._limit = settings.max_concurrent
        self._waiters: deque[_Waiter] = deque()
        self._lock = threading.Lock()

    def try_acquire(self) -> Slot:
        """Take a slot if one is free (TAKEN); else say whether the caller may queue."""
        lock = self._lock
        lock.acquire()  # rather than `with`: half the cost, on every request
        try:
            if self.in_flight < self._limit and not self._waiters:
                self.in_flight += 1
                return TAKEN
            return MAY_QUEUE if len(self._waiters) < self.settings.max_queued else FULL
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
            taken = self._leave(waiter, waited)
        return taken

    async def acquire_async(self, within: float | None) -> bool:
        """Wait up to `within` seconds for a slot without blocking the event loop."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # another backend (trio): anyio's primitives
            return await self._acquire_anyio(within)
        waiter = self._enqueue(loop.create_future(), loop)
        if isinstance(waiter, bool):
            return waiter
        future = cast("asyncio.Future[bool]", waiter.event)
        # Running out of time resolves the future too; `_leave` says what came first.
        timer = None if within is None else loop.call_later(within, _grant, future, False)
        waited = False
        try:
            await future
            waited = True
        finally:
            if timer is not None:
                timer.cancel()
            taken = self._leave(waiter, waited)
        return taken

    async def _acquire_anyio(self, within: float | None) -> bool:
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
            taken = self._leave(waiter, waited)
        return taken

    def release(self) -> None:
        """Free a slot, handing it to the first waiter if any."""
        lock = self._lock
        while True:
            lock.acquire()  # rather than `with`: half the cost, on every request
            try:
                if not self._waiters:
                    self.in_flight -= 1
                    return
                waiter = self._waiters.popleft()
                waiter.granted = True
            finally:
                lock.release()
            try:
                waiter.wake()
                return
            except RuntimeError:
                # The waiter's event loop is closed: nobody is left to take the slot,
                # so it goes to the next in line rather than being lost.
                continue

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

    def _enqueue(self, event: _Signal, token: object = None) -> _Waiter | bool:
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

    def _leave(self, waiter: _Waiter, waited: bool) -> bool:
        """End a wait: True if the slot is the caller's.

        A waiter interrupted (cancelled, Ctrl-C) after its slot was granted
        passes the slot on rather than leaking it.
        """
        with self._lock:
            if not waiter.granted:
                self._waiters.remove(waiter)
                return False
        if not waited:
            self.release()
            return False
        return True


#: The name `_mesh` and `_pipeline` still use, until their rewrite (issue 14) renames it.
