"""Load under faults: thousands of requests through one meshlib-wrapped client.

Run: python tests/benchmarks/load.py [--requests N] [--threads T] [--seed S] [--bare]
     [--no-lag-bar] [--smoke]

The upstream is meshlib's FaultServer in a child process (so its threads
never hold this process's GIL or event loop), whose default behaviour is
``Chaos``: about 10% faults, drawn by a seeded random.Random: 4% connection
resets, 3% 503s and 3% answers 200 ms late. Retries use real backoff waits.

1. async: N tasks (5000) started at once, 50 per event-loop turn, through one
   wrapped AsyncClient (httpx's default pool of 100 connections and 5 s
   timeouts, pool timeout included); about 5% of the tasks are cancelled with
   task.cancel() after a random delay of up to 1 s. The policy is STANDARD
   with its bulkhead set to 32 calls in flight and a queue for the rest
   (Bulkhead(max_concurrent=32, max_queued=N)): the tasks wait in meshlib's
   queue rather than in httpcore's pool, whose bookkeeping is quadratic in
   the requests queued in it (encode/httpcore#1035). Three bursts on the
   same client: a warm-up and a memory burst under tracemalloc, then a burst
   without it (tracemalloc slows every allocation) for lag and outcomes.
2. sync: T threads (64) on one wrapped Client (STANDARD, max_connections=32,
   so threads wait for the pool) sharing about N requests; about 5% of calls
   run under a meshlib.deadline of 1-50 ms, the sync caller's way of giving up.

Afterwards it checks, and exits 1 if any check fails: no httpx.PoolTimeout;
no leaked connection (every pooled connection idle or closed, no request
left in httpcore's pool, and the server holding no connection once the
client is closed); traced memory after the memory burst within 10% of what
it was after the warm-up (gc.collect() before each reading); and the
event-loop lag, relative: under the same burst, meshlib's worst lag (from a
ticker task that sleeps 10 ms and records its worst oversleep, the garbage
collector's pauses included) at most half of bare httpx's.

3. bare httpx, for that bar: the same async burst (a warm-up burst, then the
   measured one) on bare httpx, every task straight into the client as
   meshlib's callers do, so all of them wait in httpcore's pool (about 40 s
   a burst here). --no-lag-bar skips it (the bar is then not checked).
   --bare also runs it gated by an asyncio.Semaphore of the same size in
   front of client.get, what a careful application does by hand (shown, not
   gated on). The bare runs' other checks are shown, not gated on.

--smoke: a quick run for CI (a few hundred requests): every check is shown,
none fails the run.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import random
import sys
import threading
import time
import tracemalloc
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import _common
import httpx

import meshlib

CANCEL_SHARE = 0.05
GIVE_UP_SHARE = 0.05
START_BATCH = 50
LAG_TICK = 0.010
LAG_BAR = 0.5  # meshlib's worst loop lag, GC pauses included, at most this share of bare httpx's
MEMORY_BAR = 0.10
PHASE_LIMIT = 60.0  # seconds: a phase still running then has failed


@dataclass
class Phase:
    name: str
    outcomes: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0
    checks: list[tuple[str, str, bool]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    #: worst event-loop lag with the collector's pauses, without them, longest pause (s)
    lag: tuple[float, float, float] = (0.0, 0.0, 0.0)
    #: the most tasks in flight at once during the measured burst
    peak: int = 0

    def check(self, what: str, value: str, passed: bool) -> None:
        self.checks.append((what, value, passed))


def pool_state(client: httpx.Client | httpx.AsyncClient) -> tuple[Counter[str], int, list[str]]:
    """Return httpcore's pool: connections by state, requests it holds, the busy ones shown."""
    transport: Any = client._transport
    # meshlib's transport -> httpx's -> httpcore's pool (bare httpx: httpx's -> pool)
    pool = getattr(transport, "inner", transport)._pool
    states: Counter[str] = Counter()
    busy: list[str] = []
    for connection in pool.connections:
        if connection.is_closed():
            states["closed"] += 1
        elif connection.is_idle():
            states["idle"] += 1
        else:
            states["in use or connecting"] += 1
            h11 = getattr(getattr(connection, "_connection", None), "_h11_state", None)
            where = f"h11 {h11.our_state}/{h11.their_state}" if h11 is not None else "connecting"
            busy.append(f"{connection!r} ({where})")
    return states, len(pool._requests), busy


def check_pool(phase: Phase, client: httpx.Client | httpx.AsyncClient) -> None:
    states, held, busy = pool_state(client)
    shown = ", ".join(f"{n} {state}" for state, n in sorted(states.items())) or "empty"
    phase.check("pooled connections after the run", shown, not busy)
    phase.check("requests httpcore's pool still holds", str(held), held == 0)
    if busy:
        phase.notes.append(
            "busy connections left behind: "
            + "; ".join(busy)
            + ". With h11 DONE/DONE the response was read in full and its close never "
            "finished: an asyncio task.cancel() landed inside httpcore's response close, "
            "which anyio's shield does not stop (meshlib never lets a cancellation into "
            "a close; bare httpx strands them)."
        )


def check_unexpected(phase: Phase) -> None:
    unexpected = sum(n for what, n in phase.outcomes.items() if what.startswith("unexpected"))
    phase.check("exceptions other than httpx's and meshlib's", str(unexpected), unexpected == 0)


def check_server_side(phase: Phase, server: _common.ServerProcess) -> None:
    give_up = time.monotonic() + 3.0  # a 200 ms slow answer may still be on its way out
    while True:
        open_now = server.command("stats")["open"]
        if open_now == 0 or time.monotonic() > give_up:
            break
        time.sleep(0.02)
    phase.check("server connections open after close", str(open_now), open_now == 0)


class LagMeter:
    """A ticker task's oversleeps, and the garbage collector's pauses to tell them apart."""

    def __init__(self) -> None:
        self.ticks: list[tuple[float, float]] = []
        self.pauses: list[tuple[float, float]] = []
        self._gc_started = 0.0
        self._running = False

    def _on_gc(self, phase: str, info: dict[str, int]) -> None:
        now = time.perf_counter()
        if phase == "start":
            self._gc_started = now
        else:
            self.pauses.append((self._gc_started, now))

    async def run(self) -> None:
        self._running = True
        gc.callbacks.append(self._on_gc)
        try:
            while self._running:
                started = time.perf_counter()
                await asyncio.sleep(LAG_TICK)
                self.ticks.append((started, time.perf_counter()))
        finally:
            gc.callbacks.remove(self._on_gc)

    def stop(self) -> None:
        self._running = False

    def worst(self) -> tuple[float, float, float]:
        """Return (worst oversleep, longest GC pause, worst oversleep less its GC pauses)."""
        worst = worst_without_gc = 0.0
        for started, ended in self.ticks:
            lag = ended - started - LAG_TICK
            in_gc = sum(
                min(ended, p_end) - max(started, p_start)
                for p_start, p_end in self.pauses
                if p_start < ended and p_end > started
            )
            worst = max(worst, lag)
            worst_without_gc = max(worst_without_gc, lag - in_gc)
        longest_gc = max((end - start for start, end in self.pauses), default=0.0)
        return worst, longest_gc, worst_without_gc


async def run_async(
    server: _common.ServerProcess, args: argparse.Namespace, *, bare: str | None = None
) -> Phase:
    """Run three bursts: warm-up, memory (both under tracemalloc), then lag and outcomes.

    `bare`: None for meshlib; "gated" or "ungated" for bare httpx with or
    without a semaphore in front of the client, which skip the memory burst.
    """
    who = f"bare httpx, {bare}, for comparison" if bare else "meshlib"
    phase = Phase(f"async, {who}: {args.requests} concurrent tasks, one AsyncClient")
    rng = random.Random(args.seed)
    loop = asyncio.get_running_loop()
    client = httpx.AsyncClient(
        base_url=server.url,
        limits=httpx.Limits(
            max_connections=args.connections, max_keepalive_connections=args.connections
        ),
        timeout=httpx.Timeout(5.0),
    )
    # Calls beyond `concurrency` wait outside httpcore's pool, whose bookkeeping is
    # quadratic in the number of requests queued in it (encode/httpcore#1035): in
    # meshlib's bulkhead (a deque), or for bare httpx in an asyncio.Semaphore;
    # ungated, bare httpx shows what that pool does with all of them.
    gate: asyncio.Semaphore | None = None
    if bare == "gated":
        gate = asyncio.Semaphore(args.concurrency)
    elif bare is None:
        bulkhead = meshlib.Bulkhead(max_concurrent=args.concurrency, max_queued=args.requests)
        # STANDARD with that bulkhead; a Mesh of this phase only.
        meshlib.wrap(client, meshlib.Mesh(default=meshlib.STANDARD.replace(bulkhead=bulkhead)))
    in_flight = peak = 0

    async def get(index: int) -> httpx.Response:
        if gate is None:
            return await client.get(f"/items/{index}")
        async with gate:
            return await client.get(f"/items/{index}")

    async def one(index: int) -> str:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        try:
            response = await get(index)
            return str(response.status_code)
        except (httpx.HTTPError, meshlib.MeshError) as exc:
            return type(exc).__name__
        except Exception as exc:  # anything else is a finding, not a crash
            return f"unexpected {type(exc).__name__}"
        finally:
            in_flight -= 1

    async def burst() -> tuple[list[asyncio.Task[str]], int]:
        tasks: list[asyncio.Task[str]] = []
        cancels = 0
        for index in range(args.requests):
            task = asyncio.ensure_future(one(index))
            tasks.append(task)
            if rng.random() < CANCEL_SHARE:
                loop.call_later(rng.uniform(0.0, 1.0), task.cancel)
                cancels += 1
            if index % START_BATCH == START_BATCH - 1:
                await asyncio.sleep(0)
        _, pending = await asyncio.wait(tasks, timeout=PHASE_LIMIT)
        for task in pending:
            task.cancel()
        if pending:
            phase.notes.append(f"{len(pending)} tasks still running after {PHASE_LIMIT:.0f} s")
        return tasks, cancels

    meter = LagMeter()

    def tally(tasks: list[asyncio.Task[str]], into: Counter[str]) -> None:
        for task in tasks:
            if task.cancelled():
                into["cancelled"] += 1
            elif task.done():
                into[task.result()] += 1

    seen: Counter[str] = Counter()
    before = after = 0
    if bare is None:
        tracemalloc.start()
        try:
            # 1. Warm-up: a full burst, so that what grows with peak concurrency and keeps
            #    its size (asyncio's and anyio's task registries) has grown already.
            tally((await burst())[0], seen)
            gc.collect()
            before = tracemalloc.get_traced_memory()[0]
            # 2. Memory: a second burst; what it leaves behind is what it leaked.
            tally((await burst())[0], seen)
            gc.collect()
            after = tracemalloc.get_traced_memory()[0]
        finally:
            tracemalloc.stop()
    else:
        tally((await burst())[0], seen)  # the same warm-up, without tracemalloc
        gc.collect()
    pool_timeouts = seen["PoolTimeout"]
    try:
        # 3. Lag, outcomes, pool: a third burst without tracemalloc, whose hook on
        #    every allocation would slow each event-loop turn two to three times.
        ticker = asyncio.ensure_future(meter.run())
        peak = 0
        started = time.perf_counter()
        tasks, cancels = await burst()
        phase.seconds = time.perf_counter() - started
        meter.stop()
        await ticker
        tally(tasks, phase.outcomes)
        del tasks
        check_pool(phase, client)
    finally:
        await client.aclose()
    phase.peak = peak
    earlier = ", ".join(f"{n} {what}" for what, n in seen.most_common())
    phase.notes.append(
        f"peak tasks in flight: {peak}; cancellations scheduled: {cancels}; "
        f"the earlier bursts got: {earlier}"
    )
    pool_timeouts += phase.outcomes["PoolTimeout"]
    bursts = "3 bursts" if bare is None else "2 bursts"
    phase.check(f"httpx.PoolTimeout raised ({bursts})", str(pool_timeouts), pool_timeouts == 0)
    check_unexpected(phase)
    check_server_side(phase, server)
    if bare is None:
        growth = (after - before) / before
        phase.check(
            "traced memory, after burst 2 vs after burst 1",
            f"{before / 1e6:.2f} MB -> {after / 1e6:.2f} MB ({growth:+.1%})",
            growth <= MEMORY_BAR,
        )
    worst, longest_gc, worst_without_gc = meter.worst()
    phase.lag = (worst, worst_without_gc, longest_gc)
    lags = sorted(ended - started - LAG_TICK for started, ended in meter.ticks)
    p99 = _common.percentile(lags, 0.99) if lags else 0.0
    phase.notes.append(
        f"event-loop lag: worst {worst * 1e3:.1f} ms with GC pauses, "
        f"{worst_without_gc * 1e3:.1f} ms without; p99 {p99 * 1e3:.1f} ms; "
        f"longest GC pause {longest_gc * 1e3:.1f} ms ({len(meter.pauses)} collections)"
    )
    return phase


def run_threads(server: _common.ServerProcess, requests: int, threads: int, seed: int) -> Phase:
    phase = Phase(f"sync: {threads} threads, one Client")
    client = meshlib.wrap(
        httpx.Client(
            base_url=server.url,
            limits=httpx.Limits(max_connections=32, max_keepalive_connections=32),
            timeout=httpx.Timeout(5.0),
        ),
        meshlib.Mesh(),
    )
    per_thread = -(-requests // threads)
    lock = threading.Lock()
    stop_at = time.monotonic() + PHASE_LIMIT

    def worker(number: int) -> None:
        rng = random.Random(seed * 1000 + number)
        seen: Counter[str] = Counter()
        for index in range(per_thread):
            if time.monotonic() > stop_at:
                seen["not run: time limit"] += per_thread - index
                break
            try:
                if rng.random() < GIVE_UP_SHARE:
                    with meshlib.deadline(rng.uniform(0.001, 0.05)):
                        seen[str(client.get(f"/items/{number}/{index}").status_code)] += 1
                else:
                    seen[str(client.get(f"/items/{number}/{index}").status_code)] += 1
            except (httpx.HTTPError, meshlib.MeshError) as exc:
                seen[type(exc).__name__] += 1
            except Exception as exc:  # anything else is a finding, not a crash
                seen[f"unexpected {type(exc).__name__}"] += 1
        with lock:
            phase.outcomes.update(seen)

    workers = [threading.Thread(target=worker, args=(n,), daemon=True) for n in range(threads)]
    started = time.perf_counter()
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join(max(0.0, stop_at + 10.0 - time.monotonic()))
    phase.seconds = time.perf_counter() - started
    alive = sum(thread.is_alive() for thread in workers)
    phase.check("threads finished", f"{threads - alive} of {threads}", alive == 0)
    try:
        check_pool(phase, client)
    finally:
        client.close()
    pool_timeouts = phase.outcomes["PoolTimeout"]
    phase.check("httpx.PoolTimeout raised", str(pool_timeouts), pool_timeouts == 0)
    check_unexpected(phase)
    check_server_side(phase, server)
    return phase


def report(phase: Phase) -> None:
    total = sum(phase.outcomes.values())
    print(f"\n### {phase.name}: {total} requests in {phase.seconds:.1f} s\n")
    rows = [(what, str(n), f"{n / total:.1%}") for what, n in phase.outcomes.most_common()]
    print(_common.table(("outcome", "requests", "share"), rows))
    print()
    rows = [(what, value, "ok" if passed else "FAILED") for what, value, passed in phase.checks]
    print(_common.table(("check", "value", ""), rows))
    for note in phase.notes:
        print(f"\n{note}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--threads", type=int, default=64)
    parser.add_argument("--connections", type=int, default=100, help="async pool size")
    parser.add_argument(
        "--concurrency", type=int, default=32, help="async calls in flight (bulkhead size)"
    )
    parser.add_argument("--seed", type=int, default=20240601)
    parser.add_argument(
        "--bare",
        action="store_true",
        help="also run the async burst on bare httpx gated by a semaphore (info only)",
    )
    parser.add_argument(
        "--no-lag-bar",
        action="store_true",
        help="skip the bare httpx burst the lag bar compares with (the bar is not checked)",
    )
    parser.add_argument("--smoke", action="store_true", help="show the checks, fail on none")
    args = parser.parse_args()
    started = time.perf_counter()
    # The child exits by itself after `lifetime`: the bare bursts take minutes.
    with _common.ServerProcess(f"chaos:{args.seed}", lifetime=900.0) as server:
        phases = [asyncio.run(run_async(server, args))]
        phases.append(run_threads(server, args.requests, args.threads, args.seed))
        stats = server.command("stats")
        for bare, asked in (("ungated", not args.no_lag_bar), ("gated", args.bare)):
            if asked:
                phases.append(asyncio.run(run_async(server, args, bare=bare)))
    if not args.no_lag_bar:
        mine, theirs = phases[0].lag[0], phases[2].lag[0]
        ratio = mine / theirs if theirs else float("inf")
        # Only a burst that kept the loop loaded says anything about lag: one rejected
        # at once (an open breaker, a full bulkhead) would pass vacuously.
        loaded = phases[0].peak >= args.requests // 2
        phases[0].check(
            "worst event-loop lag, GC pauses included, vs bare httpx's",
            f"{mine * 1e3:.1f} vs {theirs * 1e3:.1f} ms ({ratio:.2f}x)"
            + ("" if loaded else f"; not comparable: at most {phases[0].peak} calls in flight"),
            loaded and ratio <= LAG_BAR,
        )
    for phase in phases:
        report(phase)
    draws = stats["draws"]
    faults = sum(draws[:-1])
    print(
        f"\nupstream (meshlib phases): {stats['requests']} requests on {stats['connections']} "
        f"connections; Chaos drew {draws[0]} resets, {draws[1]} 503s, {draws[2]} slow answers "
        f"({faults / max(1, sum(draws)):.1%} faults)"
    )
    failed = [
        what
        for phase in phases
        if not phase.name.startswith("async, bare")
        for what, _, passed in phase.checks
        if not passed
    ]
    elapsed = time.perf_counter() - started
    verdict = "FAILED: " + "; ".join(failed) if failed else "all checks passed"
    if args.no_lag_bar:
        verdict += "; the lag bar not checked (--no-lag-bar)"
    print(f"\n{verdict} ({elapsed:.0f} s)")
    print(f"python {sys.version.split()[0]}, httpx {httpx.__version__}")
    if args.smoke:
        print("smoke run: the checks are shown, none fails it")
        return
    raise SystemExit(1 if failed else 0)


if __name__ == "__main__":
    main()
