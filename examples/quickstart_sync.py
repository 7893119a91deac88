"""Retry a flaky upstream through a wrapped ``httpx.Client``.

Run it with no arguments: ``.venv/bin/python examples/quickstart_sync.py``. It starts a
FaultServer on 127.0.0.1, so it needs no network and finishes in well under a
second. The asserts make it a regression check as well as a demo.
"""

from __future__ import annotations

import logging
import sys

import httpx

import meshlib
from meshlib.testing import FaultServer, Reset, Respond

# STANDARD with short waits: its 50 ms base and 1 s cap suit production, not a demo.
POLICY = meshlib.STANDARD.replace(
    retry=meshlib.Retry(backoff=meshlib.Backoff(base=0.01, cap=0.05)),
)


def show_meshlib_logs() -> None:
    # meshlib logs each retry and each give-up at INFO on the "meshlib" logger;
    # a handler on that logger alone keeps httpx's own request lines out.
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("  log: %(message)s"))
    log = logging.getLogger("meshlib")
    log.addHandler(handler)
    log.setLevel(logging.INFO)


def main() -> None:
    show_meshlib_logs()
    # wrap() returns the same client, its transports now running POLICY.
    with (
        FaultServer() as server,
        meshlib.wrap(httpx.Client(base_url=server.url), POLICY) as client,
    ):
        # A GET meets a 503 and then a connection reset; both are retried.
        server.enqueue(Respond(503), Reset())
        response = client.get("/orders/42")
        print(
            f"GET /orders/42 -> {response.status_code} {response.text!r} "
            f"after {server.request_count} requests"
        )
        assert response.status_code == 200
        assert server.request_count == 3

        # A POST is not idempotent: its 503 goes back to the caller untouched.
        server.reset_log()
        server.enqueue(Respond(503))
        response = client.post("/orders", json={"sku": "X1"})
        print(f"POST /orders -> {response.status_code} after {server.request_count} request")
        assert response.status_code == 503
        assert server.request_count == 1

        # The same POST with an Idempotency-Key may be sent twice, so it is retried.
        server.reset_log()
        server.enqueue(Respond(503))
        response = client.post(
            "/orders", json={"sku": "X1"}, headers={"Idempotency-Key": "order-7"}
        )
        print(
            f"POST /orders with Idempotency-Key -> {response.status_code} "
            f"after {server.request_count} requests"
        )
        assert response.status_code == 200
        assert server.request_count == 2

        # One request with its own policy: no retries for this call only.
        server.reset_log()
        server.enqueue(Respond(503))
        response = client.get("/health", extensions={"meshlib.policy": POLICY.replace(retry=None)})
        print(
            f"GET /health with retry=None -> {response.status_code} "
            f"after {server.request_count} request"
        )
        assert response.status_code == 503
        assert server.request_count == 1
    print("ok")


if __name__ == "__main__":
    main()
