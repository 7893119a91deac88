"""The xDS behaviours as Envoy shows them, from one snapshot per behaviour.

Every test takes a `side`: a client configured over ADS by tests/xds_server.py from
the snapshot the test pushes (tests/xds_snapshots.py), and sends requests through it
to loopback upstreams. Today the only side is a real Envoy (tests/xds_envoy.py); a
proxyless side (meshlib's `Mesh.from_xds`) is added by adding its name to `SIDES`
and its start-up to `side` (tests/xds_envoy.py says what a side must do). So the
tests assert only what a caller and an upstream see with or without a proxy:
statuses, bodies, which upstream got which request, how many, and with what Host.
Envoy's local replies are the outcome strings of `Reply` ("timeout", ...), which a
proxyless side maps its errors to.

One Envoy serves the whole module; each test pushes its snapshot first (the push
returns once the side has applied it). No test asserts how fast anything is: the
only time bounds are lower bounds, or upper bounds many times what the
configuration asks for.
"""

from __future__ import annotations

import socket
import ssl
import threading
import time
from collections.abc import Iterator, Sequence
from typing import NamedTuple

import httpx
import pytest
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.extensions.transport_sockets.tls.v3 import tls_pb2

from meshlib._xds.ads import CLUSTER, CLUSTER_LOAD_ASSIGNMENT, LISTENER, ROUTE_CONFIGURATION
from meshlib.testing import FaultServer, Hang, Reset, Respond

from . import xds_snapshots as snapshots
from .spiffe import MeshCerts, mesh_certs
from .xds_envoy import SECRET, SOCKET_PREFIX, EnvoySide, Reply, Side, for_envoy
from .xds_meshlib import MeshlibSide
from .xds_server import AdsServer
from .xds_snapshots import HOST, ISTIO_LISTENER

pytestmark = pytest.mark.network

#: The clients every behaviour runs against.
SIDES = ("envoy", "meshlib")


class Upstreams(NamedTuple):
    a: FaultServer
    b: FaultServer
    c: FaultServer
    d: FaultServer


@pytest.fixture(scope="module")
def ads() -> Iterator[AdsServer]:
    with AdsServer() as running:
        yield running


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> MeshCerts:
    """SPIFFE workload certificates; the caller's are its bootstrap provider `default`."""
    return mesh_certs(str(tmp_path_factory.mktemp("mesh-certs")))


@pytest.fixture(scope="module", params=SIDES)
def side(request: pytest.FixtureRequest, ads: AdsServer, certs: MeshCerts) -> Iterator[Side]:
    if request.param == "envoy":
        with EnvoySide(ads, providers={"default": certs.client}) as envoy:
            yield envoy
    elif request.param == "meshlib":
        with MeshlibSide(ads, providers={"default": certs.client}) as mesh:
            yield mesh
    else:  # pragma: no cover - a new side must be started here
        raise AssertionError(f"unknown side {request.param!r}")


@pytest.fixture(scope="module")
def servers() -> Iterator[Upstreams]:
    with FaultServer() as a, FaultServer() as b, FaultServer() as c, FaultServer() as d:
        yield Upstreams(a, b, c, d)


@pytest.fixture
def upstreams(servers: Upstreams) -> Iterator[Upstreams]:
    """Four upstreams that answer 200 with their own name, with empty logs."""
    for name, server in zip(Upstreams._fields, servers, strict=True):
        server.default = Respond(200, name.encode())
        server.reset_log()
    yield servers
    for server in servers:
        # What a test queued and did not use would answer the next test's requests.
        while server.pending:
            httpx.get(server.url, timeout=10.0)


@pytest.fixture(scope="module")
def mtls_upstream(certs: MeshCerts) -> Iterator[FaultServer]:
    """An upstream that presents the orders SPIFFE id and requires a mesh client cert."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=certs.client.ca)
    context.load_cert_chain(certs.server_certificate, certs.server_key)
    context.verify_mode = ssl.CERT_REQUIRED
    with FaultServer(ssl_context=context) as server:
        server.default = Respond(200, b"orders")
        yield server


def bodies(replies: Sequence[Reply]) -> list[bytes]:
    return [reply.body for reply in replies]


# --- routing ---------------------------------------------------------------------------


def test_weighted_split_follows_the_weights(side: Side, upstreams: Upstreams) -> None:
    a, b = upstreams.a, upstreams.b
    side.push(snapshots.weighted_split(a.port, b.port, (75, 25)))
    count = 300
    replies = [side.send("GET", f"/orders/{i}") for i in range(count)]
    assert {reply.status for reply in replies} == {200}
    to_b = sum(reply.body == b"b" for reply in replies)
    # Each request picks b with probability 1/4: binomial(300, 0.25) has mean 75 and a
    # standard deviation of 7.5; 4.5 of them either side fails once in ~150 000 runs.
    # A 50/50 split (150) or an unweighted pick of one cluster (0 or 300) falls far out.
    assert 41 <= to_b <= 109
    assert (a.request_count, b.request_count) == (count - to_b, to_b)


def test_path_routes_prefix_exact_and_regex(side: Side, upstreams: Upstreams) -> None:
    a, b, c = upstreams.a, upstreams.b, upstreams.c
    side.push(snapshots.path_and_header_routes(a.port, b.port, c.port))
    expected = {
        "/healthz": b"c",  # exact path
        "/healthz?verbose=1": b"c",  # the query string is not part of the path
        "/healthz/live": b"a",  # exact is not prefix
        "/items/42": b"b",  # the regex matches the whole path
        "/items/7?page=2": b"b",
        "/items/42/notes": b"a",  # ... and only the whole path
        "/items/abc": b"a",
        "/v1/orders": b"c",  # prefix
        "/v1": b"a",  # "/v1/" is not a prefix of "/v1"
        "/V1/orders": b"a",  # prefixes are case-sensitive
    }
    for url_path, upstream in expected.items():
        reply = side.send("GET", url_path)
        assert (url_path, reply.status, reply.body) == (url_path, 200, upstream)
    # Each upstream got the path as the caller sent it, query string included.
    assert [r.path for r in c.requests] == ["/healthz", "/healthz?verbose=1", "/v1/orders"]
    assert [r.path for r in b.requests] == ["/items/42", "/items/7?page=2"]
    assert len(a.requests) == 5


def test_header_routes_come_first_and_match_exactly(side: Side, upstreams: Upstreams) -> None:
    a, b, c = upstreams.a, upstreams.b, upstreams.c
    side.push(snapshots.path_and_header_routes(a.port, b.port, c.port))
    cases = [
        ({"x-canary": "yes"}, b"b"),  # the header route wins over the later prefix route
        ({"X-Canary": "yes"}, b"b"),  # header names are case-insensitive
        ({"x-canary": "YES"}, b"c"),  # values are not
        ({"x-canary": "no"}, b"c"),
        ({}, b"c"),
    ]
    for headers, upstream in cases:
        reply = side.send("GET", "/v1/orders", headers)
        assert (headers, reply.status, reply.body) == (headers, 200, upstream)
    assert [r.headers.get("x-canary") for r in b.requests] == ["yes", "yes"]
    assert a.request_count == 0


def test_header_matchers_as_envoy_reads_them(side: Side, upstreams: Upstreams) -> None:
    a, b = upstreams.a, upstreams.b
    side.push(snapshots.header_matchers(a.port, b.port))
    cases: list[tuple[dict[str, str], bytes]] = [
        ({"x-exact": "blue"}, b"b"),
        ({"x-exact": "blue2"}, b"a"),
        ({"x-prefix": "blueberry"}, b"b"),
        ({"x-prefix": "navyblue"}, b"a"),
        ({"x-suffix": "navyblue"}, b"b"),
        ({"x-suffix": "blueberry"}, b"a"),
        ({"x-present": ""}, b"b"),  # present, even with an empty value
        ({"x-regex": "v12"}, b"b"),
        ({"x-regex": "v12a"}, b"a"),  # the regex must match the whole value
        ({"x-use-not": "1", "x-not": "green"}, b"b"),  # inverted exact
        ({"x-use-not": "1", "x-not": "blue"}, b"a"),
        # An absent header matches no matcher but "present", inverted or not.
        ({"x-use-not": "1"}, b"a"),
        ({}, b"a"),
    ]
    for headers, upstream in cases:
        reply = side.send("GET", "/orders", headers)
        assert (headers, reply.status, reply.body) == (headers, 200, upstream)


def test_runtime_fraction_is_a_share_of_requests(side: Side, upstreams: Upstreams) -> None:
    a, b = upstreams.a, upstreams.b
    side.push(snapshots.runtime_fraction(a.port, b.port, percent=30))
    count = 300
    replies = [side.send("GET", f"/orders/{i}") for i in range(count)]
    to_b = bodies(replies).count(b"b")
    # binomial(300, 0.3): mean 90, standard deviation 7.9; 4.5 of them either side.
    assert 54 <= to_b <= 126
    assert (a.request_count, b.request_count) == (count - to_b, to_b)


def test_virtual_host_by_domain(side: Side, upstreams: Upstreams) -> None:
    side.push(snapshots.virtual_hosts(*(server.port for server in upstreams)))
    for authority, upstream in snapshots.DOMAIN_HOSTS.items():
        reply = side.send("GET", "/orders", authority=authority)
        assert (authority, reply.status, reply.body) == (authority, 200, upstream.encode())
    hosts = {
        name: [r.headers["host"] for r in server.requests]
        for name, server in zip(Upstreams._fields, upstreams, strict=True)
    }
    assert hosts == {
        "a": ["orders.test:8080"],
        "b": ["payments.test:8080", "orders.eu.test:8080"],
        "c": ["orders.example:8080"],
        "d": ["other:8080"],
    }


# --- retries ---------------------------------------------------------------------------


def test_retries_on_5xx_until_success(side: Side, upstreams: Upstreams) -> None:
    a = upstreams.a
    side.push(snapshots.retries(a.port))
    a.enqueue(Respond(503, b"busy"), Respond(500, b"broken"))
    reply = side.send("GET", "/retry")
    assert (reply.status, reply.body) == (200, b"a")
    assert a.request_count == 3


def test_num_retries_bounds_the_attempts(side: Side, upstreams: Upstreams) -> None:
    a = upstreams.a
    side.push(snapshots.retries(a.port))
    a.enqueue(*[Respond(503, b"busy %d" % i) for i in range(3)], Respond(200, b"too late"))
    reply = side.send("GET", "/retry")
    # num_retries 2: three attempts, then the last answer goes back as it came.
    assert (reply.status, reply.body) == (503, b"busy 2")
    assert a.request_count == 3
    assert side.send("GET", "/retry").body == b"too late"  # the fourth one was left


def test_retry_on_5xx_retries_a_reset(side: Side, upstreams: Upstreams) -> None:
    a = upstreams.a
    side.push(snapshots.retries(a.port))
    a.enqueue(Reset())
    reply = side.send("GET", "/retry")
    assert (reply.status, reply.body) == (200, b"a")
    assert a.request_count == 2


def test_retry_on_5xx_does_not_retry_4xx(side: Side, upstreams: Upstreams) -> None:
    a = upstreams.a
    side.push(snapshots.retries(a.port))
    a.enqueue(Respond(404, b"no such order"))
    reply = side.send("GET", "/retry")
    assert (reply.status, reply.body) == (404, b"no such order")
    assert a.request_count == 1


def test_no_retry_policy_means_no_retries(side: Side, upstreams: Upstreams) -> None:
    a = upstreams.a
    side.push(snapshots.retries(a.port))
    a.enqueue(Respond(503, b"busy"))
    reply = side.send("GET", "/once")
    assert (reply.status, reply.body) == (503, b"busy")
    assert a.request_count == 1


def test_num_retries_unset_is_one_retry(side: Side, upstreams: Upstreams) -> None:
    a = upstreams.a
    side.push(snapshots.retries(a.port))
    a.enqueue(Respond(503, b"busy"), Respond(503, b"still busy"))
    reply = side.send("GET", "/unset")
    assert (reply.status, reply.body) == (503, b"still busy")
    assert a.request_count == 2


def test_retriable_status_codes_retry_only_those(side: Side, upstreams: Upstreams) -> None:
    a = upstreams.a
    side.push(snapshots.retries(a.port))
    a.enqueue(Respond(409, b"conflict"))
    assert side.send("GET", "/status").body == b"a"
    assert a.request_count == 2
    a.enqueue(Respond(503, b"busy"))  # a 5xx, but not among the codes listed
    reply = side.send("GET", "/status")
    assert (reply.status, reply.body) == (503, b"busy")
    assert a.request_count == 3


@pytest.fixture
def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on."""
    with socket.socket() as placeholder:
        placeholder.bind(("127.0.0.1", 0))
        return int(placeholder.getsockname()[1])


def test_gateway_error_retries_502_503_504_only(
    side: Side, upstreams: Upstreams, closed_port: int
) -> None:
    a = upstreams.a
    side.push(snapshots.more_retries(a.port, closed_port))
    a.enqueue(Respond(502), Respond(503), Respond(200, b"third"))
    assert side.send("GET", "/gateway").body == b"third"
    a.enqueue(Respond(504), Respond(200, b"second"))
    assert side.send("GET", "/gateway").body == b"second"
    a.enqueue(Respond(500, b"broken"))
    reply = side.send("GET", "/gateway")
    assert (reply.status, reply.body) == (500, b"broken")
    assert a.request_count == 3 + 2 + 1


def test_connect_failure_retries_on_another_endpoint(
    side: Side, upstreams: Upstreams, closed_port: int
) -> None:
    a = upstreams.a
    side.push(snapshots.more_retries(a.port, closed_port))
    # Round robin over a dead endpoint and a: without the retry, every other request
    # would be a connect error; with it, every request ends at a.
    replies = [side.send("GET", "/connect") for _ in range(6)]
    assert [(reply.status, reply.body) for reply in replies] == [(200, b"a")] * 6
    assert a.request_count == 6


def test_retry_after_delays_the_retry(side: Side, upstreams: Upstreams, closed_port: int) -> None:
    a = upstreams.a
    side.push(snapshots.more_retries(a.port, closed_port))
    a.enqueue(Respond(503, b"later", headers={"Retry-After": "1"}))
    started = time.monotonic()
    reply = side.send("GET", "/later")
    elapsed = time.monotonic() - started
    assert (reply.status, reply.body) == (200, b"a")
    assert a.request_count == 2
    assert elapsed >= 0.9  # a lower bound only: the retry waited for Retry-After (1 s)


def test_a_routes_retry_policy_replaces_the_virtual_hosts(side: Side, upstreams: Upstreams) -> None:
    a = upstreams.a
    side.push(snapshots.virtual_host_retries(a.port))
    a.enqueue(Respond(503, b"busy"), Respond(503, b"still busy"))
    assert side.send("GET", "/inherit").body == b"a"  # the virtual host's: 5xx, 2 retries
    assert a.request_count == 3
    a.enqueue(Respond(503, b"busy"))
    reply = side.send("GET", "/own")  # its own: resets only, so a 503 is final
    assert (reply.status, reply.body) == (503, b"busy")
    assert a.request_count == 4


# --- timeouts --------------------------------------------------------------------------


def test_route_timeout_ends_the_request(side: Side, upstreams: Upstreams) -> None:
    a = upstreams.a
    side.push(snapshots.timeouts(a.port))
    a.enqueue(Respond(200, b"too late", delay=8.0))
    started = time.monotonic()
    reply = side.send("GET", "/route")
    elapsed = time.monotonic() - started
    assert reply.status == "timeout"
    assert a.request_count == 1  # no retry_policy: one attempt
    # The route timeout is 0.5 s; the upstream would answer after 8 s.
    assert 0.45 <= elapsed < 6.0


def test_per_try_timeout_moves_on_to_the_next_try(side: Side, upstreams: Upstreams) -> None:
    a = upstreams.a
    side.push(snapshots.timeouts(a.port))
    a.enqueue(Respond(200, b"too late", delay=8.0), Respond(200, b"second"))
    started = time.monotonic()
    reply = side.send("GET", "/per-try")
    elapsed = time.monotonic() - started
    assert (reply.status, reply.body) == (200, b"second")
    assert a.request_count == 2
    assert 0.35 <= elapsed < 6.0  # one per-try timeout (0.4 s), not the 8 s answer


def test_per_try_timeout_on_every_try_is_a_timeout(side: Side, upstreams: Upstreams) -> None:
    a = upstreams.a
    side.push(snapshots.timeouts(a.port))
    a.enqueue(*[Hang(8.0)] * 3)
    started = time.monotonic()
    reply = side.send("GET", "/per-try")
    elapsed = time.monotonic() - started
    assert reply.status == "timeout"
    assert a.request_count == 3  # 1 + num_retries, each cut at 0.4 s
    assert 1.1 <= elapsed < 15.0  # three per-try timeouts, far from the 20 s route timeout


# --- endpoints ---------------------------------------------------------------------------


def test_eds_push_moves_traffic_without_a_restart(side: Side, upstreams: Upstreams) -> None:
    a, b = upstreams.a, upstreams.b
    side.push(snapshots.one_cluster([a.port]))
    assert bodies([side.send("GET", "/orders") for _ in range(4)]) == [b"a"] * 4

    # Only the ClusterLoadAssignment changes; the Cluster, routes and listener do not.
    side.push(snapshots.one_cluster([b.port]))
    assert bodies([side.send("GET", "/orders") for _ in range(4)]) == [b"b"] * 4
    assert (a.request_count, b.request_count) == (4, 4)

    side.push(snapshots.one_cluster([a.port, b.port]))
    assert set(bodies([side.send("GET", "/orders") for _ in range(10)])) == {b"a", b"b"}
    assert a.request_count + b.request_count == 18


def test_eds_unhealthy_endpoints_get_no_traffic(side: Side, upstreams: Upstreams) -> None:
    a, b = upstreams.a, upstreams.b
    side.push(snapshots.health([a.port, b.port], unhealthy=[b.port], cluster="health-1"))
    assert bodies([side.send("GET", "/orders") for _ in range(6)]) == [b"a"] * 6
    assert b.request_count == 0


def test_below_half_healthy_traffic_spreads_over_all(side: Side, upstreams: Upstreams) -> None:
    a, b, c = upstreams.a, upstreams.b, upstreams.c
    # One healthy endpoint of three is below Envoy's 50 % panic threshold: then every
    # endpoint gets traffic, the unhealthy ones included.
    ports = [a.port, b.port, c.port]
    side.push(snapshots.health(ports, unhealthy=[b.port, c.port], cluster="health-2"))
    replies = [side.send("GET", "/orders") for _ in range(30)]
    assert {reply.status for reply in replies} == {200}
    assert set(bodies(replies)) == {b"a", b"b", b"c"}


def test_priorities_spill_over_with_overprovisioning(side: Side, upstreams: Upstreams) -> None:
    a, b, c = upstreams.a, upstreams.b, upstreams.c
    side.push(snapshots.priorities(a.port, b.port, c.port))
    count = 300
    replies = [side.send("GET", f"/orders/{i}") for i in range(count)]
    assert {reply.status for reply in replies} == {200}
    to_c = bodies(replies).count(b"c")
    # Priority 1 takes 30 %: binomial(300, 0.3), mean 90, sd 7.9, 4.5 of them either side.
    # Without the factor 1.4 it would be 50 %; without spill-over, none.
    assert 54 <= to_c <= 126
    assert (a.request_count, b.request_count, c.request_count) == (count - to_c, 0, to_c)


@pytest.mark.parametrize(("weighted", "low", "high"), [(True, 191, 259), (False, 105, 195)])
def test_locality_weights_only_with_locality_weighted_lb_config(
    side: Side, upstreams: Upstreams, weighted: bool, low: int, high: int
) -> None:
    a, b = upstreams.a, upstreams.b
    side.push(snapshots.localities(a.port, b.port, weighted=weighted))
    count = 300
    to_b = bodies([side.send("GET", f"/orders/{i}") for i in range(count)]).count(b"b")
    # Weighted: b's share is 3/4 (mean 225, sd 7.5); ignored: 1/2 (mean 150, sd 8.7);
    # bounds about 4.5 sd either side, which keep the two cases far apart.
    assert low <= to_b <= high
    assert a.request_count + b.request_count == count


def test_endpoint_weights_share_the_requests(side: Side, upstreams: Upstreams) -> None:
    a, b = upstreams.a, upstreams.b
    side.push(snapshots.endpoint_weights(a.port, b.port))
    count = 300
    to_b = bodies([side.send("GET", f"/orders/{i}") for i in range(count)]).count(b"b")
    # b's share is 3/4 (mean 225, sd 7.5; unweighted: 150), 4.5 sd either side.
    assert 191 <= to_b <= 259
    assert a.request_count + b.request_count == count


def test_degraded_endpoints_take_what_healthy_ones_cannot(side: Side, upstreams: Upstreams) -> None:
    a, b, c = upstreams.a, upstreams.b, upstreams.c
    side.push(snapshots.degraded(a.port, b.port, c.port))
    count = 1200
    replies = [side.send("GET", f"/orders/{i}") for i in range(count)]
    assert {reply.status for reply in replies} == {200}
    to_a = bodies(replies).count(b"a")
    # The healthy a takes 46 % (mean 552, sd 17.3), 4.5 sd either side. Counting the
    # degraded ones as healthy, or leaving them out (1 of 3 usable: panic, all used),
    # would give a a third (400, sd 16.3), below the lower bound by 4.5 sd.
    assert 474 <= to_a <= 630
    assert b.request_count > 0
    assert c.request_count > 0
    assert a.request_count + b.request_count + c.request_count == count


def test_outlier_detection_ejects_after_consecutive_5xx(side: Side, upstreams: Upstreams) -> None:
    a, b, c = upstreams.a, upstreams.b, upstreams.c
    a.default = Respond(503, b"broken")
    side.push(snapshots.outlier_ejection([a.port, b.port, c.port], consecutive_5xx=3))
    # Round robin over three hosts: a answers every third request, with 503, which goes
    # back to the caller as it is (no retries). Its third 503 in a row ejects it.
    failures = 0
    for _ in range(30):
        if side.send("GET", "/orders").status == 503:
            failures += 1
        if a.request_count == 3:
            break
    assert (failures, a.request_count) == (3, 3)
    # Both Envoy and a proxyless client eject at once, but Envoy on its main thread,
    # after the request: give it a moment (the ejection lasts 30 s).
    time.sleep(1.0)
    replies = [side.send("GET", "/orders") for _ in range(12)]
    assert {reply.status for reply in replies} == {200}
    assert set(bodies(replies)) == {b"b", b"c"}
    assert a.request_count == 3


def test_outlier_detection_ejects_no_more_than_max_ejection_percent(
    side: Side, upstreams: Upstreams
) -> None:
    a, b, c = upstreams.a, upstreams.b, upstreams.c
    a.default = Respond(503, b"broken")
    # max_ejection_percent unset is Envoy's 10 %: ejecting one host of three (33 %) would
    # exceed it, so a is never ejected however often it fails.
    snapshot = snapshots.outlier_ejection([a.port, b.port, c.port], max_ejection_percent=None)
    side.push(snapshot)
    for _ in range(9):
        side.send("GET", "/orders")
    assert a.request_count == 3  # round robin: every third request, three 503s in a row
    time.sleep(1.0)  # as long as the ejection above was given
    replies = [side.send("GET", "/orders") for _ in range(9)]
    assert [reply.status for reply in replies].count(503) == 3
    assert a.request_count == 6


def test_an_endpoint_that_refuses_connections_is_a_connect_error(
    side: Side, upstreams: Upstreams, closed_port: int
) -> None:
    side.push(snapshots.one_cluster([closed_port]))
    assert side.send("GET", "/orders").status == "connect_error"


def test_circuit_breakers_max_requests_is_a_bulkhead(side: Side, upstreams: Upstreams) -> None:
    a = upstreams.a
    side.push(snapshots.bulkhead(a.port, max_requests=1))
    a.enqueue(Respond(200, b"slow", delay=1.5))
    first: list[Reply] = []
    worker = threading.Thread(target=lambda: first.append(side.send("GET", "/slow")))
    worker.start()
    try:
        stop_at = time.monotonic() + 10.0
        while a.request_count == 0 and time.monotonic() < stop_at:
            time.sleep(0.01)
        assert a.request_count == 1  # the slow request is in flight at the upstream
        # A second request while it is: refused by the side itself, never sent.
        assert side.send("GET", "/orders").status == "overloaded"
        assert a.request_count == 1
    finally:
        worker.join(30.0)
    assert [(reply.status, reply.body) for reply in first] == [(200, b"slow")]
    assert side.send("GET", "/orders").body == b"a"  # room again once it is done


# --- faults ----------------------------------------------------------------------------


@pytest.mark.parametrize("status", [503, 418])
def test_fault_abort_answers_without_the_upstream(
    side: Side, upstreams: Upstreams, status: int
) -> None:
    a = upstreams.a
    side.push(snapshots.aborting(a.port, status))
    replies = [side.send("GET", "/orders") for _ in range(5)]
    assert [reply.status for reply in replies] == [status] * 5
    # The abort comes before the router: the route's retries (5xx) never see it.
    assert a.request_count == 0


def test_fault_delay_then_the_upstream_answers(side: Side, upstreams: Upstreams) -> None:
    a = upstreams.a
    side.push(snapshots.delaying(a.port, 0.3))
    started = time.monotonic()
    reply = side.send("GET", "/orders")
    elapsed = time.monotonic() - started
    assert (reply.status, reply.body) == (200, b"a")
    assert a.request_count == 1
    assert elapsed >= 0.28  # a lower bound only: the delay was served


# --- what the upstream sees -------------------------------------------------------------


def test_upstream_sees_the_callers_host_through_a_split(side: Side, upstreams: Upstreams) -> None:
    a, b = upstreams.a, upstreams.b
    side.push(snapshots.weighted_split(a.port, b.port, (50, 50)))
    for i in range(20):
        assert side.send("GET", f"/orders/{i}", {"x-tenant": "blue"}).status == 200
    seen = a.requests + b.requests
    # Neither the cluster's name nor the endpoint's address: the authority sent.
    assert {r.headers["host"] for r in seen} == {HOST}
    assert {r.headers["x-tenant"] for r in seen} == {"blue"}
    # Both clusters got some: all 20 to one of them happens once in 500 000 runs.
    assert a.request_count > 0
    assert b.request_count > 0


# --- Istio -----------------------------------------------------------------------------


def test_istio_proxyless_snapshot_with_istio_mutual(
    side: Side, mtls_upstream: FaultServer, certs: MeshCerts
) -> None:
    mtls_upstream.reset_log()
    side.push(snapshots.istio_orders(mtls_upstream.port, sans=[certs.server_id]))
    reply = side.send("GET", "/v1/orders?id=7", authority=ISTIO_LISTENER)
    assert (reply.status, reply.body) == (200, b"orders")
    [seen] = mtls_upstream.requests
    assert seen.path == "/v1/orders?id=7"
    assert seen.headers["host"] == ISTIO_LISTENER
    # mTLS: the upstream checked the caller's workload certificate from provider `default`.
    assert seen.peer_cert is not None
    assert seen.peer_cert["subjectAltName"] == (("URI", certs.client_id),)


def test_istio_mutual_refuses_a_server_with_another_spiffe_id(
    side: Side, mtls_upstream: FaultServer
) -> None:
    mtls_upstream.reset_log()
    payments = "spiffe://cluster.local/ns/default/sa/payments"
    side.push(snapshots.istio_orders(mtls_upstream.port, sans=[payments]))
    reply = side.send("GET", "/v1/orders", authority=ISTIO_LISTENER)
    # The handshake fails on the subject-alt-name check (Istio's retries on
    # connect-failure do not help): no request reaches the upstream.
    assert reply.status == "connect_error"
    assert mtls_upstream.request_count == 0


# --- the harness itself ------------------------------------------------------------------


def test_envoy_is_served_the_snapshots_own_resources(certs: MeshCerts) -> None:
    """What Envoy gets differs from the snapshot only by what Envoy alone needs."""
    original = snapshots.istio_orders(9999, sans=[certs.server_id])
    served = for_envoy(original, {"default": certs.client})
    assert served[ROUTE_CONFIGURATION] == original[ROUTE_CONFIGURATION]
    assert served[CLUSTER_LOAD_ASSIGNMENT] == original[CLUSTER_LOAD_ASSIGNMENT]
    # The api_listener is kept; beside it, a socket listener with the very same HCM.
    assert served[LISTENER][ISTIO_LISTENER] == original[LISTENER][ISTIO_LISTENER]
    socket_listener = served[LISTENER][SOCKET_PREFIX + ISTIO_LISTENER]
    [chain] = socket_listener.filter_chains
    [hcm] = chain.filters
    api_hcm = original[LISTENER][ISTIO_LISTENER].api_listener.api_listener
    assert hcm.typed_config.type_url == api_hcm.type_url
    derived = hcm_pb2.HttpConnectionManager()
    given = hcm_pb2.HttpConnectionManager()
    hcm.typed_config.Unpack(derived)
    api_hcm.Unpack(given)
    derived.ClearField("stat_prefix")  # Envoy requires one; istiod sends none
    assert derived == given
    # Clusters: equal but for the TLS context's certificate source, which is SDS over ADS
    # with the provider's files; the SAN check is the same.
    assert served[CLUSTER].keys() == original[CLUSTER].keys()
    for name, cluster in served[CLUSTER].items():
        mine, theirs = type(cluster)(), type(cluster)()
        mine.CopyFrom(cluster)
        theirs.CopyFrom(original[CLUSTER][name])
        mine.ClearField("transport_socket")
        theirs.ClearField("transport_socket")
        assert mine == theirs
        context = tls_pb2.UpstreamTlsContext()
        cluster.transport_socket.typed_config.Unpack(context)
        common = context.common_tls_context
        assert [c.name for c in common.tls_certificate_sds_secret_configs] == ["default/default"]
        validation = common.combined_validation_context
        assert validation.validation_context_sds_secret_config.name == "default/ROOTCA"
        sans = validation.default_validation_context.match_subject_alt_names
        assert [m.exact for m in sans] == [certs.server_id]
    secrets = served[SECRET]
    assert secrets["default/default"].tls_certificate.certificate_chain.filename == (
        certs.client.certificate
    )
    assert secrets["default/ROOTCA"].validation_context.trusted_ca.filename == certs.client.ca
