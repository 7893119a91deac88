"""resilient(): the policy's retry and deadline around any function."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Awaitable, Callable
from typing import Any, ParamSpec, TypeVar, cast

import anyio

from ._deadline import DEADLINE_SLACK
from ._errors import ConfigError, DeadlineExceeded, MeshError
from ._mesh import Mesh, Route
from ._pipeline import _resolve, _start
from ._policy import STANDARD, Policy
from ._retry import RetryState
from ._runtime import runtime
from ._telemetry import log_retry, log_stop

__all__ = ["resilient"]

P = ParamSpec("P")
R = TypeVar("R")

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

            @functools.wraps(fn)
            async def call_async(*args: P.args, **kwargs: P.kwargs) -> Any:
                route = mesh.function_route(fixed_policy, name)
                clock = runtime.clock
                now = clock.now()
                deadline_at = _start(route, now)
                state: RetryState | None = None
                while True:
                    bound = _attempt_bound(route, deadline_at, now)
                    scope: anyio.CancelScope | None = None
                    try:
                        if bound is None:
                            return await async_fn(*args, **kwargs)
                        with anyio.fail_after(bound) as scope:
                            return await async_fn(*args, **kwargs)
                    except Exception as exc:  # BaseException (cancellation) passes through
                        timed_out = scope is not None and scope.cancelled_caught
                        state, wait = _after_failure(
                            exc, matches, route, state, deadline_at, timed_out=timed_out
                        )
                        if wait is None:
                            raise
                    if wait > 0 and not runtime.skip_waits:
                        await clock.asleep(wait)
                    now = clock.now()

            return cast(Callable[P, R], call_async)

        @functools.wraps(fn)
        def call(*args: P.args, **kwargs: P.kwargs) -> R:
            route = mesh.function_route(fixed_policy, name)
            clock = runtime.clock
            now = clock.now()
            deadline_at = _start(route, now)
            state: RetryState | None = None
            while True:
                _attempt_bound(route, deadline_at, now)
                try:
                    return fn(*args, **kwargs)
                except Exception as exc:  # BaseException (Ctrl-C) passes through
                    state, wait = _after_failure(exc, matches, route, state, deadline_at)
                    if wait is None:
                        raise
                if wait > 0 and not runtime.skip_waits:
                    clock.sleep(wait)
                now = clock.now()

        return call

    return decorate


def _qualified_name(fn: Callable[..., object]) -> str:
    # Callable objects and functools.partial have no __qualname__ of their own.
    target = fn if hasattr(fn, "__qualname__") else type(fn)
    return f"{target.__module__}.{target.__qualname__}"


def _attempt_bound(route: Route, deadline_at: float | None, now: float) -> float | None:
    """Return the time one attempt may take, or raise DeadlineExceeded if none is left."""
    timeout = route.policy.timeout
    bound = timeout.attempt if timeout is not None else None
    if deadline_at is not None:
        left = deadline_at - now
        if left <= 0:
            raise DeadlineExceeded(f"deadline exceeded before calling {route.label}")
        if bound is None or left < bound:
            bound = left
    return bound


def _after_failure(
    exc: Exception,
    matches: Callable[[Exception], bool],
    route: Route,
    state: RetryState | None,
    deadline_at: float | None,
    *,
    timed_out: bool = False,
) -> tuple[RetryState | None, float | None]:
    """Decide what follows a failed attempt; `timed_out`: our own time bound cut it."""
    now = runtime.clock.now()
    if timed_out and deadline_at is not None and now >= deadline_at - DEADLINE_SLACK:
        # The bound that fired was what was left of the deadline: the call's time is up.
        raise DeadlineExceeded(f"deadline exceeded calling {route.label}") from exc
    retry = route.policy.retry
    if retry is None or isinstance(exc, MeshError) or not matches(exc):
        return state, None
    if state is None:
        state = RetryState(retry, route.budget, deadline_at)
    wait = state.next_wait(now)
    cause = type(exc).__name__
    if wait is None:
        log_stop(route.label, state.attempt_number, cause, state.stop_reason or "")
    else:
        log_retry(route.label, state.attempt_number - 1, retry.attempts, cause, wait)
    return state, wait
