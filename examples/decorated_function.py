"""Retry any function with ``@meshlib.resilient``, here one that calls a flaky upstream.

Run it with no arguments: ``.venv/bin/python examples/decorated_function.py``. It starts a
FaultServer on 127.0.0.1 (no network needed) and finishes in under a second.
The asserts make it a regression check as well as a demo.
"""

from __future__ import annotations

import httpx

import meshlib
from meshlib.testing import FaultServer, Reset, Respond

# Short waits for the demo; the 2 s total bounds each decorated call, retries included.
POLICY = meshlib.Policy(
    retry=meshlib.Retry(attempts=3, backoff=meshlib.Backoff(base=0.01, cap=0.05)),
    timeout=meshlib.Timeout(total=2.0),
)

server = FaultServer()
calls = 0


# The decorator retries whatever `on=` names; the plain (unwrapped) httpx call
# inside keeps retries in one place instead of stacking two layers of them.
@meshlib.resilient(on=httpx.TransportError, policy=POLICY)
def fetch_price(sku: str) -> str:
    global calls
    calls += 1
    return httpx.get(f"{server.url}/prices/{sku}", timeout=1.0).text


def is_unavailable(exc: Exception) -> bool:
    # A predicate picks exactly which failures are worth another attempt.
    return isinstance(exc, httpx.HTTPStatusError) and exc.response.status_code == 503


@meshlib.resilient(on=is_unavailable, policy=POLICY, key="inventory.reserve")
def reserve(sku: str) -> int:
    response = httpx.put(f"{server.url}/reservations/{sku}", timeout=1.0)
    response.raise_for_status()
    return response.status_code


def main() -> None:
    global calls
    with server:
        # Two connection resets, then the default 200 "ok": the third call succeeds.
        server.enqueue(Reset(), Reset())
        price = fetch_price("X1")
        print(f"fetch_price('X1') -> {price!r} after {calls} calls")
        assert price == "ok"
        assert calls == 3

        # Attempts run out: the last original exception propagates, unwrapped.
        calls = 0
        server.enqueue(Reset(), Reset(), Reset())
        try:
            fetch_price("X2")
        except httpx.ReadError as exc:
            print(f"fetch_price('X2') -> {type(exc).__name__} after {calls} calls")
        assert calls == 3

        # The predicate retries a 503 but lets a 404 through on the first try.
        server.reset_log()
        server.enqueue(Respond(503))
        assert reserve("X1") == 200
        print(f"reserve('X1') -> 200 after {server.request_count} requests")
        assert server.request_count == 2

        server.reset_log()
        server.enqueue(Respond(404))
        try:
            reserve("nope")
        except httpx.HTTPStatusError as exc:
            print(
                f"reserve('nope') -> {exc.response.status_code} "
                f"after {server.request_count} request"
            )
        assert server.request_count == 1
    print("ok")


if __name__ == "__main__":
    main()
