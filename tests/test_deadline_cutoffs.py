"""A call's deadline cuts off hung and slow-dripping upstreams on real sockets."""

from __future__ import annotations

import time

import httpx
import pytest

import meshlib
from meshlib.testing import Drip, FakeClock, FaultServer, Hang, Respond

from .helpers import Script, send

pytestmark = pytest.mark.network

BUDGET = 0.4
# How late a cut may come. What meshlib does there is microseconds; the margin covers a
# loaded 2-core machine: the thread that notices the deadline waiting for a core, the GIL
# and a cold import or two. Every upstream below takes at least 4 s uncut, so a call that
# meshlib did not cut still fails by a wide margin. Only the call is timed, never the
# client's construction.
LATE = 1.0
ONE_SHOT = meshlib.Policy(retry=None, timeout=meshlib.Timeout(total=BUDGET))
RETRYING = meshlib.Policy(
    retry=meshlib.Retry(backoff=meshlib.Backoff(base=0.01, cap=0.01), budget=None),
    timeout=meshlib.Timeout(total=BUDGET),
)
# For the calls that must succeed after a cut: a real socket on a loaded machine may take
# longer than BUDGET to answer even a fast request.
UNHURRIED = {"meshlib.policy": meshlib.Policy(retry=None, timeout=meshlib.Timeout(total=30.0))}
SLOW_DRIP = Drip(b"x" * 200, interval=0.05)  # 10 s in all, each byte well inside any timeout


def _sync_get(server: FaultServer, policy: meshlib.Policy, **client: object) -> float:
    """Return how long the call itself took to raise DeadlineExceeded."""
    with meshlib.wrap(httpx.Client(base_url=server.url, **client), policy) as c:  # type: ignore[arg-type]
        started = time.monotonic()
        with pytest.raises(meshlib.DeadlineExceeded):
            c.get("/slow")
        return time.monotonic() - started


async def _async_get(server: FaultServer, policy: meshlib.Policy) -> float:
    """Return how long the call itself took to raise DeadlineExceeded."""
    async with meshlib.wrap(httpx.AsyncClient(base_url=server.url), policy) as c:
        started = time.monotonic()
        with pytest.raises(meshlib.DeadlineExceeded):
            await c.get("/slow")
        return time.monotonic() - started


@pytest.mark.parametrize("fault", [Hang(10.0), SLOW_DRIP, Drip(b"xy", interval=2.0)])
@pytest.mark.parametrize("policy", [ONE_SHOT, RETRYING], ids=["one-shot", "retrying"])
def test_sync_upstreams_are_cut_at_the_budget(
    server: FaultServer, fault: object, policy: meshlib.Policy
) -> None:
    server.default = fault  # type: ignore[assignment]
    elapsed = _sync_get(server, policy)
    assert BUDGET - 0.005 <= elapsed <= BUDGET + LATE


@pytest.mark.anyio
@pytest.mark.parametrize("fault", [Hang(10.0), SLOW_DRIP, Drip(b"xy", interval=2.0)])
@pytest.mark.parametrize("policy", [ONE_SHOT, RETRYING], ids=["one-shot", "retrying"])
async def test_async_upstreams_are_cut_at_the_budget(
    server: FaultServer, fault: object, policy: meshlib.Policy
) -> None:
    server.default = fault  # type: ignore[assignment]
    elapsed = await _async_get(server, policy)
    assert BUDGET - 0.005 <= elapsed <= BUDGET + LATE


def test_an_enclosing_deadline_cuts_a_slow_drip_sync(server: FaultServer) -> None:
    server.default = SLOW_DRIP
    with meshlib.wrap(httpx.Client(base_url=server.url)) as client:
        started = time.monotonic()
        with meshlib.deadline(BUDGET), pytest.raises(meshlib.DeadlineExceeded):
            client.get("/slow")
        assert time.monotonic() - started <= BUDGET + LATE


def test_a_streamed_body_read_inside_the_deadline_is_bounded(server: FaultServer) -> None:
    server.default = SLOW_DRIP
    received = bytearray()
    client = meshlib.wrap(httpx.Client(base_url=server.url), ONE_SHOT)

    def read_all() -> None:
        with client.stream("GET", "/download") as response:
            assert response.status_code == 200
            for chunk in response.iter_bytes():
                received.extend(chunk)

    with client:
        started = time.monotonic()
        with pytest.raises(meshlib.DeadlineExceeded):
            read_all()
        assert time.monotonic() - started <= BUDGET + LATE
    assert 0 < len(received) < 200  # some bytes came, the rest was cut off


@pytest.mark.anyio
async def test_a_streamed_body_read_inside_the_deadline_is_bounded_async(
    server: FaultServer,
) -> None:
    server.default = SLOW_DRIP
    client = meshlib.wrap(httpx.AsyncClient(base_url=server.url), ONE_SHOT)

    async def read_all() -> None:
        async with client.stream("GET", "/download") as response:
            async for _ in response.aiter_bytes():
                pass

    async with client:
        started = time.monotonic()
        with pytest.raises(meshlib.DeadlineExceeded):
            await read_all()
        assert time.monotonic() - started <= BUDGET + LATE


def test_a_cut_connection_is_not_returned_to_the_pool(server: FaultServer) -> None:
    server.enqueue(SLOW_DRIP)
    limits = httpx.Limits(max_connections=1)
    # A stranded connection is never given back: any pool timeout then ends in PoolTimeout.
    timeout = httpx.Timeout(5.0)
    with meshlib.wrap(
        httpx.Client(base_url=server.url, limits=limits, timeout=timeout), ONE_SHOT
    ) as c:
        with pytest.raises(meshlib.DeadlineExceeded):
            c.get("/slow")
        response = c.get("/next", extensions=UNHURRIED)  # PoolTimeout: a stranded connection
    assert response.status_code == 200
    assert server.connection_count == 2


@pytest.mark.anyio
async def test_a_cut_connection_is_not_returned_to_the_pool_async(server: FaultServer) -> None:
    server.enqueue(SLOW_DRIP)
    client = httpx.AsyncClient(
        base_url=server.url,
        limits=httpx.Limits(max_connections=1),
        timeout=httpx.Timeout(5.0),
    )
    async with meshlib.wrap(client, ONE_SHOT) as c:
        with pytest.raises(meshlib.DeadlineExceeded):
            await c.get("/slow")
        assert (await c.get("/next", extensions=UNHURRIED)).status_code == 200


def test_a_fast_body_keeps_its_connection_alive(server: FaultServer) -> None:
    server.default = Respond(200, body=b"y" * 50_000)
    with meshlib.wrap(httpx.Client(base_url=server.url)) as client:
        for _ in range(5):
            assert len(client.get("/big").content) == 50_000
    assert server.connection_count == 1


@pytest.mark.anyio
async def test_a_fast_body_keeps_its_connection_alive_async(server: FaultServer) -> None:
    server.default = Respond(200, body=b"y" * 50_000)
    async with meshlib.wrap(httpx.AsyncClient(base_url=server.url)) as client:
        for _ in range(5):
            assert len((await client.get("/big")).content) == 50_000
    assert server.connection_count == 1


def test_a_long_download_within_budget_completes(server: FaultServer) -> None:
    # A body that takes about 0.5 s to arrive, well inside a 5 s budget whatever the load:
    # the deadline bounds the whole call and ends nothing early.
    server.default = Drip(b"z" * 5, interval=0.1)
    within = meshlib.Policy(retry=None, timeout=meshlib.Timeout(total=5.0))
    with meshlib.wrap(httpx.Client(base_url=server.url), within) as client:
        assert client.get("/ok").content == b"zzzzz"


def test_the_remaining_budget_travels_in_whole_milliseconds(
    server: FaultServer, clock: FakeClock
) -> None:
    # The fake clock stands still: what travels is exactly what was left.
    with meshlib.wrap(httpx.Client(base_url=server.url)) as client:
        client.get("/a")
        with meshlib.deadline(2.0):
            clock.advance(0.25)
            client.get("/b")
    no_deadline, with_deadline = server.requests
    # STANDARD's own 30 s total applies to every call; the enclosing 2 s is earlier.
    assert no_deadline.headers["x-envoy-expected-rq-timeout-ms"] == "30000"
    assert with_deadline.headers["x-envoy-expected-rq-timeout-ms"] == "1750"


@pytest.mark.usefixtures("rng")
@pytest.mark.parametrize("mode", ["sync", "async"])
def test_each_attempt_sends_what_is_left(mode: str, clock: FakeClock) -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers["x-envoy-expected-rq-timeout-ms"])
        clock.advance(1.25)
        return httpx.Response(503 if len(seen) < 3 else 200)

    policy = meshlib.Policy(
        retry=meshlib.Retry(backoff=meshlib.Backoff(base=0, cap=0, jitter="none"), budget=None),
        timeout=meshlib.Timeout(total=5.0),
    )
    assert send(mode, handler, policy).status_code == 200
    assert seen == ["5000", "3750", "2500"]


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://orders.internal/", True),
        ("http://orders/", True),
        ("http://orders.default.svc.cluster.local/", True),
        ("http://printer.local/", True),
        ("http://10.1.2.3/", True),
        ("http://192.168.0.7:8080/", True),
        ("http://[::1]:9000/", True),
        ("https://api.example.com/", False),
        ("https://8.8.8.8/", False),
        ("https://internal.example.com/", False),
    ],
)
def test_only_destinations_inside_the_mesh_learn_the_deadline(url: str, expected: bool) -> None:
    script = Script()
    send("sync", script, url=url)
    assert ("x-envoy-expected-rq-timeout-ms" in script.requests[0].headers) is expected


def test_no_header_without_a_deadline_and_a_renamed_header() -> None:
    script = Script()
    send("sync", script, meshlib.Policy(timeout=None))
    assert "x-envoy-expected-rq-timeout-ms" not in script.requests[0].headers
    renamed = meshlib.Policy(timeout=meshlib.Timeout(total=3.0, header="X-Deadline-Ms"))
    send("sync", script, renamed)
    assert script.requests[1].headers["x-deadline-ms"] == "3000"
    assert "x-envoy-expected-rq-timeout-ms" not in script.requests[1].headers
    send("sync", script, meshlib.Policy(timeout=meshlib.Timeout(total=3.0, header=None)))
    assert "x-envoy-expected-rq-timeout-ms" not in script.requests[2].headers


def test_timeout_none_still_honours_an_enclosing_deadline(clock: FakeClock) -> None:
    script = Script()
    with meshlib.deadline(1.5):
        send("sync", script, meshlib.Policy(timeout=None))
    assert script.requests[0].headers["x-envoy-expected-rq-timeout-ms"] == "1500"
