"""Retries and a deadline through a wrapped ``httpx.AsyncClient``.

Run it with no arguments: ``.venv/bin/python examples/quickstart_async.py``. It starts a
FaultServer on 127.0.0.1 (no network needed) and finishes in under a second.
The asserts make it a regression check as well as a demo.
"""

from __future__ import annotations

import asyncio
import time

import httpx

import meshlib
from meshlib.testing import Close, FaultServer, Hang, Respond

# STANDARD with short waits: its 50 ms base and 1 s cap suit production, not a demo.
POLICY = meshlib.STANDARD.replace(
    retry=meshlib.Retry(backoff=meshlib.Backoff(base=0.01, cap=0.05)),
)


async def main() -> None:
    with FaultServer() as server:
        # wrap() takes an AsyncClient exactly as it takes a Client.
        async with meshlib.wrap(httpx.AsyncClient(base_url=server.url), POLICY) as client:
            # A 429 whose Retry-After says "0", then a connection closed without
            # an answer: Retry-After replaces the backoff, and both are retried.
            server.enqueue(Respond(429, headers={"Retry-After": "0"}), Close())
            response = await client.get("/users/7")
            print(
                f"GET /users/7 -> {response.status_code} {response.text!r} "
                f"after {server.request_count} requests"
            )
            assert response.status_code == 200
            assert server.request_count == 3

            # An upstream that never answers, inside a 0.3 s deadline: the attempt's
            # read timeout is cut to what is left, so the call ends on time with
            # DeadlineExceeded, which is also an httpx.TimeoutException.
            server.reset_log()
            server.enqueue(Hang(seconds=5.0))
            error: Exception | None = None
            started = time.monotonic()
            with meshlib.deadline(0.3):
                try:
                    await client.get("/slow")
                except httpx.TimeoutException as exc:
                    error = exc
            elapsed = time.monotonic() - started
            print(
                f"GET /slow inside deadline(0.3) -> {type(error).__name__} "
                f"after {elapsed:.2f}s and {server.request_count} request"
            )
            assert isinstance(error, meshlib.DeadlineExceeded)
            assert elapsed < 1.0
            assert server.request_count == 1
    print("ok")


if __name__ == "__main__":
    asyncio.run(main())
