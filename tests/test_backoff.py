"""Backoff waits and stop decisions of meshlib._retry.RetryState."""

from __future__ import annotations

import math
import random
import time

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import meshlib.testing
from meshlib import Backoff, Budget, Retry
from meshlib._budget import BudgetState
from meshlib._retry import RetryState
from meshlib.testing import FakeClock

JITTERS = ["full", "equal", "decorrelated", "none"]
MAX_ATTEMPT = 10**6

# The `rng` fixture is one seeded source for the whole test: sharing it between examples
# is what a run of real calls does too.
fixture_ok = settings(
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)

durations = st.floats(min_value=0.0, max_value=60.0, allow_nan=False, allow_infinity=False)


@st.composite
def base_and_cap(draw: st.DrawFn) -> tuple[float, float]:
    a, b = draw(durations), draw(durations)
    return min(a, b), max(a, b)


def ceiling(base: float, cap: float, attempt: int) -> float:
    """The un-jittered wait after `attempt`: min(cap, base * 2**(attempt-1)), in exact math."""
    if base == 0.0:
        return 0.0
    exponent = attempt - 1
    if exponent > 1100:  # even the smallest positive float times 2**1100 exceeds any cap
        return cap
    try:
        return min(cap, base * 2.0**exponent)
    except OverflowError:
        return cap


def state_at(backoff: Backoff, attempt: int) -> RetryState:
    """A RetryState whose `attempt`-th attempt just failed, with no budget or deadline."""
    retry = Retry(attempts=MAX_ATTEMPT + 1, backoff=backoff, budget=None)
    state = RetryState(retry, None, None)
    state.attempt_number = attempt
    return state


# --- The wait for every jitter -----------------------------------------------------------


@pytest.mark.parametrize("jitter", JITTERS)
@given(bounds=base_and_cap(), attempt=st.integers(min_value=1, max_value=MAX_ATTEMPT))
@example(bounds=(0.0, 1.0), attempt=MAX_ATTEMPT)
@example(bounds=(0.0, 1.0), attempt=1025)
@example(bounds=(0.05, 1.0), attempt=MAX_ATTEMPT)
@example(bounds=(60.0, 60.0), attempt=1)
@settings(fixture_ok, max_examples=150)
def test_wait_is_finite_and_between_zero_and_cap(
    rng: random.Random, jitter: str, bounds: tuple[float, float], attempt: int
) -> None:
    base, cap = bounds
    wait = state_at(Backoff(base=base, cap=cap, jitter=jitter), attempt).next_wait(0.0)
    assert wait is not None
    assert math.isfinite(wait)
    assert 0.0 <= wait <= cap


@given(bounds=base_and_cap(), attempt=st.integers(min_value=1, max_value=MAX_ATTEMPT))
@example(bounds=(0.0, 1.0), attempt=MAX_ATTEMPT)
@example(bounds=(0.0, 1.0), attempt=1025)
@example(bounds=(0.05, 1.0), attempt=5)
@example(bounds=(0.05, 1.0), attempt=MAX_ATTEMPT)
@settings(fixture_ok, max_examples=200)
def test_no_jitter_waits_exactly_the_exponential_ceiling(
    rng: random.Random, bounds: tuple[float, float], attempt: int
) -> None:
    base, cap = bounds
    wait = state_at(Backoff(base=base, cap=cap, jitter="none"), attempt).next_wait(0.0)
    assert wait == ceiling(base, cap, attempt)


@given(bounds=base_and_cap(), attempt=st.integers(min_value=1, max_value=MAX_ATTEMPT))
@example(bounds=(0.0, 1.0), attempt=MAX_ATTEMPT)
@example(bounds=(0.0, 1.0), attempt=1025)
@settings(fixture_ok, max_examples=200)
def test_full_jitter_stays_under_the_ceiling(
    rng: random.Random, bounds: tuple[float, float], attempt: int
) -> None:
    base, cap = bounds
    wait = state_at(Backoff(base=base, cap=cap, jitter="full"), attempt).next_wait(0.0)
    assert wait is not None
    assert 0.0 <= wait <= ceiling(base, cap, attempt)


@given(bounds=base_and_cap(), attempt=st.integers(min_value=1, max_value=MAX_ATTEMPT))
@example(bounds=(0.05, 1.0), attempt=MAX_ATTEMPT)
@settings(fixture_ok, max_examples=200)
def test_equal_jitter_waits_at_least_half_the_ceiling(
    rng: random.Random, bounds: tuple[float, float], attempt: int
) -> None:
    base, cap = bounds
    wait = state_at(Backoff(base=base, cap=cap, jitter="equal"), attempt).next_wait(0.0)
    assert wait is not None
    assert ceiling(base, cap, attempt) / 2 <= wait <= cap


@given(bounds=base_and_cap(), waits=st.integers(min_value=1, max_value=30))
@example(bounds=(0.0, 0.0), waits=5)
@example(bounds=(1.0, 1.0), waits=5)
@settings(fixture_ok, max_examples=150)
def test_decorrelated_jitter_stays_between_base_and_cap(
    rng: random.Random, bounds: tuple[float, float], waits: int
) -> None:
    base, cap = bounds
    retry = Retry(attempts=waits + 1, backoff=Backoff(base, cap, "decorrelated"), budget=None)
    state = RetryState(retry, None, None)
    seen = [state.next_wait(float(n)) for n in range(waits)]
    assert None not in seen
    for wait in seen:
        assert wait is not None
        assert min(base, cap) <= wait <= cap


def test_decorrelated_jitter_grows_from_the_previous_wait(rng: random.Random) -> None:
    # From a base of 1 s and no cap to speak of, each wait is at most 3x the previous one,
    # and over many waits the sequence climbs well above the base.
    retry = Retry(attempts=40, backoff=Backoff(1.0, 60.0, "decorrelated"), budget=None)
    state = RetryState(retry, None, None)
    previous = 1.0
    waits = []
    for _ in range(39):
        wait = state.next_wait(0.0)
        assert wait is not None
        assert 1.0 <= wait <= min(60.0, 3 * previous)
        previous = wait
        waits.append(wait)
    assert max(waits) > 3.0


@pytest.mark.parametrize("jitter", JITTERS)
def test_attempt_one_million_is_computed_at_once(rng: random.Random, jitter: str) -> None:
    state = state_at(Backoff(base=0.05, cap=1.0, jitter=jitter), MAX_ATTEMPT)
    # CPU time of this thread, not wall time: a loaded machine that takes the core away
    # does not count. One wait costs microseconds; a million steps cost well over 50 ms.
    started = time.thread_time()
    wait = state.next_wait(0.0)
    elapsed = time.thread_time() - started
    assert elapsed < 0.05
    assert wait is not None
    assert 0.0 <= wait <= 1.0


def test_full_jitter_actually_varies(rng: random.Random) -> None:
    waits = {state_at(Backoff(0.05, 1.0, "full"), 5).next_wait(0.0) for _ in range(20)}
    assert len(waits) > 10


# --- When to stop ------------------------------------------------------------------------


def test_three_attempts_give_exactly_two_waits(rng: random.Random, clock: FakeClock) -> None:
    state = RetryState(Retry(attempts=3, budget=None), None, None)
    first = state.next_wait(clock.now())
    second = state.next_wait(clock.now())
    assert first is not None
    assert second is not None
    assert state.stop_reason is None
    assert state.next_wait(clock.now()) is None
    assert state.stop_reason == "attempts"
    assert state.attempt_number == 3


def test_one_attempt_never_waits(rng: random.Random, clock: FakeClock) -> None:
    state = RetryState(Retry(attempts=1, budget=None), None, None)
    assert state.next_wait(clock.now()) is None
    assert state.stop_reason == "attempts"


def test_waits_follow_the_exponential_ceiling_without_jitter(clock: FakeClock) -> None:
    retry = Retry(attempts=6, backoff=Backoff(base=0.1, cap=1.0, jitter="none"), budget=None)
    state = RetryState(retry, None, None)
    waits = []
    while (wait := state.next_wait(clock.now())) is not None:
        waits.append(wait)
    assert waits == [ceiling(0.1, 1.0, n) for n in range(1, 6)]
    assert waits == [0.1, 0.2, 0.4, 0.8, 1.0]


def test_stops_for_the_deadline_when_the_wait_would_end_at_it(clock: FakeClock) -> None:
    budget = BudgetState(Budget())
    retry = Retry(attempts=5, backoff=Backoff(base=1.0, cap=1.0, jitter="none"))
    now = clock.now()
    state = RetryState(retry, budget, deadline_at=now + 1.0)
    assert state.next_wait(now) is None
    assert state.stop_reason == "deadline"
    # Stopping for the deadline does not spend a retry from the budget.
    assert budget.snapshot(now) == (0, 0)


def test_stops_for_the_deadline_when_the_wait_would_end_past_it(clock: FakeClock) -> None:
    retry = Retry(attempts=5, backoff=Backoff(base=1.0, cap=1.0, jitter="none"), budget=None)
    now = clock.now()
    state = RetryState(retry, None, deadline_at=now + 0.5)
    assert state.next_wait(now) is None
    assert state.stop_reason == "deadline"


def test_waits_when_the_wait_ends_before_the_deadline(clock: FakeClock) -> None:
    budget = BudgetState(Budget())
    retry = Retry(attempts=5, backoff=Backoff(base=1.0, cap=1.0, jitter="none"))
    now = clock.now()
    state = RetryState(retry, budget, deadline_at=now + 1.5)
    assert state.next_wait(now) == 1.0
    assert state.stop_reason is None
    assert budget.snapshot(now) == (0, 1)


def test_stops_for_a_spent_budget(rng: random.Random, clock: FakeClock) -> None:
    budget = BudgetState(Budget(ratio=0.0, min_per_second=0.1, ttl=10.0))  # a reserve of 1
    retry = Retry(attempts=5)
    now = clock.now()
    budget.deposit(now)
    assert RetryState(retry, budget, None).next_wait(now) is not None
    state = RetryState(retry, budget, None)
    assert state.next_wait(now) is None
    assert state.stop_reason == "budget"
    assert state.attempt_number == 1


def test_retry_after_replaces_the_backoff(rng: random.Random, clock: FakeClock) -> None:
    retry = Retry(attempts=3, backoff=Backoff(base=0.05, cap=1.0), budget=None)
    state = RetryState(retry, None, None)
    assert state.next_wait(clock.now(), retry_after=7.0) == 7.0


def test_retry_after_zero_means_the_backoff(rng: random.Random, clock: FakeClock) -> None:
    # API.md section 4: zero (or a date already past) falls back to the backoff.
    retry = Retry(attempts=3, backoff=Backoff(base=0.5, cap=1.0, jitter="none"), budget=None)
    assert RetryState(retry, None, None).next_wait(clock.now(), retry_after=0.0) == 0.5


def test_a_retry_after_cap_of_zero_ignores_the_header(rng: random.Random, clock: FakeClock) -> None:
    backoff = Backoff(base=0.5, cap=1.0, jitter="none")
    retry = Retry(attempts=3, backoff=backoff, retry_after_cap=0, budget=None)
    assert RetryState(retry, None, None).next_wait(clock.now(), retry_after=7.0) == 0.5


@pytest.mark.parametrize("asked", [31.0, 3600.0, math.inf])
def test_retry_after_is_clamped_to_the_cap(
    rng: random.Random, clock: FakeClock, asked: float
) -> None:
    retry = Retry(attempts=3, retry_after_cap=30.0, budget=None)
    assert RetryState(retry, None, None).next_wait(clock.now(), retry_after=asked) == 30.0


def test_retry_after_past_the_deadline_stops(rng: random.Random, clock: FakeClock) -> None:
    retry = Retry(attempts=3, budget=None)
    now = clock.now()
    state = RetryState(retry, None, deadline_at=now + 5.0)
    assert state.next_wait(now, retry_after=10.0) is None
    assert state.stop_reason == "deadline"


# --- Determinism -------------------------------------------------------------------------


def waits_with_seed(seed: int, jitter: str) -> list[float | None]:
    retry = Retry(attempts=8, backoff=Backoff(base=0.05, cap=2.0, jitter=jitter), budget=None)
    with meshlib.testing.use_random(random.Random(seed)):
        state = RetryState(retry, None, None)
        return [state.next_wait(0.0) for _ in range(7)]


@pytest.mark.parametrize("jitter", ["full", "equal", "decorrelated"])
def test_same_seed_gives_the_same_waits(jitter: str) -> None:
    first = waits_with_seed(42, jitter)
    assert None not in first
    assert waits_with_seed(42, jitter) == first
    assert waits_with_seed(43, jitter) != first
