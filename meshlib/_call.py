"""One call as a sans-I/O state machine: the order of layers, and every decision.

The order, outer to inner (DESIGN.md, "The shape of a call"; docs/architecture.md):

```
caller
 └─ route         which destination (or xDS cluster) takes the request: headers, path, weight
     └─ deadline  total budget for the whole call; adopts an enclosing meshlib.deadline()
         └─ faults        injected abort or delay, once per call (a delay uses up the deadline)
             └─ bulkhead  per destination: at most N in flight, else BulkheadFull (or a bounded wait)
                 └─ retry budget-limited; backoff never sleeps past the deadline
                     └─ per attempt (or hedged copy):
                         breaker  per destination; CircuitOpen at once when open (never retried)
                         endpoint p2c or round robin over healthy endpoints; a retry prefers another
                         span     one CLIENT span per attempt actually sent (http.request.resend_count)
                         timeout  min(attempt timeout, what is left of the deadline)
                         headers  traceparent, remaining-deadline header
                         └─ inner transport (httpx.HTTPTransport with the TLS context)
                     response body: read under the same deadline
```

A `Call` is made once per request (or per call of a `resilient` function) and
tells its driver what to do next; the drivers (`_pipeline.Transport`,
`_pipeline.AsyncTransport`, `_decorator`'s two wrappers) only send, wait,
queue, read and cancel:

- `start()`, then after each step one of `waited()`, `queued(got)`,
  `answered(response)` / `returned()`, `failed(exc)`, `drained()`; each
  returns the next action: SEND (call `call.request`; for a function, the
  function, bounded by `call.bound`), WAIT (`call.wait` seconds), QUEUE (for
  the bulkhead, at most `call.queue_for` seconds, None: no limit), DRAIN (read and close
  `call.response`, then `drained()`), RETURN (`call.response`) or RAISE
  (re-raise the exception just caught).
- A decision that ends the call in one of meshlib's own errors
  (`CircuitOpen`, `BulkheadFull`, `DeadlineExceeded`) raises it, as does
  handing back an earlier attempt's exception.
- `cancelled(exc)` when an attempt ends in cancellation (never a failure);
  the driver then re-raises at once.
- `fall_back(exc)` when a request's call ends in an exception and its plan has
  a fallback: the answer to return instead, or None to re-raise. A failed
  response the fallback replaces is DRAINed first, then RETURNed.
- ``with call:`` around it all: leaving frees the bulkhead slot and ends a
  function's span. A request has no such span, so the transports save the
  ``with`` and release `call.slot` (the bulkhead, while a slot is held) in a
  ``finally``.

Where each part is: `__init__` (route: it picks the plan), `start`
(deadline, faults), `_enter_bulkhead` and `queued`, `_begin` and
`_plan_extras` (what is decided once per call), `_attempt` (per attempt, in
the order drawn above), `answered` and `_bound_body`, `_retry_status`,
`failed` and `_next_wait` (the retry decision, whole), `_handed_back` and
`fall_back` (the fallback, `_fallback.py`'s). This module is long because it
is the whole call: split, the order it exists to keep in one place would be
scattered again.

The success path is a straight line through `start`, `_begin`, `_attempt`
and `answered`: one object with slots (those only a retry, a span or an
endpoint needs are left unset until then), no other allocation, the clock
read once. A success while the breaker is closed is recorded at the
attempt's start (the same window bucket, bar an attempt straddling an edge);
every other outcome at the moment it is known.
"""  # noqa: E501 - the diagram is DESIGN.md's, line for line

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

import httpx

from ._breaker import CLOSED
from ._bulkhead import FULL, TAKEN, BulkheadState, Slot
from ._compat import url_with_host
from ._deadline import DEADLINE_SLACK, current_deadline
from ._errors import BulkheadFull, CircuitOpen, ConfigError, DeadlineExceeded, MeshError
from ._fallback import failure_reason
from ._headers import put_header
from ._plan import Plan, Plans
from ._policy import Policy, Retry
from ._retry import (
    RetryState,
    body_is_replayable,
    exception_is_retryable,
    parse_retry_after,
    request_is_idempotent,
)
from ._runtime import runtime
from ._streams import AsyncDeadlineStream, SyncDeadlineStream
from ._telemetry import AttemptSpan, function_span, logger
from ._traffic import Endpoint, choose_route, route_name, route_target
from ._traffic import draw_fault as _draw

if TYPE_CHECKING:
    from opentelemetry.trace import Tracer

    from ._telemetry import Telemetry

__all__ = [
    "DRAIN",
    "QUEUE",
    "RAISE",
    "RETURN",
    "SEND",
    "WAIT",
    "Attempt",
    "Call",
    "is_failure",
]

# What a driver does next (module constants: compared by identity, cheaply).
SEND = 1
WAIT = 2
QUEUE = 3
DRAIN = 4
RETURN = 5
RAISE = 6

POLICY_EXTENSION = "meshlib.policy"
_DEFAULT_RETRY = Retry()
_PHASES = ("connect", "read", "write", "pool")
_REPLAYABLE = httpx.ByteStream(b"")  # stands for any body that can be sent again

# Where the call stands, for `waited`: after the fault's delay, or between attempts.
_FAULTED = 1
_RETRYING = 2
# For `drained`: the response just drained failed, and the fallback's answer replaces it.
_FELL_BACK = 3


def _longest_phase(plan: Plan, timeouts: dict[str, float | None]) -> float:
    """Return the longest of httpcore's four phase timeouts (infinity: one is unbounded).

    Remembered on `plan` when all four are bounded, for the next request's
    comparison (a tuple, swapped whole: safe across threads).
    """
    values = [timeouts.get(phase) for phase in _PHASES]
    if None in values:
        return math.inf
    longest = max(cast("list[float]", values))
    plan.timeouts_seen = (dict(timeouts), longest)
    return longest


def is_failure(exc: Exception) -> bool:
    """Return whether an attempt's exception counts against the destination (breaker, endpoint).

    Connection errors, timeouts and protocol errors; never meshlib's own rejections.
    """
    return isinstance(exc, httpx.TransportError) and not isinstance(exc, MeshError)


class Call:
    """One request (or one call of a `resilient` function), from its route to its answer.

    See the module docstring for the protocol its drivers follow.
    """

    __slots__ = (
        "asynchronous",
        "attempt",
        "avoid",
        "body",
        "bound",
        "deadline_at",
        "extras",
        "hedge",
        "last",
        "matches",
        "name",
        "now",
        "observed",
        "phase",
        "plan",
        "queue_for",
        "request",
        "response",
        "scope",
        "slot",
        "state",
        "substitute",
        "ticket",
        "timeouts",
        "tracer",
        "wait",
    )

    # Slots set before they are read, so not in __init__ (a store less each on every call).
    response: httpx.Response | None  # before RETURN or DRAIN
    ticket: int  # the breaker's, by _attempt: 0 while it is closed
    attempt: Attempt | None  # an attempt's extras, by _attempt while `extras`
    wait: float  # before WAIT
    queue_for: float | None  # before QUEUE
    bound: float | None  # a function's attempt bound, by _attempt
    extras: bool  # by _begin: each attempt has an `Attempt` (a span, an endpoint)
    observed: Telemetry | None  # by _begin, when there are extras or a hedge
    tracer: Tracer | None  # likewise
    avoid: Endpoint | None  # likewise: a retry prefers another endpoint
    hedge: float | None  # by _begin: the hedge delay, None when not hedged
    body: Any  # by _begin: the request's stream as it was before sending
    now: float  # by start: when the current attempt (or the call) began
    deadline_at: float | None  # by start
    phase: int  # before WAIT: after the fault's delay, or between attempts
    matches: Callable[[Exception], bool] | None  # a function's `on`
    name: str  # a function's name
    scope: Any  # a function's span, while it is current
    # Set in __init__:
    state: RetryState | None  # made on the first retry
    last: httpx.Response | Exception | None  # the last outcome, while retrying
    slot: BulkheadState | None  # the bulkhead, while its slot is held
    timeouts: dict[str, float | None] | None  # the caller's own (not in the request's extensions)

    def __init__(
        self,
        plans: Plans,
        policy: Policy | None,
        request: httpx.Request | None,
        asynchronous: bool,
        matches: Callable[[Exception], bool] | None = None,
        name: str = "",
    ) -> None:
        """Find the call's plan: the outermost layer, route, is decided here.

        Raises:
            ConfigError: the request's ``meshlib.policy`` extension is not a Policy.
        """
        if request is None:
            self.plan = plans.for_function(policy, name)
            self.matches = matches  # what it retries, what the breaker counts
            self.name = name
            self.scope = None
        else:
            override = request.extensions.get(POLICY_EXTENSION)
            if override is not None:
                if not isinstance(override, Policy):
                    raise ConfigError(
                        f"extensions[{POLICY_EXTENSION!r}]: expected a meshlib.Policy, "
                        f"got {override!r}"
                    )
                policy = override
            plan = self.plan = plans.for_url(policy, request.url)
            if plan.routes:
                self.plan = self._route(plans, policy, request, plan)
        self.request = request  # None: a function's call
        self.asynchronous = asynchronous
        self.state = None
        self.last = None
        self.slot = None
        self.timeouts = None

    @staticmethod
    def _route(plans: Plans, policy: Policy | None, request: httpx.Request, plan: Plan) -> Plan:
        """Return the plan of the route the request takes, if any, else `plan`."""
        assert plan.routes is not None
        chosen = choose_route(plan.routes, request)
        if chosen is None:
            return plan
        name = route_name(chosen, request)
        # A cluster: its endpoints, policy and state; the request keeps its URL and Host.
        cluster = plans.for_cluster(policy, name, plan)
        if cluster is not None:
            return cluster
        # A host: the request goes there as if sent there (its URL and Host header,
        # then its policy and state); `to`'s own routes are not followed.
        host, port = route_target(name)
        request.url = url_with_host(
            request.url, host, port if port is not None else request.url.port
        )
        request.headers["Host"] = request.url.netloc.decode("ascii")
        return plans.for_url(policy, request.url)

    def __enter__(self) -> Call:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        scope = self.scope if self.request is None else None
        if scope is not None:
            self.scope = None
            scope.__exit__(*exc_info)
        slot = self.slot
        if slot is not None:
            self.slot = None
            slot.release()

    # --- before the first attempt: deadline, faults, bulkhead ---------------------

    def start(self) -> int:
        """Begin the call: fix its deadline, draw its fault, take its bulkhead slot."""
        plan = self.plan
        now = self.now = runtime.clock.now()
        outer = current_deadline()
        total = plan.total
        if total is None:
            self.deadline_at = outer
        else:
            at = now + total
            self.deadline_at = at if outer is None or at < outer else outer
        if plan.faults is not None and self.request is not None:
            abort, delay = self._draw_fault(now)
            self.response = abort
            if delay:
                self.wait = delay
                self.phase = _FAULTED
                return WAIT
            if abort is not None:
                return RETURN
            return self._enter_bulkhead()
        bulkhead = plan.bulkhead
        if bulkhead is not None:
            taken = bulkhead.try_acquire()
            if taken is not TAKEN:
                return self._no_slot(taken)
            self.slot = bulkhead
        return self._begin()

    def _draw_fault(self, now: float) -> tuple[httpx.Response | None, float]:
        """Draw this call's injected fault: (an abort's response or None, seconds to hold it).

        An injected delay uses up the deadline: when it would outlast it, the call
        waits what is left and fails with DeadlineExceeded (checked on the next step).
        """
        plan = self.plan
        faults = plan.policy.faults
        assert faults is not None
        if not plan.faults_announced:
            plan.faults_announced = True
            logger.warning(
                "fault injection is active for %s: %r",
                plan.label,
                faults,
                extra={"meshlib_event": "faults_active", "meshlib_destination": plan.label},
            )
        abort, delay = _draw(faults)
        deadline_at = self.deadline_at
        if deadline_at is not None and delay > deadline_at - now:
            delay = max(0.0, deadline_at - now)
        response = None
        if abort:
            # The caller's answer: not sent, not retried, not counted by the breaker.
            response = httpx.Response(
                faults.status, headers={"x-meshlib-fault": "abort"}, request=self.request
            )
        return response, delay

    def _enter_bulkhead(self) -> int:
        bulkhead = self.plan.bulkhead
        if bulkhead is None:
            return self._begin()
        taken = bulkhead.try_acquire()
        if taken is TAKEN:
            self.slot = bulkhead
            return self._begin()
        return self._no_slot(taken)

    def _no_slot(self, taken: Slot) -> int:
        """Refuse the call (FULL: the queue is full too), or QUEUE it (MAY_QUEUE)."""
        if taken is FULL:
            self.plan.report.rejected("bulkhead_full")
            raise BulkheadFull(self.plan.label, request=self.request)
        # The queue has room: wait for a slot, at most until the deadline.
        deadline_at = self.deadline_at
        self.queue_for = (
            None if deadline_at is None else max(0.0, deadline_at - runtime.clock.now())
        )
        return QUEUE

    def queued(self, got: bool) -> int:
        """Go on after queueing for the bulkhead; `got`: a slot was given."""
        if not got:
            deadline_at = self.deadline_at
            if deadline_at is not None and runtime.clock.now() >= deadline_at - DEADLINE_SLACK:
                raise self._deadline_exceeded("waiting for a slot")
            self.plan.report.rejected("bulkhead_full")
            raise BulkheadFull(self.plan.label, request=self.request)
        self.slot = self.plan.bulkhead
        self.now = runtime.clock.now()
        return self._begin()

    def _begin(self) -> int:
        """Inside the bulkhead: what is decided once per call, then the first attempt."""
        plan = self.plan
        if plan.budget is not None:
            plan.budget.deposit(self.now)
        request = self.request
        if request is None:
            self.extras = False
            if plan.telemetry is not None:
                scope = function_span(plan.telemetry, self.name)
                if scope is not None:
                    scope.__enter__()
                    self.scope = scope
            return self._attempt()
        # Telemetry decided once per call: with no SDK, no span work at all.
        observing = plan.observing
        if plan.plain and (observing is None or not observing()):
            self.extras = False  # the common case: no span, no endpoint, no copies
            self.hedge = None
        else:
            self._plan_extras(request, plan.telemetry)
        self.body = request.stream  # as it was before sending: reading may replace it
        return self._attempt()

    def _plan_extras(self, request: httpx.Request, telemetry: Telemetry | None) -> None:
        """Decide this call's span, endpoint and hedge: what each attempt carries."""
        plan = self.plan
        observed = tracer = None
        if telemetry is not None and telemetry.active():
            tracer = telemetry.tracer()
            if tracer is not None or telemetry.instruments() is not None:
                observed = telemetry
        hedge = self.hedge = None if plan.hedge is None else self._hedge_delay(request)
        # A hedged call's copies make their own.
        self.extras = hedge is None and (
            observed is not None or plan.endpoints is not None or plan.tls is not None
        )
        self.observed, self.tracer, self.avoid = observed, tracer, None

    def _hedge_delay(self, request: httpx.Request) -> float | None:
        """Return the hedge delay for this call, or None when it is not hedged.

        Only idempotent requests whose body can be sent again are hedged.
        """
        plan = self.plan
        hedge = plan.policy.hedge
        assert hedge is not None
        # With retries off, the default Retry's methods say what is idempotent.
        if not request_is_idempotent(request, plan.policy.retry or _DEFAULT_RETRY):
            return None
        if not body_is_replayable(request.stream):
            return None
        if hedge.delay == "p95":
            measured = plan.latencies.p95() if plan.latencies is not None else None
            return measured if measured is not None else 1.0
        return hedge.delay

    # --- each attempt: time left, breaker, endpoint, span, timeout, headers -----------

    def waited(self) -> int:
        """Go on after a WAIT: the fault's delay, or the backoff before a retry."""
        self.now = runtime.clock.now()
        if self.phase == _FAULTED:
            self.phase = 0
            if self.response is not None:
                return RETURN
            # When the delay used up the deadline, the first attempt raises DeadlineExceeded.
            return self._enter_bulkhead()
        return self._attempt()

    def _attempt(self) -> int:
        """Prepare the next attempt; SEND, or hand back the last outcome (breaker open).

        In the order drawn above: is any time left (the deadline's own check, so
        nothing is admitted, chosen or traced for an attempt that cannot go),
        breaker, endpoint and span (`Attempt`), timeout, headers.
        """
        plan = self.plan
        request = self.request
        deadline_at = self.deadline_at
        if deadline_at is None:
            left = None
        else:
            left = deadline_at - self.now
            if left <= 0.0:
                raise self._deadline_exceeded(
                    "before calling" if request is None else "before sending"
                )
        breaker = plan.breaker
        if breaker is None or breaker.state is CLOSED:
            self.ticket = 0  # the common case: decided without the breaker's lock
        else:
            now = self.now
            ticket = breaker.admit(now)
            if ticket is None:
                plan.report.rejected("circuit_open")
                last = self.last
                if last is None:
                    raise CircuitOpen(plan.label, breaker.retry_after(now), request=request)
                if isinstance(last, Exception):
                    raise last
                self.response = last
                return RETURN if plan.fallback is None else self._handed_back(last)
            self.ticket = ticket
        if self.extras:
            assert request is not None
            attempt = self.attempt = self.new_attempt(request, self.avoid)
            self.avoid = attempt.endpoint
        bound = plan.attempt_timeout
        if left is not None and (bound is None or left < bound):
            bound = left
        if request is None:
            self.bound = bound  # the function's driver bounds its attempt by it
        else:
            if bound is not None:
                # Each httpcore phase gets the smaller of the caller's own timeout and
                # `bound`. The caller's are kept aside on the first attempt, so a later
                # one does not inherit those this call (or its body's read) lowered.
                extensions = request.extensions
                base = self.timeouts
                if base is None:
                    base = self.timeouts = extensions.get("timeout") or {}
                    # A client sends the same four timeouts with every request: their
                    # longest is remembered on the plan, so that the common case (each
                    # phase already within the bound) costs one comparison in C.
                    seen = plan.timeouts_seen
                    if seen is not None and seen[0] == base:
                        lower = seen[1] > bound
                    else:
                        lower = _longest_phase(plan, base) > bound
                else:
                    lower = True
                if lower:
                    extensions["timeout"] = {
                        phase: bound
                        if (value := base.get(phase)) is None or value > bound
                        else value
                        for phase in _PHASES
                    }
            key = plan.deadline_key
            if key is not None and left is not None:
                # A nanosecond more than is left keeps a whole budget whole: 30 s less
                # a float's rounding error would otherwise be sent as 29999 ms.
                ms = left * 1000.0 + 1e-6
                whole, value = plan.deadline_recent
                if not whole <= ms < whole + 1.0:
                    value = plan.deadline_value(ms)
                put_header(request.headers, key, value)
        return SEND

    def new_attempt(self, request: httpx.Request, avoid: Endpoint | None) -> Attempt:
        """Start an attempt's extras (its span, its endpoint) for `request` or a hedged copy."""
        return Attempt(
            self.plan, request, self.state, self.observed, self.tracer, avoid, runtime.clock.now()
        )

    def may_hedge(self) -> bool:
        """Charge a hedged copy to the retry budget; False when the budget is spent."""
        budget = self.plan.budget
        return budget is None or budget.try_withdraw(runtime.clock.now())

    # --- outcomes -------------------------------------------------------------------------

    def answered(self, response: httpx.Response) -> int:
        """Decide what follows a response: RETURN it, or DRAIN it and retry."""
        plan = self.plan
        status = response.status_code
        if self.extras:
            attempt = self.attempt
            assert attempt is not None
            attempt.end(response, status >= 500)
        sketch = plan.sketch  # None unless a status page watches the Mesh
        if sketch is not None:
            ended = runtime.clock.now()
            sketch.add(ended - self.now, ended)
        breaker = plan.breaker
        if breaker is not None:
            if self.ticket or status in breaker.on_status:
                breaker.record(self.ticket, status in breaker.on_status, runtime.clock.now())
            else:  # the common case: a success while closed, counted at the attempt's start
                breaker.succeeded(self.now)
        stream = response.stream
        if not isinstance(stream, httpx.ByteStream):
            self._bound_body(response, stream)
        self.response = response
        if plan.fallback is not None:
            return self._answered_with_fallback(response)
        retry = plan.retry
        if retry is None or status not in retry.on_status:
            return RETURN
        return self._retry_status(response, retry)

    def _bound_body(self, response: httpx.Response, stream: Any) -> None:
        """Read the body under the call's deadline (async: always, so a close is never cut)."""
        request = self.request
        assert request is not None
        deadline_at = self.deadline_at
        # `stream` is the inner transport's own (Any: a cast would be a call on every response).
        if self.asynchronous:
            response.stream = AsyncDeadlineStream(
                stream, request, response, deadline_at, self.plan.label, self.timeouts
            )
        elif deadline_at is not None:
            response.stream = SyncDeadlineStream(
                stream, request, response, deadline_at, self.plan.label, self.timeouts
            )

    def _retry_status(self, response: httpx.Response, retry: Retry) -> int:
        """Decide whether a response with a retryable status is retried."""
        plan = self.plan
        request = self.request
        assert request is not None
        if not request_is_idempotent(request, retry):
            return RETURN
        if not body_is_replayable(self.body):
            if retry.attempts > 1:
                plan.report.not_replayable(str(response.status_code))
            return RETURN
        header = response.headers.get("retry-after")
        retry_after = parse_retry_after(header) if header is not None else None
        if not self._next_wait(retry, str(response.status_code), retry_after):
            return RETURN
        self.last = response
        # Read and close first, so the connection goes back to the pool; the
        # content stays readable should this response be handed back.
        return DRAIN

    def drained(self) -> int:
        """Go on after the driver read and closed a response that is retried (or replaced)."""
        if self.phase == _FELL_BACK:
            self.response = self.substitute
            return RETURN
        return WAIT

    # --- fallback: the call's answer when it finally fails (off: never reached) -----

    def _answered_with_fallback(self, response: httpx.Response) -> int:
        """`answered`'s retry decision with a fallback: a final response is kept or replaced."""
        retry = self.plan.retry
        if retry is not None and response.status_code in retry.on_status:
            action = self._retry_status(response, retry)
            if action != RETURN:
                return action
        return self._handed_back(response)

    def _handed_back(self, response: httpx.Response) -> int:
        """The call ends with `response`: keep it if good, replace it if it failed; RETURN or DRAIN.

        A failed response that is replaced is drained first (DRAIN), so its
        connection goes back to the pool; `drained` then RETURNs the answer.
        """
        fallback = self.plan.fallback
        request = self.request
        assert fallback is not None
        assert request is not None
        now = runtime.clock.now()
        body = self.body
        if response.status_code in fallback.failed_statuses:
            found = fallback.answer(request, body, "status", now)
            if found is None:
                return RETURN
            self.substitute, served = found
            self.plan.report.fell_back(served, "status")
            self.phase = _FELL_BACK
            return DRAIN
        fallback.keep(request, body, response, now, self.asynchronous)
        return RETURN

    def fall_back(self, exc: Exception) -> httpx.Response | None:
        """The request finally failed with `exc`: return the fallback's answer, or None (raise).

        The transports call this where a call ends in an exception (retries
        used up, or one of meshlib's refusals), only when the plan has a
        fallback. Cancellation never gets here: it is not an Exception.
        """
        fallback = self.plan.fallback
        request = self.request
        assert fallback is not None
        assert request is not None
        reason = failure_reason(exc)
        if reason is None:
            return None
        # A call refused before its first attempt has no `body` yet: the request's is unread.
        body = getattr(self, "body", request.stream)
        found = fallback.answer(request, body, reason, runtime.clock.now())
        if found is None:
            return None
        answer, served = found
        self.plan.report.fell_back(served, reason)
        return answer

    def returned(self) -> int:
        """A function's attempt returned: record the success."""
        breaker = self.plan.breaker
        if breaker is not None:
            breaker.record(self.ticket, False, runtime.clock.now() if self.ticket else self.now)
        return RETURN

    def failed(self, exc: Exception, timed_out: bool = False) -> int:
        """Decide what follows an attempt that raised: WAIT and retry, or RAISE.

        `timed_out`: a function's attempt was cut by its own bound (`self.bound`).

        Raises:
            DeadlineExceeded: the attempt timed out because the call's time ran out.
        """
        plan = self.plan
        now = runtime.clock.now()
        request = self.request
        matches = self.matches if request is None else None
        if matches is None:
            failed = is_failure(exc)
            timed_out = isinstance(exc, httpx.TimeoutException)
        else:
            # For a function, what `on` retries is what the breaker counts.
            failed = timed_out or (not isinstance(exc, MeshError) and matches(exc))
        attempt = self.attempt if self.extras else None
        if attempt is not None:
            attempt.end(exc, failed)
        if plan.breaker is not None:
            plan.breaker.record(self.ticket, failed, now)
        deadline_at = self.deadline_at
        if timed_out and deadline_at is not None and now >= deadline_at - DEADLINE_SLACK:
            # The bound that fired was what was left of the deadline: the call's time is up.
            raise self._deadline_exceeded("waiting for the answer") from exc
        retry = plan.policy.retry
        if retry is None:
            return RAISE
        if request is None:
            assert matches is not None
            if isinstance(exc, MeshError) or not matches(exc):
                return RAISE
        elif not exception_is_retryable(exc, request, self.body, retry):
            # Said only when the body is all that stood in the way: the same error with a
            # replayable body would have been retried.
            if (
                retry.attempts > 1
                and not body_is_replayable(self.body)
                and exception_is_retryable(exc, request, _REPLAYABLE, retry)
            ):
                plan.report.not_replayable(type(exc).__name__)
            return RAISE
        if not self._next_wait(retry, type(exc).__name__, None, now):
            return RAISE
        self.last = exc
        return WAIT

    def _next_wait(
        self, retry: Retry, cause: str, retry_after: float | None, now: float | None = None
    ) -> bool:
        """Decide the wait before the next attempt (`self.wait`); False: stop retrying."""
        plan = self.plan
        state = self.state
        if state is None:
            state = self.state = RetryState(retry, plan.budget, self.deadline_at)
        wait = state.next_wait(runtime.clock.now() if now is None else now, retry_after)
        if wait is None:
            plan.report.stop(state.attempt_number, cause, state.stop_reason or "")
            return False
        plan.report.retry(state.attempt_number - 1, state.retry.attempts, cause, wait)
        self.phase = _RETRYING
        self.wait = 0.0 if runtime.skip_waits else wait
        return True

    def cancelled(self, exc: BaseException) -> None:
        """An attempt ended in cancellation (or Ctrl-C): never a failure; the driver re-raises."""
        attempt = self.attempt if self.extras else None
        if attempt is not None:
            attempt.end(exc, None)
        if self.plan.breaker is not None:
            self.plan.breaker.release(self.ticket)

    def _deadline_exceeded(self, doing: str) -> DeadlineExceeded:
        """Report a call cut off by its deadline and return the error to raise."""
        self.plan.report.rejected("deadline")
        return DeadlineExceeded(
            f"deadline exceeded {doing} ({self.plan.label})", request=self.request
        )


class Attempt:
    """One attempt's extras, made only when there are any: its span and its endpoint.

    With endpoints, the request goes to the chosen address while its Host
    header, TLS server name and (once restored) URL stay the destination's.
    """

    __slots__ = ("endpoint", "plan", "request", "span", "started", "target")

    def __init__(
        self,
        plan: Plan,
        request: httpx.Request,
        state: RetryState | None,
        observed: Telemetry | None,
        tracer: Tracer | None,
        avoid: Endpoint | None,
        now: float,
    ) -> None:
        self.plan = plan
        self.request = request
        self.target = request.url
        pool = plan.endpoints
        self.endpoint = None if pool is None else pool.pick(now, avoid)
        self.span = None
        if observed is not None:
            # Started before the request is aimed at the endpoint: the span names the
            # destination (its URL, host and port), as the caller sees it.
            destination = plan.destination
            resend = 0 if state is None else state.attempt_number - 1
            self.span = AttemptSpan(
                observed,
                tracer,
                request,
                destination.host,
                destination.port,
                resend,
                plan.propagate,
                plan.cluster,
            )
        endpoint = self.endpoint
        tls = plan.tls
        if endpoint is not None or tls is not None:
            target = self.target
            host, port = (
                (endpoint.host, endpoint.port)
                if endpoint is not None
                else (target.host, target.port)
            )
            scheme = target.scheme
            if tls is not None and scheme == "http":
                # meshlib originates the TLS: the connection is https, to the same port.
                scheme, port = "https", port or 80
            request.url = url_with_host(target, host, port, scheme)
            if scheme == "https":
                # httpcore sends this name as SNI and verifies the certificate against it.
                name = tls.server_name if tls is not None else None
                request.extensions["sni_hostname"] = name or plan.destination.host
        self.started = time.perf_counter()

    def end(self, outcome: httpx.Response | BaseException, failed: bool | None) -> None:
        """Restore the URL, tell the endpoint pool and end the span; `failed` None: cancelled."""
        latency = time.perf_counter() - self.started
        if self.endpoint is not None:
            self.request.url = self.target
            assert self.plan.endpoints is not None
            self.plan.endpoints.done(self.endpoint, failed, latency, runtime.clock.now())
        elif self.plan.tls is not None:
            self.request.url = self.target
        if failed is False and self.plan.latencies is not None:
            self.plan.latencies.add(latency)
        if self.span is not None:
            self.span.end(outcome, latency)
