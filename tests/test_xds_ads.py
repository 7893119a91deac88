"""The ADS client against a real management server on 127.0.0.1 (tests/xds_server.py).

Real gRPC timing is involved, so the tests poll for conditions with generous
limits and never assert how fast anything happened.
"""

from __future__ import annotations

import json
import logging
import random
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import grpc
import pytest
import trustme
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import address_pb2, config_source_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_components_pb2, route_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import any_pb2, duration_pb2

import meshlib
from meshlib._xds import ads
from meshlib._xds.ads import (
    CLUSTER,
    CLUSTER_LOAD_ASSIGNMENT,
    LISTENER,
    ROUTE_CONFIGURATION,
    AdsClient,
    ReconnectBackoff,
    Update,
)
from meshlib._xds.bootstrap import Bootstrap, XdsServer

from .xds_server import AdsServer, poll

pytestmark = pytest.mark.network

FAST = ReconnectBackoff(base=0.05, multiplier=1.6, jitter=0.2, cap=0.2)
ADS = config_source_pb2.ConfigSource(ads=config_source_pb2.AggregatedConfigSource())


def listener(name: str, route: str = "orders-routes") -> listener_pb2.Listener:
    manager = hcm_pb2.HttpConnectionManager(
        stat_prefix=name, rds=hcm_pb2.Rds(route_config_name=route, config_source=ADS)
    )
    found = listener_pb2.Listener(name=name)
    found.api_listener.api_listener.Pack(manager)
    return found


def cluster(name: str, timeout: float = 1.0) -> cluster_pb2.Cluster:
    return cluster_pb2.Cluster(
        name=name,
        type=cluster_pb2.Cluster.EDS,
        eds_cluster_config=cluster_pb2.Cluster.EdsClusterConfig(eds_config=ADS),
        lb_policy=cluster_pb2.Cluster.ROUND_ROBIN,
        connect_timeout=duration_pb2.Duration(seconds=int(timeout)),
    )


def assignment(name: str, *ports: int) -> endpoint_pb2.ClusterLoadAssignment:
    endpoints = [
        endpoint_components_pb2.LbEndpoint(
            endpoint=endpoint_components_pb2.Endpoint(
                address=address_pb2.Address(
                    socket_address=address_pb2.SocketAddress(address="10.0.0.1", port_value=port)
                )
            )
        )
        for port in ports
    ]
    return endpoint_pb2.ClusterLoadAssignment(
        cluster_name=name,
        endpoints=[endpoint_components_pb2.LocalityLbEndpoints(lb_endpoints=endpoints)],
    )


def routes(name: str, cluster_name: str) -> route_pb2.RouteConfiguration:
    route = route_components_pb2.Route(
        match=route_components_pb2.RouteMatch(prefix="/"),
        route=route_components_pb2.RouteAction(cluster=cluster_name),
    )
    host = route_components_pb2.VirtualHost(name="orders", domains=["*"], routes=[route])
    return route_pb2.RouteConfiguration(name=name, virtual_hosts=[host])


ORDERS = "orders.default.svc.cluster.local:8080"
V1 = "outbound|8080|v1|orders.default.svc.cluster.local"
V2 = "outbound|8080|v2|orders.default.svc.cluster.local"


class Recorder:
    """A handler that records updates and refuses what `refuse` names."""

    def __init__(self) -> None:
        self.updates: list[Update] = []
        self.refuse: dict[str, str] = {}
        self.fail: Exception | None = None
        self._lock = threading.Lock()

    def __call__(self, update: Update) -> Mapping[str, str]:
        with self._lock:
            self.updates.append(update)
        if self.fail is not None:
            raise self.fail
        return {name: why for name, why in self.refuse.items() if name in update.resources}

    def of(self, type_url: str) -> list[Update]:
        with self._lock:
            return [update for update in self.updates if update.type_url == type_url]


@pytest.fixture
def server() -> Iterator[AdsServer]:
    # Overrides conftest's HTTP `server`: here the server is the control plane.
    snapshot = {
        LISTENER: {ORDERS: listener(ORDERS)},
        ROUTE_CONFIGURATION: {"orders-routes": routes("orders-routes", V1)},
        CLUSTER: {V1: cluster(V1), V2: cluster(V2)},
        CLUSTER_LOAD_ASSIGNMENT: {V1: assignment(V1, 8080, 8081)},
    }
    with AdsServer(snapshot) as running:
        yield running


@pytest.fixture
def handler() -> Recorder:
    return Recorder()


@pytest.fixture
def make_client(handler: Recorder) -> Iterator[Any]:
    made: list[AdsClient] = []

    def make(bootstrap: Bootstrap, **kwargs: Any) -> AdsClient:
        kwargs.setdefault("backoff", FAST)
        kwargs.setdefault("rng", random.Random(7))
        client = AdsClient(bootstrap, handler, **kwargs)
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()


def acks(server: AdsServer, type_url: str) -> list[Any]:
    """Requests of a type that answer a response (ACK or NACK), in order."""
    return [r for r in server.requests_of(type_url) if r.response_nonce]


def last_acked(server: AdsServer, type_url: str) -> str | None:
    """The version_info of the latest ACK or NACK of a type, if any."""
    answers = acks(server, type_url)
    return answers[-1].version_info if answers else None


# --- subscribe, receive, ACK ----------------------------------------------------------


def test_subscribe_receives_and_acks_with_version_and_nonce(
    server: AdsServer, handler: Recorder, make_client: Any
) -> None:
    client = make_client(server.bootstrap())
    assert not client.connected
    assert client.status().resources == ()
    client.subscribe(LISTENER, [ORDERS])
    assert client.wait_ready(LISTENER, [ORDERS], timeout=30)
    assert client.resource(LISTENER, ORDERS) == listener(ORDERS)

    [update] = handler.of(LISTENER)
    assert update.version == "1"
    assert dict(update.resources) == {ORDERS: listener(ORDERS)}
    assert update.missing == frozenset()

    poll(lambda: acks(server, LISTENER), what="the ACK")
    first, ack = server.requests_of(LISTENER)
    # The first request of the stream names the node, from the bootstrap.
    assert first.node.id == "sidecar~127.0.0.1~tests.default~default.svc.cluster.local"
    assert first.node.cluster == "tests"
    assert first.node.locality.zone == "z1"
    assert first.node.metadata["GENERATOR"] == "grpc"
    assert first.node.metadata["LABELS"]["app"] == "tests"
    assert list(first.node.metadata["TRUST_DOMAINS"]) == ["cluster.local"]
    assert first.node.user_agent_name == "meshlib"
    assert first.node.user_agent_version == meshlib.__version__
    assert list(first.resource_names) == [ORDERS]
    assert first.version_info == ""
    assert first.response_nonce == ""
    # The ACK: the response's version and nonce, the same names, no error, no node again.
    sent = server.last_sent(LISTENER)
    assert ack.version_info == sent.version == "1"
    assert ack.response_nonce == sent.nonce
    assert list(ack.resource_names) == [ORDERS]
    assert not ack.HasField("error_detail")
    assert not ack.HasField("node")

    status = client.status()
    assert status.connected
    assert status.versions == {LISTENER: "1"}
    entry = status.get(LISTENER, ORDERS)
    assert entry is not None
    assert (entry.state, entry.version, entry.nacked_version) == ("acked", "1", None)


def test_node_is_sent_once_per_stream_whatever_the_type(
    server: AdsServer, make_client: Any
) -> None:
    client = make_client(server.bootstrap())
    client.subscribe(CLUSTER, [V1])
    client.subscribe(CLUSTER_LOAD_ASSIGNMENT, [V1])
    assert client.wait_ready(CLUSTER_LOAD_ASSIGNMENT, [V1], timeout=30)
    poll(lambda: acks(server, CLUSTER_LOAD_ASSIGNMENT), what="the EDS ACK")
    with_node = [r for r in server.requests if r.request.HasField("node")]
    assert len(with_node) == 1
    assert with_node[0] is server.requests[0]


def test_full_set_of_names_is_resent_on_every_change(
    server: AdsServer, handler: Recorder, make_client: Any
) -> None:
    client = make_client(server.bootstrap())
    client.subscribe(CLUSTER, [V1])
    assert client.wait_ready(CLUSTER, [V1], timeout=30)
    client.subscribe(CLUSTER, [V2, V1])  # V1 again: no change for it
    assert client.wait_ready(CLUSTER, [V1, V2], timeout=30)
    latest = server.last_sent(CLUSTER).nonce  # the response that brought V2
    client.unsubscribe(CLUSTER, [V1])
    poll(lambda: list(server.requests_of(CLUSTER)[-1].resource_names) == [V2], what="[V2]")

    names = [list(r.resource_names) for r in server.requests_of(CLUSTER)]
    assert [V1, V2] in names
    assert names[-1] == [V2]
    # A change of names carries the latest nonce and version, as SotW requires. (The
    # server may already have answered the change; its ACK is not the change.)
    change = next(r for r in server.requests_of(CLUSTER) if list(r.resource_names) == [V2])
    assert change.response_nonce == latest
    assert change.version_info == "1"
    assert client.resource(CLUSTER, V1) is None  # forgotten once unwatched
    assert client.status().get(CLUSTER, V1) is None
    assert client.resource(CLUSTER, V2) == cluster(V2)


def test_pushed_update_is_taken_and_acked(
    server: AdsServer, handler: Recorder, make_client: Any
) -> None:
    client = make_client(server.bootstrap())
    client.subscribe(CLUSTER_LOAD_ASSIGNMENT, [V1])
    assert client.wait_ready(CLUSTER_LOAD_ASSIGNMENT, [V1], timeout=30)
    version = server.set_snapshot(
        {**server.snapshot, CLUSTER_LOAD_ASSIGNMENT: {V1: assignment(V1, 9090)}}
    )
    poll(lambda: client.resource(CLUSTER_LOAD_ASSIGNMENT, V1) == assignment(V1, 9090))
    poll(lambda: last_acked(server, CLUSTER_LOAD_ASSIGNMENT) == version)
    assert [u.version for u in handler.of(CLUSTER_LOAD_ASSIGNMENT)] == ["1", version]
    assert (
        acks(server, CLUSTER_LOAD_ASSIGNMENT)[-1].response_nonce
        == server.last_sent(CLUSTER_LOAD_ASSIGNMENT).nonce
    )


def test_resources_wrapped_in_resource_are_unwrapped(handler: Recorder, make_client: Any) -> None:
    with AdsServer({CLUSTER: {V1: cluster(V1)}}, wrap=True) as server:
        client = make_client(server.bootstrap())
        client.subscribe(CLUSTER, [V1])
        assert client.wait_ready(CLUSTER, [V1], timeout=30)
        assert client.resource(CLUSTER, V1) == cluster(V1)


def test_unasked_resources_are_not_handed_over(
    server: AdsServer, handler: Recorder, make_client: Any
) -> None:
    # Servers may send every Cluster whatever was asked (gRFC A27); only V1 is ours.
    client = make_client(server.bootstrap())
    client.subscribe(CLUSTER, [V1])
    assert client.wait_ready(CLUSTER, [V1], timeout=30)
    response = discovery_pb2.DiscoveryResponse(version_info="9", type_url=CLUSTER, nonce="x1")
    for name in (V1, V2, "other"):
        response.resources.add().Pack(cluster(name))
    server.send(response)
    poll(lambda: client.status().versions.get(CLUSTER) == "9")
    assert set(handler.of(CLUSTER)[-1].resources) == {V1}


# --- NACK -----------------------------------------------------------------------------


def test_refused_resource_is_nacked_and_its_last_good_version_stays(
    server: AdsServer, handler: Recorder, make_client: Any, caplog: pytest.LogCaptureFixture
) -> None:
    client = make_client(server.bootstrap())
    client.subscribe(CLUSTER, [V1, V2])
    assert client.wait_ready(CLUSTER, [V1, V2], timeout=30)
    poll(lambda: acks(server, CLUSTER), what="the first ACK")

    handler.refuse = {V1: "lb_policy: MAGLEV is not supported"}
    caplog.set_level(logging.WARNING, logger="meshlib.xds")
    bad = server.set_snapshot({CLUSTER: {V1: cluster(V1, 7), V2: cluster(V2, 7)}})
    poll(lambda: any(a.HasField("error_detail") for a in acks(server, CLUSTER)), what="a NACK")

    nack = acks(server, CLUSTER)[-1]
    assert nack.version_info == "1"  # the previous good version
    assert nack.response_nonce == server.last_sent(CLUSTER).nonce  # the refused response's
    assert list(nack.resource_names) == [V1, V2]
    assert nack.error_detail.code == 3  # INVALID_ARGUMENT
    assert nack.error_detail.message == f"Cluster {V1}: lb_policy: MAGLEV is not supported"

    # The refused resource keeps its last good version; the valid one is used (gRFC A46).
    assert client.resource(CLUSTER, V1) == cluster(V1)
    assert client.resource(CLUSTER, V2) == cluster(V2, 7)
    status = client.status()
    refused = status.get(CLUSTER, V1)
    assert refused is not None
    assert (refused.state, refused.version, refused.resource) == ("nacked", "1", cluster(V1))
    assert refused.nacked_version == bad
    assert refused.nack_reason == "lb_policy: MAGLEV is not supported"
    taken = status.get(CLUSTER, V2)
    assert taken is not None
    assert (taken.state, taken.version) == ("acked", bad)
    assert status.versions[CLUSTER] == "1"
    dump = json.loads(json.dumps(status.to_dict()))
    assert dump["types"][CLUSTER]["resources"][V1]["nack_reason"] == refused.nack_reason
    assert dump["types"][CLUSTER]["resources"][V1]["resource"]["name"] == V1

    [line] = [r for r in caplog.records if getattr(r, "meshlib_event", None) == "xds_nack"]
    assert line.name == "meshlib.xds"
    assert "MAGLEV" in line.getMessage()
    assert f"version {bad}" in line.getMessage()

    # A good version afterwards is taken and ACKed; the refusal is history.
    handler.refuse = {}
    good = server.set_snapshot({CLUSTER: {V1: cluster(V1, 3), V2: cluster(V2, 3)}})
    poll(lambda: client.resource(CLUSTER, V1) == cluster(V1, 3))
    poll(lambda: last_acked(server, CLUSTER) == good)
    assert not acks(server, CLUSTER)[-1].HasField("error_detail")
    again = client.status().get(CLUSTER, V1)
    assert again is not None
    assert (again.state, again.nacked_version, again.nack_reason) == ("acked", None, None)


def test_a_handler_that_raises_refuses_the_update(
    server: AdsServer, handler: Recorder, make_client: Any, caplog: pytest.LogCaptureFixture
) -> None:
    handler.fail = RuntimeError("boom")
    client = make_client(server.bootstrap())
    client.subscribe(CLUSTER, [V1])
    assert client.wait_ready(CLUSTER, [V1], timeout=30)
    poll(lambda: acks(server, CLUSTER), what="the NACK")
    nack = acks(server, CLUSTER)[-1]
    assert nack.version_info == ""
    assert nack.error_detail.message == f"Cluster {V1}: internal error: RuntimeError: boom"
    assert client.resource(CLUSTER, V1) is None
    assert any(r.exc_info for r in caplog.records if r.name == "meshlib.xds")


def test_undecodable_and_misfiled_resources_are_nacked_by_position(
    server: AdsServer, handler: Recorder, make_client: Any
) -> None:
    client = make_client(server.bootstrap())
    client.subscribe(CLUSTER, [V1, V2])
    assert client.wait_ready(CLUSTER, [V1, V2], timeout=30)
    response = discovery_pb2.DiscoveryResponse(version_info="5", type_url=CLUSTER, nonce="n5")
    response.resources.add().Pack(cluster(V1, 5))
    response.resources.add().Pack(listener(ORDERS))  # a Listener in a Cluster response
    response.resources.append(any_pb2.Any(type_url=CLUSTER, value=b"\xff\xff\xff"))
    server.send(response)
    poll(lambda: any(a.response_nonce == "n5" for a in acks(server, CLUSTER)), what="the NACK")
    nack = next(a for a in acks(server, CLUSTER) if a.response_nonce == "n5")
    message = nack.error_detail.message
    assert message.startswith("Cluster resources[1]: cannot be decoded: has type ")
    assert "envoy.config.listener.v3.Listener" in message
    assert "Cluster resources[2]: cannot be decoded" in message
    assert nack.version_info == "1"
    # V1 decoded fine and is taken; V2 is absent but, with names unreadable, not deleted.
    assert client.resource(CLUSTER, V1) == cluster(V1, 5)
    assert client.resource(CLUSTER, V2) == cluster(V2)
    assert all(not u.missing for u in handler.of(CLUSTER))


def test_nameless_and_duplicate_resources_are_refused(
    server: AdsServer, handler: Recorder, make_client: Any
) -> None:
    client = make_client(server.bootstrap())
    client.subscribe(CLUSTER, [V1, V2])
    assert client.wait_ready(CLUSTER, [V1, V2], timeout=30)
    response = discovery_pb2.DiscoveryResponse(version_info="6", type_url=CLUSTER, nonce="n6")
    response.resources.add().Pack(cluster(V1, 6))
    response.resources.add().Pack(cluster(V1, 7))
    response.resources.add().Pack(cluster(""))
    response.resources.add().Pack(cluster(V2, 6))
    server.send(response)
    poll(lambda: any(a.response_nonce == "n6" for a in acks(server, CLUSTER)), what="the NACK")
    nack = next(a for a in acks(server, CLUSTER) if a.response_nonce == "n6")
    assert nack.error_detail.message == (
        f"Cluster {V1}: sent twice in one response; Cluster resources[2]: name: missing"
    )
    assert client.resource(CLUSTER, V1) == cluster(V1)
    assert client.resource(CLUSTER, V2) == cluster(V2, 6)


def test_responses_of_types_not_watched_are_ignored(
    server: AdsServer, handler: Recorder, make_client: Any
) -> None:
    client = make_client(server.bootstrap())
    client.subscribe(CLUSTER, [V1])
    assert client.wait_ready(CLUSTER, [V1], timeout=30)
    server.send(discovery_pb2.DiscoveryResponse(version_info="1", type_url=LISTENER, nonce="l"))
    server.send(
        discovery_pb2.DiscoveryResponse(version_info="1", type_url="type.x/Other", nonce="o")
    )
    # Answered in order: once the next push is ACKed, the two above were seen and let be.
    version = server.set_snapshot({CLUSTER: {V1: cluster(V1, 4)}})
    poll(lambda: last_acked(server, CLUSTER) == version)
    assert server.requests_of(LISTENER) == []
    assert server.requests_of("type.x/Other") == []
    assert {u.type_url for u in handler.updates} == {CLUSTER}


# --- does not exist ---------------------------------------------------------------------


def test_listener_absent_from_a_response_does_not_exist(
    server: AdsServer, handler: Recorder, make_client: Any
) -> None:
    client = make_client(server.bootstrap())
    client.subscribe(LISTENER, [ORDERS, "nowhere:80"])
    assert client.wait_ready(LISTENER, [ORDERS, "nowhere:80"], timeout=30)
    [update] = handler.of(LISTENER)
    assert update.missing == {"nowhere:80"}
    entry = client.status().get(LISTENER, "nowhere:80")
    assert entry is not None
    assert entry.state == "does_not_exist"

    # Deleted later: reported once, and the resource is no longer in force.
    server.set_snapshot({**server.snapshot, LISTENER: {}})
    poll(lambda: client.resource(LISTENER, ORDERS) is None)
    deleted = handler.of(LISTENER)[-1]
    assert deleted.missing == {ORDERS}  # nowhere:80 was already reported
    assert dict(deleted.resources) == {}

    # And back again.
    server.set_snapshot({**server.snapshot, LISTENER: {ORDERS: listener(ORDERS)}})
    poll(lambda: client.resource(LISTENER, ORDERS) == listener(ORDERS))


def test_ignore_resource_deletion_keeps_what_was_received(
    server: AdsServer, handler: Recorder, make_client: Any, caplog: pytest.LogCaptureFixture
) -> None:
    bootstrap = server.bootstrap(server_features=["ignore_resource_deletion"])
    client = make_client(bootstrap)
    client.subscribe(CLUSTER, [V1, "never"])
    assert client.wait_ready(CLUSTER, [V1, "never"], timeout=30)
    caplog.set_level(logging.WARNING, logger="meshlib.xds")
    for _ in range(2):
        version = server.set_snapshot({CLUSTER: {}})
        poll(lambda version=version: last_acked(server, CLUSTER) == version)
    assert client.resource(CLUSTER, V1) == cluster(V1)
    assert [u.missing for u in handler.of(CLUSTER)] == [{"never"}]
    warned = [r for r in caplog.records if "ignore_resource_deletion" in r.getMessage()]
    assert len(warned) == 1


def test_unanswered_resource_does_not_exist_after_the_timer(
    server: AdsServer, handler: Recorder, make_client: Any
) -> None:
    client = make_client(server.bootstrap(), resource_timeout=0.2)
    client.subscribe(CLUSTER_LOAD_ASSIGNMENT, ["nowhere"])
    assert client.wait_ready(CLUSTER_LOAD_ASSIGNMENT, ["nowhere"], timeout=30)
    [update] = handler.of(CLUSTER_LOAD_ASSIGNMENT)
    assert update.missing == {"nowhere"}
    assert dict(update.resources) == {}
    entry = client.status().get(CLUSTER_LOAD_ASSIGNMENT, "nowhere")
    assert entry is not None
    assert entry.state == "does_not_exist"
    # Subscribing to a name that exists later answers it.
    client.subscribe(CLUSTER_LOAD_ASSIGNMENT, [V1])
    assert client.wait_ready(CLUSTER_LOAD_ASSIGNMENT, [V1], timeout=30)
    assert client.resource(CLUSTER_LOAD_ASSIGNMENT, V1) == assignment(V1, 8080, 8081)


def test_received_resources_are_never_timed_out(
    server: AdsServer, handler: Recorder, make_client: Any
) -> None:
    client = make_client(server.bootstrap(), resource_timeout=0.05)
    client.subscribe(CLUSTER_LOAD_ASSIGNMENT, [V1])
    assert client.wait_ready(CLUSTER_LOAD_ASSIGNMENT, [V1], timeout=30)
    client.subscribe(CLUSTER_LOAD_ASSIGNMENT, ["late"])  # a timer runs for this one only
    assert client.wait_ready(CLUSTER_LOAD_ASSIGNMENT, ["late"], timeout=30)
    entry = client.status().get(CLUSTER_LOAD_ASSIGNMENT, V1)
    assert entry is not None
    assert entry.state == "acked"
    assert [u.missing for u in handler.of(CLUSTER_LOAD_ASSIGNMENT)][-1] == {"late"}


def test_wait_ready_gives_up_at_its_timeout(server: AdsServer, make_client: Any) -> None:
    client = make_client(server.bootstrap(), resource_timeout=3600)
    client.subscribe(ROUTE_CONFIGURATION, ["unknown-routes"])
    assert not client.wait_ready(ROUTE_CONFIGURATION, ["unknown-routes"], timeout=0.05)
    with pytest.raises(ValueError, match="not subscribed"):
        client.wait_ready(ROUTE_CONFIGURATION, ["other"], timeout=1)


# --- outages ----------------------------------------------------------------------------


def test_server_killed_mid_stream_keeps_everything_and_resumes(
    server: AdsServer, handler: Recorder, make_client: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="meshlib.xds")
    client = make_client(server.bootstrap())
    client.subscribe(LISTENER, [ORDERS])
    client.subscribe(CLUSTER, [V1])
    assert client.wait_ready(CLUSTER, [V1], timeout=30)
    assert client.wait_ready(LISTENER, [ORDERS], timeout=30)
    poll(lambda: acks(server, CLUSTER) and acks(server, LISTENER), what="the ACKs")

    server.stop()
    poll(lambda: not client.connected, what="the client to notice")
    # Everything received stays in force while the server is away.
    assert client.resource(LISTENER, ORDERS) == listener(ORDERS)
    assert client.resource(CLUSTER, V1) == cluster(V1)
    poll(
        lambda: sum("reconnecting" in r.getMessage() for r in caplog.records) >= 2,
        what="backoff retries",
    )

    server.snapshot = {**server.snapshot, CLUSTER: {V1: cluster(V1, 9)}}
    server.version = 2
    server.start()  # the same port
    poll(lambda: client.resource(CLUSTER, V1) == cluster(V1, 9), what="the update")
    assert client.connected

    # The new stream re-subscribed to everything watched, node first, last versions given.
    resubscribed = [
        r.request for r in server.requests if r.stream == 2 and not r.request.response_nonce
    ]
    assert resubscribed[0].HasField("node")
    assert {r.type_url: list(r.resource_names) for r in resubscribed} == {
        LISTENER: [ORDERS],
        CLUSTER: [V1],
    }
    assert {r.type_url: r.version_info for r in resubscribed} == {LISTENER: "1", CLUSTER: "1"}
    poll(lambda: acks(server, CLUSTER)[-1].version_info == "2")

    events = [getattr(r, "meshlib_event", None) for r in caplog.records]
    assert events.count("xds_disconnected") == 1  # once, however many retries
    assert events.count("xds_connected") == 2
    lost = next(
        r for r in caplog.records if getattr(r, "meshlib_event", None) == "xds_disconnected"
    )
    assert lost.name == "meshlib.xds"
    assert lost.levelno == logging.WARNING
    assert "keeping the last good configuration" in lost.getMessage()


def test_a_stream_the_server_ends_is_reopened(
    server: AdsServer, handler: Recorder, make_client: Any
) -> None:
    client = make_client(server.bootstrap())
    client.subscribe(CLUSTER, [V1])
    assert client.wait_ready(CLUSTER, [V1], timeout=30)
    server.end_streams()
    poll(lambda: server.streams_opened == 2, what="a second stream")
    poll(lambda: client.connected)
    assert client.resource(CLUSTER, V1) == cluster(V1)


def test_refused_streams_are_retried_with_growing_jittered_backoff(
    server: AdsServer, handler: Recorder, make_client: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="meshlib.xds")
    server.refuse = grpc.StatusCode.UNAVAILABLE
    client = make_client(server.bootstrap())
    client.subscribe(CLUSTER, [V1])
    poll(lambda: server.streams_opened >= 6, what="six attempts")
    waits = [
        float(r.getMessage().rsplit(" in ", 1)[1].rstrip("s"))
        for r in caplog.records
        if r.getMessage().startswith("reconnecting")
    ]
    assert len(waits) >= 5
    for attempt, wait in enumerate(waits[:5], start=1):
        nominal = min(0.05 * 1.6 ** (attempt - 1), 0.2)
        assert nominal * 0.8 - 0.001 <= wait <= nominal * 1.2 + 0.001
    assert waits[4] > waits[0]
    server.refuse = None
    assert client.wait_ready(CLUSTER, [V1], timeout=30)
    lines = [r for r in caplog.records if getattr(r, "meshlib_event", None) == "xds_disconnected"]
    assert len(lines) == 1
    assert "UNAVAILABLE: refused by the test" in lines[0].getMessage()


def test_unwatching_before_the_stream_asks_sends_no_wildcard(
    server: AdsServer, handler: Recorder, make_client: Any
) -> None:
    client = make_client(server.bootstrap())
    client.subscribe(LISTENER, [ORDERS])
    for _ in range(20):
        client.subscribe(CLUSTER, [V1])
        client.unsubscribe(CLUSTER, [V1])
    assert client.wait_ready(LISTENER, [ORDERS], timeout=30)
    client.subscribe(CLUSTER_LOAD_ASSIGNMENT, [V1])
    assert client.wait_ready(CLUSTER_LOAD_ASSIGNMENT, [V1], timeout=30)
    # Requests go out in order: every CDS request that was sent is already recorded.
    poll(lambda: acks(server, CLUSTER_LOAD_ASSIGNMENT), what="the EDS ACK")
    cds = server.requests_of(CLUSTER)
    assert not cds or list(cds[0].resource_names) == [V1]


def test_a_surprise_ends_the_stream_not_the_client(
    server: AdsServer,
    handler: Recorder,
    make_client: Any,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    real = ads._decode
    calls: list[int] = []

    def fails_once(*args: Any) -> Any:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("a bug")
        return real(*args)

    monkeypatch.setattr(ads, "_decode", fails_once)
    client = make_client(server.bootstrap())
    client.subscribe(CLUSTER, [V1])
    assert client.wait_ready(CLUSTER, [V1], timeout=30)
    assert server.streams_opened == 2
    [line] = [r for r in caplog.records if r.getMessage().startswith("the xDS stream to")]
    assert line.exc_info is not None


def test_unreachable_server_is_logged_once_and_retried(
    handler: Recorder, make_client: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="meshlib.xds")
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    bootstrap = AdsServer().bootstrap()
    bootstrap = Bootstrap(
        bootstrap.source,
        XdsServer(f"127.0.0.1:{port}", bootstrap.xds_server.channel_creds),
        bootstrap.node,
    )
    client = make_client(bootstrap)
    client.subscribe(LISTENER, [ORDERS])
    poll(
        lambda: sum("reconnecting" in r.getMessage() for r in caplog.records) >= 3,
        what="retries",
    )
    cannot = [r for r in caplog.records if getattr(r, "meshlib_event", None) == "xds_disconnected"]
    assert len(cannot) == 1
    assert "cannot reach the xDS server" in cannot[0].getMessage()
    assert not client.connected
    assert not client.wait_ready(LISTENER, [ORDERS], timeout=0.05)
    # The does-not-exist timer waits for a connected stream (gRFC A57).
    entry = client.status().get(LISTENER, ORDERS)
    assert entry is not None
    assert entry.state == "requested"


def test_tls_channel_creds(tmp_path: Path, handler: Recorder, make_client: Any) -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(ca_file)
    chain = b"".join(blob.bytes() for blob in cert.cert_chain_pems)
    with AdsServer(
        {CLUSTER: {V1: cluster(V1)}}, tls=(chain, cert.private_key_pem.bytes())
    ) as server:
        creds = [{"type": "tls", "config": {"ca_certificate_file": str(ca_file)}}]
        client = make_client(server.bootstrap(channel_creds=creds))
        client.subscribe(CLUSTER, [V1])
        assert client.wait_ready(CLUSTER, [V1], timeout=30)
        assert client.resource(CLUSTER, V1) == cluster(V1)


def test_tls_files_missing_is_a_failed_attempt(
    tmp_path: Path, handler: Recorder, make_client: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="meshlib.xds")
    with AdsServer() as server:
        creds = [{"type": "tls", "config": {"ca_certificate_file": str(tmp_path / "none.pem")}}]
        client = make_client(server.bootstrap(channel_creds=creds))
        client.subscribe(CLUSTER, [V1])
        poll(
            lambda: sum("reconnecting" in r.getMessage() for r in caplog.records) >= 2,
            what="retries",
        )
        [line] = [
            r for r in caplog.records if getattr(r, "meshlib_event", None) == "xds_disconnected"
        ]
        assert "cannot read the TLS files" in line.getMessage()


# --- close ------------------------------------------------------------------------------


def test_close_stops_the_thread_while_streaming(server: AdsServer, make_client: Any) -> None:
    client = make_client(server.bootstrap())
    client.subscribe(LISTENER, [ORDERS])
    assert client.wait_ready(LISTENER, [ORDERS], timeout=30)
    client.close()
    assert not client._thread.is_alive()
    assert not client.connected
    poll(
        lambda: not [t for t in threading.enumerate() if t.name.endswith(server.address)],
        what="the reader thread to end",
    )
    assert client.resource(LISTENER, ORDERS) == listener(ORDERS)  # still readable
    client.close()  # twice is fine


def test_close_interrupts_a_long_backoff(handler: Recorder, make_client: Any) -> None:
    with AdsServer() as server:
        bootstrap = server.bootstrap()
    # The server is gone: the client waits 1000 s between attempts unless closed.
    client = make_client(bootstrap, backoff=ReconnectBackoff(base=1000, cap=1000))
    client.subscribe(LISTENER, [ORDERS])
    poll(lambda: client._connected is False, what="the first attempt to fail")
    client.close()
    assert not client._thread.is_alive()


def test_close_interrupts_a_connect_that_hangs(handler: Recorder, make_client: Any) -> None:
    # A socket that accepts TCP connections and never speaks HTTP/2.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        base = AdsServer().bootstrap()
        bootstrap = Bootstrap(
            base.source,
            XdsServer(f"127.0.0.1:{silent.getsockname()[1]}", base.xds_server.channel_creds),
        )
        client = make_client(bootstrap)
        client.subscribe(LISTENER, [ORDERS])
        waiter = threading.Thread(target=client.wait_ready, args=(LISTENER, [ORDERS], None))
        waiter.start()
        client.close()
        assert not client._thread.is_alive()
        waiter.join(timeout=10)
        assert not waiter.is_alive()  # wait_ready returns when the client closes
        assert not client.wait_ready(LISTENER, [ORDERS], timeout=None)


def test_context_manager_closes(server: AdsServer, handler: Recorder) -> None:
    with AdsClient(server.bootstrap(), handler, backoff=FAST) as client:
        client.subscribe(LISTENER, [ORDERS])
        assert client.wait_ready(LISTENER, [ORDERS], timeout=30)
    assert not client._thread.is_alive()


# --- values and arguments ---------------------------------------------------------------


class Fixed(random.Random):
    def __init__(self, value: float) -> None:
        super().__init__()
        self.value = value
        self.asked: list[tuple[float, float]] = []

    def uniform(self, a: float, b: float) -> float:
        self.asked.append((a, b))
        return self.value


def test_backoff_is_grpcs() -> None:
    backoff = ReconnectBackoff()
    none = Fixed(0.0)
    delays = [backoff.delay(n, none) for n in range(1, 14)]
    assert delays[:4] == pytest.approx([1.0, 1.6, 2.56, 4.096])
    assert delays[-1] == 120.0
    assert max(delays) == 120.0
    assert none.asked[0] == (-0.2, 0.2)
    assert backoff.delay(5, Fixed(0.2)) == pytest.approx(1.6**4 * 1.2)
    assert backoff.delay(10_000, Fixed(-0.2)) == pytest.approx(96.0)
    seeded = [ReconnectBackoff().delay(3, random.Random(seed)) for seed in range(200)]
    assert all(2.56 * 0.8 <= d <= 2.56 * 1.2 for d in seeded)
    assert len(set(seeded)) > 100  # jittered


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"base": 0}, "base"),
        ({"multiplier": 0.5}, "multiplier"),
        ({"jitter": 1.0}, "jitter"),
        ({"jitter": -0.1}, "jitter"),
        ({"base": 5, "cap": 1}, "cap"),
    ],
)
def test_backoff_refuses_bad_values(kwargs: dict[str, float], field: str) -> None:
    with pytest.raises(meshlib.ConfigError, match=rf"ReconnectBackoff\.{field}: out of range"):
        ReconnectBackoff(**kwargs)


def test_arguments_are_checked(server: AdsServer, handler: Recorder, make_client: Any) -> None:
    for value in (0, -1.0, True, "15"):
        with pytest.raises(meshlib.ConfigError, match=r"AdsClient\.resource_timeout: expected"):
            AdsClient(server.bootstrap(), handler, resource_timeout=value)
    client = make_client(server.bootstrap())
    with pytest.raises(meshlib.ConfigError, match="unsupported resource type"):
        client.subscribe("type.googleapis.com/envoy.config.core.v3.Secret", ["x"])
    with pytest.raises(TypeError, match="one string"):
        client.subscribe(LISTENER, ORDERS)
    with pytest.raises(meshlib.ConfigError, match="resource name"):
        client.subscribe(LISTENER, [""])
    client.unsubscribe(CLUSTER, ["never-watched"])  # nothing to do


def test_missing_extra_is_a_config_error_naming_it() -> None:
    # grpc made unimportable, as in an install without the extra.
    code = (
        "import sys\n"
        "sys.modules['grpc'] = None\n"
        "import meshlib, meshlib._xds.bootstrap\n"
        "try:\n"
        "    import meshlib._xds.ads\n"
        "except meshlib.ConfigError as exc:\n"
        "    print('ConfigError:', exc)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("ConfigError: the xDS client needs grpcio and xds-protos")
    assert "pip install 'meshlib[xds]'" in done.stdout
