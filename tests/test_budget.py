"""The retry budget: retries stay a fraction of calls, plus a reserve, over a window."""

from __future__ import annotations

import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshlib import Budget
from meshlib._budget import BudgetState


def withdrawals(budget: BudgetState, now: float, limit: int = 10_000) -> int:
    """Withdraw until refused; return how many retries were allowed."""
    allowed = 0
    while budget.try_withdraw(now):
        allowed += 1
        assert allowed <= limit, "the budget never ran out"
    return allowed


def test_with_no_calls_the_reserve_is_allowed_then_refused() -> None:
    budget = BudgetState(Budget(ratio=0.2, min_per_second=1.0, ttl=10.0))
    for _ in range(10):
        assert budget.try_withdraw(0.0)
    assert not budget.try_withdraw(0.0)
    assert not budget.try_withdraw(0.5)


def test_standard_budget_reserve_is_one_hundred_retries() -> None:
    assert withdrawals(BudgetState(Budget()), 0.0) == 100


@given(
    min_per_second=st.integers(min_value=0, max_value=50),
    ttl=st.sampled_from([0.5, 1.0, 2.0, 10.0, 60.0]),
)
@settings(max_examples=50, deadline=None, database=None)
def test_with_no_calls_exactly_the_reserve_is_allowed(min_per_second: int, ttl: float) -> None:
    budget = BudgetState(Budget(ratio=0.2, min_per_second=min_per_second, ttl=ttl))
    assert withdrawals(budget, 100.0) == int(min_per_second * ttl)


def test_with_calls_the_ratio_adds_to_the_reserve() -> None:
    budget = BudgetState(Budget(ratio=0.2, min_per_second=1.0, ttl=10.0))
    for _ in range(100):
        budget.deposit(0.0)
    assert withdrawals(budget, 0.0) == 20 + 10


@given(
    calls=st.integers(min_value=0, max_value=400),
    quarters=st.integers(min_value=0, max_value=8),  # ratio = quarters / 4: exact in binary
    reserve=st.integers(min_value=0, max_value=20),
)
@settings(max_examples=100, deadline=None, database=None)
def test_with_calls_ratio_times_calls_plus_reserve_are_allowed(
    calls: int, quarters: int, reserve: int
) -> None:
    budget = BudgetState(Budget(ratio=quarters / 4, min_per_second=reserve / 2, ttl=2.0))
    for _ in range(calls):
        budget.deposit(0.0)
    assert withdrawals(budget, 0.0) == (quarters * calls) // 4 + reserve


def test_a_zero_budget_refuses_every_retry() -> None:
    budget = BudgetState(Budget(ratio=0.0, min_per_second=0.0, ttl=10.0))
    for _ in range(50):
        budget.deposit(0.0)
    assert not budget.try_withdraw(0.0)
    assert budget.snapshot(0.0) == (50, 0)


def test_refused_retries_are_not_counted() -> None:
    budget = BudgetState(Budget(ratio=0.0, min_per_second=0.5, ttl=10.0))  # reserve 5
    assert withdrawals(budget, 0.0) == 5
    for _ in range(10):
        assert not budget.try_withdraw(0.0)
    assert budget.snapshot(0.0) == (0, 5)


def test_calls_leave_the_window_after_ttl() -> None:
    budget = BudgetState(Budget(ratio=0.2, min_per_second=1.0, ttl=10.0))
    for _ in range(100):
        budget.deposit(0.0)
    assert budget.snapshot(9.0) == (100, 0)
    # At ttl + 1 only the reserve remains.
    assert withdrawals(budget, 11.0) == 10
    assert budget.snapshot(11.0) == (0, 10)


def test_retries_leave_the_window_after_ttl() -> None:
    budget = BudgetState(Budget(ratio=0.2, min_per_second=1.0, ttl=10.0))
    assert withdrawals(budget, 0.0) == 10
    assert not budget.try_withdraw(5.0)
    assert budget.try_withdraw(11.0)
    assert budget.snapshot(11.0) == (0, 1)


def test_the_window_slides_rather_than_resetting_at_once() -> None:
    budget = BudgetState(Budget(ratio=1.0, min_per_second=0.0, ttl=10.0))
    for _ in range(10):
        budget.deposit(0.0)
    for _ in range(10):
        budget.deposit(6.0)
    assert budget.snapshot(8.0) == (20, 0)
    # The calls at t=0 are gone after ttl; those at t=6 still count.
    assert budget.snapshot(12.0) == (10, 0)
    assert budget.snapshot(17.0) == (0, 0)


def test_a_long_quiet_gap_forgets_everything() -> None:
    budget = BudgetState(Budget(ratio=0.5, min_per_second=0.0, ttl=1.0))
    for step in range(20):
        budget.deposit(step * 0.1)
    budget.try_withdraw(1.9)
    assert budget.snapshot(1_000_000.0) == (0, 0)


def test_snapshot_counts_calls_and_retries() -> None:
    budget = BudgetState(Budget(ratio=0.5, min_per_second=0.0, ttl=10.0))
    assert budget.snapshot(0.0) == (0, 0)
    for _ in range(6):
        budget.deposit(1.0)
    assert budget.try_withdraw(2.0)
    assert budget.try_withdraw(2.0)
    assert budget.snapshot(3.0) == (6, 2)


def test_an_older_timestamp_arriving_late_does_not_wipe_newer_counts() -> None:
    # Threads read the clock before they take the budget's lock, so a call stamped
    # a moment earlier can be recorded after one stamped later.
    budget = BudgetState(Budget(ratio=0.2, min_per_second=1.0, ttl=10.0))
    for _ in range(5):
        budget.deposit(11.0)
    budget.deposit(10.99)
    assert budget.snapshot(11.0) == (6, 0)


@pytest.mark.parametrize("operation", ["deposit", "try_withdraw"])
def test_concurrent_updates_are_all_counted(operation: str) -> None:
    budget = BudgetState(Budget(ratio=0.0, min_per_second=1000.0, ttl=10.0))  # reserve 10000
    start = threading.Barrier(8)

    def work() -> None:
        start.wait()
        call = getattr(budget, operation)
        for _ in range(1000):
            call(5.0)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    calls, retries = budget.snapshot(5.0)
    assert (calls if operation == "deposit" else retries) == 8000


def test_concurrent_withdrawals_never_exceed_the_budget() -> None:
    budget = BudgetState(Budget(ratio=0.0, min_per_second=50.0, ttl=10.0))  # reserve 500
    start = threading.Barrier(8)
    granted = [0] * 8

    def work(index: int) -> None:
        start.wait()
        for _ in range(200):
            if budget.try_withdraw(1.0):
                granted[index] += 1

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(granted) == 500
    assert budget.snapshot(1.0) == (0, 500)


def test_a_call_at_a_bucket_edge_counts_in_the_new_bucket() -> None:
    # ttl 10: buckets one second wide. A call at exactly t=1 starts bucket [1, 2),
    # so it is still counted at t=10.5 while the call at t=0.99 has left.
    budget = BudgetState(Budget(ratio=1.0, min_per_second=0.0, ttl=10.0))
    budget.deposit(0.99)
    budget.deposit(1.0)
    assert budget.snapshot(1.5) == (2, 0)
    assert budget.snapshot(10.5) == (1, 0)


def test_a_late_older_reading_counts_in_the_newest_bucket() -> None:
    # Threads read the clock before taking the lock: a reading from the previous
    # bucket that arrives late is counted, never lost and never rewinds the window.
    budget = BudgetState(Budget(ratio=1.0, min_per_second=0.0, ttl=10.0))
    budget.deposit(5.5)
    budget.deposit(4.9)
    assert budget.snapshot(5.5) == (2, 0)
    assert budget.snapshot(14.9) == (2, 0)  # both in the bucket [5, 6)
    assert budget.snapshot(15.0) == (0, 0)
