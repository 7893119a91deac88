"""The call object on its own: a state machine that says what to do next, with no I/O."""

from __future__ import annotations

import httpx
import pytest

import meshlib
from meshlib._call import DRAIN, QUEUE, RAISE, RETURN, SEND, WAIT, Call, route
from meshlib.testing import FakeClock

POLICY = meshlib.Policy(
    retry=meshlib.Retry(attempts=2, budget=None),
    breaker=None,
    bulkhead=meshlib.Bulkhead(max_concurrent=1, max_queued=1),
    tracing=None,
)


def _call(mesh: meshlib.Mesh, url: str = "http://orders.internal/") -> Call:
    request = httpx.Request("GET", url)
    return Call(route(mesh._plans, None, request), request, asynchronous=False)


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
    call.release()


def test_an_error_that_is_not_retried_is_re_raised_by_the_driver(clock: FakeClock) -> None:
    mesh = meshlib.Mesh(default=POLICY.replace(retry=None))
    call = _call(mesh)
    assert call.start() == SEND
    assert call.failed(httpx.ConnectError("down")) == RAISE
    call.release()


def test_a_busy_bulkhead_says_queue_until_the_deadline(clock: FakeClock) -> None:
    mesh = meshlib.Mesh(default=POLICY.replace(timeout=meshlib.Timeout(total=3.0)))
    first = _call(mesh)
    assert first.start() == SEND
    second = _call(mesh)
    assert second.start() == QUEUE
    assert second.queue_for == pytest.approx(3.0)
    first.release()
    assert second.queued(got=True) == SEND
    second.release()


def test_a_function_call_retries_what_on_matches(clock: FakeClock) -> None:
    mesh = meshlib.Mesh(default=POLICY)
    plan = mesh._plans.for_function(None, "charge")
    with Call(plan, None, False, lambda exc: isinstance(exc, ConnectionError), "charge") as call:
        assert call.start() == SEND
        assert call.failed(ConnectionError()) == WAIT
        assert call.waited() == SEND
        assert call.returned() == RETURN
    with Call(plan, None, False, lambda exc: isinstance(exc, ConnectionError), "charge") as call:
        assert call.start() == SEND
        assert call.failed(ValueError()) == RAISE
    assert plan.bulkhead is not None
    assert plan.bulkhead.snapshot().in_flight == 0  # leaving the with-block freed the slot
