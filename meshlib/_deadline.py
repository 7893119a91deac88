"""Deadlines on contextvars: one time budget shared by every call inside it."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar, Token
from datetime import timedelta
from types import TracebackType

from ._checks import duration
from ._runtime import runtime

__all__ = [
    "DEADLINE_SLACK",
    "DEFAULT_HEADER",
    "GRPC_HEADER",
    "current_deadline",
    "deadline",
    "deadline_until",
    "long_budget_header",
    "parse_budget_header",
    "remaining",
]

#: The header Envoy-based meshes use for the time a caller will wait, in ms.
DEFAULT_HEADER = "x-envoy-expected-rq-timeout-ms"
#: gRPC's deadline header: up to 8 digits and a unit, e.g. ``250m``.
GRPC_HEADER = "grpc-timeout"
#: A timeout that fires this close to the deadline is the deadline's doing.
DEADLINE_SLACK = 0.01

# The absolute monotonic instant by which the current work must finish.
_deadline: ContextVar[float | None] = ContextVar("meshlib.deadline", default=None)

current_deadline = _deadline.get


def _narrow(at: float) -> Token[float | None]:
    """Set the deadline to `at` unless an enclosing one is earlier: nesting keeps the earliest."""
    outer = _deadline.get()
    return _deadline.set(at if outer is None or at < outer else outer)


class deadline:
    """Bound everything inside the block by `seconds`, in sync and async code.

    Nested deadlines keep the earliest: an inner block can shorten what is left,
    never lengthen it. Every wrapped client and every `resilient` function
    inside the block honours it, and outbound calls inside the mesh carry what
    is left in a header.

    Args:
        seconds: the budget, as float seconds or a `datetime.timedelta`.

    Raises:
        ConfigError: `seconds` is negative, NaN, infinite or not a duration.
    """

    __slots__ = ("_seconds", "_token")

    def __init__(self, seconds: float | timedelta) -> None:
        self._seconds: float = duration("deadline", "seconds", seconds)  # type: ignore[assignment]
        self._token: Token[float | None] | None = None

    def __enter__(self) -> deadline:
        self._token = _narrow(runtime.clock.now() + self._seconds)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._token is not None:
            _deadline.reset(self._token)
            self._token = None


def remaining() -> float | None:
    """Return the seconds left in the current deadline (never negative), or None outside one."""
    at = _deadline.get()
    if at is None:
        return None
    return max(0.0, at - runtime.clock.now())


@contextmanager
def deadline_until(at: float) -> Iterator[None]:
    """Bound the block by the absolute clock reading `at` (keeping an earlier one)."""
    token = _narrow(at)
    try:
        yield
    finally:
        _deadline.reset(token)


_logger = logging.getLogger("meshlib")
# The most digits the parser below accepts, and so the most the outbound side writes:
# what a meshlib service sends, a meshlib service downstream must adopt.
_MS_DIGITS = 12  # about 31 years in milliseconds
_GRPC_DIGITS = 8  # gRPC's own limit
#: The longest budget in the milliseconds header, and in grpc-timeout's "m" unit.
MAX_BUDGET_MS = 10**_MS_DIGITS - 1
MAX_GRPC_VALUE = 10**_GRPC_DIGITS - 1
_GRPC_TIMEOUT = re.compile(rf"([0-9]{{1,{_GRPC_DIGITS}}})([HMSmun])")
_GRPC_UNITS = {"H": 3600.0, "M": 60.0, "S": 1.0, "m": 1e-3, "u": 1e-6, "n": 1e-9}
_GRPC_KEY = GRPC_HEADER.encode("ascii")


def long_budget_header(key: bytes, left: float) -> bytes:
    """Return the header value for `left` seconds too long to write in milliseconds.

    The milliseconds header is clamped to its longest value. ``grpc-timeout``
    moves to the finest of seconds, minutes and hours that fits 8 digits,
    rounded down (never more time than is left), else its longest value.
    """
    if key != _GRPC_KEY:
        return b"%d" % min(left * 1000, MAX_BUDGET_MS)
    for unit, seconds in ((b"S", 1.0), (b"M", 60.0), (b"H", 3600.0)):
        if left / seconds <= MAX_GRPC_VALUE:
            return b"%d%s" % (left / seconds, unit)
    return b"%dH" % MAX_GRPC_VALUE


def parse_budget_header(name: str, value: str) -> float | None:
    """Return the seconds a caller's budget header grants, or None when malformed.

    ``x-envoy-expected-rq-timeout-ms`` (and any other name) holds whole
    milliseconds; ``grpc-timeout`` holds up to 8 digits and a unit (H, M, S,
    m, u, n). A malformed value is logged at debug level and ignored: a bad
    header never turns into an error response.
    """
    text = value.strip()
    if name == GRPC_HEADER:
        match = _GRPC_TIMEOUT.fullmatch(text)
        if match is not None:
            return int(match.group(1)) * _GRPC_UNITS[match.group(2)]
    elif text.isascii() and text.isdigit() and len(text) <= _MS_DIGITS:
        return int(text) / 1000
    _logger.debug(
        "ignoring malformed %s header %r",
        name,
        value,
        extra={"meshlib_event": "bad_deadline_header", "meshlib_header": name},
    )
    return None
