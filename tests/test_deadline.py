"""meshlib.deadline() and meshlib.remaining(): one time budget, carried by contextvars."""

from __future__ import annotations

import contextvars
import math
import threading
from datetime import timedelta

import anyio
import pytest

import meshlib
from meshlib.testing import FakeClock


def test_remaining_is_none_outside_any_deadline(clock: FakeClock) -> None:
    assert meshlib.remaining() is None


def test_remaining_counts_down_with_the_clock(clock: FakeClock) -> None:
    with meshlib.deadline(2.0):
        assert meshlib.remaining() == 2.0
        clock.advance(0.5)
        assert meshlib.remaining() == 1.5
    assert meshlib.remaining() is None


def test_remaining_is_never_negative(clock: FakeClock) -> None:
    with meshlib.deadline(1.0):
        clock.advance(5.0)
        assert meshlib.remaining() == 0.0


def test_zero_deadline_is_allowed_and_already_spent(clock: FakeClock) -> None:
    with meshlib.deadline(0):
        assert meshlib.remaining() == 0.0


def test_deadline_returns_itself_and_is_left_on_exception(clock: FakeClock) -> None:
    def fail_inside() -> None:
        with meshlib.deadline(3.0) as scope:
            assert isinstance(scope, meshlib.deadline)
            assert meshlib.remaining() == 3.0
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        fail_inside()
    assert meshlib.remaining() is None


def test_nested_shorter_outer_wins(clock: FakeClock) -> None:
    with meshlib.deadline(1.0):
        with meshlib.deadline(5.0):
            assert meshlib.remaining() == 1.0
        assert meshlib.remaining() == 1.0


def test_nested_shorter_inner_wins_then_outer_comes_back(clock: FakeClock) -> None:
    with meshlib.deadline(5.0):
        clock.advance(1.0)
        with meshlib.deadline(1.0):
            assert meshlib.remaining() == 1.0
            clock.advance(0.25)
            assert meshlib.remaining() == 0.75
        assert meshlib.remaining() == 3.75
    assert meshlib.remaining() is None


def test_inner_deadline_started_later_is_measured_from_its_start(clock: FakeClock) -> None:
    with meshlib.deadline(5.0):
        clock.advance(4.0)
        with meshlib.deadline(2.0):  # would end at 6 s, the outer ends at 5 s
            assert meshlib.remaining() == 1.0


def test_timedelta_is_accepted(clock: FakeClock) -> None:
    with meshlib.deadline(timedelta(milliseconds=1500)):
        assert meshlib.remaining() == 1.5


@pytest.mark.parametrize("bad", [-1, -0.001, math.nan, math.inf, "2", None, timedelta(seconds=-1)])
def test_bad_durations_are_refused(bad: object) -> None:
    with pytest.raises(meshlib.ConfigError, match="deadline"):
        meshlib.deadline(bad)  # type: ignore[arg-type]


def test_the_clock_is_read_on_entry_not_on_construction(clock: FakeClock) -> None:
    scope = meshlib.deadline(2.0)
    clock.advance(10.0)
    with scope:
        assert meshlib.remaining() == 2.0


# --- Isolation -----------------------------------------------------------------------------


@pytest.mark.anyio
async def test_each_asyncio_task_has_its_own_deadline(clock: FakeClock) -> None:
    seen: dict[str, float | None] = {}
    both_inside = anyio.Event()
    entered = 0

    async def task(name: str, seconds: float) -> None:
        nonlocal entered
        with meshlib.deadline(seconds):
            entered += 1
            if entered == 2:
                both_inside.set()
            await both_inside.wait()
            seen[name] = meshlib.remaining()

    async def bystander() -> None:
        await both_inside.wait()
        seen["bystander"] = meshlib.remaining()

    async with anyio.create_task_group() as group:
        group.start_soon(task, "short", 1.0)
        group.start_soon(task, "long", 5.0)
        group.start_soon(bystander)
    assert seen == {"short": 1.0, "long": 5.0, "bystander": None}
    assert meshlib.remaining() is None


@pytest.mark.anyio
async def test_a_task_started_inside_a_deadline_inherits_it(clock: FakeClock) -> None:
    seen: list[float | None] = []

    async def child() -> None:
        seen.append(meshlib.remaining())

    with meshlib.deadline(2.0):
        async with anyio.create_task_group() as group:
            group.start_soon(child)
    assert seen == [2.0]


def test_a_thread_does_not_see_the_deadline_it_was_started_in(clock: FakeClock) -> None:
    seen: list[float | None] = []
    with meshlib.deadline(2.0):
        thread = threading.Thread(target=lambda: seen.append(meshlib.remaining()))
        thread.start()
        thread.join()
    assert seen == [None]


def test_a_thread_run_in_a_copied_context_sees_the_deadline(clock: FakeClock) -> None:
    seen: list[float | None] = []
    with meshlib.deadline(2.0):
        context = contextvars.copy_context()
        thread = threading.Thread(
            target=context.run, args=(lambda: seen.append(meshlib.remaining()),)
        )
        thread.start()
        thread.join()
    assert seen == [2.0]


def test_a_deadline_set_in_a_thread_does_not_leak_out(clock: FakeClock) -> None:
    def inside() -> None:
        meshlib.deadline(1.0).__enter__()  # entered and never left

    thread = threading.Thread(target=inside)
    thread.start()
    thread.join()
    assert meshlib.remaining() is None
