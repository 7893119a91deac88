"""The call object on its own: a state machine that says what to do next, with no I/O."""

from __future__ import annotations

import httpx
import pytest

import meshlib
from meshlib._call import DRAIN, QUEUE, RAISE, RETURN, SEND, WAIT, Call
from meshlib.testing import FakeClock

POLICY = meshlib.Policy(
    retry=meshlib.Retry(attempts=2, budget=None),
    breaker=None,
    bulkhead=meshlib.Bulkhead(max_concurrent=1, max_queued=1),
    tracing=None,
)


def _call(mesh: meshlib.Mesh, url: str = "http://orders.internal/") -> Call:
    request = httpx.Request("GET", url)
    return Call(mesh._plans, None, request, asynchronous=False)


def test_a_retried_status_is_drained_then_waited_for_then_sent_again(clock: FakeClock) -> None:
    mesh = meshlib.Mesh(default=POLICY)
    call = _call(mesh)
    assert call.start() == SEND
    assert call.request is not None
    failed = httpx.Response(503, headers={"retry-after": "2"}, request=call.request)
    assert call.answered(failed) == DRAIN
    assert call.response is failed  # the driver reads and closes it
    assert call.drained() == WAIT
    assert call.wait == 2.0  # Retry-After, not the backoff
    clock.advance(2.0)
    assert call.waited() == SEND
    ok = httpx.Response(200, request=call.request)
    assert call.answered(ok) == RETURN
    assert call.response is ok
    call.__exit__(None, None, None)


def test_an_error_that_is_not_retried_is_re_raised_by_the_driver(clock: FakeClock) -> None:
    mesh = meshlib.Mesh(default=POLICY.replace(retry=None))
    call = _call(mesh)
    assert call.start() == SEND
    assert call.failed(httpx.ConnectError("down")) == RAISE
    call.__exit__(None, None, None)


def test_a_busy_bulkhead_says_queue_until_the_deadline(clock: FakeClock) -> None:
    mesh = meshlib.Mesh(default=POLICY.replace(timeout=meshlib.Timeout(total=3.0)))
    first = _call(mesh)
    assert first.start() == SEND
    second = _call(mesh)
    assert second.start() == QUEUE
    assert second.queue_for == pytest.approx(3.0)
    first.__exit__(None, None, None)
    assert second.queued(got=True) == SEND
    second.__exit__(None, None, None)


def test_a_function_call_retries_what_on_matches(clock: FakeClock) -> None:
    mesh = meshlib.Mesh(default=POLICY)
    on = lambda exc: isinstance(exc, ConnectionError)  # noqa: E731
    with Call(mesh._plans, None, None, False, on, "charge") as call:
        assert call.start() == SEND
        assert call.failed(ConnectionError()) == WAIT
        assert call.waited() == SEND
        assert call.returned() == RETURN
    with Call(mesh._plans, None, None, False, on, "charge") as call:
        assert call.start() == SEND
        assert call.failed(ValueError()) == RAISE
    plan = call.plan
    assert plan.bulkhead is not None
    assert plan.bulkhead.snapshot().in_flight == 0  # leaving the with-block freed the slot
