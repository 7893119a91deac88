"""The sync and async drivers: the only place that sends, waits and cancels.

The shape of a call, outer to inner (DESIGN.md):

```
deadline        total budget for the whole call; adopts an enclosing meshlib.deadline()
 └─ bulkhead    per destination: a slot, else BulkheadFull (or a bounded wait)
     └─ retry   budget-limited; backoff never sleeps past the deadline
         └─ per attempt:
             timeout   min(attempt timeout, what is left of the deadline)
             headers   what is left, to destinations inside the mesh
             breaker   CircuitOpen at once when open (never retried)
             └─ inner transport
         response body: read under the same deadline (_streams)
```

Every decision lives in plain objects (`RetryState`, `RetryBudget`,
`CircuitBreaker`, `ConcurrencyLimit` and the helpers below) shared by both
drivers; `Transport.handle_request` and `AsyncTransport.handle_async_request`
are the same loop, differing only in how they call, read, wait and queue.
Keep them side by side and in step.
"""

from __future__ import annotations

import dataclasses
import queue
import threading
import time
from typing import TYPE_CHECKING, cast

import anyio
import httpx

from ._breaker import CLOSED
from ._deadline import DEADLINE_SLACK, current_deadline, long_budget_header
from ._errors import BulkheadFull, CircuitOpen, ConfigError, DeadlineExceeded, MeshError
from ._headers import put_header
from ._mesh import Mesh, Plan, default_mesh, refuse_destination_layers
from ._policy import STANDARD, Policy, Retry
from ._retry import (
    RetryState,
    body_is_replayable,
    exception_is_retryable,
    parse_retry_after,
    request_is_idempotent,
)
from ._runtime import runtime
from ._streams import AsyncDeadlineStream, SyncDeadlineStream, close_shielded
from ._telemetry import AttemptSpan, logger
from ._traffic import Endpoint, choose_route, route_target
from ._traffic import draw_fault as _draw

if TYPE_CHECKING:
    from opentelemetry.trace import Tracer

    from ._telemetry import Telemetry

__all__ = ["AsyncTransport", "Transport"]

POLICY_EXTENSION = "meshlib.policy"
_DEFAULT_RETRY = Retry()
_PHASES = ("connect", "read", "write", "pool")
_REPLAYABLE = httpx.ByteStream(b"")  # stands for any body that can be sent again
_LAYER_NAMES = [f.name for f in dataclasses.fields(Policy) if f.init]


def _resolve(policy_or_mesh: Policy | Mesh | None) -> tuple[Mesh, Policy | None]:
    if policy_or_mesh is None:  # the default Mesh's own policies ($MESHLIB_CONFIG's file)
        return default_mesh(), None
    if isinstance(policy_or_mesh, Mesh):
        return policy_or_mesh, None
    if isinstance(policy_or_mesh, Policy):
        # A bare policy applies to every destination: it is a default.
        refuse_destination_layers(policy_or_mesh, "policy")
        return default_mesh(), policy_or_mesh
    raise ConfigError(f"policy: expected a meshlib.Policy or meshlib.Mesh, got {policy_or_mesh!r}")


# Per kind of driver (async or not): the method httpx calls, what to give, the other driver.
_KINDS = {
    False: (
        "handle_request",
        "an httpx.BaseTransport such as httpx.HTTPTransport()",
        "meshlib.AsyncTransport",
    ),
    True: (
        "handle_async_request",
        "an httpx.AsyncBaseTransport such as httpx.AsyncHTTPTransport()",
        "meshlib.Transport",
    ),
}


def _refuse_inner(owner: str, transport: object, asynchronous: bool) -> None:
    """Raise ConfigError unless `transport` can be the inner transport of `owner`.

    Checked by the method httpx calls, as httpx itself duck-types transports; a
    meshlib transport inside another would multiply retries, as wrapping twice does.
    """
    if isinstance(transport, _Pipeline):
        raise ConfigError(
            f"{owner}.transport: expected the transport that does the I/O, got "
            f"{transport!r} (a meshlib transport inside another multiplies retries)"
        )
    method, kind, other = _KINDS[asynchronous]
    if not callable(getattr(transport, method, None)):
        opposite = _KINDS[not asynchronous][0]
        hint = f"; for it, use {other}" if callable(getattr(transport, opposite, None)) else ""
        raise ConfigError(f"{owner}.transport: expected {kind}, got {transport!r}{hint}")


def _layers_on(policy: Policy) -> str:
    on = [name for name in _LAYER_NAMES if getattr(policy, name) is not None]
    return f"with {', '.join(on)}" if on else "with every layer off"


def _inner_name(transport: object) -> str:
    kind = type(transport)
    return f"{kind.__module__}.{kind.__qualname__}"


class _Pipeline:
    """What both drivers share: the inner transport and where policies come from."""

    def __init__(self, policy_or_mesh: Policy | Mesh | None = None) -> None:
        self.mesh, self.policy = _resolve(policy_or_mesh)
        self._last: Plan | None = None

    def __repr__(self) -> str:
        inner = _inner_name(getattr(self, "inner", None))
        if self.policy is None:
            return f"<meshlib.{type(self).__name__} over {inner}, policies from {self.mesh!r}>"
        policy = "STANDARD" if self.policy == STANDARD else _layers_on(self.policy)
        return (
            f"<meshlib.{type(self).__name__} over {inner}, policy {policy}, state in {self.mesh!r}>"
        )

    def _plan(self, request: httpx.Request) -> Plan:
        policy = request.extensions.get(POLICY_EXTENSION)
        if policy is None:
            policy = self.policy
        elif not isinstance(policy, Policy):
            raise ConfigError(
                f"extensions[{POLICY_EXTENSION!r}]: expected a meshlib.Policy, got {policy!r}"
            )
        # Most clients talk to one destination: remember the last plan and skip
        # the Mesh's lookup while it still matches (httpx's parsed URL fields).
        ref = request.url._uri_reference
        last = self._last
        if (
            last is not None
            and last.url_host == ref.host
            and last.url_port == ref.port
            and last.url_scheme == ref.scheme
            and last.requested is policy
            and last.generation == self.mesh.generation
        ):
            plan = last
        else:
            plan = self._last = self.mesh.plan(policy, request.url)
        if plan.routes:
            route = choose_route(plan.routes, request)
            if route is not None:
                # The request goes to `to` as if sent there: its URL and Host header,
                # then its policy and state; `to`'s own routes are not followed.
                host, port = route_target(route)
                request.url = request.url.copy_with(
                    host=host, port=port if port is not None else request.url.port
                )
                request.headers["Host"] = request.url.netloc.decode("ascii")
                plan = self.mesh.plan(policy, request.url)
        return plan


def call_deadline(plan: Plan, now: float) -> float | None:
    """Return the call's deadline: the earlier of the enclosing one and `total` from now."""
    outer = current_deadline()
    total = plan.total
    if total is None:
        return outer
    at = now + total
    return at if outer is None or at < outer else outer


def queue_timeout(
    verdict: bool | None,
    plan: Plan,
    request: httpx.Request | None,
    deadline_at: float | None,
) -> float | None:
    """Return how long a call may queue for a slot, or raise BulkheadFull when it may not.

    `verdict` is what ``try_acquire`` said: None (the queue has room) or False (full).
    """
    if verdict is False:
        plan.report.rejected("bulkhead_full")
        raise BulkheadFull(plan.label, request=request)
    return None if deadline_at is None else max(0.0, deadline_at - runtime.clock.now())


def queued_too_long(
    plan: Plan, request: httpx.Request | None, deadline_at: float | None
) -> MeshError:
    if deadline_at is not None and runtime.clock.now() >= deadline_at - DEADLINE_SLACK:
        return deadline_exceeded(plan, request, "waiting for a slot")
    plan.report.rejected("bulkhead_full")
    return BulkheadFull(plan.label, request=request)


def deadline_exceeded(plan: Plan, request: httpx.Request | None, doing: str) -> DeadlineExceeded:
    """Report a call cut off by its deadline and return the error to raise."""
    plan.report.rejected("deadline")
    return DeadlineExceeded(
        f"deadline exceeded {doing} ({plan.label})",
        request=request,
    )


def admit(
    plan: Plan,
    request: httpx.Request | None,
    now: float,
    last: httpx.Response | Exception | None,
) -> int | None:
    """Ask the breaker for this attempt: a ticket, or None to hand back `last`.

    Raises:
        CircuitOpen: the breaker rejects the first attempt; nothing is sent.
    """
    breaker = plan.breaker
    if breaker is None:
        return 0
    ticket = breaker.admit(now)
    if ticket is None:
        plan.report.rejected("circuit_open")
        if last is None:
            raise CircuitOpen(plan.label, breaker.retry_after(now), request=request)
    return ticket


def give_back(last: httpx.Response | Exception | None) -> httpx.Response:
    """End a call the breaker stopped between attempts with its last outcome."""
    if isinstance(last, Exception):
        raise last
    assert last is not None  # admit() raised CircuitOpen for a first attempt
    return last


def record(plan: Plan, ticket: int, failed: bool) -> None:
    """Tell the breaker how the attempt it admitted with `ticket` ended."""
    if plan.breaker is not None:
        plan.breaker.record(ticket, failed, runtime.clock.now())


def _error_is_failure(exc: Exception) -> bool:
    # Connection errors, timeouts and protocol errors; never meshlib's own rejections.
    return isinstance(exc, httpx.TransportError) and not isinstance(exc, MeshError)


def release(plan: Plan, ticket: int) -> None:
    """Give a cancelled attempt's probe slot back: cancellation is never a failure."""
    if plan.breaker is not None:
        plan.breaker.release(ticket)


def _prepare_attempt(
    request: httpx.Request, plan: Plan, deadline_at: float | None, now: float
) -> None:
    """Bound the attempt by min(attempt timeout, what is left) and say what is left.

    Each httpcore phase (connect, read, write, pool) gets the smaller of the
    caller's own timeout and that bound; destinations inside the mesh get what
    is left in whole milliseconds in the deadline header.

    Raises:
        DeadlineExceeded: nothing is left; the request is not sent.
    """
    bound = plan.attempt_timeout
    if deadline_at is not None:
        left = deadline_at - now
        if left <= 0:
            raise deadline_exceeded(plan, request, "before sending")
        key = plan.deadline_key
        if key is not None:
            ms = left * 1000
            budget = (
                b"%d%s" % (ms, plan.deadline_unit)
                if ms <= plan.deadline_max
                else long_budget_header(key, left)  # never more digits than meshlib reads
            )
            put_header(request.headers, key, budget)
        if bound is None or left < bound:
            bound = left
    if bound is None:
        return
    extensions = request.extensions
    # Bounds come from the caller's own timeouts, kept aside the first time they
    # are lowered, so a request sent again later does not inherit shrunken ones.
    base = extensions.get("meshlib.timeout")
    if base is None:
        base = extensions.get("timeout") or {}
        # Unrolled: this runs on every request.
        get = base.get
        connect, read, write, pool = get("connect"), get("read"), get("write"), get("pool")
        if (
            connect is not None
            and read is not None
            and write is not None
            and pool is not None
            and connect <= bound
            and read <= bound
            and write <= bound
            and pool <= bound
        ):
            return  # every phase is already within the bound: the common case
        extensions["meshlib.timeout"] = base
    extensions["timeout"] = {
        phase: bound if (value := base.get(phase)) is None or value > bound else value
        for phase in _PHASES
    }


def _after_error(
    exc: Exception,
    request: httpx.Request,
    body: object,
    plan: Plan,
    state: RetryState | None,
    deadline_at: float | None,
) -> tuple[RetryState | None, float | None]:
    """Decide what follows a failed attempt: (state, wait) or (state, None) to re-raise.

    Raises:
        DeadlineExceeded: the attempt timed out because the call's time ran out.
    """
    now = runtime.clock.now()
    if (
        isinstance(exc, httpx.TimeoutException)
        and deadline_at is not None
        and now >= deadline_at - DEADLINE_SLACK
    ):
        raise deadline_exceeded(plan, request, "waiting for the answer") from exc
    retry = plan.policy.retry
    if retry is None:
        return state, None
    if not exception_is_retryable(exc, request, body, retry):
        # Said only when the body is all that stood in the way: the same error with a
        # replayable body would have been retried.
        if (
            retry.attempts > 1
            and not body_is_replayable(body)
            and exception_is_retryable(exc, request, _REPLAYABLE, retry)
        ):
            plan.report.not_replayable(type(exc).__name__)
        return state, None
    if state is None:
        state = RetryState(retry, plan.budget, deadline_at)
    wait = state.next_wait(now)
    report_decision(plan, state, type(exc).__name__, wait)
    return state, wait


def _after_response(
    response: httpx.Response,
    request: httpx.Request,
    body: object,
    plan: Plan,
    state: RetryState | None,
    deadline_at: float | None,
) -> tuple[RetryState | None, float | None]:
    """Decide what follows a response with a retryable status: (state, wait or None)."""
    retry = plan.policy.retry
    assert retry is not None  # the drivers call this only for statuses in retry.on_status
    if not request_is_idempotent(request, retry):
        return state, None
    if not body_is_replayable(body):
        if retry.attempts > 1:
            plan.report.not_replayable(str(response.status_code))
        return state, None
    if state is None:
        state = RetryState(retry, plan.budget, deadline_at)
    header = response.headers.get("retry-after")
    retry_after = parse_retry_after(header) if header is not None else None
    wait = state.next_wait(runtime.clock.now(), retry_after)
    report_decision(plan, state, str(response.status_code), wait)
    return state, wait


def observe(telemetry: Telemetry) -> tuple[Telemetry | None, Tracer | None]:
    """Return (telemetry, tracer) for a call, telemetry None when nothing would record.

    Called only when ``telemetry.active()``.
    """
    tracer = telemetry.tracer()
    if tracer is None and telemetry.instruments() is None:
        return None, None
    return telemetry, tracer


def draw_fault(
    plan: Plan, request: httpx.Request, deadline_at: float | None, now: float
) -> tuple[httpx.Response | None, float]:
    """Draw this call's injected fault: (an abort's response or None, seconds to hold it).

    An injected delay uses up the deadline: when it would outlast it, the call
    waits what is left and fails with DeadlineExceeded (checked on the next step).
    """
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
    if deadline_at is not None and delay > deadline_at - now:
        delay = max(0.0, deadline_at - now)
    response = None
    if abort:
        # The caller's answer: not sent, not retried, not counted by the breaker.
        response = httpx.Response(
            faults.status, headers={"x-meshlib-fault": "abort"}, request=request
        )
    return response, delay


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
        self.span = None
        if observed is not None:
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
            )
        self.endpoint = None
        self.target = request.url
        pool = plan.endpoints
        if pool is not None:
            endpoint = self.endpoint = pool.pick(now, avoid)
            request.url = self.target.copy_with(host=endpoint.host, port=endpoint.port)
            if self.target.scheme == "https":
                # httpcore verifies the certificate against the SNI name.
                request.extensions["sni_hostname"] = plan.destination.host
        self.started = time.perf_counter()

    def end(self, outcome: httpx.Response | BaseException, failed: bool | None) -> None:
        """Restore the URL, tell the endpoint pool and end the span; `failed` None: cancelled."""
        latency = time.perf_counter() - self.started
        if self.endpoint is not None:
            self.request.url = self.target
            assert self.plan.endpoints is not None
            self.plan.endpoints.done(self.endpoint, failed, latency, runtime.clock.now())
        if failed is False and self.plan.latencies is not None:
            self.plan.latencies.add(latency)
        if self.span is not None:
            self.span.end(outcome, latency)


def hedge_for(plan: Plan, request: httpx.Request) -> float | None:
    """Return the hedge delay for this call, or None when it is not hedged.

    Only idempotent requests whose body can be sent again are hedged.
    """
    hedge = plan.policy.hedge
    if hedge is None:
        return None
    # With retries off, the default Retry's methods say what is idempotent.
    if not request_is_idempotent(request, plan.policy.retry or _DEFAULT_RETRY):
        return None
    if not body_is_replayable(request.stream):
        return None
    if hedge.delay == "p95":
        measured = plan.latencies.p95() if plan.latencies is not None else None
        return measured if measured is not None else 1.0
    return hedge.delay


def spend_on_hedge(plan: Plan) -> bool:
    """Charge a hedged copy to the retry budget; False when the budget is spent."""
    budget = plan.budget
    return budget is None or budget.try_withdraw(runtime.clock.now())


def copy_request(request: httpx.Request) -> httpx.Request:
    """Return a copy of a replayable request for a hedged attempt."""
    copy = httpx.Request(
        request.method, request.url, headers=request.headers.copy(), content=request.read()
    )
    # One extensions dict for all copies: the timeouts httpcore reads from it are the
    # call's, and the bound the winner's body stream sets must reach the copy that won.
    copy.extensions = request.extensions
    return copy


def _close_the_rest(answers: queue.SimpleQueue[httpx.Response | Exception], pending: int) -> None:
    """Close the losing copies' responses as they arrive, off the caller's thread."""
    if pending <= 0:
        return

    def drain() -> None:
        for _ in range(pending):
            answer = answers.get()
            if isinstance(answer, httpx.Response):
                answer.close()

    threading.Thread(target=drain, name="meshlib-hedge-close", daemon=True).start()


def report_decision(plan: Plan, state: RetryState, cause: str, wait: float | None) -> None:
    """Report a retry, or why retrying stopped."""
    if wait is None:
        plan.report.stop(state.attempt_number, cause, state.stop_reason or "")
    else:
        plan.report.retry(state.attempt_number - 1, state.retry.attempts, cause, wait)


class Transport(_Pipeline, httpx.BaseTransport):
    """Wrap a sync httpx transport with a policy's layers.

    Args:
        transport: the transport that does the I/O, e.g. ``httpx.HTTPTransport()``.
        policy: a `Policy` (state kept in the process-wide default Mesh), a `Mesh`,
            or None for the default Mesh's own policies (as for `wrap`).

    Raises:
        ConfigError: `transport` is not a sync transport (None, an async one) or
            is already a meshlib transport, or `policy` is neither a Policy nor a Mesh.
    """

    def __init__(self, transport: httpx.BaseTransport, policy: Policy | Mesh | None = None) -> None:
        _refuse_inner("Transport", transport, asynchronous=False)
        super().__init__(policy)
        self.inner = transport

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        plan = self._plan(request)
        clock = runtime.clock
        now = clock.now()
        deadline_at = call_deadline(plan, now)
        if plan.faults is not None:
            abort, delay = draw_fault(plan, request, deadline_at, now)
            if delay:
                clock.sleep(delay)
                now = clock.now()
            if abort is not None:
                return abort
        bulkhead = plan.bulkhead
        if bulkhead is not None and (taken := bulkhead.try_acquire()) is not True:
            timeout = queue_timeout(taken, plan, request, deadline_at)
            if not bulkhead.acquire(timeout):
                raise queued_too_long(plan, request, deadline_at)
            now = clock.now()
        try:
            if plan.budget is not None:
                plan.budget.deposit(now)
            retry = plan.policy.retry
            breaker = plan.breaker
            state: RetryState | None = None
            # Telemetry decided once per call: with no SDK, no span work at all.
            observed = tracer = None
            if plan.telemetry is not None and plan.telemetry.active():
                observed, tracer = observe(plan.telemetry)
            avoid: Endpoint | None = None  # a retry prefers another endpoint
            last: httpx.Response | Exception | None = None
            hedge = hedge_for(plan, request) if plan.hedge is not None else None
            body = request.stream  # as it was before sending: reading may replace it
            while True:
                _prepare_attempt(request, plan, deadline_at, now)
                ticket = 0  # closed, the common case: decided without the breaker's lock
                if breaker is not None and breaker.state is not CLOSED:
                    admitted = admit(plan, request, now, last)
                    if admitted is None:
                        return give_back(last)
                    ticket = admitted
                attempt = None  # an attempt's extras: its span and endpoint, when there are any
                if hedge is None and (observed is not None or plan.endpoints is not None):
                    attempt = Attempt(plan, request, state, observed, tracer, avoid, now)
                    avoid = attempt.endpoint
                try:
                    if hedge is None:
                        response = self.inner.handle_request(request)
                    else:
                        response = self._hedged(
                            request, plan, state, observed, tracer, avoid, hedge
                        )
                except Exception as exc:  # cancellation and Ctrl-C are handled below
                    failed = _error_is_failure(exc)
                    if attempt is not None:
                        attempt.end(exc, failed)
                    if breaker is not None:
                        breaker.record(ticket, failed, clock.now())
                    state, wait = _after_error(exc, request, body, plan, state, deadline_at)
                    if wait is None:
                        raise
                    last = exc
                except BaseException as exc:  # clean up, then re-raise: cancellation propagates
                    if attempt is not None:
                        attempt.end(exc, None)
                    if breaker is not None:
                        breaker.release(ticket)
                    raise
                else:
                    if attempt is not None:
                        attempt.end(response, response.status_code >= 500)
                    sketch = plan.sketch  # None unless a status page watches the Mesh
                    if sketch is not None:
                        ended = clock.now()
                        sketch.add(ended - now, ended)
                    if breaker is not None:
                        breaker.record(ticket, response.status_code in breaker.on_status, now)
                    if deadline_at is not None and not isinstance(
                        response.stream, httpx.ByteStream
                    ):
                        response.stream = SyncDeadlineStream(
                            cast(httpx.SyncByteStream, response.stream),
                            request,
                            response,
                            deadline_at,
                            plan.label,
                        )
                    if retry is None or response.status_code not in retry.on_status:
                        return response
                    state, wait = _after_response(response, request, body, plan, state, deadline_at)
                    if wait is None:
                        return response
                    # Read and close so the connection goes back to the pool; the
                    # content stays readable should this response be handed back.
                    try:
                        response.read()
                    except httpx.TransportError:
                        pass
                    finally:
                        response.close()
                    last = response
                if wait > 0 and not runtime.skip_waits:
                    clock.sleep(wait)
                now = clock.now()
        finally:
            if bulkhead is not None:
                bulkhead.release()

    def _hedged(
        self,
        request: httpx.Request,
        plan: Plan,
        state: RetryState | None,
        observed: Telemetry | None,
        tracer: Tracer | None,
        avoid: Endpoint | None,
        delay: float,
    ) -> httpx.Response:
        """Send `request`, and copies after `delay` without an answer; the first answer wins.

        Copies run in threads (a blocked sync read cannot be cancelled): the
        losers' responses are closed when they arrive. The winner's response
        carries the caller's request.
        """
        answers: queue.SimpleQueue[httpx.Response | Exception] = queue.SimpleQueue()
        hedge = plan.policy.hedge
        assert hedge is not None

        def send(copy: httpx.Request, avoid: Endpoint | None) -> Endpoint | None:
            attempt = Attempt(plan, copy, state, observed, tracer, avoid, runtime.clock.now())

            def run() -> None:
                try:
                    response = self.inner.handle_request(copy)
                except Exception as exc:
                    attempt.end(exc, _error_is_failure(exc))
                    answers.put(exc)
                    return
                attempt.end(response, response.status_code >= 500)
                answers.put(response)

            threading.Thread(target=run, name="meshlib-hedge", daemon=True).start()
            return attempt.endpoint

        # Every attempt sends a copy: a loser still running must not change the URL
        # of the request the caller gets back.
        used = send(copy_request(request), avoid)
        launched, failures, copies_allowed = 1, 0, True
        try:
            while True:
                may_copy = copies_allowed and launched <= hedge.max_extra
                try:
                    answer = answers.get(timeout=delay if may_copy else None)
                except queue.Empty:
                    if spend_on_hedge(plan):
                        used = send(copy_request(request), used)
                        launched += 1
                    else:
                        copies_allowed = False
                    continue
                if isinstance(answer, httpx.Response):
                    _close_the_rest(answers, launched - failures - 1)
                    answer.request = request
                    return answer
                failures += 1
                if failures == launched:
                    raise answer  # every copy failed: the retry layer decides what follows
        except BaseException:
            # Interrupted while waiting (Ctrl-C): the copies still running are closed
            # as they answer; then the interruption goes on.
            _close_the_rest(answers, launched - failures)
            raise

    def close(self) -> None:
        self.inner.close()


class AsyncTransport(_Pipeline, httpx.AsyncBaseTransport):
    """Wrap an async httpx transport with a policy's layers.

    Args:
        transport: the transport that does the I/O, e.g. ``httpx.AsyncHTTPTransport()``.
        policy: a `Policy` (state kept in the process-wide default Mesh), a `Mesh`,
            or None for the default Mesh's own policies (as for `wrap`).

    Raises:
        ConfigError: `transport` is not an async transport (None, a sync one) or
            is already a meshlib transport, or `policy` is neither a Policy nor a Mesh.
    """

    def __init__(
        self, transport: httpx.AsyncBaseTransport, policy: Policy | Mesh | None = None
    ) -> None:
        _refuse_inner("AsyncTransport", transport, asynchronous=True)
        super().__init__(policy)
        self.inner = transport

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        plan = self._plan(request)
        clock = runtime.clock
        now = clock.now()
        deadline_at = call_deadline(plan, now)
        if plan.faults is not None:
            abort, delay = draw_fault(plan, request, deadline_at, now)
            if delay:
                await clock.asleep(delay)
                now = clock.now()
            if abort is not None:
                return abort
        bulkhead = plan.bulkhead
        if bulkhead is not None and (taken := bulkhead.try_acquire()) is not True:
            timeout = queue_timeout(taken, plan, request, deadline_at)
            if not await bulkhead.acquire_async(timeout):
                raise queued_too_long(plan, request, deadline_at)
            now = clock.now()
        try:
            if plan.budget is not None:
                plan.budget.deposit(now)
            retry = plan.policy.retry
            breaker = plan.breaker
            state: RetryState | None = None
            # Telemetry decided once per call: with no SDK, no span work at all.
            observed = tracer = None
            if plan.telemetry is not None and plan.telemetry.active():
                observed, tracer = observe(plan.telemetry)
            avoid: Endpoint | None = None  # a retry prefers another endpoint
            last: httpx.Response | Exception | None = None
            hedge = hedge_for(plan, request) if plan.hedge is not None else None
            body = request.stream  # as it was before sending: reading may replace it
            while True:
                _prepare_attempt(request, plan, deadline_at, now)
                ticket = 0  # closed, the common case: decided without the breaker's lock
                if breaker is not None and breaker.state is not CLOSED:
                    admitted = admit(plan, request, now, last)
                    if admitted is None:
                        return give_back(last)
                    ticket = admitted
                attempt = None  # an attempt's extras: its span and endpoint, when there are any
                if hedge is None and (observed is not None or plan.endpoints is not None):
                    attempt = Attempt(plan, request, state, observed, tracer, avoid, now)
                    avoid = attempt.endpoint
                try:
                    if hedge is None:
                        response = await self.inner.handle_async_request(request)
                    else:
                        response = await self._hedged(
                            request, plan, state, observed, tracer, avoid, hedge
                        )
                except Exception as exc:  # cancellation and Ctrl-C are handled below
                    failed = _error_is_failure(exc)
                    if attempt is not None:
                        attempt.end(exc, failed)
                    if breaker is not None:
                        breaker.record(ticket, failed, clock.now())
                    state, wait = _after_error(exc, request, body, plan, state, deadline_at)
                    if wait is None:
                        raise
                    last = exc
                except BaseException as exc:  # clean up, then re-raise: cancellation propagates
                    if attempt is not None:
                        attempt.end(exc, None)
                    if breaker is not None:
                        breaker.release(ticket)
                    raise
                else:
                    if attempt is not None:
                        attempt.end(response, response.status_code >= 500)
                    sketch = plan.sketch  # None unless a status page watches the Mesh
                    if sketch is not None:
                        ended = clock.now()
                        sketch.add(ended - now, ended)
                    if breaker is not None:
                        breaker.record(ticket, response.status_code in breaker.on_status, now)
                    # Wrapped with or without a deadline: its close must not be cut halfway.
                    if not isinstance(response.stream, httpx.ByteStream):
                        response.stream = AsyncDeadlineStream(
                            cast(httpx.AsyncByteStream, response.stream),
                            request,
                            response,
                            deadline_at,
                            plan.label,
                        )
                    if retry is None or response.status_code not in retry.on_status:
                        return response
                    state, wait = _after_response(response, request, body, plan, state, deadline_at)
                    if wait is None:
                        return response
                    # Read and close so the connection goes back to the pool; the
                    # content stays readable should this response be handed back.
                    try:
                        await response.aread()
                    except httpx.TransportError:
                        pass
                    finally:
                        await response.aclose()
                    last = response
                if wait > 0 and not runtime.skip_waits:
                    await clock.asleep(wait)
                now = clock.now()
        finally:
            if bulkhead is not None:
                bulkhead.release()

    async def _hedged(
        self,
        request: httpx.Request,
        plan: Plan,
        state: RetryState | None,
        observed: Telemetry | None,
        tracer: Tracer | None,
        avoid: Endpoint | None,
        delay: float,
    ) -> httpx.Response:
        """Send `request`, and copies after `delay` without an answer; the first answer wins.

        The losers are cancelled (their spans end, their endpoints are not
        blamed) and any response they already had is closed.
        """
        hedge = plan.policy.hedge
        assert hedge is not None
        answered = anyio.Event()
        winner: list[httpx.Response] = []
        errors: list[Exception] = []
        launched = 0

        async def send(attempt: Attempt) -> None:
            copy = attempt.request
            try:
                response = await self.inner.handle_async_request(copy)
            except Exception as exc:
                attempt.end(exc, _error_is_failure(exc))
                errors.append(exc)
                if len(errors) == launched:
                    answered.set()
                return
            except BaseException as exc:  # a loser, cancelled: not the endpoint's fault
                attempt.end(exc, None)
                raise
            attempt.end(response, response.status_code >= 500)
            if winner:
                # Its task group is being cancelled: the close must not stop halfway.
                await close_shielded(cast(httpx.AsyncByteStream, response.stream))
            else:
                winner.append(response)
                answered.set()

        def aim(avoid: Endpoint | None) -> Attempt:
            # Chosen here, not in the task, so each copy can avoid the last one's endpoint.
            return Attempt(
                plan, copy_request(request), state, observed, tracer, avoid, runtime.clock.now()
            )

        async with anyio.create_task_group() as group:
            attempt = aim(avoid)
            group.start_soon(send, attempt)
            launched = 1
            while launched <= hedge.max_extra:
                with anyio.move_on_after(delay):
                    await answered.wait()
                if answered.is_set() or not spend_on_hedge(plan):
                    break
                launched += 1
                attempt = aim(attempt.endpoint)
                group.start_soon(send, attempt)
            await answered.wait()
            group.cancel_scope.cancel()
        if winner:
            winner[0].request = request
            return winner[0]
        raise errors[-1]

    async def aclose(self) -> None:
        await self.inner.aclose()
