"""What the mesh did, told three ways: spans, metrics and log lines.

- **Spans**: one OpenTelemetry CLIENT span per attempt actually sent,
  following the stable HTTP client semantic conventions; rejections (open
  breaker, full bulkhead, spent budget, deadline) are events on the caller's
  span, since nothing was sent.
- **Metrics**: ``http.client.request.duration`` per attempt, and meshlib's
  counters for retries, rejections and breaker transitions, plus a gauge of
  each breaker's state.
- **Logs**: the stdlib logger ``meshlib``, one line with ``meshlib_*`` extras
  per retry, give-up, rejection and breaker transition; silent on success.

OpenTelemetry's API only: with no SDK configured, spans and metrics are
skipped after one cheap check per call, and no trace context is injected.

Near 600 lines because spans, metrics and log lines share one decision per
call (is anything recording?) and one redaction; split, each would repeat them.
"""

from __future__ import annotations

import logging
import sys
import threading
import weakref
from collections.abc import Callable, Iterable, Mapping
from contextvars import Token
from typing import Any
from urllib.parse import quote, unquote

import httpx
from opentelemetry import baggage, metrics, propagate, trace
from opentelemetry import context as otel_context
from opentelemetry.baggage.propagation import W3CBaggagePropagator
from opentelemetry.context import Context
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.propagators.textmap import Setter
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from ._compat import (
    BAGGAGE_KEY,
    SUPPRESS_HTTP_KEY,
    composite_parts,
    global_meter_provider,
    global_tracer_provider,
    otel_sdk_set,
    uri_reference,
)
from ._headers import put_header, set_header
from ._policy import Tracing

__all__ = [
    "AttemptSpan",
    "Telemetry",
    "Reporter",
    "function_span",
    "log_breaker",
    "logger",
    "redact_url",
    "telemetry_for",
    "watch_breakers",
]

logger = logging.getLogger("meshlib")
# A library leaves output to the application: without this, Python's last-resort
# handler would print meshlib's warnings to stderr when logging is not configured.
logger.addHandler(logging.NullHandler())

_VERSION = "0.1.0.dev0"
_SCHEMA = "https://opentelemetry.io/schemas/1.26.0"
_KNOWN_METHODS = frozenset(
    {"CONNECT", "DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT", "TRACE"}
)
_MISSING = object()
# opentelemetry-instrumentation-httpx honours SUPPRESS_HTTP_KEY: set around
# meshlib's own attempt spans so an instrumented inner transport adds no twin.
_HTTPX_INSTRUMENTATION = "opentelemetry.instrumentation.httpx"


def _is_noop(provider: Any) -> bool:
    return provider is None or type(provider).__name__.startswith("NoOp")


def redact_url(url: httpx.URL, sensitive: frozenset[str]) -> str:
    """Return `url` without credentials or sensitive query values.

    Userinfo becomes ``REDACTED:REDACTED``; the value of each query parameter
    named in `sensitive` (any case) becomes ``REDACTED``.
    """
    # httpx's parsed form: cheaper than the encoded properties, on every attempt.
    parsed = uri_reference(url)
    if parsed.userinfo:
        url = url.copy_with(username="REDACTED", password="REDACTED")
    query = parsed.query
    if query and sensitive:
        parts = []
        for part in query.split("&"):
            name, sep, _ = part.partition("=")
            if sep and unquote(name).lower() in sensitive:
                part = f"{name}=REDACTED"
            parts.append(part)
        url = url.copy_with(query=quote("&".join(parts), safe="=&%+/:@!$'()*,;?").encode())
    return str(url)


class _Instruments:
    __slots__ = ("duration", "rejections", "retries")

    def __init__(self, meter: metrics.Meter) -> None:
        self.duration = meter.create_histogram(
            "http.client.request.duration",
            unit="s",
            description="Duration of HTTP client requests (one per attempt).",
            explicit_bucket_boundaries_advisory=[
                0.005,
                0.01,
                0.025,
                0.05,
                0.075,
                0.1,
                0.25,
                0.5,
                0.75,
                1,
                2.5,
                5,
                7.5,
                10,
            ],
        )
        self.retries = meter.create_counter(
            "meshlib.client.retries", unit="{retry}", description="Attempts meshlib resent."
        )
        self.rejections = meter.create_counter(
            "meshlib.client.rejections",
            unit="{call}",
            description="Calls meshlib ended without sending, by reason.",
        )


def _always() -> bool:
    return True


class Telemetry:
    """Spans and metrics for one `Tracing` value; shared by every route that uses it."""

    __slots__ = (
        "_explicit",
        "_instruments",
        "_tracer",
        "active",
        "tracing",
    )

    def __init__(self, tracing: Tracing) -> None:
        self.tracing = tracing
        self._explicit = tracing.tracer_provider is not None or tracing.meter_provider is not None
        # Whether a call would record anything: the one check per call without an SDK.
        # A function, not a method: called straight, on every request.
        self.active: Callable[[], bool] = _always if self._explicit else otel_sdk_set
        # (provider seen last, what it gave), swapped whole so that a thread never
        # pairs one provider with another's tracer or instruments.
        self._tracer: tuple[Any, trace.Tracer | None] = (_MISSING, None)
        self._instruments: tuple[Any, _Instruments | None] = (_MISSING, None)
        # The public getters set up a provider named by OTEL_PYTHON_* variables.
        trace.get_tracer_provider()
        metrics.get_meter_provider()

    def tracer(self) -> trace.Tracer | None:
        """Return the tracer to use now, or None when no SDK would record anything."""
        provider = self.tracing.tracer_provider
        if provider is None:
            provider = global_tracer_provider()
        cached = self._tracer
        if provider is not cached[0]:
            cached = self._tracer = (
                provider,
                None
                if _is_noop(provider)
                else provider.get_tracer("meshlib", _VERSION, schema_url=_SCHEMA),
            )
        return cached[1]

    def instruments(self) -> _Instruments | None:
        """Return the metric instruments to use now, or None when no SDK is configured."""
        provider = self.tracing.meter_provider
        if provider is None:
            provider = global_meter_provider()
        cached = self._instruments
        if provider is not cached[0]:
            cached = self._instruments = (
                provider,
                None
                if _is_noop(provider)
                else _Instruments(provider.get_meter("meshlib", _VERSION, schema_url=_SCHEMA)),
            )
        return cached[1]


_telemetries: dict[Tracing, Telemetry] = {}
_telemetries_lock = threading.Lock()


def telemetry_for(tracing: Tracing | None) -> Telemetry | None:
    """Return the shared Telemetry of a Tracing value (None: tracing off)."""
    if tracing is None:
        return None
    with _telemetries_lock:
        found = _telemetries.get(tracing)
        if found is None:
            found = _telemetries[tracing] = Telemetry(tracing)
        return found


class _HeadersSetter(Setter[httpx.Headers]):
    """Lets OpenTelemetry's propagators write into httpx.Headers."""

    def set(self, carrier: httpx.Headers, key: str, value: str) -> None:
        set_header(carrier, key, value)


_SETTER = _HeadersSetter()


# [(the global TextMapPropagator seen last, whether it is the default)], swapped whole.
_default_textmap: list[tuple[Any, bool]] = [(None, False)]


def _is_default_textmap(textmap: Any) -> bool:
    """Return whether `textmap` is the API's default: W3C trace context, then baggage."""
    seen, default = _default_textmap[0]
    if textmap is seen:
        return default
    inner = composite_parts(textmap)
    default = (
        isinstance(textmap, CompositePropagator)
        and isinstance(inner, list | tuple)
        and [type(p) for p in inner] == [TraceContextTextMapPropagator, W3CBaggagePropagator]
    )
    _default_textmap[0] = (textmap, default)
    return default


def _inject(headers: httpx.Headers, span: trace.Span, ctx: Context) -> None:
    """Write the attempt's trace context (`span` under `ctx`) into its headers.

    With the API's default propagator, traceparent is formatted here (the
    generic path costs several microseconds per attempt); any other
    propagator the application installed is used as it is.
    """
    textmap = propagate.get_global_textmap()
    if not _is_default_textmap(textmap):
        propagate.inject(headers, context=trace.set_span_in_context(span, ctx), setter=_SETTER)
        return
    context = span.get_span_context()
    if context.is_valid:
        put_header(
            headers,
            b"traceparent",
            b"00-%032x-%016x-%02x" % (context.trace_id, context.span_id, context.trace_flags),
        )
        if context.trace_state:
            set_header(headers, "tracestate", context.trace_state.to_header())
    if _has_baggage(ctx):
        W3CBaggagePropagator().inject(headers, context=ctx, setter=_SETTER)


def _has_baggage(ctx: Context) -> bool:
    # baggage.get_all copies the entries into a new mapping: a lookup will do.
    if BAGGAGE_KEY is not None:
        return bool(ctx.get(BAGGAGE_KEY))
    return bool(baggage.get_all(ctx))  # pragma: no cover - a future API without the key


# The caller's context last seen, and the same with instrumentation suppressed:
# calls made under one context (the common case) share one suppressed copy.
_suppression: list[tuple[Context, Context]] = []


def _suppressed(ctx: Context) -> Context:
    """Return `ctx` with HTTP instrumentation suppressed."""
    last = _suppression[0] if _suppression else None
    if last is not None and last[0] is ctx:
        return last[1]
    assert SUPPRESS_HTTP_KEY is not None  # callers check
    made = otel_context.set_value(SUPPRESS_HTTP_KEY, True, ctx)
    _suppression[:] = [(ctx, made)]
    return made


class AttemptSpan:
    """One attempt's CLIENT span and duration, started on construction; `end` ends both.

    Starting makes the span the parent of the trace context injected into the
    request (when `propagate_context`) and, when
    opentelemetry-instrumentation-httpx is loaded, suppresses it for the
    inner transport's work, so nothing is traced twice. The span is not made
    the current one: inside the inner transport the caller's span stays current.
    """

    __slots__ = ("attributes", "instruments", "span", "telemetry", "token")

    def __init__(
        self,
        telemetry: Telemetry,
        tracer: trace.Tracer | None,
        request: httpx.Request,
        destination_host: str,
        destination_port: int,
        resend_count: int,
        propagate_context: bool,
        cluster: str | None = None,
    ) -> None:
        self.telemetry = telemetry
        self.instruments = telemetry.instruments()
        method = request.method
        known = method if method in _KNOWN_METHODS else "_OTHER"
        # The duration's attributes; the span's add to a copy.
        self.attributes: dict[str, Any] = {
            "http.request.method": known,
            "server.address": destination_host,
            "server.port": destination_port,
        }
        if cluster is not None:  # a route sent the request to a cluster: name it
            self.attributes["meshlib.cluster"] = cluster
        ctx = otel_context.get_current()
        self.span: trace.Span = trace.INVALID_SPAN
        if tracer is not None:
            attributes = {
                **self.attributes,
                "url.full": redact_url(request.url, telemetry.tracing.redact_query),
            }
            if known == "_OTHER":
                attributes["http.request.method_original"] = method
            if resend_count:
                attributes["http.request.resend_count"] = resend_count
            for name in telemetry.tracing.capture_headers:
                values = request.headers.get_list(name)
                if values:
                    attributes[f"http.request.header.{name}"] = values
            span = self.span = tracer.start_span(
                "HTTP" if known == "_OTHER" else known,
                context=ctx,
                kind=SpanKind.CLIENT,
                attributes=attributes,
            )
            if propagate_context:
                _inject(request.headers, span, ctx)
        self.token: Token[Context] | None = None
        if SUPPRESS_HTTP_KEY is not None and _HTTPX_INSTRUMENTATION in sys.modules:
            # Only an instrumented inner transport reads the context during the call:
            # without one loaded, attaching it would be work for nobody.
            self.token = otel_context.attach(_suppressed(ctx))

    def end(self, outcome: httpx.Response | BaseException, elapsed: float) -> None:
        """End the span (on every path, cancellation included) and record the duration."""
        if self.token is not None:
            otel_context.detach(self.token)
        span = self.span
        attributes = self.attributes
        if isinstance(outcome, httpx.Response):
            status = outcome.status_code
            attributes["http.response.status_code"] = status
            if status < 400:
                span.set_attributes({"http.response.status_code": status})
            else:
                attributes["error.type"] = str(status)
                span.set_attributes(
                    {"http.response.status_code": status, "error.type": str(status)}
                )
                span.set_status(Status(StatusCode.ERROR))
            for name in self.telemetry.tracing.capture_headers:
                values = outcome.headers.get_list(name)
                if values:
                    span.set_attribute(f"http.response.header.{name}", values)
        else:
            kind = type(outcome)
            error_type = f"{kind.__module__}.{kind.__qualname__}"
            attributes["error.type"] = error_type
            span.set_attribute("error.type", error_type)
            span.set_status(Status(StatusCode.ERROR, kind.__name__))
        span.end()
        if self.instruments is not None:
            self.instruments.duration.record(elapsed, attributes)


_STOP_REASONS = {
    "attempts": "attempts used up",
    "budget": "retry budget spent",
    "deadline": "the next wait would end past the deadline",
}


class Reporter:
    """Tells what the mesh did for one destination: log line, metric, caller's span event.

    Attributes:
        label: ``scheme://host:port``, or a `resilient` function's key, for logs.
        attributes: the metric attributes that name the destination, as
            ``http.client.request.duration`` names it (``server.address`` and
            ``server.port``), or ``code.function.name`` for a function.
    """

    __slots__ = ("attributes", "label", "telemetry")

    def __init__(
        self, telemetry: Telemetry | None, label: str, attributes: Mapping[str, Any]
    ) -> None:
        self.telemetry = telemetry
        self.label = label
        self.attributes = dict(attributes)

    def _instruments(self) -> _Instruments | None:
        return self.telemetry.instruments() if self.telemetry is not None else None

    def retry(self, attempt: int, attempts: int, cause: str, wait: float) -> None:
        """Report that attempt `attempt` failed with `cause`; the next starts in `wait` s."""
        logger.info(
            "retrying %s after %s (attempt %d of %d failed); waiting %.3fs",
            self.label,
            cause,
            attempt,
            attempts,
            wait,
            extra={
                "meshlib_event": "retry",
                "meshlib_destination": self.label,
                "meshlib_attempt": attempt,
                "meshlib_cause": cause,
                "meshlib_wait": wait,
            },
        )
        instruments = self._instruments()
        if instruments is not None:
            instruments.retries.add(1, {**self.attributes, "meshlib.cause": cause})

    def stop(self, attempt: int, cause: str, reason: str) -> None:
        """Report that retrying stopped: attempts used up, budget spent or no time left."""
        logger.info(
            "giving up on %s after %s on attempt %d: %s",
            self.label,
            cause,
            attempt,
            _STOP_REASONS.get(reason, reason),
            extra={
                "meshlib_event": "give_up",
                "meshlib_destination": self.label,
                "meshlib_attempt": attempt,
                "meshlib_cause": cause,
                "meshlib_reason": reason,
            },
        )
        if reason in ("budget", "deadline"):
            self._count(f"retry_{reason}")
            self._caller_event("meshlib.retry_stopped", reason)

    def not_replayable(self, cause: str) -> None:
        """Report that a retryable failure was not retried: the body cannot be sent again."""
        logger.debug(
            "not retrying %s after %s: the request body cannot be sent again "
            "(a generator or stream, already consumed); send bytes to make it retryable",
            self.label,
            cause,
            extra={
                "meshlib_event": "not_replayable",
                "meshlib_destination": self.label,
                "meshlib_cause": cause,
            },
        )

    def rejected(self, reason: str) -> None:
        """Report a call ended without sending: circuit_open, bulkhead_full or deadline."""
        logger.info(
            "rejected a call to %s: %s",
            self.label,
            reason.replace("_", " "),
            extra={
                "meshlib_event": "rejected",
                "meshlib_destination": self.label,
                "meshlib_reason": reason,
            },
        )
        self._count(reason)
        self._caller_event("meshlib.rejected", reason)

    def _count(self, reason: str) -> None:
        instruments = self._instruments()
        if instruments is not None:
            instruments.rejections.add(
                1, {**self.attributes, "meshlib.reason": reason, "error.type": reason}
            )

    def _caller_event(self, name: str, reason: str) -> None:
        # Nothing was sent, so there is no CLIENT span: the caller's span says why.
        span = trace.get_current_span()
        if span.is_recording():
            span.add_event(
                name,
                {
                    **self.attributes,
                    "meshlib.destination": self.label,
                    "meshlib.reason": reason,
                    "error.type": reason,
                },
            )


def log_breaker(destination: str, old: str, new: str) -> None:
    """Report a breaker's transition (a warning when it opens, info otherwise)."""
    logger.log(
        logging.WARNING if new == "open" else logging.INFO,
        "circuit breaker for %s: %s -> %s",
        destination,
        old,
        new,
        extra={
            "meshlib_event": "breaker",
            "meshlib_destination": destination,
            "meshlib_from": old,
            "meshlib_to": new,
        },
    )
    _breaker_transitions().add(
        1, {"meshlib.destination": destination, "meshlib.from": old, "meshlib.to": new}
    )


# Breaker metrics go through the global MeterProvider: a breaker belongs to a
# destination, not to one client's Tracing value.
_BREAKER_STATES = {"closed": 0, "half_open": 1, "open": 2}
_breaker_sources: weakref.WeakSet[Any] = weakref.WeakSet()
_breaker_meter_state: dict[str, Any] = {}
_breaker_meter_lock = threading.Lock()


def watch_breakers(source: Any) -> None:
    """Report `source.breakers()` snapshots in the ``meshlib.breaker.state`` gauge."""
    _breaker_sources.add(source)
    _breaker_transitions()  # registers the gauge with the global meter, once


def _breaker_transitions() -> Any:
    # The API's global meter delegates to whichever SDK is installed, now or later.
    counter = _breaker_meter_state.get("transitions")
    if counter is not None:
        return counter
    with _breaker_meter_lock:  # two Meshes built at once must not register the gauge twice
        counter = _breaker_meter_state.get("transitions")
        if counter is None:
            meter = metrics.get_meter("meshlib", _VERSION, schema_url=_SCHEMA)
            counter = _breaker_meter_state["transitions"] = meter.create_counter(
                "meshlib.breaker.transitions",
                unit="{transition}",
                description="Circuit breaker state changes.",
            )
            meter.create_observable_gauge(
                "meshlib.breaker.state",
                callbacks=[_observe_breakers],
                unit="{state}",
                description="Each breaker's state: 0 closed, 1 half-open, 2 open.",
            )
        return counter


def _observe_breakers(options: Any) -> Iterable[metrics.Observation]:
    for source in list(_breaker_sources):
        for snapshot in source.breakers():
            yield metrics.Observation(
                _BREAKER_STATES.get(snapshot.state, 0),
                {"meshlib.destination": snapshot.destination},
            )


def function_span(telemetry: Telemetry | None, key: str) -> Any:
    """Return a context manager for a `resilient` call's INTERNAL span, or None (no SDK)."""
    tracer = telemetry.tracer() if telemetry is not None else None
    if tracer is None:
        return None
    return tracer.start_as_current_span(
        key, kind=SpanKind.INTERNAL, attributes={"code.function.name": key}
    )
