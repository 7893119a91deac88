"""The translation of xDS resources into meshlib's values: Envoy's meaning, defaults, refusals.

Resources are written as Envoy's JSON (protobuf's JSON mapping), as a control plane's
snapshot or an Envoy config dump shows them, and parsed into the real messages.
"""

from __future__ import annotations

import collections
from typing import Any

import httpx
import pytest

pytest.importorskip("envoy.config.cluster.v3.cluster_pb2", reason="needs meshlib[xds]")

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2

# Imported for their descriptors: the JSON below names them in "@type".
from envoy.extensions.filters.http.rbac.v3 import rbac_pb2  # noqa: F401
from envoy.extensions.filters.http.router.v3 import router_pb2  # noqa: F401
from envoy.extensions.load_balancing_policies.least_request.v3 import (  # noqa: F401
    least_request_pb2,
)
from google.protobuf import json_format

import meshlib
from meshlib._config import MeshConfig
from meshlib._xds.clusters import ClusterSettings, cluster_settings, load_assignment_endpoints
from meshlib._xds.fields import Refused
from meshlib._xds.routes import ROUTE_TIMEOUT, XdsRoute, pick_virtual_host, route_table
from meshlib._xds.translate import Translation, compose, listener_routes

pytestmark = pytest.mark.usefixtures("rng", "no_waits")

HCM = (
    "type.googleapis.com/envoy.extensions.filters.network."
    "http_connection_manager.v3.HttpConnectionManager"
)
LEAST_REQUEST = (
    "type.googleapis.com/envoy.extensions.load_balancing_policies.least_request.v3.LeastRequest"
)
FAULT = "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault"
ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
ALL_METHODS = {"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"}


def _parse(data: dict[str, Any], message: Any) -> Any:
    return json_format.ParseDict(data, message)


def listener(name: str = "orders:8080", *filters: dict[str, Any], **hcm: Any) -> Any:
    manager: dict[str, Any] = {"@type": HCM, "stat_prefix": "x", **hcm}
    if "route_config" not in hcm and "rds" not in hcm:
        manager["rds"] = {"route_config_name": "orders-routes", "config_source": {"ads": {}}}
    manager["http_filters"] = [*filters, {"name": "router", "typed_config": {"@type": ROUTER}}]
    return _parse(
        {"name": name, "api_listener": {"api_listener": manager}}, listener_pb2.Listener()
    )


def routes(*route_list: dict[str, Any], domains: list[str] | None = None, **vhost: Any) -> Any:
    return _parse(
        {
            "name": "orders-routes",
            "virtual_hosts": [
                {"name": "orders", "domains": domains or ["*"], "routes": list(route_list), **vhost}
            ],
        },
        route_pb2.RouteConfiguration(),
    )


def route(match: dict[str, Any] | None = None, **action: Any) -> dict[str, Any]:
    return {"match": match or {"prefix": "/"}, "route": {"cluster": "orders-v1", **action}}


def one(*route_list: dict[str, Any], **vhost: Any) -> XdsRoute:
    table = route_table(routes(*route_list, **vhost), "orders:8080")
    assert table is not None
    return table[0]


def cluster(name: str = "orders-v1", **fields: Any) -> Any:
    data: dict[str, Any] = {
        "name": name,
        "type": "EDS",
        "eds_cluster_config": {"eds_config": {"ads": {}}},
        "connect_timeout": "1s",
        **fields,
    }
    return _parse(data, cluster_pb2.Cluster())


def assignment(*localities: dict[str, Any], name: str = "orders-v1") -> Any:
    return _parse(
        {"cluster_name": name, "endpoints": list(localities)}, endpoint_pb2.ClusterLoadAssignment()
    )


def hosts(*addresses: str, health: str | None = None, **locality: Any) -> dict[str, Any]:
    endpoints = []
    for address in addresses:
        host, _, port = address.rpartition(":")
        entry: dict[str, Any] = {
            "endpoint": {
                "address": {
                    "socket_address": {"address": host.strip("[]"), "port_value": int(port)}
                }
            }
        }
        if health is not None:
            entry["health_status"] = health
        endpoints.append(entry)
    return {"lb_endpoints": endpoints, **locality}


def refused(build: Any, resource: str, field: str, value: str) -> Refused:
    with pytest.raises(Refused) as raised:
        build()
    error = raised.value
    assert (error.resource, error.field) == (resource, field)
    assert value in str(error)
    assert str(error).startswith(f"{resource}: {field}: ")
    return error


# Listener


def test_a_listener_names_its_rds_route_configuration() -> None:
    read = listener_routes(listener())
    assert (read.rds, read.inline, read.faults) == ("orders-routes", None, None)


def test_a_listener_may_carry_its_route_configuration_inline() -> None:
    inline = {"name": "inline", "virtual_hosts": [{"name": "v", "domains": ["*"]}]}
    read = listener_routes(listener(route_config=inline))
    assert read.rds is None
    assert read.inline.name == "inline"


def test_the_fault_filter_becomes_faults() -> None:
    fault = {
        "name": "envoy.filters.http.fault",
        "typed_config": {
            "@type": FAULT,
            "abort": {
                "http_status": 418,
                "percentage": {"numerator": 25, "denominator": "HUNDRED"},
            },
            "delay": {
                "fixed_delay": "0.2s",
                "percentage": {"numerator": 5000, "denominator": "TEN_THOUSAND"},
            },
        },
    }
    faults = listener_routes(listener("orders:8080", fault)).faults
    assert faults == meshlib.Faults(abort=0.25, status=418, delay=0.2, delayed=0.5)


def test_a_fault_filter_without_percentages_injects_nothing() -> None:
    # Envoy's percentage defaults to 0 of 100.
    fault = {
        "name": "envoy.filters.http.fault",
        "typed_config": {
            "@type": FAULT,
            "abort": {"http_status": 503},
            "delay": {"fixed_delay": "1s"},
        },
    }
    assert listener_routes(listener("orders:8080", fault)).faults is None


def test_fault_settings_meshlib_lacks_are_refused() -> None:
    for extra, field in (
        ({"headers": [{"name": "x-fault", "present_match": True}]}, "headers"),
        ({"abort": {"grpc_status": 14}}, "abort.grpc_status"),
        ({"delay": {"header_delay": {}}}, "delay.header_delay"),
    ):
        fault = {"name": "fault", "typed_config": {"@type": FAULT, **extra}}
        refused(
            lambda fault=fault: listener_routes(listener("orders:8080", fault)),
            "Listener orders:8080",
            f"api_listener.api_listener.http_filters[0].typed_config.{field}",
            "not supported",
        )


def test_unknown_http_filters_are_refused_unless_optional() -> None:
    other = {"name": "envoy.filters.http.rbac", "typed_config": {"@type": ROUTER}}
    other["typed_config"]["@type"] = (
        "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC"
    )
    refused(
        lambda: listener_routes(listener("orders:8080", other)),
        "Listener orders:8080",
        "api_listener.api_listener.http_filters[0]",
        "envoy.filters.http.rbac",
    )
    assert listener_routes(listener("orders:8080", {**other, "is_optional": True})).rds


def test_a_listener_that_is_not_an_api_listener_is_refused() -> None:
    socket = _parse(
        {"name": "orders:8080", "address": {"socket_address": {"port_value": 1}}},
        listener_pb2.Listener(),
    )
    refused(lambda: listener_routes(socket), "Listener orders:8080", "api_listener", "None")


# Virtual hosts


@pytest.mark.parametrize(
    ("authority", "chosen"),
    [
        ("orders.svc:8080", 0),  # exact beats every wildcard
        ("ORDERS.svc:8080", 0),  # case-insensitive
        ("a.orders.svc:8080", 1),  # the longest suffix wildcard
        ("b.svc:8080", 2),
        ("orders.other", 3),  # a prefix wildcard
        ("elsewhere", 4),  # the universal one, last
    ],
)
def test_the_virtual_host_is_the_most_specific_match(authority: str, chosen: int) -> None:
    domains = [
        ["orders.svc:8080"],
        ["*.orders.svc:8080"],
        ["*.svc:8080"],
        ["orders.*"],
        ["*"],
    ]
    assert pick_virtual_host(domains, authority) == chosen


def test_a_wildcard_matches_at_least_one_character_and_none_may_match() -> None:
    assert pick_virtual_host([["*.orders"]], ".orders") is None
    assert pick_virtual_host([["*.orders"]], "x.orders") == 0
    assert pick_virtual_host([["orders.*"]], "orders.") is None
    assert pick_virtual_host([["a"], ["b"]], "c") is None
    config = routes(route(), domains=["payments"])
    assert route_table(config, "orders:8080") is None


# Route match


def test_path_matches_become_route_paths() -> None:
    assert one(route({"prefix": "/v2/"})).route.path == "/v2/"
    assert one(route({"prefix": "/"})).route.path is None  # every path
    assert one(route({"prefix": ""})).route.path is None
    assert one(route({"path": "/health"})).route.path == meshlib.PathExact("/health")
    regex = one(route({"safe_regex": {"regex": "/v[0-9]+/.*"}})).route.path
    assert regex == meshlib.PathRegex("/v[0-9]+/.*")
    separated = one(route({"path_separated_prefix": "/api"})).route.path
    assert isinstance(separated, meshlib.PathRegex)
    assert [separated.matches(p) for p in ("/api", "/api/x", "/apix")] == [True, True, False]


def test_header_matchers_become_header_matches() -> None:
    read = one(
        route(
            {
                "prefix": "/",
                "headers": [
                    {"name": "X-Exact", "exact_match": "a"},
                    {"name": "x-prefix", "prefix_match": "b"},
                    {"name": "x-suffix", "suffix_match": "c", "invert_match": True},
                    {"name": "x-present", "present_match": True},
                    {"name": "x-absent", "present_match": False},
                    {"name": "x-regex", "safe_regex_match": {"regex": "d+"}},
                    {"name": "x-string", "string_match": {"prefix": "e"}},
                    {"name": "x-string-regex", "string_match": {"safe_regex": {"regex": "f+"}}},
                    {"name": "x-any"},
                ],
            }
        )
    )
    assert dict(read.route.matchers()) == {
        "x-exact": meshlib.HeaderMatch(exact="a"),
        "x-prefix": meshlib.HeaderMatch(prefix="b"),
        "x-suffix": meshlib.HeaderMatch(suffix="c", invert=True),
        "x-present": meshlib.HeaderMatch(present=True),
        "x-absent": meshlib.HeaderMatch(present=False),
        "x-regex": meshlib.HeaderMatch(regex="d+"),
        "x-string": meshlib.HeaderMatch(prefix="e"),
        "x-string-regex": meshlib.HeaderMatch(regex="f+"),
        "x-any": meshlib.HeaderMatch(present=True),
    }


def test_runtime_fraction_is_the_routes_share() -> None:
    match = {
        "prefix": "/",
        "runtime_fraction": {"default_value": {"numerator": 5}, "runtime_key": "k"},
    }
    assert one(route(match)).route.weight == 0.05
    match["runtime_fraction"] = {"default_value": {"numerator": 250000, "denominator": "MILLION"}}
    assert one(route(match)).route.weight == 0.25


@pytest.mark.parametrize(
    ("match", "field", "value"),
    [
        ({"prefix": "/", "case_sensitive": False}, "match.case_sensitive", "False"),
        ({"prefix": "/", "query_parameters": [{"name": "q"}]}, "match.query_parameters", "q"),
        ({"prefix": "/", "grpc": {}}, "match.grpc", "{"),
        ({"prefix": "v2"}, "match.prefix", "'v2'"),
        ({"safe_regex": {"regex": "(("}}, "match.safe_regex.regex", "'(('"),
        (
            {"prefix": "/", "headers": [{"name": "x", "range_match": {"start": 1, "end": 2}}]},
            "match.headers[0].range_match",
            "start",
        ),
        (
            {"prefix": "/", "headers": [{"name": "x", "contains_match": "a"}]},
            "match.headers[0].contains_match",
            "'a'",
        ),
        (
            {
                "prefix": "/",
                "headers": [{"name": "x", "string_match": {"exact": "a", "ignore_case": True}}],
            },
            "match.headers[0].string_match.ignore_case",
            "True",
        ),
        (
            {
                "prefix": "/",
                "headers": [
                    {"name": "x", "exact_match": "a", "treat_missing_header_as_empty": True}
                ],
            },
            "match.headers[0].treat_missing_header_as_empty",
            "True",
        ),
        (
            {"prefix": "/", "headers": [{"name": ":method", "exact_match": "GET"}]},
            "match.headers[0].name",
            "':method'",
        ),
    ],
)
def test_matches_meshlib_cannot_honour_are_refused(
    match: dict[str, Any], field: str, value: str
) -> None:
    refused(
        lambda: one(route(match)),
        "RouteConfiguration orders-routes",
        f"virtual_hosts[0].routes[0].{field}",
        value,
    )


# Route action


def test_a_route_sends_to_a_cluster_or_weighted_clusters() -> None:
    assert one(route()).route.to == "orders-v1"
    weighted = {
        "clusters": [
            {"name": "orders-v1", "weight": 90},
            {"name": "orders-v2", "weight": 10},
            {"name": "orders-v3", "weight": 0},  # takes nothing
        ]
    }
    read = one({"match": {"prefix": "/"}, "route": {"weighted_clusters": weighted}})
    assert read.route.targets() == (("orders-v1", 90.0), ("orders-v2", 10.0))


@pytest.mark.parametrize(
    ("action", "field", "value"),
    [
        ({"cluster_header": "x-cluster"}, "route.cluster_header", "x-cluster"),
        ({"cluster": "c", "prefix_rewrite": "/v2"}, "route.prefix_rewrite", "/v2"),
        ({"cluster": "c", "host_rewrite_literal": "other"}, "route.host_rewrite_literal", "other"),
        (
            {"cluster": "c", "request_mirror_policies": [{"cluster": "m"}]},
            "route.request_mirror_policies",
            "m",
        ),
        (
            {"cluster": "c", "hedge_policy": {"hedge_on_per_try_timeout": True}},
            "route.hedge_policy.hedge_on_per_try_timeout",
            "True",
        ),
        (
            {"weighted_clusters": {"clusters": [{"name": "c", "weight": 0}]}},
            "route.weighted_clusters",
            "no cluster",
        ),
        (
            {
                "weighted_clusters": {
                    "clusters": [{"name": "c", "weight": 1, "host_rewrite_literal": "h"}]
                }
            },
            "route.weighted_clusters.clusters[0].host_rewrite_literal",
            "'h'",
        ),
    ],
)
def test_actions_meshlib_cannot_honour_are_refused(
    action: dict[str, Any], field: str, value: str
) -> None:
    refused(
        lambda: one({"match": {"prefix": "/"}, "route": action}),
        "RouteConfiguration orders-routes",
        f"virtual_hosts[0].routes[0].{field}",
        value,
    )


def test_redirects_and_direct_responses_are_refused() -> None:
    redirect = {"match": {"prefix": "/"}, "redirect": {"host_redirect": "x"}}
    refused(
        lambda: one(redirect),
        "RouteConfiguration orders-routes",
        "virtual_hosts[0].routes[0].redirect",
        "host_redirect",
    )
    direct = {"match": {"prefix": "/"}, "direct_response": {"status": 200}}
    refused(
        lambda: one(direct),
        "RouteConfiguration orders-routes",
        "virtual_hosts[0].routes[0].direct_response",
        "200",
    )


def test_the_route_timeout_is_envoys_15s_unless_set_and_0_is_none() -> None:
    assert ROUTE_TIMEOUT == 15.0
    assert one(route()).total == 15.0
    assert one(route(timeout="2.5s")).total == 2.5
    assert one(route(timeout="0s")).total is None


def test_max_stream_duration_bounds_the_request_too() -> None:
    bounded = one(route(timeout="5s", max_stream_duration={"max_stream_duration": "2s"}))
    assert bounded.total == 2.0
    unbounded = one(route(timeout="0s", max_stream_duration={"max_stream_duration": "3s"}))
    assert unbounded.total == 3.0
    grpc_only = one(route(max_stream_duration={"grpc_timeout_header_max": "0s"}))
    assert grpc_only.total == 15.0


def test_a_hedge_policy_that_hedges_nothing_is_accepted() -> None:
    calm = {"initial_requests": 1, "additional_request_chance": {"numerator": 0}}
    assert one(route(hedge_policy=calm)).route.to == "orders-v1"
    refused(
        lambda: one(route(hedge_policy={"initial_requests": 2})),
        "RouteConfiguration orders-routes",
        "virtual_hosts[0].routes[0].route.hedge_policy.initial_requests",
        "2",
    )


def test_ignore_port_in_host_matching_matches_the_host_alone() -> None:
    config = routes(route(), domains=["orders"])
    assert route_table(config, "orders:8080") is None
    config.ignore_port_in_host_matching = True
    assert route_table(config, "orders:8080") is not None


def test_no_retry_policy_means_no_retries() -> None:
    assert one(route()).retry is None


def test_num_retries_unset_is_one_retry_and_0_is_none() -> None:
    retry = one(route(retry_policy={"retry_on": "5xx"})).retry
    assert retry is not None
    assert retry.attempts == 2
    assert one(route(retry_policy={"retry_on": "5xx", "num_retries": 0})).retry is None
    three = one(route(retry_policy={"retry_on": "5xx", "num_retries": 3})).retry
    assert three is not None
    assert three.attempts == 4


@pytest.mark.parametrize(
    ("retry_on", "statuses", "on_error"),
    [
        ("5xx", set(range(500, 600)), "all"),
        ("gateway-error", {502, 503, 504}, "all"),
        ("reset", set(), "all"),
        ("connect-failure", set(), "connect"),
        ("refused-stream", set(), "connect"),
        ("retriable-4xx", {409}, "none"),
        ("retriable-status-codes", {429, 503}, "none"),
        (
            "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes",
            {429, 503},
            "connect",
        ),
        ("gateway-error, retriable-4xx", {409, 502, 503, 504}, "all"),
    ],
)
def test_retry_on_becomes_what_is_retried(retry_on: str, statuses: set[int], on_error: str) -> None:
    policy = {"retry_on": retry_on, "retriable_status_codes": [429, 503]}
    retry = one(route(retry_policy=policy)).retry
    assert retry is not None
    assert retry.on_status == statuses
    assert retry.on_error == on_error
    assert retry.methods == ALL_METHODS  # Envoy retries whatever the method


def test_retry_on_that_retries_nothing_here_is_no_retry() -> None:
    # gRPC statuses: an HTTP answer carries none.
    assert one(route(retry_policy={"retry_on": "unavailable,cancelled"})).retry is None


def test_the_virtual_hosts_retry_policy_is_the_default_and_a_routes_replaces_it() -> None:
    table = route_table(
        routes(
            route(retry_policy={"retry_on": "gateway-error", "num_retries": 4}),
            route({"prefix": "/other"}),
            retry_policy={"retry_on": "5xx", "num_retries": 2, "per_try_timeout": "0.5s"},
        ),
        "orders:8080",
    )
    assert table is not None
    own, inherited = table
    assert own.retry is not None
    assert inherited.retry is not None
    assert (own.retry.attempts, own.retry.on_status) == (5, {502, 503, 504})
    assert own.attempt is None  # the route's policy replaces the virtual host's whole
    assert (inherited.retry.attempts, inherited.attempt) == (3, 0.5)


def test_per_try_timeout_is_the_attempt_bound_within_the_route_timeout() -> None:
    read = one(route(timeout="1s", retry_policy={"retry_on": "5xx", "per_try_timeout": "0.25s"}))
    assert (read.total, read.attempt) == (1.0, 0.25)
    longer = one(route(timeout="1s", retry_policy={"retry_on": "5xx", "per_try_timeout": "3s"}))
    assert longer.attempt == 1.0


def test_retry_back_off_defaults_to_envoys_25ms_up_to_ten_times() -> None:
    retry = one(route(retry_policy={"retry_on": "5xx"})).retry
    assert retry is not None
    assert retry.backoff == meshlib.Backoff(base=0.025, cap=0.25, jitter="full")
    custom = one(
        route(
            retry_policy={
                "retry_on": "5xx",
                "retry_back_off": {"base_interval": "0.1s", "max_interval": "2s"},
            }
        )
    ).retry
    assert custom is not None
    assert custom.backoff == meshlib.Backoff(base=0.1, cap=2.0, jitter="full")
    base_only = one(
        route(retry_policy={"retry_on": "5xx", "retry_back_off": {"base_interval": "0.1s"}})
    ).retry
    assert base_only is not None
    assert base_only.backoff.cap == pytest.approx(1.0)


def test_retry_after_is_honoured_only_with_rate_limited_retry_back_off() -> None:
    plain = one(
        route(retry_policy={"retry_on": "retriable-status-codes", "retriable_status_codes": [429]})
    ).retry
    assert plain is not None
    assert plain.retry_after_cap == 0  # Envoy ignores Retry-After
    limited = one(
        route(
            retry_policy={
                "retry_on": "retriable-status-codes",
                "retriable_status_codes": [429],
                "rate_limited_retry_back_off": {
                    "reset_headers": [{"name": "Retry-After", "format": "SECONDS"}],
                    "max_interval": "20s",
                },
            }
        )
    ).retry
    assert limited is not None
    assert limited.retry_after_cap == 20.0


@pytest.mark.parametrize(
    ("policy", "field", "value"),
    [
        ({"retry_on": "5xx,envoy-ratelimited"}, "retry_policy.retry_on", "envoy-ratelimited"),
        ({"retry_on": "retriable-headers"}, "retry_policy.retry_on", "retriable-headers"),
        (
            {"retry_on": "5xx", "retriable_headers": [{"name": "x"}]},
            "retry_policy.retriable_headers",
            "x",
        ),
        ({"retry_on": "5xx", "retry_priority": {"name": "p"}}, "retry_policy.retry_priority", "p"),
        (
            {
                "retry_on": "5xx",
                "retry_host_predicate": [{"name": "envoy.retry_host_predicates.omit_canary_hosts"}],
            },
            "retry_policy.retry_host_predicate[0]",
            "omit_canary_hosts",
        ),
        (
            {
                "retry_on": "5xx",
                "rate_limited_retry_back_off": {
                    "reset_headers": [{"name": "X-RateLimit-Reset", "format": "UNIX_TIMESTAMP"}],
                    "max_interval": "1s",
                },
            },
            "retry_policy.rate_limited_retry_back_off.reset_headers[0]",
            "X-RateLimit-Reset",
        ),
    ],
)
def test_retry_settings_meshlib_cannot_honour_are_refused(
    policy: dict[str, Any], field: str, value: str
) -> None:
    refused(
        lambda: one(route(retry_policy=policy)),
        "RouteConfiguration orders-routes",
        f"virtual_hosts[0].routes[0].route.{field}",
        value,
    )


def test_the_previous_hosts_predicate_is_what_meshlib_does_anyway() -> None:
    policy = {
        "retry_on": "5xx",
        "retry_host_predicate": [{"name": "envoy.retry_host_predicates.previous_hosts"}],
        "host_selection_retry_max_attempts": 3,
    }
    assert one(route(retry_policy=policy)).retry is not None


# Cluster


def test_round_robin_and_least_request_are_meshlibs_balancers() -> None:
    assert cluster_settings(cluster(lb_policy="ROUND_ROBIN")).balance == "round_robin"
    assert cluster_settings(cluster()).balance == "round_robin"  # Envoy's default
    assert cluster_settings(cluster(lb_policy="LEAST_REQUEST")).balance == "p2c"
    typed = {
        "policies": [
            {
                "typed_extension_config": {
                    "name": "x",
                    "typed_config": {"@type": LEAST_REQUEST},
                }
            }
        ]
    }
    assert cluster_settings(cluster(load_balancing_policy=typed)).balance == "p2c"


@pytest.mark.parametrize(
    ("fields", "field", "value"),
    [
        ({"lb_policy": "MAGLEV"}, "lb_policy", "'MAGLEV'"),
        ({"lb_policy": "RING_HASH"}, "lb_policy", "'RING_HASH'"),
        (
            {"lb_policy": "LEAST_REQUEST", "least_request_lb_config": {"choice_count": 3}},
            "least_request_lb_config.choice_count",
            "3",
        ),
        ({"type": "STRICT_DNS"}, "type", "'STRICT_DNS'"),
        ({"type": "ORIGINAL_DST"}, "type", "'ORIGINAL_DST'"),
        (  # a TLS socket without its UpstreamTlsContext
            {"transport_socket": {"name": "envoy.transport_sockets.tls"}},
            "transport_socket.typed_config",
            "envoy.transport_sockets.tls",
        ),
        ({"health_checks": [{"timeout": "1s"}]}, "health_checks", "timeout"),
        (
            {"lb_subset_config": {"fallback_policy": "ANY_ENDPOINT"}},
            "lb_subset_config",
            "ANY_ENDPOINT",
        ),
        (
            {"outlier_detection": {"enforcing_success_rate": 100}},
            "outlier_detection.enforcing_success_rate",
            "100",
        ),
        (
            {"outlier_detection": {"enforcing_consecutive_5xx": 50}},
            "outlier_detection.enforcing_consecutive_5xx",
            "50",
        ),
        (
            {"outlier_detection": {"enforcing_failure_percentage": 100}},
            "outlier_detection.enforcing_failure_percentage",
            "100",
        ),
        (
            {"outlier_detection": {"success_rate_minimum_hosts": 3}},
            "outlier_detection.success_rate_minimum_hosts",
            "3",
        ),
        (
            {"outlier_detection": {"split_external_local_origin_errors": True}},
            "outlier_detection.split_external_local_origin_errors",
            "True",
        ),
    ],
)
def test_cluster_settings_meshlib_cannot_honour_are_refused(
    fields: dict[str, Any], field: str, value: str
) -> None:
    refused(lambda: cluster_settings(cluster(**fields)), "Cluster orders-v1", field, value)


def test_outlier_detection_takes_envoys_defaults() -> None:
    ejection = cluster_settings(cluster(outlier_detection={})).ejection
    assert ejection == meshlib.Ejection(
        consecutive=5, base=30.0, cap=300.0, max_share=0.10, at_least_one=False
    )
    assert cluster_settings(cluster()).ejection is None  # no outlier_detection: none


def test_outlier_detection_settings_become_the_ejection() -> None:
    detection = {
        "consecutive_5xx": 3,
        "base_ejection_time": "10s",
        "max_ejection_time": "60s",
        "max_ejection_percent": 50,
        "always_eject_one_host": True,
        "interval": "1s",
    }
    ejection = cluster_settings(cluster(outlier_detection=detection)).ejection
    assert ejection == meshlib.Ejection(
        consecutive=3, base=10.0, cap=60.0, max_share=0.5, at_least_one=True
    )
    off = cluster_settings(cluster(outlier_detection={"enforcing_consecutive_5xx": 0})).ejection
    assert off is None


def test_envoys_ejection_share_includes_the_endpoint_being_ejected(clock: Any) -> None:
    from meshlib._traffic import EndpointPool

    ejection = cluster_settings(cluster(outlier_detection={"consecutive_5xx": 1})).ejection
    assert ejection is not None
    for count, ejectable in ((9, 0), (10, 1), (20, 2)):
        pool = EndpointPool(
            meshlib.Endpoints([f"10.0.0.{i}:80" for i in range(1, count + 1)], ejection=ejection),
            "c",
        )
        for endpoint in pool.endpoints:
            endpoint.in_flight += 1
            pool.done(endpoint, True, 0.01, clock.now())
        assert sum(e.ejected for e in pool.snapshot(clock.now())) == ejectable


def test_circuit_breakers_give_the_bulkhead_and_the_retry_budget() -> None:
    default = cluster_settings(cluster())
    assert default.bulkhead == meshlib.Bulkhead(max_concurrent=1024)  # Envoy's default
    assert default.budget == meshlib.Budget(ratio=0.2, min_per_second=3.0, ttl=10.0)
    thresholds = {
        "thresholds": [
            {"priority": "HIGH", "max_requests": 1},  # meshlib sends at the default priority
            {
                "max_requests": 50,
                "max_connections": 10,
                "retry_budget": {"budget_percent": {"value": 25.0}, "min_retry_concurrency": 5},
            },
        ]
    }
    settings = cluster_settings(cluster(circuit_breakers=thresholds))
    assert settings.bulkhead == meshlib.Bulkhead(max_concurrent=50)
    assert settings.budget == meshlib.Budget(ratio=0.25, min_per_second=5.0, ttl=10.0)
    only_retries = cluster_settings(cluster(circuit_breakers={"thresholds": [{"max_retries": 7}]}))
    assert only_retries.budget.min_per_second == 7.0


def test_an_eds_cluster_names_its_load_assignment() -> None:
    assert cluster_settings(cluster()).eds_name == "orders-v1"
    named = cluster(eds_cluster_config={"service_name": "orders-eds", "eds_config": {"ads": {}}})
    assert cluster_settings(named).eds_name == "orders-eds"


def test_a_static_cluster_carries_its_endpoints() -> None:
    static = cluster(
        type="STATIC",
        load_assignment={
            "cluster_name": "orders-v1",
            "endpoints": [hosts("10.0.0.1:80", "[::1]:81")],
        },
    )
    static.ClearField("eds_cluster_config")
    settings = cluster_settings(static)
    assert settings.eds_name is None
    assert settings.static == meshlib.Endpoints(
        ["10.0.0.1:80", "[::1]:81"], balance="round_robin", ejection=None
    )


# ClusterLoadAssignment


def _settings(**fields: Any) -> ClusterSettings:
    return cluster_settings(cluster(**fields))


def test_healthy_unknown_and_degraded_endpoints_are_used() -> None:
    cla = assignment(
        hosts("10.0.0.1:80", health="HEALTHY"),
        hosts("10.0.0.2:80"),  # UNKNOWN
        hosts("10.0.0.3:80", health="UNHEALTHY"),
        hosts("10.0.0.4:80", health="DRAINING"),
        hosts("10.0.0.5:80", health="DEGRADED"),
        hosts("10.0.0.6:80", "10.0.0.7:80", health="HEALTHY"),
    )
    found = load_assignment_endpoints(cla, _settings(lb_policy="LEAST_REQUEST"), "x")
    # Envoy: health 140 x 4/7 = 80, degraded 140 x 1/7 = 20; the healthy four share 80 %
    # and the degraded one takes the 20 % they cannot: 20 % each, so no weights.
    usable = ["10.0.0.1:80", "10.0.0.2:80", "10.0.0.5:80", "10.0.0.6:80", "10.0.0.7:80"]
    assert found == meshlib.Endpoints(usable, balance="p2c", ejection=None)


def _lb(address: str, health: str | None = None, weight: int | None = None) -> dict[str, Any]:
    """One lb_endpoint, with its health and load_balancing_weight when given."""
    (entry,) = hosts(address, health=health)["lb_endpoints"]
    if weight is not None:
        entry["load_balancing_weight"] = weight
    return entry


def _zone(*lb_endpoints: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {"lb_endpoints": list(lb_endpoints), **fields}


def _shares(cla: Any, settings: ClusterSettings | None = None) -> dict[str, float | str]:
    """Each address's weight, or "equal" for each when the endpoints are unweighted."""
    found = load_assignment_endpoints(cla, settings or _settings(), "x")
    assert found is not None
    if found.weights is None:
        return dict.fromkeys(found.addresses, "equal")
    return dict(found.weighted())


def test_degraded_endpoints_take_what_the_healthy_ones_cannot() -> None:
    cla = assignment(
        _zone(
            _lb("10.0.0.1:80", "HEALTHY"),
            _lb("10.0.0.2:80", "HEALTHY"),
            _lb("10.0.0.3:80", "DEGRADED"),
            _lb("10.0.0.4:80", "UNHEALTHY"),
            _lb("10.0.0.5:80", "UNHEALTHY"),
        )
    )
    # Health 140 x 2/5 = 56, degraded 140 x 1/5 = 28, total 84: healthy 56 x 100 // 84
    # = 66 %, degraded min(34, 28 x 100 // 84 = 33) = 33 %, the 1 % left to the healthy.
    # 3 of 5 usable is above the panic threshold: the unhealthy two get nothing.
    assert _shares(cla) == pytest.approx(
        {"10.0.0.1:80": 0.335, "10.0.0.2:80": 0.335, "10.0.0.3:80": 0.33}
    )


def test_priorities_spill_over_with_the_overprovisioning_factor() -> None:
    cla = assignment(
        _zone(_lb("10.0.0.1:80"), _lb("10.0.0.2:80", "UNHEALTHY")),
        _zone(_lb("10.0.1.1:80"), priority=1),
    )
    # P0's health is 140 x 1/2 = 70: it takes 70 %, P1 the 30 % left.
    assert _shares(cla) == pytest.approx({"10.0.0.1:80": 0.7, "10.0.1.1:80": 0.3})
    # With a factor of 100 (the CLA's own policy), P0 can take only 50 %.
    cla.policy.overprovisioning_factor.value = 100
    assert _shares(cla) == {"10.0.0.1:80": "equal", "10.0.1.1:80": "equal"}
    cla.policy.overprovisioning_factor.value = 0
    refused(
        lambda: load_assignment_endpoints(cla, _settings(), "ClusterLoadAssignment orders-v1"),
        "ClusterLoadAssignment orders-v1",
        "policy.overprovisioning_factor",
        "0",
    )


def test_an_address_listed_twice_is_one_endpoint_of_its_priority() -> None:
    cla = assignment(
        _zone(_lb("10.0.0.1:80"), _lb("10.0.0.2:80", "UNHEALTHY")),
        _zone(_lb("10.0.0.1:80")),  # the same priority: not a third endpoint
        _zone(_lb("10.0.1.1:80"), _lb("10.0.0.2:80"), priority=1),
    )
    # P0 is a (healthy) and b (unhealthy): health 70. P1 takes 30 %, half of it on b,
    # which is listed (and healthy) in P1 too: its two shares add up.
    assert _shares(cla) == pytest.approx(
        {"10.0.0.1:80": 0.7, "10.0.0.2:80": 0.15, "10.0.1.1:80": 0.15}
    )


def test_a_priority_below_the_panic_threshold_panics_only_when_the_total_is_short() -> None:
    unhealthy = [_lb(f"10.0.0.{i}:80", "UNHEALTHY") for i in (2, 3, 4)]
    # P0: 1 of 4 healthy (25 %, health 35); P1: 2 of 3 (health 93). The total is 100:
    # no priority panics, P0 takes 35 % on its healthy host, P1 65 %.
    enough = assignment(
        _zone(_lb("10.0.0.1:80"), *unhealthy),
        _zone(_lb("10.0.1.1:80"), _lb("10.0.1.2:80"), _lb("10.0.1.3:80", "UNHEALTHY"), priority=1),
    )
    assert _shares(enough) == pytest.approx(
        {"10.0.0.1:80": 0.35, "10.0.1.1:80": 0.325, "10.0.1.2:80": 0.325}
    )
    # P0: 1 of 5 healthy (20 %, health 28); P1: 1 of 2 (50 %, health 70). The total is 98:
    # P0 takes 28 x 100 // 98 = 28 %, P1 min(72, 71) = 71 %, the 1 % left to P0 (29 %).
    # P0 is below the threshold: its 29 % spreads over all five of its hosts.
    short = assignment(
        _zone(_lb("10.0.0.1:80"), *unhealthy, _lb("10.0.0.5:80", "UNHEALTHY")),
        _zone(_lb("10.0.1.1:80"), _lb("10.0.1.2:80", "UNHEALTHY"), priority=1),
    )
    expected = {f"10.0.0.{i}:80": 0.058 for i in range(1, 6)} | {"10.0.1.1:80": 0.71}
    assert _shares(short) == pytest.approx(expected)


def test_when_every_priority_panics_the_load_follows_the_host_counts() -> None:
    # P0: none of 2 healthy; P1: 1 of 4 (25 %). Both panic: P0 takes 100 x 2 // 6 = 33 %
    # plus the 1 % left (34 %), P1 100 x 4 // 6 = 66 %, each over all its hosts.
    cla = assignment(
        _zone(_lb("10.0.0.1:80", "UNHEALTHY"), _lb("10.0.0.2:80", "UNHEALTHY")),
        _zone(
            _lb("10.0.1.1:80"),
            *(_lb(f"10.0.1.{i}:80", "UNHEALTHY") for i in (2, 3, 4)),
            priority=1,
        ),
    )
    expected = {"10.0.0.1:80": 0.17, "10.0.0.2:80": 0.17}
    expected |= {f"10.0.1.{i}:80": 0.165 for i in range(1, 5)}
    assert _shares(cla) == pytest.approx(expected)
    # A panic threshold of 0: no panic, and no healthy host anywhere but one.
    never = _settings(common_lb_config={"healthy_panic_threshold": {"value": 0}})
    assert _shares(cla, never) == {"10.0.1.1:80": "equal"}


def test_endpoint_weights_share_their_priority_and_count_with_weighted_priority_health() -> None:
    cla = assignment(
        _zone(_lb("10.0.0.1:80", weight=3), _lb("10.0.0.2:80", weight=1)),
    )
    assert _shares(cla) == pytest.approx({"10.0.0.1:80": 0.75, "10.0.0.2:80": 0.25})
    spilling = assignment(
        _zone(_lb("10.0.0.1:80", weight=3), _lb("10.0.0.2:80", "UNHEALTHY", weight=1)),
        _zone(_lb("10.0.1.1:80"), priority=1),
    )
    # By count, P0's health is 140 x 1/2 = 70; weighted, 140 x 3/4 = 105, so 100 %.
    assert _shares(spilling) == pytest.approx({"10.0.0.1:80": 0.7, "10.0.1.1:80": 0.3})
    spilling.policy.weighted_priority_health = True
    assert _shares(spilling) == {"10.0.0.1:80": "equal"}
    zero = assignment(_zone(_lb("10.0.0.1:80", weight=0)))
    refused(
        lambda: load_assignment_endpoints(zero, _settings(), "ClusterLoadAssignment orders-v1"),
        "ClusterLoadAssignment orders-v1",
        "endpoints[0].lb_endpoints[0].load_balancing_weight",
        "0",
    )


def test_the_lowest_priority_with_usable_endpoints_is_used() -> None:
    cla = assignment(
        hosts("10.0.1.1:80", health="UNHEALTHY"),
        hosts("10.0.2.1:80", priority=1),
        hosts("10.0.3.1:80", priority=2),
    )
    found = load_assignment_endpoints(cla, _settings(), "x")
    assert found is not None
    assert found.addresses == ("10.0.2.1:80",)


def test_below_the_panic_threshold_every_endpoint_is_used() -> None:
    cla = assignment(
        hosts("10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80", health="UNHEALTHY"), hosts("10.0.0.4:80")
    )
    found = load_assignment_endpoints(cla, _settings(), "x")
    assert found is not None
    assert len(found.addresses) == 4  # 1 of 4 healthy: Envoy's panic mode
    lower = _settings(common_lb_config={"healthy_panic_threshold": {"value": 20.0}})
    found = load_assignment_endpoints(cla, lower, "x")
    assert found is not None
    assert found.addresses == ("10.0.0.4:80",)


def test_locality_weights_count_only_with_locality_weighted_lb_config() -> None:
    cla = assignment(
        hosts("10.0.1.1:80", load_balancing_weight=1),
        hosts("10.0.2.1:80", load_balancing_weight=3),
        hosts("10.0.3.1:80"),  # no weight
    )
    plain = load_assignment_endpoints(cla, _settings(), "x")  # Envoy ignores them
    assert plain is not None
    assert plain.weights is None
    assert len(plain.addresses) == 3
    weighted = _settings(common_lb_config={"locality_weighted_lb_config": {}})
    # The locality without a weight takes nothing.
    assert _shares(cla, weighted) == pytest.approx({"10.0.1.1:80": 0.25, "10.0.2.1:80": 0.75})
    even = assignment(
        hosts("10.0.1.1:80", load_balancing_weight=2),
        hosts("10.0.2.1:80", load_balancing_weight=2),
        hosts("10.0.3.1:80"),  # weight 0: takes nothing
    )
    found = load_assignment_endpoints(even, weighted, "x")
    assert found is not None
    assert found.addresses == ("10.0.1.1:80", "10.0.2.1:80")
    assert found.weights is None


def test_a_localitys_weight_counts_its_healthy_share_times_the_factor() -> None:
    cla = assignment(
        _zone(_lb("10.0.1.1:80"), _lb("10.0.1.2:80"), load_balancing_weight=1),
        _zone(
            _lb("10.0.2.1:80", weight=2), _lb("10.0.2.2:80", "UNHEALTHY"), load_balancing_weight=3
        ),
    )
    weighted = _settings(common_lb_config={"locality_weighted_lb_config": {}})
    # Effective weights: 1 x min(1, 1.4 x 2/2) = 1 and 3 x min(1, 1.4 x 1/2) = 2.1; each
    # locality's share goes to its healthy hosts by their own weights.
    assert _shares(cla, weighted) == pytest.approx(
        {"10.0.1.1:80": 0.5 / 3.1, "10.0.1.2:80": 0.5 / 3.1, "10.0.2.1:80": 2.1 / 3.1}
    )
    # Without locality weighting: the priority's healthy hosts by their own weights.
    assert _shares(cla) == pytest.approx(
        {"10.0.1.1:80": 0.25, "10.0.1.2:80": 0.25, "10.0.2.1:80": 0.5}
    )


def test_istios_outlier_detection_with_success_rate_off_is_taken() -> None:
    detection = {
        "consecutive_5xx": 7,
        "interval": "10s",
        "base_ejection_time": "30s",
        "max_ejection_percent": 100,
        "enforcing_consecutive_5xx": 100,
        "enforcing_success_rate": 0,
        "consecutive_gateway_failure": 5,
        "enforcing_consecutive_gateway_failure": 0,
    }
    ejection = cluster_settings(cluster(outlier_detection=detection)).ejection
    assert ejection == meshlib.Ejection(
        consecutive=7, base=30.0, cap=300.0, max_share=1.0, at_least_one=False
    )


def test_no_usable_endpoint_is_none_and_drop_overloads_are_refused() -> None:
    assert load_assignment_endpoints(assignment(), _settings(), "x") is None
    never = _settings(common_lb_config={"healthy_panic_threshold": {"value": 0}})
    unhealthy = assignment(hosts("10.0.0.1:80", health="UNHEALTHY"))
    assert load_assignment_endpoints(unhealthy, never, "x") is None
    # With the default threshold, a priority with no healthy host panics: all are used.
    assert _shares(unhealthy) == {"10.0.0.1:80": "equal"}
    dropping = assignment(hosts("10.0.0.1:80"))
    dropping.policy.drop_overloads.add(category="x")
    refused(
        lambda: load_assignment_endpoints(dropping, _settings(), "ClusterLoadAssignment orders-v1"),
        "ClusterLoadAssignment orders-v1",
        "policy.drop_overloads",
        "x",
    )


# compose: the values a Mesh takes


def _compose(
    *route_list: dict[str, Any], faults: meshlib.Faults | None = None, **known: Any
) -> Translation:
    table = route_table(routes(*route_list), "orders:8080")
    settings = {"orders-v1": _settings(), "orders-v2": _settings(name="orders-v2")} | known
    found = {
        "orders-v1": meshlib.Endpoints(["10.0.1.1:80"]),
        "orders-v2": meshlib.Endpoints(["10.0.2.1:80"]),
    }
    default = meshlib.STANDARD.replace(timeout=meshlib.Timeout(header="x-deadline"))
    return compose(default, "orders:8080", faults, table, settings, found)


def test_each_route_gets_a_view_of_its_cluster_with_the_routes_retry_and_timeout() -> None:
    done = _compose(
        route({"prefix": "/slow"}, timeout="5s"),
        route(retry_policy={"retry_on": "5xx", "num_retries": 2}),
    )
    assert set(done.clusters) == {"orders-v1@orders:8080#0", "orders-v1@orders:8080#1"}
    assert dict(done.owners) == dict.fromkeys(done.clusters, "orders-v1")
    slow, retried = (
        done.clusters["orders-v1@orders:8080#0"],
        done.clusters["orders-v1@orders:8080#1"],
    )
    assert slow.timeout == meshlib.Timeout(total=5.0, attempt=None, header="x-deadline")
    assert slow.retry is None
    assert retried.retry is not None
    assert retried.retry.attempts == 3
    assert retried.retry.budget == meshlib.Budget(ratio=0.2, min_per_second=3.0, ttl=10.0)
    assert retried.timeout == meshlib.Timeout(total=15.0, attempt=None, header="x-deadline")
    for view in (slow, retried):
        assert view.breaker is None  # Envoy has none: outlier ejection instead
        assert view.bulkhead == meshlib.Bulkhead(max_concurrent=1024)
        assert view.endpoints == meshlib.Endpoints(["10.0.1.1:80"])
        assert view.tracing == meshlib.STANDARD.tracing
    assert [r.to for r in done.policy.routes or ()] == [
        "orders-v1@orders:8080#0",
        "orders-v1@orders:8080#1",
    ]
    assert done.policy.faults is None  # the last route takes every request


def test_weighted_clusters_become_weighted_views() -> None:
    weighted = {
        "clusters": [{"name": "orders-v1", "weight": 90}, {"name": "orders-v2", "weight": 10}]
    }
    done = _compose({"match": {"prefix": "/"}, "route": {"weighted_clusters": weighted}})
    (only_route,) = done.policy.routes or ()
    assert only_route.targets() == (
        ("orders-v1@orders:8080#0", 90.0),
        ("orders-v2@orders:8080#0", 10.0),
    )
    assert done.owners["orders-v2@orders:8080#0"] == "orders-v2"


def test_requests_no_route_takes_get_envoys_404() -> None:
    done = _compose(route({"prefix": "/v1/"}))
    assert done.policy.faults == meshlib.Faults(abort=1.0, status=404)
    nothing = compose(meshlib.STANDARD, "orders:8080", None, None, {}, {})
    assert nothing.policy.faults == meshlib.Faults(abort=1.0, status=404)


def test_a_cluster_without_endpoints_answers_503_as_envoy() -> None:
    done = _compose(route(cluster="orders-v9"))
    view = done.clusters["orders-v9@orders:8080#0"]
    assert view.faults == meshlib.Faults(abort=1.0, status=503)


def test_the_listeners_faults_apply_to_every_route() -> None:
    faults = meshlib.Faults(abort=0.5, status=503)
    done = _compose(route({"prefix": "/a"}), route(), faults=faults)
    assert {view.faults for view in done.clusters.values()} == {faults}


def test_routes_whose_shares_exceed_the_whole_are_refused() -> None:
    half = {"default_value": {"numerator": 60}}
    refused(
        lambda: _compose(
            route({"prefix": "/", "runtime_fraction": half}),
            route({"prefix": "/", "runtime_fraction": half}),
        ),
        "Listener orders:8080",
        "routes",
        "0.6",
    )


# Through a Mesh: the views share their cluster's state; the request keeps its Host


def test_views_of_one_cluster_share_its_endpoints_and_keep_the_requests_host(clock: Any) -> None:
    detection = {"consecutive_5xx": 1, "max_ejection_percent": 50}
    settings = cluster_settings(cluster(outlier_detection=detection))
    found = load_assignment_endpoints(
        assignment(hosts("10.0.1.1:8080", "10.0.1.2:8080")), settings, "x"
    )
    assert found is not None
    table = route_table(
        routes(route({"prefix": "/a"}, timeout="1s"), route({"prefix": "/b"}, timeout="2s")),
        "orders:8080",
    )
    done = compose(
        meshlib.STANDARD, "orders:8080", None, table, {"orders-v1": settings}, {"orders-v1": found}
    )
    mesh = meshlib.Mesh()
    mesh._apply_config(
        MeshConfig(
            default=meshlib.STANDARD,
            destinations={"orders:8080": done.policy},
            source="xds",
            digest="",
            clusters=done.clusters,
            owners=done.owners,
        )
    )
    seen: list[tuple[str, str]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        address = request.url.netloc.decode()
        seen.append((address, request.headers["host"]))
        return httpx.Response(503 if address == "10.0.1.1:8080" else 200)

    with meshlib.wrap(httpx.Client(transport=httpx.MockTransport(handler)), mesh) as client:
        for path in ("/a", "/b", "/a", "/b", "/a", "/b"):
            response = client.get(f"http://orders:8080{path}")
            assert str(response.url) == f"http://orders:8080{path}"
    assert {host for _, host in seen} == {"orders:8080"}
    # One failure ejects 10.0.1.1 for both routes: after it, only 10.0.1.2 is used.
    first_failure = [address for address, _ in seen].index("10.0.1.1:8080")
    assert collections.Counter(a for a, _ in seen[first_failure + 1 :]) == {
        "10.0.1.2:8080": len(seen) - first_failure - 1
    }
    assert list(mesh.endpoints()) == ["orders-v1"]
    with meshlib.wrap(httpx.Client(transport=httpx.MockTransport(handler)), mesh) as client:
        assert client.get("http://orders:8080/nowhere").status_code == 404  # no route takes it


# The source: each update translated, the Mesh's table rebuilt, refusals keep the last good


class _Client:
    """Stands for the ADS client: records subscriptions, sends nothing."""

    def __init__(self, bootstrap: Any, handler: Any) -> None:
        self.watched: dict[str, list[str]] = collections.defaultdict(list)

    def subscribe(self, type_url: str, names: list[str]) -> None:
        self.watched[type_url].extend(names)

    def unsubscribe(self, type_url: str, names: list[str]) -> None:
        for name in names:
            self.watched[type_url].remove(name)

    def close(self) -> None:
        pass


def _source() -> tuple[Any, meshlib.Mesh]:
    import types

    from meshlib._xds.ads import CLUSTER, CLUSTER_LOAD_ASSIGNMENT, LISTENER, ROUTE_CONFIGURATION
    from meshlib._xds.ads import Update as AdsUpdate
    from meshlib._xds.bootstrap import parse_bootstrap
    from meshlib._xds.source import XdsSource

    boot = parse_bootstrap(
        '{"xds_servers": [{"server_uri": "127.0.0.1:1", "channel_creds": [{"type": "insecure"}]}]}',
        "b.json",
    )
    mesh = meshlib.Mesh()
    source = XdsSource(boot, meshlib.STANDARD, mesh._apply_config, client=_Client)
    kinds = {
        "lds": LISTENER,
        "rds": ROUTE_CONFIGURATION,
        "cds": CLUSTER,
        "eds": CLUSTER_LOAD_ASSIGNMENT,
    }

    def send(kind: str, *resources: Any, missing: tuple[str, ...] = ()) -> dict[str, str]:
        by_name = {getattr(r, "cluster_name", "") or r.name: r for r in resources}
        update = AdsUpdate(kinds[kind], "1", types.MappingProxyType(by_name), frozenset(missing))
        return dict(source._handle(update))

    source.send = send
    return source, mesh


def test_the_source_follows_listener_to_endpoints_and_subscribes_along() -> None:
    from meshlib._xds.ads import CLUSTER, CLUSTER_LOAD_ASSIGNMENT, ROUTE_CONFIGURATION

    source, mesh = _source()
    assert source.send("lds", listener()) == {}
    assert source.client.watched[ROUTE_CONFIGURATION] == ["orders-routes"]
    assert "orders:8080" not in mesh.destinations  # routes not known yet: default
    assert source.send("rds", routes(route())) == {}
    assert source.client.watched[CLUSTER] == ["orders-v1"]
    view = "orders-v1@orders:8080#0"
    assert mesh.clusters[view].faults == meshlib.Faults(abort=1.0, status=503)  # no cluster yet
    assert source.send("cds", cluster()) == {}
    assert source.client.watched[CLUSTER_LOAD_ASSIGNMENT] == ["orders-v1"]
    assert source.send("eds", assignment(hosts("10.0.0.1:80"))) == {}
    assert mesh.clusters[view].endpoints == meshlib.Endpoints(
        ["10.0.0.1:80"], balance="round_robin", ejection=None
    )
    assert mesh.clusters[view].faults is None
    assert source.wait_ready(["orders:8080"], 0)


def test_a_refused_update_keeps_the_last_good_table() -> None:
    source, mesh = _source()
    source.send("lds", listener())
    source.send("rds", routes(route(timeout="3s")))
    source.send("cds", cluster())
    source.send("eds", assignment(hosts("10.0.0.1:80")))
    view = "orders-v1@orders:8080#0"
    before = mesh.clusters[view]
    bad = routes(route({"prefix": "/", "query_parameters": [{"name": "q"}]}))
    errors = source.send("rds", bad)
    assert list(errors) == ["orders-routes"]
    assert "match.query_parameters" in errors["orders-routes"]
    assert mesh.clusters[view] == before  # still 3 s
    errors = source.send("cds", cluster(lb_policy="MAGLEV"))
    assert errors == {
        "orders-v1": "lb_policy: only ROUND_ROBIN and LEAST_REQUEST are supported (got 'MAGLEV')"
    }
    assert mesh.clusters[view] == before


def test_what_does_not_exist_falls_back_as_envoy_does() -> None:
    source, mesh = _source()
    source.send("lds", listener())
    source.send("rds", routes(route()))
    source.send("cds", cluster())
    source.send("eds", assignment(hosts("10.0.0.1:80")))
    source.send("cds", missing=("orders-v1",))  # the cluster is gone: 503, as Envoy
    assert mesh.clusters["orders-v1@orders:8080#0"].faults == meshlib.Faults(abort=1.0, status=503)
    source.send("lds", missing=("orders:8080",))  # the listener is gone: default and DNS
    assert "orders:8080" not in mesh.destinations
    assert mesh.policy_for("orders", 8080) == meshlib.STANDARD
    assert source.wait_ready(["orders:8080"], 0)


def test_the_source_stops_watching_what_no_listener_leads_to() -> None:
    from meshlib._xds.ads import CLUSTER, CLUSTER_LOAD_ASSIGNMENT

    source, mesh = _source()
    source.send("lds", listener())
    source.send("rds", routes(route()))
    source.send("cds", cluster())
    source.send("eds", assignment(hosts("10.0.0.1:80")))
    assert source.client.watched[CLUSTER] == ["orders-v1"]
    source.send("rds", routes(route(cluster="orders-v2")))  # the route moves to v2
    assert source.client.watched[CLUSTER] == ["orders-v2"]
    assert source.client.watched[CLUSTER_LOAD_ASSIGNMENT] == []
    assert "orders-v1@orders:8080#0" not in mesh.clusters
    source.send("cds", cluster("orders-v2"))
    assert source.client.watched[CLUSTER_LOAD_ASSIGNMENT] == ["orders-v2"]
