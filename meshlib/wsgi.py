"""WSGI middleware: adopt the caller's deadline for everything the handler calls.

```python
app = meshlib.wsgi.MeshMiddleware(app)   # Flask, Django, any WSGI app
```
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from types import TracebackType
from typing import Any

from ._deadline import DEFAULT_HEADER, GRPC_HEADER, deadline_until
from ._inbound import BudgetReader, refuse_app

__all__ = ["MeshMiddleware"]

Environ = dict[str, Any]
ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None]
StartResponse = Callable[..., Callable[[bytes], object]]
WSGIApp = Callable[[Environ, StartResponse], Iterable[bytes]]


class MeshMiddleware:
    """Run each request, and the iteration of its body, under the caller's deadline.

    Reads ``x-envoy-expected-rq-timeout-ms`` (whole milliseconds) or
    ``grpc-timeout``, keeps back `margin` seconds, and runs the app inside a
    `meshlib.deadline`, so every wrapped client and `resilient` function the
    handler uses shares what is left. Requests without the header, or with a
    malformed one (logged at debug level), run as they would without it.

    Args:
        app: the WSGI application.
        headers: header names to read (at least one), first match wins.
        margin: seconds kept back for the answer's trip home (default 10 ms).

    Raises:
        ConfigError: `app` is not callable, `headers` names no header or
            something that is not a header name, or `margin` is not a duration.
    """

    def __init__(
        self,
        app: WSGIApp,
        *,
        headers: Sequence[str] = (DEFAULT_HEADER, GRPC_HEADER),
        margin: float = 0.01,
    ) -> None:
        refuse_app(app, "WSGI")
        self.app = app
        self._reader = BudgetReader(headers, margin)

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        at = self._reader.from_environ(environ)
        if at is None:
            return self.app(environ, start_response)
        with deadline_until(at):
            result = self.app(environ, start_response)
        return _BodyUnderDeadline(result, at)


class _BodyUnderDeadline:
    """A WSGI body whose chunks are produced under the request's deadline.

    Servers iterate the body after the app returns, so lazily produced chunks
    (generators that call other services) need the deadline set again.
    """

    def __init__(self, body: Iterable[bytes], at: float) -> None:
        self._body = body
        self._at = at

    def __iter__(self) -> Iterator[bytes]:
        with deadline_until(self._at):
            chunks = iter(self._body)
        while True:
            with deadline_until(self._at):
                try:
                    chunk = next(chunks)
                except StopIteration:
                    return
            yield chunk

    def close(self) -> None:
        close = getattr(self._body, "close", None)
        if close is not None:
            close()
