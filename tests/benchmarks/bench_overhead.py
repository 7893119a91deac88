"""Microseconds per successful request: bare httpx against meshlib, one process.

Run: python tests/benchmarks/bench_overhead.py [--requests N] [--rounds R]

Each round times every variant once, in turn (the order rotating from round
to round, the collector run before each turn), so drift on a shared, noisy
machine hits all of them alike; the tables show each variant's median over
the rounds and its ratio to bare httpx measured in the same run. A layer's
own cost is STANDARD's time minus STANDARD's time with that layer off, both
to a host outside the mesh (no deadline header), so httpx's cost of one more
header does not hide in it. Everything runs on httpx.MockTransport: pure
overhead, no I/O.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import statistics
import time
from collections.abc import Callable

import httpx

import meshlib

INSIDE = "http://orders.internal/items"  # inside the mesh: the deadline header is sent
OUTSIDE = "http://api.example.com/items"  # outside: no header


def _ok(request: httpx.Request) -> httpx.Response:
    return httpx.Response(200, content=b"ok")


class _HeaderOnly(httpx.BaseTransport):
    """Bare httpx plus the one thing meshlib adds inside httpx: the deadline header."""

    def __init__(self, inner: httpx.BaseTransport) -> None:
        self.inner = inner

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        request.headers["x-envoy-expected-rq-timeout-ms"] = "30000"
        return self.inner.handle_request(request)


_STANDARD = meshlib.STANDARD
_OFF = meshlib.Policy(retry=None, timeout=None, breaker=None, bulkhead=None, tracing=None)


def _variants() -> dict[str, tuple[httpx.Client, str]]:
    mock = httpx.MockTransport(_ok)

    def wrapped(policy: meshlib.Policy) -> httpx.Client:
        return meshlib.wrap(httpx.Client(transport=mock), policy)

    return {
        "bare httpx": (httpx.Client(transport=mock), INSIDE),
        "bare httpx + deadline header": (httpx.Client(transport=_HeaderOnly(mock)), INSIDE),
        "meshlib STANDARD": (wrapped(_STANDARD), INSIDE),
        "meshlib STANDARD, outside the mesh": (wrapped(_STANDARD), OUTSIDE),
        "  without retry (and budget)": (wrapped(_STANDARD.replace(retry=None)), OUTSIDE),
        "  without timeout (deadline)": (wrapped(_STANDARD.replace(timeout=None)), OUTSIDE),
        "  without breaker": (wrapped(_STANDARD.replace(breaker=None)), OUTSIDE),
        "  without bulkhead": (wrapped(_STANDARD.replace(bulkhead=None)), OUTSIDE),
        "  without tracing (no SDK)": (wrapped(_STANDARD.replace(tracing=None)), OUTSIDE),
        "meshlib, every layer off": (wrapped(_OFF), OUTSIDE),
    }


def _time(call: Callable[[], object], requests: int) -> float:
    start = time.perf_counter()
    for _ in range(requests):
        call()
    return (time.perf_counter() - start) / requests * 1e6


def _rejected_call_cost(requests: int) -> tuple[float, float, int]:
    """Time calls an open breaker rejects, through the client and at meshlib's transport.

    Returns (µs per call through httpx.Client, µs per call at the transport,
    requests that reached the inner transport).
    """
    sent = 0

    def fail(request: httpx.Request) -> httpx.Response:
        nonlocal sent
        sent += 1
        return httpx.Response(503)

    policy = _STANDARD.replace(retry=None, breaker=meshlib.Breaker(consecutive=1, open_for=3600))
    mesh = meshlib.Mesh(default=policy)  # a fresh breaker each round
    client = meshlib.wrap(httpx.Client(transport=httpx.MockTransport(fail)), mesh)
    client.get(INSIDE)  # trips the breaker
    sent = 0

    def rejected() -> None:
        with contextlib.suppress(meshlib.CircuitOpen):
            client.get(INSIDE)

    transport = meshlib.Transport(httpx.MockTransport(fail), mesh)
    request = client.build_request("GET", INSIDE)

    def rejected_at_transport() -> None:
        with contextlib.suppress(meshlib.CircuitOpen):
            transport.handle_request(request)

    return _time(rejected, requests), _time(rejected_at_transport, requests), sent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=2000, help="requests per variant per round")
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    variants = _variants()
    samples: dict[str, list[float]] = {name: [] for name in variants}
    rejected: list[float] = []
    rejected_at_transport: list[float] = []
    for client, url in variants.values():  # warm up caches, routes and the import machinery
        _time(lambda c=client, u=url: c.get(u), 200)
    leaked = 0
    names = list(variants)
    for round_number in range(args.rounds):
        # As in _common.interleaved: the order rotates, and each variant's garbage
        # is collected before the next one's turn, so none pays for another's.
        shift = round_number % len(names)
        for name in names[shift:] + names[:shift]:
            client, url = variants[name]
            gc.collect()
            samples[name].append(_time(lambda c=client, u=url: c.get(u), args.requests))
        through_client, at_transport, sent = _rejected_call_cost(args.requests)
        rejected.append(through_client)
        rejected_at_transport.append(at_transport)
        leaked += sent
    medians = {name: statistics.median(values) for name, values in samples.items()}
    bare = medians["bare httpx"]
    print(f"{'variant':<38} {'µs/request':>11} {'vs bare':>9} {'added µs':>9}")
    for name, median in medians.items():
        print(f"{name:<38} {median:>11.2f} {median / bare:>8.3f}x {median - bare:>9.2f}")

    outside = medians["meshlib STANDARD, outside the mesh"]
    print("\nown cost of each layer (STANDARD outside the mesh minus STANDARD without it):")
    for name in (n for n in medians if n.startswith("  without ")):
        layer = name.removeprefix("  without ")
        print(f"  {layer:<36} {outside - medians[name]:>6.2f} µs")
    with_header = medians["bare httpx + deadline header"]
    own = medians["meshlib STANDARD"] - with_header
    total = medians["meshlib STANDARD"] - bare
    print(
        f"\nmeshlib's own overhead (STANDARD against bare + the same header): {own:.2f} µs,"
        f" {own / bare:.1%} of bare httpx"
    )
    print(f"total, deadline header included (STANDARD against bare): {total / bare:.1%}")
    print(
        f"a call rejected by an open breaker: {statistics.median(rejected_at_transport):.2f} µs"
        f" in meshlib's transport, {statistics.median(rejected):.2f} µs through httpx.Client"
        f" (request building included); requests sent by rejected calls: {leaked}"
    )
    print(f"{args.rounds} rounds x {args.requests} requests each, median per variant")


if __name__ == "__main__":
    main()
