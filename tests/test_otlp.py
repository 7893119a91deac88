"""A retried call exported over OTLP/HTTP to a real receiver on 127.0.0.1, decoded.

This is the path a production setup takes: the SDK's BatchSpanProcessor and
PeriodicExportingMetricReader hand meshlib's spans and metrics to the
opentelemetry-exporter-otlp-proto-http exporters, which POST protobuf to a
collector. The receiver here stores the raw bodies and the test decodes them
with the OTLP protobuf messages, so what is asserted is what a collector saw.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
import requests
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

import meshlib
from meshlib.testing import FaultServer, Respond

pytestmark = [pytest.mark.network, pytest.mark.usefixtures("rng", "no_waits")]

_EMPTY_RESPONSES = {
    "/v1/traces": ExportTraceServiceResponse().SerializeToString(),
    "/v1/metrics": ExportMetricsServiceResponse().SerializeToString(),
}


class Receiver:
    """An OTLP/HTTP receiver: stores each POST's raw protobuf body by path."""

    def __init__(self) -> None:
        self.bodies: dict[str, list[bytes]] = {path: [] for path in _EMPTY_RESPONSES}
        self.content_types: set[str] = set()
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # http.server's naming
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                answer = _EMPTY_RESPONSES.get(self.path)
                if answer is None:
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                with receiver.lock:
                    receiver.bodies[self.path].append(body)
                    receiver.content_types.add(self.headers.get("Content-Type", ""))
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # keep test output clean

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def spans(self) -> list[Span]:
        with self.lock:
            bodies = list(self.bodies["/v1/traces"])
        found: list[Span] = []
        for body in bodies:
            request = ExportTraceServiceRequest()
            request.ParseFromString(body)
            for resource_spans in request.resource_spans:
                for scope_spans in resource_spans.scope_spans:
                    found.extend(scope_spans.spans)
        return found

    def metrics(self) -> dict[str, Any]:
        """Return the last exported version of each metric, by name."""
        with self.lock:
            bodies = list(self.bodies["/v1/metrics"])
        found: dict[str, Any] = {}
        for body in bodies:
            request = ExportMetricsServiceRequest()
            request.ParseFromString(body)
            for resource_metrics in request.resource_metrics:
                for scope_metrics in resource_metrics.scope_metrics:
                    for metric in scope_metrics.metrics:
                        found[metric.name] = metric
        return found


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    running = Receiver()
    running.thread.start()
    try:
        yield running
    finally:
        running.server.shutdown()
        running.server.server_close()
        running.thread.join(timeout=2.0)


def _session() -> requests.Session:
    # A proxy named in the environment must not intercept a loopback receiver.
    session = requests.Session()
    session.trust_env = False
    return session


def _attributes(attributes: Any) -> dict[str, Any]:
    """Flatten OTLP KeyValues into plain Python values."""
    values: dict[str, Any] = {}
    for pair in attributes:
        assert isinstance(pair, KeyValue)
        value: AnyValue = pair.value
        kind = value.WhichOneof("value")
        values[pair.key] = getattr(value, kind) if kind is not None else None
    return values


def test_a_retried_call_arrives_over_otlp_http(server: FaultServer, receiver: Receiver) -> None:
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(
        BatchSpanProcessor(
            OTLPSpanExporter(endpoint=f"{receiver.url}/v1/traces", timeout=5, session=_session()),
            schedule_delay_millis=60_000,  # exported by force_flush, not by the timer
        )
    )
    reader = PeriodicExportingMetricReader(
        OTLPMetricExporter(endpoint=f"{receiver.url}/v1/metrics", timeout=5, session=_session()),
        export_interval_millis=60_000,
    )
    meter_provider = MeterProvider(metric_readers=[reader])
    policy = meshlib.Policy(
        retry=meshlib.Retry(attempts=3, budget=None),
        timeout=meshlib.Timeout(total=5.0, attempt=2.0),
        tracing=meshlib.Tracing(tracer_provider=tracer_provider, meter_provider=meter_provider),
    )
    server.enqueue(Respond(503))  # then the default answer: 200 "ok"
    try:
        with (
            meshlib.wrap(httpx.Client(base_url=server.url), policy) as client,
            tracer_provider.get_tracer("app").start_as_current_span("checkout") as caller,
        ):
            response = client.get("/orders?id=7")
        assert response.status_code == 200
        assert tracer_provider.force_flush(5_000)
        assert meter_provider.force_flush(5_000)
    finally:
        tracer_provider.shutdown()
        meter_provider.shutdown()

    assert receiver.content_types == {"application/x-protobuf"}

    # Traces: the caller's span and one CLIENT span per attempt, siblings under it.
    spans = receiver.spans()
    caller_context = caller.get_span_context()
    trace_id = caller_context.trace_id.to_bytes(16, "big")
    caller_id = caller_context.span_id.to_bytes(8, "big")
    assert sorted(s.name for s in spans) == ["GET", "GET", "checkout"]
    assert all(s.trace_id == trace_id for s in spans)
    attempts = sorted(
        (s for s in spans if s.kind == Span.SPAN_KIND_CLIENT), key=lambda s: s.start_time_unix_nano
    )
    assert [s.name for s in attempts] == ["GET", "GET"]
    assert all(s.parent_span_id == caller_id for s in attempts)
    first, second = (_attributes(s.attributes) for s in attempts)
    assert first["http.response.status_code"] == 503
    assert first["error.type"] == "503"
    assert attempts[0].status.code == Status.STATUS_CODE_ERROR
    assert "http.request.resend_count" not in first
    assert second["http.response.status_code"] == 200
    assert second["http.request.resend_count"] == 1
    assert "error.type" not in second
    assert attempts[1].status.code == Status.STATUS_CODE_UNSET
    for attributes in (first, second):
        assert attributes["http.request.method"] == "GET"
        assert attributes["server.address"] == "127.0.0.1"
        assert attributes["server.port"] == server.port
        assert attributes["url.full"] == f"{server.url}/orders?id=7"

    # Each attempt told the server its own span id in traceparent.
    assert server.request_count == 2
    sent = [request.headers["traceparent"].split("-") for request in server.requests]
    assert [parts[1] for parts in sent] == [trace_id.hex(), trace_id.hex()]
    assert [parts[2] for parts in sent] == [s.span_id.hex() for s in attempts]

    # Metrics: two attempts in the duration histogram, one retry counted.
    metrics = receiver.metrics()
    duration = metrics["http.client.request.duration"]
    assert duration.unit == "s"
    points = duration.histogram.data_points
    assert sum(point.count for point in points) == 2
    by_status = {_attributes(p.attributes)["http.response.status_code"]: p for p in points}
    assert set(by_status) == {503, 200}
    assert _attributes(by_status[503].attributes)["error.type"] == "503"
    retries = metrics["meshlib.client.retries"]
    assert sum(point.as_int for point in retries.sum.data_points) == 1
    assert retries.sum.is_monotonic
    (retry,) = (_attributes(point.attributes) for point in retries.sum.data_points)
    assert retry["meshlib.cause"] == "503"
    # server.address is the host, as on the duration histogram (semantic conventions),
    # so the two can be joined; not meshlib's "scheme://host:port" log label.
    assert retry["server.address"] == "127.0.0.1"
