"""The retry pipeline against a real HTTP server on 127.0.0.1, sync and async."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import cast

import anyio
import httpx
import pytest

import meshlib
from meshlib import _compat
from meshlib.testing import FakeClock, FaultServer, Hang, Reset, Respond

pytestmark = [pytest.mark.network, pytest.mark.usefixtures("rng")]

FAST = meshlib.Policy(
    retry=meshlib.Retry(backoff=meshlib.Backoff(base=0.001, cap=0.01)),
    timeout=meshlib.Timeout(total=5.0, attempt=1.0),
)


def test_a_503_burst_then_success_sync(server: FaultServer) -> None:
    server.enqueue(Respond(503), Respond(503))
    with meshlib.wrap(httpx.Client(base_url=server.url), FAST) as client:
        response = client.get("/orders")
    assert response.status_code == 200
    assert response.text == "ok"
    assert server.request_count == 3


@pytest.mark.anyio
async def test_a_503_burst_then_success_async(server: FaultServer) -> None:
    server.enqueue(Respond(503), Respond(503))
    async with meshlib.wrap(httpx.AsyncClient(base_url=server.url), FAST) as client:
        response = await client.get("/orders")
    assert response.status_code == 200
    assert server.request_count == 3


def test_a_reset_connection_is_retried(server: FaultServer) -> None:
    server.enqueue(Reset(), Reset())
    with meshlib.wrap(httpx.Client(base_url=server.url), FAST) as client:
        assert client.get("/orders").status_code == 200
    assert server.request_count == 3


@pytest.mark.anyio
async def test_a_reset_connection_is_retried_async(server: FaultServer) -> None:
    server.enqueue(Reset())
    async with meshlib.wrap(httpx.AsyncClient(base_url=server.url), FAST) as client:
        assert (await client.get("/orders")).status_code == 200
    assert server.request_count == 2


def test_a_reset_post_is_not_resent(server: FaultServer) -> None:
    server.enqueue(Reset())
    with (
        meshlib.wrap(httpx.Client(base_url=server.url), FAST) as client,
        pytest.raises((httpx.ReadError, httpx.RemoteProtocolError)),
    ):
        client.post("/charge", content=b"card=4242")
    assert server.request_count == 1


def test_retry_after_from_a_real_server(server: FaultServer, clock: FakeClock) -> None:
    server.enqueue(Respond(503, headers={"Retry-After": "4"}), Respond(429))
    with meshlib.wrap(httpx.Client(base_url=server.url)) as client:
        assert client.get("/orders").status_code == 200
    assert clock.sleeps[0] == 4.0
    assert 0 <= clock.sleeps[1] <= 0.1
    assert server.request_count == 3


def test_a_hung_attempt_is_cut_and_retried(server: FaultServer) -> None:
    # The retry must answer within the attempt's 1 s, even on a loaded machine; uncut, the
    # hang would outlast the whole 10 s.
    server.enqueue(Hang(30.0))
    policy = FAST.replace(timeout=meshlib.Timeout(total=10.0, attempt=1.0))
    with meshlib.wrap(httpx.Client(base_url=server.url), policy) as client:
        assert client.get("/orders").status_code == 200
    assert server.request_count == 2


def test_generator_body_gets_the_original_503_not_stream_consumed(server: FaultServer) -> None:
    server.enqueue(Respond(503))

    def body() -> object:
        yield b"part-1;"
        yield b"part-2"

    with meshlib.wrap(httpx.Client(base_url=server.url), FAST) as client:
        response = client.put("/blob", content=body(), headers={"Idempotency-Key": "k"})
    assert response.status_code == 503
    assert server.request_count == 1
    assert server.requests[0].body == b"part-1;part-2"


def test_one_connection_survives_100_retried_calls_sync(server: FaultServer) -> None:
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    timeout = httpx.Timeout(2.0, pool=0.5)
    # Every call fails once: a breaker would rightly open; this test is about the pool.
    policy = FAST.replace(
        retry=meshlib.Retry(backoff=meshlib.Backoff(base=0, cap=0), budget=None), breaker=None
    )
    with meshlib.wrap(
        httpx.Client(base_url=server.url, limits=limits, timeout=timeout), policy
    ) as c:
        for _ in range(100):
            server.enqueue(Respond(503, body=b"busy" * 100))
            assert c.get("/orders").status_code == 200
    assert server.request_count == 200
    assert server.connection_count == 1  # every failed response was drained back to the pool


@pytest.mark.anyio
async def test_one_connection_survives_100_retried_calls_async(server: FaultServer) -> None:
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    timeout = httpx.Timeout(2.0, pool=0.5)
    policy = FAST.replace(
        retry=meshlib.Retry(backoff=meshlib.Backoff(base=0, cap=0), budget=None), breaker=None
    )
    client = httpx.AsyncClient(base_url=server.url, limits=limits, timeout=timeout)
    async with meshlib.wrap(client, policy) as c:
        for _ in range(100):
            server.enqueue(Respond(503, body=b"busy" * 100))
            assert (await c.get("/orders")).status_code == 200
    assert server.request_count == 200
    assert server.connection_count == 1


def _dead_upstream_requests(server: FaultServer, budget: meshlib.Budget | None) -> int:
    server.default = Respond(503)
    # The budget alone: a breaker would stop the calls first (see test_breaker_loopback).
    policy = meshlib.Policy(retry=meshlib.Retry(attempts=3, budget=budget), breaker=None)
    with (
        meshlib.testing.set_testing(True),
        meshlib.wrap(httpx.Client(base_url=server.url), policy) as client,
    ):
        for _ in range(1000):
            assert client.get("/orders").status_code == 503
    return server.request_count


def test_the_budget_caps_load_on_a_dead_upstream(server: FaultServer, clock: FakeClock) -> None:
    # 1000 calls inside one window: at most 20% retries plus the reserve of 10/s × 10 s.
    sent = _dead_upstream_requests(server, meshlib.Budget())
    assert 1000 + 200 <= sent <= 1000 + 200 + 100


def test_without_reserve_the_budget_is_the_ratio(server: FaultServer, clock: FakeClock) -> None:
    sent = _dead_upstream_requests(server, meshlib.Budget(ratio=0.2, min_per_second=0))
    assert 1190 <= sent <= 1200  # 1.2x, against 3x with no budget


def test_without_a_budget_every_call_tries_three_times(
    server: FaultServer, clock: FakeClock
) -> None:
    assert _dead_upstream_requests(server, None) == 3000


@pytest.mark.anyio
async def test_cancelling_a_call_to_a_hung_server_propagates(server: FaultServer) -> None:
    server.default = Hang(60.0)
    async with meshlib.wrap(httpx.AsyncClient(base_url=server.url)) as client:
        task = asyncio.ensure_future(client.get("/orders"))
        for _ in range(6000):  # until the request is in the server's hands (30 s at most)
            if server.request_count:
                break
            await asyncio.sleep(0.005)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert server.request_count == 1


class _CancelCallerOnClose(httpx.AsyncByteStream):
    """A body whose close cancels the calling task as it begins, so that the
    cancellation lands inside httpcore's close (the encode/httpcore#1093 family)."""

    def __init__(self, inner: httpx.AsyncByteStream, caller: asyncio.Task[object]) -> None:
        self.inner = inner
        self.caller = caller

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self.inner:
            yield chunk

    async def aclose(self) -> None:
        self.caller.cancel()
        await self.inner.aclose()


class _CancellingTransport(httpx.AsyncBaseTransport):
    """A one-connection transport whose first response cancels its caller while closing."""

    def __init__(self) -> None:
        self.http = httpx.AsyncHTTPTransport(limits=httpx.Limits(max_connections=1))
        self.cancel_on_close = True

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self.http.handle_async_request(request)
        caller = asyncio.current_task()
        if self.cancel_on_close and caller is not None:
            self.cancel_on_close = False
            stream = cast(httpx.AsyncByteStream, response.stream)
            response.stream = _CancelCallerOnClose(stream, caller)
        return response

    async def aclose(self) -> None:
        await self.http.aclose()


@pytest.mark.anyio
async def test_a_cancellation_during_the_close_does_not_strand_the_connection(
    server: FaultServer,
) -> None:
    # One connection: were the cancelled call's close stopped halfway, the pool would
    # keep the connection marked in use and the next call would wait for a PoolTimeout.
    transport = _CancellingTransport()
    timeout = httpx.Timeout(5.0, pool=0.5)
    async with meshlib.wrap(
        httpx.AsyncClient(transport=transport, timeout=timeout), FAST
    ) as client:
        with pytest.raises(asyncio.CancelledError):
            await client.get(server.url + "/orders")  # the cancellation arrives at once
        response = await client.get(server.url + "/orders")
        assert response.status_code == 200
        assert all(connection.is_idle() for connection in transport.http._pool.connections)


@pytest.mark.anyio
async def test_bare_httpx_strands_the_connection_the_same_way(server: FaultServer) -> None:
    # The control: without meshlib the same cancellation leaves the connection in use,
    # so the test above reproduces the race it guards against.
    transport = _CancellingTransport()
    timeout = httpx.Timeout(5.0, pool=0.5)
    async with httpx.AsyncClient(transport=transport, timeout=timeout) as client:
        with pytest.raises(asyncio.CancelledError):
            await client.get(server.url + "/orders")
        with pytest.raises(httpx.PoolTimeout):
            await client.get(server.url + "/orders")


def _cancel_inside_close(how: str) -> Callable[[str, dict[str, object]], Awaitable[None]]:
    """An httpcore trace hook that cancels the calling task as httpx's own close begins.

    "inside": the task cancels itself, so the cancellation lands on the close's first
    suspension (httpcore's lock on the connection); "another task": the cancel comes
    from a callback that runs while the close is suspended there.
    """
    caller = asyncio.current_task()
    assert caller is not None
    armed = [True]

    async def trace(event: str, info: dict[str, object]) -> None:
        if event == "http11.response_closed.started" and armed[0]:
            armed[0] = False
            if how == "inside":
                caller.cancel()
            else:
                asyncio.get_running_loop().call_soon(caller.cancel)

    return trace


@pytest.mark.anyio
@pytest.mark.parametrize("how", ["inside", "another task"])
@pytest.mark.parametrize("through", ["meshlib", "bare httpx"])
async def test_a_cancellation_inside_httpx_own_close(
    server: FaultServer, how: str, through: str
) -> None:
    # httpx's own body, unwrapped by any test stream: meshlib closes it in the caller's
    # task, so the cancellation meets the real close. One connection: were the close
    # stopped halfway, the next call would wait for a PoolTimeout (as bare httpx does).
    transport = httpx.AsyncHTTPTransport(limits=httpx.Limits(max_connections=1))
    client = httpx.AsyncClient(transport=transport, timeout=httpx.Timeout(5.0, pool=0.5))
    if through == "meshlib":
        client = meshlib.wrap(client, FAST)
    async with client:
        trace = _cancel_inside_close(how)
        with pytest.raises(asyncio.CancelledError):
            await client.get(server.url + "/orders", extensions={"trace": trace})
        current = asyncio.current_task()
        assert current is not None
        current.uncancel()
        if through == "bare httpx":  # the control: the race is real
            with pytest.raises(httpx.PoolTimeout):
                await client.get(server.url + "/orders")
            return
        # The cancellation was raised once the close was done: the connection is idle.
        assert all(connection.is_idle() for connection in transport._pool.connections), [
            repr(connection) for connection in transport._pool.connections
        ]
        assert (await client.get(server.url + "/orders")).status_code == 200
    assert server.connection_count == 1


@pytest.mark.anyio
async def test_a_cancellation_inside_httpx_own_close_arrives_at_once(server: FaultServer) -> None:
    # Held back only while httpcore finishes the close (no I/O): a ticking task sees
    # the loop turn at most a few times between the cancel and the caller's CancelledError.
    ticks = [0]
    stop = asyncio.Event()

    async def tick() -> None:
        while not stop.is_set():
            ticks[0] += 1
            await asyncio.sleep(0)

    async def call(client: httpx.AsyncClient, cancelled_at: list[int]) -> None:
        async def trace(event: str, info: dict[str, object]) -> None:
            if event == "http11.response_closed.started":
                cancelled_at.append(ticks[0])
                caller.cancel()

        caller = asyncio.current_task()
        assert caller is not None
        await client.get(server.url + "/orders", extensions={"trace": trace})

    async with meshlib.wrap(httpx.AsyncClient(), FAST) as client:
        ticker = asyncio.create_task(tick())
        cancelled_at: list[int] = []
        task = asyncio.create_task(call(client, cancelled_at))
        with pytest.raises(asyncio.CancelledError):
            await task
        raised_at = ticks[0]
        stop.set()
        await ticker
    assert raised_at - cancelled_at[0] <= 5  # 2 with httpcore 1.0.9: its lock, then the wake-up


@pytest.mark.anyio
async def test_concurrent_calls_cancelled_anywhere_leave_no_connection_in_use(
    server: FaultServer,
) -> None:
    # Four tasks on two connections, each call cancelled at a seeded moment: before
    # the answer, inside the close, or just after. Every connection ends idle.
    rng = random.Random(7)
    transport = httpx.AsyncHTTPTransport(limits=httpx.Limits(max_connections=2))
    timeout = httpx.Timeout(5.0, pool=2.0)
    async with meshlib.wrap(httpx.AsyncClient(transport=transport, timeout=timeout), FAST) as c:

        async def one() -> None:
            where = rng.choice(["none", "none", "close", "soon"])
            extensions = {"trace": _cancel_inside_close("inside")} if where == "close" else {}
            task = asyncio.current_task()
            assert task is not None
            if where == "soon":
                asyncio.get_running_loop().call_later(rng.uniform(0, 0.002), task.cancel)
            await c.get(server.url + "/orders", extensions=extensions)

        async def worker() -> None:
            for _ in range(25):
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.create_task(one())

        await asyncio.gather(*(worker() for _ in range(4)))
        # One more call first: it also clears out any connection whose connect was
        # cancelled (httpcore drops those at the next request); a stranded one stays.
        assert (await c.get(server.url + "/orders")).status_code == 200
        assert all(connection.is_idle() for connection in transport._pool.connections), [
            repr(connection) for connection in transport._pool.connections
        ]


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_a_request_cancelled_before_it_used_its_new_connection_frees_the_slot(
    server: FaultServer,
) -> None:
    # httpcore 1.0 leaves such a connection in its pool, neither idle nor closed, holding a
    # slot for good (encode/httpcore#1093): with one slot, every later request would wait
    # for it and end in PoolTimeout. meshlib closes it when the cancellation passes by.
    transport = httpx.AsyncHTTPTransport(limits=httpx.Limits(max_connections=1))
    timeout = httpx.Timeout(5.0, pool=2.0)
    async with meshlib.wrap(httpx.AsyncClient(transport=transport, timeout=timeout), FAST) as c:
        tasks = [asyncio.create_task(c.get(server.url + "/orders")) for _ in range(2)]
        await asyncio.sleep(0)  # the first is given a new connection, the second waits
        assert [repr(connection) for connection in transport._pool.connections] == [
            "<AsyncHTTPConnection [CONNECTING]>"
        ]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        assert transport._pool.connections == []
        assert (await c.get(server.url + "/orders")).status_code == 200


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["trio"])
async def test_async_calls_work_under_trio(server: FaultServer) -> None:
    # Other anyio backends than asyncio take meshlib's anyio paths (bulkhead queue,
    # shielded close): a retried 503, then a body read and closed, on a one-slot queue.
    server.enqueue(Respond(503))
    policy = FAST.replace(bulkhead=meshlib.Bulkhead(max_concurrent=1, max_queued=4))
    limits = httpx.Limits(max_connections=1)
    async with meshlib.wrap(
        httpx.AsyncClient(base_url=server.url, limits=limits), policy
    ) as client:
        async with anyio.create_task_group() as group:
            for _ in range(3):
                group.start_soon(client.get, "/orders")
        response = await client.get("/orders")
        assert response.status_code == 200
        assert response.text == "ok"
    assert server.request_count == 5


class _FailingClose:
    """An httpcore-like body whose close fails after yielding once, optionally
    cancelling its caller first."""

    def __init__(self, caller: asyncio.Task[object] | None) -> None:
        self.caller = caller

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield b"ok"

    async def aclose(self) -> None:
        if self.caller is not None:
            self.caller.cancel()
        await asyncio.sleep(0)
        raise httpx.ReadError("the connection broke while closing")


class _Body(httpx.AsyncByteStream):
    """Any body of a transport other than httpx's own: its close gets a task of its own."""

    def __init__(self, inner: _FailingClose) -> None:
        self.inner = inner

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self.inner:
            yield chunk

    async def aclose(self) -> None:
        await self.inner.aclose()


# httpx's own body class (what AsyncHTTPTransport hands back), around a stand-in for httpcore.
HTTPX_BODY = cast("Callable[[object], httpx.AsyncByteStream]", _compat.HTTPX_ASYNC_STREAM)


@pytest.mark.anyio
@pytest.mark.parametrize("body", ["httpx's own", "another transport's"])
@pytest.mark.parametrize("cancelled", [False, True])
async def test_a_close_that_fails_is_reported_once(cancelled: bool, body: str) -> None:
    # Not cancelled: the caller gets the close's error. Cancelled: the caller gets the
    # cancellation, and the close's error is retrieved rather than logged by asyncio
    # as "Task exception was never retrieved".
    unretrieved: list[dict[str, object]] = []
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(lambda _loop, context: unretrieved.append(context))

    def handler(request: httpx.Request) -> httpx.Response:
        close = _FailingClose(asyncio.current_task() if cancelled else None)
        stream = HTTPX_BODY(close) if body == "httpx's own" else _Body(close)
        return httpx.Response(200, stream=stream)

    transport = httpx.MockTransport(handler)
    async with meshlib.wrap(httpx.AsyncClient(transport=transport), FAST) as client:
        expected = asyncio.CancelledError if cancelled else httpx.ReadError
        with pytest.raises(expected):
            await client.get("http://orders.internal/items")
    for _ in range(5):  # let the close's own task finish and be collected
        await asyncio.sleep(0)
    gc.collect()
    assert unretrieved == []


class _WaitingClose:
    """An httpcore-like body whose close waits on a future (as for a contended lock)."""

    def __init__(self) -> None:
        self.go_on = asyncio.Event()
        self.waiting = asyncio.Event()
        self.outcome = "open"

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield b"ok"

    async def aclose(self) -> None:
        self.waiting.set()
        try:
            await self.go_on.wait()
        except asyncio.CancelledError:
            self.outcome = "cut"
            raise
        self.outcome = "closed"


@pytest.mark.anyio
async def test_a_cancellation_while_httpx_own_close_waits_does_not_cut_it() -> None:
    # asyncio's task.cancel() cancels the future a task waits on: had meshlib let the
    # close wait on its own future in the caller's task, the close would be cut there.
    close = _WaitingClose()
    transport = httpx.MockTransport(lambda request: httpx.Response(200, stream=HTTPX_BODY(close)))
    async with meshlib.wrap(httpx.AsyncClient(transport=transport), FAST) as client:
        task = asyncio.create_task(client.get("http://orders.internal/items"))
        await close.waiting.wait()
        task.cancel()
        await asyncio.sleep(0)
        task.cancel()  # twice, as anyio's cancel scopes do until the task gives in
        for _ in range(3):
            await asyncio.sleep(0)
        assert close.outcome == "open"  # not cut
        close.go_on.set()
        with pytest.raises(asyncio.CancelledError):
            await task
        for _ in range(3):
            await asyncio.sleep(0)
    assert close.outcome == "closed"
