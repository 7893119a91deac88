"""mTLS: meshlib.TLS against real TLS servers on 127.0.0.1 that require client certificates.

Certificates come from trustme, made in the test. The server records the client
certificate it saw on each request, so "the server sees the new subject" is checked
on the wire, not on our side of it.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import ssl
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
import trustme
from cryptography.hazmat.primitives import serialization

import meshlib
import meshlib._tls
from meshlib.testing import FakeClock, FaultServer, RecordedRequest, use_clock

from .helpers import verification_failed

TIMEOUT = 5.0
INTERVAL = 0.05  # reload_interval in these tests
# The longest a test waits for a rotation to show on the wire: only a failing run waits this
# long, and on a loaded 2-core machine each new TLS connection can take a while.
ROTATION_WAIT = 30.0
SECRET = "correct horse battery staple"
WRONG = "Tr0ub4dor&3 is not it"
CLOSE = {"Connection": "close"}  # one request per connection: each one handshakes anew


# --- Material ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def issue(ca: trustme.CA, name: str, **kwargs: Any) -> trustme.LeafCert:
    return ca.issue_cert("svc.internal", common_name=name, **kwargs)


def atomic_write(path: Path, data: bytes) -> None:
    """Replace `path` the way rotation tools do: write a temporary file, then rename."""
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_bytes(data)
    os.replace(temporary, path)


def encrypted_key(leaf: trustme.LeafCert, password: str, *, traditional: bool = False) -> bytes:
    key = serialization.load_pem_private_key(leaf.private_key_pem.bytes(), password=None)
    form = (
        serialization.PrivateFormat.TraditionalOpenSSL
        if traditional
        else serialization.PrivateFormat.PKCS8
    )
    return key.private_bytes(
        serialization.Encoding.PEM,
        form,
        serialization.BestAvailableEncryption(password.encode()),
    )


@dataclasses.dataclass
class Files:
    """A CA bundle, and client-one's pair both as one combined file and as two files."""

    ca: Path
    pem: Path
    cert: Path
    key: Path


@pytest.fixture
def files(tmp_path: Path, ca: trustme.CA) -> Files:
    leaf = issue(ca, "client-one")
    found = Files(
        ca=tmp_path / "mesh-ca.pem",
        pem=tmp_path / "svc.pem",
        cert=tmp_path / "svc.crt",
        key=tmp_path / "svc.key",
    )
    ca.cert_pem.write_to_path(str(found.ca))
    leaf.private_key_and_cert_chain_pem.write_to_path(str(found.pem))
    write_split(found, leaf)
    return found


def write_split(files: Files, leaf: trustme.LeafCert) -> None:
    atomic_write(files.cert, b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
    atomic_write(files.key, leaf.private_key_pem.bytes())


# --- Servers ----------------------------------------------------------------------------------


def server_context(
    client_ca: trustme.CA, server_ca: trustme.CA | None = None, hostname: str = "127.0.0.1"
) -> ssl.SSLContext:
    """A server that requires a client certificate from `client_ca`."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    (server_ca or client_ca).issue_cert(hostname).configure_cert(context)
    context.verify_mode = ssl.CERT_REQUIRED
    client_ca.configure_trust(context)
    return context


@pytest.fixture
def server(ca: trustme.CA) -> Iterator[FaultServer]:
    with FaultServer(ssl_context=server_context(ca)) as running:
        yield running


def subject(request: RecordedRequest) -> str:
    assert request.peer_cert is not None, "the server saw no client certificate"
    names = dict(rdn[0] for rdn in request.peer_cert["subject"])
    return str(names["commonName"])


def presented(client: httpx.Client, server: FaultServer) -> str:
    """Send one request on a new connection; return the client certificate the server saw."""
    response = client.get(server.url, headers=CLOSE)
    assert response.status_code == 200
    return subject(server.requests[-1])


async def apresented(client: httpx.AsyncClient, server: FaultServer) -> str:
    response = await client.get(server.url, headers=CLOSE)
    assert response.status_code == 200
    return subject(server.requests[-1])


def eventually(check: Callable[[], bool], timeout: float = ROTATION_WAIT) -> bool:
    limit = time.monotonic() + timeout
    while not check():
        if time.monotonic() > limit:
            return False
        time.sleep(0.01)
    return True


def reload_events(caplog: pytest.LogCaptureFixture, event: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if getattr(r, "meshlib_event", None) == event]


# --- Presenting the certificate --------------------------------------------------------------


@pytest.mark.network
def test_client_presents_its_certificate(files: Files, server: FaultServer) -> None:
    tls = meshlib.TLS(files.cert, files.key, files.ca)
    with meshlib.Client(meshlib.STANDARD, tls=tls, timeout=TIMEOUT) as client:
        assert client.get(server.url).status_code == 200
        assert client.get(server.url).status_code == 200
    assert [subject(r) for r in server.requests] == ["client-one", "client-one"]
    assert server.connection_count == 1  # pooled: the context did not get in the way


@pytest.mark.network
@pytest.mark.anyio
async def test_async_client_presents_its_certificate(files: Files, server: FaultServer) -> None:
    tls = meshlib.TLS(files.pem, files.pem, files.ca, reload=True, reload_interval=INTERVAL)
    async with meshlib.AsyncClient(meshlib.STANDARD, tls=tls, timeout=TIMEOUT) as client:
        assert (await client.get(server.url)).status_code == 200
    assert subject(server.requests[0]) == "client-one"


@pytest.mark.network
def test_retry_and_tracing_layers_over_mtls(files: Files, server: FaultServer) -> None:
    # The whole stack over a verified, client-authenticated connection: a 503 is
    # retried, each attempt is a CLIENT span with the https URL, and the server saw
    # the client's certificate both times.
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from meshlib.testing import Respond

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    policy = meshlib.STANDARD.replace(
        retry=meshlib.Retry(backoff=meshlib.Backoff(base=0.001, cap=0.001)),
        tracing=meshlib.Tracing(tracer_provider=provider),
    )
    server.enqueue(Respond(503))
    tls = meshlib.TLS(files.cert, files.key, files.ca)
    with meshlib.Client(policy, tls=tls, timeout=TIMEOUT) as client:
        assert client.get(server.url).status_code == 200
    assert [subject(r) for r in server.requests] == ["client-one", "client-one"]
    spans = exporter.get_finished_spans()
    assert [s.attributes["http.response.status_code"] for s in spans] == [503, 200]
    assert all(str(s.attributes["url.full"]).startswith("https://") for s in spans)
    provider.shutdown()


@pytest.mark.network
def test_encrypted_key_with_its_password(
    tmp_path: Path, ca: trustme.CA, files: Files, server: FaultServer
) -> None:
    leaf = issue(ca, "client-locked")
    cert, key = tmp_path / "locked.crt", tmp_path / "locked.key"
    leaf.cert_chain_pems[0].write_to_path(str(cert))
    key.write_bytes(encrypted_key(leaf, SECRET))
    tls = meshlib.TLS(cert, key, files.ca, password=SECRET)
    assert SECRET not in repr(tls)
    with meshlib.Client(tls=tls, timeout=TIMEOUT) as client:
        assert presented(client, server) == "client-locked"


@pytest.mark.network
def test_wrap_keeps_a_user_built_client_with_the_context(files: Files, server: FaultServer) -> None:
    tls = meshlib.TLS(files.pem, files.pem, files.ca)
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    client = httpx.Client(verify=tls.ssl_context(), limits=limits, timeout=TIMEOUT)
    with meshlib.wrap(client) as wrapped:
        assert wrapped is client
        assert isinstance(wrapped._transport, meshlib.Transport)
        assert wrapped.get(server.url).status_code == 200
        assert wrapped.get(server.url).status_code == 200
    assert [subject(r) for r in server.requests] == ["client-one", "client-one"]
    assert server.connection_count == 1


def test_ssl_context_is_one_strict_context(files: Files) -> None:
    tls = meshlib.TLS(files.cert, files.key, files.ca)
    context = tls.ssl_context()
    assert tls.ssl_context() is context
    assert type(context) is ssl.SSLContext  # no reload: the plain class, nothing to follow
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname is True
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    newer = meshlib.TLS(files.cert, files.key, files.ca, minimum_version=ssl.TLSVersion.TLSv1_3)
    assert newer.ssl_context().minimum_version == ssl.TLSVersion.TLSv1_3
    reloading = meshlib.TLS(files.cert, files.key, files.ca, reload=True)
    assert isinstance(reloading.ssl_context(), ssl.SSLContext)
    assert reloading.ssl_context().check_hostname is True


def test_tls_is_a_frozen_value_that_hides_the_password(files: Files) -> None:
    tls = meshlib.TLS(str(files.cert), files.key, files.ca, password=SECRET)
    same = meshlib.TLS(files.cert, str(files.key), files.ca, password=SECRET)
    assert tls == same
    assert hash(tls) == hash(same)
    assert tls.ssl_context() is not same.ssl_context()  # each value has its own context
    assert SECRET not in repr(tls)
    assert tls.cert == str(files.cert)
    with pytest.raises(dataclasses.FrozenInstanceError):
        tls.reload = True  # type: ignore[misc]
    assert not hasattr(tls, "__dict__")


def test_relative_paths_are_resolved_when_built(
    files: Files, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(files.pem.parent)
    tls = meshlib.TLS("svc.pem", "svc.pem", "mesh-ca.pem", reload_interval=0)
    assert tls.cert == str(files.pem)
    assert tls.ca == str(files.ca)
    assert tls.reload_interval == 0.0


@pytest.mark.network
def test_default_trust_is_certifi_and_never_falls_back(files: Files, server: FaultServer) -> None:
    tls = meshlib.TLS(files.pem, files.pem)  # ca=None: certifi, which knows no trustme CA
    assert tls.ssl_context().get_ca_certs()
    with (
        meshlib.Client(meshlib.STANDARD, tls=tls, timeout=TIMEOUT) as client,
        pytest.raises(httpx.ConnectError) as caught,
    ):
        client.get(server.url)
    assert verification_failed(caught.value)
    assert server.connection_count == 1
    assert server.request_count == 0


# --- Verification failures are never retried ------------------------------------------------


def get(mode: str, policy: meshlib.Policy, tls: meshlib.TLS, url: str) -> httpx.Response:
    """GET `url` with a new meshlib.Client or meshlib.AsyncClient using `tls`."""
    if mode == "sync":
        with meshlib.Client(policy, tls=tls, timeout=TIMEOUT) as client:
            return client.get(url)

    async def go() -> httpx.Response:
        async with meshlib.AsyncClient(policy, tls=tls, timeout=TIMEOUT) as client:
            return await client.get(url)

    return anyio.run(go)


@pytest.mark.network
@pytest.mark.parametrize("mode", ["sync", "async"])
def test_server_from_another_ca_fails_and_is_not_retried(
    mode: str, ca: trustme.CA, files: Files
) -> None:
    stranger = trustme.CA()
    policy = meshlib.Policy(retry=meshlib.Retry(attempts=3, backoff=meshlib.Backoff(base=0.001)))
    tls = meshlib.TLS(files.pem, files.pem, files.ca)
    with FaultServer(ssl_context=server_context(ca, server_ca=stranger)) as server:
        with pytest.raises(httpx.ConnectError) as caught:
            get(mode, policy, tls, server.url)
        assert verification_failed(caught.value)
        assert server.connection_count == 1  # a retry would have dialled again
        assert server.request_count == 0


@pytest.mark.network
def test_hostname_mismatch_fails_and_is_not_retried(ca: trustme.CA, files: Files) -> None:
    tls = meshlib.TLS(files.pem, files.pem, files.ca)
    context = server_context(ca, hostname="elsewhere.internal")
    with (
        FaultServer(ssl_context=context) as server,
        meshlib.Client(meshlib.STANDARD, tls=tls, timeout=TIMEOUT) as client,
    ):
        with pytest.raises(httpx.ConnectError) as caught:
            client.get(server.url)
        assert verification_failed(caught.value)
        assert "mismatch" in str(caught.value).lower()
        assert server.connection_count == 1


# --- Rotation ---------------------------------------------------------------------------------


@pytest.mark.network
@pytest.mark.parametrize("layout", ["combined", "split"])
def test_rotation_reaches_new_connections_without_a_restart(
    layout: str,
    ca: trustme.CA,
    files: Files,
    server: FaultServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="meshlib")
    cert, key = (files.pem, files.pem) if layout == "combined" else (files.cert, files.key)
    tls = meshlib.TLS(cert, key, files.ca, reload=True, reload_interval=INTERVAL)
    with meshlib.Client(meshlib.STANDARD, tls=tls, timeout=TIMEOUT) as client:
        assert presented(client, server) == "client-one"
        new = issue(ca, "client-two")
        if layout == "combined":
            atomic_write(files.pem, new.private_key_and_cert_chain_pem.bytes())
        else:
            write_split(files, new)
        assert eventually(lambda: presented(client, server) == "client-two")
        assert presented(client, server) == "client-two"
    [record] = reload_events(caplog, "tls_reloaded")
    assert record.levelno == logging.INFO
    assert record.meshlib_file == str(cert)
    assert not reload_events(caplog, "tls_reload_failed")


@pytest.mark.network
@pytest.mark.anyio
async def test_async_rotation(ca: trustme.CA, files: Files, server: FaultServer) -> None:
    tls = meshlib.TLS(files.pem, files.pem, files.ca, reload=True, reload_interval=INTERVAL)
    async with meshlib.AsyncClient(meshlib.STANDARD, tls=tls, timeout=TIMEOUT) as client:
        assert await apresented(client, server) == "client-one"
        atomic_write(files.pem, issue(ca, "client-two").private_key_and_cert_chain_pem.bytes())
        limit = time.monotonic() + ROTATION_WAIT
        while await apresented(client, server) != "client-two":
            assert time.monotonic() < limit, "the rotation never reached the wire"
            await anyio.sleep(0.01)


@pytest.mark.network
def test_pooled_connection_keeps_its_certificate_until_it_closes(
    ca: trustme.CA, files: Files, server: FaultServer
) -> None:
    tls = meshlib.TLS(files.pem, files.pem, files.ca, reload=True, reload_interval=0)
    with meshlib.Client(meshlib.STANDARD, tls=tls, timeout=TIMEOUT) as client:
        assert client.get(server.url).status_code == 200  # this connection stays pooled
        atomic_write(files.pem, issue(ca, "client-two").private_key_and_cert_chain_pem.bytes())
        assert client.get(server.url).status_code == 200
        assert subject(server.requests[-1]) == "client-one"  # same connection, same cert
        assert server.connection_count == 1
    with meshlib.Client(meshlib.STANDARD, tls=tls, timeout=TIMEOUT) as fresh:
        assert presented(fresh, server) == "client-two"  # a new pool, the same TLS


@pytest.mark.network
def test_files_are_looked_at_no_more_often_than_the_interval(
    ca: trustme.CA, files: Files, server: FaultServer
) -> None:
    clock = FakeClock()
    with use_clock(clock):
        tls = meshlib.TLS(files.pem, files.pem, files.ca, reload=True, reload_interval=30.0)
        with meshlib.Client(meshlib.Policy(retry=None), tls=tls, timeout=TIMEOUT) as client:
            new = issue(ca, "client-two").private_key_and_cert_chain_pem.bytes()
            atomic_write(files.pem, new)
            clock.advance(29.0)
            assert presented(client, server) == "client-one"
            clock.advance(1.0)
            assert presented(client, server) == "client-two"


@pytest.mark.network
def test_no_reload_unless_asked(ca: trustme.CA, files: Files, server: FaultServer) -> None:
    tls = meshlib.TLS(files.pem, files.pem, files.ca, reload_interval=0)
    with meshlib.Client(meshlib.STANDARD, tls=tls, timeout=TIMEOUT) as client:
        atomic_write(files.pem, issue(ca, "client-two").private_key_and_cert_chain_pem.bytes())
        assert presented(client, server) == "client-one"


def _half_written(files: Files, ca: trustme.CA) -> Path:
    data = issue(ca, "client-two").private_key_and_cert_chain_pem.bytes()
    files.pem.write_bytes(data[: len(data) - 200])  # in place, cut short: a writer mid-way
    return files.pem


def _mismatched(files: Files, ca: trustme.CA) -> Path:
    files.pem.write_bytes(
        issue(ca, "client-two").private_key_pem.bytes()
        + issue(ca, "client-three").cert_chain_pems[0].bytes()
    )
    return files.pem


def _deleted(files: Files, ca: trustme.CA) -> Path:
    files.pem.unlink()
    return files.pem


def _locked(files: Files, ca: trustme.CA) -> Path:
    leaf = issue(ca, "client-two")
    files.pem.write_bytes(encrypted_key(leaf, SECRET) + leaf.cert_chain_pems[0].bytes())
    return files.pem


@pytest.mark.network
@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (_half_written, "incomplete PEM"),
        (_mismatched, "does not match the certificate"),
        (_deleted, "file not found"),
        (_locked, "encrypted and no password"),
    ],
    ids=["half-written", "mismatched", "deleted", "encrypted"],
)
def test_bad_new_pair_keeps_the_old_one_with_one_warning(
    damage: Callable[[Files, trustme.CA], Path],
    message: str,
    ca: trustme.CA,
    files: Files,
    server: FaultServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="meshlib")
    tls = meshlib.TLS(files.pem, files.pem, files.ca, reload=True, reload_interval=INTERVAL)
    with meshlib.Client(meshlib.STANDARD, tls=tls, timeout=TIMEOUT) as client:
        assert presented(client, server) == "client-one"
        damaged = damage(files, ca)
        assert eventually(
            lambda: (
                presented(client, server) == "client-one"
                and bool(reload_events(caplog, "tls_reload_failed"))
            )
        )
        for _ in range(3):  # several more checks: the same bad pair is reported once
            time.sleep(INTERVAL)  # each new connection after an interval looks at the files
            assert presented(client, server) == "client-one"
        [warning] = reload_events(caplog, "tls_reload_failed")
        assert warning.levelno == logging.WARNING
        assert warning.meshlib_file == str(damaged)
        assert message in warning.getMessage()
        assert str(damaged) in warning.getMessage()
        assert SECRET not in caplog.text
        # The next change that loads and matches is taken up.
        atomic_write(files.pem, issue(ca, "client-four").private_key_and_cert_chain_pem.bytes())
        assert eventually(lambda: presented(client, server) == "client-four")
    assert len(reload_events(caplog, "tls_reloaded")) == 1


@pytest.mark.network
def test_mismatched_split_pair_then_the_matching_key(
    ca: trustme.CA, files: Files, server: FaultServer, caplog: pytest.LogCaptureFixture
) -> None:
    tls = meshlib.TLS(files.cert, files.key, files.ca, reload=True, reload_interval=INTERVAL)
    new = issue(ca, "client-two")
    with meshlib.Client(meshlib.STANDARD, tls=tls, timeout=TIMEOUT) as client:
        assert presented(client, server) == "client-one"
        atomic_write(files.cert, new.cert_chain_pems[0].bytes())  # the key comes later
        assert eventually(
            lambda: (
                presented(client, server) == "client-one"
                and bool(reload_events(caplog, "tls_reload_failed"))
            )
        )
        [warning] = reload_events(caplog, "tls_reload_failed")
        assert warning.meshlib_file == str(files.key)
        assert f"'{files.key}' does not match the certificate in '{files.cert}'" in (
            warning.getMessage()
        )
        atomic_write(files.key, new.private_key_pem.bytes())
        assert eventually(lambda: presented(client, server) == "client-two")


@pytest.mark.network
def test_rotation_under_concurrent_new_connections(
    ca: trustme.CA, files: Files, server: FaultServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="meshlib")
    # Every connection looks at the files (interval 0), from several threads at once,
    # while the pair is swapped under them: no handshake may fail, nothing is retried.
    tls = meshlib.TLS(files.pem, files.pem, files.ca, reload=True, reload_interval=0)
    errors: list[BaseException] = []
    rotated = threading.Event()

    def worker() -> None:
        # At least 10 connections each, and on until the new pair is on the wire: however
        # the threads are scheduled, some connections come before the swap and some after.
        with meshlib.Client(meshlib.Policy(retry=None), tls=tls, timeout=TIMEOUT) as client:
            sent = 0
            while sent < 10 or not rotated.is_set():
                try:
                    client.get(server.url, headers=CLOSE).raise_for_status()
                except Exception as exc:
                    errors.append(exc)
                sent += 1

    threads = [threading.Thread(target=worker) for _ in range(6)]
    for thread in threads:
        thread.start()
    try:
        assert eventually(lambda: server.request_count >= 10)
        atomic_write(files.pem, issue(ca, "client-two").private_key_and_cert_chain_pem.bytes())
        assert eventually(lambda: any(subject(r) == "client-two" for r in server.requests))
    finally:
        rotated.set()
        for thread in threads:
            thread.join()
    assert errors == []
    assert {subject(r) for r in server.requests} == {"client-one", "client-two"}
    assert len(reload_events(caplog, "tls_reloaded")) == 1
    with meshlib.Client(tls=tls, timeout=TIMEOUT) as client:
        assert presented(client, server) == "client-two"


@pytest.mark.network
def test_unexpected_reload_error_keeps_the_connection_going(
    ca: trustme.CA,
    files: Files,
    server: FaultServer,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    tls = meshlib.TLS(files.pem, files.pem, files.ca, reload=True, reload_interval=0)

    def broken(source: object) -> tuple[bytes, bytes]:
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(meshlib._tls, "_read_pair", broken)
    with meshlib.Client(meshlib.STANDARD, tls=tls, timeout=TIMEOUT) as client:
        assert presented(client, server) == "client-one"
    [warning] = reload_events(caplog, "tls_reload_failed")
    assert "disk on fire" in warning.getMessage()


@pytest.mark.parametrize("missing", ["memfd_create", "/proc"])
def test_staging_without_memfd_leaves_no_copy(
    missing: str, files: Files, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    staging = tmp_path / "staging"
    staging.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(staging))
    if missing == "memfd_create":

        def refuse(*args: Any) -> int:
            raise OSError(38, "Function not implemented")

        monkeypatch.setattr(os, "memfd_create", refuse, raising=False)
    else:
        exists = os.path.exists
        monkeypatch.setattr(
            os.path, "exists", lambda p: not str(p).startswith("/proc/") and exists(p)
        )
    created: list[str] = []
    mkstemp = tempfile.mkstemp

    def spy(*args: Any, **kwargs: Any) -> tuple[int, str]:
        fd, path = mkstemp(*args, **kwargs)
        created.append(path)
        assert os.stat(path).st_mode & 0o077 == 0  # private to the user
        return fd, path

    monkeypatch.setattr(tempfile, "mkstemp", spy)
    tls = meshlib.TLS(files.pem, files.pem, files.ca)
    assert tls.ssl_context().check_hostname
    assert len(created) == 2  # the certificate and the key, each staged
    assert list(staging.iterdir()) == []  # and both removed


# --- Bad material: one clear error per case ---------------------------------------------------

Case = Callable[[Path, trustme.CA, Files], tuple[dict[str, Any], Path]]


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _cert_text(leaf: trustme.LeafCert) -> bytes:
    return leaf.cert_chain_pems[0].bytes()


def _locked_pair(
    d: Path, ca: trustme.CA, password: str | bytes, *, traditional: bool = False
) -> dict[str, Any]:
    leaf = issue(ca, "locked")
    return {
        "cert": _write(d / "e.crt", _cert_text(leaf)),
        "key": _write(d / "x.key", encrypted_key(leaf, SECRET, traditional=traditional)),
        "password": password,
    }


def _loop(path: Path) -> Path:
    path.symlink_to(path)
    return path


def _sparse(path: Path, size: int) -> Path:
    with path.open("wb") as file:
        file.truncate(size)
    return path


BINARY_BLOCK = b"-----BEGIN CERTIFICATE-----\n\xff\xfe\n-----END CERTIFICATE-----\n"
DAMAGED_BLOCK = b"-----BEGIN CERTIFICATE-----\n!!!!not base64!!!!\n-----END CERTIFICATE-----\n"
DAMAGED_KEY = b"-----BEGIN PRIVATE KEY-----\nAAAAbm90IGEga2V5\n-----END PRIVATE KEY-----\n"

BAD_MATERIAL: dict[str, tuple[Case, str]] = {
    "cert missing": (
        lambda d, ca, f: ({"cert": d / "nope.crt"}, d / "nope.crt"),
        r"^TLS\.cert: file not found: '.*nope\.crt'$",
    ),
    "key missing": (
        lambda d, ca, f: ({"key": d / "nope.key"}, d / "nope.key"),
        r"^TLS\.key: file not found: '.*nope\.key'$",
    ),
    "ca missing": (
        lambda d, ca, f: ({"ca": d / "nope-ca.pem"}, d / "nope-ca.pem"),
        r"^TLS\.ca: file not found: '.*nope-ca\.pem'$",
    ),
    "cert is a directory": (
        lambda d, ca, f: ({"cert": d}, d),
        r"^TLS\.cert: '.*' is not a regular file$",
    ),
    "cert not PEM": (
        lambda d, ca, f: ({"cert": _write(d / "x.crt", b"\x30\x82 DER bytes")}, d / "x.crt"),
        r"^TLS\.cert: '.*x\.crt' is not a PEM certificate "
        r"\(no -----BEGIN CERTIFICATE----- block\)$",
    ),
    "cert is a symlink loop": (
        lambda d, ca, f: ({"cert": _loop(d / "loop.crt")}, d / "loop.crt"),
        r"^TLS\.cert: cannot read '.*loop\.crt': .+$",
    ),
    "cert too large": (
        lambda d, ca, f: ({"cert": _sparse(d / "huge.crt", 17 * 1024 * 1024)}, d / "huge.crt"),
        r"^TLS\.cert: '.*huge\.crt' is too large for a PEM file \(17825792 bytes\)$",
    ),
    "cert is the key": (
        lambda d, ca, f: ({"cert": f.key}, f.key),
        r"^TLS\.cert: '.*svc\.key' is not a PEM certificate",
    ),
    "cert damaged": (
        lambda d, ca, f: ({"cert": _write(d / "x.crt", DAMAGED_BLOCK)}, d / "x.crt"),
        r"^TLS\.cert: cannot parse the certificate in '.*x\.crt' \(damaged PEM\)$",
    ),
    "cert with binary in its block": (
        lambda d, ca, f: ({"cert": _write(d / "x.crt", BINARY_BLOCK)}, d / "x.crt"),
        r"^TLS\.cert: cannot parse the certificate in '.*x\.crt' \(damaged PEM\)$",
    ),
    "cert half-written": (
        lambda d, ca, f: ({"cert": _write(d / "x.crt", f.cert.read_bytes()[:200])}, d / "x.crt"),
        r"^TLS\.cert: '.*x\.crt' holds an incomplete PEM certificate \(half-written\?\)$",
    ),
    "key not PEM": (
        lambda d, ca, f: ({"key": _write(d / "x.key", b"hello")}, d / "x.key"),
        r"^TLS\.key: '.*x\.key' is not a PEM private key \(no PRIVATE KEY block\)$",
    ),
    "key damaged": (
        lambda d, ca, f: ({"key": _write(d / "x.key", DAMAGED_KEY)}, d / "x.key"),
        r"^TLS\.key: cannot parse the private key in '.*x\.key' \(damaged PEM\)$",
    ),
    "key half-written": (
        lambda d, ca, f: ({"key": _write(d / "x.key", f.key.read_bytes()[:60])}, d / "x.key"),
        r"^TLS\.key: '.*x\.key' holds an incomplete PEM private key \(half-written\?\)$",
    ),
    "key of another certificate": (
        lambda d, ca, f: (
            {"key": _write(d / "x.key", issue(ca, "other").private_key_pem.bytes())},
            d / "x.key",
        ),
        r"^TLS\.key: '.*x\.key' does not match the certificate in '.*svc\.crt'$",
    ),
    "key of another type": (
        lambda d, ca, f: (
            {
                "key": _write(
                    d / "x.key",
                    issue(ca, "rsa", key_type=trustme.KeyType.RSA).private_key_pem.bytes(),
                )
            },
            d / "x.key",
        ),
        r"^TLS\.key: '.*x\.key' does not match the certificate in '.*svc\.crt'$",
    ),
    "encrypted key, no password (PKCS#8)": (
        lambda d, ca, f: (
            {"key": _write(d / "x.key", encrypted_key(issue(ca, "e"), SECRET))},
            d / "x.key",
        ),
        r"^TLS\.key: '.*x\.key' is encrypted and no password was given \(pass password=\)$",
    ),
    "encrypted key, no password (traditional)": (
        lambda d, ca, f: (
            {"key": _write(d / "x.key", encrypted_key(issue(ca, "e"), SECRET, traditional=True))},
            d / "x.key",
        ),
        r"^TLS\.key: '.*x\.key' is encrypted and no password was given",
    ),
    "wrong password (PKCS#8)": (
        lambda d, ca, f: (_locked_pair(d, ca, WRONG), d / "x.key"),
        r"^TLS\.password: wrong password for the encrypted key '.*x\.key'$",
    ),
    "wrong password (traditional, bytes)": (
        lambda d, ca, f: (_locked_pair(d, ca, WRONG.encode(), traditional=True), d / "x.key"),
        r"^TLS\.password: wrong password for the encrypted key '.*x\.key'$",
    ),
    "ca not PEM": (
        lambda d, ca, f: ({"ca": _write(d / "ca.pem", b"not a bundle")}, d / "ca.pem"),
        r"^TLS\.ca: '.*ca\.pem' is not a PEM CA bundle \(no -----BEGIN CERTIFICATE----- block\)$",
    ),
    "ca damaged": (
        lambda d, ca, f: ({"ca": _write(d / "ca.pem", DAMAGED_BLOCK)}, d / "ca.pem"),
        r"^TLS\.ca: cannot load the CA bundle '.*ca\.pem' \(.+\)$",
    ),
}


@pytest.mark.parametrize("case", list(BAD_MATERIAL))
def test_bad_material_is_a_clear_config_error(
    case: str, tmp_path: Path, ca: trustme.CA, files: Files
) -> None:
    build, pattern = BAD_MATERIAL[case]
    bad = tmp_path / "bad"
    bad.mkdir()
    changes, named = build(bad, ca, files)
    kwargs: dict[str, Any] = {"cert": files.cert, "key": files.key, "ca": files.ca, **changes}
    with pytest.raises(meshlib.ConfigError, match=pattern) as caught:
        meshlib.TLS(**kwargs)
    message = str(caught.value)
    assert str(named) in message
    for secret in (SECRET, WRONG):
        assert secret not in message
        assert secret not in repr(caught.value)


def test_each_kind_of_bad_material_has_its_own_message(
    tmp_path: Path, ca: trustme.CA, files: Files
) -> None:
    kinds: dict[str, list[str]] = {}
    for number, (case, (build, _)) in enumerate(BAD_MATERIAL.items()):
        bad = tmp_path / str(number)
        bad.mkdir()
        changes, _ = build(bad, ca, files)
        kwargs: dict[str, Any] = {"cert": files.cert, "key": files.key, "ca": files.ca, **changes}
        with pytest.raises(meshlib.ConfigError) as caught:
            meshlib.TLS(**kwargs)
        kind = re.sub(r"'[^']*'", "FILE", str(caught.value))
        kinds.setdefault(kind, []).append(case)
    shared = sorted(cases for cases in kinds.values() if len(cases) > 1)
    # The same kind of problem, reached two ways: the same message, on purpose.
    assert shared == [
        ["cert damaged", "cert with binary in its block"],
        ["cert not PEM", "cert is the key"],
        ["encrypted key, no password (PKCS#8)", "encrypted key, no password (traditional)"],
        ["key of another certificate", "key of another type"],
        ["wrong password (PKCS#8)", "wrong password (traditional, bytes)"],
    ]


def test_unreadable_file(files: Files, monkeypatch: pytest.MonkeyPatch) -> None:
    real_open = open

    def denied(path: Any, *args: Any, **kwargs: Any) -> Any:
        if str(path) == str(files.key):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)

    # A module global shadows the builtin: only meshlib._tls sees the refusal.
    monkeypatch.setattr(meshlib._tls, "open", denied, raising=False)
    with pytest.raises(meshlib.ConfigError, match=r"^TLS\.key: cannot read '.*svc\.key'"):
        meshlib.TLS(files.cert, files.key, files.ca)


def test_encrypted_key_never_prompts(
    tmp_path: Path, ca: trustme.CA, files: Files, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Blind the early check so OpenSSL itself meets the encrypted key: with no password
    # it asks meshlib's callback, which refuses, instead of prompting on a terminal.
    leaf = issue(ca, "locked")
    key = _write(tmp_path / "locked.key", encrypted_key(leaf, SECRET))
    cert = _write(tmp_path / "locked.crt", _cert_text(leaf))
    monkeypatch.setattr(meshlib._tls, "_ENCRYPTED", re.compile(rb"(?!)"))
    with pytest.raises(meshlib.ConfigError, match=r"is encrypted and no password was given"):
        meshlib.TLS(cert, key, files.ca)


# --- Other values -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "pattern"),
    [
        ({"cert": 42}, r"^TLS\.cert: expected a path \(str or os\.PathLike\[str\]\), got 42$"),
        ({"key": b"svc.key"}, r"^TLS\.key: expected a path"),
        ({"ca": ""}, r"^TLS\.ca: expected a path"),
        ({"reload": "yes"}, r"^TLS\.reload: expected True or False, got 'yes'$"),
        ({"reload_interval": -1}, r"^TLS\.reload_interval: expected a duration >= 0, got -1$"),
        ({"reload_interval": "1s"}, r"^TLS\.reload_interval: expected seconds"),
        (
            {"minimum_version": ssl.TLSVersion.TLSv1_1},
            r"^TLS\.minimum_version: expected ssl\.TLSVersion\.TLSv1_2 or "
            r"ssl\.TLSVersion\.TLSv1_3, got <TLSVersion\.TLSv1_1: 770>$",
        ),
        ({"minimum_version": 771}, r"^TLS\.minimum_version: expected"),
        ({"password": 12345}, r"^TLS\.password: expected str, bytes or None, got int$"),
        ({"password": "x" * 1025}, r"^TLS\.password: expected at most 1024 bytes, got 1025 bytes$"),
    ],
)
def test_bad_values(files: Files, changes: dict[str, Any], pattern: str) -> None:
    kwargs: dict[str, Any] = {"cert": files.cert, "key": files.key, "ca": files.ca, **changes}
    with pytest.raises(meshlib.ConfigError, match=pattern) as caught:
        meshlib.TLS(**kwargs)
    assert "12345" not in str(caught.value)  # a password is never echoed, even a wrong type


@pytest.mark.parametrize("factory", [meshlib.Client, meshlib.AsyncClient])
@pytest.mark.parametrize(
    ("extra", "pattern"),
    [
        ({"verify": False}, r"\.tls: expected either tls= or verify=, got both"),
        ({"cert": "svc.pem"}, r"\.tls: expected either tls= or cert=, got both"),
        ({"transport": httpx.MockTransport(lambda r: httpx.Response(200))}, r"transport="),
    ],
    ids=["verify", "cert", "transport"],
)
def test_tls_does_not_mix_with_httpx_tls_settings(
    files: Files, factory: Any, extra: dict[str, Any], pattern: str
) -> None:
    tls = meshlib.TLS(files.pem, files.pem, files.ca)
    with pytest.raises(meshlib.ConfigError, match=pattern):
        factory(meshlib.STANDARD, tls=tls, **extra)


@pytest.mark.parametrize("factory", [meshlib.Client, meshlib.AsyncClient])
def test_tls_must_be_a_tls_value(factory: Any) -> None:
    with pytest.raises(meshlib.ConfigError, match=r"\.tls: expected a meshlib\.TLS or None"):
        factory(meshlib.STANDARD, tls=ssl.create_default_context())


def test_a_file_that_grows_after_its_size_was_checked_is_still_too_large(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    huge = _sparse(tmp_path / "growing.crt", 17 * 1024 * 1024)
    real_stat = os.stat

    def small_at_stat_time(path: Any, *args: Any, **kwargs: Any) -> os.stat_result:
        info = real_stat(path, *args, **kwargs)
        if os.fspath(path) != str(huge):
            return info
        fields = list(info)
        fields[6] = 100  # st_size: small when checked, 17 MiB when read
        return os.stat_result(fields)

    monkeypatch.setattr(meshlib._tls.os, "stat", small_at_stat_time)
    with pytest.raises(meshlib.ConfigError, match=r"^TLS\.cert: '.*growing\.crt' is too large"):
        meshlib.TLS(cert=huge, key=huge)
