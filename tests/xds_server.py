"""A small ADS management server for tests, on grpcio and xds-protos, on 127.0.0.1.

It serves a snapshot (resources by type URL and name) over state-of-the-world
ADS, pushes each new snapshot to every stream that subscribed, and records every
DiscoveryRequest it receives, so that tests can assert ACKs and NACKs (version,
nonce, error detail, names). A resource the snapshot leaves out does not exist:
Listener and Cluster responses simply omit it; for RouteConfiguration and
ClusterLoadAssignment the server answers only when it has one of the names
asked for, as go-control-plane does. A Listener or Cluster request without names
(or with "*") is a wildcard subscription, as Envoy makes: it gets every one. A
node id in `views` is served a view derived from the snapshot instead (what a
real Envoy needs beside it). It can be stopped and started again on the same
port, to test reconnects.
"""

from __future__ import annotations

import itertools
import json
import queue
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any

import grpc
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from google.protobuf import any_pb2

from meshlib._xds.ads import CLUSTER, LISTENER
from meshlib._xds.bootstrap import Bootstrap, parse_bootstrap

Snapshot = Mapping[str, Mapping[str, Any]]  # type URL -> name -> message (or a packed Any)


@dataclass(frozen=True)
class Recorded:
    """One request the server received, on which stream (1, 2, ... in order of opening)."""

    stream: int
    request: Any  # DiscoveryRequest


@dataclass(frozen=True)
class Sent:
    """One response the server sent."""

    stream: int
    type_url: str
    version: str
    nonce: str
    names: tuple[str, ...]


@dataclass
class _Subscription:
    names: tuple[str, ...] | None = None
    nonce: str = ""


@dataclass
class _Stream:
    number: int
    out: queue.SimpleQueue[Any] = field(default_factory=queue.SimpleQueue)
    types: dict[str, _Subscription] = field(default_factory=dict)
    node: str = ""


class AdsServer(ads_pb2_grpc.AggregatedDiscoveryServiceServicer):  # type: ignore[misc]
    """The management server; use as a context manager, or `start` / `stop`."""

    def __init__(
        self,
        snapshot: Snapshot | None = None,
        *,
        wrap: bool = False,
        tls: tuple[bytes, bytes] | None = None,
    ) -> None:
        self.snapshot: Snapshot = snapshot or {}
        self.version = 1
        self.wrap = wrap  # send each resource inside envoy.service.discovery.v3.Resource
        self.tls = tls  # (certificate chain PEM, key PEM)
        self.port = 0
        self.requests: list[Recorded] = []
        self.sent: list[Sent] = []
        self.streams_opened = 0
        self.refuse: grpc.StatusCode | None = None  # end every new stream with this status
        self._lock = threading.Lock()
        self._streams: list[_Stream] = []
        self._nonces = itertools.count(1)
        self._server: Any = None
        #: node id -> what that node is served instead of the snapshot, derived from it
        #: (a real Envoy needs a socket listener beside each api_listener, for example)
        self.views: dict[str, Callable[[Snapshot], Snapshot]] = {}

    # --- running ----------------------------------------------------------------------

    def start(self) -> AdsServer:
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
        ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(self, server)
        address = f"127.0.0.1:{self.port}"
        if self.tls is None:
            port = server.add_insecure_port(address)
        else:
            creds = grpc.ssl_server_credentials([(self.tls[1], self.tls[0])])
            port = server.add_secure_port(address, creds)
        if not port:
            raise RuntimeError(f"cannot bind {address}")
        self.port = port
        server.start()
        self._server = server
        return self

    def stop(self) -> None:
        """Stop at once: every stream is cut."""
        if self._server is not None:
            self._server.stop(grace=None).wait()
            self._server = None

    def __enter__(self) -> AdsServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def bootstrap(self, **server_fields: Any) -> Bootstrap:
        """A bootstrap pointing at this server (insecure unless `server_fields` say)."""
        entry: dict[str, Any] = {
            "server_uri": self.address,
            "channel_creds": [{"type": "insecure"}],
        }
        entry.update(server_fields)
        document = {
            "xds_servers": [entry],
            "node": {
                "id": "sidecar~127.0.0.1~tests.default~default.svc.cluster.local",
                "cluster": "tests",
                "metadata": {
                    "GENERATOR": "grpc",
                    "LABELS": {"app": "tests"},
                    "TRUST_DOMAINS": ["cluster.local"],
                },
                "locality": {"zone": "z1"},
            },
        }
        return parse_bootstrap(json.dumps(document), "xds-bootstrap.json")

    # --- what tests drive -------------------------------------------------------------

    def set_snapshot(self, snapshot: Snapshot) -> str:
        """Replace the snapshot, bump the version and push it; return the new version."""
        with self._lock:
            self.snapshot = snapshot
            self.version += 1
            for stream in self._streams:
                for type_url, subscription in stream.types.items():
                    if subscription.names is not None:
                        self._respond(stream, type_url, subscription)
            return str(self.version)

    def send(self, response: Any) -> None:
        """Send `response` (a DiscoveryResponse, sent as is) on every open stream."""
        with self._lock:
            for stream in self._streams:
                stream.out.put(response)

    def end_streams(self) -> None:
        """End every open stream normally (status OK), as a server going away may."""
        with self._lock:
            for stream in self._streams:
                stream.out.put(None)

    def requests_of(self, type_url: str) -> list[Any]:
        with self._lock:
            return [r.request for r in self.requests if r.request.type_url == type_url]

    def last_sent(self, type_url: str) -> Sent:
        with self._lock:
            return [s for s in self.sent if s.type_url == type_url][-1]

    # --- the service ------------------------------------------------------------------

    def StreamAggregatedResources(self, request_iterator: Iterator[Any], context: Any) -> Any:
        with self._lock:
            self.streams_opened += 1
            if self.refuse is not None:
                context.abort(self.refuse, "refused by the test")
            stream = _Stream(self.streams_opened)
            self._streams.append(stream)
        context.add_callback(lambda: stream.out.put(None))

        def read() -> None:
            try:
                for request in request_iterator:
                    self._on_request(stream, request)
            except grpc.RpcError:
                pass
            stream.out.put(None)

        threading.Thread(target=read, daemon=True).start()
        try:
            while (response := stream.out.get()) is not None:
                yield response
        finally:
            with self._lock:
                self._streams.remove(stream)

    def _on_request(self, stream: _Stream, request: Any) -> None:
        with self._lock:
            self.requests.append(Recorded(stream.number, request))
            if request.HasField("node"):
                stream.node = request.node.id
            subscription = stream.types.setdefault(request.type_url, _Subscription())
            if request.response_nonce and request.response_nonce != subscription.nonce:
                return  # stale: the client has not seen the latest response yet
            names = tuple(request.resource_names)
            if names != subscription.names:
                subscription.names = names
                self._respond(stream, request.type_url, subscription)

    def _respond(self, stream: _Stream, type_url: str, subscription: _Subscription) -> None:
        assert subscription.names is not None
        view = self.views.get(stream.node)
        resources = (view(self.snapshot) if view else self.snapshot).get(type_url, {})
        if _wildcard(type_url, subscription.names):
            chosen = list(resources)
        else:
            chosen = [name for name in subscription.names if name in resources]
        if not chosen and type_url not in (LISTENER, CLUSTER):
            return  # no news about RDS / EDS names the server does not have
        nonce = str(next(self._nonces))
        subscription.nonce = nonce
        response = discovery_pb2.DiscoveryResponse(
            version_info=str(self.version), type_url=type_url, nonce=nonce
        )
        for name in chosen:
            packed = _pack(resources[name])
            if self.wrap:
                wrapper = discovery_pb2.Resource(name=name, version=str(self.version))
                wrapper.resource.CopyFrom(packed)
                packed = _pack(wrapper)
            response.resources.append(packed)
        self.sent.append(Sent(stream.number, type_url, str(self.version), nonce, tuple(chosen)))
        stream.out.put(response)


def _wildcard(type_url: str, names: tuple[str, ...]) -> bool:
    # Envoy subscribes to every Listener and Cluster: no names (legacy) or "*".
    return type_url in (LISTENER, CLUSTER) and (not names or "*" in names)


def _pack(message: Any) -> Any:
    if isinstance(message, any_pb2.Any):
        return message
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


def poll(condition: Callable[[], object], timeout: float = 30.0, what: str = "") -> None:
    """Wait until `condition()` is true; fail after `timeout` seconds (a generous bound)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or condition}")
        time.sleep(0.01)
