"""Graceful fallback on transports: stale-if-error and the static answer, on a real server.

Each trigger (`Fallback.on`) is provoked for real against a FaultServer on 127.0.0.1, sync
and async, with a stale copy kept and with nothing kept (the static answer). Every trigger
test lets only that trigger answer, so the answer cannot come from another one.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

import meshlib
import meshlib._cli
from meshlib._fallback import FallbackPlan, StaleStore, SyncCapture
from meshlib.testing import Drip, FakeClock, FaultServer, Hang, Reset, Respond

TRIGGERS = ["error", "status", "circuit_open", "bulkhead_full", "deadline"]
NO_WAIT = meshlib.Backoff(base=0.0, cap=0.0, jitter="none")


@pytest.fixture(params=["sync", "async"])
def mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def get(
    mode: str, mesh: meshlib.Mesh, url: str, method: str = "GET", **kwargs: Any
) -> httpx.Response:
    """Send one request through a client wrapped with `mesh`; the body read."""
    if mode == "sync":
        with meshlib.wrap(httpx.Client(), mesh) as client:
            response = client.request(method, url, **kwargs)
            response.read()
            return response

    async def go() -> httpx.Response:
        async with meshlib.wrap(httpx.AsyncClient(), mesh) as client:
            response = await client.request(method, url, **kwargs)
            await response.aread()
            return response

    return asyncio.run(go())


def policy_for(trigger: str, fallback: meshlib.Fallback) -> meshlib.Policy:
    """A policy whose failures of kind `trigger` are quick to provoke."""
    retry = meshlib.Retry(attempts=2, backoff=NO_WAIT, budget=None)
    policy = meshlib.Policy(retry=retry, fallback=fallback)
    if trigger == "circuit_open":
        breaker = meshlib.Breaker(consecutive=1, open_for=600)
        return policy.replace(retry=meshlib.Retry(attempts=1), breaker=breaker)
    if trigger == "bulkhead_full":
        return policy.replace(bulkhead=meshlib.Bulkhead(max_concurrent=1))
    if trigger == "deadline":
        # Long enough that the good call before it never runs into it on a loaded machine.
        return policy.replace(timeout=meshlib.Timeout(total=1.0))
    return policy


def provoke(trigger: str, mode: str, server: FaultServer, mesh: meshlib.Mesh) -> httpx.Response:
    """Make a GET to /recs fail with `trigger`, and return what the caller got."""
    url = server.url + "/recs"
    if trigger == "error":
        server.enqueue(Reset(), Reset())
    elif trigger == "status":
        server.enqueue(Respond(503), Respond(503))
    elif trigger == "circuit_open":
        server.enqueue(Respond(500))
        with meshlib.wrap(httpx.Client(), mesh) as client:
            client.get(url)  # the 500 opens the breaker
        assert mesh.breakers()[0].state == "open"
    elif trigger == "bulkhead_full":
        return _with_slot_taken(mode, server, mesh, url)
    elif trigger == "deadline":
        server.enqueue(Hang(5.0))
    return get(mode, mesh, url)


def _with_slot_taken(
    mode: str, server: FaultServer, mesh: meshlib.Mesh, url: str
) -> httpx.Response:
    """Call while another call holds the bulkhead's only slot."""
    server.enqueue(Hang(5.0))
    before = server.request_count

    def hold() -> None:
        with (
            meshlib.wrap(httpx.Client(), mesh) as client,
            contextlib.suppress(httpx.HTTPError),  # the server lets go when it stops
        ):
            client.get(server.url + "/slow", extensions={"timeout": {"read": 10.0}})

    holder = threading.Thread(target=hold)
    holder.start()
    waited = time.monotonic() + 10
    while server.request_count == before and time.monotonic() < waited:
        time.sleep(0.005)
    try:
        return get(mode, mesh, url)
    finally:
        server.stop()  # the held call ends
        holder.join(10)


def keep_one(mode: str, server: FaultServer, mesh: meshlib.Mesh) -> None:
    server.enqueue(Respond(200, b'["yesterday"]', headers={"Content-Type": "application/json"}))
    response = get(mode, mesh, server.url + "/recs")
    assert response.status_code == 200
    assert "x-meshlib-fallback" not in response.headers


@pytest.mark.parametrize("trigger", TRIGGERS)
def test_each_trigger_serves_the_stale_copy(mode: str, trigger: str, server: FaultServer) -> None:
    fallback = meshlib.Fallback(stale=600, on=[trigger])
    mesh = meshlib.Mesh(policy_for(trigger, fallback))
    keep_one(mode, server, mesh)
    response = provoke(trigger, mode, server, mesh)
    assert response.status_code == 200
    assert response.content == b'["yesterday"]'
    assert response.headers["x-meshlib-fallback"] == "stale"
    assert response.headers["content-type"] == "application/json"
    assert int(response.headers["age"]) >= 0


@pytest.mark.parametrize("trigger", TRIGGERS)
def test_each_trigger_serves_the_static_answer_when_nothing_is_kept(
    mode: str, trigger: str, server: FaultServer
) -> None:
    fallback = meshlib.Fallback(
        stale=600,
        status=200,
        headers={"content-type": "application/json"},
        content="[]",
        on=[trigger],
    )
    mesh = meshlib.Mesh(policy_for(trigger, fallback))
    response = provoke(trigger, mode, server, mesh)
    assert response.status_code == 200
    assert response.content == b"[]"
    assert response.headers["x-meshlib-fallback"] == "static"
    assert response.headers["content-type"] == "application/json"


ERRORS = {
    "error": httpx.TransportError,
    "circuit_open": meshlib.CircuitOpen,
    "bulkhead_full": meshlib.BulkheadFull,
    "deadline": meshlib.DeadlineExceeded,
}


@pytest.mark.parametrize("trigger", TRIGGERS)
def test_a_trigger_left_out_of_on_fails_as_without_a_fallback(
    mode: str, trigger: str, server: FaultServer
) -> None:
    others = [t for t in TRIGGERS if t != trigger]
    fallback = meshlib.Fallback(stale=600, status=200, on=others)
    mesh = meshlib.Mesh(policy_for(trigger, fallback))
    keep_one(mode, server, mesh)
    if trigger == "status":
        assert provoke(trigger, mode, server, mesh).status_code == 503
        return
    with pytest.raises(ERRORS[trigger]):
        provoke(trigger, mode, server, mesh)


def test_the_failed_response_is_drained_and_its_connection_reused(server: FaultServer) -> None:
    fallback = meshlib.Fallback(status=503, content="sorry", on=["status"])
    mesh = meshlib.Mesh(meshlib.Policy(retry=None, fallback=fallback))
    server.enqueue(Respond(500, b"x" * 1000), Respond(500, b"x" * 1000))
    with meshlib.wrap(httpx.Client(), mesh) as client:
        for _ in range(2):
            response = client.get(server.url + "/recs")
            assert response.headers["x-meshlib-fallback"] == "static"
            assert response.text == "sorry"
    assert server.connection_count == 1


def test_the_default_triggers_are_all_of_them() -> None:
    assert meshlib.Fallback(status=503).on == frozenset(TRIGGERS)


# -- what is kept, and for how long ---------------------------------------------------------


@pytest.fixture
def clock() -> Iterator[FakeClock]:
    fake = FakeClock()
    with meshlib.testing.use_clock(fake):
        yield fake


FAILED = "failed as without a fallback"


def fails(
    mode: str, server: FaultServer, mesh: meshlib.Mesh, path: str = "/recs", **kw: Any
) -> Any:
    """A call to `path` that the server resets: the fallback's answer, or FAILED."""
    server.enqueue(Reset(), Reset())
    try:
        return get(mode, mesh, server.url + path, **kw)
    except httpx.TransportError:
        return FAILED


def stale_mesh(**settings: Any) -> meshlib.Mesh:
    retry = meshlib.Retry(attempts=2, backoff=NO_WAIT, budget=None)
    return meshlib.Mesh(meshlib.Policy(retry=retry, fallback=meshlib.Fallback(**settings)))


def test_a_kept_response_is_never_served_past_stale(
    mode: str, server: FaultServer, clock: FakeClock
) -> None:
    mesh = stale_mesh(stale=60)
    keep_one(mode, server, mesh)
    clock.advance(60)
    at_the_limit = fails(mode, server, mesh)
    assert at_the_limit.headers["x-meshlib-fallback"] == "stale"
    assert at_the_limit.headers["age"] == "60"
    clock.advance(0.001)
    assert fails(mode, server, mesh) == FAILED


def test_past_stale_the_static_answer_is_given(
    mode: str, server: FaultServer, clock: FakeClock
) -> None:
    mesh = stale_mesh(stale=60, status=503, content="no recommendations")
    keep_one(mode, server, mesh)
    clock.advance(61)
    response = fails(mode, server, mesh)
    assert (response.status_code, response.text) == (503, "no recommendations")
    assert response.headers["x-meshlib-fallback"] == "static"


def test_age_counts_the_age_the_response_arrived_with(
    mode: str, server: FaultServer, clock: FakeClock
) -> None:
    mesh = stale_mesh(stale=60)
    server.enqueue(Respond(200, b"cached upstream", headers={"Age": "50"}))
    get(mode, mesh, server.url + "/recs")
    clock.advance(10)
    assert fails(mode, server, mesh).headers["age"] == "60"
    clock.advance(1)
    assert fails(mode, server, mesh) == FAILED


def test_the_newest_good_response_is_the_one_served(
    mode: str, server: FaultServer, clock: FakeClock
) -> None:
    mesh = stale_mesh(stale=60)
    server.enqueue(Respond(200, b"monday"), Respond(200, b"tuesday"))
    get(mode, mesh, server.url + "/recs")
    clock.advance(30)
    get(mode, mesh, server.url + "/recs")
    clock.advance(45)  # monday's is past stale; tuesday's is not
    response = fails(mode, server, mesh)
    assert (response.text, response.headers["age"]) == ("tuesday", "45")


def test_never_to_a_request_with_other_vary_headers(mode: str, server: FaultServer) -> None:
    mesh = stale_mesh(stale=60)
    server.enqueue(Respond(200, b"hallo", headers={"Vary": "Accept-Language, Accept"}))
    get(mode, mesh, server.url + "/recs", headers={"Accept-Language": "de", "Accept": "text/plain"})
    other = {"Accept-Language": "fr", "Accept": "text/plain"}
    assert fails(mode, server, mesh, headers=other) == FAILED
    missing = {"Accept": "text/plain"}
    assert fails(mode, server, mesh, headers=missing) == FAILED
    same = {"Accept-Language": "de", "Accept": "text/plain"}
    assert fails(mode, server, mesh, headers=same).text == "hallo"


def test_vary_star_is_never_kept(mode: str, server: FaultServer) -> None:
    mesh = stale_mesh(stale=60)
    server.enqueue(Respond(200, b"personal", headers={"Vary": "*"}))
    get(mode, mesh, server.url + "/recs")
    assert fails(mode, server, mesh) == FAILED


def test_never_for_a_post_without_an_idempotency_key(mode: str, server: FaultServer) -> None:
    mesh = stale_mesh(stale=60, status=200, content="static")
    server.enqueue(Respond(200, b"ordered"))
    get(mode, mesh, server.url + "/orders", method="POST", content=b"{}")
    server.enqueue(Respond(503))
    # Not idempotent: not retried, not kept, no static answer either: the 503 as it came.
    assert get(mode, mesh, server.url + "/orders", method="POST", content=b"{}").status_code == 503
    server.enqueue(Reset())
    with pytest.raises(httpx.TransportError):
        get(mode, mesh, server.url + "/orders", method="POST", content=b"{}")


def test_a_post_with_an_idempotency_key_gets_the_answer_to_the_same_key(
    mode: str, server: FaultServer
) -> None:
    mesh = stale_mesh(stale=60)
    key = {"Idempotency-Key": "order-42"}
    server.enqueue(Respond(200, b"order 42 placed"))
    get(mode, mesh, server.url + "/orders", method="POST", content=b"{}", headers=key)
    replay = fails(mode, server, mesh, "/orders", method="POST", content=b"{}", headers=key)
    assert replay.text == "order 42 placed"
    other_key = {"Idempotency-Key": "order-43"}
    assert (
        fails(mode, server, mesh, "/orders", method="POST", content=b"{}", headers=other_key)
        == FAILED
    )
    other_body = fails(mode, server, mesh, "/orders", method="POST", content=b"[]", headers=key)
    assert other_body == FAILED


@pytest.mark.parametrize(
    ("headers", "request_headers"),
    [
        ({"Cache-Control": "no-store"}, {}),
        ({"Cache-Control": "max-age=60, private"}, {}),
        ({}, {"Authorization": "Bearer alice"}),
    ],
)
def test_private_answers_are_not_kept_unless_asked(
    mode: str, server: FaultServer, headers: dict[str, str], request_headers: dict[str, str]
) -> None:
    for keep_private, kept in ((False, False), (True, True)):
        mesh = stale_mesh(stale=60, keep_private=keep_private)
        server.enqueue(Respond(200, b"alice's", headers=headers))
        get(mode, mesh, server.url + "/recs", headers=request_headers)
        answer = fails(mode, server, mesh, headers=request_headers)
        assert (answer != FAILED) is kept


def test_an_answer_a_shared_cache_may_keep_is_kept_for_an_authorized_request(
    mode: str, server: FaultServer
) -> None:
    mesh = stale_mesh(stale=60)
    server.enqueue(Respond(200, b"public", headers={"Cache-Control": "public, max-age=5"}))
    auth = {"Authorization": "Bearer alice"}
    get(mode, mesh, server.url + "/recs", headers=auth)
    assert fails(mode, server, mesh, headers=auth).text == "public"


def test_no_store_forgets_the_copy_kept_before(mode: str, server: FaultServer) -> None:
    mesh = stale_mesh(stale=60)
    keep_one(mode, server, mesh)
    server.enqueue(Respond(200, b"now secret", headers={"Cache-Control": "no-store"}))
    get(mode, mesh, server.url + "/recs")
    assert fails(mode, server, mesh) == FAILED


@pytest.mark.parametrize("status", [201, 202, 206, 301, 404])
def test_only_whole_good_answers_are_kept(mode: str, server: FaultServer, status: int) -> None:
    mesh = stale_mesh(stale=60)
    server.enqueue(Respond(status, b"not the resource"))
    with meshlib.wrap(httpx.Client(follow_redirects=False), mesh) as client:
        client.get(server.url + "/recs")
    assert fails(mode, server, mesh) == FAILED


def test_set_cookie_and_hop_by_hop_headers_are_not_replayed(mode: str, server: FaultServer) -> None:
    mesh = stale_mesh(stale=60)
    headers = {"Set-Cookie": "session=alice", "Keep-Alive": "timeout=5", "ETag": '"v1"'}
    server.enqueue(Respond(200, b"recs", headers=headers))
    get(mode, mesh, server.url + "/recs")
    served = fails(mode, server, mesh)
    assert served.headers["etag"] == '"v1"'
    assert "set-cookie" not in served.headers
    assert "keep-alive" not in served.headers
    assert served.headers["content-length"] == "4"


# -- bodies: captured as the caller reads them ----------------------------------------------


def chunked(body: bytes, size: int = 4096) -> bytes:
    """`body` in HTTP/1.1 chunked coding (FaultServer sends a body as it is given)."""
    parts = [
        b"%x\r\n%s\r\n" % (len(body[i : i + size]), body[i : i + size])
        for i in range(0, len(body), size)
    ]
    return b"".join(parts) + b"0\r\n\r\n"


def test_a_streamed_body_is_kept_once_read_to_its_end(server: FaultServer) -> None:
    mesh = stale_mesh(stale=60)
    body = b"".join(b"%05d," % n for n in range(20_000))  # 120 kB, chunked by the server
    server.enqueue(Respond(200, chunked(body), headers={"Transfer-Encoding": "chunked"}))
    with meshlib.wrap(httpx.Client(), mesh) as client:
        with client.stream("GET", server.url + "/recs") as response:
            read = b"".join(response.iter_raw(4096))
        assert read == body
        assert response.headers["transfer-encoding"] == "chunked"
        server.enqueue(Reset(), Reset())
        served = client.get(server.url + "/recs")
    assert served.content == body
    assert "transfer-encoding" not in served.headers
    assert served.headers["content-length"] == str(len(body))


def test_an_async_streamed_body_is_kept_once_read_to_its_end(server: FaultServer) -> None:
    mesh = stale_mesh(stale=60)
    body = b"y" * 100_000

    async def go() -> tuple[bytes, httpx.Response]:
        server.enqueue(Respond(200, body))
        async with meshlib.wrap(httpx.AsyncClient(), mesh) as client:
            async with client.stream("GET", server.url + "/recs") as response:
                read = b"".join([chunk async for chunk in response.aiter_raw(4096)])
            server.enqueue(Reset(), Reset())
            return read, await client.get(server.url + "/recs")

    read, served = asyncio.run(go())
    assert read == body
    assert served.content == body
    assert served.headers["x-meshlib-fallback"] == "stale"


def test_a_body_closed_before_its_end_is_not_kept(mode: str, server: FaultServer) -> None:
    mesh = stale_mesh(stale=60)
    server.enqueue(Respond(200, b"z" * 200_000))
    with (
        meshlib.wrap(httpx.Client(), mesh) as client,
        client.stream("GET", server.url + "/recs") as response,
    ):
        next(response.iter_raw(1024))
    assert fails(mode, server, mesh) == FAILED


def test_a_body_over_max_body_is_passed_through_and_not_kept(
    mode: str, server: FaultServer
) -> None:
    mesh = stale_mesh(stale=60, max_body=1000)
    for body, headers in (
        (b"b" * 1001, {}),
        (chunked(b"b" * 1001, 100), {"Transfer-Encoding": "chunked"}),
    ):
        server.enqueue(Respond(200, body, headers=headers))
        assert get(mode, mesh, server.url + "/recs").content == b"b" * 1001
        assert fails(mode, server, mesh) == FAILED
    server.enqueue(Respond(200, b"b" * 1000))
    get(mode, mesh, server.url + "/recs")
    assert fails(mode, server, mesh).content == b"b" * 1000


def test_with_fallback_off_the_response_stream_is_not_wrapped(server: FaultServer) -> None:
    request = httpx.Request("GET", server.url + "/recs")
    for mesh, captured in ((meshlib.Mesh(), False), (stale_mesh(stale=60), True)):
        with meshlib.Transport(httpx.HTTPTransport(), mesh) as transport:
            response = transport.handle_request(request)
            assert isinstance(response.stream, SyncCapture) is captured
            response.read()
            response.close()


# -- bounded memory ---------------------------------------------------------------------------


def test_memory_stays_bounded_over_100k_distinct_urls() -> None:
    settings = meshlib.Fallback(stale=60, max_entries=500, max_bytes=200_000)
    store = StaleStore(settings.max_entries, settings.max_bytes)
    plan = FallbackPlan(settings, store, meshlib.Retry())
    body = httpx.ByteStream(b"")
    peak_entries = peak_bytes = 0
    for n in range(100_000):
        request = httpx.Request("GET", f"http://recs.internal/products/{n}")
        response = httpx.Response(200, content=b"r" * (n % 700), request=request)
        plan.keep(request, body, response, now=float(n), asynchronous=False)
        peak_entries = max(peak_entries, len(store))
        peak_bytes = max(peak_bytes, store.bytes)
    assert len(store) <= 500
    assert peak_entries <= 500
    assert peak_bytes <= 200_000
    # The newest are the ones kept (least recently used out first).
    newest = httpx.Request("GET", "http://recs.internal/products/99999")
    found = plan.answer(newest, body, "error", now=100_000.0)
    assert found is not None
    assert found[0].content == b"r" * (99_999 % 700)
    oldest = httpx.Request("GET", "http://recs.internal/products/0")
    assert plan.answer(oldest, body, "error", now=100_000.0) is None


def test_through_a_client_the_store_stays_at_its_entry_bound() -> None:
    mesh = meshlib.Mesh(meshlib.Policy(fallback=meshlib.Fallback(stale=60, max_entries=100)))
    transport = httpx.MockTransport(lambda request: httpx.Response(200, content=b"ok"))
    with meshlib.wrap(httpx.Client(transport=transport), mesh) as client:
        for n in range(2000):
            client.get(f"http://recs.internal/products/{n}")
    (plan,) = mesh._cached_plans()
    assert plan.fallback is not None
    assert plan.fallback.store is not None
    assert len(plan.fallback.store) == 100


def test_a_body_larger_than_max_bytes_is_not_kept() -> None:
    store = StaleStore(10, 1000)
    plan = FallbackPlan(meshlib.Fallback(stale=60, max_bytes=1000), store, None)
    request = httpx.Request("GET", "http://recs.internal/big")
    plan.keep(request, httpx.ByteStream(b""), httpx.Response(200, content=b"x" * 2000), 0.0, False)
    assert (len(store), store.bytes) == (0, 0)


# -- per request, the policy file, telemetry --------------------------------------------------


def test_per_request_through_the_policy_extension(mode: str, server: FaultServer) -> None:
    mesh = meshlib.Mesh(meshlib.Policy(retry=None))
    with_fallback = meshlib.Policy(
        retry=None, fallback=meshlib.Fallback(status=503, content="later")
    )
    server.enqueue(Reset())
    extensions = {"meshlib.policy": with_fallback}
    answer = get(mode, mesh, server.url + "/recs", extensions=extensions)
    assert answer.text == "later"
    server.enqueue(Reset())
    with pytest.raises(httpx.TransportError):
        get(mode, mesh, server.url + "/recs")


def test_the_policy_file_takes_a_fallback_table(tmp_path: Any, server: FaultServer) -> None:
    path = tmp_path / "mesh.toml"
    path.write_text(
        "[default]\nretry = false\n"
        'fallback = { stale = "1m", status = 503, headers = { "content-type" = "text/plain" },'
        ' content = "try later", on = ["error", "deadline"] }\n'
    )
    mesh = meshlib.Mesh.from_file(path)
    assert mesh.default.fallback == meshlib.Fallback(
        stale=60,
        status=503,
        headers={"content-type": "text/plain"},
        content=b"try later",
        on=["error", "deadline"],
    )
    server.enqueue(Reset())
    assert get("sync", mesh, server.url + "/recs").text == "try later"


def test_a_bad_fallback_in_the_file_names_the_field(tmp_path: Any) -> None:
    path = tmp_path / "mesh.toml"
    path.write_text('[default]\nfallback = { stale = 60, on = ["errors"] }\n')
    with pytest.raises(meshlib.ConfigError) as caught:
        meshlib.Mesh.from_file(path)
    assert "default.fallback.on" in str(caught.value)
    assert "'errors'" in str(caught.value)


@pytest.mark.parametrize(
    ("settings", "field", "value"),
    [
        ({}, "Fallback.stale", "None"),
        ({"stale": -1}, "Fallback.stale", "-1"),
        ({"status": 99}, "Fallback.status", "99"),
        ({"status": 503, "on": ["bulkhead"]}, "Fallback.on", "'bulkhead'"),
        ({"status": 503, "on": []}, "Fallback.on", "[]"),
        ({"status": 503, "headers": {"bad header": "x"}}, "Fallback.headers", "'bad header'"),
        ({"status": 503, "headers": {"x": "a\r\nb"}}, "Fallback.headers", "'a\\r\\nb'"),
        ({"status": 503, "content": 5}, "Fallback.content", "5"),
        ({"status": 503, "max_entries": 0}, "Fallback.max_entries", "0"),
        ({"status": 503, "keep_private": "yes"}, "Fallback.keep_private", "'yes'"),
    ],
)
def test_bad_settings_are_a_config_error(settings: dict[str, Any], field: str, value: str) -> None:
    with pytest.raises(meshlib.ConfigError) as caught:
        meshlib.Fallback(**settings)
    assert field in str(caught.value)
    assert value in str(caught.value)


def test_off_in_standard() -> None:
    assert meshlib.STANDARD.fallback is None
    assert meshlib.Policy().fallback is None


def test_a_fallback_served_is_logged_with_its_reason(
    mode: str, server: FaultServer, caplog: pytest.LogCaptureFixture
) -> None:
    mesh = stale_mesh(stale=60)
    keep_one(mode, server, mesh)
    with caplog.at_level(logging.INFO, logger="meshlib"):
        fails(mode, server, mesh)
    (record,) = [r for r in caplog.records if getattr(r, "meshlib_event", "") == "fallback"]
    assert (record.meshlib_reason, record.meshlib_fallback) == ("error", "stale")  # type: ignore[attr-defined]


def test_a_compressed_body_is_served_as_it_came(mode: str, server: FaultServer) -> None:
    mesh = stale_mesh(stale=60)
    body = gzip.compress(b'["compressed"]' * 100)
    server.enqueue(Respond(200, body, headers={"Content-Encoding": "gzip"}))
    assert get(mode, mesh, server.url + "/recs").content == b'["compressed"]' * 100
    served = fails(mode, server, mesh)
    assert served.headers["content-encoding"] == "gzip"
    assert served.content == b'["compressed"]' * 100


def test_a_head_answer_keeps_its_length(mode: str, server: FaultServer) -> None:
    mesh = stale_mesh(stale=60)
    server.enqueue(Respond(200, b"", headers={"Content-Length": "1234"}))
    get(mode, mesh, server.url + "/recs", method="HEAD")
    served = fails(mode, server, mesh, method="HEAD")
    assert served.headers["x-meshlib-fallback"] == "stale"
    assert served.headers["content-length"] == "1234"
    assert served.content == b""


def test_explain_says_what_the_fallback_does(
    tmp_path: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "mesh.toml"
    path.write_text('[default]\nfallback = { stale = "1m", status = 503, content = "[]" }\n')
    assert meshlib._cli.main(["explain", str(path), "recs.internal"]) == 0
    (line,) = [line for line in capsys.readouterr().out.splitlines() if "fallback" in line]
    assert line.split("  (from")[0].strip() == (
        "fallback   stale copies up to 1m old (1000 responses, 8388608 bytes, bodies up to"
        " 262144 bytes); else 503 with 2 bytes; on bulkhead_full, circuit_open, deadline, error,"
        " status"
    )


def test_a_request_built_with_a_byte_stream_is_kept_too() -> None:
    answers: list[httpx.Response | Exception] = [
        httpx.Response(200, content=b"kept"),
        httpx.ConnectError("down"),
        httpx.ConnectError("down"),
    ]

    def handler(request: httpx.Request) -> httpx.Response:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    transport = meshlib.Transport(httpx.MockTransport(handler), stale_mesh(stale=60))
    url = "http://recs.internal/products/42"
    first = transport.handle_request(httpx.Request("PUT", url, stream=httpx.ByteStream(b"{}")))
    assert first.read() == b"kept"
    again = transport.handle_request(httpx.Request("PUT", url, stream=httpx.ByteStream(b"{}")))
    assert (again.read(), again.headers["x-meshlib-fallback"]) == (b"kept", "stale")


def test_a_fallback_answer_gives_the_bulkhead_slot_back(mode: str, server: FaultServer) -> None:
    fallback = meshlib.Fallback(status=503, content="later", on=frozenset({"error"}))
    policy = meshlib.Policy(
        retry=None, bulkhead=meshlib.Bulkhead(max_concurrent=1), fallback=fallback
    )
    mesh = meshlib.Mesh(policy)
    for _ in range(3):
        server.enqueue(Reset())
        assert get(mode, mesh, server.url + "/recs").text == "later"
    answer = get(mode, mesh, server.url + "/recs")  # not BulkheadFull: every slot came back
    assert (answer.status_code, answer.text) == (200, "ok")
    assert mesh.bulkheads()[0].in_flight == 0


def test_a_reload_with_the_same_fallback_keeps_the_copies(mode: str, server: FaultServer) -> None:
    mesh = stale_mesh(stale=60)
    keep_one(mode, server, mesh)
    mesh.update(mesh.default.replace(timeout=meshlib.Timeout(total=20.0)))
    assert fails(mode, server, mesh).headers["x-meshlib-fallback"] == "stale"


@pytest.mark.parametrize(
    ("retry", "status", "replaced"),
    [
        (None, 429, True),  # retries off: the default Retry's statuses
        (None, 404, False),
        (meshlib.Retry(attempts=1, on_status=frozenset({503})), 429, False),
        (meshlib.Retry(attempts=1, on_status=frozenset({418})), 418, True),
        (meshlib.Retry(attempts=1, on_status=frozenset({418})), 501, True),  # any 5xx
    ],
)
def test_the_status_trigger_is_a_5xx_or_what_the_retry_layer_retries(
    server: FaultServer, retry: meshlib.Retry | None, status: int, replaced: bool
) -> None:
    fallback = meshlib.Fallback(status=200, content="static", on=frozenset({"status"}))
    mesh = meshlib.Mesh(meshlib.Policy(retry=retry, fallback=fallback))
    server.enqueue(Respond(status))
    answer = get("sync", mesh, server.url + "/recs")
    assert (answer.text == "static") is replaced
    assert answer.status_code == (200 if replaced else status)


def test_a_streaming_caller_gets_each_chunk_as_it_comes(mode: str, server: FaultServer) -> None:
    mesh = stale_mesh(stale=60)
    body = b"0123456789"
    server.enqueue(Drip(body, interval=0.05))
    url = server.url + "/recs"
    if mode == "sync":
        with meshlib.wrap(httpx.Client(), mesh) as client, client.stream("GET", url) as response:
            chunks = iter(response.iter_raw())
            first = next(chunks)
            rest = b"".join(chunks)
    else:

        async def go() -> tuple[bytes, bytes]:
            async with (
                meshlib.wrap(httpx.AsyncClient(), mesh) as client,
                client.stream("GET", url) as response,
            ):
                chunks = response.aiter_raw()
                first = await chunks.__anext__()
                return first, b"".join([chunk async for chunk in chunks])

        first, rest = asyncio.run(go())
    assert len(first) < len(body)  # handed on before the body was all there: not buffered
    assert first + rest == body
    assert fails(mode, server, mesh).content == body  # and kept once read to its end
