"""Seconds to apply an xDS snapshot: N listeners, each a route to its own cluster of 10 endpoints.

Run: python tests/benchmarks/bench_xds_apply.py [--clusters N]

Drives the xDS source the way the ADS client does (one update per type, in the
order a server answers: Listener, RouteConfiguration, Cluster,
ClusterLoadAssignment), without a network, and then one EDS change of one
cluster: translation, the Mesh's new table, and its validation. Needs the
``meshlib[xds]`` extra.
"""

from __future__ import annotations

import argparse
import time
import types
from typing import Any

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2  # noqa: F401 - its descriptor
from envoy.extensions.filters.network.http_connection_manager.v3 import (  # noqa: F401
    http_connection_manager_pb2,
)
from google.protobuf import json_format

import meshlib
from meshlib._xds.ads import CLUSTER, CLUSTER_LOAD_ASSIGNMENT, LISTENER, ROUTE_CONFIGURATION, Update
from meshlib._xds.bootstrap import parse_bootstrap
from meshlib._xds.source import XdsSource

HCM = (
    "type.googleapis.com/envoy.extensions.filters.network."
    "http_connection_manager.v3.HttpConnectionManager"
)
ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"


class _Client:
    def __init__(self, bootstrap: Any, handler: Any) -> None:
        pass

    def subscribe(self, type_url: str, names: list[str]) -> None:
        pass

    def unsubscribe(self, type_url: str, names: list[str]) -> None:
        pass

    def close(self) -> None:
        pass


def _snapshot(count: int) -> dict[str, dict[str, Any]]:
    lds: dict[str, Any] = {}
    rds: dict[str, Any] = {}
    cds: dict[str, Any] = {}
    eds: dict[str, Any] = {}
    for i in range(count):
        name = f"svc{i}.default.svc.cluster.local:8080"
        manager = {
            "@type": HCM,
            "stat_prefix": "x",
            "rds": {"route_config_name": f"routes-{i}", "config_source": {"ads": {}}},
            "http_filters": [{"name": "router", "typed_config": {"@type": ROUTER}}],
        }
        lds[name] = json_format.ParseDict(
            {"name": name, "api_listener": {"api_listener": manager}}, listener_pb2.Listener()
        )
        route = {
            "match": {"prefix": "/"},
            "route": {"cluster": f"c{i}", "retry_policy": {"retry_on": "5xx"}},
        }
        rds[f"routes-{i}"] = json_format.ParseDict(
            {
                "name": f"routes-{i}",
                "virtual_hosts": [{"name": "v", "domains": ["*"], "routes": [route]}],
            },
            route_pb2.RouteConfiguration(),
        )
        cds[f"c{i}"] = json_format.ParseDict(
            {
                "name": f"c{i}",
                "type": "EDS",
                "eds_cluster_config": {"eds_config": {"ads": {}}},
                "outlier_detection": {},
            },
            cluster_pb2.Cluster(),
        )
        hosts = [
            {
                "endpoint": {
                    "address": {
                        "socket_address": {
                            "address": f"10.{i // 250}.{i % 250}.{j}",
                            "port_value": 8080,
                        }
                    }
                }
            }
            for j in range(1, 11)
        ]
        eds[f"c{i}"] = json_format.ParseDict(
            {"cluster_name": f"c{i}", "endpoints": [{"lb_endpoints": hosts}]},
            endpoint_pb2.ClusterLoadAssignment(),
        )
    return {LISTENER: lds, ROUTE_CONFIGURATION: rds, CLUSTER: cds, CLUSTER_LOAD_ASSIGNMENT: eds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clusters", type=int, default=1000)
    args = parser.parse_args()
    snapshot = _snapshot(args.clusters)
    boot = parse_bootstrap(
        '{"xds_servers": [{"server_uri": "127.0.0.1:1", "channel_creds": [{"type": "insecure"}]}]}',
        "bench",
    )
    mesh = meshlib.Mesh()
    source = XdsSource(boot, meshlib.STANDARD, mesh._apply_config, client=_Client)
    total = 0.0
    for type_url, resources in snapshot.items():
        started = time.perf_counter()
        refused = source._handle(
            Update(type_url, "1", types.MappingProxyType(resources), frozenset())
        )
        took = time.perf_counter() - started
        total += took
        assert not refused, refused
        print(f"{type_url.rsplit('.', 1)[1]:<24} {took:7.3f} s")
    print(
        f"{'the whole snapshot':<24} {total:7.3f} s  "
        f"({len(mesh.destinations)} destinations, {len(mesh.clusters)} cluster views)"
    )
    one = {"c1": snapshot[CLUSTER_LOAD_ASSIGNMENT]["c1"]}
    started = time.perf_counter()
    source._handle(Update(CLUSTER_LOAD_ASSIGNMENT, "2", types.MappingProxyType(one), frozenset()))
    print(f"{'one EDS change':<24} {time.perf_counter() - started:7.3f} s")


if __name__ == "__main__":
    main()
