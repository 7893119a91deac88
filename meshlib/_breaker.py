"""The circuit breaker of one destination: a pure state machine, clock passed in.

```
closed ──(failure ratio over the window, or N failures in a row)──▶ open
open ──(open period over, on the next call)──▶ half-open
half-open ──(every probe succeeds)──▶ closed
half-open ──(a probe fails)──▶ open (for longer, when max_open_for allows)
```

Calls are admitted with a `Ticket`: `ORDINARY` (0) for a call while closed, the
half-open episode's number (1 and up) for a probe. An outcome is recorded against its
ticket, so a slow call admitted before a trip cannot close the breaker, and
a probe that is cancelled gives its slot back (`release`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

from ._policy import Breaker
from ._runtime import runtime
from ._window import WindowCounts

__all__ = [
    "CLOSED",
    "HALF_OPEN",
    "OPEN",
    "ORDINARY",
    "BreakerSnapshot",
    "BreakerState",
    "Ticket",
]

CLOSED = "closed"
OPEN = "open"
HALF_OPEN = "half_open"

#: What `BreakerState.admit` hands a call it lets through, to record its outcome with.
Ticket = int
#: The ticket of a call admitted while closed; a probe's is its half-open episode (>= 1).
ORDINARY: Ticket = 0


#: Called with (destination, old state, new state) after each transition.
TransitionHook = Callable[[str, str, str], None]


@dataclass(frozen=True, slots=True)
class BreakerSnapshot:
    """What a breaker knows at one moment.

    Attributes:
        destination: ``scheme://host:port``, or a `resilient` function's key.
        state: ``"closed"``, ``"open"`` or ``"half_open"``.
        calls: calls counted in the current window (closed state).
        failures: failures among them.
        retry_after: seconds until an open breaker admits a probe; 0 otherwise.
        trips: consecutive trips without closing in between.
        since: seconds since the breaker last changed state (since it was made,
            if it never has).
    """

    destination: str
    state: str
    calls: int
    failures: int
    retry_after: float
    trips: int
    since: float = 0.0


class BreakerState:
    """One destination's breaker; thread-safe, never holds its lock across a call."""

    __slots__ = (
        "__weakref__",
        "_counts",
        "_hook",
        "_in_a_row",
        "_lock",
        "_open_until",
        "_probe_successes",
        "_probes_in_flight",
        "_trips",
        "changed_at",
        "episode",
        "label",
        "on_status",
        "settings",
        "state",
    )

    def __init__(self, settings: Breaker, label: str, hook: TransitionHook | None = None):
        self.settings = settings
        self.label = label
        self._hook = hook
        self._lock = threading.Lock()
        self.state = CLOSED  # read without the lock on the success path; written under it
        self.on_status = settings.on_status
        self._counts = WindowCounts(settings.window)  # events: failures
        self._in_a_row = 0
        self._trips = 0
        self._open_until = 0.0
        self._probes_in_flight = 0
        self._probe_successes = 0
        self.episode = 0  # numbers half-open episodes; probe tickets carry it
        self.changed_at = runtime.clock.now()  # when `state` last changed (monotonic)

    def admit(self, now: float) -> Ticket | None:
        """Return a ticket if a call may start now, or None if the breaker rejects it."""
        if self.state is CLOSED:  # the common case, read without the lock
            return ORDINARY
        transition = None
        with self._lock:
            if self.state is CLOSED:
                return ORDINARY
            if self.state is OPEN:
                if now < self._open_until:
                    return None
                transition = self._move(HALF_OPEN, now)
                self.episode += 1
                self._probes_in_flight = 0
                self._probe_successes = 0
            if self._probes_in_flight + self._probe_successes >= self.settings.probes:
                ticket = None
            else:
                self._probes_in_flight += 1
                ticket = self.episode
        self._announce(transition)
        return ticket

    def retry_after(self, now: float) -> float:
        """Return the seconds until an open breaker admits a probe (0 when not open)."""
        return max(0.0, self._open_until - now) if self.state is OPEN else 0.0

    def succeeded(self, now: float) -> None:
        """Record a success admitted while closed (an ORDINARY ticket) that started at `now`."""
        counts = self._counts
        lock = self._lock
        lock.acquire()  # rather than `with`: half the cost, on every request
        try:
            if self.state is CLOSED:
                counts.calls[counts.newest if now < counts.ends else counts.slot(now)] += 1
                self._in_a_row = 0
        finally:
            lock.release()

    def record(self, ticket: Ticket, failed: bool, now: float) -> None:
        """Record the outcome of a call admitted with `ticket` (`now`: when it started or ended)."""
        if ticket == ORDINARY and not failed:
            self.succeeded(now)
            return
        transition = None
        with self._lock:
            if ticket == ORDINARY:
                if self.state is not CLOSED:
                    return  # admitted before a trip: the breaker has moved on
                slot = self._counts.slot(now)
                self._counts.calls[slot] += 1
                if failed:
                    self._counts.events[slot] += 1
                    self._in_a_row += 1
                    if self._should_trip():
                        transition = self._trip(now)
                else:
                    self._in_a_row = 0
            elif ticket == self.episode and self.state is HALF_OPEN:
                self._probes_in_flight -= 1
                if failed:
                    transition = self._trip(now)
                else:
                    self._probe_successes += 1
                    if self._probe_successes >= self.settings.probes:
                        transition = self._close(now)
        self._announce(transition)

    def release(self, ticket: Ticket) -> None:
        """Give back a probe's slot without an outcome (the call was cancelled)."""
        if ticket == ORDINARY:
            return
        with self._lock:
            if ticket == self.episode and self.state is HALF_OPEN:
                self._probes_in_flight -= 1

    def snapshot(self, now: float) -> BreakerSnapshot:
        """Return the breaker's state and counts."""
        with self._lock:
            counts = self._counts
            calls, failures = (
                counts.totals(now)
                if self.state is CLOSED
                else (sum(counts.calls), sum(counts.events))
            )
            return BreakerSnapshot(
                destination=self.label,
                state=self.state,
                calls=calls,
                failures=failures,
                retry_after=self.retry_after(now),
                trips=self._trips,
                since=max(0.0, now - self.changed_at),
            )

    # Everything below runs under the lock.

    def _should_trip(self) -> bool:
        settings = self.settings
        if settings.consecutive is not None and self._in_a_row >= settings.consecutive:
            return True
        calls, failures = sum(self._counts.calls), sum(self._counts.events)
        # Divide rather than multiply: 14/25 equals the literal 0.56, 0.56*25 exceeds 14.
        return calls >= settings.min_calls and failures / calls >= settings.failure_ratio

    def _trip(self, now: float) -> tuple[str, str]:
        settings = self.settings
        self._trips += 1
        period = settings.open_for
        if settings.max_open_for is not None:
            # Each trip in a row doubles the wait, capped; ±10% jitter keeps a
            # fleet of clients from probing the recovering upstream in step.
            doublings = min(self._trips - 1, 32)
            grown = settings.open_for * 2.0**doublings * runtime.rng.uniform(0.9, 1.1)
            period = min(settings.max_open_for, grown)
        self._open_until = now + period
        return self._move(OPEN, now)

    def _close(self, now: float) -> tuple[str, str]:
        self._trips = 0
        self._in_a_row = 0
        self._counts.clear()
        return self._move(CLOSED, now)

    def _move(self, state: str, now: float) -> tuple[str, str]:
        old, self.state = self.state, state
        self.changed_at = now
        return old, state

    def _announce(self, transition: tuple[str, str] | None) -> None:
        # Outside the lock: a hook may log, export metrics or read the breaker.
        if transition is not None and self._hook is not None:
            self._hook(self.label, *transition)


#: The name `_mesh` and `_pipeline` still use, until their rewrite (issue 14) renames it.
