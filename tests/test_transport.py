"""The retry pipeline over httpx.MockTransport, sync and async alike."""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable
from datetime import timedelta

import httpx
import pytest

import meshlib
from meshlib.testing import FakeClock

from .helpers import URL, Script, one_shot_body, send

pytestmark = pytest.mark.usefixtures("clock", "rng")

MODES = ["sync", "async"]
QUICK = meshlib.Policy(retry=meshlib.Retry(attempts=3, budget=None))


@pytest.fixture(params=MODES)
def mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def test_success_is_sent_once(mode: str) -> None:
    script = Script()
    response = send(mode, script)
    assert response.status_code == 200
    assert script.count == 1


def test_503_burst_is_retried_until_success(mode: str, clock: FakeClock) -> None:
    script = Script(503, 503)
    response = send(mode, script)
    assert response.status_code == 200
    assert script.count == 3
    # Full jitter: each wait within [0, min(cap, base * 2**(n-1))].
    assert len(clock.sleeps) == 2
    assert 0 <= clock.sleeps[0] <= 0.05
    assert 0 <= clock.sleeps[1] <= 0.10


@pytest.mark.parametrize("status", [408, 429, 502, 503, 504])
def test_each_retryable_status_is_retried(mode: str, status: int) -> None:
    script = Script(status)
    assert send(mode, script).status_code == 200
    assert script.count == 2


@pytest.mark.parametrize("status", [400, 401, 404, 409, 500, 501])
def test_other_statuses_surface_at_once(mode: str, status: int) -> None:
    script = Script(status)
    assert send(mode, script).status_code == status
    assert script.count == 1


def test_when_attempts_run_out_the_last_response_comes_back(mode: str) -> None:
    last = httpx.Response(503, content=b"the last one")
    script = Script(503, 503, last)
    response = send(mode, script)
    assert response.status_code == 503
    assert response.content == b"the last one"
    assert script.count == 3


def test_post_is_not_retried_on_503(mode: str) -> None:
    script = Script(503)
    response = send(mode, script, method="POST", content=b"charge")
    assert response.status_code == 503
    assert script.count == 1


def test_post_with_idempotency_key_is_retried(mode: str) -> None:
    script = Script(503)
    response = send(
        mode, script, method="POST", content=b"charge", headers={"Idempotency-Key": "k-1"}
    )
    assert response.status_code == 200
    assert script.count == 2
    assert script.requests[1].content == b"charge"


def test_a_body_that_cannot_be_replayed_surfaces_the_original_503(mode: str) -> None:
    script = Script(503)
    body = one_shot_body(mode, [b"a", b"b"])
    response = send(mode, script, method="PUT", content=body)
    assert response.status_code == 503
    assert script.count == 1


def test_connection_failure_is_retried_for_any_method(mode: str) -> None:
    script = Script(httpx.ConnectError("refused"))
    response = send(mode, script, method="POST", content=b"x")
    assert response.status_code == 200
    assert script.count == 2


def test_read_error_is_retried_for_get_but_not_post(mode: str) -> None:
    script = Script(httpx.ReadError("reset"))
    assert send(mode, script).status_code == 200
    assert script.count == 2
    script = Script(httpx.ReadError("reset"))
    with pytest.raises(httpx.ReadError):
        send(mode, script, method="POST", content=b"x")
    assert script.count == 1


def test_the_last_original_exception_is_re_raised(mode: str) -> None:
    errors = [httpx.ConnectError(f"refused {n}") for n in range(3)]
    script = Script(*errors)
    with pytest.raises(httpx.ConnectError) as caught:
        send(mode, script)
    assert caught.value is errors[-1]
    assert script.count == 3


def test_tls_verification_failure_is_never_retried(mode: str) -> None:
    error = httpx.ConnectError("certificate verify failed")
    error.__cause__ = ssl.SSLCertVerificationError("certificate verify failed")
    script = Script(error)
    with pytest.raises(httpx.ConnectError) as caught:
        send(mode, script)
    assert caught.value is error
    assert script.count == 1


@pytest.mark.parametrize(
    "error",
    [
        meshlib.CircuitOpen("http://orders.internal:80", 1.0),
        meshlib.BulkheadFull("http://orders.internal:80"),
        httpx.UnsupportedProtocol("gopher"),
    ],
)
def test_errors_that_are_never_retried(mode: str, error: Exception) -> None:
    script = Script(error)
    with pytest.raises(type(error)):
        send(mode, script)
    assert script.count == 1


def test_retry_after_seconds_replaces_the_backoff(mode: str, clock: FakeClock) -> None:
    script = Script(httpx.Response(503, headers={"Retry-After": "7"}))
    assert send(mode, script).status_code == 200
    assert clock.sleeps == [7.0]


def test_retry_after_is_clamped_to_the_cap(mode: str, clock: FakeClock) -> None:
    policy = meshlib.Policy(retry=meshlib.Retry(retry_after_cap=2.5))
    script = Script(httpx.Response(429, headers={"Retry-After": "3600"}))
    assert send(mode, script, policy).status_code == 200
    assert clock.sleeps == [2.5]


@pytest.mark.parametrize("value", ["soon", "-3", "1.5", "٣".encode(), ""])
def test_unusable_retry_after_falls_back_to_backoff(
    mode: str, clock: FakeClock, value: str | bytes
) -> None:
    script = Script(httpx.Response(503, headers={"Retry-After": value}))
    assert send(mode, script).status_code == 200
    assert len(clock.sleeps) == 1
    assert 0 <= clock.sleeps[0] <= 0.05


def test_a_retry_after_past_the_deadline_hands_back_the_response(
    mode: str, clock: FakeClock
) -> None:
    policy = meshlib.Policy(timeout=meshlib.Timeout(total=5.0))
    script = Script(httpx.Response(503, headers={"Retry-After": "10"}))
    response = send(mode, script, policy)
    assert response.status_code == 503
    assert script.count == 1
    assert clock.sleeps == []


def test_no_retry_layer_sends_once(mode: str) -> None:
    script = Script(503)
    assert send(mode, script, meshlib.Policy(retry=None)).status_code == 503
    assert script.count == 1


def test_per_request_policy_override(mode: str) -> None:
    script = Script(503, 503, 503, 503)
    five = meshlib.Policy(retry=meshlib.Retry(attempts=5))
    response = send(mode, script, extensions={"meshlib.policy": five})
    assert response.status_code == 200
    assert script.count == 5


def test_a_bad_per_request_override_is_a_config_error(mode: str) -> None:
    with pytest.raises(meshlib.ConfigError, match=r"meshlib\.policy"):
        send(mode, Script(), extensions={"meshlib.policy": "fast"})


def test_the_budget_stops_retries_and_hands_back_the_response(mode: str) -> None:
    # No reserve and one retry per ten calls: the first call may retry once.
    stingy = meshlib.Policy(
        retry=meshlib.Retry(attempts=5, budget=meshlib.Budget(ratio=0.1, min_per_second=0))
    )
    script = Script(*[503] * 20)
    # Ten calls deposit 1.0 retry worth of budget; the 11th call's failure may retry once.
    answers = [send(mode, script, stingy).status_code for _ in range(10)]
    assert answers == [503] * 10
    assert script.count == 11  # ten calls and the single retry the budget allowed


def test_the_deadline_header_phases_are_bounded(mode: str, clock: FakeClock) -> None:
    seen: list[dict[str, float | None]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(dict(request.extensions["timeout"]))
        clock.advance(1.5)
        return httpx.Response(503 if len(seen) == 1 else 200)

    policy = meshlib.Policy(
        retry=meshlib.Retry(backoff=meshlib.Backoff(base=0, cap=0, jitter="none"), budget=None),
        timeout=meshlib.Timeout(total=2.0, attempt=1.0),
    )
    assert send(mode, handler, policy, timeout=httpx.Timeout(5.0, connect=0.5)).status_code == 200
    # First attempt: min(client's own, attempt 1.0, 2.0 left); second: 0.5 s left.
    assert seen[0] == {"connect": 0.5, "read": 1.0, "write": 1.0, "pool": 1.0}
    assert seen[1] == {"connect": 0.5, "read": 0.5, "write": 0.5, "pool": 0.5}


def test_meshlib_keeps_its_own_state_out_of_the_request_extensions(
    mode: str, clock: FakeClock
) -> None:
    # The caller's timeouts are lowered per attempt; what meshlib keeps aside to do
    # that is its own, not a key in the extensions the caller and httpcore read.
    def handler(request: httpx.Request) -> httpx.Response:
        clock.advance(0.5)
        return httpx.Response(503 if clock.now() < 1.0 else 200, content=b"body")

    policy = meshlib.Policy(
        retry=meshlib.Retry(backoff=meshlib.Backoff(base=0, cap=0, jitter="none"), budget=None),
        timeout=meshlib.Timeout(total=2.0, attempt=1.0),
    )
    response = send(mode, handler, policy, timeout=httpx.Timeout(5.0))
    assert response.status_code == 200
    assert [key for key in response.request.extensions if key.startswith("meshlib")] == []


def test_each_attempt_carries_one_deadline_header_with_what_is_left(
    mode: str, clock: FakeClock
) -> None:
    seen: list[list[str]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get_list("x-envoy-expected-rq-timeout-ms"))
        clock.advance(0.25)
        return httpx.Response(503 if len(seen) < 3 else 200)

    policy = meshlib.Policy(
        retry=meshlib.Retry(backoff=meshlib.Backoff(base=0, cap=0, jitter="none"), budget=None),
        timeout=meshlib.Timeout(total=2.0),
    )
    # A copy the caller set (in any case) is replaced, not sent beside meshlib's.
    headers = {"X-Envoy-Expected-Rq-Timeout-Ms": "99999", "x-other": "kept"}
    response = send(mode, handler, policy, headers=headers)
    assert response.status_code == 200
    assert seen == [["2000"], ["1750"], ["1500"]]
    assert response.request.headers["x-other"] == "kept"


def test_the_deadline_header_says_each_requests_own_whole_milliseconds(clock: FakeClock) -> None:
    # Most requests of a client start with the same budget; each header must still say its
    # own: the whole budget (not a float's rounding just below it), and never a value left
    # over from an earlier request that had a different one.
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers["x-envoy-expected-rq-timeout-ms"])
        return httpx.Response(200)

    policy = meshlib.Policy(timeout=meshlib.Timeout(total=30.0))
    with meshlib.wrap(httpx.Client(transport=httpx.MockTransport(handler)), policy) as client:
        clock.advance(0.1)  # now 1000.1: (now + 30) - now is 29.999999999999886 in floats
        client.get(URL)
        with meshlib.deadline(2.5):
            client.get(URL)
        client.get(URL)
        with meshlib.deadline(2.5):
            clock.advance(0.0004)
            client.get(URL)  # 2499.6 ms left
        clock.advance(12345.678)
        client.get(URL)
    assert seen == ["30000", "2500", "30000", "2499", "30000"]


def test_nothing_is_sent_when_no_time_is_left(mode: str, clock: FakeClock) -> None:
    script = Script()
    with meshlib.deadline(1.0):
        clock.advance(1.0)
        with pytest.raises(meshlib.DeadlineExceeded) as caught:
            send(mode, script)
    assert script.count == 0
    assert caught.value.request.url == URL


def test_a_timeout_when_the_deadline_ran_out_is_deadline_exceeded(
    mode: str, clock: FakeClock
) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        clock.advance(2.0)
        raise httpx.ReadTimeout("slow", request=request)

    with meshlib.deadline(2.0), pytest.raises(meshlib.DeadlineExceeded) as caught:
        send(mode, handler)
    assert isinstance(caught.value, httpx.TimeoutException)
    assert isinstance(caught.value.__cause__, httpx.ReadTimeout)


def test_a_wait_that_would_end_past_the_deadline_is_not_started(
    mode: str, clock: FakeClock
) -> None:
    script = Script(httpx.ConnectError("refused"), httpx.ConnectError("refused again"))
    slow = meshlib.Policy(
        retry=meshlib.Retry(backoff=meshlib.Backoff(base=5, cap=5, jitter="none"), budget=None)
    )
    with meshlib.deadline(timedelta(seconds=3)), pytest.raises(httpx.ConnectError):
        send(mode, script, slow)
    assert script.count == 1
    assert clock.sleeps == []


def test_retries_are_logged_and_success_is_silent(
    mode: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="meshlib"):
        send(mode, Script())
        assert caplog.records == []
        send(mode, Script(503), QUICK)
    (record,) = caplog.records
    assert record.meshlib_event == "retry"  # type: ignore[attr-defined]
    assert record.meshlib_cause == "503"  # type: ignore[attr-defined]
    assert record.meshlib_destination == "http://orders.internal:80"  # type: ignore[attr-defined]


def test_keyboard_interrupt_propagates_at_once(mode: str) -> None:
    script = Script(KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt):
        send(mode, script)
    assert script.count == 1


def test_cancellation_during_backoff_propagates() -> None:
    backing_off: list[asyncio.Event] = []

    class Blocking(FakeClock):
        async def asleep(self, seconds: float) -> None:
            backing_off[0].set()
            await asyncio.sleep(3600)

    async def go() -> int:
        backing_off.append(asyncio.Event())
        script = Script(503)
        transport = httpx.MockTransport(script)
        async with meshlib.wrap(httpx.AsyncClient(transport=transport)) as client:
            task = asyncio.ensure_future(client.get(URL))
            await asyncio.wait_for(backing_off[0].wait(), 30)  # the attempt failed: backoff
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        return script.count

    with meshlib.testing.use_clock(Blocking()):
        assert asyncio.run(go()) == 1


def test_cancellation_of_the_attempt_propagates_and_is_not_retried() -> None:
    calls = 0

    async def go() -> None:
        inside = asyncio.Event()

        async def handler(request: httpx.Request) -> httpx.Response:
            nonlocal calls
            calls += 1
            inside.set()
            await asyncio.sleep(3600)
            raise AssertionError("unreachable")

        transport = httpx.MockTransport(handler)
        async with meshlib.wrap(httpx.AsyncClient(transport=transport)) as client:
            task = asyncio.ensure_future(client.get(URL))
            await asyncio.wait_for(inside.wait(), 30)  # the handler is blocked in its sleep
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

    asyncio.run(go())
    assert calls == 1


def test_wrap_returns_the_same_client_and_refuses_a_second_wrap() -> None:
    client = httpx.Client(transport=httpx.MockTransport(Script()))
    assert meshlib.wrap(client) is client
    with pytest.raises(meshlib.ConfigError, match="already wrapped"):
        meshlib.wrap(client)
    client.close()


def test_wrap_covers_the_clients_mounts() -> None:
    main, mounted = Script(503), Script(503)
    client = httpx.Client(
        transport=httpx.MockTransport(main),
        mounts={"http://payments.internal": httpx.MockTransport(mounted)},
    )
    with meshlib.wrap(client, QUICK):
        assert client.get("http://payments.internal/pay").status_code == 200
        assert client.get(URL).status_code == 200
    assert (main.count, mounted.count) == (2, 2)


def test_wrap_refuses_other_objects() -> None:
    with pytest.raises(meshlib.ConfigError, match=r"httpx\.Client"):
        meshlib.wrap(object())  # type: ignore[call-overload]
    with pytest.raises(meshlib.ConfigError, match=r"Policy or meshlib\.Mesh"):
        meshlib.wrap(httpx.Client(), "standard")  # type: ignore[call-overload]


def test_client_and_async_client_pass_httpx_options_through() -> None:
    script = Script(503)
    with meshlib.Client(QUICK, transport=httpx.MockTransport(script), base_url=URL) as client:
        assert isinstance(client, httpx.Client)
        assert client.get("").status_code == 200
    assert script.count == 2

    async def go() -> int:
        async with meshlib.AsyncClient(
            QUICK, transport=httpx.MockTransport(Script(503)), headers={"x-team": "orders"}
        ) as client:
            assert isinstance(client, httpx.AsyncClient)
            response = await client.get(URL)
            assert response.request.headers["x-team"] == "orders"
            return response.status_code

    assert asyncio.run(go()) == 200


def test_transport_can_be_composed_by_hand() -> None:
    script = Script(502)
    transport = meshlib.Transport(httpx.MockTransport(script), QUICK)
    with httpx.Client(transport=transport) as client:
        assert client.get(URL).status_code == 200
    assert script.count == 2


def test_clients_made_per_request_share_the_budget() -> None:
    stingy = meshlib.Policy(
        retry=meshlib.Retry(budget=meshlib.Budget(ratio=0.0, min_per_second=0.1, ttl=10))
    )
    script = Script(*[503] * 10)
    # The reserve is one retry (0.1/s over 10 s) for the destination, whichever client asks.
    for _ in range(3):
        with meshlib.Client(stingy, transport=httpx.MockTransport(script)) as client:
            client.get(URL)
    assert script.count == 4


def test_a_mesh_gives_each_destination_its_policy() -> None:
    mesh = meshlib.Mesh(
        default=meshlib.Policy(retry=None),
        destinations={"*.internal": meshlib.Policy(retry=meshlib.Retry(attempts=2))},
    )
    script = Script(503, 503, 503)
    with meshlib.wrap(httpx.Client(transport=httpx.MockTransport(script)), mesh) as client:
        assert client.get("http://orders.internal/").status_code == 503
        assert script.count == 2  # the glob's two attempts
        assert client.get("http://example.com/").status_code == 503
        assert script.count == 3  # the default: no retry


# --- refusing what cannot work, where it is given --------------------------------------


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (
            lambda: meshlib.Transport(None),
            r"Transport\.transport: expected an httpx\.BaseTransport",
        ),  # type: ignore[arg-type]
        (
            lambda: meshlib.Transport(httpx.AsyncHTTPTransport()),  # type: ignore[arg-type]
            r"Transport\.transport: .*; for it, use meshlib\.AsyncTransport",
        ),
        (
            lambda: meshlib.AsyncTransport(None),  # type: ignore[arg-type]
            r"AsyncTransport\.transport: expected an httpx\.AsyncBaseTransport",
        ),
        (
            lambda: meshlib.AsyncTransport(httpx.HTTPTransport()),  # type: ignore[arg-type]
            r"AsyncTransport\.transport: .*; for it, use meshlib\.Transport",
        ),
        (
            lambda: meshlib.Transport(meshlib.Transport(httpx.HTTPTransport())),
            r"Transport\.transport: .*a meshlib transport inside another multiplies retries",
        ),
        (
            lambda: meshlib.AsyncTransport(meshlib.AsyncTransport(httpx.AsyncHTTPTransport())),
            r"AsyncTransport\.transport: .*a meshlib transport inside another multiplies retries",
        ),
    ],
)
def test_a_transport_that_cannot_be_the_inner_one_is_refused_when_given(
    build: Callable[[], object], message: str
) -> None:
    with pytest.raises(meshlib.ConfigError, match=message):
        build()


def test_a_transport_of_both_kinds_is_taken_by_either() -> None:
    # httpx.MockTransport serves sync and async clients: both drivers accept it.
    mock = httpx.MockTransport(Script())
    assert meshlib.Transport(mock).inner is mock
    assert meshlib.AsyncTransport(mock).inner is mock


def test_a_transport_s_repr_names_its_inner_transport_and_policy() -> None:
    transport = meshlib.Transport(httpx.HTTPTransport(), meshlib.STANDARD)
    assert repr(transport) == (
        "<meshlib.Transport over httpx.HTTPTransport, policy STANDARD, state in "
        "<meshlib.Mesh (the process-wide default) from code: 0 destinations>>"
    )
    # No policy: the default Mesh's own (what $MESHLIB_CONFIG names, else STANDARD).
    assert repr(meshlib.Transport(httpx.HTTPTransport())) == (
        "<meshlib.Transport over httpx.HTTPTransport, policies from "
        "<meshlib.Mesh (the process-wide default) from code: 0 destinations>>"
    )
    atransport = meshlib.AsyncTransport(httpx.AsyncHTTPTransport(), QUICK.replace(tracing=None))
    assert repr(atransport).startswith(
        "<meshlib.AsyncTransport over httpx.AsyncHTTPTransport, policy with retry, timeout, "
        "breaker, bulkhead, state in "
    )
    mesh = meshlib.Mesh(destinations={"payments.internal": QUICK})
    assert repr(meshlib.Transport(httpx.MockTransport(Script()), mesh)) == (
        "<meshlib.Transport over httpx.MockTransport, policies from "
        "<meshlib.Mesh from code: 1 destination (payments.internal)>>"
    )


# --- a retry the body stands in the way of -----------------------------------------------


def test_a_retry_refused_for_a_body_that_cannot_be_replayed_is_logged_at_debug(
    mode: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG, logger="meshlib"):
        body = one_shot_body(mode, [b"a", b"b"])
        assert send(mode, Script(503), QUICK, method="PUT", content=body).status_code == 503
        body = one_shot_body(mode, [b"a", b"b"])
        with pytest.raises(httpx.ReadError):
            send(mode, Script(httpx.ReadError("reset")), QUICK, method="PUT", content=body)
    records = [r for r in caplog.records if r.name == "meshlib"]
    assert [(r.levelno, r.meshlib_event, r.meshlib_cause) for r in records] == [  # type: ignore[attr-defined]
        (logging.DEBUG, "not_replayable", "503"),
        (logging.DEBUG, "not_replayable", "ReadError"),
    ]
    assert records[0].meshlib_destination == "http://orders.internal:80"  # type: ignore[attr-defined]
    assert "the request body cannot be sent again" in records[0].getMessage()


def test_no_body_line_when_the_body_was_not_what_stopped_the_retry(
    mode: str, caplog: pytest.LogCaptureFixture
) -> None:
    once = meshlib.Policy(retry=meshlib.Retry(attempts=1, budget=None))
    with caplog.at_level(logging.DEBUG, logger="meshlib"):
        send(mode, Script(), QUICK, method="PUT", content=one_shot_body(mode, [b"a"]))
        # A POST would not be retried whatever its body; one attempt retries nothing.
        send(mode, Script(503), QUICK, method="POST", content=one_shot_body(mode, [b"a"]))
        send(mode, Script(503), once, method="PUT", content=one_shot_body(mode, [b"a"]))
        # A connection failure is retried even with a one-shot body: nothing was sent.
        send(
            mode,
            Script(httpx.ConnectError("refused")),
            QUICK,
            method="PUT",
            content=one_shot_body(mode, [b"a"]),
        )
    events = [getattr(r, "meshlib_event", None) for r in caplog.records if r.name == "meshlib"]
    assert "not_replayable" not in events
