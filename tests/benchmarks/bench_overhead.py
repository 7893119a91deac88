"""Microseconds per successful request: bare httpx against meshlib, one process.

Run: python tests/benchmarks/bench_overhead.py [--requests N] [--rounds R] [--clock cpu|wall]

Each round times every variant once, in turn (the order rotating from round
to round, the collector run before each turn), so drift on a shared, noisy
machine hits all of them alike; the tables show each variant's figure and
its ratio to bare httpx measured in the same run. The figure is, by default,
the variant's best round by this thread's CPU time: the work is pure CPU, so
other processes can only add to a round (a preempted thread's waiting is not
counted, its cold caches are), and the best of many rounds is the cost
itself, as timeit reports. ``--clock wall`` gives the median of wall time
over the rounds instead, which a shared machine's load moves by several
microseconds. A layer's
own cost is STANDARD's time minus STANDARD's time with that layer off, both
to a host outside the mesh (no deadline header), so httpx's cost of one more
header does not hide in it. Everything runs on httpx.MockTransport: pure
overhead, no I/O.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import _common
import httpx

import meshlib

INSIDE = "http://orders.internal/items"  # inside the mesh: the deadline header is sent
OUTSIDE = "http://api.example.com/items"  # outside: no header

_STANDARD = meshlib.STANDARD
_OFF = meshlib.Policy(retry=None, timeout=None, breaker=None, bulkhead=None, tracing=None)
REJECTED = "a call rejected by an open breaker"
STANDARD_MESH = "meshlib STANDARD in a Mesh"
WATCHED = "  the same, a status page attached"
REJECTED_AT_TRANSPORT = "  the same, at meshlib's transport"
XDS = "meshlib, configured by xDS (one cluster)"
XDS_IN_CODE = "  the same table, given in code"
FALLBACK_STALE = "meshlib STANDARD + Fallback(stale=60)"
FALLBACK_STATIC = "meshlib STANDARD + Fallback(status=503)"


def _variants(cleanup: contextlib.ExitStack) -> dict[str, Callable[[], object]]:
    mock = httpx.MockTransport(_common.ok)

    def get(policy: meshlib.Policy | None, url: str) -> Callable[[], object]:
        client = httpx.Client(transport=mock)
        if policy is not None:
            meshlib.wrap(client, policy)
        return lambda: client.get(url)

    def through(mesh: meshlib.Mesh) -> Callable[[], object]:
        client = meshlib.wrap(httpx.Client(transport=mock), mesh)
        return lambda: client.get(INSIDE)

    watched = meshlib.Mesh(default=_STANDARD)
    meshlib.admin.app(watched)  # a status page watches it: latency sketches on

    header = httpx.Client(transport=_common.HeaderOnly(mock))
    return {
        "bare httpx": get(None, INSIDE),
        "bare httpx + deadline header": lambda: header.get(INSIDE),
        "meshlib STANDARD": get(_STANDARD, INSIDE),
        "meshlib STANDARD, outside the mesh": get(_STANDARD, OUTSIDE),
        "  without retry (and budget)": get(_STANDARD.replace(retry=None), OUTSIDE),
        "  without timeout (deadline)": get(_STANDARD.replace(timeout=None), OUTSIDE),
        "  without breaker": get(_STANDARD.replace(breaker=None), OUTSIDE),
        "  without bulkhead": get(_STANDARD.replace(bulkhead=None), OUTSIDE),
        "  without tracing (no SDK)": get(_STANDARD.replace(tracing=None), OUTSIDE),
        "meshlib, every layer off": get(_OFF, OUTSIDE),
        STANDARD_MESH: through(meshlib.Mesh(default=_STANDARD)),
        WATCHED: through(watched),
        # Every good response kept in the destination's stale store (its key, its
        # headers, its body): the store's cost on the success path.
        FALLBACK_STALE: get(_STANDARD.replace(fallback=meshlib.Fallback(stale=60)), INSIDE),
        # A static answer only: nothing is kept, so a success costs what STANDARD's does.
        FALLBACK_STATIC: get(_STANDARD.replace(fallback=meshlib.Fallback(status=503)), INSIDE),
        **_xds_variants(mock, cleanup),
    }


def _xds_variants(
    mock: httpx.MockTransport, cleanup: contextlib.ExitStack
) -> dict[str, Callable[[], object]]:
    """A Mesh from a control plane (a loopback ADS server) against the same table in code.

    Empty, with a note, when the xds extra is missing. The server and the Mesh's
    stream stay up for the run; `cleanup` stops them (their threads would keep the
    process from exiting).
    """
    try:
        import grpc  # noqa: F401 - only to learn whether the extra is there
    except ImportError:
        print("(no xDS rows: pip install -e '.[xds]')")
        return {}
    import json
    import tempfile

    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository: tests/
    from tests import xds_snapshots
    from tests.xds_server import AdsServer

    server = cleanup.enter_context(AdsServer())
    server.set_snapshot(xds_snapshots.one_cluster([9]))  # MockTransport answers, not port 9
    entry = {"server_uri": server.address, "channel_creds": [{"type": "insecure"}]}
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as bootstrap:
        json.dump({"xds_servers": [entry], "node": {"id": "bench"}}, bootstrap)
    cleanup.callback(os.unlink, bootstrap.name)
    xds = meshlib.Mesh.from_xds(bootstrap.name, watch=[xds_snapshots.HOST], ready_timeout=30)
    cleanup.callback(xds.close)
    in_code = meshlib.Mesh(
        default=xds.default, destinations=xds.destinations, clusters=xds.clusters
    )
    url = f"http://{xds_snapshots.HOST}/items"
    by_xds = meshlib.wrap(httpx.Client(transport=mock), xds)
    by_code = meshlib.wrap(httpx.Client(transport=mock), in_code)
    assert by_xds.get(url).status_code == 200, "the xDS mesh did not route the request"
    return {XDS: lambda: by_xds.get(url), XDS_IN_CODE: lambda: by_code.get(url)}


def _rejected_calls() -> tuple[Callable[[], object], Callable[[], object], list[int]]:
    """Return calls an open breaker rejects, through the client and at meshlib's transport.

    The third item counts the requests that reached the inner transport after the trip.
    """
    sent = [0]

    def fail(request: httpx.Request) -> httpx.Response:
        sent[0] += 1
        return httpx.Response(503)

    policy = _STANDARD.replace(retry=None, breaker=meshlib.Breaker(consecutive=1, open_for=3600))
    mesh = meshlib.Mesh(default=policy)
    client = meshlib.wrap(httpx.Client(transport=httpx.MockTransport(fail)), mesh)
    client.get(INSIDE)  # trips the breaker, open for the rest of the run
    sent[0] = 0
    transport = meshlib.Transport(httpx.MockTransport(fail), mesh)
    request = client.build_request("GET", INSIDE)

    def rejected() -> None:
        with contextlib.suppress(meshlib.CircuitOpen):
            client.get(INSIDE)

    def rejected_at_transport() -> None:
        with contextlib.suppress(meshlib.CircuitOpen):
            transport.handle_request(request)

    return rejected, rejected_at_transport, sent


def _sketch_cost(count: int = 20_000) -> float:
    """Return the microseconds one measured attempt adds: a clock read and a sketch add."""
    from meshlib._runtime import runtime
    from meshlib._sketch import LatencySketch

    sketch, clock = LatencySketch(), runtime.clock
    started = clock.now()

    def measure() -> None:
        ended = clock.now()
        sketch.add(ended - started, ended)

    return min(_common.time_calls(measure, count) for _ in range(5))


def _store_cost(count: int = 20_000) -> float:
    """Return the microseconds a stale store adds to a good response: its key, entry and put."""
    from meshlib._fallback import FallbackPlan, StaleStore

    settings = meshlib.Fallback(stale=60)
    plan = FallbackPlan(settings, StaleStore(settings.max_entries, settings.max_bytes), None)
    request = httpx.Request("GET", INSIDE, headers={"x-envoy-expected-rq-timeout-ms": "30000"})
    response = httpx.Response(
        200, headers={"content-type": "application/json"}, content=b"ok", request=request
    )

    def keep() -> None:
        plan.keep(request, request.stream, response, 0.0, False)

    return min(_common.time_calls(keep, count) for _ in range(5))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=2000, help="requests per variant per round")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument(
        "--clock",
        choices=("cpu", "wall"),
        default="cpu",
        help="cpu: each variant's best round of thread CPU time; wall: its median wall time",
    )
    args = parser.parse_args()
    with contextlib.ExitStack() as cleanup:
        _run(args, cleanup)


def _run(args: argparse.Namespace, cleanup: contextlib.ExitStack) -> None:
    variants = _variants(cleanup)
    rejected, rejected_at_transport, sent = _rejected_calls()
    cpu = args.clock == "cpu"
    medians, rounds = _common.interleaved(
        {**variants, REJECTED: rejected, REJECTED_AT_TRANSPORT: rejected_at_transport},
        args.requests,
        args.rounds,
        clock=time.thread_time if cpu else time.perf_counter,
        summary=min if cpu else statistics.median,
    )
    bare = medians["bare httpx"]
    print(f"{'variant':<38} {'µs/request':>11} {'vs bare':>9} {'added µs':>9}")
    for name in variants:
        median = medians[name]
        print(f"{name:<38} {median:>11.2f} {median / bare:>8.3f}x {median - bare:>9.2f}")

    outside = medians["meshlib STANDARD, outside the mesh"]
    print("\nown cost of each layer (STANDARD outside the mesh minus STANDARD without it):")
    for name in (n for n in variants if n.startswith("  without ")):
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
    sketch = medians[WATCHED] - medians[STANDARD_MESH]
    watched_own = medians[WATCHED] - with_header
    print(
        f"with a status page attached (its latency sketch, the only cost it adds to a call):"
        f" {sketch:+.2f} µs; own overhead then {watched_own:.2f} µs,"
        f" {watched_own / bare:.1%} of bare httpx; the sketch alone (clock read and add):"
        f" {_sketch_cost():.2f} µs per attempt"
    )
    standard = medians["meshlib STANDARD"]
    print(
        f"fallback on, every good response kept (stale store):"
        f" {medians[FALLBACK_STALE] - standard:+.2f} µs against STANDARD"
        f" (the store alone: {_store_cost():.2f} µs per response kept);"
        f" a static answer only: {medians[FALLBACK_STATIC] - standard:+.2f} µs"
    )
    if XDS in medians:
        print(
            f"configured by xDS: {medians[XDS] - medians[XDS_IN_CODE]:+.2f} µs against"
            " the same table given in code"
        )
    print(
        f"{REJECTED}: {medians[REJECTED_AT_TRANSPORT]:.2f} µs"
        f" in meshlib's transport, {medians[REJECTED]:.2f} µs through httpx.Client"
        f" (request building included); requests sent by rejected calls: {sent[0]}"
    )
    figure = "best round of thread CPU time" if cpu else "median wall time"
    print(f"{rounds} rounds x {args.requests} requests each; per variant: its {figure}")


if __name__ == "__main__":
    main()
