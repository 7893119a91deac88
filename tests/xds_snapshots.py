"""xDS snapshots for the behaviours that meshlib and a real Envoy must agree on.

Each builder returns a snapshot for tests/xds_server.py's `AdsServer`: xds-protos
messages by type URL and resource name, shaped as a control plane sends them to a
proxyless client. The Listener `HOST` is an api_listener whose HttpConnectionManager
takes its routes over RDS (from the same ADS stream); every Cluster is of type EDS,
its endpoints in a ClusterLoadAssignment. tests/xds_envoy.py serves the same snapshot
to a real Envoy, adding only the socket listener Envoy needs to take traffic.

Upstreams are given by port: every endpoint is 127.0.0.1:port.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from envoy.config.cluster.v3 import circuit_breaker_pb2, cluster_pb2, outlier_detection_pb2
from envoy.config.core.v3 import address_pb2, base_pb2, config_source_pb2, health_check_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_components_pb2 as route_pb
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.common.fault.v3 import fault_pb2 as common_fault_pb2
from envoy.extensions.filters.http.fault.v3 import fault_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, tls_pb2
from envoy.type.matcher.v3 import regex_pb2, string_pb2
from envoy.type.v3 import percent_pb2
from google.protobuf import duration_pb2, wrappers_pb2

from meshlib._xds.ads import CLUSTER, CLUSTER_LOAD_ASSIGNMENT, LISTENER, ROUTE_CONFIGURATION

from .xds_server import Snapshot

#: The listener name, and the authority a caller sends (`http://HOST/...`).
HOST = "orders.test:8080"
#: The RouteConfiguration the listener names over RDS.
ROUTES = "orders-routes"
FAULT_FILTER = "envoy.filters.http.fault"
ROUTER_FILTER = "envoy.filters.http.router"
TLS_SOCKET = "envoy.transport_sockets.tls"

ADS = config_source_pb2.ConfigSource(
    ads=config_source_pb2.AggregatedConfigSource(),
    resource_api_version=config_source_pb2.V3,
)


def seconds(value: float) -> duration_pb2.Duration:
    whole = int(value)
    return duration_pb2.Duration(seconds=whole, nanos=round((value - whole) * 1e9))


# --- pieces ---------------------------------------------------------------------------


def http_filter(name: str, config: Any) -> hcm_pb2.HttpFilter:
    found = hcm_pb2.HttpFilter(name=name)
    found.typed_config.Pack(config)
    return found


def fault_abort(status: int, percent: int = 100) -> hcm_pb2.HttpFilter:
    """The HCM's fault filter aborting `percent` % of requests with HTTP `status`."""
    return http_filter(
        FAULT_FILTER,
        fault_pb2.HTTPFault(
            abort=fault_pb2.FaultAbort(
                http_status=status,
                percentage=percent_pb2.FractionalPercent(
                    numerator=percent, denominator=percent_pb2.FractionalPercent.HUNDRED
                ),
            )
        ),
    )


def fault_delay(delay: float, percent: int = 100) -> hcm_pb2.HttpFilter:
    """The HCM's fault filter delaying `percent` % of requests by `delay` seconds."""
    return http_filter(
        FAULT_FILTER,
        fault_pb2.HTTPFault(
            delay=common_fault_pb2.FaultDelay(
                fixed_delay=seconds(delay),
                percentage=percent_pb2.FractionalPercent(
                    numerator=percent, denominator=percent_pb2.FractionalPercent.HUNDRED
                ),
            )
        ),
    )


def api_listener(
    name: str = HOST,
    routes: str = ROUTES,
    http_filters: Sequence[hcm_pb2.HttpFilter] = (),
) -> listener_pb2.Listener:
    """A proxyless client's Listener: an api_listener whose HCM reads `routes` over RDS.

    `http_filters` come before the router, which is always last (Envoy and gRPC both
    require a terminal router filter).
    """
    manager = hcm_pb2.HttpConnectionManager(
        stat_prefix="orders",
        rds=hcm_pb2.Rds(route_config_name=routes, config_source=ADS),
        http_filters=[*http_filters, http_filter(ROUTER_FILTER, router_pb2.Router())],
    )
    found = listener_pb2.Listener(name=name)
    found.api_listener.api_listener.Pack(manager)
    return found


def prefix(value: str, **headers: str) -> route_pb.RouteMatch:
    """Match a path prefix, and each header `name=value` exactly (`_` in a name is `-`)."""
    return route_pb.RouteMatch(prefix=value, headers=_exact_headers(headers))


def path(value: str, **headers: str) -> route_pb.RouteMatch:
    """Match an exact path (the query string is not part of it)."""
    return route_pb.RouteMatch(path=value, headers=_exact_headers(headers))


def regex(value: str, **headers: str) -> route_pb.RouteMatch:
    """Match the whole path (no query string) against an RE2 regex."""
    return route_pb.RouteMatch(
        safe_regex=regex_pb2.RegexMatcher(regex=value), headers=_exact_headers(headers)
    )


def _exact_headers(headers: Mapping[str, str]) -> list[route_pb.HeaderMatcher]:
    return [
        route_pb.HeaderMatcher(
            name=name.replace("_", "-"), string_match=string_pb2.StringMatcher(exact=value)
        )
        for name, value in headers.items()
    ]


def retry_policy(
    retry_on: str = "5xx",
    num_retries: int | None = None,
    per_try_timeout: float | None = None,
    retriable_status_codes: Sequence[int] = (),
) -> route_pb.RetryPolicy:
    policy = route_pb.RetryPolicy(retry_on=retry_on, retriable_status_codes=retriable_status_codes)
    if num_retries is not None:
        policy.num_retries.value = num_retries
    if per_try_timeout is not None:
        policy.per_try_timeout.CopyFrom(seconds(per_try_timeout))
    return policy


def route(
    match: route_pb.RouteMatch,
    cluster: str | None = None,
    *,
    weights: Mapping[str, int] | None = None,
    timeout: float | None = None,
    retry: route_pb.RetryPolicy | None = None,
) -> route_pb.Route:
    """A route to one `cluster`, or to weighted clusters (`weights`: cluster -> weight)."""
    action = route_pb.RouteAction()
    if weights is not None:
        action.weighted_clusters.clusters.extend(
            route_pb.WeightedCluster.ClusterWeight(
                name=name, weight=wrappers_pb2.UInt32Value(value=weight)
            )
            for name, weight in weights.items()
        )
    else:
        assert cluster is not None
        action.cluster = cluster
    if timeout is not None:
        action.timeout.CopyFrom(seconds(timeout))
    if retry is not None:
        action.retry_policy.CopyFrom(retry)
    return route_pb.Route(match=match, route=action)


def route_configuration(
    routes: Sequence[route_pb.Route],
    name: str = ROUTES,
    domains: Sequence[str] = ("*",),
    retry: route_pb.RetryPolicy | None = None,
) -> route_pb2.RouteConfiguration:
    """One virtual host over `domains`; `retry` is its retry_policy (routes' default)."""
    host = route_pb.VirtualHost(name="orders", domains=domains, routes=routes)
    if retry is not None:
        host.retry_policy.CopyFrom(retry)
    return route_pb2.RouteConfiguration(name=name, virtual_hosts=[host])


def eds_cluster(name: str, *, service_name: str = "", **fields: Any) -> cluster_pb2.Cluster:
    """A Cluster of type EDS over ADS, round robin, 1 s connect timeout, plus `fields`."""
    found = cluster_pb2.Cluster(
        name=name,
        type=cluster_pb2.Cluster.EDS,
        eds_cluster_config=cluster_pb2.Cluster.EdsClusterConfig(
            eds_config=ADS, service_name=service_name
        ),
        lb_policy=cluster_pb2.Cluster.ROUND_ROBIN,
        connect_timeout=seconds(1.0),
    )
    for field_name, value in fields.items():
        getattr(found, field_name).CopyFrom(value)
    return found


def assignment(
    name: str, ports: Sequence[int], health: Mapping[int, int] | None = None
) -> endpoint_pb2.ClusterLoadAssignment:
    """Endpoints 127.0.0.1:port for each of `ports`, one locality.

    Each is HEALTHY unless `health` (port -> a `health_check_pb2` HealthStatus) says.
    """
    return endpoint_pb2.ClusterLoadAssignment(
        cluster_name=name,
        endpoints=[
            endpoint_components_pb2.LocalityLbEndpoints(
                lb_endpoints=[
                    endpoint_components_pb2.LbEndpoint(
                        endpoint=endpoint_components_pb2.Endpoint(
                            address=address_pb2.Address(
                                socket_address=address_pb2.SocketAddress(
                                    address="127.0.0.1", port_value=port
                                )
                            )
                        ),
                        health_status=(health or {}).get(port, health_check_pb2.HEALTHY),
                    )
                    for port in ports
                ]
            )
        ],
    )


def snapshot(
    routes: Sequence[route_pb.Route],
    endpoints: Mapping[str, Sequence[int]],
    *,
    clusters: Sequence[cluster_pb2.Cluster] = (),
    http_filters: Sequence[hcm_pb2.HttpFilter] = (),
    vhost_retry: route_pb.RetryPolicy | None = None,
) -> Snapshot:
    """The listener `HOST`, its routes `ROUTES`, and one EDS cluster per `endpoints` key.

    Args:
        endpoints: cluster name -> upstream ports.
        clusters: Clusters to use instead of a plain `eds_cluster` of the same name.
        vhost_retry: the virtual host's retry_policy.
    """
    given = {found.name: found for found in clusters}
    return {
        LISTENER: {HOST: api_listener(http_filters=http_filters)},
        ROUTE_CONFIGURATION: {ROUTES: route_configuration(routes, retry=vhost_retry)},
        CLUSTER: {name: given.get(name) or eds_cluster(name) for name in endpoints},
        CLUSTER_LOAD_ASSIGNMENT: {
            name: assignment(name, ports) for name, ports in endpoints.items()
        },
    }


# --- the behaviours -------------------------------------------------------------------


def one_cluster(ports: Sequence[int], cluster: str = "orders") -> Snapshot:
    """Everything to `cluster`, whose endpoints are `ports`: push again to move them (EDS)."""
    return snapshot([route(prefix("/"), cluster)], {cluster: ports})


def weighted_split(a: int, b: int, weights: tuple[int, int] = (75, 25)) -> Snapshot:
    """Every path split between cluster `a` (upstream a) and `b` by `weights`."""
    return snapshot(
        [route(prefix("/"), weights={"a": weights[0], "b": weights[1]})],
        {"a": [a], "b": [b]},
    )


def path_and_header_routes(a: int, b: int, c: int) -> Snapshot:
    """Routes in Envoy's order, the first match wins.

    - header `x-canary: yes` on any path -> b
    - exact path `/healthz` -> c
    - regex `/items/[0-9]+` (the whole path) -> b
    - prefix `/v1/` -> c
    - prefix `/` -> a (everything else)
    """
    return snapshot(
        [
            route(prefix("/", x_canary="yes"), "b"),
            route(path("/healthz"), "c"),
            route(regex("/items/[0-9]+"), "b"),
            route(prefix("/v1/"), "c"),
            route(prefix("/"), "a"),
        ],
        {"a": [a], "b": [b], "c": [c]},
    )


def retries(a: int) -> Snapshot:
    """Retry policies on routes, all to a.

    - `/retry`: retry_on 5xx, 2 retries;
    - `/once`: no retry_policy (Envoy: no retries);
    - `/unset`: retry_on 5xx, num_retries unset (Envoy: 1 retry);
    - `/status`: retry_on retriable-status-codes, 409 only.
    """
    return snapshot(
        [
            route(prefix("/retry"), "a", retry=retry_policy("5xx", num_retries=2)),
            route(prefix("/once"), "a"),
            route(prefix("/unset"), "a", retry=retry_policy("5xx")),
            route(
                prefix("/status"),
                "a",
                retry=retry_policy("retriable-status-codes", 2, retriable_status_codes=[409]),
            ),
        ],
        {"a": [a]},
    )


def more_retries(a: int, closed: int) -> Snapshot:
    """More retry_on conditions.

    - `/gateway` to a: retry_on gateway-error (502, 503, 504), 2 retries;
    - `/later` to a: retry_on 5xx, 1 retry, rate-limited back-off from `Retry-After`
      (seconds, at most 5 s);
    - `/connect` to cluster `spread` over 127.0.0.1:`closed` (nothing listens) and a,
      round robin: retry_on connect-failure, 1 retry.
    """
    later = retry_policy("5xx", num_retries=1)
    later.rate_limited_retry_back_off.reset_headers.add(
        name="retry-after", format=route_pb.RetryPolicy.SECONDS
    )
    later.rate_limited_retry_back_off.max_interval.CopyFrom(seconds(5.0))
    return snapshot(
        [
            route(prefix("/gateway"), "a", retry=retry_policy("gateway-error", num_retries=2)),
            route(prefix("/later"), "a", retry=later),
            route(prefix("/connect"), "spread", retry=retry_policy("connect-failure", 1)),
        ],
        {"a": [a], "spread": [closed, a]},
    )


def virtual_host_retries(a: int) -> Snapshot:
    """The virtual host retries 5xx twice; `/own` has a policy of its own (no retry on 5xx,
    only on resets), which replaces the virtual host's entirely; `/inherit` has none."""
    return snapshot(
        [
            route(prefix("/own"), "a", retry=retry_policy("reset", num_retries=3)),
            route(prefix("/inherit"), "a"),
        ],
        {"a": [a]},
        vhost_retry=retry_policy("5xx", num_retries=2),
    )


def timeouts(a: int) -> Snapshot:
    """`/route`: a 0.5 s route timeout, no retries.

    `/per-try`: a 0.4 s per-try timeout, retry_on 5xx with 2 retries, a 20 s route
    timeout (so that only the per-try timeout can fire).
    """
    return snapshot(
        [
            route(prefix("/route"), "a", timeout=0.5),
            route(
                prefix("/per-try"),
                "a",
                timeout=20.0,
                retry=retry_policy("5xx", num_retries=2, per_try_timeout=0.4),
            ),
        ],
        {"a": [a]},
    )


OUTLIER_CLUSTER = "ejecting"


def outlier_ejection(
    ports: Sequence[int], consecutive_5xx: int = 3, max_ejection_percent: int | None = 50
) -> Snapshot:
    """One round-robin cluster over `ports` that ejects a host after `consecutive_5xx`.

    base_ejection_time 30 s, so that an ejection lasts the whole test; max_ejection_percent
    50 by default, so that one host of three may go (None leaves it unset: Envoy's 10 %).
    The cluster has a name of its own so that its ejections end with the next snapshot (a
    Cluster that disappears takes its state along).
    """
    detection = outlier_detection_pb2.OutlierDetection(
        consecutive_5xx=wrappers_pb2.UInt32Value(value=consecutive_5xx),
        base_ejection_time=seconds(30.0),
        interval=seconds(10.0),
    )
    if max_ejection_percent is not None:
        detection.max_ejection_percent.value = max_ejection_percent
    return snapshot(
        [route(prefix("/"), OUTLIER_CLUSTER)],
        {OUTLIER_CLUSTER: ports},
        clusters=[eds_cluster(OUTLIER_CLUSTER, outlier_detection=detection)],
    )


BULKHEAD_CLUSTER = "bulkhead"


def bulkhead(a: int, max_requests: int = 1) -> Snapshot:
    """A cluster whose circuit_breakers allow `max_requests` requests in flight at once."""
    limits = circuit_breaker_pb2.CircuitBreakers(
        thresholds=[
            circuit_breaker_pb2.CircuitBreakers.Thresholds(
                max_requests=wrappers_pb2.UInt32Value(value=max_requests)
            )
        ]
    )
    return snapshot(
        [route(prefix("/"), BULKHEAD_CLUSTER)],
        {BULKHEAD_CLUSTER: [a]},
        clusters=[eds_cluster(BULKHEAD_CLUSTER, circuit_breakers=limits)],
    )


def aborting(a: int, status: int = 503) -> Snapshot:
    """The fault filter aborts every request with `status`; the route would retry 5xx."""
    return snapshot(
        [route(prefix("/"), "a", retry=retry_policy("5xx", num_retries=2))],
        {"a": [a]},
        http_filters=[fault_abort(status)],
    )


def delaying(a: int, delay: float = 0.3) -> Snapshot:
    """The fault filter delays every request by `delay` seconds, then it goes on to a."""
    return snapshot([route(prefix("/"), "a")], {"a": [a]}, http_filters=[fault_delay(delay)])


def header_matchers(a: int, b: int) -> Snapshot:
    """One route to b per kind of header matcher, in this order; everything else to a.

    - `x-exact` exactly `blue`;
    - `x-prefix` starting with `blue`;
    - `x-suffix` ending with `blue`;
    - `x-present` present, any value;
    - `x-regex` matching `v[0-9]+` as a whole;
    - `x-not` anything but `blue` (inverted: a request without the header matches too,
      so the route also requires `x-use-not` to be present).
    """

    def header(name: str, **fields: Any) -> route_pb.HeaderMatcher:
        return route_pb.HeaderMatcher(name=name, **fields)

    matchers = [
        header("x-exact", string_match=string_pb2.StringMatcher(exact="blue")),
        header("x-prefix", string_match=string_pb2.StringMatcher(prefix="blue")),
        header("x-suffix", string_match=string_pb2.StringMatcher(suffix="blue")),
        header("x-present", present_match=True),
        header(
            "x-regex",
            string_match=string_pb2.StringMatcher(
                safe_regex=regex_pb2.RegexMatcher(regex="v[0-9]+")
            ),
        ),
    ]
    routes = [
        route_pb.Route(match=route_pb.RouteMatch(prefix="/", headers=[matcher]), route=action)
        for matcher in matchers
        for action in [route_pb.RouteAction(cluster="b")]
    ]
    inverted = route_pb.RouteMatch(
        prefix="/",
        headers=[
            header("x-use-not", present_match=True),
            header("x-not", string_match=string_pb2.StringMatcher(exact="blue"), invert_match=True),
        ],
    )
    routes.append(route_pb.Route(match=inverted, route=route_pb.RouteAction(cluster="b")))
    routes.append(route(prefix("/"), "a"))
    return snapshot(routes, {"a": [a], "b": [b]})


def runtime_fraction(a: int, b: int, percent: int = 30) -> Snapshot:
    """A route to b that matches `percent` % of requests (runtime_fraction), else a."""
    share = route_pb.RouteMatch(
        prefix="/",
        runtime_fraction=base_pb2.RuntimeFractionalPercent(
            default_value=percent_pb2.FractionalPercent(
                numerator=percent, denominator=percent_pb2.FractionalPercent.HUNDRED
            ),
            runtime_key="routes.orders.canary",
        ),
    )
    return snapshot(
        [
            route_pb.Route(match=share, route=route_pb.RouteAction(cluster="b")),
            route(prefix("/"), "a"),
        ],
        {"a": [a], "b": [b]},
    )


#: The authorities `virtual_hosts` is for, each an api_listener, and where each goes.
DOMAIN_HOSTS = {
    "orders.test:8080": "a",  # exact wins over both wildcards it also matches
    "payments.test:8080": "b",  # *.test:8080
    "orders.eu.test:8080": "b",  # *.test:8080 and orders.*: a suffix wins over a prefix
    "orders.example:8080": "c",  # orders.*
    "other:8080": "d",  # *
}


def virtual_hosts(a: int, b: int, c: int, d: int) -> Snapshot:
    """Virtual hosts chosen by domain, in Envoy's order: exact, `*.suffix`, `prefix.*`, `*`.

    `orders.test:8080` -> a, `*.test:8080` -> b, `orders.*` -> c, `*` -> d. Every name in
    `DOMAIN_HOSTS` is a Listener (a proxyless client looks up the listener `host:port`)
    naming the same RouteConfiguration.
    """
    hosts = [
        ("any", "*", "d"),  # listed first: the order of virtual hosts does not matter
        ("prefix", "orders.*", "c"),
        ("suffix", "*.test:8080", "b"),
        ("exact", "orders.test:8080", "a"),
    ]
    config = route_pb2.RouteConfiguration(
        name=ROUTES,
        virtual_hosts=[
            route_pb.VirtualHost(name=name, domains=[domain], routes=[route(prefix("/"), cluster)])
            for name, domain, cluster in hosts
        ],
    )
    ports = {"a": a, "b": b, "c": c, "d": d}
    return {
        LISTENER: {name: api_listener(name) for name in DOMAIN_HOSTS},
        ROUTE_CONFIGURATION: {ROUTES: config},
        CLUSTER: {name: eds_cluster(name) for name in ports},
        CLUSTER_LOAD_ASSIGNMENT: {name: assignment(name, [port]) for name, port in ports.items()},
    }


def health(ports: Sequence[int], unhealthy: Sequence[int], cluster: str) -> Snapshot:
    """One cluster over `ports`, the `unhealthy` ones marked UNHEALTHY by EDS.

    Give each snapshot a `cluster` name of its own: Envoy merges an EDS change of health
    alone (no host added or removed) into one update per `update_merge_window` (1 s),
    after its ACK, while a new cluster starts with its endpoints' health as given.
    """
    statuses = {port: health_check_pb2.UNHEALTHY for port in unhealthy}
    return {
        **snapshot([route(prefix("/"), cluster)], {cluster: ports}),
        CLUSTER_LOAD_ASSIGNMENT: {cluster: assignment(cluster, ports, statuses)},
    }


def _locality(
    zone: str, ports: Sequence[int], *, priority: int = 0, weight: int = 0, unhealthy: int = 0
) -> endpoint_components_pb2.LocalityLbEndpoints:
    found = assignment("", ports, {unhealthy: health_check_pb2.UNHEALTHY}).endpoints[0]
    found.locality.zone = zone
    found.priority = priority
    if weight:
        found.load_balancing_weight.value = weight
    return found


def priorities(a: int, b: int, c: int) -> Snapshot:
    """Priority 0 holds a (healthy) and b (UNHEALTHY), priority 1 holds c.

    Half of priority 0 is healthy; with Envoy's overprovisioning factor 1.4 it takes
    70 % of the traffic (all of it to a) and 30 % spills over to priority 1.
    """
    name = "priorities"
    load = endpoint_pb2.ClusterLoadAssignment(
        cluster_name=name,
        endpoints=[
            _locality("z1", [a, b], unhealthy=b),
            _locality("z2", [c], priority=1),
        ],
    )
    return {
        **snapshot([route(prefix("/"), name)], {name: []}),
        CLUSTER_LOAD_ASSIGNMENT: {name: load},
    }


def localities(a: int, b: int, *, weighted: bool) -> Snapshot:
    """Two localities of one endpoint each, weights 1 (a) and 3 (b).

    Envoy applies locality weights only when the cluster says
    `common_lb_config.locality_weighted_lb_config`: with it, b gets 3/4 of the traffic;
    without it, the weights are ignored and round robin gives each half.
    """
    name = "localities-weighted" if weighted else "localities"
    cluster = eds_cluster(name)
    if weighted:
        cluster.common_lb_config.locality_weighted_lb_config.SetInParent()
    load = endpoint_pb2.ClusterLoadAssignment(
        cluster_name=name,
        endpoints=[_locality("z1", [a], weight=1), _locality("z2", [b], weight=3)],
    )
    return {
        **snapshot([route(prefix("/"), name)], {name: []}, clusters=[cluster]),
        CLUSTER_LOAD_ASSIGNMENT: {name: load},
    }


def endpoint_weights(a: int, b: int) -> Snapshot:
    """One locality of two endpoints, load_balancing_weight 1 (a) and 3 (b).

    Envoy's round robin over hosts of different weights is weighted: b gets 3/4.
    """
    name = "endpoint-weights"
    load = assignment(name, [a, b])
    load.endpoints[0].lb_endpoints[0].load_balancing_weight.value = 1
    load.endpoints[0].lb_endpoints[1].load_balancing_weight.value = 3
    return {
        **snapshot([route(prefix("/"), name)], {name: []}),
        CLUSTER_LOAD_ASSIGNMENT: {name: load},
    }


def degraded(a: int, b: int, c: int) -> Snapshot:
    """One locality: a HEALTHY, b and c DEGRADED.

    Health 140 x 1/3 = 46 and degraded 140 x 2/3 = 93, 100 in all: the healthy a takes
    46 %, the degraded b and c the other 54 %, 27 % each.
    """
    name = "degraded"
    statuses = {b: health_check_pb2.DEGRADED, c: health_check_pb2.DEGRADED}
    return {
        **snapshot([route(prefix("/"), name)], {name: []}),
        CLUSTER_LOAD_ASSIGNMENT: {name: assignment(name, [a, b, c], statuses)},
    }


# --- Istio ----------------------------------------------------------------------------

ISTIO_HOST = "orders.default.svc.cluster.local"
ISTIO_LISTENER = f"{ISTIO_HOST}:8080"
#: istiod names a proxyless client's RouteConfiguration after the service's cluster key.
ISTIO_ROUTES = f"outbound|8080||{ISTIO_HOST}"
ISTIO_CLUSTER = f"outbound|8080||{ISTIO_HOST}"
ISTIO_SUBSET_CLUSTER = f"outbound|8080|v1|{ISTIO_HOST}"
ISTIO_SAN = "spiffe://cluster.local/ns/default/sa/orders"
#: The retry policy istiod puts on every route a VirtualService leaves alone.
ISTIO_RETRY_ON = "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes"


def istio_upstream_tls(sans: Sequence[str]) -> base_pb2.TransportSocket:
    """ISTIO_MUTUAL as istiod's proxyless generator writes it (grpcgen buildCommonTLSContext).

    The workload certificate and the root come from the bootstrap's certificate provider
    instance `default` (certificate names `default` and `ROOTCA`), in both the current
    fields and the deprecated ones istiod still sends; the server must present one of
    `sans` (exact match), a SPIFFE id.
    """
    current = common_pb2.CertificateProviderPluginInstance
    deprecated = tls_pb2.CommonTlsContext.CertificateProviderInstance
    context = tls_pb2.UpstreamTlsContext(
        common_tls_context=tls_pb2.CommonTlsContext(
            tls_certificate_provider_instance=current(
                instance_name="default", certificate_name="default"
            ),
            tls_certificate_certificate_provider_instance=deprecated(
                instance_name="default", certificate_name="default"
            ),
            combined_validation_context=tls_pb2.CommonTlsContext.CombinedCertificateValidationContext(
                default_validation_context=common_pb2.CertificateValidationContext(
                    match_subject_alt_names=[string_pb2.StringMatcher(exact=san) for san in sans],
                    ca_certificate_provider_instance=current(
                        instance_name="default", certificate_name="ROOTCA"
                    ),
                ),
                validation_context_certificate_provider_instance=deprecated(
                    instance_name="default", certificate_name="ROOTCA"
                ),
            ),
        )
    )
    socket = base_pb2.TransportSocket(name=TLS_SOCKET)
    socket.typed_config.Pack(context)
    return socket


def istio_orders(port: int, sans: Sequence[str] = (ISTIO_SAN,)) -> Snapshot:
    """The orders service as istiod's proxyless (grpc) generator sends it, mTLS on.

    A VirtualService sends everything to subset v1 and a DestinationRule sets ISTIO_MUTUAL,
    so: listener `orders.default.svc.cluster.local:8080` (api_listener, fault then router
    filters, RDS `outbound|8080||orders.default.svc.cluster.local`), a virtual host with
    Istio's domains, one route to `outbound|8080|v1|orders.default.svc.cluster.local` with
    Istio's default retries and no timeout, and EDS clusters (service_name = cluster name)
    for the service and its subset, each with the certificate-provider TLS context.
    """
    manager = hcm_pb2.HttpConnectionManager(
        rds=hcm_pb2.Rds(
            route_config_name=ISTIO_ROUTES,
            config_source=config_source_pb2.ConfigSource(
                ads=config_source_pb2.AggregatedConfigSource()
            ),
        ),
        http_filters=[
            http_filter(FAULT_FILTER, fault_pb2.HTTPFault()),
            http_filter(ROUTER_FILTER, router_pb2.Router()),
        ],
    )
    listener = listener_pb2.Listener(
        name=ISTIO_LISTENER,
        address=address_pb2.Address(
            socket_address=address_pb2.SocketAddress(address="10.96.0.20", port_value=8080)
        ),
    )
    listener.api_listener.api_listener.Pack(manager)
    istio_retry = route_pb.RetryPolicy(
        retry_on=ISTIO_RETRY_ON,
        num_retries=wrappers_pb2.UInt32Value(value=2),
        retriable_status_codes=[503],
        host_selection_retry_max_attempts=5,
    )
    action = route_pb.RouteAction(
        cluster=ISTIO_SUBSET_CLUSTER, timeout=seconds(0.0), retry_policy=istio_retry
    )
    routes = route_pb2.RouteConfiguration(
        name=ISTIO_ROUTES,
        virtual_hosts=[
            route_pb.VirtualHost(
                name=ISTIO_LISTENER,
                domains=[
                    ISTIO_HOST,
                    ISTIO_LISTENER,
                    "orders",
                    "orders:8080",
                    "orders.default.svc",
                    "orders.default.svc:8080",
                    "orders.default",
                    "orders.default:8080",
                    "10.96.0.20",
                    "10.96.0.20:8080",
                ],
                routes=[route_pb.Route(name="default", match=prefix("/"), route=action)],
            )
        ],
    )
    tls = istio_upstream_tls(sans)
    clusters = {
        name: eds_cluster(name, service_name=name, transport_socket=tls)
        for name in (ISTIO_CLUSTER, ISTIO_SUBSET_CLUSTER)
    }
    return {
        LISTENER: {ISTIO_LISTENER: listener},
        ROUTE_CONFIGURATION: {ISTIO_ROUTES: routes},
        CLUSTER: clusters,
        CLUSTER_LOAD_ASSIGNMENT: {name: assignment(name, [port]) for name in clusters},
    }
