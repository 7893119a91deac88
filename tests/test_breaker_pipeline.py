"""The breaker and the bulkhead inside the pipeline, sync and async."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable

import httpx
import pytest

import meshlib
from meshlib.testing import FakeClock, FaultServer, Respond

from .helpers import URL, Script, send

pytestmark = pytest.mark.usefixtures("rng")

MODES = ["sync", "async"]
# The longest a test waits for a thread or task to get where it is going. Only a failing
# run waits this long.
PATIENCE = 30.0
NO_RETRY = meshlib.Policy(retry=None, breaker=meshlib.Breaker(min_calls=4, failure_ratio=0.5))
TRIP_ON_2 = meshlib.Policy(
    retry=meshlib.Retry(attempts=3, budget=None),
    breaker=meshlib.Breaker(consecutive=2, open_for=5.0),
)


@pytest.fixture(params=MODES)
def mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def _wait_until(condition: Callable[[], bool]) -> None:
    """Poll `condition` until it holds; fail after PATIENCE seconds."""
    limit = time.monotonic() + PATIENCE
    while not condition():
        assert time.monotonic() < limit, "the condition never came true"
        time.sleep(0.001)


def _state(destination: str = "http://orders.internal:80") -> str:
    (snapshot,) = [b for b in meshlib.default_mesh().breakers() if b.destination == destination]
    return snapshot.state


def test_an_open_breaker_fails_at_once_and_sends_nothing(mode: str, clock: FakeClock) -> None:
    script = Script(*[503] * 4)
    for _ in range(4):
        assert send(mode, script, NO_RETRY).status_code == 503
    with pytest.raises(meshlib.CircuitOpen) as caught:
        send(mode, script, NO_RETRY)
    assert script.count == 4  # the rejected call never reached the transport
    error = caught.value
    assert isinstance(error, httpx.TransportError)
    assert error.destination == "http://orders.internal:80"
    assert error.retry_after == pytest.approx(5.0)
    assert error.request.url == URL


@pytest.mark.parametrize("outcome", ["response", "error"])
def test_a_slow_failure_opens_the_breaker_for_open_for_from_its_end(
    mode: str, clock: FakeClock, outcome: str
) -> None:
    # The failure is known when the attempt ends: the open period starts then, for a
    # failing response as for an error (a 503 used to count from the attempt's start).
    def slow_failure(request: httpx.Request) -> httpx.Response:
        clock.advance(2.0)
        if outcome == "error":
            raise httpx.ConnectError("down", request=request)
        return httpx.Response(503)

    policy = meshlib.Policy(retry=None, breaker=meshlib.Breaker(consecutive=1, open_for=5.0))
    if outcome == "error":
        with pytest.raises(httpx.ConnectError):
            send(mode, slow_failure, policy)
    else:
        assert send(mode, slow_failure, policy).status_code == 503
    with pytest.raises(meshlib.CircuitOpen) as caught:
        send(mode, slow_failure, policy)
    assert caught.value.retry_after == pytest.approx(5.0)


def test_circuit_open_is_never_retried_or_slept_on(mode: str, clock: FakeClock) -> None:
    policy = NO_RETRY.replace(retry=meshlib.Retry(attempts=5, budget=None))
    script = Script(*[httpx.ConnectError("down")] * 20)
    with pytest.raises(httpx.ConnectError):
        send(mode, script, policy)  # 4 attempts fail, the 4th opens the breaker
    sleeps = len(clock.sleeps)
    with pytest.raises(meshlib.CircuitOpen):
        send(mode, script, policy)
    assert len(clock.sleeps) == sleeps


def test_the_breaker_recovers_through_a_probe(mode: str, clock: FakeClock) -> None:
    script = Script(*[503] * 4)
    for _ in range(4):
        send(mode, script, NO_RETRY)
    assert _state() == "open"
    clock.advance(5.0)
    assert send(mode, script, NO_RETRY).status_code == 200  # the probe
    assert _state() == "closed"
    assert send(mode, script, NO_RETRY).status_code == 200


def test_each_attempt_counts_once(mode: str, clock: FakeClock) -> None:
    policy = meshlib.Policy(retry=meshlib.Retry(attempts=3, budget=None))
    send(mode, Script(503, 503), policy)
    (snapshot,) = meshlib.default_mesh().breakers()
    assert (snapshot.calls, snapshot.failures) == (3, 2)


def test_a_breaker_opening_between_attempts_hands_back_the_last_response(
    mode: str, clock: FakeClock
) -> None:
    script = Script(
        httpx.Response(503, content=b"first"), httpx.Response(503, content=b"second"), 200
    )
    response = send(mode, script, TRIP_ON_2)
    assert response.status_code == 503
    assert response.content == b"second"  # drained before the wait, still readable
    assert script.count == 2


def test_a_breaker_opening_between_attempts_re_raises_the_last_error(
    mode: str, clock: FakeClock
) -> None:
    errors = [httpx.ConnectError("one"), httpx.ConnectError("two")]
    script = Script(*errors)
    with pytest.raises(httpx.ConnectError) as caught:
        send(mode, script, TRIP_ON_2)
    assert caught.value is errors[1]
    assert script.count == 2


@pytest.mark.parametrize(("status", "counts"), [(404, False), (400, False), (429, True)])
def test_which_statuses_count_as_failures(
    mode: str, clock: FakeClock, status: int, counts: bool
) -> None:
    script = Script(*[status] * 4)
    for _ in range(4):
        send(mode, script, NO_RETRY)
    assert _state() == ("open" if counts else "closed")


def test_a_cancelled_probe_frees_its_slot(clock: FakeClock) -> None:
    started = asyncio.Event()

    async def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/hang":
            started.set()
            await asyncio.sleep(3600)
        return httpx.Response(503 if request.url.path == "/fail" else 200)

    async def go() -> int:
        transport = httpx.MockTransport(handler)
        async with meshlib.wrap(httpx.AsyncClient(transport=transport), NO_RETRY) as client:
            for _ in range(4):
                await client.get("http://orders.internal/fail")
            clock.advance(5.0)
            probe = asyncio.ensure_future(client.get("http://orders.internal/hang"))
            await started.wait()
            with pytest.raises(meshlib.CircuitOpen):  # the one probe slot is taken
                await client.get("http://orders.internal/ok")
            probe.cancel()
            with pytest.raises(asyncio.CancelledError):
                await probe
            return (await client.get("http://orders.internal/ok")).status_code

    assert asyncio.run(go()) == 200  # the slot came back; the new probe closed the breaker
    assert _state() == "closed"


def test_breaker_state_is_per_destination(mode: str, clock: FakeClock) -> None:
    script = Script(*[503] * 4)
    for _ in range(4):
        send(mode, script, NO_RETRY, url="http://a.internal/")
    with pytest.raises(meshlib.CircuitOpen):
        send(mode, script, NO_RETRY, url="http://a.internal/")
    assert send(mode, script, NO_RETRY, url="http://b.internal/").status_code == 200


def test_clients_made_per_request_share_a_breaker(clock: FakeClock) -> None:
    script = Script(*[503] * 4)
    for _ in range(4):
        with meshlib.Client(NO_RETRY, transport=httpx.MockTransport(script)) as client:
            client.get(URL)
    with (
        meshlib.Client(NO_RETRY, transport=httpx.MockTransport(script)) as client,
        pytest.raises(meshlib.CircuitOpen),
    ):
        client.get(URL)


def test_transitions_reach_the_hook_and_the_log(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    mesh = meshlib.Mesh(default=NO_RETRY)
    seen: list[tuple[str, str, str]] = []
    mesh.on_breaker_change(lambda *transition: seen.append(transition))
    script = Script(*[503] * 4)
    with meshlib.wrap(httpx.Client(transport=httpx.MockTransport(script)), mesh) as client:
        for _ in range(4):
            client.get(URL)
        clock.advance(5.0)
        client.get(URL)
    label = "http://orders.internal:80"
    assert seen == [
        (label, "closed", "open"),
        (label, "open", "half_open"),
        (label, "half_open", "closed"),
    ]
    opened = [r for r in caplog.records if getattr(r, "meshlib_to", None) == "open"]
    assert opened
    assert opened[0].levelname == "WARNING"


# Bulkheads


def test_a_full_bulkhead_rejects_at_once_and_frees_slots_on_every_exit() -> None:
    policy = meshlib.Policy(retry=None, bulkhead=meshlib.Bulkhead(max_concurrent=2))
    release = asyncio.Event()
    holding: list[httpx.Request] = []
    both_hold = asyncio.Event()

    async def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/boom":
            raise httpx.ConnectError("refused")
        holding.append(request)
        if len(holding) == 2:
            both_hold.set()
        await release.wait()
        return httpx.Response(200)

    async def go() -> None:
        transport = httpx.MockTransport(handler)
        async with meshlib.wrap(httpx.AsyncClient(transport=transport), policy) as client:
            first = asyncio.ensure_future(client.get(URL))
            second = asyncio.ensure_future(client.get(URL))
            await asyncio.wait_for(both_hold.wait(), PATIENCE)  # both slots are taken
            with pytest.raises(meshlib.BulkheadFull) as caught:
                await client.get(URL)
            assert caught.value.destination == "http://orders.internal:80"
            assert isinstance(caught.value, httpx.TransportError)
            second.cancel()  # a cancelled call frees its slot ...
            with pytest.raises(asyncio.CancelledError):
                await second
            with pytest.raises(httpx.ConnectError):  # ... and so does a failed one
                await client.get("http://orders.internal/boom")
            release.set()
            assert (await first).status_code == 200
            assert (await client.get(URL)).status_code == 200
        (snapshot,) = meshlib.default_mesh().bulkheads()
        assert snapshot.in_flight == 0

    asyncio.run(go())


def test_a_queued_call_waits_for_a_slot() -> None:
    policy = meshlib.Policy(retry=None, bulkhead=meshlib.Bulkhead(max_concurrent=1, max_queued=1))
    gate = threading.Event()
    order: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        order.append(request.url.path)
        if request.url.path == "/first":
            gate.wait(PATIENCE)
        return httpx.Response(200)

    def queued() -> int:
        return sum(b.queued for b in meshlib.default_mesh().bulkheads())

    with meshlib.wrap(httpx.Client(transport=httpx.MockTransport(handler)), policy) as client:
        first = threading.Thread(target=client.get, args=("http://orders.internal/first",))
        first.start()
        _wait_until(lambda: order == ["/first"])  # the one slot is taken
        second = threading.Thread(target=client.get, args=("http://orders.internal/second",))
        second.start()
        _wait_until(lambda: queued() == 1)  # and the one place in the queue
        with pytest.raises(meshlib.BulkheadFull):  # one running, one queued: no more room
            client.get("http://orders.internal/third")
        gate.set()
        first.join(PATIENCE)
        second.join(PATIENCE)
        assert not first.is_alive()
        assert not second.is_alive()
    assert order == ["/first", "/second"]


def test_a_queued_call_gives_up_at_its_deadline() -> None:
    policy = meshlib.Policy(
        retry=None,
        timeout=meshlib.Timeout(total=0.1),
        bulkhead=meshlib.Bulkhead(max_concurrent=1, max_queued=5),
    )

    async def go() -> float:
        holding = asyncio.Event()
        release = asyncio.Event()

        async def handler(request: httpx.Request) -> httpx.Response:
            # The busy call keeps its slot until the queued one is over (10 s at most).
            holding.set()
            await asyncio.wait_for(release.wait(), 10.0)
            return httpx.Response(200)

        transport = httpx.MockTransport(handler)
        async with meshlib.wrap(httpx.AsyncClient(transport=transport), policy) as client:
            busy = asyncio.ensure_future(
                client.get(
                    URL,
                    extensions={
                        "meshlib.policy": meshlib.Policy(retry=None, bulkhead=policy.bulkhead)
                    },
                )
            )
            await asyncio.wait_for(holding.wait(), PATIENCE)
            started = time.monotonic()
            with pytest.raises(meshlib.DeadlineExceeded):
                await client.get(URL)
            waited = time.monotonic() - started
            release.set()
            await busy
            return waited

    # At its 0.1 s deadline, not when the slot comes free (10 s): the margin covers a
    # loaded 2-core machine waking the event loop late.
    assert 0.05 <= asyncio.run(go()) < 1.1


# Real sockets


# Real sockets under a transport that holds every call until all 50 are inside it: a lock
# held across calls would let only one in, and the barrier would break after PATIENCE.
CONCURRENT = 50


class _AllAtOnce(httpx.BaseTransport):
    def __init__(self) -> None:
        self.inner = httpx.HTTPTransport(limits=httpx.Limits(max_connections=CONCURRENT))
        self.barrier = threading.Barrier(CONCURRENT, timeout=PATIENCE)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.barrier.wait()
        return self.inner.handle_request(request)

    def close(self) -> None:
        self.inner.close()


class _AllAtOnceAsync(httpx.AsyncBaseTransport):
    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport(limits=httpx.Limits(max_connections=CONCURRENT))
        self.inside = 0
        self.all_inside = asyncio.Event()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.inside += 1
        if self.inside == CONCURRENT:
            self.all_inside.set()
        await asyncio.wait_for(self.all_inside.wait(), PATIENCE)
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


@pytest.mark.network
def test_no_lock_is_held_across_calls_sync(server: FaultServer) -> None:
    statuses: list[int] = []
    failures: list[BaseException] = []

    def call(client: httpx.Client) -> None:
        try:
            statuses.append(client.get("/orders").status_code)
        except BaseException as exc:
            failures.append(exc)

    with meshlib.wrap(httpx.Client(base_url=server.url, transport=_AllAtOnce())) as client:
        threads = [threading.Thread(target=call, args=(client,)) for _ in range(CONCURRENT)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(2 * PATIENCE)
    assert failures == []
    assert statuses == [200] * CONCURRENT
    assert server.request_count == CONCURRENT


@pytest.mark.network
@pytest.mark.anyio
async def test_no_lock_is_held_across_calls_async(server: FaultServer) -> None:
    transport = _AllAtOnceAsync()
    async with meshlib.wrap(httpx.AsyncClient(base_url=server.url, transport=transport)) as c:
        responses = await asyncio.gather(*(c.get("/orders") for _ in range(CONCURRENT)))
    assert [r.status_code for r in responses] == [200] * CONCURRENT
    assert server.request_count == CONCURRENT


@pytest.mark.network
def test_a_dead_upstream_stops_being_called_and_recovers(
    server: FaultServer, clock: FakeClock
) -> None:
    server.default = Respond(503)
    policy = meshlib.Policy(
        retry=meshlib.Retry(attempts=3, budget=None), breaker=meshlib.Breaker(min_calls=20)
    )
    rejected = 0
    with (
        meshlib.testing.set_testing(True),
        meshlib.wrap(httpx.Client(base_url=server.url), policy) as client,
    ):
        for _ in range(100):
            try:
                client.get("/orders")
            except meshlib.CircuitOpen:
                rejected += 1
        assert server.request_count == 20  # the breaker opened at its 20th failure
        assert rejected >= 90
        server.default = Respond(200)
        clock.advance(5.0)
        assert client.get("/orders").status_code == 200  # the probe closes it
        assert client.get("/orders").status_code == 200
    assert server.request_count == 22


def test_resilient_uses_breaker_and_bulkhead_by_key(clock: FakeClock) -> None:
    policy = meshlib.Policy(retry=None, breaker=meshlib.Breaker(consecutive=2))
    calls = 0

    @meshlib.resilient(on=ConnectionError, policy=policy, key="inventory")
    def reserve() -> None:
        nonlocal calls
        calls += 1
        raise ConnectionError("inventory down")

    for _ in range(2):
        with pytest.raises(ConnectionError):
            reserve()
    with pytest.raises(meshlib.CircuitOpen) as caught:
        reserve()
    assert caught.value.destination == "inventory"
    assert calls == 2


@pytest.mark.anyio
async def test_resilient_async_bulkhead() -> None:
    policy = meshlib.Policy(retry=None, bulkhead=meshlib.Bulkhead(max_concurrent=1))
    gate = asyncio.Event()
    inside = asyncio.Event()

    @meshlib.resilient(on=ConnectionError, policy=policy)
    async def work() -> str:
        inside.set()
        await gate.wait()
        return "done"

    first = asyncio.ensure_future(work())
    await asyncio.wait_for(inside.wait(), PATIENCE)  # the one slot is taken
    with pytest.raises(meshlib.BulkheadFull):
        await work()
    gate.set()
    assert await first == "done"
    assert await work() == "done"


def test_a_slot_freed_while_deciding_to_queue_is_not_taken_twice(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from meshlib._bulkhead import MAY_QUEUE, BulkheadState, Slot

    policy = meshlib.Policy(retry=None, bulkhead=meshlib.Bulkhead(max_concurrent=1, max_queued=1))
    real = BulkheadState.try_acquire
    answers = iter([MAY_QUEUE])  # "full, but you may queue", then the real answers

    def racing(self: BulkheadState) -> Slot:
        for answer in answers:
            return answer
        return real(self)

    monkeypatch.setattr(BulkheadState, "try_acquire", racing)
    send("sync", Script(), policy)
    (snapshot,) = meshlib.default_mesh().bulkheads()
    assert snapshot.in_flight == 0  # the one slot taken was given back; none leaked
