"""What meshlib does when the upstream is down, measured on 127.0.0.1.

Run: python tests/benchmarks/bench_failure.py [--calls N]

Needs tenacity (a meshlib dependency). The upstream is meshlib's FaultServer
in a child process, answering 503 to everything until told to answer 200.

1. Requests that reach a 100%-down upstream for N calls: meshlib STANDARD
   with its retry budget (breaker off, to isolate the budget), meshlib
   without a budget (breaker off), tenacity with 3 attempts, and meshlib
   STANDARD with its breaker on.
2. Time per call once the breaker is open, beside a call that reaches a
   healthy upstream and one that gets a 503 (interleaved rounds, medians).
3. Time to recover: with Breaker(open_for=0.5), seconds from the upstream
   answering 200 again until a call through meshlib succeeds.

Backoff waits are removed (meshlib.testing.set_testing(True); tenacity's
sleep replaced by a no-op) wherever the waits are not what is measured: the
counts do not depend on them, and the run stays short.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable

import _common
import httpx

import meshlib
import meshlib.testing

Outcome = str


def outcome_of(call: Callable[[], httpx.Response]) -> Outcome:
    try:
        return str(call().status_code)
    except meshlib.MeshError as exc:
        return type(exc).__name__
    except httpx.HTTPStatusError as exc:
        return str(exc.response.status_code)
    except httpx.HTTPError as exc:
        return type(exc).__name__


def reaching_a_down_upstream(upstream: _common.ServerProcess, calls: int) -> list[tuple[str, ...]]:
    import tenacity

    def meshlib_call(policy: meshlib.Policy) -> tuple[Callable[[], httpx.Response], httpx.Client]:
        # A Mesh of its own: no breaker or budget state carried between scenarios.
        client = meshlib.wrap(httpx.Client(base_url=upstream.url), meshlib.Mesh(default=policy))
        return lambda: client.get("/items"), client

    no_breaker = meshlib.STANDARD.replace(breaker=None)
    no_budget = no_breaker.replace(retry=meshlib.Retry(budget=None))
    plain = httpx.Client(base_url=upstream.url)

    @tenacity.retry(
        stop=tenacity.stop_after_attempt(3),
        wait=tenacity.wait_random_exponential(multiplier=0.05, max=1.0),
        retry=tenacity.retry_if_exception_type(httpx.HTTPError),
        sleep=lambda seconds: None,  # waits removed, as set_testing does for meshlib
        reraise=True,
    )
    def with_tenacity() -> httpx.Response:
        response = plain.get("/items")
        response.raise_for_status()  # so that 5xx is retried at all
        return response

    scenarios: list[tuple[str, Callable[[], httpx.Response], httpx.Client | None]] = [
        ("meshlib STANDARD, budget on (breaker off)", *meshlib_call(no_breaker)),
        ("meshlib, no budget (breaker off)", *meshlib_call(no_budget)),
        ("tenacity, 3 attempts", with_tenacity, None),
        ("meshlib STANDARD, breaker on (budget on)", *meshlib_call(meshlib.STANDARD)),
    ]
    rows = []
    with meshlib.testing.set_testing(True):
        for name, call, client in scenarios:
            before = upstream.command("stats")["requests"]
            started = time.perf_counter()
            outcomes = Counter(outcome_of(call) for _ in range(calls))
            elapsed = time.perf_counter() - started
            reached = upstream.command("stats")["requests"] - before
            got = ", ".join(f"{n} {what}" for what, n in outcomes.most_common())
            rows.append(
                (name, str(calls), str(reached), f"{reached / calls:.2f}", got, f"{elapsed:.2f}")
            )
            if client is not None:
                client.close()
    plain.close()
    return rows


def open_breaker_cost(
    upstream: _common.ServerProcess, healthy: _common.ServerProcess, requests: int, rounds: int
) -> tuple[dict[str, float], int]:
    policy = meshlib.STANDARD.replace(breaker=meshlib.Breaker(open_for=3600))
    mesh = meshlib.Mesh(default=policy)
    client = meshlib.wrap(httpx.Client(base_url=upstream.url), mesh)
    with meshlib.testing.set_testing(True):
        for _ in range(40):  # the window needs 20 calls; half failing opens it
            with contextlib.suppress(meshlib.CircuitOpen):
                client.get("/items")
    request = client.build_request("GET", "/items")
    transport = client._transport
    assert isinstance(transport, meshlib.Transport)

    def rejected() -> None:
        with contextlib.suppress(meshlib.CircuitOpen):
            client.get("/items")

    def rejected_at_transport() -> None:
        with contextlib.suppress(meshlib.CircuitOpen):
            transport.handle_request(request)

    before = upstream.command("stats")["requests"]
    for _ in range(1000):
        rejected()
        rejected_at_transport()
    sent_by_rejected = upstream.command("stats")["requests"] - before
    to_healthy = httpx.Client(base_url=healthy.url)
    to_down = httpx.Client(base_url=upstream.url)
    medians, _ = _common.interleaved(
        {
            "a call the open breaker rejects (through httpx.Client)": rejected,
            "  the same, at meshlib's transport (no request building)": rejected_at_transport,
            "a call to a healthy upstream (bare httpx, 200)": lambda: to_healthy.get("/items"),
            "a call to the down upstream (bare httpx, one 503)": lambda: to_down.get("/items"),
        },
        requests,
        rounds,
        warmup=50,
        max_seconds=30.0,
    )
    for c in (client, to_healthy, to_down):
        c.close()
    return medians, sent_by_rejected


def time_to_recover(upstream: _common.ServerProcess, trials: int) -> list[tuple[float, int, int]]:
    """Return (seconds, calls rejected meanwhile, requests sent meanwhile) per trial."""
    policy = meshlib.STANDARD.replace(breaker=meshlib.Breaker(open_for=0.5))
    results = []
    with meshlib.testing.set_testing(True):
        for _ in range(trials):
            upstream.command("default 503")
            client = meshlib.wrap(httpx.Client(base_url=upstream.url), meshlib.Mesh(default=policy))
            for _ in range(100):  # trip the breaker: at most 100 calls
                try:
                    client.get("/items")
                except meshlib.CircuitOpen:
                    break
            before = upstream.command("default ok")["requests"]  # the upstream is back now
            back = time.monotonic()
            rejected = 0
            give_up = back + 5.0
            while time.monotonic() < give_up:
                try:
                    if client.get("/items").status_code == 200:
                        break
                except meshlib.CircuitOpen:
                    rejected += 1
                time.sleep(0.002)  # a caller polling every 2 ms
            recovered = time.monotonic() - back
            sent = upstream.command("stats")["requests"] - before
            results.append((recovered, rejected, sent))
            client.close()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=1000, help="calls to the down upstream")
    parser.add_argument("--requests", type=int, default=300, help="per round, open breaker")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--trials", type=int, default=5, help="recovery trials")
    args = parser.parse_args()

    with _common.ServerProcess("503") as upstream, _common.ServerProcess("ok") as healthy:
        rows = reaching_a_down_upstream(upstream, args.calls)
        costs, sent_by_rejected = open_breaker_cost(upstream, healthy, args.requests, args.rounds)
        recoveries = time_to_recover(upstream, args.trials)

    print(f"\n### {args.calls} calls to an upstream that answers 503 to everything\n")
    print("(backoff waits removed: meshlib.testing.set_testing(True), tenacity sleep=no-op)\n")
    headers = ("client", "calls", "requests sent", "per call", "callers got", "seconds")
    print(_common.table(headers, rows))

    print(f"\n### Once the breaker is open ({args.rounds} rounds x {args.requests}, medians)\n")
    print(_common.table(("call", "µs"), [(k, f"{v:.1f}") for k, v in costs.items()]))
    print(f"\nrequests sent upstream by 2000 rejected calls: {sent_by_rejected}")

    print("\n### Time to recover, Breaker(open_for=0.5), upstream back right after the trip\n")
    rows = [
        (str(i + 1), f"{s:.3f}", str(rejected), str(sent))
        for i, (s, rejected, sent) in enumerate(recoveries)
    ]
    print(
        _common.table(
            ("trial", "seconds to first 200", "calls rejected meanwhile", "requests sent"), rows
        )
    )
    seconds = [s for s, _, _ in recoveries]
    print(
        f"\nmedian {statistics.median(seconds):.3f} s, max {max(seconds):.3f} s "
        "(the open period, then one probe; callers polled every 2 ms)"
    )
    print(f"python {sys.version.split()[0]}, httpx {httpx.__version__}")


if __name__ == "__main__":
    main()
