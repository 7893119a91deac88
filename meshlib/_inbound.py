"""What the ASGI and WSGI middleware share: reading a caller's budget from headers."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from ._checks import duration
from ._deadline import DEFAULT_HEADER, GRPC_HEADER, parse_budget_header
from ._errors import ConfigError
from ._policy import is_token
from ._runtime import runtime

__all__ = ["BudgetReader", "refuse_app"]


def refuse_app(app: object, kind: str) -> None:
    """Raise ConfigError unless `app` can be called as a `kind` ("WSGI", "ASGI") application."""
    if not callable(app):
        raise ConfigError(
            f"MeshMiddleware.app: expected a callable {kind} application, got {app!r}"
        )


class BudgetReader:
    """Turn a request's budget header into a deadline on meshlib's clock.

    Args:
        headers: header names to look for, in order (a single name may be
            given as a string); the first present and well-formed one wins.
        margin: seconds kept back for the answer's trip home.
    """

    __slots__ = ("_asgi_names", "_environ_keys", "headers", "margin")

    def __init__(
        self, headers: Sequence[str] = (DEFAULT_HEADER, GRPC_HEADER), margin: float = 0.01
    ) -> None:
        if isinstance(headers, bytes) or not isinstance(headers, str | Iterable):
            raise ConfigError(
                f"MeshMiddleware.headers: expected a header name or a list of them, got {headers!r}"
            )
        names = (headers,) if isinstance(headers, str) else tuple(headers)
        if not names:
            # Reading no header would make the middleware a silent no-op.
            raise ConfigError(
                f"MeshMiddleware.headers: expected at least one header name, got {headers!r}"
            )
        for name in names:
            if not is_token(name):
                raise ConfigError(
                    f"MeshMiddleware.headers: expected HTTP header names, got {name!r}"
                )
        self.headers = tuple(name.lower() for name in names)
        self.margin: float = duration("MeshMiddleware", "margin", margin)  # type: ignore[assignment]
        # Each name as ASGI servers and WSGI environs spell it, worked out once.
        self._asgi_names = frozenset(name.encode("latin-1") for name in self.headers)
        self._environ_keys = tuple(
            (name, "HTTP_" + name.upper().replace("-", "_")) for name in self.headers
        )

    def from_asgi(self, raw: Iterable[tuple[bytes, bytes]]) -> float | None:
        """Return the deadline an ASGI scope's headers grant, or None."""
        found: dict[str, str] = {}
        for key, value in raw:
            key = key.lower()  # lowercase by the spec; some servers still differ
            if key in self._asgi_names:
                found.setdefault(key.decode("latin-1"), value.decode("latin-1"))
        return self._deadline_at(found) if found else None

    def from_environ(self, environ: Mapping[str, Any]) -> float | None:
        """Return the deadline a WSGI environ's headers grant, or None."""
        found = {}
        for name, key in self._environ_keys:
            value = environ.get(key)
            if isinstance(value, str):
                found[name] = value
        return self._deadline_at(found) if found else None

    def _deadline_at(self, found: Mapping[str, str]) -> float | None:
        # The first name, in the configured order, present and well-formed.
        for name in self.headers:
            value = found.get(name)
            if value is None:
                continue
            seconds = parse_budget_header(name, value)
            if seconds is not None:
                return runtime.clock.now() + max(0.0, seconds - self.margin)
        return None
