"""The errors meshlib raises.

```
meshlib.MeshError
├── meshlib.ConfigError        (also ValueError)              bad policy, config or TLS material
├── meshlib.DeadlineExceeded   (also httpx.TimeoutException)  the call's time budget ran out
├── meshlib.CircuitOpen        (also httpx.TransportError)    .destination, .retry_after
└── meshlib.BulkheadFull       (also httpx.TransportError)    .destination
```

The httpx bases keep existing ``except httpx.TimeoutException`` and
``except httpx.TransportError`` handlers working; each runtime error carries
``.request`` as httpx's errors do.
"""

from __future__ import annotations

import httpx

__all__ = ["BulkheadFull", "CircuitOpen", "ConfigError", "DeadlineExceeded", "MeshError"]


class MeshError(Exception):
    """Base class of every error meshlib raises itself."""


class ConfigError(MeshError, ValueError):
    """A policy value, config file or TLS material is invalid.

    The message names the field (or file) and the offending value.
    """


class DeadlineExceeded(MeshError, httpx.TimeoutException):
    """The call's time budget ran out before an answer arrived.

    Raised only when the time has actually run out; when meshlib merely stops
    early (the next wait would end past the deadline) the caller gets the last
    response or the last original exception instead.
    """

    def __init__(self, message: str, *, request: httpx.Request | None = None) -> None:
        httpx.TimeoutException.__init__(self, message, request=request)


class CircuitOpen(MeshError, httpx.TransportError):
    """The destination's circuit breaker is open: nothing was sent.

    Attributes:
        destination: ``scheme://host:port`` of the destination.
        retry_after: seconds until the breaker admits a probe again.
    """

    def __init__(
        self,
        destination: str,
        retry_after: float,
        *,
        request: httpx.Request | None = None,
    ) -> None:
        httpx.TransportError.__init__(
            self, f"circuit open for {destination}; retry in {retry_after:.3f}s", request=request
        )
        self.destination = destination
        self.retry_after = retry_after


class BulkheadFull(MeshError, httpx.TransportError):
    """The destination already has as many calls in flight as its bulkhead allows.

    Attributes:
        destination: ``scheme://host:port`` of the destination.
    """

    def __init__(self, destination: str, *, request: httpx.Request | None = None) -> None:
        httpx.TransportError.__init__(self, f"bulkhead full for {destination}", request=request)
        self.destination = destination
