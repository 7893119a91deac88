"""`Mesh.from_xds` originating Istio's mTLS, with the bootstrap's rotating certificate files.

The control plane is tests/xds_server.py serving the Istio-shaped snapshot
(tests/xds_snapshots.py: ISTIO_MUTUAL through certificate provider `default`);
the upstream is a real TLS server on 127.0.0.1 that requires a mesh certificate.
The provider's files are rotated on disk as Istio's agent rotates them, and the
fake clock moves past the provider's refresh_interval: no test waits on time.
"""

from __future__ import annotations

import json
import os
import shutil
import ssl
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

pytest.importorskip("grpc", reason="needs meshlib[xds]")

import meshlib
from meshlib.testing import FakeClock, FaultServer, Respond

from . import xds_snapshots as snapshots
from .spiffe import MeshCerts, issue_workload, mesh_certs
from .xds_server import AdsServer
from .xds_snapshots import ISTIO_LISTENER

pytestmark = pytest.mark.network

CALLER = "spiffe://cluster.local/ns/default/sa/tests"
ROTATED = "spiffe://cluster.local/ns/default/sa/tests-rotated"
REFRESH = 60.0


@pytest.fixture
def certs(tmp_path: Path) -> MeshCerts:
    issued = tmp_path / "issued"
    issued.mkdir()
    return mesh_certs(str(issued), client_id=CALLER)


@pytest.fixture
def upstream(certs: MeshCerts) -> Iterator[FaultServer]:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(certs.server_certificate, certs.server_key)
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_verify_locations(certs.client.ca)
    with FaultServer(ssl_context=context) as server:
        server.default = Respond(200, b"orders")
        yield server


def test_istio_mutual_follows_the_providers_files_as_they_rotate(
    tmp_path: Path, certs: MeshCerts, upstream: FaultServer, clock: FakeClock
) -> None:
    # Where Istio's agent writes them: the provider's files, replaced on rotation.
    workload = tmp_path / "workload"
    workload.mkdir()
    chain, key, root = workload / "cert-chain.pem", workload / "key.pem", workload / "root.pem"
    shutil.copy(certs.client.certificate, chain)
    shutil.copy(certs.client.key, key)
    shutil.copy(certs.client.ca, root)
    provider = {
        "plugin_name": "file_watcher",
        "config": {
            "certificate_file": str(chain),
            "private_key_file": str(key),
            "ca_certificate_file": str(root),
            "refresh_interval": f"{REFRESH:g}s",
        },
    }
    with AdsServer() as ads:
        bootstrap = tmp_path / "xds-bootstrap.json"
        server = {"server_uri": ads.address, "channel_creds": [{"type": "insecure"}]}
        bootstrap.write_text(
            json.dumps(
                {
                    "xds_servers": [server],
                    "node": {"id": "tests"},
                    "certificate_providers": {"default": provider},
                }
            )
        )
        ads.snapshot = snapshots.istio_orders(upstream.port, sans=[certs.server_id])
        mesh = meshlib.Mesh.from_xds(bootstrap, watch=[ISTIO_LISTENER], ready_timeout=5)
        try:
            url = f"http://{ISTIO_LISTENER}/v1/orders"
            closing = {"connection": "close"}  # each request on a new connection
            with meshlib.wrap(httpx.Client(), mesh) as client:
                response = client.get(url, headers=closing)
                assert (response.status_code, str(response.url)) == (200, url)
                rotated_chain, rotated_key = issue_workload(
                    os.path.dirname(certs.client.ca), "rotated", ROTATED
                )
                for new, live in ((rotated_chain, chain), (rotated_key, key)):
                    shutil.copy(new, f"{live}.new")
                    os.replace(f"{live}.new", live)
                # Before the refresh interval the files are not looked at.
                assert client.get(url, headers=closing).status_code == 200
                clock.advance(REFRESH + 1)
                assert client.get(url, headers=closing).status_code == 200
        finally:
            mesh.close()
    ids = [r.peer_cert["subjectAltName"] for r in upstream.requests if r.peer_cert]
    assert ids == [(("URI", CALLER),), (("URI", CALLER),), (("URI", ROTATED),)]
    assert {r.headers["host"] for r in upstream.requests} == {ISTIO_LISTENER}
    assert len({r.connection_id for r in upstream.requests}) == 3
