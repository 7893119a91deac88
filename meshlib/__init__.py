"""meshlib: a service mesh's client-side smarts inside the process.

Wrap an httpx client (``meshlib.wrap(client)``) or decorate a function
(``@meshlib.resilient(on=...)``) and calls get retries with backoff and a
retry budget, deadlines, and (as they land) breakers, bulkheads, mTLS and
tracing, configured by one `Policy` or a `Mesh` of them.
"""

from ._client import AsyncClient, Client, wrap
from ._deadline import deadline, remaining
from ._decorator import resilient
from ._errors import BulkheadFull, CircuitOpen, ConfigError, DeadlineExceeded, MeshError
from ._mesh import Mesh
from ._pipeline import AsyncTransport, Transport
from ._policy import STANDARD, Backoff, Budget, Policy, Retry, Timeout

__all__ = [
    "STANDARD",
    "AsyncClient",
    "AsyncTransport",
    "Backoff",
    "Budget",
    "BulkheadFull",
    "CircuitOpen",
    "Client",
    "ConfigError",
    "DeadlineExceeded",
    "Mesh",
    "MeshError",
    "Policy",
    "Retry",
    "Timeout",
    "Transport",
    "deadline",
    "remaining",
    "resilient",
    "wrap",
]

__version__ = "0.1.0.dev0"
