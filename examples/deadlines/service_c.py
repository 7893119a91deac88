"""Service C: a WSGI app whose slow work stops as soon as the caller's budget is spent."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from typing import Any

import meshlib
import meshlib.wsgi

__all__ = ["WORK_SECONDS", "make_app"]

WORK_SECONDS = 5.0  # what the work would take if nobody were waiting for it
STEP = 0.02  # how often the work checks whether anyone still is


def make_app(seen: dict[str, Any], done: threading.Event) -> Any:
    """Return C, wrapped in meshlib's WSGI middleware; it records what it saw in `seen`."""

    def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        seen["arrived"] = time.monotonic()
        seen["header"] = environ.get("HTTP_X_ENVOY_EXPECTED_RQ_TIMEOUT_MS")
        seen["adopted"] = meshlib.remaining()  # the caller's budget, minus the margin
        started = time.monotonic()
        finished = False
        while True:
            worked = time.monotonic() - started
            if worked >= WORK_SECONDS:
                finished = True
                break
            left = meshlib.remaining()
            if left is not None and left <= 0:
                break  # nobody is waiting for the answer any more: stop working
            step = min(STEP, WORK_SECONDS - worked)
            time.sleep(step if left is None else min(step, left))
        seen["stopped"] = time.monotonic()
        seen["worked"] = seen["stopped"] - started
        seen["status"] = 200 if finished else 504
        done.set()
        if finished:
            start_response("200 OK", [("content-type", "text/plain")])
            return [b"done\n"]
        start_response("504 Gateway Timeout", [("content-type", "text/plain")])
        return [b"C: out of time\n"]

    return meshlib.wsgi.MeshMiddleware(app)
