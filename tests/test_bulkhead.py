"""The bulkhead: slots, a bounded FIFO queue, threads and tasks sharing one limit."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable

import anyio
import anyio.lowlevel
import anyio.to_thread
import httpx
import pytest

from meshlib import Bulkhead, BulkheadSnapshot, ConfigError, Mesh, Policy
from meshlib._bulkhead import FULL, MAY_QUEUE, TAKEN, BulkheadState

LABEL = "http://orders.internal:80"
# Seconds a waiter may wait in tests where it is expected to get through, and the longest
# a test waits for a thread or task to get somewhere: only a failing run waits this long.
PATIENCE = 30.0


def limit(max_concurrent: int, max_queued: int = 0) -> BulkheadState:
    return BulkheadState(Bulkhead(max_concurrent=max_concurrent, max_queued=max_queued), LABEL)


def wait_until(condition: Callable[[], bool], timeout: float = PATIENCE) -> None:
    """Poll `condition` from a thread until it holds; fail after `timeout` seconds."""
    end = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < end, "timed out waiting for the bulkhead"
        time.sleep(0.001)


async def await_until(condition: Callable[[], bool]) -> None:
    """Let other tasks (and threads) run until `condition` holds; fail after PATIENCE seconds."""
    with anyio.fail_after(PATIENCE):
        while not condition():
            await anyio.lowlevel.checkpoint()


# --- try_acquire and release ------------------------------------------------------------------


def test_try_acquire_takes_slots_then_refuses_without_a_queue() -> None:
    lim = limit(2)
    assert lim.try_acquire() is TAKEN
    assert lim.try_acquire() is TAKEN
    assert lim.try_acquire() is FULL
    assert lim.snapshot() == BulkheadSnapshot(LABEL, 2, 0, 2, 0)
    lim.release()
    assert lim.snapshot().in_flight == 1
    assert lim.try_acquire() is TAKEN
    assert lim.try_acquire() is FULL


def test_try_acquire_says_may_queue_while_the_queue_has_room() -> None:
    lim = limit(1, max_queued=1)
    assert lim.try_acquire() is TAKEN
    assert lim.try_acquire() is MAY_QUEUE  # full, but the caller may wait
    assert lim.snapshot() == BulkheadSnapshot(LABEL, 1, 0, 1, 1)  # asking does not queue


def test_releasing_every_slot_returns_to_zero() -> None:
    lim = limit(3)
    for _ in range(3):
        assert lim.try_acquire() is TAKEN
    for expected in (2, 1, 0):
        lim.release()
        assert lim.snapshot().in_flight == expected
    assert lim.snapshot().queued == 0


def test_acquire_takes_a_free_slot_at_once() -> None:
    lim = limit(1, max_queued=1)
    assert lim.acquire(0.0) is True
    assert lim.snapshot().in_flight == 1


# --- threads ----------------------------------------------------------------------------------


class Waiters:
    """Threads that queue for a slot one at a time and note the order they got through."""

    def __init__(self, lim: BulkheadState) -> None:
        self.lim = lim
        self.order: list[int] = []
        self.results: dict[int, bool] = {}
        self.threads: list[threading.Thread] = []
        self._lock = threading.Lock()

    def start(self, name: int) -> None:
        queued = self.lim.snapshot().queued
        assert self.lim.try_acquire() is MAY_QUEUE  # what the pipeline asks before it waits

        def run() -> None:
            taken = self.lim.acquire(PATIENCE)
            with self._lock:
                self.results[name] = taken
                if taken:
                    self.order.append(name)

        thread = threading.Thread(target=run, daemon=True)
        self.threads.append(thread)
        thread.start()
        wait_until(lambda: self.lim.snapshot().queued == queued + 1)  # in line before the next

    def join(self) -> None:
        for thread in self.threads:
            thread.join(timeout=PATIENCE)
            assert not thread.is_alive()


def test_threads_queue_in_fifo_order_and_a_fifth_is_refused() -> None:
    lim = limit(2, max_queued=2)
    assert lim.try_acquire() is TAKEN
    assert lim.try_acquire() is TAKEN
    waiters = Waiters(lim)
    waiters.start(1)
    waiters.start(2)
    assert lim.snapshot() == BulkheadSnapshot(LABEL, 2, 2, 2, 2)
    assert lim.try_acquire() is FULL  # two in flight, two waiting: the fifth is refused
    lim.release()
    wait_until(lambda: len(waiters.order) == 1)
    assert waiters.order == [1]
    assert lim.snapshot() == BulkheadSnapshot(LABEL, 2, 1, 2, 2)  # handed over, not freed
    assert lim.try_acquire() is MAY_QUEUE  # a newcomer cannot overtake waiter 2
    lim.release()
    waiters.join()
    assert waiters.order == [1, 2]
    assert lim.snapshot() == BulkheadSnapshot(LABEL, 2, 0, 2, 2)
    lim.release()
    lim.release()
    assert lim.snapshot().in_flight == 0


def test_many_thread_waiters_get_through_first_come_first_served() -> None:
    lim = limit(1, max_queued=6)
    assert lim.try_acquire() is TAKEN
    waiters = Waiters(lim)
    for name in range(6):
        waiters.start(name)
    for through in range(1, 7):
        lim.release()  # the slot passes to the next in line
        wait_until(lambda through=through: len(waiters.order) == through)  # type: ignore[misc]
    waiters.join()
    assert waiters.order == list(range(6))
    lim.release()
    assert lim.snapshot() == BulkheadSnapshot(LABEL, 0, 0, 1, 6)


def test_a_thread_waiter_that_times_out_leaves_the_queue() -> None:
    lim = limit(1, max_queued=2)
    assert lim.try_acquire() is TAKEN
    seen_queued: list[int] = []
    real_wait = threading.Event.wait
    here = threading.get_ident()

    def wait(event: threading.Event, timeout: float | None = None) -> bool:
        if threading.get_ident() == here:
            seen_queued.append(lim.snapshot().queued)  # while it waits, it is in the queue
        return real_wait(event, timeout)

    # In this thread, so that no poll from another can miss the 50 ms it spends queued.
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(threading.Event, "wait", wait)
        assert lim.acquire(0.05) is False  # the queue had room: it timed out
    assert seen_queued == [1]
    assert lim.snapshot() == BulkheadSnapshot(LABEL, 1, 0, 1, 2)
    lim.release()  # nobody is waiting any more: the slot is free, not handed to the leaver
    assert lim.snapshot().in_flight == 0
    assert lim.try_acquire() is TAKEN


def test_in_flight_never_exceeds_max_concurrent_under_threads() -> None:
    lim = limit(3, max_queued=100)
    lock = threading.Lock()
    inside = 0
    most = 0
    through = 0
    barrier = threading.Barrier(16)

    def worker() -> None:
        nonlocal inside, most, through
        barrier.wait(timeout=PATIENCE)
        for _ in range(5):
            taken = lim.try_acquire()
            assert taken is not FULL
            if taken is MAY_QUEUE:
                assert lim.acquire(PATIENCE)
            with lock:
                inside += 1
                most = max(most, inside, lim.snapshot().in_flight)
            time.sleep(0.001)
            with lock:
                inside -= 1
                through += 1
            lim.release()

    threads = [threading.Thread(target=worker) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=PATIENCE)
    assert through == 80
    assert 1 <= most <= 3
    assert lim.snapshot() == BulkheadSnapshot(LABEL, 0, 0, 3, 100)


def test_the_queue_never_holds_more_than_max_queued() -> None:
    # Two threads are both told "may queue" while one place is free, then both
    # queue (the pipeline's try_acquire-then-acquire): max_queued=1 must still hold.
    lim = limit(1, max_queued=1)
    assert lim.try_acquire() is TAKEN
    both_asked = threading.Barrier(2)
    results: list[bool] = []
    most_queued = 0

    def caller() -> None:
        answer = lim.try_acquire()
        both_asked.wait(timeout=PATIENCE)
        if answer is MAY_QUEUE:
            results.append(lim.acquire(0.3))

    threads = [threading.Thread(target=caller, daemon=True) for _ in range(2)]
    for thread in threads:
        thread.start()
    end = time.monotonic() + 0.2
    while time.monotonic() < end:
        most_queued = max(most_queued, lim.snapshot().queued)
        time.sleep(0.005)
    for thread in threads:
        thread.join(timeout=PATIENCE)
    assert len(results) == 2
    assert most_queued <= 1, f"{most_queued} callers queued with max_queued=1"
    lim.release()
    assert lim.snapshot() == BulkheadSnapshot(LABEL, 0, 0, 1, 1)


# --- tasks ------------------------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])
async def test_tasks_queue_in_fifo_order() -> None:
    lim = limit(1, max_queued=4)
    assert lim.try_acquire() is TAKEN
    order: list[int] = []
    done = {name: anyio.Event() for name in range(4)}

    async def call(name: int) -> None:
        assert lim.try_acquire() is MAY_QUEUE
        assert await lim.acquire_async(PATIENCE)
        order.append(name)
        await done[name].wait()
        lim.release()

    async with anyio.create_task_group() as tg:
        for name in range(4):
            tg.start_soon(call, name)
            await await_until(lambda name=name: lim.snapshot().queued == name + 1)  # type: ignore[misc]
        assert lim.try_acquire() is FULL
        lim.release()
        for name in range(4):
            await await_until(lambda name=name: len(order) == name + 1)  # type: ignore[misc]
            assert lim.snapshot().in_flight == 1
            done[name].set()
    assert order == [0, 1, 2, 3]
    assert lim.snapshot() == BulkheadSnapshot(LABEL, 0, 0, 1, 4)


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])
async def test_a_task_whose_wait_runs_out_leaves_the_queue() -> None:
    lim = limit(1, max_queued=1)
    assert lim.try_acquire() is TAKEN
    assert lim.try_acquire() is MAY_QUEUE
    assert await lim.acquire_async(0.05) is False
    assert lim.snapshot() == BulkheadSnapshot(LABEL, 1, 0, 1, 1)
    lim.release()
    assert lim.snapshot().in_flight == 0


@pytest.mark.anyio
async def test_a_cancelled_waiting_task_leaves_the_queue_without_leaking_a_slot() -> None:
    lim = limit(1, max_queued=2)
    assert lim.try_acquire() is TAKEN
    waiting = asyncio.create_task(lim.acquire_async(PATIENCE))
    await await_until(lambda: lim.snapshot().queued == 1)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert lim.snapshot() == BulkheadSnapshot(LABEL, 1, 0, 1, 2)
    lim.release()
    assert lim.snapshot().in_flight == 0
    assert lim.try_acquire() is TAKEN
    lim.release()
    assert lim.snapshot().in_flight == 0


@pytest.mark.anyio
async def test_a_task_cancelled_just_after_being_granted_passes_the_slot_on() -> None:
    lim = limit(1, max_queued=2)
    assert lim.try_acquire() is TAKEN
    first = asyncio.create_task(lim.acquire_async(PATIENCE))
    await await_until(lambda: lim.snapshot().queued == 1)
    second = asyncio.create_task(lim.acquire_async(PATIENCE))
    await await_until(lambda: lim.snapshot().queued == 2)
    lim.release()  # the slot goes to `first`...
    first.cancel()  # ...which is cancelled before it can run
    with pytest.raises(asyncio.CancelledError):
        await first
    with anyio.fail_after(PATIENCE):
        assert await second is True  # the slot moved on to the next in line
    assert lim.snapshot() == BulkheadSnapshot(LABEL, 1, 0, 1, 2)
    lim.release()
    assert lim.snapshot().in_flight == 0


@pytest.mark.anyio
async def test_a_task_cancelled_after_being_granted_frees_the_slot_when_nobody_waits() -> None:
    lim = limit(1, max_queued=1)
    assert lim.try_acquire() is TAKEN
    waiting = asyncio.create_task(lim.acquire_async(PATIENCE))
    await await_until(lambda: lim.snapshot().queued == 1)
    lim.release()
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert lim.snapshot() == BulkheadSnapshot(LABEL, 0, 0, 1, 1)


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])
async def test_a_cancelled_waiting_task_gives_its_place_up_on_any_backend() -> None:
    # asyncio tasks wait on a future, other backends on anyio's Event: same contract.
    lim = limit(1, max_queued=2)
    assert lim.try_acquire() is TAKEN
    async with anyio.create_task_group() as tg:
        tg.start_soon(lim.acquire_async, PATIENCE)
        await await_until(lambda: lim.snapshot().queued == 1)
        tg.cancel_scope.cancel()
    assert lim.snapshot() == BulkheadSnapshot(LABEL, 1, 0, 1, 2)
    lim.release()
    assert lim.snapshot().in_flight == 0


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])
async def test_a_worker_thread_releasing_wakes_a_task_on_any_backend() -> None:
    lim = limit(1, max_queued=1)
    assert lim.try_acquire() is TAKEN
    got: list[bool] = []

    async def wait() -> None:
        got.append(await lim.acquire_async(PATIENCE))

    async with anyio.create_task_group() as tg:
        tg.start_soon(wait)
        await await_until(lambda: lim.snapshot().queued == 1)
        with anyio.fail_after(PATIENCE):
            await anyio.to_thread.run_sync(lim.release)
    assert got == [True]
    assert lim.snapshot() == BulkheadSnapshot(LABEL, 1, 0, 1, 1)


# --- threads and tasks together ---------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("how", ["to_thread", "thread"])
async def test_a_thread_releasing_wakes_a_task_on_its_own_loop(how: str) -> None:
    lim = limit(1, max_queued=1)
    assert lim.try_acquire() is TAKEN
    waiting = asyncio.create_task(lim.acquire_async(600.0))
    await await_until(lambda: lim.snapshot().queued == 1)
    if how == "to_thread":
        await asyncio.to_thread(lim.release)
    else:
        worker = threading.Thread(target=lim.release, daemon=True)
        worker.start()
    # The wake-up, not the waiter's own 10-minute limit, ends the wait.
    with anyio.fail_after(PATIENCE):
        assert await waiting is True
    if how == "thread":
        worker.join(timeout=PATIENCE)
        assert not worker.is_alive()
    assert lim.snapshot() == BulkheadSnapshot(LABEL, 1, 0, 1, 1)
    lim.release()
    assert lim.snapshot().in_flight == 0


@pytest.mark.anyio
async def test_a_task_releasing_wakes_a_waiting_thread() -> None:
    lim = limit(1, max_queued=1)
    assert lim.try_acquire() is TAKEN
    got: list[bool] = []
    worker = threading.Thread(target=lambda: got.append(lim.acquire(PATIENCE)), daemon=True)
    worker.start()
    await await_until(lambda: lim.snapshot().queued == 1)
    lim.release()
    await anyio.to_thread.run_sync(worker.join, PATIENCE)
    assert got == [True]
    assert lim.snapshot() == BulkheadSnapshot(LABEL, 1, 0, 1, 1)


# --- inside a Mesh ----------------------------------------------------------------------------


def test_mesh_bulkheads_lists_the_bulkheads_in_use() -> None:
    mesh = Mesh(default=Policy(bulkhead=Bulkhead(max_concurrent=2, max_queued=1)))
    assert mesh.bulkheads() == []
    a = mesh._plans.for_url(None, httpx.URL("http://a.internal/")).bulkhead
    same = mesh._plans.for_url(None, httpx.URL("http://A.internal:80/x")).bulkhead
    b = mesh._plans.for_url(None, httpx.URL("http://b.internal/")).bulkhead
    assert a is not None
    assert b is not None
    assert a is same
    assert a is not b
    assert a.try_acquire() is TAKEN
    snaps = {s.destination: s for s in mesh.bulkheads()}
    assert snaps == {
        "http://a.internal:80": BulkheadSnapshot("http://a.internal:80", 1, 0, 2, 1),
        "http://b.internal:80": BulkheadSnapshot("http://b.internal:80", 0, 0, 2, 1),
    }


# --- validation -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [("max_concurrent", 0), ("max_concurrent", True), ("max_concurrent", 1.5), ("max_queued", -1)],
)
def test_bad_bulkhead_settings_name_the_field_and_value(field: str, value: object) -> None:
    with pytest.raises(ConfigError) as caught:
        Bulkhead(**{field: value})  # type: ignore[arg-type]
    message = str(caught.value)
    assert f"Bulkhead.{field}" in message
    assert repr(value) in message


def test_a_bulkhead_accepts_one_slot_and_no_queue() -> None:
    assert Bulkhead(max_concurrent=1, max_queued=0) == Bulkhead(1, 0)
    assert Bulkhead() == Bulkhead(max_concurrent=1000, max_queued=0)


def test_a_slot_meant_for_a_task_whose_loop_is_gone_goes_to_the_next_waiter() -> None:
    lim = limit(1, max_queued=2)
    assert lim.try_acquire() is TAKEN

    # A task queued on a loop that was then closed under it (its thread is gone).
    loop = asyncio.new_event_loop()
    lim._enqueue(loop.create_future(), loop)
    loop.close()
    got: list[bool] = []
    worker = threading.Thread(target=lambda: got.append(lim.acquire(PATIENCE)), daemon=True)
    worker.start()
    wait_until(lambda: lim.snapshot().queued == 2)
    released = threading.Thread(target=lim.release)  # another thread: wakes via the dead loop
    released.start()
    released.join(PATIENCE)
    worker.join(PATIENCE)
    assert got == [True]
    assert lim.snapshot() == BulkheadSnapshot(LABEL, 1, 0, 1, 2)
