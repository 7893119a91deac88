"""The circuit breaker: its state machine with explicit times, its hook, its threads, its Mesh."""

from __future__ import annotations

import logging
import math
import random
import threading

import anyio
import anyio.lowlevel
import httpx
import pytest

import meshlib.testing
from meshlib import Breaker, ConfigError, Mesh, Policy
from meshlib._breaker import CLOSED, HALF_OPEN, OPEN, BreakerState
from meshlib.testing import FakeClock

LABEL = "http://orders.internal:80"
T0 = 100.0
# How long a thread may take to start or finish before the test calls it stuck. Only a
# failing run waits this long; a loaded 2-core machine can take seconds to start 100 threads.
PATIENCE = 30.0


def breaker(hook: object = None, **settings: object) -> BreakerState:
    """A breaker that opens after 2 calls at 50% failures, open 5 s, unless told otherwise."""
    values: dict[str, object] = {"failure_ratio": 0.5, "min_calls": 2, "window": 10.0}
    values["open_for"] = 5.0
    values.update(settings)
    return BreakerState(Breaker(**values), LABEL, hook)  # type: ignore[arg-type]


def trip(cb: BreakerState, now: float) -> None:
    """Record failures until `cb` opens (it is closed at first)."""
    for _ in range(cb.settings.min_calls):
        cb.record(0, True, now)
    assert cb.state == OPEN


def half_open(cb: BreakerState, now: float) -> int:
    """Open `cb` at `now`, then take the first probe once its open period is over."""
    trip(cb, now)
    ticket = cb.admit(now + 1000.0)
    assert ticket is not None
    assert cb.state == HALF_OPEN
    return ticket


# --- closed -----------------------------------------------------------------------------------


def test_closed_admits_ordinary_calls_with_ticket_zero() -> None:
    cb = breaker()
    assert cb.state == CLOSED
    assert cb.admit(T0) == 0
    assert cb.retry_after(T0) == 0.0


def test_closed_stays_closed_below_min_calls_even_at_all_failures() -> None:
    cb = breaker(min_calls=5)
    for _ in range(4):
        cb.record(0, True, T0)
    assert cb.state == CLOSED
    assert cb.admit(T0) == 0
    snap = cb.snapshot(T0)
    assert (snap.calls, snap.failures) == (4, 4)


@pytest.mark.parametrize(
    ("ratio", "calls", "failures"),
    [(0.25, 8, 2), (0.56, 25, 14), (0.07, 100, 7)],
)
def test_opens_exactly_when_the_failure_share_reaches_the_ratio(
    ratio: float, calls: int, failures: int
) -> None:
    # The share is a whole number of calls: failures/calls == ratio must open,
    # one failure fewer must not (successes first, so the last call decides).
    at_ratio = breaker(failure_ratio=ratio, min_calls=calls)
    below = breaker(failure_ratio=ratio, min_calls=calls)
    for _ in range(calls - failures):
        at_ratio.record(0, False, T0)
    for _ in range(calls - failures + 1):
        below.record(0, False, T0)
    for _ in range(failures - 1):
        at_ratio.record(0, True, T0)
        below.record(0, True, T0)
    assert at_ratio.state == CLOSED
    at_ratio.record(0, True, T0)
    assert at_ratio.state == OPEN, f"{failures} of {calls} failed with failure_ratio={ratio}"
    assert below.snapshot(T0).calls == calls
    assert below.snapshot(T0).failures == failures - 1
    assert below.state == CLOSED


def test_ten_of_twenty_opens_but_nine_of_twenty_does_not() -> None:
    # The standard breaker's own numbers: 50% over at least 20 calls.
    ten = breaker(failure_ratio=0.5, min_calls=20)
    nine = breaker(failure_ratio=0.5, min_calls=20)
    for _ in range(10):
        ten.record(0, False, T0)
    for _ in range(11):
        nine.record(0, False, T0)
    for _ in range(9):
        ten.record(0, True, T0)
        nine.record(0, True, T0)
    ten.record(0, True, T0)
    assert ten.state == OPEN
    assert nine.snapshot(T0).calls == 20
    assert nine.state == CLOSED


def test_the_window_slides_failures_older_than_the_window_stop_counting() -> None:
    stale = breaker(min_calls=4, window=10.0)
    fresh = breaker(min_calls=4, window=10.0)
    for cb in (stale, fresh):
        for _ in range(3):
            cb.record(0, True, T0)
    assert fresh.snapshot(T0 + 9.5).failures == 3  # still inside the window
    fresh.record(0, True, T0 + 9.5)
    assert fresh.state == OPEN
    stale.record(0, True, T0 + 10.0)  # the first three are a whole window old
    assert stale.state == CLOSED
    snap = stale.snapshot(T0 + 10.0)
    assert (snap.calls, snap.failures) == (1, 1)


def test_the_window_forgets_old_failures_but_keeps_recent_ones() -> None:
    cb = breaker(min_calls=100, window=10.0)
    cb.record(0, True, T0)
    cb.record(0, True, T0)
    cb.record(0, True, T0 + 5.0)
    cb.record(0, False, T0 + 5.0)
    assert cb.snapshot(T0 + 9.0).failures == 3
    snap = cb.snapshot(T0 + 11.0)
    assert (snap.calls, snap.failures) == (2, 1)
    snap = cb.snapshot(T0 + 16.0)
    assert (snap.calls, snap.failures) == (0, 0)


def test_consecutive_failures_open_below_min_calls() -> None:
    cb = breaker(min_calls=100, consecutive=3)
    cb.record(0, True, T0)
    cb.record(0, True, T0)
    assert cb.state == CLOSED
    cb.record(0, True, T0)
    assert cb.state == OPEN


def test_a_success_resets_the_run_of_consecutive_failures() -> None:
    cb = breaker(min_calls=100, consecutive=3)
    for failed in (True, True, False, True, True):
        cb.record(0, failed, T0)
    assert cb.state == CLOSED
    cb.record(0, True, T0)
    assert cb.state == OPEN


# --- open -------------------------------------------------------------------------------------


def test_open_rejects_until_open_for_passes_and_counts_down_exactly() -> None:
    cb = breaker(open_for=5.0)
    trip(cb, T0)
    assert cb.retry_after(T0) == 5.0
    assert cb.admit(T0) is None
    assert cb.retry_after(T0 + 1.0) == 4.0
    assert cb.admit(T0 + 1.0) is None
    assert cb.retry_after(T0 + 4.5) == 0.5
    assert cb.admit(T0 + 4.75) is None
    assert cb.state == OPEN
    assert cb.snapshot(T0 + 2.0).retry_after == 3.0


def test_after_open_for_the_next_admit_goes_half_open_with_a_probe_ticket() -> None:
    cb = breaker(open_for=5.0)
    trip(cb, T0)
    ticket = cb.admit(T0 + 5.0)
    assert cb.state == HALF_OPEN
    assert ticket is not None
    assert ticket != 0  # a probe, not an ordinary call
    assert cb.retry_after(T0 + 5.0) == 0.0


def test_an_expired_open_breaker_still_reads_open_until_a_call_comes() -> None:
    cb = breaker(open_for=5.0)
    trip(cb, T0)
    assert cb.snapshot(T0 + 60.0).state == OPEN
    assert cb.snapshot(T0 + 60.0).retry_after == 0.0


# --- half-open --------------------------------------------------------------------------------


def test_exactly_probes_tickets_are_handed_out() -> None:
    cb = breaker(probes=3)
    first = half_open(cb, T0)
    later = T0 + 1000.0
    others = [cb.admit(later), cb.admit(later)]
    assert [first, *others] == [first] * 3
    assert cb.admit(later) is None
    cb.record(first, False, later)  # a success still uses up its probe
    assert cb.state == HALF_OPEN
    assert cb.admit(later) is None


def test_all_probes_succeeding_closes_and_forgets_old_failures() -> None:
    cb = breaker(probes=2, min_calls=4)
    trip(cb, T0)
    later = T0 + 6.0
    tickets = [cb.admit(later), cb.admit(later)]
    cb.record(tickets[0], False, later)  # type: ignore[arg-type]
    assert cb.state == HALF_OPEN
    cb.record(tickets[1], False, later)  # type: ignore[arg-type]
    assert cb.state == CLOSED
    snap = cb.snapshot(later)
    assert (snap.state, snap.calls, snap.failures, snap.trips) == (CLOSED, 0, 0, 0)
    # The window starts afresh: three more failures are below min_calls again.
    for _ in range(3):
        cb.record(0, True, later)
    assert cb.state == CLOSED
    assert cb.admit(later) == 0


def test_one_probe_failing_re_opens() -> None:
    cb = breaker(probes=3, open_for=5.0)
    trip(cb, T0)
    later = T0 + 5.0
    a, b, c = (cb.admit(later) for _ in range(3))
    assert None not in (a, b, c)
    cb.record(a, False, later)  # type: ignore[arg-type]
    cb.record(b, True, later + 1.0)  # type: ignore[arg-type]
    assert cb.state == OPEN
    assert cb.retry_after(later + 1.0) == 5.0
    cb.record(c, False, later + 1.0)  # type: ignore[arg-type]  # too late to close it
    assert cb.state == OPEN
    assert cb.admit(later + 2.0) is None


def test_without_max_open_for_every_trip_stays_open_for() -> None:
    cb = breaker(open_for=5.0)
    trip(cb, T0)
    now = T0
    for trips in range(1, 5):
        assert cb.retry_after(now) == 5.0
        assert cb.snapshot(now).trips == trips
        now += 5.0
        probe = cb.admit(now)
        assert probe is not None
        cb.record(probe, True, now)


def test_with_max_open_for_consecutive_trips_double_the_open_period(rng: random.Random) -> None:
    cb = breaker(open_for=1.0, max_open_for=10.0)
    trip(cb, 1000.0)
    periods = [cb.retry_after(1000.0)]
    for k in range(2, 8):
        now = 1000.0 * k  # long after the open period, whatever it was
        probe = cb.admit(now)
        assert probe is not None
        cb.record(probe, True, now)
        assert cb.state == OPEN
        periods.append(cb.retry_after(now))
    assert cb.snapshot(7000.0).trips == 7
    for n, period in enumerate(periods):
        expected = 1.0 * 2**n
        assert period <= 10.0, periods
        if expected * 0.9 < 10.0:
            low, high = 0.9 * expected, min(1.1 * expected, 10.0)
            assert low - 1e-9 <= period <= high + 1e-9, (n, periods)
        else:
            assert period == 10.0, periods
    assert any(not math.isclose(p, 2**n) for n, p in enumerate(periods[:4])), "no jitter"


class _Extreme(random.Random):
    """A random source whose uniform() always returns one end of its range."""

    def __init__(self, high: bool) -> None:
        super().__init__(0)
        self.high = high

    def uniform(self, a: float, b: float) -> float:
        return b if self.high else a


@pytest.mark.parametrize(("high", "expected"), [(True, [4.4, 8.5, 8.5]), (False, [3.6, 7.2, 8.5])])
def test_jitter_stays_within_ten_percent_and_never_passes_max_open_for(
    high: bool, expected: list[float]
) -> None:
    with meshlib.testing.use_random(_Extreme(high)):
        cb = breaker(open_for=4.0, max_open_for=8.5)
        trip(cb, 1000.0)
        periods = [cb.retry_after(1000.0)]
        for now in (2000.0, 3000.0):
            probe = cb.admit(now)
            assert probe is not None
            cb.record(probe, True, now)
            periods.append(cb.retry_after(now))
    assert periods == pytest.approx(expected)
    assert max(periods) <= 8.5


def test_closing_resets_the_doubling(rng: random.Random) -> None:
    cb = breaker(open_for=1.0, max_open_for=100.0)
    trip(cb, 1000.0)
    for now in (2000.0, 3000.0):  # two more trips: the third open period is ~4 s
        probe = cb.admit(now)
        cb.record(probe, True, now)  # type: ignore[arg-type]
    assert 3.6 - 1e-9 <= cb.retry_after(3000.0) <= 4.4 + 1e-9
    assert cb.snapshot(3000.0).trips == 3
    probe = cb.admit(4000.0)
    cb.record(probe, False, 4000.0)  # type: ignore[arg-type]
    assert cb.state == CLOSED
    assert cb.snapshot(4000.0).trips == 0
    trip(cb, 5000.0)
    assert 0.9 - 1e-9 <= cb.retry_after(5000.0) <= 1.1 + 1e-9
    assert cb.snapshot(5000.0).trips == 1


# --- tickets ----------------------------------------------------------------------------------


def test_an_ordinary_outcome_recorded_after_a_trip_is_ignored() -> None:
    cb = breaker(open_for=5.0)
    assert cb.admit(T0) == 0  # a slow call admitted while closed
    trip(cb, T0)
    for _ in range(10):
        cb.record(0, False, T0 + 1.0)
    assert cb.state == OPEN  # successes of old calls cannot close it
    probe = cb.admit(T0 + 5.0)
    assert probe is not None
    for _ in range(10):
        cb.record(0, False, T0 + 5.0)
    assert cb.state == HALF_OPEN  # ...nor stand in for the probe
    for _ in range(10):
        cb.record(0, True, T0 + 5.0)
    assert cb.state == HALF_OPEN  # ...and their failures cannot re-open it
    cb.record(probe, False, T0 + 5.0)
    assert cb.state == CLOSED


def test_a_probe_ticket_from_an_earlier_episode_is_ignored() -> None:
    cb = breaker(probes=2, open_for=5.0)
    trip(cb, T0)
    first = cb.admit(T0 + 5.0)
    stale = cb.admit(T0 + 5.0)
    assert first is not None
    assert stale is not None
    cb.record(first, True, T0 + 5.0)  # episode 1 fails: open again
    current = cb.admit(T0 + 10.0)  # episode 2
    assert current is not None
    assert current != stale
    cb.record(stale, True, T0 + 10.0)
    assert cb.state == HALF_OPEN  # an old probe's failure does not re-open
    cb.release(stale)  # nor does its release free a slot of this episode
    second = cb.admit(T0 + 10.0)
    assert second == current
    assert cb.admit(T0 + 10.0) is None
    cb.record(stale, False, T0 + 10.0)
    cb.record(current, False, T0 + 10.0)
    assert cb.state == HALF_OPEN  # the old success did not count as one of the two
    cb.record(second, False, T0 + 10.0)
    assert cb.state == CLOSED


def test_releasing_a_probe_lets_another_probe_in() -> None:
    cb = breaker(probes=1)
    probe = half_open(cb, T0)
    later = T0 + 1000.0
    assert cb.admit(later) is None
    cb.release(probe)  # cancelled: neither a success nor a failure
    assert cb.state == HALF_OPEN
    again = cb.admit(later)
    assert again == probe
    cb.record(again, False, later)
    assert cb.state == CLOSED


def test_release_of_ticket_zero_is_a_no_op() -> None:
    cb = breaker(probes=1)
    cb.record(0, True, T0)
    cb.release(0)
    snap = cb.snapshot(T0)
    assert (snap.state, snap.calls, snap.failures) == (CLOSED, 1, 1)
    probe = half_open(cb, T0 + 1.0)
    cb.release(0)  # must not free the probe's slot
    assert cb.admit(T0 + 2000.0) is None
    assert probe is not None


# --- snapshot ---------------------------------------------------------------------------------


def test_snapshot_fields_through_the_states() -> None:
    cb = breaker(min_calls=3, open_for=5.0)
    cb.record(0, False, T0)
    cb.record(0, True, T0)
    snap = cb.snapshot(T0)
    assert snap == meshlib.BreakerSnapshot(
        destination=LABEL, state="closed", calls=2, failures=1, retry_after=0.0, trips=0
    )
    cb.record(0, True, T0)
    snap = cb.snapshot(T0 + 2.0)
    assert (snap.destination, snap.state, snap.retry_after, snap.trips) == (LABEL, "open", 3.0, 1)
    cb.admit(T0 + 5.0)
    snap = cb.snapshot(T0 + 5.0)
    assert (snap.state, snap.retry_after, snap.trips) == ("half_open", 0.0, 1)


# --- the hook ---------------------------------------------------------------------------------


def test_the_hook_sees_every_transition_in_order() -> None:
    seen: list[tuple[str, str, str]] = []
    cb = breaker(hook=lambda *t: seen.append(t), open_for=5.0)
    trip(cb, T0)
    probe = cb.admit(T0 + 5.0)
    cb.record(probe, True, T0 + 5.0)  # type: ignore[arg-type]
    probe = cb.admit(T0 + 10.0)
    cb.record(probe, False, T0 + 10.0)  # type: ignore[arg-type]
    assert seen == [
        (LABEL, "closed", "open"),
        (LABEL, "open", "half_open"),
        (LABEL, "half_open", "open"),
        (LABEL, "open", "half_open"),
        (LABEL, "half_open", "closed"),
    ]


def test_no_hook_call_without_a_transition() -> None:
    seen: list[tuple[str, str, str]] = []
    cb = breaker(hook=lambda *t: seen.append(t), min_calls=10)
    for _ in range(5):
        cb.admit(T0)
        cb.record(0, True, T0)
    cb.snapshot(T0)
    assert seen == []


def test_the_hook_runs_outside_the_lock_and_may_read_the_breaker() -> None:
    seen: list[tuple[str, str]] = []

    def hook(label: str, old: str, new: str) -> None:
        snap = cb.snapshot(T0 + 5.0)  # would deadlock if the breaker's lock were held
        assert snap.state == new  # the transition is done when the hook runs
        seen.append((old, new))

    cb = breaker(hook=hook, open_for=5.0)

    def drive() -> None:
        trip(cb, T0)
        probe = cb.admit(T0 + 5.0)
        cb.record(probe, False, T0 + 5.0)  # type: ignore[arg-type]

    worker = threading.Thread(target=drive, daemon=True)
    worker.start()
    worker.join(timeout=PATIENCE)
    assert not worker.is_alive(), "the hook deadlocked on the breaker's lock"
    assert seen == [("closed", "open"), ("open", "half_open"), ("half_open", "closed")]


# --- concurrency ------------------------------------------------------------------------------


def test_a_hundred_threads_get_exactly_probes_tickets() -> None:
    seen: list[tuple[str, str, str]] = []
    cb = breaker(hook=lambda *t: seen.append(t), probes=3, open_for=5.0)
    trip(cb, T0)
    barrier = threading.Barrier(100)
    tickets: list[int | None] = []
    lock = threading.Lock()

    def call() -> None:
        barrier.wait(timeout=PATIENCE)
        ticket = cb.admit(T0 + 5.0)  # the open period is over: the first goes half-open
        with lock:
            tickets.append(ticket)

    threads = [threading.Thread(target=call) for _ in range(100)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=PATIENCE)
    assert len(tickets) == 100
    granted = [t for t in tickets if t is not None]
    assert len(granted) == 3
    assert 0 not in granted
    assert seen.count((LABEL, "open", "half_open")) == 1


@pytest.mark.anyio
async def test_a_hundred_tasks_get_exactly_probes_tickets() -> None:
    cb = breaker(probes=3, open_for=5.0)
    trip(cb, T0)
    go = anyio.Event()
    tickets: list[int | None] = []

    async def call() -> None:
        await go.wait()
        await anyio.lowlevel.checkpoint()
        tickets.append(cb.admit(T0 + 5.0))

    async with anyio.create_task_group() as tg:
        for _ in range(100):
            tg.start_soon(call)
        await anyio.wait_all_tasks_blocked()
        go.set()
    assert len(tickets) == 100
    assert len([t for t in tickets if t is not None]) == 3
    assert cb.state == HALF_OPEN


def test_concurrent_records_are_all_counted() -> None:
    cb = breaker(min_calls=10**6)  # never trips: every record lands in the window
    barrier = threading.Barrier(8)

    def record_many(index: int) -> None:
        barrier.wait(timeout=PATIENCE)
        for i in range(500):
            cb.record(0, (i + index) % 2 == 0, T0)

    threads = [threading.Thread(target=record_many, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=PATIENCE)
    snap = cb.snapshot(T0)
    assert (snap.state, snap.calls, snap.failures) == (CLOSED, 4000, 2000)


# --- inside a Mesh ----------------------------------------------------------------------------

QUICK = Policy(breaker=Breaker(failure_ratio=0.5, min_calls=2, window=10.0, open_for=5.0))


def test_mesh_hook_receives_transitions(clock: FakeClock) -> None:
    mesh = Mesh(default=QUICK)
    seen: list[tuple[str, str, str]] = []
    mesh.on_breaker_change(lambda *t: seen.append(t))
    cb = mesh._plans.for_url(None, httpx.URL("http://a.internal/x")).breaker
    assert cb is not None
    trip(cb, clock.now())
    probe = cb.admit(clock.now() + 5.0)
    cb.record(probe, False, clock.now() + 5.0)  # type: ignore[arg-type]
    label = "http://a.internal:80"
    assert seen == [
        (label, "closed", "open"),
        (label, "open", "half_open"),
        (label, "half_open", "closed"),
    ]


def test_mesh_breakers_lists_snapshots_of_breakers_in_use(clock: FakeClock) -> None:
    mesh = Mesh(default=QUICK)
    assert mesh.breakers() == []
    a = mesh._plans.for_url(None, httpx.URL("http://a.internal/")).breaker
    b = mesh._plans.for_url(None, httpx.URL("https://b.internal:8443/")).breaker
    assert a is not None
    assert b is not None
    trip(a, clock.now())
    b.record(0, False, clock.now())
    clock.advance(2.0)
    snaps = {s.destination: s for s in mesh.breakers()}
    assert set(snaps) == {"http://a.internal:80", "https://b.internal:8443"}
    assert (snaps["http://a.internal:80"].state, snaps["http://a.internal:80"].retry_after) == (
        "open",
        3.0,
    )
    assert (snaps["https://b.internal:8443"].state, snaps["https://b.internal:8443"].calls) == (
        "closed",
        1,
    )


def test_failures_on_one_host_never_open_another_hosts_breaker(clock: FakeClock) -> None:
    mesh = Mesh(default=QUICK)
    a = mesh._plans.for_url(None, httpx.URL("http://a.internal/")).breaker
    b = mesh._plans.for_url(None, httpx.URL("http://b.internal/")).breaker
    other_port = mesh._plans.for_url(None, httpx.URL("http://a.internal:8080/")).breaker
    assert a is not None
    assert b is not None
    assert other_port is not None
    trip(a, clock.now())
    assert b.state == CLOSED
    assert other_port.state == CLOSED
    assert b.admit(clock.now()) == 0
    assert other_port.admit(clock.now()) == 0


def test_breakers_are_shared_per_normalised_destination_and_settings(clock: FakeClock) -> None:
    mesh = Mesh(default=QUICK)
    first = mesh._plans.for_url(None, httpx.URL("http://a.internal/"))
    same = mesh._plans.for_url(None, httpx.URL("http://A.internal.:80/other"))
    assert first.breaker is same.breaker
    five = Policy(breaker=Breaker(min_calls=5))
    equal_five = Policy(breaker=Breaker(min_calls=5))
    six = Policy(breaker=Breaker(min_calls=6))
    url = httpx.URL("http://a.internal/")
    assert mesh._plans.for_url(five, url).breaker is mesh._plans.for_url(equal_five, url).breaker
    assert mesh._plans.for_url(five, url).breaker is not mesh._plans.for_url(six, url).breaker
    assert mesh._plans.for_url(five, url).breaker is not first.breaker


def test_a_hook_that_raises_is_logged_and_the_transition_stands(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="meshlib")
    mesh = Mesh(default=QUICK)
    seen: list[tuple[str, str, str]] = []

    def broken(label: str, old: str, new: str) -> None:
        raise RuntimeError("exporter down")

    mesh.on_breaker_change(broken)
    mesh.on_breaker_change(lambda *t: seen.append(t))
    cb = mesh._plans.for_url(None, httpx.URL("http://a.internal/")).breaker
    assert cb is not None
    trip(cb, clock.now())  # does not raise
    assert cb.state == OPEN
    assert cb.admit(clock.now()) is None
    assert seen == [("http://a.internal:80", "closed", "open")]  # later hooks still run
    failures = [r for r in caplog.records if r.name == "meshlib" and r.exc_info]
    assert len(failures) == 1
    assert failures[0].levelno == logging.ERROR
    assert isinstance(failures[0].exc_info[1], RuntimeError)  # type: ignore[index]


def test_an_opening_breaker_logs_a_warning(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="meshlib")
    mesh = Mesh(default=QUICK)
    cb = mesh._plans.for_url(None, httpx.URL("http://a.internal/")).breaker
    assert cb is not None
    trip(cb, clock.now())
    probe = cb.admit(clock.now() + 5.0)
    cb.record(probe, False, clock.now() + 5.0)  # type: ignore[arg-type]
    events = [r for r in caplog.records if getattr(r, "meshlib_event", None) == "breaker"]
    assert [(r.meshlib_from, r.meshlib_to) for r in events] == [  # type: ignore[attr-defined]
        ("closed", "open"),
        ("open", "half_open"),
        ("half_open", "closed"),
    ]
    assert all(r.name == "meshlib" for r in events)
    assert [r.levelno for r in events] == [logging.WARNING, logging.INFO, logging.INFO]
    assert events[0].meshlib_destination == "http://a.internal:80"  # type: ignore[attr-defined]


# --- validation -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value", "settings"),
    [
        ("failure_ratio", 0, {"failure_ratio": 0}),
        ("failure_ratio", 1.5, {"failure_ratio": 1.5}),
        ("failure_ratio", math.nan, {"failure_ratio": math.nan}),
        ("min_calls", 0, {"min_calls": 0}),
        ("window", 0, {"window": 0}),
        ("open_for", -1, {"open_for": -1}),
        ("probes", 0, {"probes": 0}),
        ("consecutive", 0, {"consecutive": 0}),
        ("max_open_for", 2.0, {"open_for": 5.0, "max_open_for": 2.0}),
        ("on_status", 600, {"on_status": [600]}),
    ],
)
def test_bad_breaker_settings_name_the_field_and_value(
    field: str, value: object, settings: dict[str, object]
) -> None:
    with pytest.raises(ConfigError) as caught:
        Breaker(**settings)  # type: ignore[arg-type]
    message = str(caught.value)
    assert f"Breaker.{field}" in message
    assert repr(value) in message
    assert isinstance(caught.value, ValueError)


def test_a_breaker_accepts_its_boundaries() -> None:
    edge = Breaker(
        failure_ratio=1, min_calls=1, probes=1, consecutive=1, open_for=5, max_open_for=5
    )
    assert edge.failure_ratio == 1.0
    assert edge.max_open_for == edge.open_for == 5.0


def test_the_default_breaker_shows_its_statuses_as_ranges() -> None:
    assert "on_status={429, 500-599}" in repr(Breaker())
    assert Breaker().on_status == frozenset({429, *range(500, 600)})
