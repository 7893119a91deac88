"""Policy(tls=...): meshlib originates (m)TLS itself, as a sidecar does, for plain http URLs.

The upstreams are real TLS servers on 127.0.0.1 that require the caller's certificate
(SPIFFE workload certificates from tests/spiffe.py). The caller's own inner
transport is a MockTransport that fails the test if anything reaches it: a
destination with ``tls`` goes through the transport meshlib makes for that TLS.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import ssl
from collections.abc import Iterator
from pathlib import Path

import anyio
import httpx
import pytest
import trustme

import meshlib
from meshlib._config import parse_config
from meshlib._explain import describe
from meshlib._snapshot import policy_toml
from meshlib.testing import FaultServer, Respond

from .helpers import verification_failed
from .spiffe import MeshCerts, issue_workload, mesh_certs

pytestmark = pytest.mark.network

ORDERS = "spiffe://cluster.local/ns/default/sa/orders"
CALLER = "spiffe://cluster.local/ns/default/sa/tests"
ROTATED = "spiffe://cluster.local/ns/default/sa/tests-rotated"
URL = "http://orders.internal:8080/v1/orders?id=7"


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> MeshCerts:
    return mesh_certs(str(tmp_path_factory.mktemp("spiffe")), client_id=CALLER, server_id=ORDERS)


@pytest.fixture(scope="module")
def rotated(certs: MeshCerts) -> tuple[str, str]:
    """The caller's next certificate and key, from the same mesh CA, with another id."""
    return issue_workload(os.path.dirname(certs.client.ca), "rotated", ROTATED)


@pytest.fixture
def server(certs: MeshCerts) -> Iterator[FaultServer]:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(certs.server_certificate, certs.server_key)
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_verify_locations(certs.client.ca)
    with FaultServer(ssl_context=context) as running:
        running.default = Respond(200, b"orders")
        yield running


def never(request: httpx.Request) -> httpx.Response:
    raise AssertionError(f"the caller's own transport got {request.url}")


async def never_async(request: httpx.Request) -> httpx.Response:
    raise AssertionError(f"the caller's own transport got {request.url}")


def origin_tls(certs: MeshCerts, names: list[str], **extra: object) -> meshlib.TLS:
    files = certs.client
    return meshlib.TLS(files.certificate, files.key, files.ca, subject_alt_names=names, **extra)  # type: ignore[arg-type]


def mesh_for(server: FaultServer, tls: meshlib.TLS) -> meshlib.Mesh:
    policy = meshlib.Policy(
        retry=meshlib.Retry(attempts=3, backoff=meshlib.Backoff(base=0.001)),
        endpoints=meshlib.Endpoints((f"127.0.0.1:{server.port}",)),
        tls=tls,
    )
    return meshlib.Mesh(destinations={"orders.internal:8080": policy})


def send(
    mode: str, mesh: meshlib.Mesh, url: str = URL, headers: dict[str, str] | None = None
) -> httpx.Response:
    if mode == "sync":
        with httpx.Client(transport=meshlib.Transport(httpx.MockTransport(never), mesh)) as client:
            return client.get(url, headers=headers)

    async def go() -> httpx.Response:
        inner = httpx.MockTransport(never_async)
        async with httpx.AsyncClient(transport=meshlib.AsyncTransport(inner, mesh)) as client:
            return await client.get(url, headers=headers)

    return anyio.run(go)


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_plain_http_request_goes_out_over_mtls_and_keeps_its_url_and_host(
    mode: str, certs: MeshCerts, server: FaultServer
) -> None:
    response = send(mode, mesh_for(server, origin_tls(certs, [ORDERS])))
    assert (response.status_code, response.content) == (200, b"orders")
    assert str(response.url) == URL  # the caller's URL, not the connection's
    assert str(response.request.url) == URL
    (seen,) = server.requests
    assert seen.path == "/v1/orders?id=7"
    assert seen.headers["host"] == "orders.internal:8080"
    # The server required a client certificate from the mesh CA and got the caller's.
    assert seen.peer_cert is not None
    assert seen.peer_cert["subjectAltName"] == (("URI", CALLER),)


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_server_without_the_names_is_refused_unsent_and_never_retried(
    mode: str, certs: MeshCerts, server: FaultServer
) -> None:
    mesh = mesh_for(server, origin_tls(certs, ["spiffe://cluster.local/ns/default/sa/payments"]))
    with pytest.raises(httpx.ConnectError) as caught:
        send(mode, mesh)
    error = verification_failed(caught.value)
    assert error is not None, caught.value
    assert ORDERS in str(error)
    assert str(caught.value.request.url) == URL  # the caller's URL, also on failure
    assert server.request_count == 0  # nothing was sent
    assert server.connection_count == 1  # three attempts allowed, one made


def test_without_names_the_server_name_is_checked(certs: MeshCerts, server: FaultServer) -> None:
    # A SPIFFE certificate names no host: with no names to check, the host name
    # check (against the destination's host) refuses it, as meshlib.Client does.
    with pytest.raises(httpx.ConnectError) as caught:
        send("sync", mesh_for(server, origin_tls(certs, [])))
    assert verification_failed(caught.value) is not None
    assert server.request_count == 0


def test_server_name_is_sent_as_sni_and_checked(tmp_path: Path) -> None:
    ca = trustme.CA()
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("orders.mesh.internal").configure_cert(context)
    names: list[str | None] = []
    context.sni_callback = lambda sock, name, ctx: names.append(name)
    client = ca.issue_cert("caller.internal")
    pem = tmp_path / "client.pem"
    pem.write_bytes(b"".join(b.bytes() for b in (client.private_key_pem, *client.cert_chain_pems)))
    ca_file = tmp_path / "ca.pem"
    ca_file.write_bytes(ca.cert_pem.bytes())
    with FaultServer(ssl_context=context) as upstream:
        good = meshlib.TLS(pem, pem, ca_file, server_name="orders.mesh.internal")
        assert send("sync", mesh_for(upstream, good)).status_code == 200
        assert names == ["orders.mesh.internal"]
        # Without it the destination's own host is sent, and the certificate does not name it.
        with pytest.raises(httpx.ConnectError):
            send("sync", mesh_for(upstream, meshlib.TLS(pem, pem, ca_file)))
        assert names[-1] == "orders.internal"
        assert upstream.request_count == 1


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_rotated_certificate_reaches_the_next_new_connection(
    mode: str, certs: MeshCerts, rotated: tuple[str, str], server: FaultServer, tmp_path: Path
) -> None:
    live = tmp_path / "workload.pem"  # key and chain in one file: one rename rotates both

    def install(certificate: str, key: str) -> None:
        staged = tmp_path / "staged.pem"
        staged.write_bytes(Path(key).read_bytes() + Path(certificate).read_bytes())
        os.replace(staged, live)

    install(certs.client.certificate, certs.client.key)
    tls = meshlib.TLS(
        live, live, certs.client.ca, reload=True, reload_interval=0, subject_alt_names=[ORDERS]
    )
    mesh = mesh_for(server, tls)
    closing = {"connection": "close"}  # the next request makes a new connection
    assert send(mode, mesh, headers=closing).status_code == 200
    install(*rotated)
    assert send(mode, mesh, headers=closing).status_code == 200
    first, second = server.requests
    assert first.connection_id != second.connection_id
    assert first.peer_cert is not None
    assert second.peer_cert is not None
    assert first.peer_cert["subjectAltName"] == (("URI", CALLER),)
    assert second.peer_cert["subjectAltName"] == (("URI", ROTATED),)


def test_an_https_url_uses_the_policys_tls_too(certs: MeshCerts, server: FaultServer) -> None:
    response = send(
        "sync", mesh_for(server, origin_tls(certs, [ORDERS])), "https://orders.internal:8080/x"
    )
    assert response.status_code == 200
    assert str(response.url) == "https://orders.internal:8080/x"
    (seen,) = server.requests
    assert seen.peer_cert is not None


def test_a_url_without_a_port_keeps_port_80_under_tls(certs: MeshCerts) -> None:
    # http://orders.internal/ means port 80: originating TLS must not move it to 443.
    seen: list[httpx.URL] = []

    class Inner(httpx.BaseTransport):
        def handle_request(self, request: httpx.Request) -> httpx.Response:
            seen.append(request.url)
            return httpx.Response(200)

    tls = origin_tls(certs, [ORDERS])
    transport = meshlib.Transport(httpx.MockTransport(never), meshlib.Policy(tls=tls))
    transport._origins._open[tls] = Inner()  # type: ignore[assignment]
    with httpx.Client(transport=transport) as client:
        response = client.get("http://orders.internal/v1")
    assert response.status_code == 200
    assert [str(url) for url in seen] == ["https://orders.internal:80/v1"]
    assert str(response.url) == "http://orders.internal/v1"


def test_destinations_without_tls_still_use_the_callers_transport(
    certs: MeshCerts, server: FaultServer
) -> None:
    mesh = meshlib.Mesh(
        destinations={"orders.internal:8080": meshlib.Policy(tls=origin_tls(certs, [ORDERS]))}
    )
    ok = httpx.MockTransport(lambda request: httpx.Response(204))
    with httpx.Client(transport=meshlib.Transport(ok, mesh)) as client:
        assert client.get("http://payments.internal/").status_code == 204


def test_one_inner_transport_per_tls_value_closed_with_the_transport(
    certs: MeshCerts, server: FaultServer
) -> None:
    tls = origin_tls(certs, [ORDERS])
    same = origin_tls(certs, [ORDERS])
    transport = meshlib.Transport(httpx.MockTransport(never), mesh_for(server, tls))
    first, _ = transport._origins.get(tls)
    assert transport._origins.get(same)[0] is first  # equal values share one pool
    with httpx.Client(transport=transport) as client:
        assert client.get(URL).status_code == 200
    assert transport._origins._open == {}  # closed with the client


def test_policy_tls_must_be_a_tls_value() -> None:
    with pytest.raises(meshlib.ConfigError, match=r"^Policy\.tls: expected a meshlib\.TLS or None"):
        meshlib.Policy(tls="svc.pem")  # type: ignore[arg-type]


# --- the policy file ---------------------------------------------------------------------


def file_policy(tmp_path: Path, table: str) -> meshlib.Policy:
    path = tmp_path / "mesh.toml"
    path.write_text(f'[destinations."orders.internal:8080"]\ntls = {table}\n')
    mesh = meshlib.Mesh.from_file(path)
    try:
        return mesh.policy_for("orders.internal", 8080)
    finally:
        mesh.close()


def test_the_policy_file_names_the_tls_of_a_destination(tmp_path: Path, certs: MeshCerts) -> None:
    files = certs.client
    policy = file_policy(
        tmp_path,
        f'{{ cert = "{files.certificate}", key = "{files.key}", ca = "{files.ca}", '
        f'reload = true, reload_interval = "500ms", subject_alt_names = ["{ORDERS}"] }}',
    )
    assert policy.tls == meshlib.TLS(
        files.certificate,
        files.key,
        files.ca,
        reload=True,
        reload_interval=0.5,
        subject_alt_names=[ORDERS],
    )
    assert meshlib.Mesh().policy_for("orders.internal", 8080).tls is None  # off in STANDARD


@pytest.mark.parametrize(
    ("table", "message"),
    [
        (
            '{ cert = "missing.pem", key = "missing.pem" }',
            r'^{file}: destinations\."orders\.internal:8080"\.tls\.cert: file not found: '
            r"'.*missing\.pem'$",
        ),
        (
            '{ cert = "CERT", key = "KEY", subject_alt_names = "spiffe://x" }',
            r'^{file}: destinations\."orders\.internal:8080"\.tls\.subject_alt_names: '
            r"expected a list of non-empty names, got 'spiffe://x'$",
        ),
        (
            '{ cert = "CERT", key = "KEY", reload_interval = "soon" }',
            r'^{file}: destinations\."orders\.internal:8080"\.tls\.reload_interval: '
            r"expected a duration",
        ),
        (
            '{ cert = "CERT", key = "KEY", password = "hunter2" }',
            r'^{file}: destinations\."orders\.internal:8080"\.tls\.password: TLS\.password is a '
            r"secret; set it in code, not in a file$",
        ),
        (
            '{ cert = "CERT", key = "KEY", cerificate = "x" }',
            r'^{file}: destinations\."orders\.internal:8080"\.tls\.cerificate: unknown setting',
        ),
        (
            '{ key = "KEY" }',
            r"^{file}: destinations\.\"orders\.internal:8080\"\.tls: missing required setting "
            r"'cert' of TLS$",
        ),
        (
            '"CERT"',
            r'^{file}: destinations\."orders\.internal:8080"\.tls: expected a table of TLS '
            r"settings",
        ),
    ],
)
def test_bad_tls_in_the_policy_file_names_the_file_and_the_field(
    tmp_path: Path, certs: MeshCerts, table: str, message: str
) -> None:
    shutil.copy(certs.client.certificate, tmp_path / "cert.pem")
    table = table.replace("CERT", certs.client.certificate).replace("KEY", certs.client.key)
    path = tmp_path / "mesh.toml"
    with pytest.raises(meshlib.ConfigError) as caught:
        file_policy(tmp_path, table)
    assert re.match(message.replace("{file}", re.escape(str(path))), str(caught.value)), str(
        caught.value
    )
    assert "hunter2" not in str(caught.value)


def test_explain_and_the_status_page_never_show_a_password(certs: MeshCerts) -> None:
    files = certs.client
    tls = meshlib.TLS(files.certificate, files.key, files.ca, subject_alt_names=[ORDERS])
    # The key is not encrypted: OpenSSL ignores a password it does not need.
    secret = dataclasses.replace(tls, password="hunter2")
    policy = meshlib.Policy(tls=secret)
    line = describe(policy).splitlines()[-1]
    assert line.startswith("tls ")
    assert files.certificate in line
    assert ORDERS in line
    written = policy_toml(policy, "orders.internal")
    assert "hunter2" not in written + describe(policy)
    assert f'cert = "{files.certificate}"' in written


def test_beyond_capacity_the_least_recently_used_transport_is_closed(
    certs: MeshCerts, monkeypatch: pytest.MonkeyPatch
) -> None:
    from meshlib import _origin

    monkeypatch.setattr(_origin, "CAPACITY", 2)
    closed: list[str] = []

    class Made:
        def __init__(self, tls: meshlib.TLS) -> None:
            self.name = tls.subject_alt_names[0]

        def close(self) -> None:
            closed.append(self.name)

    origins: _origin.Origins[Made] = _origin.Origins(Made)
    hot, b, c, d = (origin_tls(certs, [name]) for name in ("hot", "b", "c", "d"))
    assert not origins.get(hot)[1]
    origins.get(b)
    origins.get(hot)  # in constant use: never pushed out
    (gone,) = origins.get(c)[1]
    assert gone.name == "b"
    origins.get(hot)
    (gone,) = origins.get(d)[1]
    assert gone.name == "c"
    assert sorted(made.name for made in origins.close_all()) == ["d", "hot"]


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_hedged_call_sends_its_copies_over_the_policys_tls(
    mode: str, certs: MeshCerts, server: FaultServer
) -> None:
    mesh = mesh_for(server, origin_tls(certs, [ORDERS]))
    destination = "orders.internal:8080"
    policy = mesh.policy_for("orders.internal", 8080).replace(hedge=meshlib.Hedge(delay=30.0))
    hedged = meshlib.Mesh(destinations={destination: policy})
    response = send(mode, hedged)
    assert (response.status_code, str(response.url)) == (200, URL)
    (seen,) = server.requests
    assert seen.peer_cert is not None
    assert seen.headers["host"] == destination


def test_the_status_pages_toml_of_a_tls_policy_reads_back(certs: MeshCerts) -> None:
    files = certs.client
    tls = meshlib.TLS(
        files.certificate,
        files.key,
        files.ca,
        reload=True,
        reload_interval=0.25,
        subject_alt_names=[ORDERS],
        subject_alt_name_prefixes=["spiffe://cluster.local/ns/canary/"],
        server_name="orders.mesh.internal",
    )
    policy = meshlib.STANDARD.replace(tls=tls)
    written = policy_toml(policy, "orders.internal:8080")
    read = parse_config(written, "status.toml")
    assert read.destinations["orders.internal:8080"] == policy
