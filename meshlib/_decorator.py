"""resilient(): a policy around any function, a thin driver over `_call.Call`."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, ParamSpec, Protocol, TypeVar, cast, overload

import anyio

from ._call import RAISE, SEND, WAIT, Call
from ._errors import ConfigError
from ._fallback import function_failure_reason
from ._mesh import Mesh
from ._pipeline import _resolve
from ._plan import Plans
from ._policy import STANDARD, Policy
from ._runtime import runtime

__all__ = ["resilient"]

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")
F_co = TypeVar("F_co", covariant=True)

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


class WithFallback(Protocol[F_co]):
    """What ``resilient(..., fallback=f)`` returns: a decorator for functions `f` can stand in for.

    The decorated function's return type is the fallback's: a function whose
    own return type does not fit in it is a type error (an async function's
    awaited value, for a sync fallback).
    """

    @overload
    def __call__(
        self: WithFallback[T], fn: Callable[P, Coroutine[Any, Any, T]]
    ) -> Callable[P, Coroutine[Any, Any, T]]: ...

    @overload
    def __call__(self: WithFallback[T], fn: Callable[P, T]) -> Callable[P, T]: ...


class WithAsyncFallback(Protocol[F_co]):
    """What ``resilient(..., fallback=f)`` returns for an async `f`: for async functions only."""

    def __call__(
        self: WithAsyncFallback[T], fn: Callable[P, Coroutine[Any, Any, T]]
    ) -> Callable[P, Coroutine[Any, Any, T]]: ...


@overload
def resilient(
    *,
    on: ExceptionFilter,
    policy: Policy | Mesh = STANDARD,
    key: str | None = None,
    fallback: None = None,
) -> Callable[[Callable[P, R]], Callable[P, R]]: ...


@overload
def resilient(  # type: ignore[overload-overlap]  # an async fallback is the narrower case
    *,
    on: ExceptionFilter,
    policy: Policy | Mesh = STANDARD,
    key: str | None = None,
    fallback: Callable[[Exception], Coroutine[Any, Any, R]],
) -> WithAsyncFallback[R]: ...


@overload
def resilient(
    *,
    on: ExceptionFilter,
    policy: Policy | Mesh = STANDARD,
    key: str | None = None,
    fallback: Callable[[Exception], R],
) -> WithFallback[R]: ...


def resilient(
    *,
    on: ExceptionFilter,
    policy: Policy | Mesh = STANDARD,
    key: str | None = None,
    fallback: Callable[[Exception], Any] | None = None,
) -> Any:
    """Run a function under a policy's retry and deadline; sync or async.

    When attempts run out the last original exception propagates, unchanged
    (or the fallback answers, when there is one).
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
        fallback: ``f(exc)``, called when the call finally fails (an exception
            `on` covers, after the retries, or `CircuitOpen`, `BulkheadFull`,
            `DeadlineExceeded`); its value is returned instead. On an async
            function `f` may be sync or async. Never called for cancellation,
            ``KeyboardInterrupt`` or an exception `on` does not cover; an
            exception `f` raises propagates with the original as its
            ``__cause__``.

    Raises:
        ConfigError: `on`, `policy` or `fallback` is invalid (an async
            `fallback` on a sync function).
        TypeError: the decorated function is a generator (a retry would have
            to replay values the caller already consumed).
    """
    matches = _matcher(on)
    mesh, fixed_policy = _resolve(policy)
    plans = mesh._plans
    if fallback is not None and not callable(fallback):
        raise ConfigError(
            f"resilient.fallback: expected a callable (exc) -> value, got {fallback!r}"
        )

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
                with Call(plans, fixed_policy, None, True, matches, name) as call:
                    plan = call.plan
                    action = call.start()
                    while True:
                        if action == SEND:
                            # The attempt's bound cancels it: the deadline, or Timeout.attempt.
                            scope = None
                            try:
                                if call.bound is None:
                                    result = await async_fn(*args, **kwargs)
                                else:
                                    with anyio.fail_after(call.bound) as scope:
                                        result = await async_fn(*args, **kwargs)
                            except Exception as exc:  # cancellation is handled below
                                timed_out = scope is not None and scope.cancelled_caught
                                action = call.failed(exc, timed_out)
                                if action == RAISE:
                                    raise
                            except BaseException as exc:  # give a probe slot back, re-raise
                                call.cancelled(exc)
                                raise
                            else:
                                call.returned()
                                return result
                        elif action == WAIT:
                            if call.wait > 0:
                                await runtime.clock.asleep(call.wait)
                            action = call.waited()
                        else:  # QUEUE: a function's call has no faults and no response
                            assert plan.bulkhead is not None
                            action = call.queued(await plan.bulkhead.acquire_async(call.queue_for))

            if fallback is not None:
                return cast(
                    Callable[P, R],
                    _async_fallback(call_async, fallback, matches, plans, fixed_policy, name),
                )
            return cast(Callable[P, R], call_async)

        if fallback is not None and inspect.iscoroutinefunction(fallback):
            raise ConfigError(
                f"resilient.fallback: {_qualified_name(fallback)} is async, but "
                f"{_qualified_name(fn)} is not: its value would be a coroutine nobody awaits"
            )

        @functools.wraps(fn, _WRAPPER_ASSIGNMENTS)
        def call_sync(*args: P.args, **kwargs: P.kwargs) -> R:
            with Call(plans, fixed_policy, None, False, matches, name) as call:
                plan = call.plan
                action = call.start()
                while True:
                    if action == SEND:
                        # Running sync code cannot be interrupted: bounds are checked
                        # between attempts.
                        try:
                            result = fn(*args, **kwargs)
                        except Exception as exc:  # cancellation and Ctrl-C are handled below
                            action = call.failed(exc)
                            if action == RAISE:
                                raise
                        except BaseException as exc:  # give a probe slot back, re-raise
                            call.cancelled(exc)
                            raise
                        else:
                            call.returned()
                            return result
                    elif action == WAIT:
                        if call.wait > 0:
                            runtime.clock.sleep(call.wait)
                        action = call.waited()
                    else:  # QUEUE: a function's call has no faults and no response
                        assert plan.bulkhead is not None
                        action = call.queued(plan.bulkhead.acquire(call.queue_for))

        if fallback is not None:
            return _sync_fallback(call_sync, fallback, matches, plans, fixed_policy, name)
        return call_sync

    return decorate


# A fallback wraps the decorated function from outside, so a function without one pays
# nothing for it. Its answer is given after the call's own span has ended: the event
# that says so goes on the caller's span.


def _sync_fallback(
    call_sync: Callable[P, R],
    fallback: Callable[[Exception], Any],
    matches: Callable[[Exception], bool],
    plans: Plans,
    policy: Policy | None,
    name: str,
) -> Callable[P, R]:
    @functools.wraps(call_sync, _WRAPPER_ASSIGNMENTS)
    def with_fallback(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return call_sync(*args, **kwargs)
        except Exception as exc:  # cancellation and Ctrl-C never reach a fallback
            reason = function_failure_reason(exc, matches)
            if reason is None:
                raise
            plans.for_function(policy, name).report.fell_back("function", reason)
            try:
                return cast(R, fallback(exc))
            except Exception as error:
                _chain(error, exc)
                raise

    return with_fallback


def _async_fallback(
    call_async: Callable[P, Awaitable[Any]],
    fallback: Callable[[Exception], Any],
    matches: Callable[[Exception], bool],
    plans: Plans,
    policy: Policy | None,
    name: str,
) -> Callable[P, Awaitable[Any]]:
    @functools.wraps(call_async, _WRAPPER_ASSIGNMENTS)
    async def with_fallback(*args: P.args, **kwargs: P.kwargs) -> Any:
        try:
            return await call_async(*args, **kwargs)
        except Exception as exc:  # cancellation never reaches a fallback
            reason = function_failure_reason(exc, matches)
            if reason is None:
                raise
            plans.for_function(policy, name).report.fell_back("function", reason)
            try:
                answer = fallback(exc)
                if inspect.isawaitable(answer):
                    answer = await answer
                return answer
            except Exception as error:
                _chain(error, exc)
                raise

    return with_fallback


def _chain(error: Exception, original: Exception) -> None:
    """Make the fallback's own error say it was raised handling `original`.

    Its ``__context__`` is `original` already (it was raised in the handler);
    ``__cause__`` makes the traceback say so plainly, unless the fallback chose
    its own cause (``raise ... from ...``) or re-raised `original` itself.
    """
    if error is not original and error.__cause__ is None and not error.__suppress_context__:
        error.__cause__ = original


def _qualified_name(fn: Callable[..., object]) -> str:
    # Callable objects and functools.partial have no __qualname__ of their own.
    target = fn if hasattr(fn, "__qualname__") else type(fn)
    return f"{target.__module__}.{target.__qualname__}"
