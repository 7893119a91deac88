"""Microseconds per successful request: bare httpx against meshlib, one process.

Run: python tests/benchmarks/bench_overhead.py [--requests N] [--rounds R]

Each round times every variant once, in turn, so drift on a shared, noisy
machine hits all of them alike; the table shows each variant's median over
the rounds and its ratio to bare httpx measured in the same run.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import httpx

import meshlib


def _ok(request: httpx.Request) -> httpx.Response:
    return httpx.Response(200, content=b"ok")


class _HeaderOnly(httpx.BaseTransport):
    """Bare httpx plus the one thing meshlib adds inside httpx: the deadline header."""

    def __init__(self, inner: httpx.BaseTransport) -> None:
        self.inner = inner

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        request.headers["x-envoy-expected-rq-timeout-ms"] = "30000"
        return self.inner.handle_request(request)


_OFF = meshlib.Policy(retry=None, timeout=None, breaker=None, bulkhead=None)


def _variants() -> dict[str, httpx.Client]:
    mock = httpx.MockTransport(_ok)
    return {
        "bare httpx": httpx.Client(transport=mock),
        "bare httpx + deadline header": httpx.Client(transport=_HeaderOnly(mock)),
        "meshlib STANDARD": meshlib.wrap(httpx.Client(transport=mock)),
        "meshlib STANDARD, external host": meshlib.wrap(httpx.Client(transport=mock)),
        "meshlib retry only (budget on)": meshlib.wrap(
            httpx.Client(transport=mock), _OFF.replace(retry=meshlib.Retry())
        ),
        "meshlib breaker only": meshlib.wrap(
            httpx.Client(transport=mock), _OFF.replace(breaker=meshlib.Breaker())
        ),
        "meshlib, every layer off": meshlib.wrap(httpx.Client(transport=mock), _OFF),
    }


def _time(call: Callable[[], object], requests: int) -> float:
    start = time.perf_counter()
    for _ in range(requests):
        call()
    return (time.perf_counter() - start) / requests * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=2000, help="requests per variant per round")
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    clients = _variants()
    # Inside the mesh (the deadline header is sent), except for the external variant.
    urls = {name: "http://orders.internal/items" for name in clients}
    urls["meshlib STANDARD, external host"] = "http://api.example.com/items"
    samples: dict[str, list[float]] = {name: [] for name in clients}
    for name, client in clients.items():  # warm up caches, routes and the import machinery
        _time(lambda c=client, u=urls[name]: c.get(u), 200)
    for _ in range(args.rounds):
        for name, client in clients.items():
            samples[name].append(_time(lambda c=client, u=urls[name]: c.get(u), args.requests))
    medians = {name: statistics.median(values) for name, values in samples.items()}
    bare = medians["bare httpx"]
    print(f"{'variant':<34} {'µs/request':>11} {'vs bare':>9} {'added µs':>9}")
    for name, median in medians.items():
        print(f"{name:<34} {median:>11.2f} {median / bare:>8.3f}x {median - bare:>9.2f}")
    with_header = medians["bare httpx + deadline header"]
    own = medians["meshlib STANDARD"] - with_header
    print(
        f"\nmeshlib's own overhead (STANDARD against bare + the same header): {own:.2f} µs,"
        f" {own / bare:.1%} of bare httpx"
    )
    print(f"{args.rounds} rounds x {args.requests} requests each, median per variant")


if __name__ == "__main__":
    main()
