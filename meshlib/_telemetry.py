"""Logs (and, later, spans and metrics) of what the mesh did.

The stdlib logger ``meshlib`` gets one line per retry, stop and rejection,
with structured extras under ``meshlib_*`` names; it is silent on success.
"""

from __future__ import annotations

import logging

__all__ = ["log_breaker", "log_rejection", "log_retry", "log_stop", "logger"]

logger = logging.getLogger("meshlib")
# A library leaves output to the application: without this, Python's last-resort
# handler would print meshlib's warnings to stderr when logging is not configured.
logger.addHandler(logging.NullHandler())


def log_retry(destination: str, attempt: int, attempts: int, cause: str, wait: float) -> None:
    """Log that attempt `attempt` failed with `cause` and the next starts in `wait` seconds."""
    logger.info(
        "retrying %s after %s (attempt %d of %d failed); waiting %.3fs",
        destination,
        cause,
        attempt,
        attempts,
        wait,
        extra={
            "meshlib_event": "retry",
            "meshlib_destination": destination,
            "meshlib_attempt": attempt,
            "meshlib_cause": cause,
            "meshlib_wait": wait,
        },
    )


def log_stop(destination: str, attempt: int, cause: str, reason: str) -> None:
    """Log that retrying stopped early (``reason``: budget, deadline) or ran out of attempts."""
    logger.info(
        "giving up on %s after %s on attempt %d: %s",
        destination,
        cause,
        attempt,
        {
            "attempts": "attempts used up",
            "budget": "retry budget spent",
            "deadline": "the next wait would end past the deadline",
        }.get(reason, reason),
        extra={
            "meshlib_event": "give_up",
            "meshlib_destination": destination,
            "meshlib_attempt": attempt,
            "meshlib_cause": cause,
            "meshlib_reason": reason,
        },
    )


def log_breaker(destination: str, old: str, new: str) -> None:
    """Log a breaker's transition (warning when it opens, info otherwise)."""
    logger.log(
        logging.WARNING if new == "open" else logging.INFO,
        "circuit breaker for %s: %s -> %s",
        destination,
        old,
        new,
        extra={
            "meshlib_event": "breaker",
            "meshlib_destination": destination,
            "meshlib_from": old,
            "meshlib_to": new,
        },
    )


def log_rejection(destination: str, reason: str) -> None:
    """Log a call meshlib refused without sending (``circuit_open``, ``bulkhead_full``)."""
    logger.info(
        "rejected a call to %s: %s",
        destination,
        reason.replace("_", " "),
        extra={
            "meshlib_event": "rejected",
            "meshlib_destination": destination,
            "meshlib_reason": reason,
        },
    )
