"""meshlib together with opentelemetry-instrumentation-httpx: no duplicate spans.

meshlib starts one CLIENT span per attempt and, around each attempt, sets
OpenTelemetry's suppress-HTTP-instrumentation context key. The httpx
instrumentation checks that key first and, when it is set, calls the transport
it wraps and records nothing: no span, no metric, no trace context injected.
So wherever the instrumentation sits *inside* meshlib (which is where it sits
when it is switched on globally with ``HTTPXClientInstrumentor().instrument()``,
when ``instrument_client`` runs before ``meshlib.wrap``, or when an
``OpenTelemetryTransport`` is the transport meshlib wraps), a retried call
yields exactly one CLIENT span per attempt, all meshlib's, siblings under the
caller's span.

``instrument_client`` *after* ``meshlib.wrap`` is different: it wraps the
client's current transport, which is then meshlib's, from the outside. The
instrumentation runs before meshlib, with nothing suppressed, and opens one
CLIENT span for the whole logical call (its attributes in whichever
semantic-convention mode the instrumentation is configured for; its status is
that of the response the caller got). meshlib's per-attempt CLIENT spans become
that span's children. Nothing is duplicated per attempt, but there is one more
span per call, and since the instrumentation injects trace context before
meshlib runs, a destination that ``Tracing.propagate_to`` excludes still
receives the outer span's ``traceparent``: meshlib cannot undo what is done
outside it. docs/telemetry.md recommends instrumenting first (or globally).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest
from opentelemetry.instrumentation.httpx import (
    AsyncOpenTelemetryTransport,
    HTTPXClientInstrumentor,
    SyncOpenTelemetryTransport,
)
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Span, SpanContext, SpanKind

import meshlib
from meshlib.testing import FaultServer, Respond

pytestmark = [pytest.mark.network, pytest.mark.usefixtures("rng", "no_waits")]

INSTRUMENTATION = "opentelemetry.instrumentation.httpx"


class Otel:
    """SDK providers with in-memory exporters, shared by meshlib and the instrumentation."""

    def __init__(self, propagate_to: tuple[str, ...] = ("mesh",)) -> None:
        self.exporter = InMemorySpanExporter()
        self.tracer_provider = TracerProvider()
        self.tracer_provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.reader = InMemoryMetricReader()
        self.meter_provider = MeterProvider(metric_readers=[self.reader])
        self.policy = meshlib.Policy(
            retry=meshlib.Retry(attempts=3, budget=None),
            timeout=meshlib.Timeout(total=5.0, attempt=2.0),
            tracing=meshlib.Tracing(
                propagate_to=propagate_to,
                tracer_provider=self.tracer_provider,
                meter_provider=self.meter_provider,
            ),
        )

    def client_spans(self) -> list[ReadableSpan]:
        spans = [s for s in self.exporter.get_finished_spans() if s.kind is SpanKind.CLIENT]
        return sorted(spans, key=lambda s: s.start_time or 0)

    def metric_scopes(self) -> dict[str, set[str]]:
        """Return, per instrumentation scope, the names of the metrics it recorded."""
        data = self.reader.get_metrics_data()
        scopes: dict[str, set[str]] = {}
        for resource in data.resource_metrics if data else []:
            for scope in resource.scope_metrics:
                names = {m.name for m in scope.metrics if m.data.data_points}
                if names:
                    scopes.setdefault(scope.scope.name, set()).update(names)
        return scopes

    def close(self) -> None:
        self.tracer_provider.shutdown()
        self.meter_provider.shutdown()


@pytest.fixture
def otel() -> Iterator[Otel]:
    made = Otel()
    yield made
    made.close()


@pytest.fixture(params=["sync", "async"])
def mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def _sync_client(otel: Otel, server: FaultServer, how: str) -> httpx.Client:
    if how == "transport":
        inner = SyncOpenTelemetryTransport(
            httpx.HTTPTransport(),
            tracer_provider=otel.tracer_provider,
            meter_provider=otel.meter_provider,
        )
        client = httpx.Client(base_url=server.url, transport=inner)
    else:
        client = httpx.Client(base_url=server.url)
    if how == "instrument_client":
        _instrument_client(otel, client)
    meshlib.wrap(client, otel.policy)
    if how == "instrument_client_after_wrap":
        _instrument_client(otel, client)
    return client


def _async_client(otel: Otel, server: FaultServer, how: str) -> httpx.AsyncClient:
    if how == "transport":
        inner = AsyncOpenTelemetryTransport(
            httpx.AsyncHTTPTransport(),
            tracer_provider=otel.tracer_provider,
            meter_provider=otel.meter_provider,
        )
        client = httpx.AsyncClient(base_url=server.url, transport=inner)
    else:
        client = httpx.AsyncClient(base_url=server.url)
    if how == "instrument_client":
        _instrument_client(otel, client)
    meshlib.wrap(client, otel.policy)
    if how == "instrument_client_after_wrap":
        _instrument_client(otel, client)
    return client


def _instrument_client(otel: Otel, client: httpx.Client | httpx.AsyncClient) -> None:
    HTTPXClientInstrumentor().instrument_client(
        client, tracer_provider=otel.tracer_provider, meter_provider=otel.meter_provider
    )


@contextmanager
def _globally(otel: Otel, how: str) -> Iterator[None]:
    """Instrument every httpx transport for the block when `how` says so; always undo it."""
    if how != "instrument":
        yield
        return
    instrumentor = HTTPXClientInstrumentor()
    instrumentor.instrument(
        tracer_provider=otel.tracer_provider, meter_provider=otel.meter_provider
    )
    try:
        yield
    finally:
        instrumentor.uninstrument()


def _call(mode: str, otel: Otel, server: FaultServer, how: str) -> tuple[httpx.Response, Span]:
    """Send one GET (503 then 200) under a caller span, instrumented as `how` says."""
    server.enqueue(Respond(503))  # then the default answer: 200 "ok"
    tracer = otel.tracer_provider.get_tracer("app")
    with _globally(otel, how):
        if mode == "sync":
            client = _sync_client(otel, server, how)
            try:
                with tracer.start_as_current_span("checkout") as caller:
                    response = client.get("/orders")
            finally:
                if how.startswith("instrument_client"):
                    HTTPXClientInstrumentor.uninstrument_client(client)
                client.close()
            return response, caller

        async def go() -> tuple[httpx.Response, Span]:
            client = _async_client(otel, server, how)
            try:
                with tracer.start_as_current_span("checkout") as caller:
                    response = await client.get("/orders")
            finally:
                if how.startswith("instrument_client"):
                    HTTPXClientInstrumentor.uninstrument_client(client)
                await client.aclose()
            return response, caller

        return asyncio.run(go())


def _span_id(span: Any) -> str:
    """A span's (or a SpanContext's) id as it appears in traceparent."""
    context = span if isinstance(span, SpanContext) else span.get_span_context()
    return format(context.span_id, "016x")


def _scope(span: ReadableSpan) -> str:
    return span.instrumentation_scope.name if span.instrumentation_scope else ""


def _attrs(span: ReadableSpan) -> dict[str, Any]:
    return dict(span.attributes or {})


def _sent_parent_ids(server: FaultServer) -> list[str | None]:
    """The parent span id each request carried in traceparent, None when it had none."""
    found: list[str | None] = []
    for request in server.requests:
        header = request.headers.get("traceparent")
        found.append(None if header is None else header.split("-")[2])
    return found


@pytest.mark.parametrize("how", ["instrument", "instrument_client", "transport"])
def test_instrumentation_inside_meshlib_adds_nothing(
    mode: str, how: str, otel: Otel, server: FaultServer
) -> None:
    """Globally, per client before wrap, or as the inner transport: one span per attempt."""
    response, caller = _call(mode, otel, server, how)
    assert response.status_code == 200
    spans = otel.client_spans()
    assert [_scope(s) for s in spans] == ["meshlib", "meshlib"]
    assert [s.name for s in spans] == ["GET", "GET"]
    assert all(s.parent is not None and _span_id(s.parent) == _span_id(caller) for s in spans)
    assert [_attrs(s)["http.response.status_code"] for s in spans] == [503, 200]
    assert "http.request.resend_count" not in _attrs(spans[0])
    assert _attrs(spans[1])["http.request.resend_count"] == 1
    # The traceparent each attempt carried is meshlib's span for that attempt.
    assert _sent_parent_ids(server) == [_span_id(s) for s in spans]
    # The suppressed instrumentation records no metric either: no double counting.
    assert set(otel.metric_scopes()) == {"meshlib"}


def test_instrumentation_inside_meshlib_respects_propagate_to(
    mode: str, server: FaultServer
) -> None:
    """Suppressed, the instrumentation cannot inject trace context meshlib withholds."""
    otel = Otel(propagate_to=())
    try:
        response, _ = _call(mode, otel, server, "instrument")
    finally:
        otel.close()
    assert response.status_code == 200
    assert len(otel.client_spans()) == 2
    assert _sent_parent_ids(server) == [None, None]
    assert all("tracestate" not in r.headers for r in server.requests)


def test_instrument_client_after_wrap_adds_one_outer_span_per_call(
    mode: str, otel: Otel, server: FaultServer
) -> None:
    """From the outside: one instrumentation span per call, meshlib's attempts under it."""
    response, caller = _call(mode, otel, server, "instrument_client_after_wrap")
    assert response.status_code == 200
    spans = otel.client_spans()
    outer = [s for s in spans if _scope(s) == INSTRUMENTATION]
    attempts = [s for s in spans if _scope(s) == "meshlib"]
    assert len(spans) == 3
    assert len(outer) == 1
    assert len(attempts) == 2
    (call,) = outer
    assert call.parent is not None
    assert _span_id(call.parent) == _span_id(caller)
    # The outer span covers the whole call and ends with the answer the caller got.
    assert call.start_time is not None
    assert call.end_time is not None
    assert all(
        a.start_time is not None
        and a.end_time is not None
        and call.start_time <= a.start_time
        and a.end_time <= call.end_time
        for a in attempts
    )
    status = _attrs(call).get("http.response.status_code", _attrs(call).get("http.status_code"))
    assert status == 200
    # meshlib's spans are still one per attempt, siblings under the outer one.
    assert all(a.parent is not None and _span_id(a.parent) == _span_id(call) for a in attempts)
    assert [_attrs(a)["http.response.status_code"] for a in attempts] == [503, 200]
    assert _attrs(attempts[1])["http.request.resend_count"] == 1
    # meshlib injects after the instrumentation: each attempt still names its own span.
    assert _sent_parent_ids(server) == [_span_id(a) for a in attempts]
    # Both record metrics, each under its own scope.
    assert set(otel.metric_scopes()) == {"meshlib", INSTRUMENTATION}


def test_instrument_client_after_wrap_injects_where_meshlib_would_not(
    mode: str, server: FaultServer
) -> None:
    """From the outside the instrumentation injects first; propagate_to cannot stop it."""
    otel = Otel(propagate_to=())
    try:
        _call(mode, otel, server, "instrument_client_after_wrap")
    finally:
        otel.close()
    (call,) = [s for s in otel.client_spans() if _scope(s) == INSTRUMENTATION]
    assert _sent_parent_ids(server) == [_span_id(call), _span_id(call)]
