"""Traffic decisions: which endpoint, which route, which fault, when to hedge.

Pure objects with the clock and randomness passed in or read from
`runtime`; the drivers in `_pipeline` act on what they decide.

Just over 400 lines: the endpoint pool (its balancers, ejection and weights) is most
of it, and shares its lock and its clock with nothing else in the module.
"""

from __future__ import annotations

import bisect
import itertools
import math
import threading
import zlib
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

import httpx

from ._policy import Endpoints, Faults, Route
from ._runtime import runtime

__all__ = [
    "Endpoint",
    "EndpointPool",
    "EndpointSnapshot",
    "LatencyWindow",
    "choose_route",
    "draw_fault",
    "request_path",
    "route_name",
    "route_target",
]

# Peak EWMA (Finagle, Linkerd): an estimate weighs e⁻¹ as much for every 10 s it was not
# refreshed, when it is read as when it is updated.
_DECAY = 10.0
# A faster answer moves the estimate at least this far towards it: at a high request rate
# the time weighting alone would keep one slow answer for seconds.
_STEP = 0.5
# An idle endpoint that p2c passes over for one measured more recently keeps this much of
# its estimate: only an answer can correct an estimate, so a stale one must not keep the
# endpoint from getting any.
_PASSED_OVER = 0.8
# Added to both costs when p2c compares them: differences of a few milliseconds between
# replicas are mostly scheduling noise, not load.
_FLOOR = 0.005
# An endpoint not measured yet is estimated at 1 ms; its first answer replaces that.
_UNMEASURED = 0.001


class Endpoint:
    """One address of a destination, with its load and health."""

    __slots__ = (
        "current",
        "ejected_until",
        "ejections",
        "ewma",
        "failures_in_a_row",
        "host",
        "in_flight",
        "measured_at",
        "port",
        "weight",
    )

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        # Its weight relative to the pool's mean (1: unweighted), and smooth weighted
        # round robin's running credit; both set by the pool.
        self.weight = 1.0
        self.current = 0.0
        self.in_flight = 0
        self.ewma = _UNMEASURED
        self.measured_at = math.inf  # never: the first answer replaces the estimate
        self.failures_in_a_row = 0
        self.ejections = 0
        self.ejected_until = -math.inf

    @property
    def address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def latency(self, now: float) -> float:
        """Return the peak-EWMA time to response headers, decayed for its age at `now`."""
        return self.ewma * math.exp(-max(0.0, now - self.measured_at) / _DECAY)

    def measure(self, latency: float, now: float) -> None:
        """Fold one attempt's time to response headers into the estimate."""
        decay = math.exp(-max(0.0, now - self.measured_at) / _DECAY)
        current = self.ewma * decay
        if latency >= current or self.measured_at == math.inf:
            self.ewma = latency  # peak: a slower answer counts in full at once
        else:
            self.ewma = current + (latency - current) * max(_STEP, 1.0 - decay)
        self.measured_at = now


@dataclass(frozen=True, slots=True)
class EndpointSnapshot:
    """An endpoint's state at one moment.

    `ejected_for` is the seconds until an ejected endpoint comes back (0 when in use).
    `weight` is its weight as its `Endpoints` give it (1 when they are unweighted).
    """

    address: str
    in_flight: int
    latency: float
    failures_in_a_row: int
    ejected: bool
    ejections: int
    ejected_for: float = 0.0
    weight: float = 1.0


class EndpointPool:
    """A destination's endpoints: balancing, outlier ejection, and their counts.

    Thread-safe; the lock is held for a pick or an outcome, never across I/O.
    """

    __slots__ = (
        "__weakref__",
        "_cumulative",
        "_lock",
        "_next",
        "_weighted",
        "endpoints",
        "label",
        "settings",
    )

    def __init__(self, settings: Endpoints, label: str) -> None:
        self.settings = settings
        self.label = label
        self.endpoints = [Endpoint(host, port) for host, port in settings.parsed()]
        self._next = 0
        self._lock = threading.Lock()
        self._weigh()

    def _weigh(self) -> None:
        """Give each endpoint its weight from the settings, relative to their mean."""
        weights = self.settings.weights
        self._weighted = weights is not None
        if weights is None:
            weights = (1.0,) * len(self.endpoints)
        scale = len(weights) / math.fsum(weights)
        for endpoint, weight in zip(self.endpoints, weights, strict=True):
            endpoint.weight = weight * scale
            endpoint.current = 0.0
        self._cumulative = list(itertools.accumulate(e.weight for e in self.endpoints))

    def update(self, settings: Endpoints) -> None:
        """Take new settings: the endpoints still listed keep their state, in the new order.

        New weights apply at once; a change of weights alone keeps every
        endpoint's load, latency and ejection state. New addresses start
        unmeasured; an attempt in flight to a removed one ends normally (its
        outcome no longer counts for the pool). A change of anything but the
        addresses and weights (balance, ejection) starts every endpoint afresh,
        as Envoy rebuilds a cluster whose settings changed (its outlier detector
        included); only a change of addresses or weights (EDS) keeps state.
        """
        if settings == self.settings:
            return
        with self._lock:
            same_rules = (settings.balance, settings.ejection) == (
                self.settings.balance,
                self.settings.ejection,
            )
            kept = {(e.host, e.port): e for e in self.endpoints} if same_rules else {}
            self.endpoints = [
                kept.get((host, port)) or Endpoint(host, port) for host, port in settings.parsed()
            ]
            self.settings = settings
            self._weigh()

    def _healthy(self, now: float) -> list[Endpoint]:
        healthy = [e for e in self.endpoints if e.ejected_until <= now]
        return healthy or self.endpoints  # all out: all are used

    def pick(self, now: float, avoid: Endpoint | None = None) -> Endpoint:
        """Choose an endpoint for an attempt (preferring one other than `avoid`)."""
        with self._lock:
            candidates = self._healthy(now)
            if avoid is not None and len(candidates) > 1:
                candidates = [e for e in candidates if e is not avoid] or candidates
            if len(candidates) == 1:
                chosen = candidates[0]
            elif self._weighted:
                chosen = self._pick_weighted(candidates, now)
            elif self.settings.balance == "round_robin":
                chosen = candidates[self._next % len(candidates)]
                self._next += 1
            else:
                first, second = runtime.rng.sample(candidates, 2)
                # Each with a probability inverse to the cube of its cost, rather than
                # always the cheaper: with two endpoints the pair is always the same, and a
                # strict comparison of noisy estimates would starve one of them.
                a = first.latency(now) * (first.in_flight + 1) + _FLOOR
                b = second.latency(now) * (second.in_flight + 1) + _FLOOR
                a, b = a * a * a, b * b * b
                chosen, other = (
                    (first, second) if runtime.rng.random() * (a + b) < b else (second, first)
                )
                if other.in_flight == 0 and other.measured_at < chosen.measured_at:
                    other.ewma *= _PASSED_OVER
            chosen.in_flight += 1
            return chosen

    def _pick_weighted(self, candidates: list[Endpoint], now: float) -> Endpoint:
        """Choose among two or more `candidates` in proportion to their weights."""
        if self.settings.balance == "round_robin":
            # Smooth weighted round robin (nginx's): each pick credits every candidate
            # its weight and takes the one with the most credit, which pays back the
            # total; weights 5:1:1 give a b a c a a a, not a a a a a b c.
            total = 0.0
            chosen = candidates[0]
            for endpoint in candidates:
                endpoint.current += endpoint.weight
                total += endpoint.weight
                if endpoint.current > chosen.current:
                    chosen = endpoint
            chosen.current -= total
            return chosen
        # Two draws in proportion to weight, with replacement: when both loads are
        # alike each wins half the time, so each endpoint's share is its weight's.
        # Load is compared per unit of weight, so that a heavier endpoint is not
        # held back for carrying the more requests it was given.
        if len(candidates) == len(self.endpoints):  # all of them, in order
            first, second = runtime.rng.choices(candidates, cum_weights=self._cumulative, k=2)
        else:
            first, second = runtime.rng.choices(candidates, [e.weight for e in candidates], k=2)
        if first is second:
            return first
        a = first.latency(now) * (first.in_flight / first.weight + 1) + _FLOOR
        b = second.latency(now) * (second.in_flight / second.weight + 1) + _FLOOR
        a, b = a * a * a, b * b * b
        chosen, other = (first, second) if runtime.rng.random() * (a + b) < b else (second, first)
        if other.in_flight == 0 and other.measured_at < chosen.measured_at:
            other.ewma *= _PASSED_OVER
        return chosen

    def done(self, endpoint: Endpoint, failed: bool | None, latency: float, now: float) -> None:
        """Record an attempt's end; `failed` None: cancelled (counts for nothing)."""
        with self._lock:
            endpoint.in_flight -= 1
            if failed is None:
                return
            endpoint.measure(latency, now)
            if not failed:
                endpoint.failures_in_a_row = 0
                return
            endpoint.failures_in_a_row += 1
            ejection = self.settings.ejection
            if ejection is None or endpoint.failures_in_a_row < ejection.consecutive:
                return
            total = len(self.endpoints)
            # The small epsilon: 0.1 x 10 endpoints must allow one, not 0.999... of one.
            allowed = math.floor(ejection.max_share * total + 1e-9)
            if ejection.at_least_one:
                allowed = max(1, allowed) if total >= 2 else 0
            out = sum(1 for e in self.endpoints if e.ejected_until > now)
            if out < allowed and endpoint.ejected_until <= now:
                endpoint.ejections += 1
                endpoint.ejected_until = now + min(ejection.cap, ejection.base * endpoint.ejections)
                endpoint.failures_in_a_row = 0

    def snapshot(self, now: float) -> list[EndpointSnapshot]:
        """Return every endpoint's load and health."""
        with self._lock:
            weights = self.settings.weights or (1.0,) * len(self.endpoints)
            return [
                EndpointSnapshot(
                    e.address,
                    e.in_flight,
                    0.0 if e.measured_at == math.inf else e.latency(now),
                    e.failures_in_a_row,
                    e.ejected_until > now,
                    e.ejections,
                    max(0.0, e.ejected_until - now),
                    weight,
                )
                for e, weight in zip(self.endpoints, weights, strict=True)
            ]


def _share(route: Route, request: httpx.Request, draw: float, salt: str = "") -> float:
    """The caller's place in [0, 1): from the sticky header's value, else `draw`."""
    if route.sticky is not None:
        value = request.headers.get(route.sticky)
        if value is not None:
            return zlib.crc32(f"{salt}{route.to}\0{value}".encode()) / 2**32
    return draw


def request_path(request: httpx.Request) -> str:
    """Return the path a route matches: as sent (percent-encoding kept), without the query."""
    return request.url.raw_path.partition(b"?")[0].decode("ascii")


def _takes(route: Route, request: httpx.Request) -> bool:
    """Return whether `request` meets `route`'s path and header conditions."""
    path = route.path
    if path is not None:
        sent = request_path(request)
        if isinstance(path, str):
            if not sent.startswith(path):
                return False
        elif not path.matches(sent):
            return False
    if route.headers is not None:
        headers = request.headers
        for name, expected in route.matchers():
            if isinstance(expected, str):
                if headers.get(name) != expected:
                    return False
            elif not expected.matches(headers.get_list(name)):
                return False
    return True


def choose_route(routes: Sequence[Route], request: httpx.Request) -> Route | None:
    """Return the route that takes `request`, or None when it stays.

    Routes are tried in order. A route takes the requests that meet its path
    and header conditions; weighted routes split those by consecutive slices
    of [0, 1), so the same sticky value lands in the same slice every time.
    """
    draw = runtime.rng.random()
    start = 0.0
    for route in routes:
        if (route.path is not None or route.headers is not None) and not _takes(route, request):
            continue
        if route.weight is None:
            return route
        share = _share(route, request, draw)
        if start <= share < start + route.weight:
            return route
        start += route.weight
    return None


def route_name(route: Route, request: httpx.Request) -> str:
    """Return the name (cluster or host) `route` sends `request` to: one drawn by weight."""
    to = route.to
    if isinstance(to, str):
        return to
    # A draw of its own (salted apart from the route's weight, when sticky): the
    # same caller may be on any side of this split, whatever side of the other.
    targets = route.targets()
    share = _share(route, request, runtime.rng.random(), "\1") * sum(w for _, w in targets)
    for name, weight in targets:
        share -= weight
        if share < 0:
            return name
    return targets[-1][0]  # rounding


def route_target(name: str) -> tuple[str, int | None]:
    """Return the (host, port or None) a route's name stands for, when it is a host."""
    host, _, port = name.rpartition(":")
    if host and port.isdigit() and not host.endswith(":"):
        return host.strip("[]"), int(port)
    return name.strip("[]"), None


def draw_fault(faults: Faults) -> tuple[bool, float]:
    """Return (abort, delay) for one call under `faults`."""
    rng = runtime.rng
    delay = faults.delay if faults.delay > 0 and rng.random() < faults.delayed else 0.0
    return rng.random() < faults.abort, delay


class LatencyWindow:
    """The destination's recent latencies, for a hedge delay of ``"p95"``."""

    __slots__ = ("__weakref__", "_lock", "_recent", "_sorted")

    SIZE = 200
    MINIMUM = 20

    def __init__(self) -> None:
        self._recent: deque[float] = deque()
        self._sorted: list[float] = []
        self._lock = threading.Lock()

    def add(self, latency: float) -> None:
        with self._lock:
            self._recent.append(latency)
            bisect.insort(self._sorted, latency)
            if len(self._recent) > self.SIZE:
                old = self._recent.popleft()
                del self._sorted[bisect.bisect_left(self._sorted, old)]

    def p95(self) -> float | None:
        """Return the 95th percentile, or None until enough calls were measured."""
        with self._lock:
            if len(self._sorted) < self.MINIMUM:
                return None
            return self._sorted[min(len(self._sorted) - 1, int(0.95 * len(self._sorted)))]
