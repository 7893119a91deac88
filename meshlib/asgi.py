"""ASGI middleware: adopt the caller's deadline for everything the handler calls.

```python
app = meshlib.asgi.MeshMiddleware(app)   # Starlette, FastAPI, any ASGI app
```
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from typing import Any

from ._deadline import DEFAULT_HEADER, GRPC_HEADER, deadline_until
from ._inbound import BudgetReader, refuse_app

__all__ = ["MeshMiddleware"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class MeshMiddleware:
    """Run each HTTP request under the deadline its caller sent.

    Reads ``x-envoy-expected-rq-timeout-ms`` (whole milliseconds) or
    ``grpc-timeout``, keeps back `margin` seconds, and runs the app inside a
    `meshlib.deadline`, so every wrapped client and `resilient` function the
    handler uses shares what is left. Requests without the header, or with a
    malformed one (logged at debug level), run as they would without it.

    Args:
        app: the ASGI application.
        headers: header names to read (at least one), first match wins.
        margin: seconds kept back for the answer's trip home (default 10 ms).

    Raises:
        ConfigError: `app` is not callable, `headers` names no header or
            something that is not a header name, or `margin` is not a duration.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        headers: Sequence[str] = (DEFAULT_HEADER, GRPC_HEADER),
        margin: float = 0.01,
    ) -> None:
        refuse_app(app, "ASGI")
        self.app = app
        self._reader = BudgetReader(headers, margin)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        at = self._reader.from_asgi(scope.get("headers") or ())
        if at is None:
            await self.app(scope, receive, send)
            return
        with deadline_until(at):
            await self.app(scope, receive, send)
