"""TLS(subject_alt_names=...): the server must carry one of the names, as a SPIFFE id or a host.

The certificates are Istio's shape (tests/spiffe.py): a workload's only
subject-alt-name is its SPIFFE id, a URI, so a host name check could never pass.
The upstream is a real TLS server on 127.0.0.1 that requires the client's
certificate; "nothing was sent" is checked at the server.
"""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from pathlib import Path

import anyio
import httpx
import pytest

import meshlib
from meshlib.testing import FaultServer

from .helpers import verification_failed
from .spiffe import MeshCerts, mesh_certs

pytestmark = pytest.mark.network

ORDERS = "spiffe://cluster.local/ns/default/sa/orders"
POLICY = meshlib.Policy(retry=meshlib.Retry(attempts=3, backoff=meshlib.Backoff(base=0.001)))


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> MeshCerts:
    return mesh_certs(str(tmp_path_factory.mktemp("spiffe")), server_id=ORDERS)


@pytest.fixture
def server(certs: MeshCerts) -> Iterator[FaultServer]:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(certs.server_certificate, certs.server_key)
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_verify_locations(certs.client.ca)
    with FaultServer(ssl_context=context) as running:
        yield running


def tls(certs: MeshCerts, names: list[str] | tuple[str, ...]) -> meshlib.TLS:
    files = certs.client
    return meshlib.TLS(files.certificate, files.key, files.ca, subject_alt_names=names)


def get(mode: str, tls: meshlib.TLS, url: str) -> httpx.Response:
    if mode == "sync":
        with meshlib.Client(POLICY, tls=tls, timeout=5.0) as client:
            return client.get(url)

    async def go() -> httpx.Response:
        async with meshlib.AsyncClient(POLICY, tls=tls, timeout=5.0) as client:
            return await client.get(url)

    return anyio.run(go)


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_server_with_one_of_the_names_is_trusted_and_sees_the_caller(
    mode: str, certs: MeshCerts, server: FaultServer
) -> None:
    names = ["spiffe://cluster.local/ns/default/sa/other", ORDERS]
    assert get(mode, tls(certs, names), server.url).status_code == 200
    (request,) = server.requests
    assert request.peer_cert is not None  # mTLS: the server saw the caller's certificate


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_server_without_the_names_is_refused_before_anything_is_sent(
    mode: str, certs: MeshCerts, server: FaultServer
) -> None:
    with pytest.raises(httpx.ConnectError) as caught:
        get(mode, tls(certs, ["spiffe://cluster.local/ns/default/sa/payments"]), server.url)
    error = verification_failed(caught.value)
    assert error is not None, caught.value
    assert ORDERS in str(error)  # what it had
    assert "sa/payments" in str(error)  # what was asked
    assert server.request_count == 0  # the request never left
    assert server.connection_count == 1  # a verification failure is never retried


def test_without_names_the_host_name_is_checked_as_before(
    certs: MeshCerts, server: FaultServer
) -> None:
    # The SPIFFE certificate names no host: the default check refuses it.
    with pytest.raises(httpx.ConnectError) as caught:
        get("sync", tls(certs, ()), server.url)
    assert verification_failed(caught.value) is not None
    assert server.request_count == 0


def test_a_dns_name_counts_as_a_subject_alt_name(tmp_path: Path, server: FaultServer) -> None:
    import trustme

    ca = trustme.CA()
    leaf = ca.issue_cert("orders.internal")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    leaf.configure_cert(context)
    client = ca.issue_cert("caller.internal")
    pem = tmp_path / "client.pem"
    pem.write_bytes(b"".join(b.bytes() for b in (client.private_key_pem, *client.cert_chain_pems)))
    ca_file = tmp_path / "ca.pem"
    ca_file.write_bytes(ca.cert_pem.bytes())
    with FaultServer(ssl_context=context) as dns_server:
        # Reached by address, trusted by the name in its certificate.
        names = meshlib.TLS(pem, pem, ca_file, subject_alt_names=["orders.internal"])
        assert get("sync", names, dns_server.url).status_code == 200
        wrong = meshlib.TLS(pem, pem, ca_file, subject_alt_names=["payments.internal"])
        with pytest.raises(httpx.ConnectError):
            get("sync", wrong, dns_server.url)
        assert dns_server.request_count == 1


@pytest.mark.parametrize("bad", ["spiffe://one", [""], [3], None])
def test_names_that_are_not_a_list_of_names_are_a_config_error(
    certs: MeshCerts, bad: object
) -> None:
    with pytest.raises(meshlib.ConfigError, match=r"TLS\.subject_alt_names"):
        tls(certs, bad)  # type: ignore[arg-type]


def test_the_names_are_part_of_the_value(certs: MeshCerts) -> None:
    value = tls(certs, [ORDERS])
    assert value.subject_alt_names == (ORDERS,)
    assert ORDERS in repr(value)
    assert value != tls(certs, ())


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_prefix_accepts_every_name_that_starts_with_it(
    mode: str, certs: MeshCerts, server: FaultServer
) -> None:
    files = certs.client
    namespace = meshlib.TLS(
        files.certificate,
        files.key,
        files.ca,
        subject_alt_name_prefixes=["spiffe://cluster.local/ns/default/"],
    )
    assert get(mode, namespace, server.url).status_code == 200
    other = meshlib.TLS(
        files.certificate,
        files.key,
        files.ca,
        subject_alt_names=["spiffe://cluster.local/ns/default/sa/payments"],
        subject_alt_name_prefixes=["spiffe://cluster.local/ns/prod/"],
    )
    with pytest.raises(httpx.ConnectError) as caught:
        get(mode, other, server.url)
    error = verification_failed(caught.value)
    assert error is not None
    assert "spiffe://cluster.local/ns/prod/*" in str(error)  # what was asked, prefixes too
    assert server.request_count == 1  # only the accepted server got a request


@pytest.mark.parametrize("bad", ["spiffe://one/", [""], None])
def test_prefixes_that_are_not_a_list_of_names_are_a_config_error(
    certs: MeshCerts, bad: object
) -> None:
    files = certs.client
    with pytest.raises(meshlib.ConfigError, match=r"^TLS\.subject_alt_name_prefixes: expected"):
        meshlib.TLS(files.certificate, files.key, files.ca, subject_alt_name_prefixes=bad)  # type: ignore[arg-type]
