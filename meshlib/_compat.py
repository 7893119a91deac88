"""Every use of a private API of httpx, OpenTelemetry or ssl, in one place.

Each name here leans on something its library does not promise, for speed on
the success path or because no public way exists. tests/test_compat.py pins
every assumption, so an upgrade that breaks one fails there, loudly, rather
than somewhere far away. Where a public fallback exists, it is taken when
the private name is gone.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable, Mapping
from operator import attrgetter
from typing import Any

import anyio
import httpx
from opentelemetry import baggage, metrics, trace
from opentelemetry import context as otel_context

__all__ = [
    "BAGGAGE_KEY",
    "HEADERS_EDITABLE",
    "HTTPX_ASYNC_STREAM",
    "OTEL_GLOBALS_READABLE",
    "SUPPRESS_HTTP_KEY",
    "ConnectionHookContext",
    "client_transports",
    "composite_parts",
    "global_meter_provider",
    "global_tracer_provider",
    "header_items",
    "otel_sdk_set",
    "set_client_transports",
    "uri_reference",
    "url_with_host",
]

# --- httpx (pinned below 0.29) ------------------------------------------------

# httpx.URL's parsed form (scheme, host, port, userinfo, query as plain str and
# int fields): reading it costs a fraction of the encoded properties, and it is
# read on every request.
uri_reference: Any = attrgetter("_uri_reference")

_URL_EDITABLE = hasattr(httpx.URL("http://a/"), "_uri_reference") and hasattr(
    httpx.URL("http://a/")._uri_reference, "_replace"
)
_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}


def url_with_host(
    url: httpx.URL, host: str, port: int | None, scheme: str | None = None
) -> httpx.URL:
    """Return ``url.copy_with(host=host, port=port)`` (and `scheme`) without parsing it again.

    `host` is an IP address (IPv6 without brackets) or a lowercase ASCII name, as
    `meshlib.Endpoints` and route targets hold them. copy_with re-parses and
    re-validates the whole URL (about 15 µs); on every attempt to an endpoint
    that is most of meshlib's cost. Anything else takes the public way.
    """
    ref = url._uri_reference if _URL_EDITABLE else None
    scheme = scheme or url.scheme
    if ref is None or not host.isascii() or host != host.lower() or scheme not in _DEFAULT_PORTS:
        # httpx's own normalising, then (and a future httpx: the public way).
        return url.copy_with(scheme=scheme, host=host, port=port)
    if port == _DEFAULT_PORTS[scheme]:
        port = None  # httpx keeps a scheme's own port as None
    aimed = httpx.URL.__new__(httpx.URL)
    aimed._uri_reference = ref._replace(scheme=scheme, host=host, port=port)
    return aimed


# httpx keeps a Headers' items as a list of (raw name, lowercase name, value)
# bytes; editing it directly skips __setitem__'s re-encoding and rescan.
HEADERS_EDITABLE = isinstance(getattr(httpx.Headers(), "_list", None), list)


# header_items(headers): the list behind `headers` (only when HEADERS_EDITABLE); a C
# getter, as cheap as the attribute, for it is read on every attempt.
header_items: Callable[[httpx.Headers], list[tuple[bytes, bytes, bytes]]] = attrgetter("_list")


async def reclaim_orphaned_connections(transport: object) -> None:
    """Close the connections in httpx's async pool that no request owns any more.

    httpcore 1.0 leaks them (encode/httpcore#1093): a request cancelled after the
    pool made it a connection, but before it used it, leaves that connection
    behind, neither idle nor closed, holding one of the pool's slots for good
    (and, once its socket is open, a file descriptor). Every request still in
    the pool's queue owns its connection, so one no request names is an orphan.
    Called after a cancelled attempt; the close is shielded, as httpcore shields
    its own. A transport without httpcore's pool (a mock, a future httpx) is
    left alone.
    """
    pool = getattr(transport, "_pool", None)
    connections = getattr(pool, "_connections", None)
    requests = getattr(pool, "_requests", None)
    lock = getattr(pool, "_optional_thread_lock", None)
    if not isinstance(connections, list) or not isinstance(requests, list) or lock is None:
        return
    with lock:
        owned = {id(getattr(request, "connection", None)) for request in requests}
        orphans = [
            connection
            for connection in connections
            if id(connection) not in owned
            and not connection.is_idle()
            and not connection.is_closed()
        ]
        for connection in orphans:
            connections.remove(connection)
    if orphans:
        with anyio.CancelScope(shield=True):
            for connection in orphans:
                await connection.aclose()


# The class of the body httpx's own AsyncHTTPTransport hands back. Its close
# (httpcore's: the connection's lock, then the pool's bookkeeping) waits for no
# I/O, so `_streams.close_shielded` may run it in the caller's task. None: a
# future httpx without it, and every close takes the task of its own.
HTTPX_ASYNC_STREAM: type | None = getattr(
    getattr(getattr(httpx, "_transports", None), "default", None), "AsyncResponseStream", None
)


def client_transports(
    client: httpx.Client | httpx.AsyncClient,
) -> tuple[Any, Mapping[Any, Any]]:
    """Return a client's default transport and its mounts (pattern to transport or None).

    httpx offers no public way to replace a built client's transports.
    """
    return client._transport, client._mounts


def set_client_transports(
    client: httpx.Client | httpx.AsyncClient, default: Any, mounts: Mapping[Any, Any]
) -> None:
    """Replace a client's default transport and its mounts."""
    client._transport = default
    client._mounts = dict(mounts)


# --- OpenTelemetry API ----------------------------------------------------------

# The API's public getters cost half a microsecond each (they read os.environ);
# the module globals behind them cost a dictionary lookup. None: no SDK installed.
_metrics_internal: Any = getattr(metrics, "_internal", None)
OTEL_GLOBALS_READABLE = hasattr(trace, "_TRACER_PROVIDER") and hasattr(
    _metrics_internal, "_METER_PROVIDER"
)

if OTEL_GLOBALS_READABLE:

    def global_tracer_provider() -> Any:
        """Return the global tracer provider an application set, or None."""
        return trace._TRACER_PROVIDER

    def global_meter_provider() -> Any:
        """Return the global meter provider an application set, or None."""
        return _metrics_internal._METER_PROVIDER

    def otel_sdk_set() -> bool:
        """Return whether either global provider has been set: the one check per call."""
        return trace._TRACER_PROVIDER is not None or _metrics_internal._METER_PROVIDER is not None

else:  # pragma: no cover - a future API without the globals: the public way

    def global_tracer_provider() -> Any:
        """Return the global tracer provider an application set, or None."""
        provider = trace.get_tracer_provider()
        return None if isinstance(provider, trace.ProxyTracerProvider) else provider

    def global_meter_provider() -> Any:
        """Return the global meter provider an application set, or None."""
        provider = metrics.get_meter_provider()
        return None if type(provider).__name__ == "_ProxyMeterProvider" else provider

    def otel_sdk_set() -> bool:
        """Return whether either global provider has been set: the one check per call."""
        return global_tracer_provider() is not None or global_meter_provider() is not None


# The context key opentelemetry-instrumentation-httpx honours; None when gone.
SUPPRESS_HTTP_KEY: Any = getattr(otel_context, "_SUPPRESS_HTTP_INSTRUMENTATION_KEY", None)

# Where the API keeps baggage in a Context: a lookup instead of get_all's copy.
BAGGAGE_KEY: Any = getattr(baggage, "_BAGGAGE_KEY", None)


def composite_parts(textmap: object) -> Any:
    """Return the propagators inside a CompositePropagator, or None."""
    return getattr(textmap, "_propagators", None)


# --- ssl ------------------------------------------------------------------------


class ConnectionHookContext(ssl.SSLContext):
    """An SSLContext that runs `_meshlib_new_connection()` around every new connection.

    ssl.SSLSocket and ssl.SSLObject create their OpenSSL state through two
    private hooks, ``_wrap_socket`` and ``_wrap_bio``, whether wrap_socket,
    wrap_bio or a late connect() got them there: the one place that sees every
    new connection. Subclasses return a context manager held while it is made.
    """

    def _meshlib_new_connection(self) -> Any:
        raise NotImplementedError

    def _wrap_socket(self, *args: Any, **kwargs: Any) -> Any:
        with self._meshlib_new_connection():
            return super()._wrap_socket(*args, **kwargs)  # type: ignore[misc]

    def _wrap_bio(self, *args: Any, **kwargs: Any) -> Any:
        with self._meshlib_new_connection():
            return super()._wrap_bio(*args, **kwargs)  # type: ignore[misc]
