"""resilient(): the policy's retry and deadline around any function."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Awaitable, Callable
from typing import Any, ParamSpec, TypeVar, cast

import anyio

from ._deadline import DEADLINE_SLACK
from ._errors import ConfigError, MeshError
from ._mesh import Mesh, Plan
from ._pipeline import (
    _resolve,
    admit,
    call_deadline,
    deadline_exceeded,
    queue_timeout,
    queued_too_long,
    record,
    release,
    report_decision,
)
from ._policy import STANDARD, Policy
from ._retry import RetryState
from ._runtime import runtime
from ._telemetry import function_span

__all__ = ["resilient"]

P = ParamSpec("P")
R = TypeVar("R")

# functools.wraps leaves the defaults behind; code that reads them (tenacity keeps them
# too, under a regression test) must see the wrapped function's.
_WRAPPER_ASSIGNMENTS = (*functools.WRAPPER_ASSIGNMENTS, "__defaults__", "__kwdefaults__")

ExceptionFilter = type[Exception] | tuple[type[Exception], ...] | Callable[[Exception], bool]


def _matcher(on: object) -> Callable[[Exception], bool]:
    if isinstance(on, type) or (isinstance(on, tuple) and on):
        types = on if isinstance(on, tuple) else (on,)
        for kind in types:
            if not (isinstance(kind, type) and issubclass(kind, Exception)):
                # BaseException subclasses such as CancelledError or KeyboardInterrupt
                # must always propagate, so they cannot be asked for.
                raise ConfigError(
                    f"resilient.on: expected Exception subclasses or a predicate, got {kind!r}"
                )
        return lambda exc: isinstance(exc, types)
    if callable(on):
        return cast(Callable[[Exception], bool], on)
    raise ConfigError(f"resilient.on: expected Exception subclasses or a predicate, got {on!r}")


def resilient(
    *,
    on: ExceptionFilter,
    policy: Policy | Mesh = STANDARD,
    key: str | None = None,
) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Run a function under a policy's retry and deadline; sync or async.

    When attempts run out the last original exception propagates, unchanged.
    meshlib's own rejections (`CircuitOpen`, `BulkheadFull`, `DeadlineExceeded`)
    are never retried, whatever `on` says, and cancellation always propagates.

    On async functions the attempt timeout and the deadline cancel the running
    attempt: an attempt cut by ``Timeout.attempt`` raises ``TimeoutError``
    (retried if `on` covers it); one cut by the deadline raises
    `DeadlineExceeded`. On sync functions both are checked between attempts,
    since running sync code cannot be interrupted.

    Args:
        on: the exceptions to retry: an Exception subclass, a tuple of them, or
            a predicate ``(exc) -> bool``.
        policy: a `Policy`, or a `Mesh` whose policy for `key` applies.
        key: names the state (retry budget, breaker, bulkhead) the function
            uses; defaults to its qualified name.

    Raises:
        ConfigError: `on` or `policy` is invalid.
        TypeError: the decorated function is a generator (a retry would have
            to replay values the caller already consumed).
    """
    matches = _matcher(on)
    mesh, fixed_policy = _resolve(policy)

    def decorate(fn: Callable[P, R]) -> Callable[P, R]:
        if inspect.isgeneratorfunction(fn) or inspect.isasyncgenfunction(fn):
            raise TypeError(
                f"resilient cannot wrap the generator function {_qualified_name(fn)}: retrying it "
                "would replay values the caller already consumed; decorate a function that "
                "returns a list, or retry inside the generator"
            )
        name = key if key is not None else _qualified_name(fn)

        if inspect.iscoroutinefunction(fn):
            async_fn = cast(Callable[..., Awaitable[Any]], fn)

            @functools.wraps(fn, _WRAPPER_ASSIGNMENTS)
            async def call_async(*args: P.args, **kwargs: P.kwargs) -> Any:
                plan = mesh.function_plan(fixed_policy, name)
                now = runtime.clock.now()
                deadline_at = call_deadline(plan, now)
                bulkhead = plan.bulkhead
                if bulkhead is not None and (taken := bulkhead.try_acquire()) is not True:
                    within = queue_timeout(taken, plan, None, deadline_at)
                    if not await bulkhead.acquire_async(within):
                        raise queued_too_long(plan, None, deadline_at)
                    now = runtime.clock.now()
                try:
                    span = function_span(plan.telemetry, name)
                    if span is None:
                        return await _attempts_async(
                            async_fn, args, kwargs, matches, plan, deadline_at, now
                        )
                    with span:
                        return await _attempts_async(
                            async_fn, args, kwargs, matches, plan, deadline_at, now
                        )
                finally:
                    if bulkhead is not None:
                        bulkhead.release()

            return cast(Callable[P, R], call_async)

        @functools.wraps(fn, _WRAPPER_ASSIGNMENTS)
        def call(*args: P.args, **kwargs: P.kwargs) -> R:
            plan = mesh.function_plan(fixed_policy, name)
            now = runtime.clock.now()
            deadline_at = call_deadline(plan, now)
            bulkhead = plan.bulkhead
            if bulkhead is not None and (taken := bulkhead.try_acquire()) is not True:
                within = queue_timeout(taken, plan, None, deadline_at)
                if not bulkhead.acquire(within):
                    raise queued_too_long(plan, None, deadline_at)
                now = runtime.clock.now()
            try:
                span = function_span(plan.telemetry, name)
                if span is None:
                    return _attempts(fn, args, kwargs, matches, plan, deadline_at, now)
                with span:
                    return _attempts(fn, args, kwargs, matches, plan, deadline_at, now)
            finally:
                if bulkhead is not None:
                    bulkhead.release()

        return call

    return decorate


def _attempts(
    fn: Callable[..., R],
    args: Any,
    kwargs: Any,
    matches: Callable[[Exception], bool],
    plan: Plan,
    deadline_at: float | None,
    now: float,
) -> R:
    """Run `fn` until it returns or retrying stops; sync twin of `_attempts_async`."""
    clock = runtime.clock
    if plan.budget is not None:
        plan.budget.deposit(now)
    state: RetryState | None = None
    last: Exception | None = None
    while True:
        _attempt_bound(plan, deadline_at, now)
        ticket = admit(plan, None, now, last)
        if ticket is None:
            assert last is not None
            raise last
        try:
            result = fn(*args, **kwargs)
        except Exception as exc:  # cancellation and Ctrl-C are handled below
            record(plan, ticket, _is_failure(exc, matches))
            state, wait = _after_failure(exc, matches, plan, state, deadline_at)
            if wait is None:
                raise
            last = exc
        except BaseException:  # give a probe slot back, then re-raise at once
            release(plan, ticket)
            raise
        else:
            record(plan, ticket, False)
            return result
        if wait > 0 and not runtime.skip_waits:
            clock.sleep(wait)
        now = clock.now()


async def _attempts_async(
    fn: Callable[..., Awaitable[Any]],
    args: Any,
    kwargs: Any,
    matches: Callable[[Exception], bool],
    plan: Plan,
    deadline_at: float | None,
    now: float,
) -> Any:
    """Await `fn` until it returns or retrying stops; each attempt under its time bound."""
    clock = runtime.clock
    if plan.budget is not None:
        plan.budget.deposit(now)
    state: RetryState | None = None
    last: Exception | None = None
    while True:
        bound = _attempt_bound(plan, deadline_at, now)
        ticket = admit(plan, None, now, last)
        if ticket is None:
            assert last is not None
            raise last
        scope: anyio.CancelScope | None = None
        try:
            if bound is None:
                result = await fn(*args, **kwargs)
            else:
                with anyio.fail_after(bound) as scope:
                    result = await fn(*args, **kwargs)
        except Exception as exc:  # cancellation is handled below
            timed_out = scope is not None and scope.cancelled_caught
            record(plan, ticket, timed_out or _is_failure(exc, matches))
            state, wait = _after_failure(
                exc, matches, plan, state, deadline_at, timed_out=timed_out
            )
            if wait is None:
                raise
            last = exc
        except BaseException:  # give a probe slot back, then re-raise at once
            release(plan, ticket)
            raise
        else:
            record(plan, ticket, False)
            return result
        if wait > 0 and not runtime.skip_waits:
            await clock.asleep(wait)
        now = clock.now()


def _is_failure(exc: Exception, matches: Callable[[Exception], bool]) -> bool:
    # For a function, what `on` retries is what the breaker counts.
    return not isinstance(exc, MeshError) and matches(exc)


def _qualified_name(fn: Callable[..., object]) -> str:
    # Callable objects and functools.partial have no __qualname__ of their own.
    target = fn if hasattr(fn, "__qualname__") else type(fn)
    return f"{target.__module__}.{target.__qualname__}"


def _attempt_bound(plan: Plan, deadline_at: float | None, now: float) -> float | None:
    """Return the time one attempt may take, or raise DeadlineExceeded if none is left."""
    bound = plan.attempt_timeout
    if deadline_at is not None:
        left = deadline_at - now
        if left <= 0:
            raise deadline_exceeded(plan, None, "before calling")
        if bound is None or left < bound:
            bound = left
    return bound


def _after_failure(
    exc: Exception,
    matches: Callable[[Exception], bool],
    plan: Plan,
    state: RetryState | None,
    deadline_at: float | None,
    *,
    timed_out: bool = False,
) -> tuple[RetryState | None, float | None]:
    """Decide what follows a failed attempt; `timed_out`: our own time bound cut it."""
    now = runtime.clock.now()
    if timed_out and deadline_at is not None and now >= deadline_at - DEADLINE_SLACK:
        # The bound that fired was what was left of the deadline: the call's time is up.
        raise deadline_exceeded(plan, None, "waiting for the answer") from exc
    retry = plan.policy.retry
    if retry is None or isinstance(exc, MeshError) or not matches(exc):
        return state, None
    if state is None:
        state = RetryState(retry, plan.budget, deadline_at)
    wait = state.next_wait(now)
    report_decision(plan, state, type(exc).__name__, wait)
    return state, wait
