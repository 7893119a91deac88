"""What the benchmark scripts share: interleaved timing, tables, peers, servers.

Not a test module and not part of meshlib: the scripts beside it import it as
``_common`` (Python puts a script's own folder first on ``sys.path``). Run as
a script (``python _common.py serve ok``) it is the upstream server process
that `ServerProcess` starts, so the server's threads never compete with the
measured client for the GIL.
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import json
import os
import select
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any

import httpx

from meshlib._deadline import DEFAULT_HEADER

#: What `pip install` brings every peer the scripts compare meshlib with.
BENCH_INSTALL = "pip install -e '.[bench]'"
#: The header meshlib sends to destinations inside the mesh; the baseline sends it too.
DEADLINE_HEADER = DEFAULT_HEADER


def require(*modules: str) -> None:
    """Import the peers a script compares with, or exit naming what is missing."""
    missing = []
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    if missing:
        print(
            f"missing benchmark-only package(s): {', '.join(missing)}\n"
            f"install the peers with:  {BENCH_INSTALL}",
            file=sys.stderr,
        )
        raise SystemExit(2)


def ok(request: httpx.Request) -> httpx.Response:
    """MockTransport handler: 200 with a two-byte body."""
    return httpx.Response(200, content=b"ok")


class HeaderOnly(httpx.BaseTransport):
    """Bare httpx plus the one thing meshlib adds inside httpx: the deadline header."""

    def __init__(self, inner: httpx.BaseTransport) -> None:
        self.inner = inner

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        request.headers[DEADLINE_HEADER] = "30000"
        return self.inner.handle_request(request)

    def close(self) -> None:
        self.inner.close()


def time_calls(
    call: Callable[[], object], count: int, clock: Callable[[], float] = time.perf_counter
) -> float:
    """Return microseconds per call over `count` calls in a row, by `clock`."""
    start = clock()
    for _ in range(count):
        call()
    return (clock() - start) / count * 1e6


def interleaved(
    variants: dict[str, Callable[[], object]],
    requests: int,
    rounds: int,
    *,
    warmup: int = 200,
    max_seconds: float = 120.0,
    clock: Callable[[], float] = time.perf_counter,
    summary: Callable[[list[float]], float] = statistics.median,
) -> tuple[dict[str, float], int]:
    """Time every variant once per round, in turn; return (µs per call, rounds run).

    Each variant's figure is `summary` (the median by default) of its rounds,
    timed by `clock` (wall time by default).

    The order rotates from round to round, so no variant always follows the
    same one (whose leftovers, garbage included, it would otherwise inherit);
    the collector runs before each variant's turn, so each pays for its own
    garbage. Stops early (after at least three rounds) when `max_seconds`
    have passed, so a slow machine shortens the run instead of stretching it.
    """
    for call in variants.values():
        time_calls(call, warmup)
    names = list(variants)
    samples: dict[str, list[float]] = {name: [] for name in names}
    stop_at = time.monotonic() + max_seconds
    done = 0
    for done in range(1, rounds + 1):
        shift = done % len(names)
        for name in names[shift:] + names[:shift]:
            gc.collect()
            samples[name].append(time_calls(variants[name], requests, clock))
        if done >= 3 and time.monotonic() > stop_at:
            break
    return {name: summary(values) for name, values in samples.items()}, done


def percentile(values: Sequence[float], fraction: float) -> float:
    """Return the `fraction` quantile (nearest rank) of `values`."""
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * len(ordered)) - 1))
    return ordered[index]


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Format rows as a Markdown table (also readable as plain text)."""
    cells = [[str(h) for h in headers], *[[str(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]

    def line(row: Sequence[str]) -> str:
        parts = [
            cell.ljust(widths[i]) if i == 0 else cell.rjust(widths[i]) for i, cell in enumerate(row)
        ]
        return "| " + " | ".join(parts) + " |"

    rule = "| " + " | ".join("-" * (w - 1) + (":" if i else "-") for i, w in enumerate(widths))
    return "\n".join([line(cells[0]), rule + " |", *(line(row) for row in cells[1:])])


def verdict(met: bool) -> str:
    return "MET" if met else "NOT MET"


def otel_sdk() -> tuple[Any, Any]:
    """Return a real OpenTelemetry SDK (tracer provider, meter provider) that keeps nothing.

    Spans go through a BatchSpanProcessor to an exporter that drops them, so
    the figures include the SDK's real span work but no export I/O; metrics
    go to an InMemoryMetricReader that is never collected.
    """
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import (
        BatchSpanProcessor,
        SpanExporter,
        SpanExportResult,
    )

    class DropSpans(SpanExporter):
        def export(self, spans: Any) -> SpanExportResult:
            return SpanExportResult.SUCCESS

        def shutdown(self) -> None:
            pass

    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(BatchSpanProcessor(DropSpans()))
    meter_provider = MeterProvider(metric_readers=[InMemoryMetricReader()])
    return tracer_provider, meter_provider


def free_port() -> int:
    """Return a port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for_port(port: int, timeout: float = 5.0) -> None:
    """Wait until something accepts connections on 127.0.0.1:`port`."""
    stop_at = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            if time.monotonic() > stop_at:
                raise RuntimeError(f"nothing listening on 127.0.0.1:{port}") from None
            time.sleep(0.02)


class ServerProcess:
    """A FaultServer in a child process, driven over its stdin and stdout.

    Args:
        kind: ``"ok"`` (Respond(200), keep-alive), ``"503"`` (always 503),
            ``"chaos:SEED"`` (the load test's fault mix, see `chaos`), or
            ``"flaky:SEED"`` (20% 503s decided per call, see `flaky_server`).
        lifetime: seconds after which the child exits by itself, whatever happens.
        tls: (certificate, key, CA) files: serve HTTPS and require a client
            certificate that CA issued (mTLS).
    """

    def __init__(
        self, kind: str = "ok", lifetime: float = 600.0, tls: tuple[str, str, str] | None = None
    ) -> None:
        self.kind = kind
        self.lifetime = lifetime
        self.tls = tls
        self._proc: subprocess.Popen[str] | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self._proc is not None
        return self._proc.pid

    def __enter__(self) -> ServerProcess:
        src = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        env = {**os.environ, "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", "")}
        self._proc = subprocess.Popen(
            [
                sys.executable,
                os.path.abspath(__file__),
                "serve",
                self.kind,
                str(self.lifetime),
                *(self.tls or ()),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            bufsize=1,
            env=env,
        )
        self.port = int(self._read_line(10.0))
        return self

    def _read_line(self, timeout: float) -> str:
        proc = self._proc
        assert proc is not None
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], timeout)
        if not ready:
            raise RuntimeError("the server process did not answer in time")
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError("the server process exited")
        return line.strip()

    def command(self, text: str) -> dict[str, Any]:
        """Send one command; return its JSON answer.

        ``stats``; ``reset`` (forget the requests seen); ``default ok|503|flaky:SEED``
        (``flaky`` starts its seeded sequence afresh); ``enqueue NAME`` (the next
        request gets one of `RETRY_AFTER`'s answers).
        """
        proc = self._proc
        assert proc is not None
        assert proc.stdin is not None
        proc.stdin.write(text + "\n")
        proc.stdin.flush()
        answer: dict[str, Any] = json.loads(self._read_line(10.0))
        return answer

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        proc = self._proc
        if proc is None:
            return
        self._proc = None
        with contextlib.suppress(OSError):
            assert proc.stdin is not None
            proc.stdin.close()  # EOF: the child stops its server and exits
        try:
            proc.wait(5.0)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5.0)
        if proc.stdout is not None:
            proc.stdout.close()


def chaos(seed: int) -> Any:
    """The load test's upstream: ~10% faults (4% resets, 3% 503s, 3% answers 200 ms late)."""
    import random

    from meshlib.testing.faults import Chaos, Reset, Respond

    return Chaos(
        [(0.04, Reset()), (0.03, Respond(503)), (0.03, Respond(200, delay=0.2))],
        rng=random.Random(seed),
    )


FLAKY_SHARE = 0.2


def flaky_server(ssl_context: Any) -> Any:
    """A FaultServer that can answer 20% 503s decided per call rather than per arrival.

    With ``keyed = seed``, the answer to a request is drawn from
    ``random.Random(f"{seed}:{target}:{n}")``, where `target` is the request's
    path (the caller puts its call number there) and `n` counts that path's
    requests so far: the nth attempt of call k gets the same answer whoever
    sends it and whatever else is in flight, so every variant meets the same
    sequence of faults call by call, however it orders its calls and retries.
    """
    import random

    from meshlib.testing.faults import FaultServer, Respond

    ok, fail = Respond(200), Respond(503, b"flaky")

    class FlakyServer(FaultServer):
        keyed: int | None = None

        def __init__(self, ssl_context: Any) -> None:
            super().__init__(ssl_context=ssl_context)
            self.attempts: dict[str, int] = {}
            self.attempts_lock = threading.Lock()

        def _perform(self, behaviour: Any, sock: Any, request: Any) -> bool:
            seed = self.keyed
            if seed is not None:
                with self.attempts_lock:
                    n = self.attempts[request.target] = self.attempts.get(request.target, 0) + 1
                draw = random.Random(f"{seed}:{request.target}:{n}").random()
                behaviour = fail if draw < FLAKY_SHARE else ok
            result: bool = super()._perform(behaviour, sock, request)
            return result

    return FlakyServer(ssl_context)


def retry_after(name: str) -> Any:
    """A 503 whose Retry-After is 1 s (``seconds``), 2 s ahead (``date``) or 60 s (``long``)."""
    from email.utils import formatdate

    from meshlib.testing.faults import Respond

    values = {
        "seconds": "1",
        "date": formatdate(time.time() + 2.0, usegmt=True),
        "long": "60",
    }
    return Respond(503, b"later", headers={"Retry-After": values[name]})


def _serve(kind: str, lifetime: float, tls: list[str]) -> None:
    from meshlib.testing.faults import Respond

    # The parent may die without closing our stdin: never outlive `lifetime`.
    watchdog = threading.Timer(lifetime, os._exit, args=(3,))
    watchdog.daemon = True
    watchdog.start()
    behaviours: dict[str, Any] = {"ok": Respond(200), "503": Respond(503, b"down")}
    mix = None
    context = None
    if tls:
        import ssl

        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=tls[2])
        context.load_cert_chain(tls[0], tls[1])
        context.verify_mode = ssl.CERT_REQUIRED

    server = flaky_server(context)

    def behaviour(name: str) -> Any:
        nonlocal mix
        server.keyed = None
        if name.startswith("chaos:"):
            mix = chaos(int(name.partition(":")[2]))
            return mix
        if name.startswith("flaky:"):
            with server.attempts_lock:
                server.attempts.clear()
            server.keyed = int(name.partition(":")[2])
            return behaviours["ok"]
        return behaviours[name]

    with server:
        server.default = behaviour(kind)
        print(server.port, flush=True)
        for line in sys.stdin:
            words = line.split()
            if words[:1] == ["default"]:
                server.default = behaviour(words[1])
            elif words[:1] == ["enqueue"]:
                server.enqueue(retry_after(words[1]))
            elif words[:1] == ["reset"]:
                server.reset_log()
            answer = {
                "requests": server.request_count,
                "connections": server.connection_count,
                "open": server.open_connections,
                "draws": list(mix.counts) if mix is not None else None,
            }
            print(json.dumps(answer), flush=True)


if __name__ == "__main__":
    if sys.argv[1:2] == ["serve"]:
        _serve(sys.argv[2], float(sys.argv[3]), sys.argv[4:])
