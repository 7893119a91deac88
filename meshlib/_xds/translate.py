"""Listener and RouteConfiguration to meshlib's routes and policies, with Envoy's meaning.

For a destination ``host:port`` the control plane sends a Listener of that name (an
api_listener with an HttpConnectionManager); its RouteConfiguration (RDS, or inline)
holds the virtual hosts; the one whose domains match the request's authority holds
the routes. `listener_routes` reads the listener (its RDS name or inline routes,
its fault filter), `route_table` picks the virtual host and reads each route
(`XdsRoute`: a meshlib `Route` and what the route sets of retry and timeout), and
`compose` joins them with the clusters (`meshlib._xds.clusters`) into the values a
`Mesh` takes: the destination's Policy, and one cluster *view* per route and
cluster, keyed ``CLUSTER@LISTENER#N`` (N: the route's position in the virtual host),
whose policy is the route's retry and timeout over the cluster's endpoints, bulkhead
and budget, and whose state (breaker, budget, bulkhead, endpoint pool) is the
cluster's own, shared by every view of it. Pure functions; see docs/xds.md.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .._errors import ConfigError
from .._policy import (
    Endpoints,
    Faults,
    Policy,
    Route,
    Timeout,
)
from .ads import MISSING_EXTRA
from .clusters import ClusterSettings
from .fields import Refused, fraction, only, seconds
from .routes import XdsRoute

try:
    from envoy.extensions.filters.http.fault.v3 import fault_pb2
    from envoy.extensions.filters.network.http_connection_manager.v3 import (
        http_connection_manager_pb2,
    )
except Exception as exc:  # pragma: no cover - ads.py refuses first
    raise ConfigError(f"{MISSING_EXTRA} ({type(exc).__name__}: {exc})") from exc

__all__ = ["ListenerRoutes", "Translation", "compose", "listener_routes"]

_HCM = (
    "type.googleapis.com/" + http_connection_manager_pb2.HttpConnectionManager.DESCRIPTOR.full_name
)
_FAULT = "type.googleapis.com/" + fault_pb2.HTTPFault.DESCRIPTOR.full_name
_ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"


@dataclass(frozen=True, slots=True)
class ListenerRoutes:
    """What a Listener says: where its routes are, and the faults its filter injects.

    Attributes:
        rds: the RouteConfiguration to ask for, or None when inline.
        inline: the inline RouteConfiguration message, or None.
        faults: the fault filter's abort and delay, or None.
    """

    rds: str | None
    inline: Any
    faults: Faults | None


@dataclass(frozen=True, slots=True)
class Translation:
    """What a Mesh takes for one destination that xDS configures.

    Attributes:
        policy: the destination's own policy (its routes; Envoy's 404 for requests
            no route takes).
        clusters: cluster views by name (``CLUSTER@LISTENER#N``), each a policy.
        owners: each view's cluster: whose state it shares and whose name spans,
            metrics and log lines show.
    """

    policy: Policy
    clusters: Mapping[str, Policy]
    owners: Mapping[str, str]


def listener_routes(listener: Any) -> ListenerRoutes:
    """Read a Listener: an api_listener with an HttpConnectionManager.

    Raises:
        Refused: no api_listener, another network filter, or HTTP filters meshlib
            cannot honour (those other than the fault filter and the router that
            are not marked optional).
    """
    where = f"Listener {listener.name}"
    if not listener.HasField("api_listener"):
        raise Refused(where, "api_listener", None, "meshlib reads api_listeners (as gRPC does)")
    packed = listener.api_listener.api_listener
    if packed.type_url != _HCM:
        raise Refused(
            where, "api_listener.api_listener", packed.type_url, "not an HttpConnectionManager"
        )
    hcm = http_connection_manager_pb2.HttpConnectionManager()
    packed.Unpack(hcm)
    path = "api_listener.api_listener"
    faults: Faults | None = None
    for index, http_filter in enumerate(hcm.http_filters):
        type_url = http_filter.typed_config.type_url
        here = f"{path}.http_filters[{index}]"
        if type_url == _FAULT:
            config = fault_pb2.HTTPFault()
            http_filter.typed_config.Unpack(config)
            faults = _faults(config, where, f"{here}.typed_config")
        elif type_url != _ROUTER and not http_filter.is_optional:
            raise Refused(
                where, here, http_filter.name or type_url, "an HTTP filter meshlib does not have"
            )
    which = hcm.WhichOneof("route_specifier")
    if which == "rds":
        name = hcm.rds.route_config_name
        if not name:
            raise Refused(where, f"{path}.rds.route_config_name", name, "missing")
        return ListenerRoutes(name, None, faults)
    if which == "route_config":
        return ListenerRoutes(None, hcm.route_config, faults)
    raise Refused(
        where, f"{path}.route_specifier", which, "rds or an inline route_config is needed"
    )


_FAULT_FIELDS = (
    "delay",
    "abort",
    "max_active_faults",
    "delay_percent_runtime",
    "abort_percent_runtime",
    "delay_duration_runtime",
    "abort_http_status_runtime",
    "max_active_faults_runtime",
    "abort_grpc_status_runtime",
    "disable_downstream_cluster_stats",
)


def _faults(config: Any, where: str, path: str) -> Faults | None:
    only(config, where, path, _FAULT_FIELDS)
    abort, status, delay, delayed = 0.0, 503, 0.0, 0.0
    if config.HasField("abort"):
        only(config.abort, where, f"{path}.abort", ("http_status", "percentage"))
        status = config.abort.http_status
        if not 200 <= status < 600:
            raise Refused(where, f"{path}.abort.http_status", status, "an HTTP status 200-599")
        abort = fraction(config.abort.percentage, where, f"{path}.abort.percentage")
    if config.HasField("delay"):
        only(config.delay, where, f"{path}.delay", ("fixed_delay", "percentage"))
        if not config.delay.HasField("fixed_delay"):
            raise Refused(where, f"{path}.delay", config.delay, "only a fixed_delay is supported")
        delay = seconds(config.delay.fixed_delay)
        delayed = fraction(config.delay.percentage, where, f"{path}.delay.percentage")
    if abort == 0 and (delay == 0 or delayed == 0):
        return None
    return Faults(abort=abort, status=status, delay=delay, delayed=delayed if delay else 1.0)


def compose(
    default: Policy,
    listener: str,
    faults: Faults | None,
    routes: Sequence[XdsRoute] | None,
    clusters: Mapping[str, ClusterSettings],
    endpoints: Mapping[str, Endpoints | None],
) -> Translation:
    """Join a listener's routes with its clusters into what a Mesh takes.

    `default` supplies only what Envoy has no notion of: tracing and the
    deadline header. A cluster that is not known yet, or has no usable
    endpoint, is answered as Envoy answers it: 503 ("no healthy upstream"),
    without sending. Requests no route takes are answered 404, as Envoy's
    "route not found".

    Raises:
        Refused: the routes do not fit meshlib's (weights above 1 in all).
    """
    header = default.timeout.header if default.timeout is not None else Timeout().header
    views: dict[str, Policy] = {}
    owners: dict[str, str] = {}
    routed: list[Route] = []
    for index, entry in enumerate(routes or ()):
        names: dict[str, float] = {}
        for cluster, weight in entry.route.targets():
            view = f"{cluster}@{listener}#{index}"
            names[view] = weight
            owners[view] = cluster
            views[view] = _view(
                entry, clusters.get(cluster), endpoints.get(cluster), faults, default, header
            )
        to: str | dict[str, float] = next(iter(names)) if isinstance(entry.route.to, str) else names
        routed.append(dataclasses.replace(entry.route, to=to))
    catch_all = any(r.path is None and r.headers is None and r.weight is None for r in routed)
    own = default.replace(retry=None, breaker=None, hedge=None, faults=None)
    try:
        policy = own.replace(
            routes=tuple(routed),
            faults=None if catch_all else Faults(abort=1.0, status=404),
        )
    except ConfigError as exc:
        raise Refused(
            f"Listener {listener}", "routes", [r.weight for r in routed], exc.reason
        ) from exc
    return Translation(policy, views, owners)


# Never contacted: an abort of every request goes out before any endpoint is chosen.
_NOWHERE = Endpoints(("192.0.2.1:9",), ejection=None)


def _view(
    entry: XdsRoute,
    cluster: ClusterSettings | None,
    found: Endpoints | None,
    faults: Faults | None,
    default: Policy,
    header: str | None,
) -> Policy:
    timeout = Timeout(total=entry.total, attempt=entry.attempt, header=header)
    if cluster is None or found is None:
        return Policy(
            retry=None,
            timeout=timeout,
            breaker=None,
            bulkhead=None,
            tracing=default.tracing,
            endpoints=_NOWHERE,
            faults=Faults(abort=1.0, status=503),
        )
    retry = entry.retry
    if retry is not None:
        retry = dataclasses.replace(retry, budget=cluster.budget)
    return Policy(
        retry=retry,
        timeout=timeout,
        breaker=None,  # Envoy has no failure-ratio breaker: outlier ejection instead
        bulkhead=cluster.bulkhead,
        tracing=default.tracing,
        endpoints=found,
        faults=faults,
        hedge=None,
        tls=cluster.tls,
    )
