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


def test_each_request_is_bounded_by_its_own_time_left_though_its_timeouts_repeat(
    clock: FakeClock,
) -> None:
    # A client sends the same four timeouts with every request, and the plan
    # remembers them: a later request with less time left must still be lowered.
    mesh = meshlib.Mesh(default=POLICY.replace(timeout=meshlib.Timeout(total=30.0)))
    client_timeouts = {"connect": 5.0, "read": 5.0, "write": 5.0, "pool": 5.0}

    def timeouts_sent() -> dict[str, float | None]:
        request = httpx.Request(
            "GET", "http://orders.internal/", extensions={"timeout": dict(client_timeouts)}
        )
        call = Call(mesh._plans, None, request, asynchronous=False)
        assert call.start() == SEND
        sent: dict[str, float | None] = request.extensions["timeout"]
        call.__exit__(None, None, None)
        return sent

    assert timeouts_sent() == client_timeouts  # 30 s left: the client's own stand
    assert timeouts_sent() == client_timeouts
    with meshlib.deadline(2.0):
        assert timeouts_sent() == {"connect": 2.0, "read": 2.0, "write": 2.0, "pool": 2.0}
    assert timeouts_sent() == client_timeouts
    client_timeouts["read"] = None  # an unbounded phase gets the call's bound
    assert timeouts_sent() == {**client_timeouts, "read": 30.0}
