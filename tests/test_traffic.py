"""Traffic: endpoints and balancing, ejection, routes, fault injection, hedging."""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
import math
import random
import statistics
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

import meshlib
from meshlib.testing import FakeClock, FaultServer, Respond

pytestmark = pytest.mark.usefixtures("rng")

NO_BREAKER = meshlib.Policy(breaker=None)


def _mesh(destination: str = "orders.internal", **layers: object) -> meshlib.Mesh:
    return meshlib.Mesh(destinations={destination: NO_BREAKER.replace(**layers)})


@pytest.fixture
def two_servers() -> Iterator[tuple[FaultServer, FaultServer]]:
    with FaultServer() as first, FaultServer() as second:
        yield first, second


def _endpoints(*servers: FaultServer, **options: object) -> meshlib.Endpoints:
    return meshlib.Endpoints([f"127.0.0.1:{s.port}" for s in servers], **options)  # type: ignore[arg-type]


# Endpoints and balancing


@pytest.mark.network
def test_requests_go_to_the_endpoints_as_the_destination(
    two_servers: tuple[FaultServer, FaultServer],
) -> None:
    first, second = two_servers
    mesh = _mesh(endpoints=_endpoints(first, second, balance="round_robin"))
    with meshlib.wrap(httpx.Client(), mesh) as client:
        responses = [client.get("http://orders.internal/items") for _ in range(4)]
    assert [r.status_code for r in responses] == [200] * 4
    assert all(str(r.url) == "http://orders.internal/items" for r in responses)
    assert (first.request_count, second.request_count) == (2, 2)  # round robin
    hosts = {r.headers["host"] for r in first.requests + second.requests}
    assert hosts == {"orders.internal"}


@pytest.mark.network
def test_p2c_steers_away_from_a_slow_endpoint(
    two_servers: tuple[FaultServer, FaultServer],
) -> None:
    slow, fast = two_servers
    slow.default = Respond(200, delay=0.2)  # far beyond what load adds to the fast one
    mesh = _mesh(endpoints=_endpoints(slow, fast))
    with meshlib.wrap(httpx.Client(), mesh) as client:
        for _ in range(150):
            client.get("http://orders.internal/")
    assert fast.request_count > 0.85 * 150
    snapshot = {e.address: e for e in mesh.endpoints()["http://orders.internal:80"]}
    slow_seen = snapshot[f"127.0.0.1:{slow.port}"]
    # Either never chosen again after the fast one was measured, or measured slower.
    assert slow_seen.latency == 0 or slow_seen.latency > snapshot[f"127.0.0.1:{fast.port}"].latency


@pytest.mark.network
@pytest.mark.anyio
async def test_p2c_steers_away_from_a_slow_endpoint_async(
    two_servers: tuple[FaultServer, FaultServer],
) -> None:
    slow, fast = two_servers
    # Ten in flight on the fast one must still cost less than one on the slow one, however
    # much a loaded machine adds to the fast one's latency.
    slow.default = Respond(200, delay=2.0)
    mesh = _mesh(endpoints=_endpoints(slow, fast))
    async with meshlib.wrap(httpx.AsyncClient(), mesh) as client:
        for _ in range(8):  # concurrent waves: in-flight counts weigh in too
            await asyncio.gather(*(client.get("http://orders.internal/") for _ in range(10)))
    # The first wave splits by load alone; once measured, the slow one is avoided.
    assert fast.request_count > 0.8 * 80


@pytest.fixture
def three_servers() -> Iterator[tuple[FaultServer, FaultServer, FaultServer]]:
    with FaultServer() as first, FaultServer() as second, FaultServer() as third:
        yield first, second, third


@pytest.mark.network
@pytest.mark.parametrize("balance", ["p2c", "round_robin"])
def test_two_equal_endpoints_share_sequential_calls(
    two_servers: tuple[FaultServer, FaultServer], balance: str
) -> None:
    # The first call to each pays a TCP connect; neither may be locked out by it.
    mesh = _mesh(endpoints=_endpoints(*two_servers, balance=balance))
    with meshlib.wrap(httpx.Client(), mesh) as client:
        for _ in range(200):
            client.get("http://orders.internal/")
    counts = sorted(s.request_count for s in two_servers)
    assert sum(counts) == 200
    assert counts[0] >= 80  # within 40/60


@pytest.mark.network
@pytest.mark.parametrize("balance", ["p2c", "round_robin"])
def test_three_equal_endpoints_each_get_a_fair_share(
    three_servers: tuple[FaultServer, FaultServer, FaultServer], balance: str
) -> None:
    mesh = _mesh(endpoints=_endpoints(*three_servers, balance=balance))
    with meshlib.wrap(httpx.Client(), mesh) as client:
        for _ in range(200):
            client.get("http://orders.internal/")
    assert min(s.request_count for s in three_servers) >= 200 / 5


@pytest.mark.network
@pytest.mark.anyio
async def test_two_equal_endpoints_share_concurrent_calls(
    two_servers: tuple[FaultServer, FaultServer],
) -> None:
    mesh = _mesh(endpoints=_endpoints(*two_servers))
    async with meshlib.wrap(httpx.AsyncClient(), mesh) as client:
        for _ in range(20):
            await asyncio.gather(*(client.get("http://orders.internal/") for _ in range(10)))
    assert min(s.request_count for s in two_servers) >= 80


def test_a_stale_slow_estimate_does_not_lock_an_endpoint_out() -> None:
    from meshlib._traffic import EndpointPool

    # Both answer in 1 ms, but "a" paid a 50 ms connect first: its estimate starts high,
    # and with two endpoints every draw compares the same pair.
    pool = EndpointPool(meshlib.Endpoints(["a:80", "b:80"]), "orders")
    first = pool.pick(0.0)
    pool.done(first, False, 0.05 if first.host == "a" else 0.001, 0.0)
    seen: collections.Counter[str] = collections.Counter([first.host])
    for n in range(1, 200):
        now = n * 0.001
        chosen = pool.pick(now)
        seen[chosen.host] += 1
        if chosen.host == "a" and seen["a"] == 1:
            pool.done(chosen, False, 0.05, now)
        else:
            pool.done(chosen, False, 0.001, now)
    assert min(seen["a"], seen["b"]) >= 80


def test_an_endpoint_estimate_decays_with_time() -> None:
    from meshlib._traffic import EndpointPool

    pool = EndpointPool(meshlib.Endpoints(["a:80", "b:80"]), "orders")
    chosen = pool.pick(0.0)
    assert [e.latency for e in pool.snapshot(0.0)] == [0.0, 0.0]  # not measured yet
    pool.done(chosen, False, 0.05, 0.0)
    (measured,) = [e for e in pool.snapshot(10.0) if e.latency]
    assert measured.latency == pytest.approx(0.05 / math.e)  # read 10 s later, not refreshed
    pool.done(pool.pick(20.0, avoid=chosen), False, 0.01, 20.0)
    assert sorted(e.latency for e in pool.snapshot(20.0)) == pytest.approx([0.05 / math.e**2, 0.01])


def test_p2c_sends_clearly_less_to_a_measured_slower_endpoint() -> None:
    from meshlib._traffic import EndpointPool

    pool = EndpointPool(meshlib.Endpoints(["slow:80", "fast:80"]), "orders")
    seen: collections.Counter[str] = collections.Counter()
    for n in range(1000):
        now = n * 0.002
        chosen = pool.pick(now)
        seen[chosen.host] += 1
        pool.done(chosen, False, 0.03 if chosen.host == "slow" else 0.001, now)
    assert seen["slow"] < 0.15 * 1000  # 30 times slower: still tried now and then
    assert seen["slow"] > 0


@pytest.mark.network
def test_a_retry_prefers_another_endpoint(two_servers: tuple[FaultServer, FaultServer]) -> None:
    broken, healthy = two_servers
    broken.default = Respond(503)
    mesh = _mesh(
        endpoints=_endpoints(broken, healthy, ejection=None, balance="round_robin"),
        retry=meshlib.Retry(attempts=2, backoff=meshlib.Backoff(base=0, cap=0), budget=None),
    )
    with meshlib.wrap(httpx.Client(), mesh) as client:
        statuses = [client.get("http://orders.internal/").status_code for _ in range(30)]
    assert statuses == [200] * 30  # a call that met the broken endpoint retried elsewhere
    assert broken.request_count > 0


# Ejection, with the fake clock


def _by_host(failing: set[str]) -> tuple[httpx.MockTransport, collections.Counter[str]]:
    seen: collections.Counter[str] = collections.Counter()

    def handler(request: httpx.Request) -> httpx.Response:
        seen[request.url.host] += 1
        return httpx.Response(503 if request.url.host in failing else 200)

    return httpx.MockTransport(handler), seen


def test_an_endpoint_with_consecutive_failures_is_ejected_and_returns(clock: FakeClock) -> None:
    transport, seen = _by_host({"a"})
    ejection = meshlib.Ejection(consecutive=3, base=30.0, cap=300.0)
    # Round robin: p2c would weigh real latencies in, which load and a cold first call
    # change, and with them how often "a" is tried once it is back.
    endpoints = meshlib.Endpoints(
        ["a:80", "b:80", "c:80"], ejection=ejection, balance="round_robin"
    )
    mesh = _mesh(endpoints=endpoints, retry=None)
    with meshlib.wrap(httpx.Client(transport=transport), mesh) as client:
        while seen["a"] < 3:
            client.get("http://orders.internal/")
        (a,) = [e for e in mesh.endpoints()["http://orders.internal:80"] if e.address == "a:80"]
        assert a.ejected
        seen.clear()
        for _ in range(60):
            client.get("http://orders.internal/")
        assert seen["a"] == 0  # left out for 30 s
        clock.advance(30.0)
        for _ in range(60):
            client.get("http://orders.internal/")
        assert seen["a"] > 0  # back in; it fails 3 more times and is out for 60 s
        (a,) = [e for e in mesh.endpoints()["http://orders.internal:80"] if e.address == "a:80"]
        assert a.ejections == 2
        seen.clear()
        clock.advance(59.0)
        for _ in range(60):
            client.get("http://orders.internal/")
        assert seen["a"] == 0


def test_ejection_never_takes_out_more_than_its_share(clock: FakeClock) -> None:
    transport, seen = _by_host({"a", "b"})
    ejection = meshlib.Ejection(consecutive=2, max_share=0.5)
    mesh = _mesh(endpoints=meshlib.Endpoints(["a:80", "b:80"], ejection=ejection), retry=None)
    with meshlib.wrap(httpx.Client(transport=transport), mesh) as client:
        for _ in range(40):
            client.get("http://orders.internal/")
    out = [e for e in mesh.endpoints()["http://orders.internal:80"] if e.ejected]
    assert len(out) == 1  # half of two, at least one: never both
    assert seen["a"] > 0
    assert seen["b"] > 0


def test_all_endpoints_out_means_all_are_used(clock: FakeClock) -> None:
    transport, seen = _by_host({"a"})
    mesh = _mesh(
        endpoints=meshlib.Endpoints(["a:80"], ejection=meshlib.Ejection(consecutive=1)),
        retry=None,
    )
    with meshlib.wrap(httpx.Client(transport=transport), mesh) as client:
        for _ in range(5):
            assert client.get("http://orders.internal/").status_code == 503
    assert seen["a"] == 5


# Routes


def _host_counter() -> tuple[httpx.MockTransport, collections.Counter[str]]:
    seen: collections.Counter[str] = collections.Counter()

    def handler(request: httpx.Request) -> httpx.Response:
        seen[request.headers["host"]] += 1
        return httpx.Response(200)

    return httpx.MockTransport(handler), seen


def test_a_95_5_split_over_10k_requests_lands_within_one_percent() -> None:
    transport, seen = _host_counter()
    mesh = meshlib.Mesh(
        destinations={
            "orders.internal": NO_BREAKER.replace(
                routes=(meshlib.Route(to="orders-v2.internal", weight=0.05),)
            )
        }
    )
    with meshlib.wrap(httpx.Client(transport=transport), mesh) as client:
        for _ in range(10_000):
            client.get("http://orders.internal/")
    assert abs(seen["orders-v2.internal"] / 10_000 - 0.05) <= 0.01
    assert seen["orders.internal"] + seen["orders-v2.internal"] == 10_000


def test_header_routes_and_their_order() -> None:
    transport, seen = _host_counter()
    routes = (
        meshlib.Route(to="orders-canary.internal", headers={"x-canary": "1"}),
        meshlib.Route(to="orders-v2.internal", weight=1.0),
    )
    mesh = meshlib.Mesh(destinations={"orders.internal": NO_BREAKER.replace(routes=routes)})
    with meshlib.wrap(httpx.Client(transport=transport), mesh) as client:
        canary = client.get("http://orders.internal/x", headers={"x-canary": "1"})
        other = client.get("http://orders.internal/x", headers={"x-canary": "0"})
    assert str(canary.url) == "http://orders-canary.internal/x"
    assert str(other.url) == "http://orders-v2.internal/x"
    assert seen == {"orders-canary.internal": 1, "orders-v2.internal": 1}


def test_sticky_keeps_a_caller_on_one_side() -> None:
    transport, _ = _host_counter()
    route = meshlib.Route(to="orders-v2.internal", weight=0.3, sticky="x-user-id")
    mesh = meshlib.Mesh(destinations={"orders.internal": NO_BREAKER.replace(routes=(route,))})
    sides: dict[str, set[str]] = collections.defaultdict(set)
    with meshlib.wrap(httpx.Client(transport=transport), mesh) as client:
        for user in range(400):
            for _ in range(3):
                response = client.get(
                    "http://orders.internal/", headers={"x-user-id": f"user-{user}"}
                )
                sides[f"user-{user}"].add(response.url.host)
    assert all(len(hosts) == 1 for hosts in sides.values())
    share = sum("orders-v2.internal" in h for h in sides.values()) / len(sides)
    assert 0.22 <= share <= 0.38


def test_a_routed_request_takes_the_targets_policy_and_not_its_routes() -> None:
    calls: collections.Counter[str] = collections.Counter()

    def handler(request: httpx.Request) -> httpx.Response:
        calls[request.url.host] += 1
        return httpx.Response(503)

    mesh = meshlib.Mesh(
        destinations={
            "orders.internal": NO_BREAKER.replace(
                routes=(meshlib.Route(to="orders-v2.internal:8080"),)
            ),
            "orders-v2.internal": meshlib.Policy(
                retry=None,
                breaker=None,
                routes=(meshlib.Route(to="elsewhere.internal"),),
            ),
        }
    )
    with (
        meshlib.testing.set_testing(True),
        meshlib.wrap(httpx.Client(transport=httpx.MockTransport(handler)), mesh) as client,
    ):
        response = client.get("http://orders.internal/")
    assert str(response.url) == "http://orders-v2.internal:8080/"
    assert calls == {"orders-v2.internal": 1}  # no retries: the target's policy


def test_endpoints_and_routes_belong_to_a_destination() -> None:
    with pytest.raises(meshlib.ConfigError, match=r"Mesh\.default\.endpoints"):
        meshlib.Mesh(default=meshlib.Policy(endpoints=meshlib.Endpoints(["a:1"])))
    with pytest.raises(meshlib.ConfigError, match=r"policy\.routes"):
        meshlib.wrap(httpx.Client(), meshlib.Policy(routes=(meshlib.Route(to="b"),)))


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: meshlib.Endpoints([]), "Endpoints.addresses"),
        (lambda: meshlib.Endpoints(["a:1", "a:1"]), "duplicate"),
        (lambda: meshlib.Endpoints(["a:99999"]), "port"),
        (lambda: meshlib.Endpoints(["nope"]), r"Endpoints\.addresses: .*with a port.*'nope'"),
        (lambda: meshlib.Endpoints(["a:1", "b"]), r"Endpoints\.addresses: .*with a port.*'b'"),
        (lambda: meshlib.Endpoints(["[::1]"]), r"Endpoints\.addresses: .*with a port"),
        (lambda: meshlib.Endpoints(["a:0"]), r"Endpoints\.addresses: .*port between 1 and 65535"),
        (lambda: meshlib.Endpoints(["a:http"]), r"Endpoints\.addresses: .*port between 1 and"),
        (lambda: meshlib.Endpoints(["a:\u0663"]), r"Endpoints\.addresses: .*port between 1 and"),
        (lambda: meshlib.Endpoints(["bad host!:80"]), r"Endpoints\.addresses: .*a host name"),
        (lambda: meshlib.Endpoints(["http://a:80"]), r"Endpoints\.addresses: "),
        (lambda: meshlib.Endpoints(["[nope]:80"]), r"Endpoints\.addresses: .*IPv6 address"),
        (lambda: meshlib.Route(to="bad host!"), r"Route\.to: .*a host name"),
        (lambda: meshlib.Endpoints(["a:1"], balance="random"), "Endpoints.balance"),  # type: ignore[arg-type]
        (lambda: meshlib.Route(to=""), "Route.to"),
        (lambda: meshlib.Route(to="b", weight=1.5), "Route.weight"),
        (
            lambda: meshlib.Policy(
                routes=(meshlib.Route(to="b", weight=0.6), meshlib.Route(to="c", weight=0.6))
            ),
            "Policy.routes",
        ),
        (lambda: meshlib.Faults(abort=2), "Faults.abort"),
        (lambda: meshlib.Faults(status=700), "Faults.status"),
        (lambda: meshlib.Hedge(delay=-1), "Hedge.delay"),
        (lambda: meshlib.Hedge(max_extra=0), "Hedge.max_extra"),
        (lambda: meshlib.Ejection(base=10, cap=5), "Ejection.cap"),
    ],
)
def test_traffic_values_are_validated(build: object, message: str) -> None:
    with pytest.raises(meshlib.ConfigError, match=message):
        build()  # type: ignore[operator]


# Fault injection


def test_aborts_take_their_share_and_are_never_sent_retried_or_counted(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    sent = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal sent
        sent += 1
        return httpx.Response(200)

    mesh = meshlib.Mesh(
        destinations={
            "flaky-test.internal": meshlib.Policy(
                faults=meshlib.Faults(abort=0.1, status=503),
                breaker=meshlib.Breaker(consecutive=1),
            )
        }
    )
    with (
        caplog.at_level(logging.WARNING, logger="meshlib"),
        meshlib.wrap(httpx.Client(transport=httpx.MockTransport(handler)), mesh) as client,
    ):
        statuses = [client.get("http://flaky-test.internal/").status_code for _ in range(3000)]
    aborted = statuses.count(503)
    assert abs(aborted / 3000 - 0.1) < 0.02
    assert sent == 3000 - aborted  # aborted calls were not sent, nor retried
    assert mesh.breakers()[0].state == "closed"  # nor counted by the breaker
    warnings = [r for r in caplog.records if getattr(r, "meshlib_event", "") == "faults_active"]
    assert len(warnings) == 1


def test_an_injected_delay_uses_up_the_deadline(clock: FakeClock) -> None:
    mesh = _mesh(faults=meshlib.Faults(delay=2.0, delayed=1.0))
    transport = httpx.MockTransport(lambda r: httpx.Response(200))
    with meshlib.wrap(httpx.Client(transport=transport), mesh) as client:
        assert client.get("http://orders.internal/").status_code == 200
        assert clock.sleeps == [2.0]
        with meshlib.deadline(1.0), pytest.raises(meshlib.DeadlineExceeded):
            client.get("http://orders.internal/")
    assert clock.sleeps == [2.0, 1.0]  # held back what was left, then out of time


# Hedging


def _hedged_policy(delay: float = 0.05) -> meshlib.Policy:
    return NO_BREAKER.replace(hedge=meshlib.Hedge(delay=delay), retry=meshlib.Retry(budget=None))


# The slow tail on real sockets. Every tenth call's first request meets a slow answer; the
# rest, and any copy, a fast one. The hedge delay and the slow answer are far enough apart
# that a loaded 2-core machine cannot blur them: a fast answer arrives well inside the
# hedge delay, and a copy sent after it well before the slow answer.
HEDGE_DELAY = 0.25
SLOW = Respond(200, b"slow", delay=3.0)  # inside httpx's own 5 s timeouts
FAST = Respond(200, b"fast")


@pytest.mark.network
def test_hedging_cuts_the_slow_tail_sync(server: FaultServer) -> None:
    server.default = FAST
    plain = meshlib.Mesh(destinations={"127.0.0.1": NO_BREAKER})
    with meshlib.wrap(httpx.Client(base_url=server.url), plain) as client:
        server.enqueue(SLOW)
        started = time.perf_counter()
        assert client.get("/search").content == b"slow"  # without a hedge, the tail waits
        assert time.perf_counter() - started >= 3.0
    mesh = meshlib.Mesh(destinations={"127.0.0.1": _hedged_policy(HEDGE_DELAY)})
    durations = []
    with meshlib.wrap(httpx.Client(base_url=server.url), mesh) as client:
        for n in range(30):
            if n % 10 == 0:
                server.enqueue(SLOW)
            started = time.perf_counter()
            assert client.get("/search").content == b"fast"
            durations.append(time.perf_counter() - started)
    assert server.pending == 0  # each slow answer went to a request
    assert max(durations) < 1.5  # the copy answered, not the slow original (3 s)


@pytest.mark.network
@pytest.mark.anyio
async def test_hedging_cuts_the_slow_tail_async(server: FaultServer) -> None:
    server.default = FAST
    mesh = meshlib.Mesh(destinations={"127.0.0.1": _hedged_policy(HEDGE_DELAY)})
    durations = []
    async with meshlib.wrap(httpx.AsyncClient(base_url=server.url), mesh) as client:
        for n in range(30):
            if n % 10 == 0:
                server.enqueue(SLOW)
            started = time.perf_counter()
            assert (await client.get("/search")).content == b"fast"
            durations.append(time.perf_counter() - started)
    assert server.pending == 0
    assert max(durations) < 1.5  # the copy answered, not the slow original (3 s)
    # Only the slow calls waited for a copy: an answer that comes is taken at once.
    assert statistics.median(durations) < HEDGE_DELAY


def test_only_idempotent_replayable_requests_are_hedged() -> None:
    sent: list[str] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        sent.append(request.method)
        await asyncio.sleep(0.1)
        return httpx.Response(200)

    async def go() -> None:
        transport = httpx.MockTransport(handler)
        mesh = meshlib.Mesh(destinations={"orders.internal": _hedged_policy(0.01)})
        async with meshlib.wrap(httpx.AsyncClient(transport=transport), mesh) as client:
            await client.post("http://orders.internal/", content=b"x")
            await client.get("http://orders.internal/")

    asyncio.run(go())
    assert sent.count("POST") == 1  # not idempotent: never copied
    assert sent.count("GET") == 2  # the original and one copy


def test_hedged_copies_draw_from_the_retry_budget() -> None:
    sent = 0

    async def handler(request: httpx.Request) -> httpx.Response:
        nonlocal sent
        sent += 1
        await asyncio.sleep(0.05)
        return httpx.Response(200)

    stingy = NO_BREAKER.replace(
        hedge=meshlib.Hedge(delay=0.005),
        retry=meshlib.Retry(budget=meshlib.Budget(ratio=0.0, min_per_second=0.1, ttl=10)),
    )

    async def go() -> None:
        transport = httpx.MockTransport(handler)
        mesh = meshlib.Mesh(destinations={"orders.internal": stingy})
        async with meshlib.wrap(httpx.AsyncClient(transport=transport), mesh) as client:
            for _ in range(5):
                await client.get("http://orders.internal/")

    asyncio.run(go())
    assert sent == 5 + 1  # one copy, the budget's whole reserve


def test_hedge_p95_waits_for_enough_measurements() -> None:
    from meshlib._traffic import LatencyWindow

    window = LatencyWindow()
    for value in range(19):
        window.add(value / 1000)
    assert window.p95() is None
    for value in range(19, 100):
        window.add(value / 1000)
    assert window.p95() == pytest.approx(0.095)
    rng = random.Random(3)
    for _ in range(500):
        window.add(rng.random())
    assert 0.85 < (window.p95() or 0) <= 1.0  # only the last 200 count


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_hedged_copy_goes_to_another_endpoint(mode: str) -> None:
    # p2c over two unmeasured endpoints: without avoiding the first attempt's
    # endpoint, a copy would land on the slow one about half the time.
    calls: list[list[str]] = []
    policy = _hedged_policy(0.02).replace(
        endpoints=meshlib.Endpoints(["a:80", "b:80"], ejection=None)
    )

    # "a" answers only once the test is over (or after a minute), so that "b" answers
    # first however the threads and tasks are scheduled.
    over = threading.Event()

    def sync_handler(request: httpx.Request) -> httpx.Response:
        calls[-1].append(request.url.host)
        if request.url.host == "a":
            over.wait(60)
        return httpx.Response(200, text=request.url.host)

    async def async_handler(request: httpx.Request) -> httpx.Response:
        calls[-1].append(request.url.host)
        if request.url.host == "a":
            await asyncio.sleep(60)  # cancelled when "b" wins
        return httpx.Response(200, text=request.url.host)

    try:
        for _ in range(12):
            calls.append([])
            # A fresh Mesh each call: both endpoints unmeasured, the first pick a coin toss.
            mesh = meshlib.Mesh(destinations={"search.internal": policy})
            if mode == "sync":
                transport = httpx.MockTransport(sync_handler)
                with meshlib.wrap(httpx.Client(transport=transport), mesh) as client:
                    response = client.get("http://search.internal/q")
            else:

                async def go(mesh: meshlib.Mesh = mesh) -> httpx.Response:
                    transport = httpx.MockTransport(async_handler)
                    async with meshlib.wrap(httpx.AsyncClient(transport=transport), mesh) as c:
                        return await c.get("http://search.internal/q")

                response = asyncio.run(go())
            assert response.text == "b"
            assert str(response.url) == "http://search.internal/q"
    finally:
        over.set()
    hedged = [hosts for hosts in calls if hosts[0] == "a"]
    assert hedged  # the seeded draws put the first attempt on the slow endpoint sometimes
    assert all(hosts[:2] == ["a", "b"] for hosts in hedged)


def test_new_addresses_keep_an_ejection_but_new_ejection_rules_start_afresh() -> None:
    # As Envoy: an EDS change keeps the outlier detector's state for the hosts still
    # listed; a change of the cluster's own settings rebuilds it.
    from meshlib._traffic import EndpointPool

    rules = meshlib.Ejection(consecutive=1, base=30.0, max_share=1.0)
    pool = EndpointPool(meshlib.Endpoints(["a:80", "b:80"], ejection=rules), "orders")
    broken = pool.pick(0.0)
    pool.done(broken, True, 0.001, 0.0)

    def ejected() -> list[str]:
        return [e.address for e in pool.snapshot(1.0) if e.ejected]

    assert ejected() == [broken.address]
    pool.update(meshlib.Endpoints(["a:80", "b:80", "c:80"], ejection=rules))
    assert ejected() == [broken.address]  # the addresses changed: still out
    pool.update(
        meshlib.Endpoints(["a:80", "b:80", "c:80"], ejection=dataclasses.replace(rules, base=10.0))
    )
    assert ejected() == []  # the rules changed: every endpoint starts afresh


# Endpoint weights


def _picks(pool: object, count: int, now: float = 0.0) -> collections.Counter[str]:
    """Pick `count` times, each attempt ending at once with the same latency."""
    from meshlib._traffic import EndpointPool

    assert isinstance(pool, EndpointPool)
    seen: collections.Counter[str] = collections.Counter()
    for _ in range(count):
        chosen = pool.pick(now)
        seen[chosen.host] += 1
        pool.done(chosen, False, 0.001, now)
    return seen


def test_weighted_round_robin_is_smooth_and_exact() -> None:
    from meshlib._traffic import EndpointPool

    weighted = meshlib.Endpoints({"a:80": 3, "b:80": 1, "c:80": 1}, balance="round_robin")
    pool = EndpointPool(weighted, "orders")
    # nginx's smooth weighted round robin: a's three turns are spread, not in a row.
    assert [pool.pick(0.0).host for _ in range(10)] == ["a", "b", "a", "c", "a"] * 2
    assert _picks(pool, 500) == {"a": 300, "b": 100, "c": 100}


def test_weighted_p2c_shares_follow_the_weights() -> None:
    from meshlib._traffic import EndpointPool

    # Two endpoints: unweighted p2c always compares the same pair and splits evenly.
    two = EndpointPool(meshlib.Endpoints({"a:80": 1, "b:80": 3}), "orders")
    # binomial(4000, 0.25): mean 1000, sd 27; 4.5 sd either side.
    assert 878 <= _picks(two, 4000)["a"] <= 1122
    three = EndpointPool(meshlib.Endpoints({"a:80": 1, "b:80": 2, "c:80": 5}), "orders")
    seen = _picks(three, 8000)
    # Shares 1/8, 2/8, 5/8 of 8000: 1000 (sd 30), 2000 (sd 39), 5000 (sd 43).
    assert 865 <= seen["a"] <= 1135
    assert 1825 <= seen["b"] <= 2175
    assert 4805 <= seen["c"] <= 5195


def test_weighted_p2c_weighs_requests_in_flight_per_unit_of_weight() -> None:
    from meshlib._traffic import EndpointPool

    # Requests that stay in flight: with load compared per unit of weight, b (weight 3)
    # carries three times a's, rather than being held to an equal count.
    pool = EndpointPool(meshlib.Endpoints({"a:80": 1, "b:80": 3}), "orders")
    held = collections.Counter(pool.pick(0.0).host for _ in range(400))
    assert 270 <= held["b"] <= 330
    assert sum(e.in_flight for e in pool.snapshot(0.0)) == 400


def test_weighted_p2c_still_steers_away_from_a_slow_endpoint() -> None:
    from meshlib._traffic import EndpointPool

    pool = EndpointPool(meshlib.Endpoints({"slow:80": 3, "fast:80": 1}), "orders")
    seen: collections.Counter[str] = collections.Counter()
    for n in range(1000):
        now = n * 0.002
        chosen = pool.pick(now)
        seen[chosen.host] += 1
        pool.done(chosen, False, 0.03 if chosen.host == "slow" else 0.001, now)
    # Its weight's share would be 750. It is drawn twice (and so taken whatever its
    # speed) 9 times in 16, about 560; when paired with the fast one, it mostly loses.
    assert seen["slow"] < 650


def test_equal_weights_are_the_unweighted_endpoints() -> None:
    equal = meshlib.Endpoints({"a:80": 2, "b:80": 2}, balance="round_robin")
    assert equal == meshlib.Endpoints(["a:80", "b:80"], balance="round_robin")
    assert equal.weights is None
    assert equal.weighted() == (("a:80", 1.0), ("b:80", 1.0))
    weighted = meshlib.Endpoints({"a:80": 1, "b:80": 3})
    assert weighted.addresses == ("a:80", "b:80")
    assert weighted.weights == (1.0, 3.0)
    # The stored form builds the same value (Policy.replace, the status page, a file).
    assert meshlib.Endpoints(["a:80", "b:80"], weights=(1, 3)) == weighted
    assert dataclasses.replace(weighted, balance="round_robin").weights == (1.0, 3.0)


def test_a_change_of_weights_keeps_each_endpoints_state() -> None:
    from meshlib._traffic import EndpointPool

    rules = meshlib.Ejection(consecutive=1, base=30.0, max_share=1.0)
    pool = EndpointPool(meshlib.Endpoints(["a:80", "b:80"], ejection=rules), "orders")
    held = pool.pick(0.0)  # stays in flight
    broken = pool.pick(0.0, avoid=held)
    pool.done(broken, True, 0.001, 0.0)
    pool.update(meshlib.Endpoints({"a:80": 1, "b:80": 9, "c:80": 1}, balance="p2c", ejection=rules))
    state = {e.address: e for e in pool.snapshot(1.0)}
    assert state[broken.address].ejected
    assert state[held.address].in_flight == 1
    # The new weights apply at once: the ejected one is left out, the others share by weight.
    seen = _picks(pool, 2000, now=1.0)
    assert broken.host not in seen
    rest = {"a": 1, "b": 9, "c": 1}
    rest.pop(broken.host)
    heavier = max(rest, key=rest.__getitem__)
    assert seen[heavier] > 0.75 * 2000


@pytest.mark.network
def test_weighted_endpoints_share_real_requests_by_weight(
    two_servers: tuple[FaultServer, FaultServer],
) -> None:
    first, second = two_servers
    weighted = meshlib.Endpoints(
        {f"127.0.0.1:{first.port}": 3, f"127.0.0.1:{second.port}": 1}, balance="round_robin"
    )
    mesh = _mesh(endpoints=weighted)
    with meshlib.wrap(httpx.Client(), mesh) as client:
        for _ in range(200):
            assert client.get("http://orders.internal/").status_code == 200
    assert (first.request_count, second.request_count) == (150, 50)


@pytest.mark.parametrize(
    ("build", "field"),
    [
        (lambda: meshlib.Endpoints({"a:1": 0}), "Endpoints.addresses"),
        (lambda: meshlib.Endpoints({"a:1": -1, "b:1": 1}), "Endpoints.addresses"),
        (lambda: meshlib.Endpoints({"a:1": "3"}), "Endpoints.addresses"),
        (lambda: meshlib.Endpoints({"a:1": True}), "Endpoints.addresses"),
        (lambda: meshlib.Endpoints({"a:1": math.inf}), "Endpoints.addresses"),
        (lambda: meshlib.Endpoints({}), "Endpoints.addresses"),
        (lambda: meshlib.Endpoints(["a:1", "b:1"], weights=(1,)), "Endpoints.weights"),
        (lambda: meshlib.Endpoints(["a:1"], weights="1"), "Endpoints.weights"),  # type: ignore[arg-type]
        (lambda: meshlib.Endpoints({"a:1": 1}, weights=(1,)), "Endpoints.weights"),
    ],
)
def test_bad_weights_name_the_field_and_value(build: object, field: str) -> None:
    with pytest.raises(meshlib.ConfigError) as caught:
        build()  # type: ignore[operator]
    assert caught.value.field == field
