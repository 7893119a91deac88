"""What one sidecar proxy hop costs, beside what meshlib costs, on 127.0.0.1.

Run: python tests/benchmarks/bench_sidecar.py [--requests N]

The same GET, sequentially, four ways: direct to the upstream, through a
client wrapped with meshlib.STANDARD, through a local HAProxy (the hop a
sidecar adds), and through HAProxy with meshlib. The upstream is meshlib's
FaultServer answering 200 with keep-alive, in a child process; HAProxy is
started from a generated config in a temporary folder when ``haproxy`` is on
PATH (Debian: ``apt-get install haproxy``), else its rows are skipped.

The variants are interleaved request by request (the order rotates each
time), so noise on a shared machine hits them alike; p50 and p99 are over the
N requests of each. Latency over a real socket is noisy at the microsecond
level, so meshlib's cost is also measured precisely on httpx.MockTransport
(interleaved rounds, medians), and its share of one hop uses that figure.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import _common
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
INSTALL_HINT = (
    "haproxy not found on PATH: the proxy rows are skipped. Install it to measure a hop:\n"
    "  Debian/Ubuntu: apt-get install haproxy    macOS: brew install haproxy"
)


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

    def __enter__(self) -> HAProxy:
        config = Path(self._dir.name) / "haproxy.cfg"
        config.write_text(HAPROXY_CONFIG.format(port=self.port, upstream=self.upstream))
        # -db: stay in the foreground, so this process owns it and can stop it.
        self._proc = subprocess.Popen(
            [self.binary, "-db", "-q", "-f", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            _common.wait_for_port(self.port, timeout=5.0)
        except RuntimeError:
            self.__exit__(None, None, None)
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
            if proc.stderr is not None:
                proc.stderr.close()
        self._dir.cleanup()


def latencies(
    variants: dict[str, Callable[[], object]], requests: int, max_seconds: float
) -> dict[str, list[float]]:
    """Time each variant's call `requests` times, interleaved; return µs per call."""
    names = list(variants)
    samples: dict[str, list[float]] = {name: [] for name in names}
    for name in names:  # warm up: connections open, caches filled
        for _ in range(50):
            variants[name]()
    stop_at = time.monotonic() + max_seconds
    clock = time.perf_counter
    for index in range(requests):
        shift = index % len(names)
        for name in names[shift:] + names[:shift]:
            call = variants[name]
            start = clock()
            call()
            samples[name].append((clock() - start) * 1e6)
        if time.monotonic() > stop_at:
            break
    return samples


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3000, help="sequential, per variant")
    parser.add_argument("--max-seconds", type=float, default=60.0, help="soft bound")
    args = parser.parse_args()
    binary = shutil.which("haproxy")
    if binary is None:
        print(INSTALL_HINT)

    with _common.ServerProcess("ok") as upstream:
        clients: list[httpx.Client] = []

        def client(base: str, policy: meshlib.Policy | None) -> Callable[[], object]:
            made = httpx.Client(base_url=base)
            clients.append(made)
            if policy is not None:
                meshlib.wrap(made, policy)
            return lambda: made.get("/items")

        variants = {
            "direct": client(upstream.url, None),
            "meshlib STANDARD": client(upstream.url, meshlib.STANDARD),
        }
        proxy = HAProxy(binary, upstream.port) if binary is not None else None
        try:
            if proxy is not None:
                proxy.__enter__()
                variants["HAProxy hop"] = client(proxy.url, None)
                variants["HAProxy hop + meshlib"] = client(proxy.url, meshlib.STANDARD)
            samples = latencies(variants, args.requests, args.max_seconds)
        finally:
            for made in clients:
                made.close()
            if proxy is not None:
                proxy.__exit__(None, None, None)

    bare_mock, meshlib_mock, header_mock = mock_overhead(2000, 15)

    count = min(len(v) for v in samples.values())
    p50 = {name: _common.percentile(v, 0.50) for name, v in samples.items()}
    p99 = {name: _common.percentile(v, 0.99) for name, v in samples.items()}
    print(f"\n### Sequential GETs on 127.0.0.1 ({count} per variant, interleaved)\n")
    rows = [
        (name, f"{p50[name]:.0f}", f"{p99[name]:.0f}", f"{p50[name] - p50['direct']:+.0f}")
        for name in samples
    ]
    print(_common.table(("variant", "p50 µs", "p99 µs", "p50 added µs"), rows))

    print("\n### What a hop adds beside what meshlib adds\n")
    added = [
        ("what meshlib adds (real socket, p50)", p50["meshlib STANDARD"] - p50["direct"]),
        ("what meshlib adds (real socket, p99)", p99["meshlib STANDARD"] - p99["direct"]),
        (
            "what meshlib adds (MockTransport, median, header included)",
            meshlib_mock,
        ),
    ]
    rows = [(label, f"{value:+.1f}") for label, value in added]
    if "HAProxy hop" in samples:
        hop50 = p50["HAProxy hop"] - p50["direct"]
        hop99 = p99["HAProxy hop"] - p99["direct"]
        rows.insert(0, ("what one proxy hop adds (p99)", f"{hop99:+.1f}"))
        rows.insert(0, ("what one proxy hop adds (p50)", f"{hop50:+.1f}"))
        print(_common.table(("figure", "µs"), rows))
        share = meshlib_mock / hop50
        share_socket = (p50["meshlib STANDARD"] - p50["direct"]) / hop50
        print(
            f"\nmeshlib's share of one hop (p50): {share:.1%} from the MockTransport figure, "
            f"{share_socket:.1%} from the socket p50s; bar: at most 10% "
            f"-> {_common.verdict(share <= 0.10)}"
        )
    else:
        print(_common.table(("figure", "µs"), rows))
        print("\nno hop measured: install haproxy for meshlib's share of a hop")
    print(
        f"(MockTransport: bare httpx {bare_mock:.1f} µs per request; the deadline header "
        f"alone adds {header_mock:.1f} µs inside httpx)"
    )
    print(f"python {sys.version.split()[0]}, httpx {httpx.__version__}")


if __name__ == "__main__":
    main()
