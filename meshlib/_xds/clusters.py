"""Cluster and ClusterLoadAssignment to meshlib's values, with Envoy's meaning and defaults.

A Cluster gives what is the cluster's own in meshlib (`ClusterSettings`): how its
endpoints are balanced and ejected, its bulkhead and its retry budget. A
ClusterLoadAssignment (EDS, or a STATIC cluster's inline one) gives its
`Endpoints`. Pure functions of protobuf messages; see docs/xds.md for the table.

Over 400 lines because every field of the two messages is read or refused here,
named in its own check: the allowlist that refuses what Envoy adds later is only
as good as its being in one place.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .._errors import ConfigError
from .._policy import Budget, Bulkhead, Ejection, Endpoints
from .._tls import TLS
from .ads import MISSING_EXTRA
from .fields import Refused, only, seconds
from .tls import Certificates, upstream_tls

try:
    from envoy.config.cluster.v3 import cluster_pb2
    from envoy.config.core.v3 import base_pb2, health_check_pb2
    from envoy.extensions.load_balancing_policies.least_request.v3 import least_request_pb2
    from envoy.extensions.load_balancing_policies.round_robin.v3 import round_robin_pb2
except Exception as exc:  # pragma: no cover - ads.py refuses first
    raise ConfigError(f"{MISSING_EXTRA} ({type(exc).__name__}: {exc})") from exc

__all__ = [
    "ClusterSettings",
    "Host",
    "Locality",
    "cluster_settings",
    "endpoint_shares",
    "load_assignment_endpoints",
]

_CLUSTER = cluster_pb2.Cluster
_ROUND_ROBIN = "type.googleapis.com/" + round_robin_pb2.RoundRobin.DESCRIPTOR.full_name
_LEAST_REQUEST = "type.googleapis.com/" + least_request_pb2.LeastRequest.DESCRIPTOR.full_name
_USABLE = (health_check_pb2.HEALTHY, health_check_pb2.UNKNOWN)
_DEGRADED = health_check_pb2.DEGRADED

# Envoy's defaults (cluster.proto, outlier_detection.proto, circuit_breaker.proto).
MAX_REQUESTS = 1024
MAX_RETRIES = 3
BUDGET_PERCENT = 20.0
MIN_RETRY_CONCURRENCY = 3
CONSECUTIVE_5XX = 5
BASE_EJECTION = 30.0
MAX_EJECTION = 300.0
MAX_EJECTION_PERCENT = 10
PANIC_THRESHOLD = 0.5
OVERPROVISIONING_FACTOR = 140  # percent

# Cluster fields read below, or that do not change what a client sends where: stats,
# metadata, connection pooling and protocol options (httpx's own), DNS settings.
_CLUSTER_FIELDS = (
    "name",
    "type",
    "eds_cluster_config",
    "load_assignment",
    "lb_policy",
    "load_balancing_policy",
    "least_request_lb_config",
    "round_robin_lb_config",
    "common_lb_config",
    "outlier_detection",
    "circuit_breakers",
    "transport_socket",
    "connect_timeout",
    "per_connection_buffer_limit_bytes",
    "typed_extension_protocol_options",
    "http2_protocol_options",
    "http_protocol_options",
    "common_http_protocol_options",
    "upstream_http_protocol_options",
    "upstream_connection_options",
    "max_requests_per_connection",
    "metadata",
    "alt_stat_name",
    "track_cluster_stats",
    "dns_lookup_family",
    "dns_refresh_rate",
    "respect_dns_ttl",
    "ignore_health_on_host_removal",
    "close_connections_on_host_health_failure",
)
_OUTLIER_FIELDS = (
    "consecutive_5xx",
    "base_ejection_time",
    "max_ejection_time",
    "max_ejection_percent",
    "enforcing_consecutive_5xx",
    "always_eject_one_host",
    "interval",  # the sweep of the rate-based detectors; consecutive errors eject at once
    "max_ejection_time_jitter",
    # Off unless enforced: refused below when they would be.
    "consecutive_gateway_failure",
    "enforcing_consecutive_gateway_failure",
    "enforcing_success_rate",
    "enforcing_failure_percentage",
    "enforcing_consecutive_local_origin_failure",
    "enforcing_local_origin_success_rate",
    "enforcing_failure_percentage_local_origin",
    "split_external_local_origin_errors",
)
_THRESHOLD_FIELDS = (
    "priority",
    "max_requests",
    "max_retries",
    "retry_budget",
    "max_connections",  # connection pooling: httpx's own
    "max_pending_requests",
    "max_connection_pools",
    "track_remaining",
)


@dataclass(frozen=True, slots=True)
class ClusterSettings:
    """What a Cluster says about its endpoints and state, before its endpoints are known.

    Attributes:
        name: the cluster's name (its state's key in meshlib).
        eds_name: the ClusterLoadAssignment to ask for (EDS), or None (STATIC).
        balance: ``"round_robin"`` or ``"p2c"`` (Envoy's LEAST_REQUEST).
        ejection: outlier ejection, or None.
        bulkhead: ``circuit_breakers`` max_requests.
        budget: the retry budget for the routes' retries to this cluster.
        panic: a priority with fewer healthy and degraded endpoints than this
            share of them uses all of them, while the cluster's total health is short.
        static: a STATIC cluster's endpoints (None: none usable, or EDS).
        locality_weighted: ``locality_weighted_lb_config`` is set: within a
            priority, localities share its load by their weights.
        tls: the TLS meshlib originates to the endpoints (``transport_socket``), or None.
    """

    name: str
    eds_name: str | None
    balance: str
    ejection: Ejection | None
    bulkhead: Bulkhead
    budget: Budget
    panic: float
    static: Endpoints | None = None
    locality_weighted: bool = False
    tls: TLS | None = None


_NO_CERTIFICATES = Certificates({})


def cluster_settings(
    cluster: Any, certificates: Certificates = _NO_CERTIFICATES
) -> ClusterSettings:
    """Translate a Cluster; `certificates` are the bootstrap's, for its TLS (`.tls`).

    Raises:
        Refused: a field meshlib cannot honour (lb_policy other than ROUND_ROBIN and
            LEAST_REQUEST, a type other than EDS and STATIC, TLS, ...).
    """
    where = f"Cluster {cluster.name}"
    only(cluster, where, "", _CLUSTER_FIELDS)
    if cluster.type not in (_CLUSTER.EDS, _CLUSTER.STATIC):
        kind = _CLUSTER.DiscoveryType.Name(cluster.type)
        raise Refused(where, "type", kind, "only EDS and STATIC clusters are supported")
    balance = _balance(cluster, where)
    panic = PANIC_THRESHOLD
    locality_weighted = False
    if cluster.HasField("common_lb_config"):
        common = cluster.common_lb_config
        only(
            common,
            where,
            "common_lb_config",
            ("healthy_panic_threshold", "locality_weighted_lb_config"),
        )
        if common.HasField("healthy_panic_threshold"):
            panic = min(1.0, common.healthy_panic_threshold.value / 100)
        locality_weighted = common.HasField("locality_weighted_lb_config")
    tls = upstream_tls(cluster, where, certificates)
    bulkhead, budget = _circuit_breakers(cluster, where)
    ejection = _outlier_detection(cluster, where) if cluster.HasField("outlier_detection") else None
    eds_name: str | None = None
    static: Endpoints | None = None
    settings = ClusterSettings(
        cluster.name, None, balance, ejection, bulkhead, budget, panic, None, locality_weighted
    )
    if cluster.type == _CLUSTER.EDS:
        eds = cluster.eds_cluster_config
        eds_name = eds.service_name or cluster.name
    else:
        static = load_assignment_endpoints(cluster.load_assignment, settings, where)
    return dataclasses.replace(settings, eds_name=eds_name, static=static, tls=tls)


def _balance(cluster: Any, where: str) -> str:
    if cluster.HasField("load_balancing_policy"):
        # The typed policies, first one supported wins (as Envoy picks).
        for index, entry in enumerate(cluster.load_balancing_policy.policies):
            type_url = entry.typed_extension_config.typed_config.type_url
            if type_url == _ROUND_ROBIN:
                return "round_robin"
            if type_url == _LEAST_REQUEST:
                config = least_request_pb2.LeastRequest()
                entry.typed_extension_config.typed_config.Unpack(config)
                _choice_count(config, where, f"load_balancing_policy.policies[{index}]")
                return "p2c"
        raise Refused(
            where,
            "load_balancing_policy",
            cluster.load_balancing_policy,
            "no supported policy (round_robin, least_request)",
        )
    if cluster.lb_policy == _CLUSTER.ROUND_ROBIN:
        return "round_robin"
    if cluster.lb_policy == _CLUSTER.LEAST_REQUEST:
        if cluster.HasField("least_request_lb_config"):
            _choice_count(cluster.least_request_lb_config, where, "least_request_lb_config")
        return "p2c"
    name = _CLUSTER.LbPolicy.Name(cluster.lb_policy)
    raise Refused(where, "lb_policy", name, "only ROUND_ROBIN and LEAST_REQUEST are supported")


def _choice_count(config: Any, where: str, path: str) -> None:
    only(config, where, path, ("choice_count",))
    if config.HasField("choice_count") and config.choice_count.value != 2:
        raise Refused(
            where,
            f"{path}.choice_count",
            config.choice_count.value,
            "meshlib's least request picks between 2 (power of two choices)",
        )


def _circuit_breakers(cluster: Any, where: str) -> tuple[Bulkhead, Budget]:
    max_requests, max_retries = MAX_REQUESTS, MAX_RETRIES
    percent, floor = BUDGET_PERCENT, float(MAX_RETRIES)
    if cluster.HasField("circuit_breakers"):
        breakers = cluster.circuit_breakers
        only(breakers, where, "circuit_breakers", ("thresholds", "per_host_thresholds"))
        for index, threshold in enumerate(breakers.thresholds):
            if threshold.priority != base_pb2.DEFAULT:
                continue  # meshlib sends every request at the default priority
            path = f"circuit_breakers.thresholds[{index}]"
            only(threshold, where, path, _THRESHOLD_FIELDS)
            if threshold.HasField("max_requests"):
                max_requests = threshold.max_requests.value
            if threshold.HasField("max_retries"):
                max_retries = threshold.max_retries.value
            floor = float(max_retries)
            if threshold.HasField("retry_budget"):
                budget = threshold.retry_budget
                only(
                    budget,
                    where,
                    f"{path}.retry_budget",
                    ("budget_percent", "min_retry_concurrency"),
                )
                percent = budget.budget_percent.value if budget.HasField("budget_percent") else 20.0
                floor = float(
                    budget.min_retry_concurrency.value
                    if budget.HasField("min_retry_concurrency")
                    else MIN_RETRY_CONCURRENCY
                )
    if max_requests < 1:
        # Envoy would answer every request with an overflow 503.
        raise Refused(
            where, "circuit_breakers.thresholds.max_requests", max_requests, "must be >= 1"
        )
    # Envoy caps retries in flight; meshlib's budget caps them over 10 s at the same share,
    # with the concurrency floor as its retries-per-second floor.
    return Bulkhead(max_concurrent=max_requests), Budget(
        ratio=min(percent, 100.0) / 100, min_per_second=floor, ttl=10.0
    )


def _outlier_detection(cluster: Any, where: str) -> Ejection | None:
    detection = cluster.outlier_detection
    path = "outlier_detection"
    only(detection, where, path, _OUTLIER_FIELDS)
    for name in (
        "enforcing_consecutive_gateway_failure",
        "enforcing_success_rate",
        "enforcing_failure_percentage",
        "enforcing_consecutive_local_origin_failure",
        "enforcing_local_origin_success_rate",
        "enforcing_failure_percentage_local_origin",
    ):
        if detection.HasField(name) and getattr(detection, name).value > 0:
            value = getattr(detection, name).value
            raise Refused(
                where, f"{path}.{name}", value, "only consecutive_5xx ejection is supported"
            )
    if detection.split_external_local_origin_errors:
        raise Refused(
            where, f"{path}.split_external_local_origin_errors", True, "not supported by meshlib"
        )
    enforcing = 100
    if detection.HasField("enforcing_consecutive_5xx"):
        enforcing = detection.enforcing_consecutive_5xx.value
    if enforcing == 0:
        return None
    if enforcing != 100:
        raise Refused(
            where, f"{path}.enforcing_consecutive_5xx", enforcing, "only 0 or 100 is supported"
        )

    def wrapped(name: str, default: int) -> int:
        field = getattr(detection, name)
        return int(field.value) if detection.HasField(name) else default

    consecutive = wrapped("consecutive_5xx", CONSECUTIVE_5XX)
    base = (
        seconds(detection.base_ejection_time)
        if detection.HasField("base_ejection_time")
        else BASE_EJECTION
    )
    cap = (
        seconds(detection.max_ejection_time)
        if detection.HasField("max_ejection_time")
        else MAX_EJECTION
    )
    percent = min(100, wrapped("max_ejection_percent", MAX_EJECTION_PERCENT))
    if consecutive < 1 or base <= 0:
        raise Refused(where, path, detection, "consecutive_5xx and base_ejection_time must be > 0")
    always = (
        bool(detection.always_eject_one_host.value)
        if detection.HasField("always_eject_one_host")
        else False
    )
    return Ejection(
        consecutive=consecutive,
        base=base,
        cap=max(cap, base),  # Envoy: the longer of the two
        max_share=percent / 100,
        at_least_one=always,
    )


def load_assignment_endpoints(cla: Any, cluster: ClusterSettings, where: str) -> Endpoints | None:
    """Return the endpoints of `cluster` that a ClusterLoadAssignment makes usable, or None.

    Each endpoint's weight is the share of requests Envoy would send it
    (`endpoint_shares`): its priority's load, its locality's share of that
    (with ``locality_weighted_lb_config``) and its own ``load_balancing_weight``.
    Endpoints that would get nothing are left out. None: no endpoint at all.

    Raises:
        Refused: drop_overloads, an endpoint weight or overprovisioning factor of 0,
            named or non-TCP addresses.
    """
    only(cla, where, "", ("cluster_name", "endpoints", "policy"))
    factor = OVERPROVISIONING_FACTOR
    weighted_health = False
    if cla.HasField("policy"):
        policy = cla.policy
        only(
            policy,
            where,
            "policy",
            ("overprovisioning_factor", "endpoint_stale_after", "weighted_priority_health"),
        )
        if policy.HasField("overprovisioning_factor"):
            factor = policy.overprovisioning_factor.value
            if factor < 1:  # Envoy's validation refuses it too
                raise Refused(where, "policy.overprovisioning_factor", factor, "must be > 0")
        weighted_health = policy.weighted_priority_health
    levels: dict[int, list[Locality]] = {}
    seen: dict[int, set[str]] = {}  # per priority, the addresses listed so far
    for index, locality in enumerate(cla.endpoints):
        path = f"endpoints[{index}]"
        only(
            locality,
            where,
            path,
            ("locality", "lb_endpoints", "load_balancing_weight", "priority", "metadata"),
        )
        hosts: list[Host] = []
        level = levels.setdefault(locality.priority, [])
        listed = seen.setdefault(locality.priority, set())
        for position, lb_endpoint in enumerate(locality.lb_endpoints):
            here = f"{path}.lb_endpoints[{position}]"
            only(
                lb_endpoint,
                where,
                here,
                ("endpoint", "health_status", "load_balancing_weight", "metadata"),
            )
            address = _address(lb_endpoint.endpoint, where, f"{here}.endpoint")
            weight = 1
            if lb_endpoint.HasField("load_balancing_weight"):
                weight = lb_endpoint.load_balancing_weight.value
                if weight < 1:  # Envoy's validation refuses it too
                    raise Refused(where, f"{here}.load_balancing_weight", weight, "must be >= 1")
            if address in listed:
                continue  # the same address twice: one endpoint, as in Envoy's host set
            listed.add(address)
            status = lb_endpoint.health_status
            health = "healthy" if status in _USABLE else "degraded" if status == _DEGRADED else ""
            hosts.append(Host(address, weight, health))
        # Unset, a locality's weight is 0: it takes nothing while others take some.
        level.append(Locality(locality.load_balancing_weight.value, tuple(hosts)))
    shares = endpoint_shares(
        [levels[p] for p in sorted(levels)],
        factor=factor,
        panic=cluster.panic,
        locality_weighted=cluster.locality_weighted,
        weighted_health=weighted_health,
    )
    if not shares:
        return None
    try:
        return Endpoints(shares, balance=cluster.balance, ejection=cluster.ejection)  # type: ignore[arg-type]
    except ConfigError as exc:
        raise Refused(where, "endpoints", list(shares), exc.reason) from exc


@dataclass(frozen=True, slots=True)
class Host:
    """One lb_endpoint: its address, its load_balancing_weight and its health.

    `health`: ``"healthy"`` (HEALTHY or UNKNOWN), ``"degraded"`` or ``""``
    (UNHEALTHY, DRAINING, TIMEOUT: it takes requests only in panic).
    """

    address: str
    weight: int
    health: str


@dataclass(frozen=True, slots=True)
class Locality:
    """One LocalityLbEndpoints: its load_balancing_weight (0 when unset) and its hosts."""

    weight: int
    hosts: tuple[Host, ...]


def endpoint_shares(
    priorities: list[list[Locality]],
    *,
    factor: int = OVERPROVISIONING_FACTOR,
    panic: float = PANIC_THRESHOLD,
    locality_weighted: bool = False,
    weighted_health: bool = False,
) -> dict[str, float]:
    """Return the share of requests Envoy sends each address, for priorities in order (P0 first).

    Envoy's load balancer, computed once (load_balancer_impl.cc): each priority's
    health is ``min(100, factor × healthy / hosts)`` in whole percent (degraded
    likewise; `factor` is the overprovisioning factor in percent, 140 by default);
    the load goes to the priorities in order, each taking up to its health scaled
    by the total health when that is below 100, healthy hosts first, then degraded
    ones. While the total is below 100, a priority with fewer than `panic` of its
    hosts healthy or degraded spreads its load over all its hosts; when every
    priority is so, each priority's load is its share of all hosts. Within a
    priority, the load goes to its healthy (or degraded) hosts by their weights or,
    with `locality_weighted`, first to localities by their weight times their
    available share (times the factor, at most 1), then to their hosts by weight.
    Shares that would be 0 are left out; the rest add up to 1 (to rounding).
    """
    threshold = min(100, round(panic * 100))
    count = len(priorities)
    hosts = [[host for locality in level for host in locality.hosts] for level in priorities]

    def weight(found: list[Host], health: str | None = None) -> int:
        return sum(
            host.weight if weighted_health else 1
            for host in found
            if health is None or host.health == health
        )

    healthy = [0] * count
    degraded = [0] * count
    for p, found in enumerate(hosts):
        total = weight(found)
        if total:
            healthy[p] = min(100, factor * weight(found, "healthy") // total)
            degraded[p] = min(100, factor * weight(found, "degraded") // total)
    available = min(100, sum(healthy) + sum(degraded))
    healthy_load, degraded_load = [0] * count, [0] * count
    if available:
        left = 100
        for loads, levels in ((healthy_load, healthy), (degraded_load, degraded)):
            for p in range(count):
                loads[p] = min(left, levels[p] * 100 // available)
                left -= loads[p]
        if left:  # rounding: to the first priority with healthy hosts, else degraded ones
            first = next((p for p in range(count) if healthy[p]), None)
            if first is not None:
                healthy_load[first] += left
            else:
                degraded_load[next(p for p in range(count) if degraded[p])] += left
    in_panic = [False] * count
    if threshold or available:
        if available < 100:
            for p, found in enumerate(hosts):
                usable = sum(1 for host in found if host.health)
                in_panic[p] = (100 * usable / len(found) if found else 0.0) < threshold
        if all(in_panic):
            # Total panic: each priority's load is its share of all the hosts.
            every = sum(map(len, hosts))
            if not every:
                return {}
            degraded_load = [0] * count
            healthy_load = [100 * len(found) // every for found in hosts]
            healthy_load[next(p for p in range(count) if hosts[p])] += 100 - sum(healthy_load)
    shares: dict[str, float] = {}

    def spread(load: float, found: Sequence[Host]) -> None:
        total = sum(host.weight for host in found)
        for host in found:
            shares[host.address] = shares.get(host.address, 0.0) + load * host.weight / total

    for p, level in enumerate(priorities):
        if in_panic[p]:
            if healthy_load[p] + degraded_load[p]:
                spread((healthy_load[p] + degraded_load[p]) / 100, hosts[p])
            continue
        for load, health in ((healthy_load[p], "healthy"), (degraded_load[p], "degraded")):
            if not load:
                continue
            groups = [[h for h in locality.hosts if h.health == health] for locality in level]
            localities = [0.0] * len(level)
            if locality_weighted:
                localities = [
                    locality.weight * min(1.0, factor / 100 * len(group) / len(locality.hosts))
                    if locality.hosts
                    else 0.0
                    for locality, group in zip(level, groups, strict=True)
                ]
            if sum(localities) > 0:
                whole = sum(localities)
                for share, group in zip(localities, groups, strict=True):
                    if share > 0:
                        spread(load / 100 * share / whole, group)
            else:  # no locality weights (or none with hosts): every such host of the priority
                spread(load / 100, [h for group in groups for h in group])
    # In the order listed; twelve digits, so that shares equal by Envoy's numbers are equal.
    listed = dict.fromkeys(host.address for found in hosts for host in found)
    return {
        address: float(f"{shares[address]:.12g}")
        for address in listed
        if shares.get(address, 0.0) > 0
    }


def _address(endpoint: Any, where: str, path: str) -> str:
    only(endpoint, where, path, ("address", "hostname", "health_check_config"))
    address = endpoint.address
    only(address, where, f"{path}.address", ("socket_address",))
    socket = address.socket_address
    only(
        socket,
        where,
        f"{path}.address.socket_address",
        ("address", "port_value", "protocol", "ipv4_compat"),
    )
    if socket.protocol != 0:  # TCP
        raise Refused(where, f"{path}.address.socket_address.protocol", socket.protocol, "only TCP")
    if not socket.address or not 0 < socket.port_value < 65536:
        raise Refused(where, f"{path}.address.socket_address", socket, "an address and a port")
    host = f"[{socket.address}]" if ":" in socket.address else socket.address
    return f"{host}:{socket.port_value}"
