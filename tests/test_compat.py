"""Each private API meshlib leans on (meshlib/_compat.py) still behaves as assumed.

A failure here names the assumption an upgrade of httpx, OpenTelemetry or
Python's ssl broke: fix _compat, not the caller.
"""

from __future__ import annotations

import socket
import ssl
import threading
from typing import Any

import httpcore
import httpx
import pytest
from opentelemetry import baggage, metrics, propagate, trace
from opentelemetry import context as otel_context
from opentelemetry.sdk.trace import TracerProvider

from meshlib import _compat
from meshlib.testing import FaultServer


def test_uri_reference_is_httpx_parsed_url() -> None:
    ref = _compat.uri_reference(httpx.URL("https://u:p@Orders.Internal:8443/a?x=1"))
    assert (ref.scheme, ref.host, ref.port) == ("https", "orders.internal", 8443)
    assert (ref.userinfo, ref.query) == ("u:p", "x=1")
    # A default port is None in the parsed form: plan keys rely on it.
    assert _compat.uri_reference(httpx.URL("http://a.internal/")).port is None


def test_header_items_is_the_list_headers_reads() -> None:
    assert _compat.HEADERS_EDITABLE, "httpx.Headers no longer keeps a list: _headers is slow now"
    headers = httpx.Headers({"Accept": "x"})
    items = _compat.header_items(headers)
    assert items == [(b"Accept", b"accept", b"x")]
    items.append((b"x-new", b"x-new", b"1"))
    assert headers["x-new"] == "1"
    assert headers.raw[-1] == (b"x-new", b"1")


@pytest.mark.parametrize("kind", [httpx.Client, httpx.AsyncClient])
def test_client_transports_are_the_ones_requests_use(kind: Any) -> None:
    default_transport = httpx.MockTransport(lambda r: httpx.Response(200))
    mounted = httpx.MockTransport(lambda r: httpx.Response(201))
    client = kind(transport=default_transport, mounts={"http://m.internal": mounted})
    default, mounts = _compat.client_transports(client)
    assert default is default_transport
    assert list(mounts.values()) == [mounted]
    swapped = httpx.MockTransport(lambda r: httpx.Response(202))
    _compat.set_client_transports(client, swapped, {})
    assert client._transport_for_url(httpx.URL("http://m.internal/")) is swapped


def test_otel_globals_are_the_providers_the_api_returns() -> None:
    assert _compat.OTEL_GLOBALS_READABLE, "OpenTelemetry moved its globals: active() costs 1 µs"
    provider = _compat.global_tracer_provider()
    if provider is None:
        assert not _compat.otel_sdk_set() or _compat.global_meter_provider() is not None
        assert isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)
    else:
        assert trace.get_tracer_provider() is provider
    meter_provider = _compat.global_meter_provider()
    if meter_provider is not None:
        assert metrics.get_meter_provider() is meter_provider
    assert _compat.otel_sdk_set() == (provider is not None or meter_provider is not None)


def test_otel_tracer_global_follows_set_tracer_provider(monkeypatch: pytest.MonkeyPatch) -> None:
    # Set the way set_tracer_provider does, without its set-once guard.
    sdk = TracerProvider()
    monkeypatch.setattr(trace, "_TRACER_PROVIDER", sdk)
    assert _compat.global_tracer_provider() is sdk
    assert trace.get_tracer_provider() is sdk
    assert _compat.otel_sdk_set()
    monkeypatch.setattr(trace, "_TRACER_PROVIDER", None)
    monkeypatch.setattr(metrics._internal, "_METER_PROVIDER", None)
    assert not _compat.otel_sdk_set()
    assert isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)


def test_suppress_http_key_is_what_the_instrumentation_reads() -> None:
    assert _compat.SUPPRESS_HTTP_KEY is not None
    instrumentation = pytest.importorskip("opentelemetry.instrumentation.utils")
    token = otel_context.attach(otel_context.set_value(_compat.SUPPRESS_HTTP_KEY, True))
    try:
        assert instrumentation.is_http_instrumentation_enabled() is False
    finally:
        otel_context.detach(token)
    assert instrumentation.is_http_instrumentation_enabled() is True


def test_baggage_key_holds_what_get_all_returns() -> None:
    ctx = baggage.set_baggage("tenant", "blue")
    assert _compat.BAGGAGE_KEY is not None
    stored: Any = ctx.get(_compat.BAGGAGE_KEY)
    assert dict(stored) == dict(baggage.get_all(ctx))
    assert not otel_context.Context().get(_compat.BAGGAGE_KEY)


def test_composite_parts_lists_the_default_propagators() -> None:
    parts = _compat.composite_parts(propagate.get_global_textmap())
    names = [type(p).__name__ for p in parts]
    assert names == ["TraceContextTextMapPropagator", "W3CBaggagePropagator"]
    assert _compat.composite_parts(object()) is None


class _Counting(_compat.ConnectionHookContext):
    def _meshlib_new_connection(self) -> threading.Lock:
        self.seen = getattr(self, "seen", 0) + 1
        return threading.Lock()


def test_connection_hook_sees_wrap_socket_and_wrap_bio() -> None:
    context = _Counting(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    # A connected socket: its OpenSSL state is made at once (an unconnected one's on connect()).
    near, far = socket.socketpair()
    with far, context.wrap_socket(near, server_hostname="x", do_handshake_on_connect=False):
        assert context.seen == 1
    context.wrap_bio(ssl.MemoryBIO(), ssl.MemoryBIO(), server_hostname="x")
    assert context.seen == 2


@pytest.mark.parametrize(
    "url",
    [
        "http://orders.internal/items?id=7",
        "https://user:pw@orders.internal:8443/a/b#frag",
        "http://[::1]:8080/x",
        "https://orders.internal/",
    ],
)
@pytest.mark.parametrize(
    ("host", "port"),
    [
        ("127.0.0.1", 9),
        ("::1", 8080),
        ("10.0.0.1", 80),
        ("10.0.0.1", 443),
        ("a.b", None),
        ("Orders.Example", 81),
        ("bücher.example", 80),
    ],
)
@pytest.mark.parametrize("scheme", [None, "https"])
def test_url_with_host_is_copy_with(
    url: str, host: str, port: int | None, scheme: str | None
) -> None:
    from meshlib._compat import url_with_host

    original = httpx.URL(url)
    aimed = url_with_host(original, host, port, scheme)
    expected = original.copy_with(scheme=scheme or original.scheme, host=host, port=port)
    assert aimed == expected
    assert (aimed.host, aimed.port, aimed.netloc, aimed.raw_path) == (
        expected.host,
        expected.port,
        expected.netloc,
        expected.raw_path,
    )
    assert str(aimed) == str(expected)
    assert original == httpx.URL(url)  # the original is untouched


@pytest.mark.anyio
@pytest.mark.network
async def test_httpx_async_stream_is_what_the_async_transport_hands_back() -> None:
    # Only this class's close is run in the caller's task (`close_shielded`): were httpx
    # to hand back another, every close would take the slower task of its own.
    assert _compat.HTTPX_ASYNC_STREAM is not None
    with FaultServer() as server:
        async with httpx.AsyncHTTPTransport() as transport:
            response = await transport.handle_async_request(httpx.Request("GET", server.url))
            assert type(response.stream) is _compat.HTTPX_ASYNC_STREAM
            await response.aclose()


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_reclaim_finds_httpcores_pool_where_it_looks() -> None:
    # What reclaim_orphaned_connections reads: httpx's pool, its connections and its queue
    # of requests (each naming the connection it was given), and the lock that guards them.
    # Should httpx or httpcore move them, the sweep would quietly do nothing.
    transport = httpx.AsyncHTTPTransport()
    pool: Any = getattr(transport, "_pool", None)
    assert isinstance(pool, httpcore.AsyncConnectionPool)
    assert pool._connections == []
    assert pool._requests == []
    with pool._optional_thread_lock:
        pass
    queued = httpcore._async.connection_pool.AsyncPoolRequest(httpcore.Request("GET", "http://a/"))
    assert queued.connection is None
    await transport.aclose()
