"""Graceful fallback on functions: ``@resilient(on=..., fallback=f)``, and fallback telemetry.

The decorated functions call a real FaultServer on 127.0.0.1 with plain httpx, as a
product page calls its recommendations service.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

import meshlib
from meshlib.testing import FakeClock, FaultServer, Hang, Reset, Respond

NO_WAIT = meshlib.Backoff(base=0.0, cap=0.0, jitter="none")
POPULAR = ["the popular ones"]


@pytest.fixture(params=["sync", "async"])
def mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


class Recorder:
    """A fallback that records the exceptions it was given."""

    def __init__(self) -> None:
        self.given: list[Exception] = []

    def __call__(self, exc: Exception) -> list[str]:
        self.given.append(exc)
        return POPULAR


def recommendations(
    mode: str, server: FaultServer, policy: meshlib.Policy, fallback: Callable[[Exception], Any]
) -> Callable[[], Any]:
    """A decorated function that asks the server for recommendations; sync or async."""
    url = server.url + "/recs"
    mesh = meshlib.Mesh(policy)
    if mode == "sync":

        @meshlib.resilient(on=httpx.HTTPError, policy=mesh, key="recs", fallback=fallback)
        def fetch() -> list[str]:
            response = httpx.get(url, timeout=10)
            response.raise_for_status()
            return list(response.json())

        return fetch

    @meshlib.resilient(on=httpx.HTTPError, policy=mesh, key="recs", fallback=fallback)
    async def afetch() -> list[str]:
        async with httpx.AsyncClient(timeout=10) as client:
            response = await client.get(url)
            response.raise_for_status()
            return list(response.json())

    return afetch


async def until_sent(server: FaultServer) -> None:
    """Wait until the server has seen a request (it has no event to wait on: poll it)."""
    waited = time.monotonic() + 10
    while server.request_count == 0 and time.monotonic() < waited:  # noqa: ASYNC110
        await asyncio.sleep(0.005)


def run(mode: str, fn: Callable[[], Any]) -> Any:
    return fn() if mode == "sync" else asyncio.run(fn())


def test_attempts_out_the_fallback_answers_with_the_last_error(
    mode: str, server: FaultServer
) -> None:
    fallback = Recorder()
    policy = meshlib.Policy(retry=meshlib.Retry(attempts=2, backoff=NO_WAIT, budget=None))
    fetch = recommendations(mode, server, policy, fallback)
    server.enqueue(Respond(200, b'["yours"]'))
    assert run(mode, fetch) == ["yours"]
    assert fallback.given == []
    server.enqueue(Reset(), Respond(503))
    assert run(mode, fetch) == POPULAR
    assert server.request_count == 3
    (given,) = fallback.given
    assert isinstance(given, httpx.HTTPStatusError)  # the last attempt's own error


def test_an_open_breaker_gets_the_fallback(mode: str, server: FaultServer) -> None:
    fallback = Recorder()
    policy = meshlib.Policy(
        retry=meshlib.Retry(attempts=1), breaker=meshlib.Breaker(consecutive=1, open_for=600)
    )
    fetch = recommendations(mode, server, policy, fallback)
    server.enqueue(Respond(500))
    assert run(mode, fetch) == POPULAR  # the 500's error, which opens the breaker
    assert run(mode, fetch) == POPULAR
    assert server.request_count == 1
    assert isinstance(fallback.given[1], meshlib.CircuitOpen)


def test_a_full_bulkhead_gets_the_fallback(mode: str, server: FaultServer) -> None:
    fallback = Recorder()
    policy = meshlib.Policy(retry=None, bulkhead=meshlib.Bulkhead(max_concurrent=1))
    fetch = recommendations(mode, server, policy, fallback)
    server.enqueue(Hang(5.0))

    if mode == "sync":
        holder = threading.Thread(target=fetch)
        holder.start()
        waited = time.monotonic() + 10
        while server.request_count == 0 and time.monotonic() < waited:
            time.sleep(0.005)
        assert fetch() == POPULAR
        server.stop()
        holder.join(10)
    else:

        async def go() -> Any:
            held = asyncio.ensure_future(fetch())
            await until_sent(server)
            try:
                return await fetch()
            finally:
                held.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await held

        assert asyncio.run(go()) == POPULAR
    assert isinstance(fallback.given[0], meshlib.BulkheadFull)
    # The call that held the slot: cut when the server stopped (sync), or cancelled (async).
    assert len(fallback.given) == (2 if mode == "sync" else 1)
    assert all(isinstance(exc, httpx.TransportError) for exc in fallback.given[1:])


def test_a_passed_deadline_gets_the_fallback(mode: str, server: FaultServer) -> None:
    fallback = Recorder()
    fetch = recommendations(mode, server, meshlib.Policy(retry=None), fallback)
    clock = FakeClock()
    with meshlib.testing.use_clock(clock), meshlib.deadline(1.0):
        clock.advance(2.0)
        assert run(mode, fetch) == POPULAR
    assert server.request_count == 0
    assert isinstance(fallback.given[0], meshlib.DeadlineExceeded)


def test_an_async_call_cut_by_its_deadline_gets_the_fallback(server: FaultServer) -> None:
    fallback = Recorder()
    policy = meshlib.Policy(retry=None, timeout=meshlib.Timeout(total=0.3))
    fetch = recommendations("async", server, policy, fallback)
    server.enqueue(Hang(5.0))
    assert asyncio.run(fetch()) == POPULAR
    assert server.request_count == 1
    assert isinstance(fallback.given[0], meshlib.DeadlineExceeded)


def test_an_exception_on_does_not_cover_is_not_handed_to_the_fallback(mode: str) -> None:
    fallback = Recorder()
    if mode == "sync":

        @meshlib.resilient(on=ConnectionError, fallback=fallback)
        def broken() -> list[str]:
            raise ValueError("a bug, not an outage")

        with pytest.raises(ValueError, match="a bug"):
            broken()
    else:

        @meshlib.resilient(on=ConnectionError, fallback=fallback)
        async def abroken() -> list[str]:
            raise ValueError("a bug, not an outage")

        with pytest.raises(ValueError, match="a bug"):
            asyncio.run(abroken())
    assert fallback.given == []


def test_cancellation_never_reaches_the_fallback(server: FaultServer) -> None:
    fallback = Recorder()
    fetch = recommendations("async", server, meshlib.Policy(retry=None), fallback)
    server.enqueue(Hang(5.0))

    async def go() -> None:
        task = asyncio.ensure_future(fetch())
        await until_sent(server)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(go())
    assert fallback.given == []


def test_keyboard_interrupt_never_reaches_the_fallback() -> None:
    fallback = Recorder()

    @meshlib.resilient(on=Exception, fallback=fallback)
    def interrupted() -> list[str]:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        interrupted()
    assert fallback.given == []


def test_cancellation_never_reaches_a_transport_fallback(server: FaultServer) -> None:
    policy = meshlib.Policy(fallback=meshlib.Fallback(status=503))
    server.enqueue(Hang(5.0))

    async def go() -> None:
        async with meshlib.wrap(httpx.AsyncClient(), meshlib.Mesh(policy)) as client:
            task = asyncio.ensure_future(client.get(server.url + "/recs"))
            await until_sent(server)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

    asyncio.run(go())


def test_an_error_in_the_fallback_is_chained_to_the_original(mode: str) -> None:
    def fails_too(exc: Exception) -> list[str]:
        raise LookupError("no popular ones either")

    original = ConnectionError("recommendations are down")
    policy = meshlib.Policy(retry=None)
    if mode == "sync":

        @meshlib.resilient(on=ConnectionError, policy=policy, fallback=fails_too)
        def fetch() -> list[str]:
            raise original

        with pytest.raises(LookupError) as caught:
            fetch()
    else:

        @meshlib.resilient(on=ConnectionError, policy=policy, fallback=fails_too)
        async def afetch() -> list[str]:
            raise original

        with pytest.raises(LookupError) as caught:
            asyncio.run(afetch())
    assert caught.value.__cause__ is original
    assert caught.value.__context__ is original


def test_a_fallback_that_re_raises_the_original_raises_it_unchanged() -> None:
    def give_up(exc: Exception) -> list[str]:
        raise exc

    original = ConnectionError("down")

    @meshlib.resilient(on=ConnectionError, policy=meshlib.Policy(retry=None), fallback=give_up)
    def fetch() -> list[str]:
        raise original

    with pytest.raises(ConnectionError) as caught:
        fetch()
    assert caught.value is original
    assert caught.value.__cause__ is None


def test_an_async_function_takes_an_async_fallback() -> None:
    async def later(exc: Exception) -> list[str]:
        await asyncio.sleep(0)
        return [f"after {type(exc).__name__}"]

    @meshlib.resilient(on=ConnectionError, policy=meshlib.Policy(retry=None), fallback=later)
    async def fetch() -> list[str]:
        raise ConnectionError

    assert asyncio.run(fetch()) == ["after ConnectionError"]


def test_an_async_fallback_on_a_sync_function_is_refused() -> None:
    async def later(exc: Exception) -> list[str]:
        return []

    decorate = meshlib.resilient(on=ConnectionError, fallback=later)
    with pytest.raises(meshlib.ConfigError, match=r"resilient\.fallback: .*later is async"):

        @decorate  # type: ignore[arg-type]
        def fetch() -> list[str]:
            return []


def test_a_fallback_that_is_not_callable_is_refused() -> None:
    with pytest.raises(meshlib.ConfigError, match=r"resilient\.fallback: expected a callable"):
        meshlib.resilient(on=ConnectionError, fallback=[])  # type: ignore[call-overload]


def test_without_a_fallback_the_error_propagates_unchanged() -> None:
    original = ConnectionError("down")

    @meshlib.resilient(on=ConnectionError, policy=meshlib.Policy(retry=None))
    def fetch() -> list[str]:
        raise original

    with pytest.raises(ConnectionError) as caught:
        fetch()
    assert caught.value is original


def test_the_decorated_function_keeps_its_name_and_signature() -> None:
    @meshlib.resilient(on=ConnectionError, fallback=lambda exc: None)
    def fetch(product: str, limit: int = 5) -> None:
        """Fetch recommendations."""

    assert fetch.__name__ == "fetch"
    assert fetch.__doc__ == "Fetch recommendations."
    assert fetch.__defaults__ == (5,)


# -- telemetry --------------------------------------------------------------------------------


class Otel:
    def __init__(self) -> None:
        self.exporter = InMemorySpanExporter()
        self.tracer_provider = TracerProvider()
        self.tracer_provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.reader = InMemoryMetricReader()
        self.meter_provider = MeterProvider(metric_readers=[self.reader])
        self.tracing = meshlib.Tracing(
            tracer_provider=self.tracer_provider, meter_provider=self.meter_provider
        )

    def points(self, name: str) -> list[Any]:
        data = self.reader.get_metrics_data()
        found: list[Any] = []
        for resource in data.resource_metrics if data else []:
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    if metric.name == name:
                        found.extend(metric.data.data_points)
        return found


@pytest.fixture
def otel() -> Iterator[Otel]:
    telemetry = Otel()
    yield telemetry
    telemetry.tracer_provider.shutdown()
    telemetry.meter_provider.shutdown()


def test_a_transport_fallback_is_an_event_on_the_callers_span_and_a_counter(
    mode: str, server: FaultServer, otel: Otel
) -> None:
    retry = meshlib.Retry(attempts=2, backoff=NO_WAIT, budget=None)
    policy = meshlib.Policy(
        retry=retry, tracing=otel.tracing, fallback=meshlib.Fallback(stale=60, status=503)
    )
    mesh = meshlib.Mesh(policy)
    url = server.url + "/recs"
    server.enqueue(Respond(503), Respond(503))
    tracer = otel.tracer_provider.get_tracer("shop")
    with tracer.start_as_current_span("product page"):
        if mode == "sync":
            with meshlib.wrap(httpx.Client(), mesh) as client:
                answer = client.get(url)
        else:

            async def go() -> httpx.Response:
                async with meshlib.wrap(httpx.AsyncClient(), mesh) as client:
                    return await client.get(url)

            answer = asyncio.run(go())
    assert answer.headers["x-meshlib-fallback"] == "static"
    spans = otel.exporter.get_finished_spans()
    attempts = [s for s in spans if s.kind == SpanKind.CLIENT]
    assert len(attempts) == 2
    assert all(s.status.status_code == StatusCode.ERROR for s in attempts)
    assert all(s.attributes is not None and s.attributes["error.type"] == "503" for s in attempts)
    (page,) = [s for s in spans if s.name == "product page"]
    (event,) = [e for e in page.events if e.name == "meshlib.fallback"]
    assert event.attributes is not None
    assert event.attributes["meshlib.reason"] == "status"
    assert event.attributes["meshlib.fallback"] == "static"
    assert event.attributes["server.port"] == server.port
    (point,) = otel.points("meshlib.client.fallbacks")
    assert point.value == 1
    assert point.attributes == {
        "server.address": "127.0.0.1",
        "server.port": server.port,
        "meshlib.reason": "status",
        "meshlib.fallback": "static",
    }


def test_a_function_fallback_is_an_event_on_the_callers_span_and_a_counter(otel: Otel) -> None:
    policy = meshlib.Policy(retry=None, tracing=otel.tracing)

    def nothing(exc: Exception) -> list[str]:
        return []

    @meshlib.resilient(on=ConnectionError, policy=policy, key="recs", fallback=nothing)
    def fetch() -> list[str]:
        raise ConnectionError

    tracer = otel.tracer_provider.get_tracer("shop")
    with tracer.start_as_current_span("product page"):
        assert fetch() == []
    spans = otel.exporter.get_finished_spans()
    (call,) = [s for s in spans if s.name == "recs"]
    assert call.status.status_code == StatusCode.ERROR  # the call's own span keeps its error
    (page,) = [s for s in spans if s.name == "product page"]
    (event,) = [e for e in page.events if e.name == "meshlib.fallback"]
    assert event.attributes is not None
    assert (event.attributes["meshlib.reason"], event.attributes["meshlib.fallback"]) == (
        "error",
        "function",
    )
    (point,) = otel.points("meshlib.client.fallbacks")
    assert point.attributes == {
        "code.function.name": "recs",
        "meshlib.reason": "error",
        "meshlib.fallback": "function",
    }


def test_keyboard_interrupt_never_reaches_a_transport_fallback() -> None:
    def interrupted(request: httpx.Request) -> httpx.Response:
        raise KeyboardInterrupt

    policy = meshlib.Policy(fallback=meshlib.Fallback(status=503))
    transport = meshlib.Transport(httpx.MockTransport(interrupted), meshlib.Mesh(policy))
    with pytest.raises(KeyboardInterrupt):
        transport.handle_request(httpx.Request("GET", "http://recs.internal/products/42"))
