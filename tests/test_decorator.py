"""@meshlib.resilient on sync and async functions."""

from __future__ import annotations

import asyncio
import inspect
import logging

import pytest

import meshlib
from meshlib.testing import FakeClock

pytestmark = pytest.mark.usefixtures("rng")

NO_BUDGET = meshlib.Policy(retry=meshlib.Retry(attempts=3, budget=None))


class Flaky:
    """Fails with the given exceptions, then returns its call count."""

    def __init__(self, *failures: BaseException) -> None:
        self.failures = list(failures)
        self.calls = 0

    def __call__(self) -> int:
        self.calls += 1
        if self.failures:
            raise self.failures.pop(0)
        return self.calls


def test_sync_function_is_retried(clock: FakeClock) -> None:
    flaky = Flaky(ConnectionError("a"), ConnectionError("b"))

    @meshlib.resilient(on=ConnectionError, policy=NO_BUDGET)
    def fetch(x: int, *, y: str = "y") -> str:
        return f"{x}{y}{flaky()}"

    assert fetch(1, y="z") == "1z3"
    assert len(clock.sleeps) == 2


@pytest.mark.anyio
async def test_async_function_is_retried(clock: FakeClock) -> None:
    flaky = Flaky(TimeoutError("slow"))

    @meshlib.resilient(on=(ConnectionError, TimeoutError), policy=NO_BUDGET)
    async def fetch() -> int:
        await asyncio.sleep(0)
        return flaky()

    assert await fetch() == 2
    assert len(clock.sleeps) == 1


def test_the_last_original_exception_propagates(clock: FakeClock) -> None:
    errors = [ConnectionError(n) for n in range(3)]
    flaky = Flaky(*errors)
    decorated = meshlib.resilient(on=ConnectionError, policy=NO_BUDGET)(flaky)
    with pytest.raises(ConnectionError) as caught:
        decorated()
    assert caught.value is errors[-1]
    assert flaky.calls == 3


def test_exceptions_outside_on_are_not_retried(clock: FakeClock) -> None:
    flaky = Flaky(KeyError("nope"))
    with pytest.raises(KeyError):
        meshlib.resilient(on=ConnectionError, policy=NO_BUDGET)(flaky)()
    assert flaky.calls == 1


def test_a_predicate_chooses_what_is_retried(clock: FakeClock) -> None:
    flaky = Flaky(ValueError("retry me"), ValueError("fatal"))
    decorated = meshlib.resilient(on=lambda exc: "retry" in str(exc), policy=NO_BUDGET)(flaky)
    with pytest.raises(ValueError, match="fatal"):
        decorated()
    assert flaky.calls == 2


@pytest.mark.parametrize(
    "rejection",
    [
        meshlib.CircuitOpen("charge", 1.0),
        meshlib.BulkheadFull("charge"),
        meshlib.DeadlineExceeded("late"),
    ],
)
def test_meshlibs_own_rejections_are_never_retried(clock: FakeClock, rejection: Exception) -> None:
    flaky = Flaky(rejection)
    with pytest.raises(type(rejection)):
        meshlib.resilient(on=Exception, policy=NO_BUDGET)(flaky)()
    assert flaky.calls == 1


def test_keyboard_interrupt_is_never_retried(clock: FakeClock) -> None:
    flaky = Flaky(KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt):
        meshlib.resilient(on=Exception, policy=NO_BUDGET)(flaky)()
    assert flaky.calls == 1


@pytest.mark.parametrize("bad", [KeyboardInterrupt, (ValueError, asyncio.CancelledError), 3, ()])
def test_on_refuses_what_cannot_be_retried(bad: object) -> None:
    with pytest.raises(meshlib.ConfigError, match=r"resilient\.on"):
        meshlib.resilient(on=bad)  # type: ignore[arg-type]


def test_generator_functions_are_refused_with_the_reason() -> None:
    def numbers() -> object:
        yield 1

    async def anumbers() -> object:
        yield 1

    for fn in (numbers, anumbers):
        with pytest.raises(TypeError, match=r"generator function .* replay values"):
            meshlib.resilient(on=ValueError)(fn)


def test_signature_and_name_are_kept() -> None:
    def charge(card: str, amount: int = 1) -> str:
        """Charge a card."""
        return card

    decorated = meshlib.resilient(on=ValueError)(charge)
    assert decorated.__name__ == "charge"
    assert decorated.__doc__ == "Charge a card."
    assert inspect.signature(decorated) == inspect.signature(charge)
    assert inspect.iscoroutinefunction(meshlib.resilient(on=ValueError)(_async_noop))


async def _async_noop() -> None:
    return None


def test_defaults_and_keyword_defaults_are_kept_sync_and_async() -> None:
    # tenacity's regression test (test_retry_preserves_argument_defaults), ported: code
    # that reads a function's defaults (CLI builders, dependency injection) must see them.
    def charge(card: str, amount: int = 1, *, currency: str = "EUR") -> str:
        return f"{card} {amount} {currency}"

    async def charge_async(card: str, amount: int = 1, *, currency: str = "EUR") -> str:
        return f"{card} {amount} {currency}"

    for fn in (charge, charge_async):
        decorated = meshlib.resilient(on=ValueError)(fn)
        assert decorated.__defaults__ == (1,)
        assert decorated.__kwdefaults__ == {"currency": "EUR"}
    assert meshlib.resilient(on=ValueError)(charge)("c") == "c 1 EUR"
    assert asyncio.run(meshlib.resilient(on=ValueError)(charge_async)("c", 2)) == "c 2 EUR"

    def bare(card: str) -> str:
        return card

    decorated = meshlib.resilient(on=ValueError)(bare)
    assert (decorated.__defaults__, decorated.__kwdefaults__) == (None, None)


def test_the_budget_is_shared_by_key(clock: FakeClock) -> None:
    stingy = meshlib.Policy(
        retry=meshlib.Retry(attempts=3, budget=meshlib.Budget(ratio=0, min_per_second=0.1))
    )
    first, second = Flaky(*[OSError("disk")] * 5), Flaky(*[OSError("disk")] * 5)
    a = meshlib.resilient(on=OSError, policy=stingy, key="ledger")(first)
    b = meshlib.resilient(on=OSError, policy=stingy, key="ledger")(second)
    for fn in (a, b):
        with pytest.raises(OSError, match="disk"):
            fn()
    # One retry in reserve for the key "ledger", spent by the first function.
    assert (first.calls, second.calls) == (2, 1)


def test_sync_deadline_is_checked_between_attempts(clock: FakeClock) -> None:
    def slow() -> None:
        clock.advance(0.6)
        raise ConnectionError("down")

    policy = NO_BUDGET.replace(timeout=meshlib.Timeout(total=1.0))
    decorated = meshlib.resilient(on=ConnectionError, policy=policy)(slow)
    with pytest.raises(ConnectionError):
        decorated()
    # 0.6 s + wait + 0.6 s passes the 1 s deadline: no third attempt starts.
    assert clock.now() - 1000.0 < 1.3


def test_sync_call_with_no_time_left_raises_deadline_exceeded(clock: FakeClock) -> None:
    called = Flaky()
    with meshlib.deadline(0.5):
        clock.advance(0.5)
        with pytest.raises(meshlib.DeadlineExceeded):
            meshlib.resilient(on=OSError)(called)()
    assert called.calls == 0


@pytest.mark.anyio
async def test_async_attempt_timeout_cancels_the_attempt() -> None:
    calls = 0

    @meshlib.resilient(
        on=TimeoutError,
        policy=NO_BUDGET.replace(timeout=meshlib.Timeout(total=5.0, attempt=0.05)),
    )
    async def sometimes_hangs() -> str:
        nonlocal calls
        calls += 1
        if calls == 1:
            await asyncio.sleep(10)
        return "done"

    with meshlib.testing.set_testing(True):
        assert await sometimes_hangs() == "done"
    assert calls == 2


@pytest.mark.anyio
async def test_async_deadline_cancels_the_attempt_with_deadline_exceeded() -> None:
    @meshlib.resilient(on=TimeoutError, policy=NO_BUDGET)
    async def hangs() -> None:
        await asyncio.sleep(60)

    loop = asyncio.get_running_loop()
    started = loop.time()
    with meshlib.deadline(0.1), pytest.raises(meshlib.DeadlineExceeded):
        await hangs()
    # Cut at 0.1 s, not after the 60 s sleep: the margin covers a loaded event loop.
    assert loop.time() - started < 5.0


@pytest.mark.anyio
async def test_cancelling_a_decorated_coroutine_propagates() -> None:
    calls = 0

    inside = asyncio.Event()

    @meshlib.resilient(on=Exception, policy=NO_BUDGET)
    async def hangs() -> None:
        nonlocal calls
        calls += 1
        inside.set()
        await asyncio.sleep(10)

    task = asyncio.ensure_future(hangs())
    await asyncio.wait_for(inside.wait(), 30)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert calls == 1


def test_a_mesh_picks_the_policy_by_key(clock: FakeClock) -> None:
    mesh = meshlib.Mesh(
        default=meshlib.Policy(retry=None),
        destinations={"billing.*": meshlib.Policy(retry=meshlib.Retry(attempts=4, budget=None))},
    )
    flaky = Flaky(*[OSError("billing down")] * 10)
    with pytest.raises(OSError, match="billing down"):
        meshlib.resilient(on=OSError, policy=mesh, key="billing.charge")(flaky)()
    assert flaky.calls == 4


def test_retries_are_logged_under_the_key(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="meshlib"):
        meshlib.resilient(on=OSError, policy=NO_BUDGET, key="ledger.post")(Flaky(OSError()))()
    (record,) = caplog.records
    assert record.meshlib_destination == "ledger.post"  # type: ignore[attr-defined]
    assert record.meshlib_cause == "OSError"  # type: ignore[attr-defined]
