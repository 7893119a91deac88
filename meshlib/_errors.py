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


class _NoValue:
    __slots__ = ()

    def __repr__(self) -> str:
        return "ConfigError.NO_VALUE"


class ConfigError(MeshError, ValueError):
    """A policy value, config file or TLS material is invalid.

    The message names the field (or file) and the offending value; its parts are
    attributes, so code can read them without parsing the message. ``str(error)`` is
    ``"{where}, line {line}, column {column}: {field}: {reason}"``, each part left out
    (with its separator) when it is None.

    Args:
        reason: what is wrong, such as ``"expected an int >= 1, got 0"``.
        where: the file, URL or argument the value came from.
        field: the field's dotted path (``"Retry.attempts"``, or in a file
            ``"destinations.\"api.internal\".retry.attempts"``).
        value: the offending value; `NO_VALUE` when the error is not about one value.
        expected: what the field takes (``"an int >= 1"``), when the reason says so.
        line: the line of `where` the problem is on, when the parser says (1-based).
        column: its column (1-based), with `line`.

    Attributes:
        reason, where, field, value, expected, line, column: as given.
    """

    #: The `value` of an error that is not about one value.
    NO_VALUE: object = _NoValue()

    def __init__(
        self,
        reason: str,
        *,
        where: str | None = None,
        field: str | None = None,
        value: object = NO_VALUE,
        expected: str | None = None,
        line: int | None = None,
        column: int | None = None,
    ) -> None:
        self.reason = reason
        self.where = where
        self.field = field
        self.value = value
        self.expected = expected
        self.line = line
        self.column = column
        parts = [reason] if field is None else [field, reason]
        if where is not None:
            place = where if line is None else f"{where}, line {line}, column {column}"
            parts.insert(0, place)
        # The whole message as the one argument: str(), repr() and pickling as ValueError's.
        super().__init__(": ".join(parts))


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
