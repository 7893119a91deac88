"""meshlib: a service mesh's client-side smarts inside the process.

Wrap an httpx client (``meshlib.wrap(client)``) or decorate a function
(``@meshlib.resilient(on=...)``) and calls get retries with backoff and a
retry budget, and deadlines that travel between services
(``meshlib.asgi`` / ``meshlib.wsgi`` adopt them inbound), configured by one
`Policy` or a `Mesh` of them.
"""

from . import admin as admin
from . import asgi as asgi
from . import wsgi as wsgi
from ._breaker import BreakerSnapshot
from ._bulkhead import BulkheadSnapshot
from ._client import AsyncClient, Client, wrap
from ._deadline import deadline, remaining
from ._decorator import resilient
from ._errors import BulkheadFull, CircuitOpen, ConfigError, DeadlineExceeded, MeshError
from ._mesh import Mesh, default_mesh
from ._pipeline import AsyncTransport, Transport
from ._policy import (
    STANDARD,
    Backoff,
    Breaker,
    Budget,
    Bulkhead,
    Ejection,
    Endpoints,
    Fallback,
    Faults,
    HeaderMatch,
    Hedge,
    PathExact,
    PathRegex,
    Policy,
    Retry,
    Route,
    Timeout,
    Tracing,
)
from ._tls import TLS
from ._traffic import EndpointSnapshot
from ._version import __version__ as __version__

__all__ = [
    "STANDARD",
    "TLS",
    "AsyncClient",
    "AsyncTransport",
    "Backoff",
    "Breaker",
    "BreakerSnapshot",
    "Budget",
    "Bulkhead",
    "BulkheadFull",
    "BulkheadSnapshot",
    "CircuitOpen",
    "Client",
    "ConfigError",
    "DeadlineExceeded",
    "Ejection",
    "EndpointSnapshot",
    "Endpoints",
    "Fallback",
    "Faults",
    "HeaderMatch",
    "Hedge",
    "Mesh",
    "MeshError",
    "PathExact",
    "PathRegex",
    "Policy",
    "Retry",
    "Route",
    "Timeout",
    "Tracing",
    "Transport",
    "deadline",
    "default_mesh",
    "remaining",
    "resilient",
    "wrap",
]
