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

from typing import TYPE_CHECKING, cast

import httpx

from ._breaker import CLOSED
from ._bulkhead import ConcurrencyLimit
from ._deadline import DEADLINE_SLACK, GRPC_HEADER, current_deadline
from ._errors import BulkheadFull, CircuitOpen, ConfigError, DeadlineExceeded, MeshError
from ._mesh import Mesh, Plan, default_mesh
from ._policy import STANDARD, Policy
from ._retry import (
    RetryState,
    body_is_replayable,
    exception_is_retryable,
    parse_retry_after,
    request_is_idempotent,
)
from ._runtime import runtime
from ._streams import AsyncDeadlineStream, SyncDeadlineStream
from ._telemetry import end_attempt, start_attempt

if TYPE_CHECKING:
    from opentelemetry.trace import Tracer

    from ._telemetry import Telemetry

__all__ = ["AsyncTransport", "Transport"]

POLICY_EXTENSION = "meshlib.policy"
_PHASES = ("connect", "read", "write", "pool")


def _resolve(policy_or_mesh: Policy | Mesh) -> tuple[Mesh, Policy | None]:
    if isinstance(policy_or_mesh, Mesh):
        return policy_or_mesh, None
    if isinstance(policy_or_mesh, Policy):
        return default_mesh(), policy_or_mesh
    raise ConfigError(f"policy: expected a meshlib.Policy or meshlib.Mesh, got {policy_or_mesh!r}")


class _Pipeline:
    """What both drivers share: the inner transport and where policies come from."""

    def __init__(self, policy_or_mesh: Policy | Mesh = STANDARD) -> None:
        self.mesh, self.policy = _resolve(policy_or_mesh)
        self._last: Plan | None = None

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
            and last.requested is policy
            and last.url_key == (ref.scheme, ref.host, ref.port)
            and last.generation == self.mesh.generation
        ):
            return last
        plan = self._last = self.mesh.plan(policy, request.url)
        return plan


def call_deadline(plan: Plan, now: float) -> float | None:
    """Return the call's deadline: the earlier of the enclosing one and `total` from now."""
    outer = current_deadline()
    timeout = plan.policy.timeout
    if timeout is None or timeout.total is None:
        return outer
    at = now + timeout.total
    return at if outer is None or at < outer else outer


def queue_timeout(
    bulkhead: ConcurrencyLimit,
    plan: Plan,
    request: httpx.Request | None,
    deadline_at: float | None,
) -> float | None:
    """Return how long a call may queue for a slot, or raise BulkheadFull when it may not."""
    if bulkhead.try_acquire() is False:
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


def _set_header(headers: httpx.Headers, name: str, value: str) -> None:
    """Set a header whose lowercase name and value are ASCII, replacing any copy.

    ``Headers.__setitem__`` re-encodes and rescans on every call; on the
    success path the same result is had by editing httpx's item list, whose
    entries are (raw name, lowercase name, value) bytes (httpx < 0.29).
    """
    items = getattr(headers, "_list", None)
    if not isinstance(items, list):  # pragma: no cover - a future httpx: the public way
        headers[name] = value
        return
    key = name.encode("ascii")
    entry = (key, key, value.encode("ascii"))
    for index, item in enumerate(items):
        if item[1] == key:
            items[index] = entry
            # Drop later duplicates, as __setitem__ does.
            items[index + 1 :] = [later for later in items[index + 1 :] if later[1] != key]
            return
    items.append(entry)


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
    timeout = plan.policy.timeout
    bound = timeout.attempt if timeout is not None else None
    if deadline_at is not None:
        left = deadline_at - now
        if left <= 0:
            raise deadline_exceeded(plan, request, "before sending")
        if plan.deadline_header is not None:
            millis = str(int(left * 1000))
            # gRPC's header needs its unit; every other name carries bare milliseconds.
            _set_header(
                request.headers,
                plan.deadline_header,
                millis + "m" if plan.deadline_header == GRPC_HEADER else millis,
            )
        if bound is None or left < bound:
            bound = left
    if bound is None:
        return
    extensions = request.extensions
    # Bounds come from the caller's own timeouts, kept aside on the first
    # attempt, so a request sent again later does not inherit shrunken ones.
    base = extensions.get("meshlib.timeout")
    if base is None:
        base = extensions.get("timeout") or {}
        for phase in _PHASES:
            value = base.get(phase)
            if value is None or value > bound:
                break
        else:
            return  # every phase is already within the bound: the common case
        extensions["meshlib.timeout"] = base
    phases = {}
    for phase in _PHASES:
        value = base.get(phase)
        phases[phase] = bound if value is None or value > bound else value
    extensions["timeout"] = phases


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
    if retry is None or not exception_is_retryable(exc, request, body, retry):
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
    if not (request_is_idempotent(request, retry) and body_is_replayable(body)):
        return state, None
    if state is None:
        state = RetryState(retry, plan.budget, deadline_at)
    header = response.headers.get("retry-after")
    retry_after = parse_retry_after(header) if header is not None else None
    wait = state.next_wait(runtime.clock.now(), retry_after)
    report_decision(plan, state, str(response.status_code), wait)
    return state, wait


def observe(plan: Plan) -> tuple[Telemetry | None, Tracer | None]:
    """Return (telemetry, tracer) for a call, telemetry None when nothing would record."""
    telemetry = plan.telemetry
    if telemetry is None or not telemetry.active():
        return None, None
    tracer = telemetry.tracer()
    if tracer is None and telemetry.instruments() is None:
        return None, None
    return telemetry, tracer


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
        policy: a `Policy` (state kept in the process-wide default Mesh) or a `Mesh`.

    Raises:
        ConfigError: `policy` is neither a Policy nor a Mesh.
    """

    def __init__(self, transport: httpx.BaseTransport, policy: Policy | Mesh = STANDARD) -> None:
        super().__init__(policy)
        self.inner = transport

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        plan = self._plan(request)
        clock = runtime.clock
        now = clock.now()
        deadline_at = call_deadline(plan, now)
        bulkhead = plan.bulkhead
        if bulkhead is not None and not bulkhead.try_acquire():
            timeout = queue_timeout(bulkhead, plan, request, deadline_at)
            if not bulkhead.acquire(timeout):
                raise queued_too_long(plan, request, deadline_at)
            now = clock.now()
        try:
            return self._send(request, plan, deadline_at, now)
        finally:
            if bulkhead is not None:
                bulkhead.release()

    def _send(
        self, request: httpx.Request, plan: Plan, deadline_at: float | None, now: float
    ) -> httpx.Response:
        if plan.budget is not None:
            plan.budget.deposit(now)
        retry = plan.policy.retry
        breaker = plan.breaker
        clock = runtime.clock
        state: RetryState | None = None
        # Telemetry decided once per call: with no SDK, no span work at all.
        observed, tracer = observe(plan)
        host, port, propagate = plan.destination.host, plan.destination.port, plan.propagate
        last: httpx.Response | Exception | None = None
        body = request.stream  # as it was before sending: reading may replace it
        while True:
            _prepare_attempt(request, plan, deadline_at, now)
            ticket = 0  # closed, the common case: decided without the breaker's lock
            if breaker is not None and breaker.state is not CLOSED:
                admitted = admit(plan, request, now, last)
                if admitted is None:
                    return give_back(last)
                ticket = admitted
            span = None
            if observed is not None:
                resend = 0 if state is None else state.attempt_number - 1
                span = start_attempt(observed, tracer, request, host, port, resend, propagate)
            try:
                response = self.inner.handle_request(request)
            except Exception as exc:  # cancellation and Ctrl-C are handled below
                if span is not None:
                    end_attempt(span, exc)
                if breaker is not None:
                    breaker.record(ticket, _error_is_failure(exc), clock.now())
                state, wait = _after_error(exc, request, body, plan, state, deadline_at)
                if wait is None:
                    raise
                last = exc
            except BaseException as exc:
                if span is not None:
                    end_attempt(span, exc)
                if breaker is not None:
                    breaker.release(ticket)
                raise
            else:
                if span is not None:
                    end_attempt(span, response)
                if breaker is not None:
                    breaker.record(ticket, response.status_code in breaker.on_status, now)
                if deadline_at is not None and not isinstance(response.stream, httpx.ByteStream):
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

    def close(self) -> None:
        self.inner.close()


class AsyncTransport(_Pipeline, httpx.AsyncBaseTransport):
    """Wrap an async httpx transport with a policy's layers.

    Args:
        transport: the transport that does the I/O, e.g. ``httpx.AsyncHTTPTransport()``.
        policy: a `Policy` (state kept in the process-wide default Mesh) or a `Mesh`.

    Raises:
        ConfigError: `policy` is neither a Policy nor a Mesh.
    """

    def __init__(
        self, transport: httpx.AsyncBaseTransport, policy: Policy | Mesh = STANDARD
    ) -> None:
        super().__init__(policy)
        self.inner = transport

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        plan = self._plan(request)
        clock = runtime.clock
        now = clock.now()
        deadline_at = call_deadline(plan, now)
        bulkhead = plan.bulkhead
        if bulkhead is not None and not bulkhead.try_acquire():
            timeout = queue_timeout(bulkhead, plan, request, deadline_at)
            if not await bulkhead.acquire_async(timeout):
                raise queued_too_long(plan, request, deadline_at)
            now = clock.now()
        try:
            return await self._send(request, plan, deadline_at, now)
        finally:
            if bulkhead is not None:
                bulkhead.release()

    async def _send(
        self, request: httpx.Request, plan: Plan, deadline_at: float | None, now: float
    ) -> httpx.Response:
        if plan.budget is not None:
            plan.budget.deposit(now)
        retry = plan.policy.retry
        breaker = plan.breaker
        clock = runtime.clock
        state: RetryState | None = None
        # Telemetry decided once per call: with no SDK, no span work at all.
        observed, tracer = observe(plan)
        host, port, propagate = plan.destination.host, plan.destination.port, plan.propagate
        last: httpx.Response | Exception | None = None
        body = request.stream  # as it was before sending: reading may replace it
        while True:
            _prepare_attempt(request, plan, deadline_at, now)
            ticket = 0  # closed, the common case: decided without the breaker's lock
            if breaker is not None and breaker.state is not CLOSED:
                admitted = admit(plan, request, now, last)
                if admitted is None:
                    return give_back(last)
                ticket = admitted
            span = None
            if observed is not None:
                resend = 0 if state is None else state.attempt_number - 1
                span = start_attempt(observed, tracer, request, host, port, resend, propagate)
            try:
                response = await self.inner.handle_async_request(request)
            except Exception as exc:  # cancellation and Ctrl-C are handled below
                if span is not None:
                    end_attempt(span, exc)
                if breaker is not None:
                    breaker.record(ticket, _error_is_failure(exc), clock.now())
                state, wait = _after_error(exc, request, body, plan, state, deadline_at)
                if wait is None:
                    raise
                last = exc
            except BaseException as exc:
                if span is not None:
                    end_attempt(span, exc)
                if breaker is not None:
                    breaker.release(ticket)
                raise
            else:
                if span is not None:
                    end_attempt(span, response)
                if breaker is not None:
                    breaker.record(ticket, response.status_code in breaker.on_status, now)
                if deadline_at is not None and not isinstance(response.stream, httpx.ByteStream):
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

    async def aclose(self) -> None:
        await self.inner.aclose()
