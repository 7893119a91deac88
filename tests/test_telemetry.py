"""Spans, metrics and context propagation with the real OpenTelemetry SDK."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from opentelemetry import trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

import meshlib
from meshlib._telemetry import redact_url

from .helpers import URL, Script, send

pytestmark = pytest.mark.usefixtures("rng", "no_waits")


class Telemetry:
    """An SDK tracer and meter with in-memory exporters, and a policy that uses them."""

    def __init__(self, **tracing: Any) -> None:
        self.exporter = InMemorySpanExporter()
        self.tracer_provider = TracerProvider()
        self.tracer_provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.reader = InMemoryMetricReader()
        self.meter_provider = MeterProvider(metric_readers=[self.reader])
        self.tracing = meshlib.Tracing(
            tracer_provider=self.tracer_provider, meter_provider=self.meter_provider, **tracing
        )
        self.policy = meshlib.Policy(
            retry=meshlib.Retry(attempts=3, budget=None), tracing=self.tracing
        )

    def spans(self, kind: SpanKind | None = SpanKind.CLIENT) -> list[ReadableSpan]:
        return [s for s in self.exporter.get_finished_spans() if kind is None or s.kind == kind]

    def metric(self, name: str) -> list[Any]:
        data = self.reader.get_metrics_data()
        points: list[Any] = []
        for resource in data.resource_metrics if data else []:
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    if metric.name == name:
                        points.extend(metric.data.data_points)
        return points


@pytest.fixture
def otel() -> Iterator[Telemetry]:
    telemetry = Telemetry()
    yield telemetry
    telemetry.tracer_provider.shutdown()
    telemetry.meter_provider.shutdown()


@pytest.fixture(params=["sync", "async"])
def mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def test_one_client_span_per_attempt_as_siblings(mode: str, otel: Telemetry) -> None:
    script = Script(503, httpx.ConnectError("refused"))
    tracer = otel.tracer_provider.get_tracer("app")
    with tracer.start_as_current_span("checkout") as caller:
        assert send(mode, script, otel.policy).status_code == 200
    spans = otel.spans()
    assert [s.name for s in spans] == ["GET", "GET", "GET"]
    caller_id = caller.get_span_context().span_id
    assert all(s.parent is not None and s.parent.span_id == caller_id for s in spans)
    assert {s.context.trace_id for s in spans} == {caller.get_span_context().trace_id}
    first, second, third = spans
    assert first.attributes["http.response.status_code"] == 503
    assert first.attributes["error.type"] == "503"
    assert first.status.status_code is StatusCode.ERROR
    assert "http.request.resend_count" not in first.attributes
    assert second.attributes["error.type"] == "httpx.ConnectError"
    assert second.attributes["http.request.resend_count"] == 1
    assert third.attributes["http.request.resend_count"] == 2
    assert third.attributes["http.response.status_code"] == 200
    assert third.status.status_code is StatusCode.UNSET
    assert third.attributes["http.request.method"] == "GET"
    assert third.attributes["server.address"] == "orders.internal"
    assert third.attributes["server.port"] == 80
    assert third.attributes["url.full"] == URL


def test_each_attempt_carries_its_own_span_id(mode: str, otel: Telemetry) -> None:
    parents: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        # Read at send time: the request object is the same for every attempt.
        parents.append(request.headers["traceparent"].split("-")[2])
        return httpx.Response(503 if len(parents) == 1 else 200)

    send(mode, handler, otel.policy)
    ids = [format(s.context.span_id, "016x") for s in otel.spans()]
    assert parents == ids
    assert len(set(parents)) == 2


def test_unknown_methods_are_other(otel: Telemetry) -> None:
    send("sync", Script(), otel.policy, method="PURGE")
    (span,) = otel.spans()
    assert span.name == "HTTP"
    assert span.attributes["http.request.method"] == "_OTHER"
    assert span.attributes["http.request.method_original"] == "PURGE"


def test_secrets_never_reach_spans() -> None:
    otel = Telemetry(capture_headers=("x-request-id", "authorization", "cookie", "set-cookie"))
    script = Script(httpx.Response(200, headers={"set-cookie": "sid=1", "x-request-id": "r2"}))
    url = "http://alice:s3cret@orders.internal/pay?sig=abc&Token=t&page=2&X-Amz-Signature=z"
    send(
        "sync",
        script,
        otel.policy,
        url=url,
        headers={"authorization": "Bearer t0k", "cookie": "sid=1", "x-request-id": "r1"},
    )
    (span,) = otel.spans()
    full = span.attributes["url.full"]
    assert "alice" not in full
    assert "s3cret" not in full
    assert "abc" not in full
    assert "=t&" not in full
    assert "REDACTED:REDACTED@orders.internal" in full
    assert "page=2" in full
    recorded = {k: v for k, v in span.attributes.items() if k.startswith("http.")}
    assert recorded["http.request.header.x-request-id"] == ("r1",)
    assert recorded["http.response.header.x-request-id"] == ("r2",)
    assert not [k for k in recorded if "authorization" in k or "cookie" in k]


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://user:pw@h/p?q=1", "https://REDACTED:REDACTED@h/p?q=1"),
        ("https://h/p?password=x&b=2", "https://h/p?password=REDACTED&b=2"),
        ("https://h/p?PASSWORD=x", "https://h/p?PASSWORD=REDACTED"),
        ("https://h/p", "https://h/p"),
        ("https://h/p?flag", "https://h/p?flag"),
    ],
)
def test_redact_url(url: str, expected: str) -> None:
    assert redact_url(httpx.URL(url), frozenset({"password"})) == expected


@pytest.mark.parametrize(
    ("url", "propagate_to", "expected"),
    [
        ("http://orders.internal/", ("mesh",), True),
        ("https://api.example.com/", ("mesh",), False),
        ("https://api.partner.example/", ("mesh", "*.partner.example"), True),
        ("http://10.2.3.4/", ("10.0.0.0/8",), True),
        ("http://11.2.3.4/", ("10.0.0.0/8",), False),
        ("http://orders.internal/", (), False),
    ],
)
def test_context_goes_only_where_allowed(
    url: str, propagate_to: tuple[str, ...], expected: bool
) -> None:
    otel = Telemetry(propagate_to=propagate_to)
    script = Script()
    with otel.tracer_provider.get_tracer("app").start_as_current_span("caller"):
        send("sync", script, otel.policy, url=url)
    headers = script.requests[0].headers
    assert ("traceparent" in headers) is expected
    # The deadline header follows the same rule.
    assert ("x-envoy-expected-rq-timeout-ms" in headers) is expected


def test_metrics_per_attempt_and_retries(mode: str, otel: Telemetry) -> None:
    send(mode, Script(503), otel.policy)
    durations = otel.metric("http.client.request.duration")
    assert sum(p.count for p in durations) == 2
    statuses = sorted(p.attributes["http.response.status_code"] for p in durations)
    assert statuses == [200, 503]
    assert all(p.attributes["server.address"] == "orders.internal" for p in durations)
    (retries,) = otel.metric("meshlib.client.retries")
    assert retries.value == 1
    # The same host and port attributes as the histogram (docs/telemetry.md), not a URL.
    assert dict(retries.attributes) == {
        "server.address": "orders.internal",
        "server.port": 80,
        "meshlib.cause": "503",
    }


def test_rejections_are_events_and_metrics_not_client_spans(otel: Telemetry) -> None:
    policy = otel.policy.replace(retry=None, breaker=meshlib.Breaker(consecutive=1, open_for=60.0))
    tracer = otel.tracer_provider.get_tracer("app")
    script = Script(503)
    with tracer.start_as_current_span("caller"):
        send("sync", script, policy)
        with pytest.raises(meshlib.CircuitOpen):
            send("sync", script, policy)
    assert len(otel.spans()) == 1  # only the attempt actually sent
    (caller,) = otel.spans(SpanKind.INTERNAL)
    (event,) = caller.events
    assert event.name == "meshlib.rejected"
    assert event.attributes["meshlib.reason"] == "circuit_open"
    (rejected,) = otel.metric("meshlib.client.rejections")
    assert dict(rejected.attributes) == {
        "server.address": "orders.internal",
        "server.port": 80,
        "meshlib.reason": "circuit_open",
        "error.type": "circuit_open",
    }
    assert rejected.value == 1


def test_a_spent_budget_is_an_event_on_the_caller(otel: Telemetry) -> None:
    stingy = otel.policy.replace(
        retry=meshlib.Retry(budget=meshlib.Budget(ratio=0, min_per_second=0)), breaker=None
    )
    with otel.tracer_provider.get_tracer("app").start_as_current_span("caller"):
        send("sync", Script(503), stingy)
    (caller,) = otel.spans(SpanKind.INTERNAL)
    assert [e.attributes["meshlib.reason"] for e in caller.events] == ["budget"]


def test_a_deadline_cut_off_is_an_event_on_the_caller(otel: Telemetry) -> None:
    caller_span = otel.tracer_provider.get_tracer("app").start_as_current_span("caller")
    with caller_span, meshlib.deadline(0), pytest.raises(meshlib.DeadlineExceeded):
        send("sync", Script(), otel.policy)
    (caller,) = otel.spans(SpanKind.INTERNAL)
    assert [e.attributes["meshlib.reason"] for e in caller.events] == ["deadline"]
    assert otel.spans() == []


def test_a_cancelled_attempt_still_ends_its_span(otel: Telemetry) -> None:
    async def go() -> None:
        sent = asyncio.Event()

        async def handler(request: httpx.Request) -> httpx.Response:
            sent.set()
            await asyncio.sleep(3600)
            raise AssertionError("unreachable")

        transport = httpx.MockTransport(handler)
        async with meshlib.wrap(httpx.AsyncClient(transport=transport), otel.policy) as client:
            task = asyncio.ensure_future(client.get(URL))
            await asyncio.wait_for(sent.wait(), 30)  # the attempt is under way
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

    asyncio.run(go())
    (span,) = otel.spans()
    assert span.end_time is not None
    assert span.attributes["error.type"] == "asyncio.exceptions.CancelledError"


def test_no_sdk_means_no_spans_and_no_trace_headers() -> None:
    # The global providers are the API's proxies here: nothing records, nothing is injected.
    assert not isinstance(trace.get_tracer_provider(), TracerProvider)
    script = Script()
    send("sync", script, meshlib.STANDARD)
    assert "traceparent" not in script.requests[0].headers


def test_tracing_none_sends_no_context(otel: Telemetry) -> None:
    script = Script()
    with otel.tracer_provider.get_tracer("app").start_as_current_span("caller"):
        send("sync", script, otel.policy.replace(tracing=None))
    assert "traceparent" not in script.requests[0].headers
    assert otel.spans() == []


def test_resilient_gets_an_internal_span(otel: Telemetry) -> None:
    calls = 0

    @meshlib.resilient(on=ConnectionError, policy=otel.policy, key="ledger.post")
    def post() -> str:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ConnectionError("flaky")
        return "ok"

    assert post() == "ok"
    (span,) = otel.spans(SpanKind.INTERNAL)
    assert span.name == "ledger.post"


@pytest.mark.parametrize(
    "bad",
    [
        {"propagate_to": "mesh"},
        {"propagate_to": ("",)},
        {"capture_headers": ("bad header",)},
        {"redact_query": "token"},
    ],
)
def test_tracing_validation(bad: dict[str, Any]) -> None:
    with pytest.raises(meshlib.ConfigError, match=r"Tracing\."):
        meshlib.Tracing(**bad)


def test_tracestate_and_baggage_travel_with_the_default_propagator(otel: Telemetry) -> None:
    from opentelemetry import baggage
    from opentelemetry import context as otel_context
    from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags, TraceState

    parent = SpanContext(
        trace_id=0x1234,
        span_id=0x5678,
        is_remote=True,
        trace_flags=TraceFlags(TraceFlags.SAMPLED),
        trace_state=TraceState([("vendor", "v1")]),
    )
    ctx = baggage.set_baggage("tenant", "acme", trace.set_span_in_context(NonRecordingSpan(parent)))
    token = otel_context.attach(ctx)
    try:
        script = Script()
        send("sync", script, otel.policy)
    finally:
        otel_context.detach(token)
    headers = script.requests[0].headers
    (span,) = otel.spans()
    assert headers["traceparent"] == f"00-{0x1234:032x}-{span.context.span_id:016x}-01"
    assert headers["tracestate"] == "vendor=v1"
    assert headers["baggage"] == "tenant=acme"


def test_an_installed_propagator_is_used_as_it_is(otel: Telemetry) -> None:
    from opentelemetry import propagate
    from opentelemetry.propagators.textmap import TextMapPropagator

    class Vendor(TextMapPropagator):
        def inject(self, carrier, context=None, setter=None):  # type: ignore[no-untyped-def]
            span = trace.get_current_span(context)
            carrier["x-vendor-trace"] = format(span.get_span_context().span_id, "016x")

        def extract(self, carrier, context=None, getter=None):  # type: ignore[no-untyped-def]
            return context

        @property
        def fields(self) -> set[str]:
            return {"x-vendor-trace"}

    previous = propagate.get_global_textmap()
    propagate.set_global_textmap(Vendor())
    try:
        script = Script()
        send("sync", script, otel.policy)
    finally:
        propagate.set_global_textmap(previous)
    headers = script.requests[0].headers
    (span,) = otel.spans()
    assert headers["x-vendor-trace"] == format(span.context.span_id, "016x")
    assert "traceparent" not in headers


def test_the_inner_transport_runs_under_the_callers_span_with_instrumentation_suppressed(
    mode: str, otel: Telemetry
) -> None:
    import opentelemetry.instrumentation.httpx  # noqa: F401 - what makes meshlib suppress it
    from opentelemetry.context import _SUPPRESS_HTTP_INSTRUMENTATION_KEY, get_value

    seen: list[tuple[trace.Span, object]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append((trace.get_current_span(), get_value(_SUPPRESS_HTTP_INSTRUMENTATION_KEY)))
        return httpx.Response(503 if len(seen) == 1 else 200)

    tracer = otel.tracer_provider.get_tracer("app")
    for caller_name in ("first", "second"):  # a new caller context each time
        with tracer.start_as_current_span(caller_name) as caller:
            send(mode, handler, otel.policy)
        assert [span for span, _ in seen] == [caller, caller]
        assert [suppressed for _, suppressed in seen] == [True, True]
        seen.clear()
    # Outside the call, nothing is left suppressed.
    assert get_value(_SUPPRESS_HTTP_INSTRUMENTATION_KEY) is None
