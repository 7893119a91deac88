"""The compiled view of one destination (its policy and state), and the one cache of them.

A `Plan` is what a call reads on its way: the policy's values flattened into
slots and the destination's shared state (breaker, budget, bulkhead,
endpoints). `Plans` is the only cache of them, owned by the `Mesh`: a
bounded map keyed by (policy, destination), with the last plan handed out
checked first, so a client talking to one destination finds its plan with a
few attribute reads and no lookup.
"""

from __future__ import annotations

from collections.abc import Callable

import httpx

from ._breaker import BreakerState
from ._budget import BudgetState
from ._bulkhead import BulkheadState
from ._compat import uri_reference
from ._deadline import (
    DEFAULT_HEADER,
    GRPC_HEADER,
    MAX_BUDGET_MS,
    MAX_GRPC_VALUE,
    long_budget_header,
)
from ._fallback import FallbackPlan
from ._policy import Policy
from ._propagation import inside_mesh, propagates
from ._sketch import LatencySketch
from ._state import BoundedMap, Destination
from ._telemetry import Reporter, telemetry_for
from ._traffic import EndpointPool, LatencyWindow

__all__ = ["Plan", "Plans"]


class Plan:
    """Where one request goes and with what: a policy and the destination's state.

    Plans are cached per (policy, destination), so the success path finds
    everything it needs with one dictionary lookup.
    """

    __slots__ = (
        "attempt_timeout",
        "breaker",
        "budget",
        "bulkhead",
        "cluster",
        "deadline_key",
        "deadline_max",
        "deadline_recent",
        "deadline_unit",
        "destination",
        "endpoints",
        "fallback",
        "faults",
        "faults_announced",
        "generation",
        "hedge",
        "label",
        "latencies",
        "observing",
        "plain",
        "policy",
        "propagate",
        "report",
        "requested",
        "retry",
        "routes",
        "sketch",
        "telemetry",
        "timeouts_seen",
        "tls",
        "total",
        "url_host",
        "url_port",
        "url_scheme",
    )

    def __init__(
        self,
        requested: Policy | None,
        policy: Policy,
        destination: Destination,
        budget: BudgetState | None,
        breaker: BreakerState | None,
        bulkhead: BulkheadState | None,
        cluster: str | None = None,
    ) -> None:
        self.requested = requested  # the policy asked for, or None for the Mesh's own
        self.policy = policy
        # The request's own destination (its host for spans, propagation and TLS), also
        # when a route sent it to a cluster: `cluster` then names whose state this is.
        self.destination = destination
        self.cluster = cluster
        self.label = str(destination) if cluster is None else cluster
        self.budget = budget
        self.breaker = breaker
        self.bulkhead = bulkhead
        self.endpoints: EndpointPool | None = None
        self.fallback: FallbackPlan | None = None  # set by the Mesh when the policy has one
        self.latencies: LatencyWindow | None = None  # for a hedge delay of "p95"
        self.sketch: LatencySketch | None = None  # while a status page watches the Mesh
        self.faults_announced = False
        # (a caller's four phase timeouts, the longest of them), last seen: see _call.
        self.timeouts_seen: tuple[dict[str, float | None], float] | None = None
        self.generation = 0  # the cache's generation it was made in; set by `Plans`
        # httpx's parsed (scheme, host, port) this plan was made for: the cache
        # compares them to hand back its last plan without a lookup.
        self.url_scheme: str | None = None
        self.url_host: str | None = None
        self.url_port: int | None = None
        # Read on every request: one attribute each instead of two.
        self.routes = policy.routes
        self.retry = policy.retry
        timeout = policy.timeout
        self.total = timeout.total if timeout is not None else None
        self.attempt_timeout = timeout.attempt if timeout is not None else None
        self.faults = policy.faults
        self.hedge = policy.hedge
        # TLS meshlib originates itself (`_origin`): the inner transport is its own.
        self.tls = policy.tls
        # No endpoints, no hedge, no TLS to originate: an attempt needs no `Attempt`
        # unless it is traced.
        self.plain = policy.endpoints is None and policy.hedge is None and policy.tls is None
        tracing = policy.tracing
        # Only the destinations Tracing.propagate_to names (by default, those inside
        # the mesh) learn the caller's trace context and how long it will wait.
        self.propagate = (
            inside_mesh(destination.host)
            if tracing is None
            else propagates(destination.host, tracing.propagate_to)
        )
        self.telemetry = telemetry_for(tracing)
        # Whether to trace or measure this call, asked once per call (a slot: the
        # cheapest read of a function kept on another object).
        self.observing = None if self.telemetry is None else self.telemetry.active
        names: dict[str, object] = (
            {"code.function.name": destination.host}
            if destination.scheme == "function"
            else {"server.address": destination.host, "server.port": destination.port}
        )
        if cluster is not None:
            names["meshlib.cluster"] = cluster
        self.report = Reporter(self.telemetry, self.label, names)
        header = DEFAULT_HEADER if timeout is None else timeout.header
        # The header as httpx stores it (its names are lowercase ASCII tokens);
        # gRPC's needs its unit, every other name carries bare milliseconds.
        self.deadline_key = header.encode("ascii") if header and self.propagate else None
        self.deadline_unit = b"m" if header == GRPC_HEADER else b""
        # The most milliseconds the inbound side accepts in that header.
        self.deadline_max = float(MAX_GRPC_VALUE if header == GRPC_HEADER else MAX_BUDGET_MS)
        # The last value written, as (its whole milliseconds, the value): a client's first
        # attempts all start with the same budget, and formatting a number is the header's
        # dearest step when its code is not in the cache. One tuple, so threads see a pair.
        self.deadline_recent: tuple[float, bytes] = (-2.0, b"")

    def deadline_value(self, ms: float) -> bytes:
        """Return the deadline header's value for `ms` milliseconds left (whole ms, floored)."""
        if ms > self.deadline_max:
            assert self.deadline_key is not None
            return long_budget_header(self.deadline_key, ms / 1000.0)  # never more digits
        whole = float(int(ms))
        value = b"%d%s" % (whole, self.deadline_unit)
        self.deadline_recent = (whole, value)
        return value


Build = Callable[[Policy | None, "httpx.URL | Destination"], Plan]
#: Build the plan of cluster `name` for a request to `destination`; None: no such cluster.
BuildCluster = Callable[[Policy | None, str, Destination], "Plan | None"]
_Key = tuple[int, str, str, int | str | None]


def _no_clusters(policy: Policy | None, name: str, destination: Destination) -> Plan | None:
    return None


class Plans:
    """The plan cache: (policy, destination) to `Plan`, bounded, least recently used out first.

    Plans are keyed by the policy's identity (hashing a policy by value costs a
    Python call; a recycled id is caught by comparing `requested`) and httpx's
    parsed scheme, host and port. `invalidate` makes every cached plan stale
    at once (a new policy table, a status page that wants latency sketches).
    """

    __slots__ = ("_build", "_build_cluster", "_last", "_map", "generation")

    def __init__(
        self, capacity: int, build: Build, build_cluster: BuildCluster = _no_clusters
    ) -> None:
        self._build = build
        self._build_cluster = build_cluster
        self._map: BoundedMap[_Key, Plan] = BoundedMap(capacity)
        self._last: Plan | None = None  # the plan handed out last: one destination's fast path
        self.generation = 0  # bumped whenever cached plans stop being valid

    def for_url(self, policy: Policy | None, url: httpx.URL) -> Plan:
        """Return the plan for a request to `url`, under `policy` or the Mesh's own (None)."""
        ref = uri_reference(url)
        last = self._last
        if (
            last is not None
            and last.url_host == ref.host
            and last.url_port == ref.port
            and last.url_scheme == ref.scheme
            and last.requested is policy
            and last.generation == self.generation
        ):
            return last
        key = (id(policy), ref.scheme, ref.host, ref.port)
        found = self._map.get(key)
        if found is None or found.requested is not policy or found.generation != self.generation:
            found = self._store(key, policy, url)
            found.url_scheme, found.url_host, found.url_port = ref.scheme, ref.host, ref.port
        self._last = found
        return found

    def for_function(self, policy: Policy | None, name: str) -> Plan:
        """Return the plan for a `resilient` function named `name`."""
        key = (id(policy), "function", name, None)
        found = self._map.get(key)
        if found is not None and found.requested is policy and found.generation == self.generation:
            return found
        return self._store(key, policy, Destination("function", name, 0))

    def for_cluster(self, policy: Policy | None, name: str, origin: Plan) -> Plan | None:
        """Return the plan for a request that a route of `origin` sends to cluster `name`.

        None when the Mesh has no cluster of that name (the name is then a host).
        One plan per cluster and requesting destination (spans and trace context
        follow the request's host), all sharing the cluster's state.
        """
        key = (id(policy), "cluster", name, origin.label)
        found = self._map.get(key)
        if found is not None and found.requested is policy and found.generation == self.generation:
            return found
        generation = self.generation
        plan = self._build_cluster(policy, name, origin.destination)
        if plan is None:
            return None
        plan.generation = generation
        return self._map.replace(key, plan)

    def _store(
        self,
        key: _Key,
        policy: Policy | None,
        target: httpx.URL | Destination,
    ) -> Plan:
        # Read before building: a reload in between stamps this plan stale, never
        # an old policy with the new generation.
        generation = self.generation
        plan = self._build(policy, target)
        plan.generation = generation
        return self._map.replace(key, plan)

    def invalidate(self) -> None:
        """Make every cached plan stale: the next call builds its plan again."""
        self.generation += 1
        self._last = None

    def clear(self) -> None:
        """Forget every plan (their state goes with them, unless a call still holds it)."""
        self.invalidate()
        self._map.clear()

    def __len__(self) -> int:
        return len(self._map)

    def values(self) -> list[Plan]:
        """Return the cached plans, least recently used first."""
        return self._map.values()
