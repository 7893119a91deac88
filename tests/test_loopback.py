"""The retry pipeline against a real HTTP server on 127.0.0.1, sync and async."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator
from typing import cast

import anyio
import httpx
import pytest

import meshlib
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


class _FailingClose(httpx.AsyncByteStream):
    """A body whose close fails after yielding once, optionally cancelling its caller first."""

    def __init__(self, caller: asyncio.Task[object] | None) -> None:
        self.caller = caller

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield b"ok"

    async def aclose(self) -> None:
        if self.caller is not None:
            self.caller.cancel()
        await asyncio.sleep(0)
        raise httpx.ReadError("the connection broke while closing")


@pytest.mark.anyio
@pytest.mark.parametrize("cancelled", [False, True])
async def test_a_close_that_fails_is_reported_once(cancelled: bool) -> None:
    # Not cancelled: the caller gets the close's error. Cancelled: the caller gets the
    # cancellation, and the close's error is retrieved rather than logged by asyncio
    # as "Task exception was never retrieved".
    unretrieved: list[dict[str, object]] = []
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(lambda _loop, context: unretrieved.append(context))

    def handler(request: httpx.Request) -> httpx.Response:
        caller = asyncio.current_task() if cancelled else None
        return httpx.Response(200, stream=_FailingClose(caller))

    transport = httpx.MockTransport(handler)
    async with meshlib.wrap(httpx.AsyncClient(transport=transport), FAST) as client:
        expected = asyncio.CancelledError if cancelled else httpx.ReadError
        with pytest.raises(expected):
            await client.get("http://orders.internal/items")
    for _ in range(5):  # let the close's own task finish and be collected
        await asyncio.sleep(0)
    gc.collect()
    assert unretrieved == []
