"""What is retried, how long to wait, and when to stop: pure decisions.

Nothing here performs I/O or sleeps; the sync and async drivers in
`_pipeline` (and the decorator) ask these objects and do the waiting.
"""

from __future__ import annotations

import math
import ssl
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, cast

import httpx
from tenacity import RetryCallState, stop_after_attempt, wait_exponential

from ._errors import MeshError
from ._runtime import runtime

if TYPE_CHECKING:
    from ._budget import BudgetState
    from ._policy import Backoff, Retry

__all__ = [
    "RetryState",
    "exception_is_retryable",
    "parse_retry_after",
    "request_is_idempotent",
    "body_is_replayable",
]

# Errors raised before the request left: safe to resend whatever the method.
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout)
# Errors after which the server may have seen the request.
_MAYBE_SENT = (
    httpx.ReadError,
    httpx.WriteError,
    httpx.ReadTimeout,
    httpx.WriteTimeout,
    httpx.RemoteProtocolError,
)


def request_is_idempotent(request: httpx.Request, retry: Retry) -> bool:
    """Return whether sending `request` twice is safe by method or ``Idempotency-Key``."""
    return request.method in retry.methods or "idempotency-key" in request.headers


def body_is_replayable(body: object) -> bool:
    """Return whether a request body (the stream it had before sending) can be sent again.

    Pass the stream as it was before the first attempt: reading a one-shot
    body replaces ``request.stream`` with the bytes it held.
    """
    return isinstance(body, httpx.ByteStream)


def _tls_verification_failed(exc: BaseException) -> bool:
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        if isinstance(cause, ssl.SSLCertVerificationError):
            return True
        seen.add(id(cause))
        cause = cause.__cause__ or cause.__context__
    return False


def exception_is_retryable(
    exc: Exception, request: httpx.Request, body: object, retry: Retry
) -> bool:
    """Return whether a transport error may be retried under DESIGN.md's rules.

    `body` is the request's stream as it was before the first attempt.
    Connection failures (the request never left) are retried for any method.
    Other transport errors only for idempotent, replayable requests. meshlib's
    own rejections and TLS verification failures never are. `Retry.on_error`
    narrows this to connection failures, or to none.
    """
    if isinstance(exc, MeshError) or retry.on_error == "none":
        return False
    if isinstance(exc, _NOT_SENT):
        return not _tls_verification_failed(exc)
    if retry.on_error == "connect":
        return False
    if isinstance(exc, _MAYBE_SENT):
        return request_is_idempotent(request, retry) and body_is_replayable(body)
    return False


def parse_retry_after(value: str) -> float | None:
    """Return the wait a ``Retry-After`` header asks for, in seconds, or None.

    Accepts delay-seconds (ASCII digits only) and HTTP dates; a date in the
    past gives 0.0, which `RetryState.next_wait` treats as no header at all.
    Anything else (garbage, a sign, non-ASCII digits, a date out of range)
    gives None so the caller falls back to backoff; this function never raises.
    """
    text = value.strip()
    if text.isascii() and text.isdigit():
        digits = text.lstrip("0") or "0"
        # Longer than any sane cap: avoid int()'s digit limit, the caller clamps.
        return math.inf if len(digits) > 15 else float(int(digits))
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    wall_now = datetime.now(UTC)  # wall-clock ok: an HTTP date is wall time
    try:
        delta = (when - wall_now).total_seconds()
    except OverflowError:
        return None
    return max(0.0, delta)


class RetryState:
    """The retry decisions for one call, made after a failed attempt.

    Built only when an attempt fails, so a call that succeeds at once never
    pays for it. Shared by the sync and async drivers and the decorator.

    Attributes:
        attempt_number: the attempt that just ran (1 for the first call).
        stop_reason: why `next_wait` said stop: ``"attempts"``, ``"deadline"``
            or ``"budget"``; None while retrying.
    """

    __slots__ = (
        "_previous_wait",
        "attempt_number",
        "budget",
        "deadline_at",
        "retry",
        "stop_reason",
    )

    def __init__(self, retry: Retry, budget: BudgetState | None, deadline_at: float | None) -> None:
        self.retry = retry
        self.budget = budget
        self.deadline_at = deadline_at
        self.attempt_number = 1
        self.stop_reason: str | None = None
        self._previous_wait = retry.backoff.base

    def next_wait(self, now: float, retry_after: float | None = None) -> float | None:
        """Return how long to wait before the next attempt, or None to stop.

        The caller has already judged the outcome retryable. Stops when the
        attempts are used up, when the wait would end at or past the deadline,
        or when the destination's retry budget is spent; `stop_reason` says which.

        Args:
            now: the clock's reading after the failed attempt.
            retry_after: the server's ``Retry-After`` in seconds, if it sent one;
                it replaces the backoff, clamped to ``retry_after_cap``. Zero (or a
                date already past) and a cap of zero mean the backoff, jitter
                included: a fleet told "now" must not retry at the same instant.
        """
        retry = self.retry
        if _stop_for(retry)(cast(RetryCallState, self)):
            self.stop_reason = "attempts"
            return None
        if retry_after and retry.retry_after_cap > 0:
            wait = min(retry_after, retry.retry_after_cap)
        else:
            wait = self._backoff(retry.backoff)
        if self.deadline_at is not None and now + wait >= self.deadline_at:
            self.stop_reason = "deadline"
            return None
        if self.budget is not None and not self.budget.try_withdraw(now):
            self.stop_reason = "budget"
            return None
        self.attempt_number += 1
        return wait

    def _backoff(self, backoff: Backoff) -> float:
        # tenacity answers `max` when 2**n overflows, which is wrong only for base 0.
        ceiling: float = (
            _ceiling_for(backoff)(cast(RetryCallState, self)) if backoff.base > 0 else 0.0
        )
        jitter = backoff.jitter
        rng = runtime.rng
        if jitter == "full":
            wait = rng.uniform(0.0, ceiling)
        elif jitter == "equal":
            wait = ceiling / 2 + rng.uniform(0.0, ceiling / 2)
        elif jitter == "decorrelated":
            # AWS's decorrelated jitter: grows from the previous wait, not the attempt.
            wait = min(backoff.cap, rng.uniform(backoff.base, self._previous_wait * 3))
        else:
            wait = ceiling
        self._previous_wait = wait
        return min(max(wait, 0.0), backoff.cap)


# tenacity's strategies are stateless, so one per policy value serves every call.
_ceilings: dict[Backoff, wait_exponential] = {}
_stops: dict[int, stop_after_attempt] = {}


def _ceiling_for(backoff: Backoff) -> wait_exponential:
    strategy = _ceilings.get(backoff)
    if strategy is None:
        # A float base makes 2.0 ** n overflow at once at huge n (tenacity then
        # returns `max`), instead of building a million-bit integer first.
        strategy = wait_exponential(multiplier=backoff.base, max=backoff.cap, exp_base=2.0)
        if len(_ceilings) < 1024:
            _ceilings[backoff] = strategy
    return strategy


def _stop_for(retry: Retry) -> stop_after_attempt:
    strategy = _stops.get(retry.attempts)
    if strategy is None:
        strategy = stop_after_attempt(retry.attempts)
        if len(_stops) < 1024:
            _stops[retry.attempts] = strategy
    return strategy
