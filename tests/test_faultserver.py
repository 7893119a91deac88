"""Tests for the fault-injecting HTTP server, against real sockets on 127.0.0.1."""

from __future__ import annotations

import random
import socket
import ssl
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import trustme

import meshlib.testing.faults
from meshlib.testing.faults import (
    Chaos,
    Close,
    Drip,
    FaultServer,
    Hang,
    RecordedRequest,
    Reset,
    Respond,
)

pytestmark = pytest.mark.network

# Client timeouts and waits for a condition: only a failing run waits this long, and a
# loaded 2-core machine can take a while to schedule the server's threads.
TIMEOUT = httpx.Timeout(10.0)
# How long stop() may take with behaviours in flight. It polls accept() every 50 ms and wakes
# every connection at once; the rest of the margin is for a loaded machine. The tests that
# use it make stop() wait up to a minute for a thread it failed to wake (`patient_stop`),
# and their behaviours run a minute or more: a stop that did not interrupt them is late.
PROMPT = 5.0


@pytest.fixture
def patient_stop(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(meshlib.testing.faults, "_STOP_JOIN_TIMEOUT", 60.0)


def wait_until(predicate: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.005)


def raw_connection(server: FaultServer) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10.0)
    return sock


def read_until_eof(sock: socket.socket) -> bytes:
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def read_response_head(sock: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(1)
        assert chunk, f"connection closed mid-head after {data!r}"
        data += chunk
    return data


@pytest.fixture
def server() -> Iterator[FaultServer]:
    with FaultServer() as srv:
        yield srv


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=TIMEOUT) as c:
        yield c


def test_default_is_200_ok(server: FaultServer, client: httpx.Client) -> None:
    response = client.get(server.url)
    assert response.status_code == 200
    assert response.content == b"ok"
    assert server.url == f"http://127.0.0.1:{server.port}"
    assert server.request_count == 1


def test_queue_is_consumed_fifo_then_default(server: FaultServer, client: httpx.Client) -> None:
    server.enqueue(Respond(503), Respond(201, b"created"))
    server.enqueue(Respond(404, b"nope"))
    assert server.pending == 3
    results = [client.get(f"{server.url}/{i}") for i in range(5)]
    assert [r.status_code for r in results] == [503, 201, 404, 200, 200]
    assert results[1].content == b"created"
    assert server.pending == 0
    assert [r.path for r in server.requests] == ["/0", "/1", "/2", "/3", "/4"]


def test_default_is_settable(server: FaultServer, client: httpx.Client) -> None:
    server.default = Respond(503, b"down")
    server.enqueue(Respond(200))
    assert [client.get(server.url).status_code for _ in range(3)] == [200, 503, 503]
    assert server.default == Respond(503, b"down")


def test_records_method_path_and_headers(server: FaultServer, client: httpx.Client) -> None:
    client.get(f"{server.url}/items?page=2&q=a%20b", headers={"X-Trace": "abc"})
    [request] = server.requests
    assert isinstance(request, RecordedRequest)
    assert request.method == "GET"
    assert request.path == "/items?page=2&q=a%20b"
    assert request.headers["x-trace"] == "abc"
    assert request.headers["host"] == f"127.0.0.1:{server.port}"
    assert request.body == b""
    assert request.connection_id == 1
    assert request.peer_cert is None


def test_records_post_body(server: FaultServer, client: httpx.Client) -> None:
    response = client.post(f"{server.url}/submit", content=b'{"a": 1}')
    assert response.status_code == 200
    [request] = server.requests
    assert request.method == "POST"
    assert request.body == b'{"a": 1}'
    assert request.headers["content-length"] == "8"


def test_records_chunked_upload_decoded(server: FaultServer, client: httpx.Client) -> None:
    def parts() -> Iterator[bytes]:
        yield b"hello "
        yield b"chunked "
        yield b"world"

    response = client.put(f"{server.url}/upload", content=parts())
    assert response.status_code == 200
    [request] = server.requests
    assert request.method == "PUT"
    assert request.headers["transfer-encoding"] == "chunked"
    assert request.body == b"hello chunked world"


def test_header_names_lowercased_last_value_wins(server: FaultServer) -> None:
    with raw_connection(server) as sock:
        sock.sendall(
            b"GET /dup HTTP/1.1\r\nHost: x\r\nX-Dup: 1\r\nx-dup: 2\r\nConnection: close\r\n\r\n"
        )
        assert read_until_eof(sock).startswith(b"HTTP/1.1 200 OK\r\n")
    assert server.requests[0].headers["x-dup"] == "2"


def test_keep_alive_reuses_one_connection(server: FaultServer, client: httpx.Client) -> None:
    assert client.get(server.url).status_code == 200
    assert client.get(server.url).status_code == 200
    assert server.connection_count == 1
    assert [r.connection_id for r in server.requests] == [1, 1]
    assert server.open_connections == 1


def test_connection_close_request_is_honoured(server: FaultServer, client: httpx.Client) -> None:
    for _ in range(2):
        response = client.get(server.url, headers={"Connection": "close"})
        assert response.headers["connection"] == "close"
    assert server.connection_count == 2
    assert [r.connection_id for r in server.requests] == [1, 2]
    wait_until(lambda: server.open_connections == 0)


def test_http10_closes_after_response(server: FaultServer) -> None:
    with raw_connection(server) as sock:
        sock.sendall(b"GET /old HTTP/1.0\r\n\r\n")
        data = read_until_eof(sock)
    assert data.startswith(b"HTTP/1.1 200 OK\r\n")
    assert data.endswith(b"\r\n\r\nok")


def test_pipelined_requests_on_one_connection(server: FaultServer) -> None:
    server.enqueue(Respond(201, b"one"), Respond(202, b"two"))
    with raw_connection(server) as sock:
        sock.sendall(b"GET /1 HTTP/1.1\r\nHost: x\r\n\r\nGET /2 HTTP/1.1\r\nHost: x\r\n\r\n")
        first = read_response_head(sock)
        assert first.startswith(b"HTTP/1.1 201 Created\r\n")
        assert sock.recv(3) == b"one"
        second = read_response_head(sock)
        assert second.startswith(b"HTTP/1.1 202 Accepted\r\n")
    assert [r.path for r in server.requests] == ["/1", "/2"]


def test_expect_100_continue(server: FaultServer) -> None:
    with raw_connection(server) as sock:
        sock.sendall(
            b"POST /big HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
            b"Expect: 100-continue\r\nConnection: close\r\n\r\n"
        )
        assert read_response_head(sock) == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(b"hello")
        assert read_until_eof(sock).startswith(b"HTTP/1.1 200 OK\r\n")
    assert server.requests[0].body == b"hello"


def test_head_gets_no_body(server: FaultServer, client: httpx.Client) -> None:
    server.enqueue(Respond(200, b"abcdef"))
    response = client.head(server.url)
    assert response.headers["content-length"] == "6"
    assert response.content == b""
    # The connection must still be usable: no stray body bytes were sent.
    assert client.get(server.url).content == b"ok"
    assert server.connection_count == 1


def test_respond_headers_reach_client(server: FaultServer, client: httpx.Client) -> None:
    server.enqueue(Respond(503, b"busy", headers={"Retry-After": "1", "X-Fault": "yes"}))
    response = client.get(server.url)
    assert response.status_code == 503
    assert response.headers["retry-after"] == "1"
    assert response.headers["x-fault"] == "yes"
    assert response.headers["content-length"] == "4"
    assert response.content == b"busy"


def test_respond_delay(server: FaultServer, client: httpx.Client) -> None:
    server.enqueue(Respond(200, b"late", delay=0.1))
    started = time.monotonic()
    response = client.get(server.url)
    assert time.monotonic() - started >= 0.1
    assert response.content == b"late"


def test_reset_aborts_connection(server: FaultServer, client: httpx.Client) -> None:
    server.enqueue(Reset())
    with pytest.raises((httpx.ReadError, httpx.RemoteProtocolError)):
        client.get(server.url)
    assert server.request_count == 1
    # The server keeps serving new connections afterwards.
    assert client.get(server.url).status_code == 200


def test_reset_sends_rst(server: FaultServer) -> None:
    server.enqueue(Reset())
    with raw_connection(server) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        with pytest.raises(ConnectionResetError):
            read_until_eof(sock)


def test_close_without_response(server: FaultServer, client: httpx.Client) -> None:
    server.enqueue(Close())
    with pytest.raises(httpx.RemoteProtocolError):
        client.get(server.url)
    assert server.request_count == 1
    assert client.get(server.url).status_code == 200


def test_close_sends_clean_eof(server: FaultServer) -> None:
    server.enqueue(Close())
    with raw_connection(server) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_until_eof(sock) == b""


@pytest.mark.usefixtures("patient_stop")
def test_hang_times_out_and_stop_is_prompt() -> None:
    with FaultServer() as server:
        server.enqueue(Hang(120))
        with (
            httpx.Client(timeout=httpx.Timeout(2.0, read=0.2)) as client,
            pytest.raises(httpx.ReadTimeout),
        ):
            client.get(server.url)
        started = time.monotonic()
        server.stop()
        assert time.monotonic() - started < PROMPT
    assert server.open_connections == 0


def test_hang_then_close(server: FaultServer) -> None:
    server.enqueue(Hang(0.1))
    with raw_connection(server) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        started = time.monotonic()
        assert read_until_eof(sock) == b""
        assert time.monotonic() - started >= 0.1


def test_drip_sends_full_body_slowly(server: FaultServer, client: httpx.Client) -> None:
    server.enqueue(Drip(b"abcd", 0.05))
    started = time.monotonic()
    response = client.get(server.url)
    elapsed = time.monotonic() - started
    assert response.status_code == 200
    assert response.text == "abcd"
    assert response.headers["content-length"] == "4"
    assert elapsed >= 0.15
    # The drip completed a valid response, so the connection is reused.
    assert client.get(server.url).status_code == 200
    assert server.connection_count == 1


def test_drip_stops_quietly_when_client_leaves(server: FaultServer, client: httpx.Client) -> None:
    server.enqueue(Drip(b"x" * 200, 0.01, status=206))
    with client.stream("GET", server.url) as response:
        assert response.status_code == 206
        first = next(response.iter_raw())
        assert set(first) == {ord("x")}
    # The server notices on a later write and ends the connection without a traceback.
    wait_until(lambda: server.open_connections == 0)


@pytest.mark.usefixtures("patient_stop")
def test_stop_interrupts_drip_and_delay() -> None:
    server = FaultServer()
    server.start()
    server.enqueue(Drip(b"x" * 100, 120.0))
    server.default = Respond(200, delay=120)
    with raw_connection(server) as dripping, raw_connection(server) as delayed:
        dripping.sendall(b"GET /drip HTTP/1.1\r\nHost: x\r\n\r\n")
        read_response_head(dripping)
        delayed.sendall(b"GET /delay HTTP/1.1\r\nHost: x\r\n\r\n")
        wait_until(lambda: server.request_count == 2)
        started = time.monotonic()
        server.stop()
        assert time.monotonic() - started < PROMPT
        assert read_until_eof(delayed) == b""
        assert read_until_eof(dripping) == b""
    assert server.open_connections == 0


@pytest.mark.usefixtures("patient_stop")
def test_stop_with_idle_keep_alive_connection(client: httpx.Client) -> None:
    server = FaultServer()
    server.start()
    client.get(server.url)
    assert server.open_connections == 1
    started = time.monotonic()
    server.stop()
    assert time.monotonic() - started < PROMPT
    assert server.open_connections == 0
    server.stop()  # idempotent


def test_start_stop_lifecycle() -> None:
    server = FaultServer()
    with pytest.raises(RuntimeError, match="not started"):
        _ = server.url
    server.stop()  # harmless before start
    server.start()
    try:
        with pytest.raises(RuntimeError, match="only be started once"):
            server.start()
        assert httpx.get(server.url, timeout=TIMEOUT).status_code == 200
    finally:
        server.stop()
    with pytest.raises(httpx.ConnectError):
        httpx.get(server.url, timeout=TIMEOUT)


def test_counters_and_reset_log(server: FaultServer) -> None:
    with httpx.Client(timeout=TIMEOUT) as client:
        client.get(server.url)
        client.get(server.url)
        assert server.open_connections == 1
    wait_until(lambda: server.open_connections == 0)
    assert (server.request_count, server.connection_count) == (2, 1)
    server.enqueue(Respond(418))
    server.reset_log()
    assert (server.request_count, server.connection_count) == (0, 0)
    assert server.requests == []
    assert server.pending == 1  # the queue is not part of the log
    with httpx.Client(timeout=TIMEOUT) as client:
        assert client.get(server.url).status_code == 418
    assert server.connection_count == 1
    assert server.requests[0].connection_id == 2  # ids stay unique for the server's life


def test_requests_is_a_snapshot(server: FaultServer, client: httpx.Client) -> None:
    client.get(server.url)
    snapshot = server.requests
    snapshot.clear()
    assert server.request_count == 1
    assert len(server.requests) == 1


def test_concurrent_requests_each_consume_one_behaviour(server: FaultServer) -> None:
    server.enqueue(*[Respond(503) for _ in range(10)])
    with (
        httpx.Client(timeout=TIMEOUT, limits=httpx.Limits(max_connections=20)) as client,
        ThreadPoolExecutor(max_workers=20) as pool,
    ):
        statuses = list(pool.map(lambda _: client.get(server.url).status_code, range(20)))
    assert sorted(statuses) == [200] * 10 + [503] * 10
    assert server.request_count == 20


def test_client_disconnects_mid_request(server: FaultServer, client: httpx.Client) -> None:
    partials = [
        b"GET / HT",
        b"GET / HTTP/1.1\r\nHost: x\r\n",
        b"POST / HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc",
        b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab",
    ]
    for partial in partials:
        with raw_connection(server) as sock:
            sock.sendall(partial)
    wait_until(lambda: server.open_connections == 0)
    assert server.request_count == 0
    assert client.get(server.url).status_code == 200


def test_malformed_request_gets_400_and_is_not_recorded(server: FaultServer) -> None:
    with raw_connection(server) as sock:
        sock.sendall(b"NOT A REQUEST\r\n\r\n")
        assert read_until_eof(sock).startswith(b"HTTP/1.1 400 Bad Request\r\n")
    with raw_connection(server) as sock:
        sock.sendall(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n-1\r\n\r\n")
        assert read_until_eof(sock).startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert server.request_count == 0


def test_behaviours_validate_arguments(server: FaultServer) -> None:
    with pytest.raises(ValueError, match="status"):
        Respond(42)
    with pytest.raises(ValueError, match="delay"):
        Respond(delay=-1)
    with pytest.raises(ValueError, match="seconds"):
        Hang(float("nan"))
    with pytest.raises(ValueError, match="interval"):
        Drip(interval=float("inf"))
    with pytest.raises(ValueError, match="line break"):
        Respond(headers={"X-Bad": "a\r\nb"})
    with pytest.raises(ValueError, match="header name"):
        Respond(headers={"Bad Name": "x"})
    with pytest.raises(TypeError, match="not a behaviour"):
        server.enqueue("503")  # type: ignore[arg-type]


def test_respond_copies_headers() -> None:
    headers = {"X-A": "1"}
    behaviour = Respond(headers=headers)
    headers["X-A"] = "2"
    assert behaviour.headers == {"X-A": "1"}


# --- TLS ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def tls_contexts(
    ca: trustme.CA, *, client_cert: bool = False
) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("127.0.0.1").configure_cert(server_ctx)
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    if client_cert:
        server_ctx.verify_mode = ssl.CERT_REQUIRED
        ca.configure_trust(server_ctx)
        ca.issue_cert("client@example.org").configure_cert(client_ctx)
    return server_ctx, client_ctx


def test_tls(ca: trustme.CA) -> None:
    server_ctx, client_ctx = tls_contexts(ca)
    with FaultServer(ssl_context=server_ctx) as server:
        assert server.url.startswith("https://127.0.0.1:")
        with httpx.Client(verify=client_ctx, timeout=TIMEOUT) as client:
            response = client.get(f"{server.url}/secure")
            assert response.status_code == 200
            assert response.content == b"ok"
            assert client.get(server.url).status_code == 200
        assert server.connection_count == 1
        assert server.requests[0].path == "/secure"
        assert server.requests[0].peer_cert is None


def test_tls_records_client_certificate(ca: trustme.CA) -> None:
    server_ctx, client_ctx = tls_contexts(ca, client_cert=True)
    with (
        FaultServer(ssl_context=server_ctx) as server,
        httpx.Client(verify=client_ctx, timeout=TIMEOUT) as client,
    ):
        assert client.get(server.url).status_code == 200
        cert = server.requests[0].peer_cert
        assert cert is not None
        assert ("email", "client@example.org") in cert["subjectAltName"]


def test_tls_failed_handshake_is_not_recorded(ca: trustme.CA) -> None:
    server_ctx, client_ctx = tls_contexts(ca)
    with FaultServer(ssl_context=server_ctx) as server:
        plain_url = server.url.replace("https://", "http://")
        with httpx.Client(timeout=TIMEOUT) as plain, pytest.raises(httpx.TransportError):
            plain.get(plain_url)
        with httpx.Client(verify=client_ctx, timeout=TIMEOUT) as client:
            assert client.get(server.url).status_code == 200
        assert server.request_count == 1
        assert server.connection_count == 2


@pytest.mark.usefixtures("patient_stop")
def test_tls_reset_and_stop_during_handshake(ca: trustme.CA) -> None:
    server_ctx, client_ctx = tls_contexts(ca)
    server = FaultServer(ssl_context=server_ctx)
    server.start()
    server.enqueue(Reset())
    with httpx.Client(verify=client_ctx, timeout=TIMEOUT) as client:
        with pytest.raises((httpx.ReadError, httpx.RemoteProtocolError)):
            client.get(server.url)
        assert client.get(server.url).status_code == 200
    # A client that connects but never starts the handshake must not delay stop().
    with raw_connection(server):
        wait_until(lambda: server.connection_count == 3)
        started = time.monotonic()
        server.stop()
        assert time.monotonic() - started < PROMPT


def test_chaos_draws_behaviours_with_the_given_weights(server: FaultServer) -> None:
    weights = {503: 0.2, 500: 0.1, 201: 0.3}  # the remaining 0.4 answers 200
    chaos = Chaos([(w, Respond(status)) for status, w in weights.items()], random.Random(42))
    server.default = chaos
    server.enqueue(Chaos([(1.0, Respond(418))]))  # queued like any other behaviour
    with httpx.Client(timeout=TIMEOUT) as client:
        assert client.get(server.url).status_code == 418
        seen = [client.get(server.url).status_code for _ in range(400)]
    for status, weight in [*weights.items(), (200, 0.4)]:
        assert abs(seen.count(status) / 400 - weight) <= 0.05, (status, seen.count(status))
    assert chaos.counts == tuple(seen.count(status) for status in (503, 500, 201, 200))
    assert "Respond(status=503" in repr(chaos)
    with pytest.raises(ValueError, match=r"at most 1\.0"):
        Chaos([(0.6, Reset()), (0.5, Close())])
    with pytest.raises(ValueError, match=">= 0"):
        Chaos([(-0.1, Reset())])
    with pytest.raises(TypeError, match="pair"):
        Chaos([Reset()])  # type: ignore[list-item]
    with pytest.raises(TypeError, match="number"):
        Chaos([("0.1", Reset())])  # type: ignore[list-item]
    with pytest.raises(TypeError, match="Chaos can draw"):
        Chaos([(0.1, chaos)])  # type: ignore[list-item]
