"""The status page over HTTP: its JSON shape, safety defaults, redaction and load."""

from __future__ import annotations

import asyncio
import http.server
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

import meshlib
from meshlib.testing import FaultServer, Respond

pytestmark = pytest.mark.network


@pytest.fixture
def upstream() -> Iterator[FaultServer]:
    with FaultServer() as server:
        yield server


def _serve(mesh: meshlib.Mesh, **kwargs: Any) -> meshlib.admin.Server:
    return meshlib.admin.serve(mesh, port=0, **kwargs)


# --- the JSON shape --------------------------------------------------------------------

DESTINATION_KEYS = {
    "name", "key", "kind", "status", "reason", "policy", "breaker", "budget", "bulkhead",
    "latency", "endpoints", "success_rate", "requests_per_second", "retries_per_second",
    "effective", "described",
}  # fmt: skip


def test_status_json_has_the_documented_shape(upstream: FaultServer) -> None:
    mesh = meshlib.Mesh(
        destinations={
            "127.0.0.1": meshlib.Policy(endpoints=meshlib.Endpoints([f"127.0.0.1:{upstream.port}"]))
        }
    )
    with _serve(mesh) as server, meshlib.wrap(httpx.Client(), mesh) as client:
        assert client.get(upstream.url + "/items").status_code == 200
        response = httpx.get(server.url + "/status.json")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    data = response.json()
    assert set(data) == {"version", "generated_at", "pid", "source", "latency_sketch",
                         "destinations"}  # fmt: skip
    assert data["version"] == 1
    assert data["source"] is None
    assert "histogram" in data["latency_sketch"]
    (row,) = data["destinations"]
    assert set(row) == DESTINATION_KEYS
    assert row["name"] == row["key"] == f"http://127.0.0.1:{upstream.port}"
    assert row["status"] == "healthy"
    assert row["policy"] == {"from": "pattern", "pattern": "127.0.0.1", "source": None,
                             "version": None}  # fmt: skip
    assert set(row["breaker"]) == {"state", "since", "changed_at", "window", "calls",
                                   "successes", "failures", "retry_after", "trips"}  # fmt: skip
    assert set(row["budget"]) == {"window", "requests", "retries", "requests_per_second",
                                  "retries_per_second", "left"}  # fmt: skip
    assert set(row["bulkhead"]) == {"in_flight", "queued", "max_concurrent", "max_queued"}
    assert set(row["latency"]) == {"window", "count", "p50", "p99"}
    assert row["latency"]["count"] == 1
    assert row["latency"]["p50"] > 0
    (endpoint,) = row["endpoints"]
    assert set(endpoint) == {"address", "state", "ejected_for", "ejections", "in_flight",
                             "failures_in_a_row", "latency", "weight"}  # fmt: skip
    assert endpoint["state"] == "in use"
    assert row["effective"].startswith('[destinations."127.0.0.1"]')


def test_config_is_the_mesh_as_a_policy_file() -> None:
    mesh = meshlib.Mesh(
        default=meshlib.Policy(bulkhead=None),
        destinations={"orders.internal": meshlib.Policy(retry=meshlib.Retry(attempts=2))},
    )
    with _serve(mesh) as server:
        response = httpx.get(server.url + "/config")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    config = meshlib._config.parse_config(response.content, "config")
    assert config.default == mesh.default
    assert dict(config.destinations) == dict(mesh.destinations)


def test_config_dump_is_served_as_json(tmp_path: Path) -> None:
    policy_file = tmp_path / "mesh.toml"
    policy_file.write_text("[default]\nretry = { attempts = 2 }\n")
    mesh = meshlib.Mesh.from_file(policy_file, reload=True)
    try:
        with _serve(mesh) as server:
            response = httpx.get(server.url + "/config_dump")
    finally:
        mesh.close()
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {
        "source": {"kind": "file", "location": str(policy_file)},
        "xds": None,
    }


def test_each_destination_has_a_page_with_its_endpoints_and_policy(upstream: FaultServer) -> None:
    mesh = meshlib.Mesh(
        destinations={
            "127.0.0.1": meshlib.Policy(
                endpoints=meshlib.Endpoints([f"127.0.0.1:{upstream.port}", "127.0.0.1:9"])
            )
        }
    )
    with _serve(mesh) as server, meshlib.wrap(httpx.Client(), mesh) as client:
        client.get(upstream.url)
        key = f"http://127.0.0.1:{upstream.port}"
        page = httpx.get(server.url + "/destination", params={"name": key})
        missing = httpx.get(server.url + "/destination", params={"name": "http://nowhere:1"})
    assert page.status_code == 200
    assert f'data-endpoint="127.0.0.1:{upstream.port}"' in page.text
    assert 'data-endpoint="127.0.0.1:9"' in page.text
    assert "<th>weight</th>" in page.text
    assert "[destinations.&quot;127.0.0.1&quot;]" in page.text
    assert "endpoints = { addresses = [" in page.text.replace("&quot;", '"')
    assert missing.status_code == 404


# --- safe by default -------------------------------------------------------------------


def test_serve_binds_loopback_by_default() -> None:
    with meshlib.admin.serve(meshlib.Mesh(), port=0) as server:
        assert server.host == "127.0.0.1"
        assert server._httpd.socket.getsockname()[0] == "127.0.0.1"
        assert server.url == f"http://127.0.0.1:{server.port}"
        assert httpx.get(server.url + "/").status_code == 200


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.0.2.10", "example.com"])
def test_a_non_loopback_bind_must_be_asked_for_by_name(host: str) -> None:
    with pytest.raises(meshlib.ConfigError, match=r"host: .* allow_remote=True"):
        meshlib.admin.serve(meshlib.Mesh(), port=0, host=host)


def test_allow_remote_binds_where_told() -> None:
    with meshlib.admin.serve(meshlib.Mesh(), port=0, host="0.0.0.0", allow_remote=True) as server:
        assert server._httpd.socket.getsockname()[0] == "0.0.0.0"
        # Reached through loopback, under any Host name: remote access was asked for.
        url = f"http://127.0.0.1:{server.port}/"
        assert httpx.get(url, headers={"Host": "status.example"}).status_code == 200


def test_a_loopback_page_refuses_other_host_names() -> None:
    # A web page that rebinds its own name to 127.0.0.1 must not read the status.
    with _serve(meshlib.Mesh()) as server:
        assert httpx.get(server.url, headers={"Host": "evil.example"}).status_code == 403
        assert httpx.get(server.url, headers={"Host": f"localhost:{server.port}"}).is_success


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"port": -1}, r"port: .* -1"),
        ({"port": 65536}, r"port: .* 65536"),
        ({"port": "15000"}, r"port: .* '15000'"),
        ({"port": True}, r"port: .* True"),
        ({"port": 0, "host": ""}, r"host: .* ''"),
        ({"port": 0, "host": "no such host", "allow_remote": True}, r"host: .*no such host"),
        ({"port": 0, "refresh": 0}, r"refresh: .* 0"),
        ({"port": 0, "allow_remote": "yes"}, r"allow_remote: .* 'yes'"),
    ],
)
def test_bad_arguments_are_config_errors(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(meshlib.ConfigError, match=match):
        meshlib.admin.serve(meshlib.Mesh(), **kwargs)


def test_a_port_in_use_is_a_config_error() -> None:
    with (
        _serve(meshlib.Mesh()) as server,
        pytest.raises(meshlib.ConfigError, match=rf"cannot listen on 127.0.0.1:{server.port}"),
    ):
        meshlib.admin.serve(meshlib.Mesh(), port=server.port)


def test_app_refuses_what_is_not_a_mesh() -> None:
    with pytest.raises(meshlib.ConfigError, match=r"admin.app: mesh: .*Policy"):
        meshlib.admin.app(meshlib.STANDARD)  # type: ignore[arg-type]


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "OPTIONS", "RESET"])
def test_it_is_read_only(method: str, upstream: FaultServer) -> None:
    mesh = meshlib.Mesh()
    with _serve(mesh) as server, meshlib.wrap(httpx.Client(), mesh) as client:
        client.get(upstream.url)
        before = httpx.get(server.url + "/status.json").json()["destinations"]
        for path in ("/", "/status.json", "/config", "/destination"):
            response = httpx.request(method, server.url + path, content=b"state=open")
            assert response.status_code == 405
            assert response.headers["allow"] == "GET, HEAD"
        after = httpx.get(server.url + "/status.json").json()["destinations"]
    assert [d["breaker"]["calls"] for d in after] == [d["breaker"]["calls"] for d in before]


def test_head_answers_without_a_body() -> None:
    with _serve(meshlib.Mesh()) as server:
        response = httpx.head(server.url + "/status.json")
    assert response.status_code == 200
    assert int(response.headers["content-length"]) > 0
    assert response.content == b""


# --- redaction -------------------------------------------------------------------------

SECRETS = ("S3CRET-QUERY", "S3CRET-AUTH", "S3CRET-COOKIE", "S3CRET-SOURCE", "S3CRET-ROUTE")


def test_no_secret_appears_in_any_page(upstream: FaultServer) -> None:
    document = (
        f'[destinations."127.0.0.1:{upstream.port}"]\n'
        'routes = [{ to = "v2.internal", headers = { authorization = "Bearer S3CRET-ROUTE" } }]\n'
    )
    with FaultServer() as head_office:
        head_office.enqueue(
            Respond(200, document.encode(), headers={"content-type": "application/toml"})
        )
        head_office.default = Respond(500)  # every later poll is refused: a refusal to show
        source = f"{head_office.url}/mesh.toml?token=S3CRET-SOURCE"
        mesh = meshlib.Mesh.from_url(
            source, interval=0.02, headers={"Authorization": "Bearer S3CRET-SOURCE"}
        )
        try:
            with _serve(mesh) as server, meshlib.wrap(httpx.Client(), mesh) as client:
                response = client.get(
                    f"{upstream.url}/items?token=S3CRET-QUERY&page=2",
                    headers={"Authorization": "Bearer S3CRET-AUTH", "Cookie": "s=S3CRET-COOKIE"},
                )
                assert response.status_code == 200
                deadline = time.monotonic() + 10.0
                while httpx.get(server.url + "/status.json").json()["source"]["failing"] is False:
                    assert time.monotonic() < deadline, "the source never refused an update"
                    time.sleep(0.02)
                data = httpx.get(server.url + "/status.json").json()
                pages = [
                    httpx.get(server.url + path).text for path in ("/", "/config", "/config_dump")
                ]
                pages.append(json.dumps(data))
                for row in data["destinations"]:
                    for fragment in ("0", "1"):
                        params = {"name": row["key"], "fragment": fragment}
                        pages.append(httpx.get(server.url + "/destination", params=params).text)
        finally:
            mesh.close()
    assert data["source"]["location"].endswith("/mesh.toml?token=REDACTED")
    assert "token=REDACTED" in data["source"]["last_refusal"]["reason"]
    assert "HTTP 500" in data["source"]["last_refusal"]["reason"]
    assert any("authorization = &quot;REDACTED&quot;" in page for page in pages)
    for page in pages:
        for secret in SECRETS:
            assert secret not in page


# --- under load ------------------------------------------------------------------------


class _Gate(http.server.ThreadingHTTPServer):
    """An upstream on 127.0.0.1 that holds every request until `opened` is set."""

    daemon_threads = True
    request_queue_size = 128  # 40 connections at once

    def __init__(self) -> None:
        self.opened = threading.Event()
        self.arrived = 0
        self.lock = threading.Lock()
        gate = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                with gate.lock:
                    gate.arrived += 1
                gate.opened.wait(30.0)
                self.send_response(200)
                self.send_header("content-length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, format: str, *args: Any) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


def test_the_page_answers_while_calls_are_in_flight() -> None:
    # No lock is held across I/O: while 40 calls wait on the upstream, the page
    # answers, and counts them in flight.
    gate = _Gate()
    # Nothing times out while the gate is shut, however slow this machine is.
    mesh = meshlib.Mesh(default=meshlib.Policy(retry=None, timeout=meshlib.Timeout(total=120.0)))
    errors: list[BaseException] = []

    def call_sync(client: httpx.Client) -> None:
        try:
            assert client.get(gate.url).status_code == 200
        except BaseException as exc:
            errors.append(exc)

    async def call_async() -> None:
        async with meshlib.wrap(httpx.AsyncClient(timeout=120.0), mesh) as client:
            await asyncio.gather(*(client.get(gate.url) for _ in range(20)))

    try:
        with _serve(mesh) as server, meshlib.wrap(httpx.Client(timeout=120.0), mesh) as client:
            threads = [threading.Thread(target=call_sync, args=(client,)) for _ in range(20)]
            threads.append(threading.Thread(target=lambda: asyncio.run(call_async())))
            for thread in threads:
                thread.start()
            deadline = time.monotonic() + 60.0
            in_flight = -1
            while in_flight != 40 or gate.arrived != 40:  # all 40 wait on the wire
                assert time.monotonic() < deadline, f"in flight: {in_flight}, {gate.arrived}"
                rows = httpx.get(server.url + "/status.json", timeout=30.0).json()["destinations"]
                in_flight = rows[0]["bulkhead"]["in_flight"] if rows else 0
                time.sleep(0.02)
            page = httpx.get(server.url + "/", timeout=30.0)
            assert "40 in flight, 0 queued" in page.text
            gate.opened.set()
            for thread in threads:
                thread.join(30.0)
            rows = httpx.get(server.url + "/status.json").json()["destinations"]
    finally:
        gate.opened.set()
        gate.shutdown()
        gate.server_close()
    assert errors == []
    assert rows[0]["bulkhead"]["in_flight"] == 0
    assert rows[0]["breaker"]["calls"] == 40


def test_50_threads_and_500_tasks_call_while_the_page_is_polled(upstream: FaultServer) -> None:
    long = meshlib.Policy(
        retry=meshlib.Retry(budget=meshlib.Budget(ttl=3600.0)),
        breaker=meshlib.Breaker(window=3600.0),
        timeout=meshlib.Timeout(total=60.0),
    )
    mesh = meshlib.Mesh(default=long)
    polls: list[int] = []
    errors: list[BaseException] = []
    stop = threading.Event()

    def poll(url: str) -> None:
        with httpx.Client(timeout=30.0) as plain:
            while not stop.is_set():
                try:
                    for path in ("/", "/status.json", "/?fragment=1"):
                        response = plain.get(url + path)
                        polls.append(response.status_code)
                        if path == "/status.json":
                            assert response.json()["version"] == 1
                except BaseException as exc:
                    errors.append(exc)
                    return

    def call_sync(client: httpx.Client) -> None:
        try:
            for _ in range(4):
                assert client.get(upstream.url + "/sync").status_code == 200
        except BaseException as exc:
            errors.append(exc)

    async def call_async() -> None:
        limits = httpx.Limits(max_connections=50)
        timeout = httpx.Timeout(30.0, pool=None)
        async with meshlib.wrap(httpx.AsyncClient(limits=limits, timeout=timeout), mesh) as client:

            async def one() -> None:
                for _ in range(2):
                    assert (await client.get(upstream.url + "/async")).status_code == 200

            results = await asyncio.gather(*(one() for _ in range(500)), return_exceptions=True)
        errors.extend(r for r in results if isinstance(r, BaseException))

    with _serve(mesh) as server, meshlib.wrap(httpx.Client(timeout=30.0), mesh) as client:
        pollers = [threading.Thread(target=poll, args=(server.url,)) for _ in range(2)]
        callers = [threading.Thread(target=call_sync, args=(client,)) for _ in range(50)]
        callers.append(threading.Thread(target=lambda: asyncio.run(call_async())))
        for thread in pollers + callers:
            thread.start()
        for thread in callers:
            thread.join(120.0)
        stop.set()
        for thread in pollers:
            thread.join(30.0)
        data = httpx.get(server.url + "/status.json").json()
    assert errors == []
    assert len(polls) >= 3
    assert set(polls) == {200}
    (row,) = data["destinations"]
    total = 50 * 4 + 500 * 2
    # Every call counted once, none lost to a race: the budget and the breaker agree.
    assert row["budget"]["requests"] == total
    assert row["breaker"]["calls"] == total
    assert row["breaker"]["failures"] == 0
    assert row["bulkhead"] == {"in_flight": 0, "queued": 0, "max_concurrent": 1000,
                               "max_queued": 0}  # fmt: skip
    assert 0 < row["latency"]["count"] <= total
    assert row["status"] == "healthy"


# --- the ASGI app ----------------------------------------------------------------------


def test_the_asgi_app_serves_the_same_pages() -> None:
    mesh = meshlib.Mesh()
    app = meshlib.admin.app(mesh)

    async def go() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
            return [
                await c.get("/"),
                await c.get("/status.json"),
                await c.post("/status.json"),
                await c.head("/config"),
            ]

    page, data, post, head = asyncio.run(go())
    assert page.status_code == 200
    assert '<main id="live"' in page.text
    assert data.json()["version"] == 1
    assert post.status_code == 405
    assert head.status_code == 200
    assert head.content == b""


def test_the_asgi_app_mounted_under_a_prefix_links_under_it() -> None:
    from starlette.applications import Starlette
    from starlette.routing import Mount

    service = Starlette(routes=[Mount("/admin", app=meshlib.admin.app(meshlib.Mesh()))])

    async def go() -> tuple[httpx.Response, httpx.Response]:
        transport = httpx.ASGITransport(app=service)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
            return await c.get("/admin/"), await c.get("/admin/admin.js")

    page, script = asyncio.run(go())
    assert page.status_code == 200
    assert 'href="/admin/status.json"' in page.text
    assert 'src="/admin/admin.js"' in page.text
    assert script.status_code == 200
    assert "fragment" in script.text


def test_the_asgi_app_completes_the_lifespan() -> None:
    app = meshlib.admin.app(meshlib.Mesh())
    sent: list[dict[str, Any]] = []
    incoming = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]

    async def receive() -> dict[str, Any]:
        return incoming.pop(0)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(app({"type": "lifespan"}, receive, send))  # type: ignore[arg-type]
    assert [m["type"] for m in sent] == ["lifespan.startup.complete", "lifespan.shutdown.complete"]


def test_pages_forbid_everything_but_their_own_script_and_style() -> None:
    with _serve(meshlib.Mesh()) as server:
        page = httpx.get(server.url + "/")
        script = httpx.get(server.url + "/admin.js")
        missing = httpx.get(server.url + "/stats")
    policy = page.headers["content-security-policy"]
    assert "default-src 'none'" in policy
    assert "script-src 'self'" in policy
    assert page.headers["cache-control"] == "no-store"
    assert page.headers["x-content-type-options"] == "nosniff"
    assert script.headers["content-type"].startswith("text/javascript")
    assert missing.status_code == 404


def test_localhost_is_a_loopback_bind() -> None:
    with meshlib.admin.serve(meshlib.Mesh(), port=0, host="localhost") as server:
        assert server.url == f"http://localhost:{server.port}"
        assert httpx.get(server.url + "/status.json").json()["version"] == 1


def test_the_table_shows_the_most_urgent_rows_and_counts_the_rest(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(meshlib.admin, "_MAX_ROWS", 2)
    mesh = meshlib.Mesh(default=meshlib.Policy(retry=None, breaker=meshlib.Breaker(consecutive=1)))

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(503 if request.url.host == "down.internal" else 200)

    with meshlib.wrap(httpx.Client(transport=httpx.MockTransport(handler)), mesh) as client:
        for host in ("a.internal", "b.internal", "c.internal", "down.internal"):
            client.get(f"http://{host}/")
    with _serve(mesh) as server:
        page = httpx.get(server.url + "/").text
        data = httpx.get(server.url + "/status.json").json()
    assert len(data["destinations"]) == 4
    assert page.count("<tr data-destination=") == 2
    assert page.index('data-destination="http://down.internal:80"') < page.index(
        'data-destination="http://a.internal:80"'
    )
    assert "and 2 more destinations" in page


def test_a_failing_page_answers_500_and_logs_why(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(mesh: meshlib.Mesh) -> dict[str, Any]:
        raise RuntimeError("boom")

    monkeypatch.setattr(meshlib.admin, "snapshot", broken)
    with _serve(meshlib.Mesh()) as server:
        response = httpx.get(server.url + "/status.json")
        assert httpx.get(server.url + "/admin.css").status_code == 200  # still serving
    assert response.status_code == 500
    assert "boom" not in response.text
    assert "meshlib status page failed on GET /status.json" in caplog.text


def test_import_meshlib_does_not_load_the_server() -> None:
    # `import meshlib` stays light: the stdlib HTTP server loads with serve(), not before.
    import subprocess
    import sys

    code = "import sys, meshlib; print('http.server' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
