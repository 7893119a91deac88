"""resilient(): a policy around any function, a thin driver over `_call.Call`."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Awaitable, Callable
from typing import Any, ParamSpec, TypeVar, cast

import anyio

from ._call import RAISE, SEND, WAIT, Call
from ._errors import ConfigError
from ._mesh import Mesh
from ._pipeline import _resolve
from ._policy import STANDARD, Policy
from ._runtime import runtime

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
    plans = mesh._plans

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

            return cast(Callable[P, R], call_async)

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

        return call_sync

    return decorate


def _qualified_name(fn: Callable[..., object]) -> str:
    # Callable objects and functools.partial have no __qualname__ of their own.
    target = fn if hasattr(fn, "__qualname__") else type(fn)
    return f"{target.__module__}.{target.__qualname__}"
