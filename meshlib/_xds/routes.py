"""RouteConfiguration to meshlib's routes, with Envoy's meaning and defaults.

`route_table` picks the virtual host a request's authority matches (`pick_virtual_host`,
as Envoy and gRPC pick it) and reads each of its routes into an `XdsRoute`: a meshlib
`Route` (path, headers, runtime_fraction as its weight, a cluster or weighted clusters
as its `to`) and what the route sets of retry and timeout, Envoy's defaults filled in.
Pure functions of protobuf messages; see docs/xds.md for the table.

Over 500 lines because Envoy's route match, action and retry policy each have
many fields with their own defaults; each is read next to the refusals of what
meshlib cannot honour, so no field is ignored by being elsewhere.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from .._errors import ConfigError
from .._policy import Backoff, HeaderMatch, PathExact, PathRegex, Retry, Route
from .fields import Refused, fraction, only, seconds

__all__ = ["ROUTE_TIMEOUT", "XdsRoute", "pick_virtual_host", "route_table"]

T = TypeVar("T")

_PREVIOUS_HOSTS = "envoy.retry_host_predicates.previous_hosts"

#: Envoy's route timeout when none is set.
ROUTE_TIMEOUT = 15.0
#: Envoy's retry_back_off when none is set: base 25 ms, cap 10 x base.
BACKOFF = Backoff(base=0.025, cap=0.25, jitter="full")
# Envoy retries whatever the method (the body buffered); meshlib retries what it can replay.
ANY_METHOD = frozenset(
    {"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"}
)
# retry_on: the statuses each condition retries, and which transport errors.
_STATUSES: Mapping[str, frozenset[int]] = {
    "5xx": frozenset(range(500, 600)),
    "gateway-error": frozenset({502, 503, 504}),
    "retriable-4xx": frozenset({409}),
}
_ALL_ERRORS = frozenset({"5xx", "gateway-error", "reset"})
_CONNECT_ERRORS = frozenset({"connect-failure", "refused-stream", "reset-before-request"})
# Conditions on gRPC statuses (grpc-status), which HTTP answers never carry, and on
# HTTP/3: accepted, and retry nothing here.
_NO_OPS = frozenset(
    {
        "cancelled",
        "deadline-exceeded",
        "internal",
        "resource-exhausted",
        "unavailable",
        "http3-post-connect-failure",
    }
)
_KNOWN_RETRY_ON = (
    _ALL_ERRORS | _CONNECT_ERRORS | _NO_OPS | {"5xx", "retriable-4xx", "retriable-status-codes"}
)


@dataclass(frozen=True, slots=True)
class XdsRoute:
    """One route of the chosen virtual host, read.

    Attributes:
        route: its match (path, headers, weight) and its `to`: a cluster name or
            cluster names with weights.
        retry: its retry policy (the virtual host's when it has none), budget not
            yet set; None: no retries, as Envoy.
        total: the route timeout in seconds, None: none.
        attempt: the per-try timeout, None: none.
    """

    route: Route
    retry: Retry | None
    total: float | None
    attempt: float | None


def pick_virtual_host(domains: Sequence[Sequence[str]], authority: str) -> int | None:
    """Return the index of the virtual host whose domains match `authority`, or None.

    As Envoy and gRPC (gRFC A28) choose: an exact domain, else the longest
    ``*suffix``, else the longest ``prefix*``, else ``*``; case-insensitive; a
    wildcard matches at least one character.
    """
    host = authority.lower()
    best: tuple[int, int, int] | None = None  # (kind: 0 exact ... 3 any, -length, index)
    for index, names in enumerate(domains):
        for domain in names:
            name = domain.lower()
            if name == "*":
                rank = (3, 0, index)
            elif name.startswith("*"):
                if not (len(host) > len(name) - 1 and host.endswith(name[1:])):
                    continue
                rank = (1, -len(name), index)
            elif name.endswith("*"):
                if not (len(host) > len(name) - 1 and host.startswith(name[:-1])):
                    continue
                rank = (2, -len(name), index)
            elif name == host:
                rank = (0, 0, index)
            else:
                continue
            if best is None or rank < best:
                best = rank
    return None if best is None else best[2]


_ROUTE_CONFIG_FIELDS = (
    "name",
    "virtual_hosts",
    "validate_clusters",
    "ignore_port_in_host_matching",
    "max_direct_response_body_size_bytes",
)
_VIRTUAL_HOST_FIELDS = (
    "name",
    "domains",
    "routes",
    "retry_policy",
    "hedge_policy",
    "metadata",
    "include_request_attempt_count",
    "include_attempt_count_in_response",
    "typed_per_filter_config",
)
_ROUTE_FIELDS = (
    "name",
    "match",
    "route",
    "metadata",
    "decorator",
    "tracing",
    "stat_prefix",
    "typed_per_filter_config",
)
_ACTION_FIELDS = (
    "cluster",
    "weighted_clusters",
    "timeout",
    "retry_policy",
    "hedge_policy",
    "idle_timeout",
    "cluster_not_found_response_code",
    "priority",
    "hash_policy",
    "max_grpc_timeout",
    "grpc_timeout_offset",
    "max_stream_duration",
)


def route_table(config: Any, authority: str) -> list[XdsRoute] | None:
    """Read the routes of the virtual host of `config` that `authority` picks.

    `authority` is what the request's Host header says: ``host`` for the
    scheme's own port, else ``host:port``. None: no virtual host matches.

    Raises:
        Refused: a field meshlib cannot honour, naming its path.
    """
    where = f"RouteConfiguration {config.name}"
    only(config, where, "", _ROUTE_CONFIG_FIELDS)
    if config.ignore_port_in_host_matching:
        authority = _without_port(authority)
    chosen = pick_virtual_host([list(vh.domains) for vh in config.virtual_hosts], authority)
    if chosen is None:
        return None
    vhost = config.virtual_hosts[chosen]
    path = f"virtual_hosts[{chosen}]"
    only(vhost, where, path, _VIRTUAL_HOST_FIELDS)
    _no_filter_overrides(vhost, where, path)
    if vhost.HasField("hedge_policy"):
        _hedge(vhost.hedge_policy, where, f"{path}.hedge_policy")
    default_retry = vhost.retry_policy if vhost.HasField("retry_policy") else None
    default_path = f"{path}.retry_policy"
    routes: list[XdsRoute] = []
    for index, route in enumerate(vhost.routes):
        here = f"{path}.routes[{index}]"
        only(route, where, here, _ROUTE_FIELDS)
        _no_filter_overrides(route, where, here)
        if route.WhichOneof("action") != "route":
            raise Refused(
                where, here, route.WhichOneof("action"), "only forwarding routes are supported"
            )
        action = route.route
        only(action, where, f"{here}.route", _ACTION_FIELDS)
        if action.HasField("hedge_policy"):
            _hedge(action.hedge_policy, where, f"{here}.route.hedge_policy")
        to = _targets(action, where, f"{here}.route")
        path_match, headers, weight = _match(route.match, where, f"{here}.match")
        try:
            meshlib_route = Route(to=to, headers=headers or None, weight=weight, path=path_match)
        except ConfigError as exc:
            raise Refused(where, here, route, str(exc)) from exc
        if action.HasField("retry_policy"):
            retry = _retry(action.retry_policy, where, f"{here}.route.retry_policy")
        elif default_retry is not None:
            retry = _retry(default_retry, where, default_path)
        else:
            retry = None
        total: float | None = ROUTE_TIMEOUT
        if action.HasField("timeout"):
            total = seconds(action.timeout) or None  # 0: no timeout
        if action.HasField("max_stream_duration"):
            total = _max_stream_duration(action.max_stream_duration, total, where, here)
        attempt = None
        chosen_retry = action.retry_policy if action.HasField("retry_policy") else default_retry
        if chosen_retry is not None and chosen_retry.HasField("per_try_timeout"):
            attempt = seconds(chosen_retry.per_try_timeout) or None
            if attempt is not None and total is not None:
                attempt = min(attempt, total)  # the route's timeout bounds every try
        routes.append(XdsRoute(meshlib_route, retry, total, attempt))
    return routes


def _without_port(authority: str) -> str:
    host, colon, port = authority.rpartition(":")
    if colon and port.isdigit() and not authority.endswith("]"):
        return host
    return authority


def _max_stream_duration(config: Any, total: float | None, where: str, path: str) -> float | None:
    """Return the route's bound with its max_stream_duration (both bound the request)."""
    here = f"{path}.route.max_stream_duration"
    only(
        config,
        where,
        here,
        ("max_stream_duration", "grpc_timeout_header_max", "grpc_timeout_header_offset"),
    )
    if not config.HasField("max_stream_duration"):
        return total  # the rest is about gRPC's grpc-timeout header
    longest = seconds(config.max_stream_duration)
    if longest <= 0:
        return total  # 0: no bound, as Envoy
    return longest if total is None else min(total, longest)


def _no_filter_overrides(message: Any, where: str, path: str) -> None:
    for name in message.typed_per_filter_config:
        raise Refused(
            where,
            f"{path}.typed_per_filter_config",
            name,
            "per-route filter settings are not supported",
        )


def _hedge(policy: Any, where: str, path: str) -> None:
    """Accept a hedge_policy that hedges nothing (its defaults); refuse one that hedges."""
    only(
        policy,
        where,
        path,
        ("initial_requests", "additional_request_chance", "hedge_on_per_try_timeout"),
    )
    if policy.HasField("initial_requests") and policy.initial_requests.value > 1:
        raise Refused(
            where,
            f"{path}.initial_requests",
            policy.initial_requests.value,
            "hedging is not supported",
        )
    if policy.HasField("additional_request_chance") and policy.additional_request_chance.numerator:
        raise Refused(
            where,
            f"{path}.additional_request_chance",
            policy.additional_request_chance,
            "hedging is not supported",
        )
    if policy.hedge_on_per_try_timeout:
        raise Refused(where, f"{path}.hedge_on_per_try_timeout", True, "hedging is not supported")


def _targets(action: Any, where: str, path: str) -> str | dict[str, float]:
    which = action.WhichOneof("cluster_specifier")
    if which == "cluster":
        return str(action.cluster)
    if which != "weighted_clusters":
        raise Refused(
            where,
            f"{path}.{which}",
            getattr(action, which or "cluster", None),
            "a route names a cluster or weighted_clusters",
        )
    weighted = action.weighted_clusters
    only(weighted, where, f"{path}.weighted_clusters", ("clusters", "total_weight"))
    names: dict[str, float] = {}
    for index, entry in enumerate(weighted.clusters):
        here = f"{path}.weighted_clusters.clusters[{index}]"
        only(entry, where, here, ("name", "weight", "metadata"))
        weight = entry.weight.value if entry.HasField("weight") else 0
        if weight > 0:  # a cluster of weight 0 takes nothing
            names[entry.name] = names.get(entry.name, 0.0) + weight
    if not names:
        raise Refused(
            where, f"{path}.weighted_clusters", weighted, "no cluster with a weight above 0"
        )
    return names


def _match(
    match: Any, where: str, path: str
) -> tuple[Any, dict[str, str | HeaderMatch], float | None]:
    only(
        match,
        where,
        path,
        (
            "prefix",
            "path",
            "safe_regex",
            "path_separated_prefix",
            "case_sensitive",
            "runtime_fraction",
            "headers",
        ),
    )
    if match.HasField("case_sensitive") and not match.case_sensitive.value:
        raise Refused(
            where, f"{path}.case_sensitive", False, "only case-sensitive paths are supported"
        )
    which = match.WhichOneof("path_specifier")
    path_match: Any = None
    if which == "prefix":
        prefix = match.prefix
        if prefix and not prefix.startswith("/"):
            raise Refused(where, f"{path}.prefix", prefix, "a prefix starting with '/'")
        path_match = prefix if prefix not in ("", "/") else None  # "/" and "": every path
    elif which == "path":
        path_match = _meshlib(lambda: PathExact(match.path), where, f"{path}.path", match.path)
    elif which == "safe_regex":
        path_match = _regex(match.safe_regex, where, f"{path}.safe_regex", PathRegex)
    elif which == "path_separated_prefix":
        prefix = match.path_separated_prefix
        # The prefix, then the end of the path or a "/" (Envoy's path-separated prefix).
        path_match = _meshlib(
            lambda: PathRegex(re.escape(prefix) + "(/.*)?"),
            where,
            f"{path}.path_separated_prefix",
            prefix,
        )
    else:
        raise Refused(
            where,
            f"{path}.path_specifier",
            which,
            "prefix, path, safe_regex or path_separated_prefix",
        )
    headers: dict[str, str | HeaderMatch] = {}
    for index, matcher in enumerate(match.headers):
        here = f"{path}.headers[{index}]"
        name = matcher.name.lower()
        if name.startswith(":") or name in headers:
            raise Refused(
                where,
                f"{here}.name",
                matcher.name,
                "pseudo-headers and a header matched twice are not supported",
            )
        headers[name] = _header(matcher, where, here)
    weight = None
    if match.HasField("runtime_fraction"):
        only(
            match.runtime_fraction,
            where,
            f"{path}.runtime_fraction",
            ("default_value", "runtime_key"),
        )
        weight = fraction(
            match.runtime_fraction.default_value, where, f"{path}.runtime_fraction.default_value"
        )
    return path_match, headers, weight


def _meshlib(build: Callable[[], T], where: str, path: str, value: object) -> T:
    try:
        return build()
    except ConfigError as exc:
        raise Refused(where, path, value, exc.reason) from exc


def _regex(matcher: Any, where: str, path: str, kind: Any) -> Any:
    only(matcher, where, path, ("regex", "google_re2"))
    return _meshlib(lambda: kind(matcher.regex), where, f"{path}.regex", matcher.regex)


def _header(matcher: Any, where: str, path: str) -> HeaderMatch:
    only(
        matcher,
        where,
        path,
        (
            "name",
            "exact_match",
            "safe_regex_match",
            "present_match",
            "prefix_match",
            "suffix_match",
            "string_match",
            "invert_match",
        ),
    )
    invert = matcher.invert_match
    which = matcher.WhichOneof("header_match_specifier")
    if which is None:
        return HeaderMatch(present=True, invert=invert)  # Envoy: no matcher, the header is sent
    if which == "exact_match":
        return HeaderMatch(exact=matcher.exact_match, invert=invert)
    if which == "prefix_match":
        return HeaderMatch(prefix=matcher.prefix_match, invert=invert)
    if which == "suffix_match":
        return HeaderMatch(suffix=matcher.suffix_match, invert=invert)
    if which == "present_match":
        return HeaderMatch(present=matcher.present_match, invert=invert)
    if which == "safe_regex_match":
        regex = matcher.safe_regex_match
        only(regex, where, f"{path}.safe_regex_match", ("regex", "google_re2"))
        return _meshlib(
            lambda: HeaderMatch(regex=regex.regex, invert=invert),
            where,
            f"{path}.safe_regex_match.regex",
            regex.regex,
        )
    if which == "string_match":
        string = matcher.string_match
        here = f"{path}.string_match"
        only(string, where, here, ("exact", "prefix", "suffix", "safe_regex", "ignore_case"))
        if string.ignore_case:
            raise Refused(
                where, f"{here}.ignore_case", True, "case-insensitive matching is not supported"
            )
        kind = string.WhichOneof("match_pattern")
        if kind == "safe_regex":
            only(string.safe_regex, where, f"{here}.safe_regex", ("regex", "google_re2"))
            return _meshlib(
                lambda: HeaderMatch(regex=string.safe_regex.regex, invert=invert),
                where,
                f"{here}.safe_regex.regex",
                string.safe_regex.regex,
            )
        if kind in ("exact", "prefix", "suffix"):
            return HeaderMatch(**{kind: getattr(string, kind)}, invert=invert)
        raise Refused(
            where,
            f"{here}.{kind}",
            getattr(string, kind or "exact", None),
            "not supported by meshlib",
        )
    raise Refused(where, f"{path}.{which}", getattr(matcher, which), "not supported by meshlib")


_RETRY_FIELDS = (
    "retry_on",
    "num_retries",
    "per_try_timeout",
    "retry_host_predicate",
    "host_selection_retry_max_attempts",
    "retriable_status_codes",
    "retry_back_off",
    "rate_limited_retry_back_off",
)


def _retry(policy: Any, where: str, path: str) -> Retry | None:
    only(policy, where, path, _RETRY_FIELDS)
    for index, predicate in enumerate(policy.retry_host_predicate):
        if predicate.name != _PREVIOUS_HOSTS:  # meshlib's retries prefer another endpoint
            raise Refused(
                where,
                f"{path}.retry_host_predicate[{index}]",
                predicate.name,
                f"only {_PREVIOUS_HOSTS} is supported",
            )
    conditions = [c.strip() for c in policy.retry_on.split(",") if c.strip()]
    for condition in conditions:
        if condition not in _KNOWN_RETRY_ON:
            raise Refused(
                where, f"{path}.retry_on", condition, "a retry condition meshlib cannot honour"
            )
    statuses: set[int] = set()
    for condition in conditions:
        statuses |= _STATUSES.get(condition, frozenset())
    if "retriable-status-codes" in conditions:
        statuses |= set(policy.retriable_status_codes)
    if any(not 100 <= code <= 599 for code in statuses):
        raise Refused(where, f"{path}.retriable_status_codes", sorted(statuses), "HTTP statuses")
    on_error = (
        "all"
        if _ALL_ERRORS.intersection(conditions)
        else ("connect" if _CONNECT_ERRORS.intersection(conditions) else "none")
    )
    retries = policy.num_retries.value if policy.HasField("num_retries") else 1
    backoff = BACKOFF
    if policy.HasField("retry_back_off"):
        back_off = policy.retry_back_off
        only(back_off, where, f"{path}.retry_back_off", ("base_interval", "max_interval"))
        base = seconds(back_off.base_interval)
        if base <= 0:
            raise Refused(where, f"{path}.retry_back_off.base_interval", base, "must be > 0")
        cap = seconds(back_off.max_interval) if back_off.HasField("max_interval") else 10 * base
        if cap < base:
            raise Refused(
                where, f"{path}.retry_back_off.max_interval", cap, "must be >= base_interval"
            )
        backoff = Backoff(base=base, cap=cap, jitter="full")
    retry_after_cap = 0.0  # Envoy ignores Retry-After unless told
    if policy.HasField("rate_limited_retry_back_off"):
        limited = policy.rate_limited_retry_back_off
        here = f"{path}.rate_limited_retry_back_off"
        only(limited, where, here, ("reset_headers", "max_interval"))
        for index, header in enumerate(limited.reset_headers):
            if header.name.lower() != "retry-after" or header.format != 0:  # SECONDS
                raise Refused(
                    where,
                    f"{here}.reset_headers[{index}]",
                    header,
                    "only Retry-After in seconds is supported",
                )
        if limited.reset_headers:
            retry_after_cap = (
                seconds(limited.max_interval) if limited.HasField("max_interval") else 300.0
            )
    if retries == 0 or not (statuses or on_error != "none"):
        return None  # nothing would be retried
    return Retry(
        attempts=retries + 1,
        backoff=backoff,
        on_status=frozenset(statuses),
        methods=ANY_METHOD,
        retry_after_cap=retry_after_cap,
        budget=None,  # the cluster's, set by compose
        on_error=on_error,  # type: ignore[arg-type]
    )
