"""`Mesh.from_xds`: a Mesh the control plane configures, end to end on loopback.

A small ADS server (tests/xds_server.py) serves Listener -> RouteConfiguration ->
Cluster -> ClusterLoadAssignment; real HTTP servers on 127.0.0.1 are the upstreams.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

pytest.importorskip("grpc", reason="needs meshlib[xds]")

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
from meshlib._snapshot import snapshot
from meshlib._xds.ads import CLUSTER, CLUSTER_LOAD_ASSIGNMENT, LISTENER, ROUTE_CONFIGURATION
from meshlib.testing import FaultServer, Respond

from .xds_server import AdsServer, poll

pytestmark = [pytest.mark.network, pytest.mark.usefixtures("no_waits")]

ORDERS = "orders.internal:8080"
HCM = (
    "type.googleapis.com/envoy.extensions.filters.network."
    "http_connection_manager.v3.HttpConnectionManager"
)
ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"


def _listener(name: str = ORDERS) -> Any:
    manager = {
        "@type": HCM,
        "stat_prefix": "orders",
        "rds": {"route_config_name": "orders-routes", "config_source": {"ads": {}}},
        "http_filters": [{"name": "router", "typed_config": {"@type": ROUTER}}],
    }
    data = {"name": name, "api_listener": {"api_listener": manager}}
    return json_format.ParseDict(data, listener_pb2.Listener())


def _routes(*routes: dict[str, Any]) -> Any:
    data = {
        "name": "orders-routes",
        "virtual_hosts": [{"name": "orders", "domains": [ORDERS], "routes": list(routes)}],
    }
    return json_format.ParseDict(data, route_pb2.RouteConfiguration())


def _cluster(name: str, **fields: Any) -> Any:
    data = {"name": name, "type": "EDS", "eds_cluster_config": {"eds_config": {"ads": {}}}}
    return json_format.ParseDict({**data, **fields}, cluster_pb2.Cluster())


def _assignment(name: str, *servers: FaultServer) -> Any:
    endpoints = [
        {
            "endpoint": {
                "address": {"socket_address": {"address": "127.0.0.1", "port_value": s.port}}
            }
        }
        for s in servers
    ]
    data = {"cluster_name": name, "endpoints": [{"lb_endpoints": endpoints}]}
    return json_format.ParseDict(data, endpoint_pb2.ClusterLoadAssignment())


def _snapshot(
    routes: Any, clusters: dict[str, tuple[FaultServer, ...]], **cluster_fields: Any
) -> dict[str, dict[str, Any]]:
    return {
        LISTENER: {ORDERS: _listener()},
        ROUTE_CONFIGURATION: {"orders-routes": routes},
        CLUSTER: {name: _cluster(name, **cluster_fields) for name in clusters},
        CLUSTER_LOAD_ASSIGNMENT: {
            name: _assignment(name, *servers) for name, servers in clusters.items()
        },
    }


def _one_cluster(upstream: FaultServer, **cluster_fields: Any) -> dict[str, dict[str, Any]]:
    """Every path of the listener to the cluster orders-v1, whose one endpoint is `upstream`."""
    routes = _routes({"match": {"prefix": "/"}, "route": {"cluster": "orders-v1"}})
    return _snapshot(routes, {"orders-v1": (upstream,)}, **cluster_fields)


@pytest.fixture
def upstreams() -> Iterator[tuple[FaultServer, FaultServer]]:
    with FaultServer() as first, FaultServer() as second:
        yield first, second


@pytest.fixture
def bootstrap(tmp_path: Path) -> Iterator[tuple[AdsServer, Path]]:
    with AdsServer() as server:
        path = tmp_path / "xds-bootstrap.json"
        entry = {"server_uri": server.address, "channel_creds": [{"type": "insecure"}]}
        path.write_text(json.dumps({"xds_servers": [entry], "node": {"id": "tests"}}))
        yield server, path


def test_routes_clusters_and_endpoints_from_the_control_plane(
    upstreams: tuple[FaultServer, FaultServer], bootstrap: tuple[AdsServer, Path]
) -> None:
    v1, v2 = upstreams
    server, path = bootstrap
    routes = _routes(
        {"match": {"prefix": "/v2/"}, "route": {"cluster": "orders-v2"}},
        {"match": {"prefix": "/"}, "route": {"cluster": "orders-v1"}},
    )
    server.snapshot = _snapshot(routes, {"orders-v1": (v1,), "orders-v2": (v2,)})
    mesh = meshlib.Mesh.from_xds(path, watch=[ORDERS], ready_timeout=30)
    try:
        with meshlib.wrap(httpx.Client(), mesh) as client:
            one = client.get(f"http://{ORDERS}/v1/items")
            two = client.get(f"http://{ORDERS}/v2/items")
        assert (one.status_code, two.status_code) == (200, 200)
        assert str(two.url) == f"http://{ORDERS}/v2/items"  # the authority is kept
        assert [r.path for r in v1.requests] == ["/v1/items"]
        assert [r.path for r in v2.requests] == ["/v2/items"]
        assert v2.requests[0].headers["host"] == ORDERS
        assert sorted(mesh.endpoints()) == ["orders-v1", "orders-v2"]
        # Every response was ACKed: nothing refused.
        assert all(not r.HasField("error_detail") for r in server.requests_of(LISTENER))
    finally:
        mesh.close()


def test_an_eds_change_moves_traffic_without_a_restart(
    upstreams: tuple[FaultServer, FaultServer], bootstrap: tuple[AdsServer, Path]
) -> None:
    first, second = upstreams
    server, path = bootstrap
    server.snapshot = _one_cluster(first)
    mesh = meshlib.Mesh.from_xds(path, watch=[ORDERS], ready_timeout=30)
    try:
        with meshlib.wrap(httpx.Client(), mesh) as client:
            assert client.get(f"http://{ORDERS}/").status_code == 200
            server.set_snapshot(_one_cluster(second))
            view = mesh.clusters[f"orders-v1@{ORDERS}#0"]  # the route's view of the cluster
            assert view.endpoints is not None
            assert view.endpoints.addresses == (f"127.0.0.1:{first.port}",)
            poll(
                lambda: (
                    mesh.clusters[f"orders-v1@{ORDERS}#0"].endpoints
                    == meshlib.Endpoints(
                        [f"127.0.0.1:{second.port}"], balance="round_robin", ejection=None
                    )
                ),
                what="the new endpoints",
            )
            assert client.get(f"http://{ORDERS}/").status_code == 200
        assert (first.request_count, second.request_count) == (1, 1)
        # The pool was kept, its endpoints replaced.
        assert [e.address for e in mesh.endpoints()["orders-v1"]] == [f"127.0.0.1:{second.port}"]
    finally:
        mesh.close()


def test_retries_follow_the_routes_retry_policy_counted_at_the_upstream(
    upstreams: tuple[FaultServer, FaultServer], bootstrap: tuple[AdsServer, Path]
) -> None:
    upstream, _ = upstreams
    server, path = bootstrap
    retry = {"retry_on": "5xx", "num_retries": 2}
    routes = _routes(
        {"match": {"prefix": "/retried"}, "route": {"cluster": "orders-v1", "retry_policy": retry}},
        {"match": {"prefix": "/"}, "route": {"cluster": "orders-v1"}},
    )
    server.snapshot = _snapshot(routes, {"orders-v1": (upstream,)})
    upstream.default = Respond(503)
    mesh = meshlib.Mesh.from_xds(path, watch=[ORDERS], ready_timeout=30)
    try:
        with meshlib.wrap(httpx.Client(), mesh) as client:
            assert client.post(f"http://{ORDERS}/retried", content=b"x").status_code == 503
            assert upstream.request_count == 3  # num_retries + 1, whatever the method
            assert client.get(f"http://{ORDERS}/plain").status_code == 503
            assert upstream.request_count == 4  # no retry_policy: no retries
    finally:
        mesh.close()


def test_a_destination_the_control_plane_does_not_know_uses_default_and_dns(
    upstreams: tuple[FaultServer, FaultServer], bootstrap: tuple[AdsServer, Path]
) -> None:
    upstream, _ = upstreams
    server, path = bootstrap
    direct = f"127.0.0.1:{upstream.port}"
    default = meshlib.Policy(retry=meshlib.Retry(attempts=2, budget=None), breaker=None)
    mesh = meshlib.Mesh.from_xds(path, default=default, watch=[direct], ready_timeout=30)
    try:
        upstream.enqueue(Respond(503))
        with meshlib.wrap(httpx.Client(), mesh) as client:
            assert client.get(f"http://{direct}/x").status_code == 200  # default's retry
        assert upstream.request_count == 2
        poll(lambda: server.requests_of(LISTENER), what="the listener request")
    finally:
        mesh.close()


def test_a_refused_cluster_is_nacked_naming_the_field(
    upstreams: tuple[FaultServer, FaultServer], bootstrap: tuple[AdsServer, Path]
) -> None:
    upstream, _ = upstreams
    server, path = bootstrap
    server.snapshot = _one_cluster(upstream, lb_policy="MAGLEV")
    mesh = meshlib.Mesh.from_xds(path, watch=[ORDERS], ready_timeout=5)
    try:
        poll(
            lambda: any(r.HasField("error_detail") for r in server.requests_of(CLUSTER)),
            what="a NACK",
        )
        (nack,) = [r for r in server.requests_of(CLUSTER) if r.HasField("error_detail")][:1]
        assert "Cluster orders-v1: lb_policy: only ROUND_ROBIN and LEAST_REQUEST" in (
            nack.error_detail.message
        )
        assert "MAGLEV" in nack.error_detail.message
        status = snapshot(mesh)["source"]
        assert status["kind"] == "xds"
        assert status["location"] == server.address
        assert status["failing"] is False
        assert "orders-v1: lb_policy: only ROUND_ROBIN" in status["last_refusal"]["reason"]
        # The route's cluster has no good version: Envoy's 503, without sending.
        with meshlib.wrap(httpx.Client(), mesh) as client:
            assert client.get(f"http://{ORDERS}/").status_code == 503
        assert upstream.request_count == 0
    finally:
        mesh.close()


def test_from_xds_validates_its_arguments(
    bootstrap: tuple[AdsServer, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, path = bootstrap
    with pytest.raises(meshlib.ConfigError, match=r"Mesh\.from_xds\.ready_timeout"):
        meshlib.Mesh.from_xds(path, ready_timeout=-1)
    with pytest.raises(meshlib.ConfigError, match=r"Mesh\.from_xds\.watch: .*'orders'"):
        meshlib.Mesh.from_xds(path, watch=["orders"])
    for name in ("MESHLIB_XDS_BOOTSTRAP", "GRPC_XDS_BOOTSTRAP", "GRPC_XDS_BOOTSTRAP_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(meshlib.ConfigError, match=r"no xDS bootstrap"):
        meshlib.Mesh.from_xds()
    monkeypatch.setenv("MESHLIB_XDS_BOOTSTRAP", str(path))
    mesh = meshlib.Mesh.from_xds()
    assert "xDS 127.0.0.1:" in repr(mesh)
    mesh.close()


def test_without_the_extra_from_xds_is_a_config_error_naming_it() -> None:
    code = (
        "import sys\n"
        "sys.modules['grpc'] = None\n"
        "import meshlib\n"
        "try:\n"
        "    meshlib.Mesh.from_xds('unused.json')\n"
        "except meshlib.ConfigError as exc:\n"
        "    print('ConfigError:', exc)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("ConfigError: ")
    assert "meshlib[xds]" in done.stdout


def test_the_first_request_to_a_destination_waits_for_its_answer(
    upstreams: tuple[FaultServer, FaultServer], bootstrap: tuple[AdsServer, Path]
) -> None:
    upstream, _ = upstreams
    server, path = bootstrap
    server.snapshot = _one_cluster(upstream)
    # No watch=: subscribed by the first request, which waits for the whole chain
    # (orders.internal resolves nowhere: on default it could not be sent at all).
    mesh = meshlib.Mesh.from_xds(path, ready_timeout=30)
    try:
        assert ORDERS not in mesh.destinations
        with meshlib.wrap(httpx.Client(), mesh) as client:
            assert client.get(f"http://{ORDERS}/first").status_code == 200
        assert [r.path for r in upstream.requests] == ["/first"]
        assert server.requests_of(LISTENER)[0].resource_names == [ORDERS]
    finally:
        mesh.close()


@pytest.mark.anyio
async def test_an_async_first_request_waits_for_its_answer_without_blocking_the_loop(
    upstreams: tuple[FaultServer, FaultServer], bootstrap: tuple[AdsServer, Path]
) -> None:
    upstream, _ = upstreams
    server, path = bootstrap
    server.snapshot = _one_cluster(upstream)
    mesh = meshlib.Mesh.from_xds(path, ready_timeout=30)
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await anyio.sleep(0.001)

    try:
        async with (
            meshlib.wrap(httpx.AsyncClient(), mesh) as client,
            anyio.create_task_group() as tg,
        ):
            tg.start_soon(ticker)
            # orders.internal resolves nowhere: only the control plane's answer can send it.
            first = await client.get(f"http://{ORDERS}/first")
            tg.cancel_scope.cancel()
        assert first.status_code == 200
        assert [r.path for r in upstream.requests] == ["/first"]
        assert ticks > 1  # the loop ran while the request waited
    finally:
        mesh.close()


@pytest.mark.anyio
async def test_a_cancelled_async_first_request_stops_waiting_at_once(tmp_path: Path) -> None:
    # A control plane that is never reachable: the wait could last ready_timeout (30 s).
    path = tmp_path / "xds-bootstrap.json"
    entry = {"server_uri": "127.0.0.1:9", "channel_creds": [{"type": "insecure"}]}
    path.write_text(json.dumps({"xds_servers": [entry], "node": {"id": "tests"}}))
    mesh = meshlib.Mesh.from_xds(path, ready_timeout=30)
    try:
        async with meshlib.wrap(httpx.AsyncClient(), mesh) as client:
            started = time.monotonic()
            with anyio.move_on_after(0.2) as scope:
                await client.get(f"http://{ORDERS}/")
            assert scope.cancelled_caught  # cut by the caller's own scope, not meshlib's
            assert time.monotonic() - started < 10.0  # not the 30 s it could have waited
    finally:
        mesh.close()


def test_config_dump_shows_what_is_in_force_and_the_last_refusal(
    upstreams: tuple[FaultServer, FaultServer], bootstrap: tuple[AdsServer, Path]
) -> None:
    upstream, _ = upstreams
    server, path = bootstrap
    good = _one_cluster(upstream)
    server.snapshot = good
    mesh = meshlib.Mesh.from_xds(path, watch=[ORDERS], ready_timeout=30)
    try:
        dump = mesh.config_dump()
        assert dump["source"] == {"kind": "xds", "location": f"xDS {server.address}"}
        xds = dump["xds"]
        assert (xds["server_uri"], xds["connected"]) == (server.address, True)
        first = xds["types"][CLUSTER]["version"]
        cluster = xds["types"][CLUSTER]["resources"]["orders-v1"]
        assert (cluster["state"], cluster["version"], cluster["nack_reason"]) == (
            "acked",
            first,
            None,
        )
        assert cluster["resource"]["name"] == "orders-v1"  # protobuf's JSON form
        assert xds["types"][LISTENER]["resources"][ORDERS]["state"] == "acked"
        endpoints = xds["types"][CLUSTER_LOAD_ASSIGNMENT]["resources"]["orders-v1"]["resource"]
        port = endpoints["endpoints"][0]["lbEndpoints"][0]["endpoint"]["address"]
        assert port["socketAddress"]["portValue"] == upstream.port

        # A refused update: the dump says which version, why, and keeps the good one.
        refused = server.set_snapshot(_one_cluster(upstream, lb_policy="MAGLEV"))
        poll(
            lambda: (
                mesh.config_dump()["xds"]["types"][CLUSTER]["resources"]["orders-v1"][
                    "nacked_version"
                ]
                == refused
            ),
            what="the NACK in the dump",
        )
        cluster = mesh.config_dump()["xds"]["types"][CLUSTER]["resources"]["orders-v1"]
        assert cluster["state"] == "nacked"
        assert cluster["version"] == first  # still in force
        assert "lb_policy" in cluster["nack_reason"]
        assert "MAGLEV" in cluster["nack_reason"]
        with meshlib.wrap(httpx.Client(), mesh) as client:
            assert client.get(f"http://{ORDERS}/").status_code == 200  # the good one serves
        json.dumps(mesh.config_dump())  # JSON-ready, all of it
    finally:
        mesh.close()


def test_config_dump_of_a_mesh_in_code_and_of_a_file(tmp_path: Path) -> None:
    assert meshlib.Mesh().config_dump() == {"source": None, "xds": None}
    policy_file = tmp_path / "mesh.toml"
    policy_file.write_text("[default]\nretry = { attempts = 2 }\n")
    mesh = meshlib.Mesh.from_file(policy_file, reload=True)
    try:
        assert mesh.config_dump() == {
            "source": {"kind": "file", "location": str(policy_file)},
            "xds": None,
        }
    finally:
        mesh.close()


def test_killing_the_control_plane_loses_no_request_and_a_restart_resumes_updates(
    upstreams: tuple[FaultServer, FaultServer], bootstrap: tuple[AdsServer, Path]
) -> None:
    first, second = upstreams
    server, path = bootstrap
    server.snapshot = _one_cluster(first)
    mesh = meshlib.Mesh.from_xds(path, watch=[ORDERS], ready_timeout=30)
    statuses: list[int | str] = []
    stop = threading.Event()

    def load(client: httpx.Client) -> None:
        while not stop.is_set():
            try:
                statuses.append(client.get(f"http://{ORDERS}/").status_code)
            except httpx.HTTPError as exc:  # counted, not raised: the test asserts on it
                statuses.append(type(exc).__name__)

    try:
        with meshlib.wrap(httpx.Client(), mesh) as client:
            worker = threading.Thread(target=load, args=(client,), daemon=True)
            worker.start()
            poll(lambda: len(statuses) >= 20, what="requests before the outage")
            server.stop()
            poll(lambda: not mesh.config_dump()["xds"]["connected"], what="the outage seen")
            during = len(statuses)
            poll(lambda: len(statuses) >= during + 20, what="requests during the outage")
            server.set_snapshot(_one_cluster(second))
            server.start()  # the same port, with the endpoints moved while it was away
            poll(lambda: second.request_count >= 5, what="updates after the restart")
            stop.set()
            worker.join(timeout=30)
        assert set(statuses) == {200}, [s for s in statuses if s != 200][:5]
        assert mesh.config_dump()["xds"]["connected"] is True
    finally:
        stop.set()
        mesh.close()


def test_the_default_mesh_follows_the_control_plane_meshlib_xds_bootstrap_names(
    upstreams: tuple[FaultServer, FaultServer],
    bootstrap: tuple[AdsServer, Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    upstream, _ = upstreams
    server, path = bootstrap
    server.snapshot = _one_cluster(upstream)
    monkeypatch.delenv("MESHLIB_CONFIG", raising=False)
    monkeypatch.setenv("MESHLIB_XDS_BOOTSTRAP", str(path))
    meshlib.testing.reset()  # as a fresh process: the default Mesh is built on first use
    try:
        with meshlib.wrap(httpx.Client()) as client:  # no Mesh named: the default one
            response = client.get(f"http://{ORDERS}/items")
        assert response.status_code == 200
        assert [r.path for r in upstream.requests] == ["/items"]  # routed by the control plane
        assert meshlib.default_mesh().config_dump()["source"]["kind"] == "xds"
    finally:
        meshlib.default_mesh().close()
        meshlib.testing.reset()


def test_the_default_mesh_refuses_both_a_file_and_a_control_plane(
    bootstrap: tuple[AdsServer, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, path = bootstrap
    policy_file = tmp_path / "mesh.toml"
    policy_file.write_text("[default]\n")
    monkeypatch.setenv("MESHLIB_CONFIG", str(policy_file))
    monkeypatch.setenv("MESHLIB_XDS_BOOTSTRAP", str(path))
    meshlib.testing.reset()
    try:
        with pytest.raises(meshlib.ConfigError, match=r"MESHLIB_CONFIG.*MESHLIB_XDS_BOOTSTRAP"):
            meshlib.wrap(httpx.Client()).get(f"http://{ORDERS}/")
    finally:
        meshlib.testing.reset()
