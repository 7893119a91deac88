"""meshlib as the other side of the xDS tests: `Mesh.from_xds` over the same AdsServer.

A proxyless client gets the snapshot itself (no socket listener, no SDS), so
`MeshlibSide.push` is `AdsServer.set_snapshot` and then waiting until this node has
ACKed every response of that version, for every resource type in the snapshot. Its
`send` is a plain `httpx.Client` wrapped by the Mesh, sent to ``http://AUTHORITY/...``;
meshlib's errors become the outcomes Envoy's local replies are (tests/xds_envoy.py):

    meshlib raises                                outcome
    DeadlineExceeded, another httpx.TimeoutException   "timeout"
    BulkheadFull                                   "overloaded"
    another httpx.TransportError                   "connect_error"

The Mesh watches every listener the snapshots name (`LISTENERS`) from the start, so
that a push is applied before the first request of a test, as Envoy's is.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Mapping
from types import TracebackType
from typing import Any

import httpx

import meshlib

from .spiffe import ProviderFiles
from .xds_envoy import APPLY_TIMEOUT, Reply, acked
from .xds_server import AdsServer, Snapshot
from .xds_snapshots import DOMAIN_HOSTS, HOST, ISTIO_LISTENER

NODE = "meshlib-side~127.0.0.1~tests.default~default.svc.cluster.local"
#: Every listener name a snapshot may hold: watched up front.
LISTENERS = (HOST, ISTIO_LISTENER, *DOMAIN_HOSTS)


def outcome(exc: httpx.TransportError) -> str:
    """The outcome Envoy's local reply for the same failure is (see the module docstring)."""
    if isinstance(exc, meshlib.BulkheadFull):
        return "overloaded"
    if isinstance(exc, httpx.TimeoutException | meshlib.DeadlineExceeded):
        return "timeout"
    return "connect_error"


class MeshlibSide:
    """One `Mesh.from_xds` configured by `ads`; `push` snapshots, `send`, then `close`."""

    name = "meshlib"

    def __init__(self, ads: AdsServer, providers: Mapping[str, ProviderFiles]) -> None:
        self.ads = ads
        self._folder = tempfile.TemporaryDirectory(prefix="meshlib-side-")
        bootstrap = os.path.join(self._folder.name, "xds-bootstrap.json")
        with open(bootstrap, "w") as file:
            json.dump(
                {
                    "xds_servers": [
                        {"server_uri": ads.address, "channel_creds": [{"type": "insecure"}]}
                    ],
                    "node": {"id": NODE, "cluster": "tests"},
                    "certificate_providers": {
                        name: files.bootstrap_entry() for name, files in providers.items()
                    },
                },
                file,
            )
        self.mesh = meshlib.Mesh.from_xds(bootstrap, watch=LISTENERS, ready_timeout=0.0)
        self._client = meshlib.wrap(httpx.Client(timeout=30.0), self.mesh)

    def __enter__(self) -> MeshlibSide:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self._client.close()
        self.mesh.close()
        self._folder.cleanup()

    def push(self, snapshot: Snapshot) -> None:
        version = self.ads.set_snapshot(snapshot)
        types = {type_url for type_url, resources in snapshot.items() if resources}
        stop_at = time.monotonic() + APPLY_TIMEOUT
        while not self._applied(version, types):
            if time.monotonic() > stop_at:
                raise RuntimeError(f"timed out waiting for meshlib to apply version {version}")
            time.sleep(0.02)

    def _applied(self, version: str, types: set[str]) -> bool:
        """This node ACKed every response of `version`, one of each type in the snapshot."""
        if not acked(self.ads, NODE, version):
            return False
        streams = {r.stream for r in list(self.ads.requests) if r.request.node.id == NODE}
        sent = {
            s.type_url for s in list(self.ads.sent) if s.stream in streams and s.version == version
        }
        return types <= sent

    def send(
        self,
        method: str,
        url_path: str,
        headers: Mapping[str, str] | None = None,
        *,
        authority: str = HOST,
    ) -> Reply:
        try:
            response = self._client.request(
                method, f"http://{authority}{url_path}", headers=headers
            )
        except httpx.TransportError as exc:
            return Reply(outcome(exc), b"", {})
        answered: dict[str, Any] = dict(response.headers)
        return Reply(response.status_code, response.content, answered)
