"""What the ASGI and WSGI middleware share: reading a caller's budget from headers."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from ._deadline import DEFAULT_HEADER, GRPC_HEADER, parse_budget_header
from ._errors import ConfigError
from ._policy import duration
from ._runtime import runtime

__all__ = ["BudgetReader"]


class BudgetReader:
    """Turn a request's budget header into a deadline on meshlib's clock.

    Args:
        headers: header names to look for, in order (a single name may be
            given as a string); the first present and well-formed one wins.
        margin: seconds kept back for the answer's trip home.
    """

    __slots__ = ("headers", "margin")

    def __init__(
        self, headers: Sequence[str] = (DEFAULT_HEADER, GRPC_HEADER), margin: float = 0.01
    ) -> None:
        names = (headers,) if isinstance(headers, str) else tuple(headers)
        for name in names:
            if not isinstance(name, str) or not name:
                raise ConfigError(f"MeshMiddleware.headers: expected header names, got {headers!r}")
        self.headers = tuple(name.lower() for name in names)
        self.margin: float = duration("MeshMiddleware", "margin", margin)  # type: ignore[assignment]

    def deadline_at(self, lookup: Callable[[str], str | None]) -> float | None:
        """Return the absolute deadline the request's headers grant, or None."""
        for name in self.headers:
            value = lookup(name)
            if value is None:
                continue
            seconds = parse_budget_header(name, value)
            if seconds is not None:
                return runtime.clock.now() + max(0.0, seconds - self.margin)
        return None
